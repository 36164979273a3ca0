"""QK RMSNorm: RMSNorm with a learned weight over the head dim of q and k, in one launch.

API:
    qk_rmsnorm(q, k, q_weight, k_weight, eps=1e-6) -> (q_out, k_out)
        q, k: (B, H, S, Dh) in bf16 or fp16, any strides with a unit last stride (views of a
        fused qkv projection need no copy); other ranks are taken as rows of their last dim
        (Wan's norm across heads is qk_rmsnorm on (B, S, H * Dh) with weights of H * Dh).
        q_weight, k_weight: (Dh,). Outputs are contiguous, shaped and typed like q and k.
    qk_rmsnorm_reference(q, k, q_weight, k_weight, eps=1e-6) -> (q_out, k_out)
        diffusers' RMSNorm applied to each, in plain torch.

RoPE (kernels.rope builds on this module) runs on (positions, heads, head dim) tiles with
the norm fused in, so that norm and RoPE are a single pass over q and k.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._utils import HALF_DTYPES, row_block, use_triton


@triton.jit
def _qk_rows(
    X, W, OUT,
    pid, M, D1, D2,
    sx0, sx1, sx2, so0, so1, so2,
    N, eps,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Rows are numbered (i0, i1, i2) with i2 fastest.
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
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    rstd = tl.math.rsqrt(tl.sum(x * x, axis=1) / N + eps)
    x = x * rstd[:, None] * w[None, :]
    o_off = (i0 * so0 + i1 * so1 + i2 * so2)[:, None] + cols[None, :]
    tl.store(OUT + o_off, x.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _qk_kernel(
    Q, QW, QO, K, KW, KO,
    Mq, qD1, qD2, qs0, qs1, qs2, qo0, qo1, qo2,
    Mk, kD1, kD2, ks0, ks1, ks2, ko0, ko1, ko2,
    N, eps,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    if tl.program_id(1) == 0:
        _qk_rows(Q, QW, QO, pid, Mq, qD1, qD2, qs0, qs1, qs2, qo0, qo1, qo2, N, eps, BLOCK_M, BLOCK_N)
    else:
        _qk_rows(K, KW, KO, pid, Mk, kD1, kD2, ks0, ks1, ks2, ko0, ko1, ko2, N, eps, BLOCK_M, BLOCK_N)


@triton.jit
def _rope_tile(
    X, W, OUT, COS, SIN,
    pid_p, pid_h, i0, D1, D2,
    sx0, sx1, sx2, so0, so1, so2,
    N, eps,
    HAS_NORM: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # A (positions, heads, head dim) tile: the heads of a position share one cos/sin row,
    # loaded once per tile and broadcast, instead of once per row (the tables are fp32, so
    # per-row loads would move four times the bytes of x through L1).
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < N
    pmask = p < D1
    mask = pmask[:, None, None] & (h < D2)[None, :, None] & cmask[None, None, :]
    p64, h64 = p.to(tl.int64)[:, None, None], h.to(tl.int64)[None, :, None]
    x = tl.load(X + i0 * sx0 + p64 * sx1 + h64 * sx2 + cols[None, None, :], mask=mask,
                other=0.0).to(tl.float32)
    cs_off = p.to(tl.int64)[:, None] * N + cols[None, :]
    cs_mask = pmask[:, None] & cmask[None, :]
    cos = tl.load(COS + cs_off, mask=cs_mask, other=0.0).to(tl.float32)
    sin = tl.load(SIN + cs_off, mask=cs_mask, other=0.0).to(tl.float32)
    if HAS_NORM:
        w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
        rstd = tl.math.rsqrt(tl.sum(x * x, axis=2) / N + eps)
        x = x * rstd[:, :, None] * w[None, None, :]
    x_even, x_odd = tl.split(tl.reshape(x, (BLOCK_P, BLOCK_H, BLOCK_N // 2, 2)))
    rotated = tl.reshape(tl.join(-x_odd, x_even), (BLOCK_P, BLOCK_H, BLOCK_N))
    y = x * cos[:, None, :] + rotated * sin[:, None, :]
    tl.store(OUT + i0 * so0 + p64 * so1 + h64 * so2 + cols[None, None, :], y.to(OUT.dtype.element_ty),
             mask=mask)


@triton.jit
def _rope_kernel(
    Q, QW, QO, K, KW, KO, COS, SIN,
    qD1, qD2, qs0, qs1, qs2, qo0, qo1, qo2,
    kD1, kD2, ks0, ks1, ks2, ko0, ko1, ko2,
    N, eps,
    N_TENSORS: tl.constexpr, HAS_NORM: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Programs go (sample, positions, head group, q or k) with q/k fastest: the programs in
    # flight at once cover all heads of a few positions, so each cos/sin row comes from DRAM
    # once even when the tables outgrow L2 (Wan 480p: 34 MB; 78% -> 95% of copy bandwidth).
    pid = tl.program_id(0)
    n_h = tl.cdiv(tl.maximum(qD2, kD2), BLOCK_H)
    n_p = tl.cdiv(tl.maximum(qD1, kD1), BLOCK_P)
    which = pid % N_TENSORS
    rest = pid // N_TENSORS
    pid_h = rest % n_h
    rest = rest // n_h
    pid_p = rest % n_p
    i0 = (rest // n_p).to(tl.int64)
    if which == 0:
        _rope_tile(Q, QW, QO, COS, SIN, pid_p, pid_h, i0, qD1, qD2, qs0, qs1, qs2, qo0, qo1, qo2,
                   N, eps, HAS_NORM, BLOCK_P, BLOCK_H, BLOCK_N)
    else:
        _rope_tile(K, KW, KO, COS, SIN, pid_p, pid_h, i0, kD1, kD2, ks0, ks1, ks2, ko0, ko1, ko2,
                   N, eps, HAS_NORM, BLOCK_P, BLOCK_H, BLOCK_N)


def rope_tile_sizes(n_heads: int, head_dim: int) -> tuple[int, int, int, int]:
    """(BLOCK_P, BLOCK_H, BLOCK_N, num_warps): tiles of 2048 elements on two warps.

    From the H200 sweep: 4 positions x 4 heads of 128 reach 88% (FLUX, 24 heads) and 94%
    (Wan, 12 heads) of copy bandwidth for norm + RoPE of q and k, against 78% and 74% for rows
    that each reload their cos/sin; cache hints measured slower here, so there are none.
    """
    block_n = triton.next_power_of_2(max(head_dim, 2))
    block_h = min(4, triton.next_power_of_2(n_heads))
    block_p = max(1, 2048 // (block_h * block_n))
    return block_p, block_h, block_n, max(1, min(8, block_p * block_h * block_n // 1024))


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
    if has_rope:
        _launch_rope(q2, q_weight, q_out, k2, k_weight, k_out, cos, sin, q_args, k_args, n, eps,
                     two=k is not None)
        return
    assert has_norm, "without RoPE there is nothing to do but the norm"
    block_m, block_n, warps = row_block(n, block_m, num_warps)
    grid = (triton.cdiv(m, block_m), 1 if k is None else 2)
    _qk_kernel[grid](
        q2, q_weight, q_out, k2, k_weight, k_out, *q_args, *k_args, n, eps,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps,
    )


def _launch_rope(q2, q_weight, q_out, k2, k_weight, k_out, cos, sin, q_args, k_args, n, eps, two):
    # Layout args are [rows, D1 (positions), D2 (heads), 3 strides of x, 3 of out].
    samples = max(args[0] // (args[1] * args[2]) for args in (q_args, k_args))
    positions, heads = max(q_args[1], k_args[1]), max(q_args[2], k_args[2])
    block_p, block_h, block_n, warps = rope_tile_sizes(heads, n)
    n_tensors = 2 if two else 1
    grid = (samples * triton.cdiv(positions, block_p) * triton.cdiv(heads, block_h) * n_tensors,)
    has_norm = q_weight is not None
    _rope_kernel[grid](
        q2, q_weight if has_norm else q2, q_out, k2, k_weight if has_norm else q2, k_out, cos, sin,
        *q_args[1:], *k_args[1:], n, eps,
        N_TENSORS=n_tensors, HAS_NORM=has_norm,
        BLOCK_P=block_p, BLOCK_H=block_h, BLOCK_N=block_n, num_warps=warps,
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
