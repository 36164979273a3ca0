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

from kernels._utils import (
    expand_modulation,
    late_modulation,
    modulation_layout,
    row_block,
    sample_split,
    use_triton,
)
from kernels.adaln_norm import _load_modulation, adaln_layernorm_reference


@triton.jit
def _gated_residual_kernel(
    X, G, Y, OUT, R, N, g_b, g_r,
    PER_SAMPLE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    b = tl.program_id(2).to(tl.int64)
    r = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    mask = (r < R)[:, None] & cmask[None, :]
    off = (b * R + r)[:, None] * N + cols[None, :]
    x = tl.load(X + off, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(Y + off, mask=mask, other=0.0).to(tl.float32)
    g = _load_modulation(G, b, r, g_b, g_r, cols, mask, cmask, PER_SAMPLE)
    tl.store(OUT + off, (x + g * y).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _gated_residual_adaln_kernel(
    X, G, Y, SHIFT, SCALE, RES, NORMED,
    R, N, g_b, g_r, sh_b, sh_r, sc_b, sc_r, eps,
    PER_SAMPLE: tl.constexpr,
    LATE_MOD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    r = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < N
    mask = (r < R)[:, None] & cmask[None, :]
    off = (b * R + r)[:, None] * N + cols[None, :]
    x = tl.load(X + off, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(Y + off, mask=mask, other=0.0).to(tl.float32)
    g = _load_modulation(G, b, r, g_b, g_r, cols, mask, cmask, PER_SAMPLE)
    # Up front, the modulation's latency hides under the row's; after the statistics, fewer
    # registers are live while the row streams in (see _utils.late_modulation).
    if not LATE_MOD:
        shift = _load_modulation(SHIFT, b, r, sh_b, sh_r, cols, mask, cmask, PER_SAMPLE)
        scale = _load_modulation(SCALE, b, r, sc_b, sc_r, cols, mask, cmask, PER_SAMPLE)
    h = x + g * y
    tl.store(RES + off, h.to(RES.dtype.element_ty), mask=mask)
    mean = tl.sum(h, axis=1) / N
    hc = tl.where(mask, h - mean[:, None], 0.0)
    rstd = tl.math.rsqrt(tl.sum(hc * hc, axis=1) / N + eps)
    if LATE_MOD:
        shift = _load_modulation(SHIFT, b, r, sh_b, sh_r, cols, mask, cmask, PER_SAMPLE)
        scale = _load_modulation(SCALE, b, r, sc_b, sc_r, cols, mask, cmask, PER_SAMPLE)
    out = hc * rstd[:, None] * (1.0 + scale) + shift
    tl.store(NORMED + off, out.to(NORMED.dtype.element_ty), mask=mask)


def gated_residual_launch(
    x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor, out: torch.Tensor,
    block_m: int | None = None, block_n: int | None = None, num_warps: int | None = None,
) -> torch.Tensor:
    """x + gate * y into a preallocated contiguous ``out``."""
    assert x.shape == y.shape == out.shape and out.is_contiguous()
    n = x.shape[-1]
    x2, y2 = x.contiguous(), y.contiguous()
    b, r = sample_split(x2)
    if b * r == 0:
        return out
    g, g_b, g_r, per_sample = modulation_layout(gate, x2)
    block_n = block_n or min(triton.next_power_of_2(n), 1024)
    block_m = block_m or max(1, 4096 // block_n)
    num_warps = num_warps or 8
    grid = (triton.cdiv(r, block_m), triton.cdiv(n, block_n), b)
    _gated_residual_kernel[grid](
        x2, g, y2, out, r, n, g_b, g_r,
        PER_SAMPLE=per_sample, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps,
    )
    return out


def gated_residual_adaln_launch(
    x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor,
    shift: torch.Tensor, scale: torch.Tensor, eps: float,
    res_out: torch.Tensor, normed_out: torch.Tensor,
    block_m: int | None = None, num_warps: int | None = None, late_mod: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused residual + adaLN norm into preallocated contiguous outputs."""
    assert x.shape == y.shape == res_out.shape == normed_out.shape
    n = x.shape[-1]
    x2, y2 = x.contiguous(), y.contiguous()
    b, r = sample_split(x2)
    if b * r == 0:
        return res_out, normed_out
    g, g_b, g_r, g_ps = modulation_layout(gate, x2)
    sh, sh_b, sh_r, sh_ps = modulation_layout(shift, x2)
    sc, sc_b, sc_r, sc_ps = modulation_layout(scale, x2)
    block_m, block_n, warps = row_block(n, block_m, num_warps)
    late = late_modulation(block_n) if late_mod is None else late_mod
    _gated_residual_adaln_kernel[(triton.cdiv(r, block_m), b)](
        x2, g, y2, sh, sc, res_out, normed_out, r, n, g_b, g_r, sh_b, sh_r, sc_b, sc_r, eps,
        PER_SAMPLE=g_ps and sh_ps and sc_ps, LATE_MOD=late,
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
