"""QK RMSNorm: RMSNorm with a learned weight over the head dim of q and k, in one launch.

API:
    qk_rmsnorm(q, k, q_weight, k_weight, eps=1e-6) -> (q_out, k_out)
        q, k: (B, H, S, Dh) in bf16 or fp16, any strides with a unit last stride (views of a
        fused qkv projection need no copy); other ranks are taken as rows of their last dim
        (Wan's norm across heads is qk_rmsnorm on (B, S, H * Dh) with weights of H * Dh).
        q_weight, k_weight: (Dh,). Outputs are contiguous, shaped and typed like q and k.
    qk_rmsnorm_reference(q, k, q_weight, k_weight, eps=1e-6) -> (q_out, k_out)
        diffusers' RMSNorm applied to each, in plain torch.

The row kernel here also carries the rotary embedding (kernels.rope builds on it), so that
norm and RoPE are a single pass over q and k.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._utils import HALF_DTYPES, row_block, use_triton


@triton.jit
def _qk_rows(
    X, W, OUT, COS, SIN,
    pid, M, D1, D2,
    sx0, sx1, sx2, so0, so1, so2,
    N, eps,
    HAS_NORM: tl.constexpr, HAS_ROPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Rows are numbered (i0, i1, i2) with i2 fastest; i1 is the sequence position, so rows
    # that share a position (the heads) sit together and reuse one cos/sin row from L1.
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < N
    mask = (rows < M)[:, None] & cmask[None, :]
    # Index arithmetic in int32 (64-bit division is slow), offsets in int64.
    t = rows // D2
    i2 = (rows - t * D2).to(tl.int64)
    i0_32 = t // D1
    i1 = (t - i0_32 * D1).to(tl.int64)
    i0 = i0_32.to(tl.int64)
    x = tl.load(X + (i0 * sx0 + i1 * sx1 + i2 * sx2)[:, None] + cols[None, :], mask=mask,
                other=0.0).to(tl.float32)
    if HAS_ROPE:
        cs_off = i1[:, None] * N + cols[None, :]
        cos = tl.load(COS + cs_off, mask=mask, other=0.0).to(tl.float32)
        sin = tl.load(SIN + cs_off, mask=mask, other=0.0).to(tl.float32)
    if HAS_NORM:
        w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
        rstd = tl.math.rsqrt(tl.sum(x * x, axis=1) / N + eps)
        x = x * rstd[:, None] * w[None, :]
    if HAS_ROPE:
        # Pairs (2i, 2i+1) become (-x[2i+1], x[2i]) by splitting the tile's last axis in
        # two: register shuffles within each thread, no second load.
        x_even, x_odd = tl.split(tl.reshape(x, (BLOCK_M, BLOCK_N // 2, 2)))
        rotated = tl.reshape(tl.join(-x_odd, x_even), (BLOCK_M, BLOCK_N))
        x = x * cos + rotated * sin
    o_off = (i0 * so0 + i1 * so1 + i2 * so2)[:, None] + cols[None, :]
    tl.store(OUT + o_off, x.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _qk_kernel(
    Q, QW, QO, K, KW, KO, COS, SIN,
    Mq, qD1, qD2, qs0, qs1, qs2, qo0, qo1, qo2,
    Mk, kD1, kD2, ks0, ks1, ks2, ko0, ko1, ko2,
    N, eps,
    HAS_NORM: tl.constexpr, HAS_ROPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    if tl.program_id(1) == 0:
        _qk_rows(Q, QW, QO, COS, SIN, pid, Mq, qD1, qD2, qs0, qs1, qs2, qo0, qo1, qo2,
                 N, eps, HAS_NORM, HAS_ROPE, BLOCK_M, BLOCK_N)
    else:
        _qk_rows(K, KW, KO, COS, SIN, pid, Mk, kD1, kD2, ks0, ks1, ks2, ko0, ko1, ko2,
                 N, eps, HAS_NORM, HAS_ROPE, BLOCK_M, BLOCK_N)


def _row_layout(x: torch.Tensor, out: torch.Tensor, seq_dim: int) -> tuple[torch.Tensor, list[int]]:
    """(x with a unit last stride, [M, D1, D2, 3 x strides, 3 out strides]) in (i0, seq, i2) order."""
    if x.dim() > 0 and x.stride(-1) != 1:
        x = x.contiguous()
    if x.dim() == 4:
        order = (0, 2, 1) if seq_dim == 2 else (0, 1, 2)
        d = [x.shape[i] for i in order]
        sx = [x.stride(i) for i in order]
        so = [out.stride(i) for i in order]
    else:
        n = x.shape[-1] if x.dim() else 1
        rows = x.reshape(-1, n)
        d = [1, rows.shape[0], 1]
        sx = [0, rows.stride(0), 0]
        so = [0, n, 0]
        x = rows
    return x, [d[0] * d[1] * d[2], d[1], d[2], *sx, *so]


def qk_launch(
    q: torch.Tensor,
    k: torch.Tensor | None,
    q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None,
    cos: torch.Tensor | None,
    sin: torch.Tensor | None,
    eps: float,
    q_out: torch.Tensor,
    k_out: torch.Tensor | None,
    seq_dim: int = 2,
    block_m: int | None = None,
    num_warps: int | None = None,
) -> None:
    """Norm and/or rotate q (and k) into preallocated contiguous outputs."""
    n = q.shape[-1]
    has_norm = q_weight is not None
    has_rope = cos is not None
    if has_rope:
        assert q.dim() == 4 and n % 2 == 0, "RoPE takes (B, H, S, Dh) or (B, S, H, Dh), even Dh"
        s_len = q.shape[seq_dim]
        cos = cos.reshape(s_len, n).contiguous()
        sin = sin.reshape(s_len, n).contiguous()
    q2, q_args = _row_layout(q, q_out, seq_dim)
    if k is not None:
        assert k.shape[-1] == n
        k2, k_args = _row_layout(k, k_out, seq_dim)
    else:
        k2, k_args, k_out, k_weight = q2, q_args, q_out, q_weight
    m = max(q_args[0], k_args[0])
    if m == 0:
        return
    qw = q_weight if has_norm else q2
    kw = k_weight if has_norm else q2
    cs = (cos, sin) if has_rope else (q2, q2)
    block_m, block_n, warps = row_block(n, block_m, num_warps)
    grid = (triton.cdiv(m, block_m), 1 if k is None else 2)
    _qk_kernel[grid](
        q2, qw, q_out, k2, kw, k_out, *cs, *q_args, *k_args, n, eps,
        HAS_NORM=has_norm, HAS_ROPE=has_rope, BLOCK_M=block_m, BLOCK_N=block_n,
        num_warps=warps,
    )


def rmsnorm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """diffusers' RMSNorm: fp32 statistics, weight applied in the weight's dtype."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight.dtype in HALF_DTYPES:
        xf = xf.to(weight.dtype)
    return (xf * weight).to(x.dtype)


def qk_rmsnorm_reference(
    q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of q and of k in plain torch."""
    return rmsnorm_reference(q, q_weight, eps), rmsnorm_reference(k, k_weight, eps)


@torch.library.custom_op("mediagate::qk_rmsnorm", mutates_args=())
def qk_rmsnorm(
    q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of q and k with their weights, one Triton launch for both."""
    if not use_triton(q):
        q_ref, k_ref = qk_rmsnorm_reference(q, k, q_weight, k_weight, eps)
        return q_ref.contiguous(), k_ref.contiguous()
    q_out, k_out = q.new_empty(q.shape), k.new_empty(k.shape)
    qk_launch(q, k, q_weight, k_weight, None, None, eps, q_out, k_out)
    return q_out, k_out


@qk_rmsnorm.register_fake
def _qk_rmsnorm_fake(q, k, q_weight, k_weight, eps=1e-6):
    return q.new_empty(q.shape), k.new_empty(k.shape)
