"""adaLN-modulated LayerNorm: ``LayerNorm(x) * (1 + scale) + shift`` in one pass.

API:
    adaln_layernorm(x, shift, scale, eps=1e-6) -> Tensor
        x: (..., D) in bf16 or fp16 (fp32 works too); shift, scale: per-sample (B, D) or
        (B, 1, D), or anything broadcastable to x. The LayerNorm has no affine parameters
        (as in diffusers' AdaLayerNormZero). Statistics and arithmetic in fp32; the result
        has x's dtype and shape and is contiguous.
    adaln_layernorm_reference(x, shift, scale, eps=1e-6) -> Tensor
        The same function in plain torch (what diffusers runs eagerly).

Each row of x is read once and written once; shift and scale are read per row but stay
in L1/L2 when they are per-sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels._utils import expand_modulation, modulation_layout, row_block, use_triton


@triton.jit
def _adaln_kernel(
    X, SHIFT, SCALE, Y,
    M, N, R,
    sh_b, sh_r, sc_b, sc_r,
    eps,
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
    # All loads issued before the reductions so their latencies overlap.
    x = tl.load(X + rows[:, None] * N + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    shift = tl.load(SHIFT + (b * sh_b + r * sh_r)[:, None] + cols[None, :], mask=mask, other=0.0)
    scale = tl.load(SCALE + (b * sc_b + r * sc_r)[:, None] + cols[None, :], mask=mask, other=0.0)
    mean = tl.sum(x, axis=1) / N
    xc = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / N
    rstd = tl.math.rsqrt(var + eps)
    y = xc * rstd[:, None] * (1.0 + scale.to(tl.float32)) + shift.to(tl.float32)
    tl.store(Y + rows[:, None] * N + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


def adaln_layernorm_launch(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float, out: torch.Tensor
) -> torch.Tensor:
    """Run the kernel into a preallocated contiguous ``out`` shaped like x."""
    n = x.shape[-1]
    x2 = x.contiguous()
    m = x2.numel() // n if n else 0
    if m == 0:
        return out
    sh, r, sh_b, sh_r = modulation_layout(shift, x2)
    sc, r2, sc_b, sc_r = modulation_layout(scale, x2)
    assert r == r2 and out.is_contiguous() and out.shape == x.shape
    block_m, block_n, warps = row_block(n)
    grid = (triton.cdiv(m, block_m),)
    _adaln_kernel[grid](
        x2, sh, sc, out, m, n, r, sh_b, sh_r, sc_b, sc_r, eps,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps,
    )
    return out


def adaln_layernorm_reference(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """LayerNorm(x) * (1 + scale) + shift in plain torch."""
    normed = F.layer_norm(x, (x.shape[-1],), eps=eps)
    return normed * (1 + expand_modulation(scale, x)) + expand_modulation(shift, x)


@torch.library.custom_op("mediagate::adaln_layernorm", mutates_args=())
def adaln_layernorm(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Fused LayerNorm(x) * (1 + scale) + shift (Triton on CUDA)."""
    if not use_triton(x):
        return adaln_layernorm_reference(x, shift, scale, eps).contiguous()
    return adaln_layernorm_launch(x, shift, scale, eps, x.new_empty(x.shape))


@adaln_layernorm.register_fake
def _adaln_layernorm_fake(x, shift, scale, eps=1e-6):
    return x.new_empty(x.shape)
