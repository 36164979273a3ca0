"""FLUX's QK RMSNorm + RoPE fused with the fp8 quantization of q, k and v for attention_fp8.

FLUX normalizes q and k per head (RMSNorm with a learned weight), rotates them (RoPE,
interleaved pairs) and attends. With fp8 attention the quantization of q, k and v was one
more pass over all three (0.11 ms of a 0.46 ms call at 1024²); here the norm and rotation
happen in registers on the way to e4m3, so q and k are read once and written once, as fp8.
Two launches: a statistics pass (the token mean of the normalized, rotated K for
SageAttention's smoothing, and the per-channel amax of V), then one pass writing q8, k8 and
the transposed v8 with their scales in `kernels.attention_fp8`'s layout (Fp8QKV).

FLUX's double-stream blocks attend over [text tokens, image tokens], each stream with its
own norm weights: the text stream comes as a second set of tensors (`text=`), read in place,
so the concatenation is never written either.

API:
    norm_rope_quantize_fp8(q, k, v, q_weight, k_weight, cos, sin, eps=1e-6, scale=None, *,
                           text=None, smooth_k=True) -> Fp8QKV
        q, k, v (B, S, H, D) bf16/fp16 views with a unit last stride (a fused projection's
        output needs no copy); weights (D,); cos, sin (S_text + S, D) fp32 as FluxPosEmbed
        gives them; text = (q_t, k_t, v_t, q_t_weight, k_t_weight) for tokens placed first.
    norm_rope_quantize_fp8_reference(...): the same in plain torch (kernels.rope's reference,
        then kernels.attention_fp8's quantization reference).
    attention_fp8_norm_rope(q, k, v, q_weight, k_weight, cos, sin, eps, q_t, k_t, v_t,
                            q_t_weight, k_t_weight) -> Tensor (B, S_text + S, H, D)
        norm, rotation, quantization and fp8 attention; a torch.library custom op.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._utils import INTERPRETING, use_triton
from kernels.attention_fp8 import (
    KV_BLOCK,
    LOG2E,
    Fp8QKV,
    attention_fp8_quantized,
    attention_fp8_reference,
    quantize_qkv_fp8_reference,
)
from kernels.fp8 import FP8_DTYPE, _round_to_e4m3
from kernels.rope import qk_rmsnorm_rope_reference

# fmt: off


@triton.jit
def _load_rows(XA, XB, SPLIT, S, b, h, rows, sa0, sa1, sa2, sb0, sb1, sb2, D: tl.constexpr):
    # Rows [0, SPLIT) come from XA (the text stream), the rest from XB; rows past S are 0.
    # sa*, sb*: (batch, token, head) strides.
    d = tl.arange(0, D)
    in_a = rows < SPLIT
    in_b = (rows >= SPLIT) & (rows < S)
    ra = rows.to(tl.int64)[:, None]
    rb = (rows - SPLIT).to(tl.int64)[:, None]
    xa = tl.load(XA + b * sa0 + h * sa2 + ra * sa1 + d[None, :], mask=in_a[:, None],
                 other=0.0)
    xb = tl.load(XB + b * sb0 + h * sb2 + rb * sb1 + d[None, :], mask=in_b[:, None],
                 other=0.0)
    return xa.to(tl.float32) + xb.to(tl.float32)


@triton.jit
def _norm_rope(x, WA, WB, COS, SIN, rows, SPLIT, S, eps, D: tl.constexpr, BLOCK: tl.constexpr):
    d = tl.arange(0, D)
    wa = tl.load(WA + d).to(tl.float32)
    wb = tl.load(WB + d).to(tl.float32)
    w = tl.where((rows < SPLIT)[:, None], wa[None, :], wb[None, :])
    rstd = tl.math.rsqrt(tl.sum(x * x, axis=1) / D + eps)
    x = x * rstd[:, None] * w
    cs = rows.to(tl.int64)[:, None] * D + d[None, :]
    rmask = (rows < S)[:, None]
    cos = tl.load(COS + cs, mask=rmask, other=0.0)
    sin = tl.load(SIN + cs, mask=rmask, other=0.0)
    x_even, x_odd = tl.split(tl.reshape(x, (BLOCK, D // 2, 2)))
    rotated = tl.reshape(tl.join(-x_odd, x_even), (BLOCK, D))
    return x * cos + rotated * sin


@triton.jit
def _stats_kernel(
    KA, KB, VA, VB, WKA, WKB, COS, SIN, KSUM, VMAX, SPLIT, S, H, eps,
    ska0, ska1, ska2, skb0, skb1, skb2, sva0, sva1, sva2, svb0, svb1, svb2,
    D: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr, SMOOTH: tl.constexpr,
):
    # Per (batch, head) and ROWS tokens: the sum of normalized, rotated K and the amax of
    # |V| per channel, folded into (B, H, D) totals with atomics (order varies; the mean
    # only has to be close, since a per-channel shift of K leaves softmax unchanged).
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    d = tl.arange(0, D)
    ksum = tl.zeros([D], dtype=tl.float32)
    vmax = tl.zeros([D], dtype=tl.float32)
    for r in range(0, ROWS, BLOCK):
        rows = tl.program_id(0) * ROWS + r + tl.arange(0, BLOCK)
        if SMOOTH:
            k = _load_rows(KA, KB, SPLIT, S, b, h, rows, ska0, ska1, ska2, skb0, skb1, skb2, D)
            k = _norm_rope(k, WKA, WKB, COS, SIN, rows, SPLIT, S, eps, D, BLOCK)
            ksum += tl.sum(k, axis=0)
        v = _load_rows(VA, VB, SPLIT, S, b, h, rows, sva0, sva1, sva2, svb0, svb1, svb2, D)
        vmax = tl.maximum(vmax, tl.max(tl.abs(v), axis=0))
    if SMOOTH:
        tl.atomic_add(KSUM + bh.to(tl.int64) * D + d, ksum, sem="relaxed")
    tl.atomic_max(VMAX + bh.to(tl.int64) * D + d, vmax, sem="relaxed")


@triton.jit
def _producer_kernel(
    QA, QB, KA, KB, VA, VB, WQA, WQB, WKA, WKB, COS, SIN, KSUM, VMAX, Q8, QS, K8, KS, V8,
    SPLIT, S, H, NQB, q_mult, eps,
    sqa0, sqa1, sqa2, sqb0, sqb1, sqb2, ska0, ska1, ska2, skb0, skb1, skb2,
    sva0, sva1, sva2, svb0, svb1, svb2,
    D: tl.constexpr, BLOCK: tl.constexpr, SMOOTH: tl.constexpr, PRE_ROUND: tl.constexpr,
):
    # Programs [0, NQB) write a block of q tokens, the rest a block of k and v tokens, of one
    # (batch, head); rows past S are written as zeros, as quantize_qkv_fp8 does.
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    bh64 = bh.to(tl.int64)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    d = tl.arange(0, D)
    s_pad = NQB * BLOCK
    if pid < NQB:
        rows = pid * BLOCK + tl.arange(0, BLOCK)
        x = _load_rows(QA, QB, SPLIT, S, b, h, rows, sqa0, sqa1, sqa2, sqb0, sqb1, sqb2, D)
        x = _norm_rope(x, WQA, WQB, COS, SIN, rows, SPLIT, S, eps, D, BLOCK) * q_mult
        amax = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-12)
        inv = tl.math.div_rn(tl.full(amax.shape, 448.0, tl.float32), amax)
        x = tl.clamp(x * inv[:, None], -448.0, 448.0)
        if PRE_ROUND:
            x = _round_to_e4m3(x)
        tl.store(Q8 + bh64 * s_pad * D + rows.to(tl.int64)[:, None] * D + d[None, :],
                 x.to(Q8.dtype.element_ty))
        tl.store(QS + bh64 * s_pad + rows,
                 tl.math.div_rn(amax, tl.full(amax.shape, 448.0, tl.float32)))
    else:
        blk = pid - NQB
        rows = blk * BLOCK + tl.arange(0, BLOCK)
        rmask = rows < S
        k = _load_rows(KA, KB, SPLIT, S, b, h, rows, ska0, ska1, ska2, skb0, skb1, skb2, D)
        k = _norm_rope(k, WKA, WKB, COS, SIN, rows, SPLIT, S, eps, D, BLOCK)
        if SMOOTH:
            km = tl.load(KSUM + bh64 * D + d) / S
            k = tl.where(rmask[:, None], k - km[None, :], 0.0)
        kmax = tl.maximum(tl.max(tl.max(tl.abs(k), axis=1), axis=0), 1e-12)
        k = tl.clamp(k * (448.0 / kmax), -448.0, 448.0)
        if PRE_ROUND:
            k = _round_to_e4m3(k)
        tl.store(K8 + bh64 * s_pad * D + rows.to(tl.int64)[:, None] * D + d[None, :],
                 k.to(K8.dtype.element_ty))
        tl.store(KS + bh64 * NQB + blk, kmax / 448.0)
        vinv = 448.0 / tl.maximum(tl.load(VMAX + bh64 * D + d), 1e-12)
        v = _load_rows(VA, VB, SPLIT, S, b, h, rows, sva0, sva1, sva2, svb0, svb1, svb2, D)
        v = tl.clamp(v * vinv[None, :], -448.0, 448.0)
        if PRE_ROUND:
            v = _round_to_e4m3(v)
        vt = tl.trans(v.to(V8.dtype.element_ty))
        tl.store(V8 + bh64 * D * s_pad + d.to(tl.int64)[:, None] * s_pad + rows[None, :], vt)


# fmt: on


def _check(q, k, v, q_weight, cos, text) -> None:
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError("q, k and v must share one (B, S, H, D) shape")
    d = q.shape[-1]
    if d < 32 or d > 256 or d & (d - 1):
        raise ValueError(f"head_dim must be a power of two in 32..256, got {d}")
    if q.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError("q, k and v must be bf16 or fp16")
    s_text = 0 if text is None else text[0].shape[1]
    if cos.reshape(-1, d).shape[0] != s_text + q.shape[1] or q_weight.numel() != d:
        raise ValueError("cos/sin must cover text + image tokens and the weights D channels")


def norm_rope_quantize_fp8(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: torch.Tensor,
    k_weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float = 1e-6,
    scale: float | None = None, *, text: tuple | None = None, smooth_k: bool = True,
) -> Fp8QKV:
    """RMSNorm + RoPE of q and k and fp8 quantization of q, k, v for attention_fp8 (Triton)."""
    _check(q, k, v, q_weight, cos, text)
    unit = lambda t: t if t.stride(-1) == 1 else t.contiguous()  # noqa: E731
    q, k, v = unit(q), unit(k), unit(v)
    if text is None:
        qa, ka, va, wqa, wka, split = q, k, v, q_weight, k_weight, 0
    else:
        qa, ka, va = (unit(t) for t in text[:3])
        wqa, wka, split = text[3], text[4], text[0].shape[1]
    b, s_img, h, d = q.shape
    s = split + s_img
    scale = d**-0.5 if scale is None else scale
    cos = cos.reshape(s, d).float().contiguous()
    sin = sin.reshape(s, d).float().contiguous()
    dev = q.device
    nb = triton.cdiv(s, KV_BLOCK)
    stats = torch.zeros(2, b, h, d, device=dev, dtype=torch.float32)
    st = lambda t: (t.stride(0), t.stride(1), t.stride(2))  # noqa: E731
    rows = 256
    _stats_kernel[(triton.cdiv(s, rows), b * h)](
        ka, k, va, v, wka, k_weight, cos, sin, stats[0], stats[1], split, s, h, eps,
        *st(ka), *st(k), *st(va), *st(v),
        D=d, ROWS=rows, BLOCK=32, SMOOTH=smooth_k, num_warps=4,
    )
    q8 = torch.empty(b, h, nb * KV_BLOCK, d, device=dev, dtype=FP8_DTYPE)
    qs = torch.empty(b, h, nb * KV_BLOCK, device=dev, dtype=torch.float32)
    k8 = torch.empty(b, h, nb * KV_BLOCK, d, device=dev, dtype=FP8_DTYPE)
    ks = torch.empty(b, h, nb, device=dev, dtype=torch.float32)
    v8 = torch.empty(b, h, d, nb * KV_BLOCK, device=dev, dtype=FP8_DTYPE)
    _producer_kernel[(2 * nb, b * h)](
        qa, q, ka, k, va, v, wqa, q_weight, wka, k_weight, cos, sin, stats[0], stats[1],
        q8, qs, k8, ks, v8, split, s, h, nb, scale * LOG2E, eps,
        *st(qa), *st(q), *st(ka), *st(k), *st(va), *st(v),
        D=d, BLOCK=KV_BLOCK, SMOOTH=smooth_k, PRE_ROUND=INTERPRETING,
        num_warps=8 if d >= 128 else 4,
    )
    return Fp8QKV(q8, qs, k8, ks, v8, stats[1])


def _normed_rotated_reference(q, k, v, q_weight, k_weight, cos, sin, eps, text):
    d = q.shape[-1]
    s_text = 0 if text is None else text[0].shape[1]
    cos, sin = cos.reshape(-1, d), sin.reshape(-1, d)
    qn, kn = qk_rmsnorm_rope_reference(
        q, k, q_weight, k_weight, cos[s_text:], sin[s_text:], eps, sequence_dim=1
    )
    if text is not None:
        tq, tk = qk_rmsnorm_rope_reference(
            text[0], text[1], text[3], text[4], cos[:s_text], sin[:s_text], eps, sequence_dim=1
        )
        qn, kn, v = torch.cat([tq, qn], 1), torch.cat([tk, kn], 1), torch.cat([text[2], v], 1)
    return qn, kn, v


def norm_rope_quantize_fp8_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: torch.Tensor,
    k_weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float = 1e-6,
    scale: float | None = None, *, text: tuple | None = None,
) -> Fp8QKV:
    """Norm and RoPE as diffusers does (kernels.rope's reference), then the fp8 quantization."""
    qn, kn, vv = _normed_rotated_reference(q, k, v, q_weight, k_weight, cos, sin, eps, text)
    return quantize_qkv_fp8_reference(qn, kn, vv, scale)


@torch.library.custom_op("mediagate::attention_fp8_norm_rope", mutates_args=())
def attention_fp8_norm_rope(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: torch.Tensor,
    k_weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float,
    q_t: torch.Tensor | None = None, k_t: torch.Tensor | None = None,
    v_t: torch.Tensor | None = None, q_t_weight: torch.Tensor | None = None,
    k_t_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """fp8 attention over [text, image] tokens with FLUX's QK RMSNorm + RoPE fused in."""
    text = None if q_t is None else (q_t, k_t, v_t, q_t_weight, k_t_weight)
    if not use_triton(q):
        qn, kn, vv = _normed_rotated_reference(q, k, v, q_weight, k_weight, cos, sin, eps, text)
        return attention_fp8_reference(qn, kn, vv)
    qkv = norm_rope_quantize_fp8(q, k, v, q_weight, k_weight, cos, sin, eps, text=text)
    s = q.shape[1] + (0 if q_t is None else q_t.shape[1])
    return attention_fp8_quantized(qkv, s, s, q.dtype)


@attention_fp8_norm_rope.register_fake
def _attention_fp8_norm_rope_fake(
    q, k, v, q_weight, k_weight, cos, sin, eps, q_t=None, k_t=None, v_t=None, q_t_weight=None,
    k_t_weight=None,
):
    s = q.shape[1] + (0 if q_t is None else q_t.shape[1])
    return q.new_empty(q.shape[0], s, q.shape[2], q.shape[3])
