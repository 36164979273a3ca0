"""Gated residual ``x + gate * y``, alone or fused with the next adaLN-modulated LayerNorm.

In a FLUX or Wan block the attention output y joins the residual stream x through a
per-sample gate, and the very next thing read from the stream is its modulated LayerNorm.
Fused, that is one read of x and y and one write of each result instead of five passes.

API:
    gated_residual(x, gate, y) -> Tensor
        x, y: (..., D) of one shape, bf16 or fp16; gate: per-sample (B, D) or (B, 1, D), or
        anything broadcastable to x. fp32 arithmetic, x's dtype out, contiguous.
    gated_residual_adaln(x, gate, y, shift, scale, eps=1e-6) -> (new_residual, normed)
        new_residual = x + gate * y; normed = LayerNorm(new_residual) * (1 + scale) + shift,
        the statistics taken in fp32 from the unrounded sum. shift and scale as gate.
    gated_residual_reference / gated_residual_adaln_reference: plain torch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._utils import expand_modulation, modulation_layout, row_block, use_triton
from kernels.adaln_norm import adaln_layernorm_reference


@triton.jit
def _gated_residual_kernel(
    X, G, Y, OUT, M, N, R, g_b, g_r,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows32 = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows32 < M)[:, None] & (cols < N)[None, :]
    # Index arithmetic in int32 (64-bit division is slow), offsets in int64.
    b32 = rows32 // R
    b = b32.to(tl.int64)
    r = (rows32 - b32 * R).to(tl.int64)
    rows = rows32.to(tl.int64)
    off = rows[:, None] * N + cols[None, :]
    x = tl.load(X + off, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(Y + off, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + (b * g_b + r * g_r)[:, None] + cols[None, :], mask=mask, other=0.0)
    tl.store(OUT + off, (x + g.to(tl.float32) * y).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _gated_residual_adaln_kernel(
    X, G, Y, SHIFT, SCALE, RES, NORMED,
    M, N, R, g_b, g_r, sh_b, sh_r, sc_b, sc_r, eps,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows32 = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows32 < M)[:, None] & (cols < N)[None, :]
    # Index arithmetic in int32 (64-bit division is slow), offsets in int64.
    b32 = rows32 // R
    b = b32.to(tl.int64)
    r = (rows32 - b32 * R).to(tl.int64)
    rows = rows32.to(tl.int64)
    off = rows[:, None] * N + cols[None, :]
    x = tl.load(X + off, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(Y + off, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + (b * g_b + r * g_r)[:, None] + cols[None, :], mask=mask, other=0.0)
    shift = tl.load(SHIFT + (b * sh_b + r * sh_r)[:, None] + cols[None, :], mask=mask, other=0.0)
    scale = tl.load(SCALE + (b * sc_b + r * sc_r)[:, None] + cols[None, :], mask=mask, other=0.0)
    h = x + g.to(tl.float32) * y
    tl.store(RES + off, h.to(RES.dtype.element_ty), mask=mask)
    mean = tl.sum(h, axis=1) / N
    hc = tl.where(mask, h - mean[:, None], 0.0)
    rstd = tl.math.rsqrt(tl.sum(hc * hc, axis=1) / N + eps)
    out = hc * rstd[:, None] * (1.0 + scale.to(tl.float32)) + shift.to(tl.float32)
    tl.store(NORMED + off, out.to(NORMED.dtype.element_ty), mask=mask)


def gated_residual_launch(
    x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """x + gate * y into a preallocated contiguous ``out``."""
    assert x.shape == y.shape == out.shape and out.is_contiguous()
    n = x.shape[-1]
    x2, y2 = x.contiguous(), y.contiguous()
    m = x2.numel() // n if n else 0
    if m == 0:
        return out
    g, r, g_b, g_r = modulation_layout(gate, x2)
    block_n = min(triton.next_power_of_2(n), 512)
    block_m = max(1, 4096 // block_n)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _gated_residual_kernel[grid](
        x2, g, y2, out, m, n, r, g_b, g_r, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4
    )
    return out


def gated_residual_adaln_launch(
    x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor,
    shift: torch.Tensor, scale: torch.Tensor, eps: float,
    res_out: torch.Tensor, normed_out: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused residual + adaLN norm into preallocated contiguous outputs."""
    assert x.shape == y.shape == res_out.shape == normed_out.shape
    n = x.shape[-1]
    x2, y2 = x.contiguous(), y.contiguous()
    m = x2.numel() // n if n else 0
    if m == 0:
        return res_out, normed_out
    g, r, g_b, g_r = modulation_layout(gate, x2)
    sh, _, sh_b, sh_r = modulation_layout(shift, x2)
    sc, _, sc_b, sc_r = modulation_layout(scale, x2)
    block_m, block_n, warps = row_block(n)
    _gated_residual_adaln_kernel[(triton.cdiv(m, block_m),)](
        x2, g, y2, sh, sc, res_out, normed_out, m, n, r, g_b, g_r, sh_b, sh_r, sc_b, sc_r, eps,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps,
    )
    return res_out, normed_out


def gated_residual_reference(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + gate * y in plain torch."""
    return x + expand_modulation(gate, x) * y


def gated_residual_adaln_reference(
    x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor,
    shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + gate * y, its modulated LayerNorm) in plain torch."""
    res = gated_residual_reference(x, gate, y)
    return res, adaln_layernorm_reference(res, shift, scale, eps)


@torch.library.custom_op("mediagate::gated_residual", mutates_args=())
def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + gate * y in one pass."""
    if not use_triton(x):
        return gated_residual_reference(x, gate, y).contiguous()
    return gated_residual_launch(x, gate, y, x.new_empty(x.shape))


@gated_residual.register_fake
def _gated_residual_fake(x, gate, y):
    return x.new_empty(x.shape)


@torch.library.custom_op("mediagate::gated_residual_adaln", mutates_args=())
def gated_residual_adaln(
    x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor,
    shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + gate * y, LayerNorm(x + gate * y) * (1 + scale) + shift) in one pass."""
    if not use_triton(x):
        res, normed = gated_residual_adaln_reference(x, gate, y, shift, scale, eps)
        return res.contiguous(), normed.contiguous()
    return gated_residual_adaln_launch(
        x, gate, y, shift, scale, eps, x.new_empty(x.shape), x.new_empty(x.shape)
    )


@gated_residual_adaln.register_fake
def _gated_residual_adaln_fake(x, gate, y, shift, scale, eps=1e-6):
    return x.new_empty(x.shape), x.new_empty(x.shape)
