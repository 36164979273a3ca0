"""The operands of cuDNN's fp8 attention, with the QK RMSNorm and RoPE fused into their quantization.

cuDNN's fp8 attention on Hopper takes one scale per tensor (engine/optimization/cudnn_fp8.py
has the reasoning), so its operands are made this way:
    - Q and K scaled into e4m3's ±448 by static bounds (after an RMSNorm, |x| <= sqrt(n)·max|w|);
    - K first centred on the mean of an evenly spaced sample of its tokens (every score of a
      query row moves by the same q·mean, so softmax is unchanged), its bound doubled;
    - V scaled per channel by its amax over all tokens;
    - K and V zero-padded to a multiple of `kv_align` tokens.
`quantize_for_cudnn` is that recipe in plain torch (under torch.compile inductor fuses it
into the kernels around it).

Wan normalizes q and k over all heads at once (an RMSNorm over H·D channels), FLUX per head
and per stream (text tokens first, with their own weights); both rotate pairs (RoPE) and
attend. Compiled, the norms, rotations, K's centring, V's channel amax, the casts and the
padding ran as five kernels, about 490 us per Wan block at 480p (H200) for some 140 us of
traffic. `norm_rope_quantize_for_cudnn` does the same in two passes: a statistics pass
(V's channel amax; the sum of K's sampled tokens after norm and rotation), then one pass that
reads each row of q, k and v once and writes q8, k8 and v8; FLUX's text stream is read in
place, so the concatenation is never written. Values stay in fp32 from the load to the e4m3
cast, as inductor keeps them inside its fused kernels (no bf16 rounding after the norm or
the rotation), so both give the same codes up to the order of the sums. The small steps
between the two passes (the bounds from the norm weights, K's mean from its partial sums,
V's amax floor, the descales) are one small kernel rather than a dozen torch launches.

API:
    quantize_for_cudnn(q, k, v, q_bound=None, k_bound=None, smooth_k=True, kv_align=1)
        -> (q8, k8, v8, descale_q, descale_k, v_amax)
        q, k, v (B, S, H, D); bounds 0-d fp32 tensors (None: the amax is taken). q8 (B, S, H, D),
        k8 and v8 (B, S_pad, H, D) e4m3; descales (1,) fp32; v_amax (B, 1, H, D) fp32.
    norm_rope_quantize_for_cudnn(q, k, v, q_weight, k_weight, eps, freqs_cos, freqs_sin,
                                 smooth_k=True, kv_align=128,
                                 q_text=None, k_text=None, v_text=None,
                                 q_text_weight=None, k_text_weight=None) -> the same
        q, k, v (B, S, H, D) bf16 projections before the norm (each row of H·D channels
        contiguous, any row stride: a fused QKV projection's chunks need no copy); weights
        (D,) for a norm per head or (H·D,) for one over the row; the text stream, if any,
        (B, S_text, H, D) with its own weights, placed first; freqs holding (S_text + S, D)
        fp32 values (Wan's (1, S, 1, D), FLUX's (S, D)), the rotation of pair (2i, 2i+1)
        taking cos from position 2i and sin from 2i+1. The bounds of q and k are the norms'
        (`rmsnorm_bound_of`), taken from the weights inside the kernels.
        A torch.library custom op (mediagate::norm_rope_quantize_for_cudnn).
    rmsnorm_bound_of(*weights) -> 0-d fp32: max |x| after RMSNorms with these weights and a
        rotation, sqrt(n)·max|w|·BOUND_MARGIN.
    norm_rope_quantize_for_cudnn_reference(...): the same steps in plain torch and fp32.
    wan_rope_reference(x, freqs_cos, freqs_sin): WanAttnProcessor's rotation of pairs.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kernels._utils import INTERPRETING, use_triton
from kernels.fp8 import AMAX_FLOOR, FP8_DTYPE, FP8_MAX, _round_to_e4m3

BOUND_MARGIN = 1.02
"""Headroom over the RMSNorm bound for bf16 rounding of the norm and the rotation."""
K_MEAN_SAMPLE = 256
"""Tokens K's centring vector is averaged over (evenly spaced; all of them when fewer)."""
QUANTIZE_LAUNCH = {"per_head": (2, 4), "over_row": (4, 4)}
"""(token rows, warps) per program of the quantizing pass, each row all H·D channels, by the
norm's reach. The three launches on an H100 in a CUDA graph: FLUX's per-head norms (4,096 +
512 tokens x 24 heads) 89-90 us against 95-97 at (2, 2), 104-105 at (4, 4); Wan's norm over
the row (32,760 x 12 heads) 240 us against 253 at (2, 2), 266 at (2, 4), 247-248 at (1, 1)."""
FINISH_CHANNELS = 128
"""Channels per program of the step between the two passes (K's mean, V's amax floor)."""
STATS_LAUNCH = {"per_head": (512, 64, 4), "over_row": (512, 32, 1)}
"""(tokens per program of one head, rows per step, warps) of the statistics pass's V amax,
by the norm's reach. The whole producer, 10 replayed in a CUDA graph on an H100
(`bench/kernels.py --sweep-only --ops norm_rope_quant_cudnn_stats`, two runs): FLUX 86.8 us
against 89.8-90.5 at (256, 32, 2) and 90.5-99 at smaller tiles; Wan 237.7-238.0 us against
241.1-242.4 at (256, 32, 2)."""


# ----------------------------------------------------------------------------- torch recipe


def _to_e4m3(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x * scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def _k_mean_stride(s: int) -> int:
    return max(1, s // K_MEAN_SAMPLE)


def quantize_for_cudnn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_bound: torch.Tensor | None = None,
    k_bound: torch.Tensor | None = None,
    smooth_k: bool = True,
    kv_align: int = 1,
) -> tuple[torch.Tensor, ...]:
    """(q8, k8, v8, descale_q, descale_k, v_amax): the operands cuDNN's fp8 attention takes."""
    qf, kf, vf = q.float(), k.float(), v.float()
    if q_bound is None:
        q_bound = qf.abs().amax()
    if k_bound is None:
        k_bound = kf.abs().amax()
    q_bound = q_bound.float().clamp(min=AMAX_FLOOR)
    k_bound = k_bound.float().clamp(min=AMAX_FLOOR)
    if smooth_k:
        # Any vector c gives the same softmax (each score of a row moves by q·c); the mean of
        # an evenly spaced sample of tokens removes a common offset as well as the full mean
        # does, for 1/stride of the reduction's reads.
        kf = kf - kf[:, :: _k_mean_stride(k.shape[1])].mean(dim=1, keepdim=True)
        k_bound = 2 * k_bound  # |k - c| <= 2 max|k| for c inside k's range
    v_amax = vf.abs().amax(dim=1, keepdim=True).clamp(min=AMAX_FLOOR)  # (B, 1, H, D)
    pad = -k.shape[1] % kv_align
    if pad:  # padded before the cast, so that under compile the pad fuses into it
        kf, vf = (torch.nn.functional.pad(t, (0, 0, 0, 0, 0, pad)) for t in (kf, vf))
    q8 = _to_e4m3(qf, FP8_MAX / q_bound)
    k8 = _to_e4m3(kf, FP8_MAX / k_bound)
    v8 = _to_e4m3(vf, FP8_MAX / v_amax)
    # Tensor by tensor: torch divides by a Python scalar through its reciprocal, one ulp off
    # the correctly rounded quotient at times, which the producer computes.
    fp8_max = torch.full_like(q_bound, FP8_MAX)
    descales = (q_bound / fp8_max).reshape(1), (k_bound / fp8_max).reshape(1)
    return q8, k8, v8, *descales, v_amax


def wan_rope_reference(
    x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor
) -> torch.Tensor:
    """WanAttnProcessor's rotation of interleaved pairs of x (B, S, H, D), in fp32.

    Written as a stack of the two halves rather than two strided stores into an empty
    tensor: inductor then reads each pair once instead of through masked gathers per parity.
    """
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.flatten(-2).type_as(x)


def rmsnorm_bound_of(*weights: torch.Tensor) -> torch.Tensor:
    """max |x| after an RMSNorm with any of these weights (n elements each) and a rotation:
    every normed element is at most sqrt(n)·max|w|, and RoPE rotates pairs without growing
    them; BOUND_MARGIN covers bf16 rounding."""
    amax = torch.stack([w.detach().float().abs().amax() for w in weights]).amax()
    return amax * math.sqrt(weights[0].numel()) * BOUND_MARGIN


def norm_rope_quantize_for_cudnn_reference(
    q, k, v, q_weight, k_weight, eps, freqs_cos, freqs_sin,
    smooth_k=True, kv_align=128, q_text=None, k_text=None, v_text=None, q_text_weight=None,
    k_text_weight=None,
) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """The processors' norms, [text, image] concatenation and rotation, then the
    quantization, in plain torch and fp32 throughout."""
    d = q.shape[-1]

    def normed(x, weight):
        if weight.numel() == d:  # per head
            return torch.nn.functional.rms_norm(x.float(), (d,), weight.float(), eps)
        hd = x.shape[-2] * d
        x = torch.nn.functional.rms_norm(x.flatten(-2).float(), (hd,), weight.float(), eps)
        return x.unflatten(-1, (-1, d))

    qn, kn, vv = normed(q, q_weight), normed(k, k_weight), v
    if q_text is not None:
        qn = torch.cat([normed(q_text, q_text_weight), qn], dim=1)
        kn = torch.cat([normed(k_text, k_text_weight), kn], dim=1)
        vv = torch.cat([v_text, v], dim=1)
    freqs = [f.reshape(1, qn.shape[1], 1, d) for f in (freqs_cos, freqs_sin)]
    qn, kn = wan_rope_reference(qn, *freqs), wan_rope_reference(kn, *freqs)
    text_w = () if q_text is None else (q_text_weight, k_text_weight)
    q_bound = rmsnorm_bound_of(q_weight, *text_w[:1])
    k_bound = rmsnorm_bound_of(k_weight, *text_w[1:])
    return quantize_for_cudnn(qn, kn, vv, q_bound, k_bound, smooth_k, kv_align)


# ----------------------------------------------------------------------------- Triton

# fmt: off


@triton.jit
def _channels(H: tl.constexpr, H_PAD: tl.constexpr, D: tl.constexpr):
    # A row's H·D channels as an (H_PAD, D) tile: offsets and the mask of real heads.
    h = tl.arange(0, H_PAD)[:, None]
    d = tl.arange(0, D)[None, :]
    return h * D + d, (h < H) & (d < D)


@triton.jit
def _load(XA, XB, SPLIT, rows, n_rows, sa, sb, cols, cmask, TEXT: tl.constexpr):
    # Rows [0, SPLIT) from the text stream XA, the rest from XB (row stride sa, sb); rows at
    # or past n_rows read 0. rows broadcasts against cols (the channel offsets).
    r = rows.to(tl.int64)
    in_b = (rows >= SPLIT) & (rows < n_rows) & cmask
    x = tl.load(XB + (r - SPLIT) * sb + cols, mask=in_b, other=0.0).to(tl.float32)
    if TEXT:
        x += tl.load(XA + r * sa + cols, mask=(rows < SPLIT) & cmask, other=0.0).to(tl.float32)
    return x


@triton.jit
def _normed_rotated(XA, XB, WA, WB, COS, SIN, SPLIT, rows, S, sa, sb, freq_stride, eps,
                    H: tl.constexpr, H_PAD: tl.constexpr, D: tl.constexpr,
                    BLOCK: tl.constexpr, PER_HEAD: tl.constexpr, TEXT: tl.constexpr):
    # Rows of x as (BLOCK, H_PAD, D) in fp32: RMSNorm per head (FLUX) or over all H·D
    # channels (Wan) with each stream's weight, then each pair rotated (cos at even, sin at
    # odd positions of the frequencies). Rows at or past S come out 0.
    ch, cmask = _channels(H, H_PAD, D)
    r3 = rows[:, None, None]
    x = _load(XA, XB, SPLIT, r3, S, sa, sb, ch[None], cmask[None], TEXT)
    if PER_HEAD:
        rstd = tl.math.rsqrt(tl.sum(x * x, axis=2) / D + eps)[:, :, None]
        w_at = ch % D
    else:
        rstd = tl.math.rsqrt(tl.sum(tl.sum(x * x, axis=2), axis=1) / (H * D) + eps)
        rstd = rstd[:, None, None]
        w_at = ch
    w = tl.load(WB + w_at, mask=cmask, other=0.0).to(tl.float32)[None]
    if TEXT:
        w_text = tl.load(WA + w_at, mask=cmask, other=0.0).to(tl.float32)[None]
        w = tl.where(r3 < SPLIT, w_text, w)
    x = x * rstd * w
    fmask = (rows < S)[:, None]
    pair = rows.to(tl.int64)[:, None] * freq_stride + 2 * tl.arange(0, D // 2)[None, :]
    cos = tl.load(COS + pair, mask=fmask, other=0.0)[:, None, :]
    sin = tl.load(SIN + pair + 1, mask=fmask, other=0.0)[:, None, :]
    x1, x2 = tl.split(tl.reshape(x, (BLOCK, H_PAD, D // 2, 2)))
    return tl.reshape(tl.join(x1 * cos - x2 * sin, x1 * sin + x2 * cos), (BLOCK, H_PAD, D))


@triton.jit
def _store_e4m3(OUT, x, scale, rows, n_rows, H: tl.constexpr, H_PAD: tl.constexpr,
                D: tl.constexpr, PRE_ROUND: tl.constexpr):
    x = tl.clamp(x * scale, -448.0, 448.0)
    if PRE_ROUND:
        x = _round_to_e4m3(x)
    ch, cmask = _channels(H, H_PAD, D)
    mask = (rows < n_rows)[:, None, None] & cmask[None, :, :]
    offs = rows.to(tl.int64)[:, None, None] * (H * D) + ch[None, :, :]
    tl.store(OUT + offs, x.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _rmsnorm_bound(WA, WB, N, sqrt_n, margin, TEXT: tl.constexpr, BLOCK: tl.constexpr):
    # rmsnorm_bound_of in the same fp32 steps: (max|w| · sqrt(n)) · margin, floored; shape (1,).
    amax = tl.zeros([BLOCK], dtype=tl.float32)
    for c in range(0, N, BLOCK):
        i = c + tl.arange(0, BLOCK)
        amax = tl.maximum(amax, tl.abs(tl.load(WB + i, mask=i < N, other=0.0).to(tl.float32)))
        if TEXT:
            w = tl.load(WA + i, mask=i < N, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(w))
    return tl.maximum(tl.max(amax, axis=0, keep_dims=True) * sqrt_n * margin, 1e-12)


@triton.jit
def _finish_stats_kernel(
    WQA, WQB, WKA, WKB, VMAX, KSUM, KMEAN, VAMAX, BOUNDS, DESCALE_Q, DESCALE_K,
    n_w, sqrt_n, margin, N_SAMPLE, N_PARTS, HD,
    SMOOTH: tl.constexpr, TEXT: tl.constexpr, PARTS: tl.constexpr, BLOCK: tl.constexpr,
):
    # BLOCK channels of batch program_id(1): K's mean from the partial sums (a fixed order:
    # the same result every run), V's amax floored; program (0, 0) also the bounds of q and k
    # from the norm weights, and the descales.
    c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    ch = c * BLOCK + tl.arange(0, BLOCK)
    cmask = ch < HD
    vmax = tl.load(VMAX + b * HD + ch, mask=cmask, other=1.0)
    tl.store(VAMAX + b * HD + ch, tl.maximum(vmax, 1e-12), mask=cmask)
    if SMOOTH:
        parts = tl.arange(0, PARTS)[:, None]
        mask = (parts < N_PARTS) & cmask[None, :]
        ksum = tl.load(KSUM + (b * N_PARTS + parts) * HD + ch[None, :], mask=mask, other=0.0)
        n = tl.full([BLOCK], N_SAMPLE, tl.float32)
        tl.store(KMEAN + b * HD + ch, tl.math.div_rn(tl.sum(ksum, axis=0), n), mask=cmask)
    if c == 0 and b == 0:
        q_bound = _rmsnorm_bound(WQA, WQB, n_w, sqrt_n, margin, TEXT, 512)
        k_bound = _rmsnorm_bound(WKA, WKB, n_w, sqrt_n, margin, TEXT, 512)
        if SMOOTH:
            k_bound = 2 * k_bound  # |k - c| <= 2 max|k| for c inside k's range
        fp8_max = tl.full([1], 448.0, tl.float32)
        one = tl.arange(0, 1)
        tl.store(BOUNDS + one, q_bound)
        tl.store(BOUNDS + 1 + one, k_bound)
        tl.store(DESCALE_Q + one, tl.math.div_rn(q_bound, fp8_max))
        tl.store(DESCALE_K + one, tl.math.div_rn(k_bound, fp8_max))


@triton.jit
def _stats_kernel(
    KA, KB, VA, VB, WKA, WKB, COS, SIN, VMAX, KSUM, SPLIT, S, eps,
    ska_b, ska_s, skb_b, skb_s, sva_b, sva_s, svb_b, svb_s, freq_stride,
    N_V, SAMPLE_STRIDE, N_SAMPLE, N_PARTS,
    H: tl.constexpr, H_PAD: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr,
    V_ROWS: tl.constexpr, CHUNK: tl.constexpr, PER_HEAD: tl.constexpr, TEXT: tl.constexpr,
):
    # Programs [0, N_V): V's channel amax of one head over CHUNK tokens, folded in by an
    # atomic max (order-free). The rest: the sum of BLOCK sampled K tokens after norm and
    # rotation, one partial sum per program (summed by `_finish_stats_kernel`).
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    if pid < N_V:
        n_chunks = tl.cdiv(S, CHUNK)
        chunk = pid % n_chunks
        h = pid // n_chunks
        d = tl.arange(0, D)
        vmax = tl.zeros([D], dtype=tl.float32)
        for r in range(0, CHUNK, V_ROWS):
            rows = chunk * CHUNK + r + tl.arange(0, V_ROWS)
            v = _load(VA + b * sva_b, VB + b * svb_b, SPLIT, rows[:, None], S, sva_s, svb_s,
                      (h * D + d)[None, :], (d < D)[None, :], TEXT)
            vmax = tl.maximum(vmax, tl.max(tl.abs(v), axis=0))
        tl.atomic_max(VMAX + b * (H * D) + h * D + d, vmax, sem="relaxed")
    else:
        part = pid - N_V
        i = part * BLOCK + tl.arange(0, BLOCK)
        rows = tl.where(i < N_SAMPLE, i * SAMPLE_STRIDE, S)
        k = _normed_rotated(KA + b * ska_b, KB + b * skb_b, WKA, WKB, COS, SIN, SPLIT, rows, S,
                            ska_s, skb_s, freq_stride, eps, H, H_PAD, D, BLOCK, PER_HEAD, TEXT)
        ch, cmask = _channels(H, H_PAD, D)
        tl.store(KSUM + (b * N_PARTS + part) * (H * D) + ch, tl.sum(k, axis=0), mask=cmask)


@triton.jit
def _quantize_kernel(
    QA, QB, KA, KB, VA, VB, WQA, WQB, WKA, WKB, COS, SIN, BOUNDS, VAMAX, KMEAN,
    Q8, K8, V8, SPLIT, S, S_PAD, eps,
    sqa_b, sqa_s, sqb_b, sqb_s, ska_b, ska_s, skb_b, skb_s, sva_b, sva_s, svb_b, svb_s,
    freq_stride,
    H: tl.constexpr, H_PAD: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr,
    SMOOTH: tl.constexpr, PER_HEAD: tl.constexpr, TEXT: tl.constexpr, PRE_ROUND: tl.constexpr,
):
    # program_id(1) picks the tensor: 0 writes q8 (S rows), 1 k8 and 2 v8 (S_PAD rows, the
    # padding zeros). Scales are 448 · (1 / bound), as torch computes 448 / bound.
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    which = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    ch, cmask = _channels(H, H_PAD, D)
    one = tl.full([H_PAD, D], 1.0, tl.float32)
    if which == 0:
        x = _normed_rotated(QA + b * sqa_b, QB + b * sqb_b, WQA, WQB, COS, SIN, SPLIT, rows, S,
                            sqa_s, sqb_s, freq_stride, eps, H, H_PAD, D, BLOCK, PER_HEAD, TEXT)
        scale = tl.math.div_rn(one, tl.load(BOUNDS)) * 448.0
        _store_e4m3(Q8 + b * S * (H * D), x, scale[None], rows, S, H, H_PAD, D, PRE_ROUND)
    elif which == 1:
        x = _normed_rotated(KA + b * ska_b, KB + b * skb_b, WKA, WKB, COS, SIN, SPLIT, rows, S,
                            ska_s, skb_s, freq_stride, eps, H, H_PAD, D, BLOCK, PER_HEAD, TEXT)
        if SMOOTH:
            mean = tl.load(KMEAN + b * (H * D) + ch, mask=cmask, other=0.0)
            x = tl.where((rows < S)[:, None, None], x - mean[None], 0.0)
        scale = tl.math.div_rn(one, tl.load(BOUNDS + 1)) * 448.0
        _store_e4m3(K8 + b * S_PAD * (H * D), x, scale[None], rows, S_PAD, H, H_PAD, D,
                    PRE_ROUND)
    else:
        x = _load(VA + b * sva_b, VB + b * svb_b, SPLIT, rows[:, None, None], S, sva_s, svb_s,
                  ch[None], cmask[None], TEXT)
        vamax = tl.load(VAMAX + b * (H * D) + ch, mask=cmask, other=1.0)
        scale = tl.math.div_rn(one, vamax) * 448.0
        _store_e4m3(V8 + b * S_PAD * (H * D), x, scale[None], rows, S_PAD, H, H_PAD, D,
                    PRE_ROUND)


# fmt: on


TEXT_ARGS = ("q_text", "k_text", "v_text", "q_text_weight", "k_text_weight")


def _check(q, k, v, q_weight, k_weight, freqs_cos, freqs_sin, text) -> None:
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"q, k and v must share one (B, S, H, D) shape, got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    b, s, h, d = q.shape
    if d < 2 or d & (d - 1):
        raise ValueError(f"head_dim must be a power of two, got {d}")
    if text is not None:
        if any(t is None for t in text):
            raise ValueError(f"the text stream needs all of {', '.join(TEXT_ARGS)}")
        q_t, k_t, v_t = text[:3]
        same_heads = q_t.dim() == 4 and (q_t.shape[0], *q_t.shape[2:]) == (b, h, d)
        if not same_heads or not q_t.shape == k_t.shape == v_t.shape:
            raise ValueError(
                f"q_text, k_text and v_text must share one (B, S_text, H, D) shape with "
                f"q's B, H and D {tuple(q.shape)}, got {tuple(q_t.shape)}, {tuple(k_t.shape)}, "
                f"{tuple(v_t.shape)}"
            )
        s += q_t.shape[1]
    for name, t in (("q", q), ("k", k), ("v", v), *zip(TEXT_ARGS, text or (), strict=False)):
        if t.dim() == 4 and t.dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"{name} must be bf16 or fp16, got {t.dtype}")
    weights = [("q_weight", q_weight), ("k_weight", k_weight)]
    if text is not None:
        weights += list(zip(TEXT_ARGS[3:], text[3:], strict=True))
    if q_weight.numel() not in (d, h * d):
        raise ValueError(f"q_weight must have D = {d} (per head) or H·D = {h * d} elements")
    for name, w in weights:
        if w.numel() != q_weight.numel():
            raise ValueError(f"{name} must have {q_weight.numel()} elements, as q_weight")
    for name, f in (("freqs_cos", freqs_cos), ("freqs_sin", freqs_sin)):
        if f.numel() != s * d:
            raise ValueError(f"{name} must hold (S, D) = ({s}, {d}) values, got {tuple(f.shape)}")


def _rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    # Each token's H·D channels contiguous; the row stride is free.
    h, d = t.shape[-2:]
    return t if t.stride(-1) == 1 and t.stride(-2) == d else t.contiguous()


def _launch(q, k, v, q_weight, k_weight, eps, freqs_cos, freqs_sin, smooth_k, kv_align,
            text=None, launch=None, stats_launch=None):  # fmt: skip
    q, k, v = (_rows_contiguous(t) for t in (q, k, v))
    if text is None:
        # No text stream: the kernels' text pointers are never read (TEXT=False).
        qa, ka, va, wqa, wka, split = q, k, v, q_weight, k_weight, 0
    else:
        qa, ka, va = (_rows_contiguous(t) for t in text[:3])
        wqa, wka, split = text[3], text[4], text[0].shape[1]
    b, s_img, h, d = q.shape
    s = split + s_img
    s_pad = s + (-s % kv_align)
    h_pad = triton.next_power_of_2(h)
    per_head = q_weight.numel() == d
    reach = "per_head" if per_head else "over_row"
    rows_per_program, num_warps = launch or QUANTIZE_LAUNCH[reach]
    v_chunk, v_rows, v_warps = stats_launch or STATS_LAUNCH[reach]
    dev = q.device
    cos = freqs_cos.reshape(s, d).float().contiguous()
    sin = freqs_sin.reshape(s, d).float().contiguous()
    stride = _k_mean_stride(s)
    n_sample = triton.cdiv(s, stride)
    sample_block = 4
    n_parts = triton.cdiv(n_sample, sample_block) if smooth_k else 0
    n_v = triton.cdiv(s, v_chunk) * h
    f32 = torch.float32
    vmax = torch.zeros(b, h * d, device=dev, dtype=f32)
    ksum = torch.empty(b, max(n_parts, 1), h * d, device=dev, dtype=f32)
    k_mean = torch.empty(b, h * d, device=dev, dtype=f32)
    v_amax = torch.empty(b, 1, h, d, device=dev, dtype=f32)
    bounds = torch.empty(2, device=dev, dtype=f32)
    descale_q, descale_k = (torch.empty(1, device=dev, dtype=f32) for _ in range(2))
    st = lambda a, x: (a.stride(0), a.stride(1), x.stride(0), x.stride(1))  # noqa: E731
    _stats_kernel[(n_v + n_parts, b)](
        ka, k, va, v, wka, k_weight, cos, sin, vmax, ksum, split, s, eps, *st(ka, k),
        *st(va, v), d, n_v, stride, n_sample, max(n_parts, 1),
        H=h, H_PAD=h_pad, D=d, BLOCK=sample_block, V_ROWS=v_rows, CHUNK=v_chunk,
        PER_HEAD=per_head, TEXT=text is not None, num_warps=v_warps,
    )  # fmt: skip
    _finish_stats_kernel[(triton.cdiv(h * d, FINISH_CHANNELS), b)](
        wqa, q_weight, wka, k_weight, vmax, ksum, k_mean, v_amax, bounds, descale_q, descale_k,
        q_weight.numel(), math.sqrt(q_weight.numel()), BOUND_MARGIN, n_sample,
        max(n_parts, 1), h * d, SMOOTH=smooth_k, TEXT=text is not None,
        PARTS=triton.next_power_of_2(max(n_parts, 1)), BLOCK=FINISH_CHANNELS, num_warps=4,
    )  # fmt: skip
    q8 = torch.empty(b, s, h, d, device=dev, dtype=FP8_DTYPE)
    k8 = torch.empty(b, s_pad, h, d, device=dev, dtype=FP8_DTYPE)
    v8 = torch.empty(b, s_pad, h, d, device=dev, dtype=FP8_DTYPE)
    _quantize_kernel[(triton.cdiv(s_pad, rows_per_program), 3, b)](
        qa, q, ka, k, va, v, wqa, q_weight, wka, k_weight, cos, sin, bounds, v_amax, k_mean,
        q8, k8, v8, split, s, s_pad, eps, *st(qa, q), *st(ka, k), *st(va, v), d,
        H=h, H_PAD=h_pad, D=d, BLOCK=rows_per_program, SMOOTH=smooth_k, PER_HEAD=per_head,
        TEXT=text is not None, PRE_ROUND=INTERPRETING, num_warps=num_warps,
    )  # fmt: skip
    return q8, k8, v8, descale_q, descale_k, v_amax


@torch.library.custom_op("mediagate::norm_rope_quantize_for_cudnn", mutates_args=())
def norm_rope_quantize_for_cudnn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    eps: float,
    freqs_cos: torch.Tensor,
    freqs_sin: torch.Tensor,
    smooth_k: bool = True,
    kv_align: int = 128,
    q_text: torch.Tensor | None = None,
    k_text: torch.Tensor | None = None,
    v_text: torch.Tensor | None = None,
    q_text_weight: torch.Tensor | None = None,
    k_text_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """QK RMSNorm (per head or over H·D) and RoPE, then `quantize_for_cudnn` with the norms'
    bounds, in three launches."""
    text = _text(q_text, k_text, v_text, q_text_weight, k_text_weight)
    _check(q, k, v, q_weight, k_weight, freqs_cos, freqs_sin, text)
    if kv_align < 1:
        raise ValueError(f"kv_align must be at least 1, got {kv_align}")
    args = (q, k, v, q_weight, k_weight, eps, freqs_cos, freqs_sin)
    if not use_triton(q):
        out = norm_rope_quantize_for_cudnn_reference(*args, smooth_k, kv_align, *(text or ()))
        return tuple(t.contiguous() for t in out)
    return _launch(*args, smooth_k, kv_align, text)


def _text(*tensors) -> tuple | None:
    return None if all(t is None for t in tensors) else tensors


@norm_rope_quantize_for_cudnn.register_fake
def _norm_rope_quantize_for_cudnn_fake(
    q, k, v, q_weight, k_weight, eps, freqs_cos, freqs_sin, smooth_k=True, kv_align=128, q_text=None, k_text=None, v_text=None, q_text_weight=None, k_text_weight=None,
):  # fmt: skip
    b, s, h, d = q.shape
    s += 0 if q_text is None else q_text.shape[1]
    s_pad = s + (-s % kv_align)
    f32 = torch.float32
    return (
        q.new_empty((b, s, h, d), dtype=FP8_DTYPE),
        q.new_empty((b, s_pad, h, d), dtype=FP8_DTYPE),
        q.new_empty((b, s_pad, h, d), dtype=FP8_DTYPE),
        q.new_empty((1,), dtype=f32),
        q.new_empty((1,), dtype=f32),
        q.new_empty((b, 1, h, d), dtype=f32),
    )
