"""adaLN-modulated LayerNorm straight into fp8 rows: an FP8Linear's input in one pass.

A FLUX single block normalizes the joint sequence (text tokens, then image tokens),
modulates it per sample and hands it to two fp8 linears (the MLP's and the fused QKV), each
of which quantizes it per row. Here the row is read once, from wherever its tokens live, and
written once, as e4m3 with its scale: no concatenation, no bf16 normed tensor, no second
pass for the row's amax.

API:
    adaln_layernorm_fp8(x, shift, scale, eps=1e-6, prefix=None) -> (q, s)
        y = LayerNorm(rows) * (1 + scale) + shift, rounded to x's dtype, quantized per row as
        `kernels.fp8.quantize_fp8_rowwise` does: q e4m3 and s fp32 with y ~= q * s.
        x: (B, S, D) bf16 or fp16. prefix: optional (B, P, D) rows that come before x's in
        the sequence (read in place; the result has P + S rows per sample). shift, scale:
        per sample, (B, D), (B, 1, D), (1, D) or (D,). q is (B, P + S, D), s (B, P + S, 1).
    residual_adaln_layernorm_fp8(x, y, gate, shift, scale, eps=1e-6) -> (res, q, s)
        res = x + gate · y in fp32, rounded to x's dtype (gate None: x + y; gate per sample
        like shift), then q, s of res as above. Where a block's branch output joins the
        residual stream and the stream's next LayerNorm feeds an fp8 linear (a FLUX double
        block's feed-forward, Wan's cross attention and feed-forward): x and y read once,
        res and the rows written once. No prefix.
    *_reference(...): the same in plain torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels._utils import HALF_DTYPES, INTERPRETING, use_triton
from kernels.adaln_norm import adaln_launch_sizes
from kernels.fp8 import (
    FP8_DTYPE,
    _round_to_bf16,
    _row_scales,
    _store_e4m3,
    quantize_fp8_rowwise_reference,
)


@triton.jit
def _adaln_fp8_kernel(
    P, X, Y, G, SHIFT, SCALE, RES, Q, S,
    SP, SX, N, g_b, sh_b, sc_b, eps,
    PREFIX: tl.constexpr, RESIDUAL: tl.constexpr, GATED: tl.constexpr,
    PRE_ROUND: tl.constexpr, BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    r = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < N
    rmask = r < SP + SX
    mask = rmask[:, None] & cmask[None, :]
    off_x = (b * SX + r - SP)[:, None] * N + cols[None, :]
    if PREFIX:  # each row from the prefix or from x: one load through a chosen address
        off_p = (b * SP + r)[:, None] * N + cols[None, :]
        ptr = tl.where((r < SP)[:, None], P + off_p, X + off_x)
    else:
        ptr = X + off_x
    x = tl.load(ptr, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
    if RESIDUAL:  # x + gate * y joins the stream, rounded to its dtype, and is normed as such
        y = tl.load(Y + off_x, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
        if GATED:
            g = tl.load(G + b * g_b + cols, mask=cmask, other=0.0, eviction_policy="evict_last")
            y = g.to(tl.float32)[None, :] * y
        x = x + y
        if PRE_ROUND and BF16:
            x = _round_to_bf16(x)
        x = x.to(X.dtype.element_ty)
        tl.store(RES + off_x, x, mask=mask)
        x = x.to(tl.float32)
    mean = tl.sum(x, axis=1) / N
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = tl.math.rsqrt(tl.sum(xc * xc, axis=1) / N + eps)
    # Modulations are per sample: one row each, loaded after the statistics (fewer live
    # registers while the row streams in).
    shift = tl.load(SHIFT + b * sh_b + cols, mask=cmask, other=0.0, eviction_policy="evict_last")
    scale = tl.load(SCALE + b * sc_b + cols, mask=cmask, other=0.0, eviction_policy="evict_last")
    y = xc * rstd[:, None] * (1.0 + scale.to(tl.float32)[None, :]) + shift.to(tl.float32)[None, :]
    # The linear would have quantized the normed tensor in x's dtype: round there first.
    if PRE_ROUND and BF16:
        y = _round_to_bf16(y)
    y = y.to(X.dtype.element_ty).to(tl.float32)
    y = tl.where(mask, y, 0.0)
    inv, row_scale = _row_scales(tl.max(tl.abs(y), axis=1))
    out = (b * (SP + SX) + r)[:, None] * N + cols[None, :]
    _store_e4m3(Q, out, mask, y, inv, PRE_ROUND)
    tl.store(S + b * (SP + SX) + r, row_scale, mask=rmask)


def _per_sample(mod: torch.Tensor, b: int, d: int, name: str) -> torch.Tensor:
    """A per-sample modulation as (B, D) with unit column stride (batch stride 0 if shared)."""
    if mod.shape[-1] != d or mod.numel() not in (d, b * d) or mod.dim() > 3:
        raise ValueError(
            f"{name} must be per sample, (B, D), (B, 1, D) or (D,) with D={d}, "
            f"got {tuple(mod.shape)}"
        )
    m = mod.reshape(-1, d)
    if m.stride(-1) != 1:
        m = m.contiguous()
    return m.expand(b, d)


def _check(x: torch.Tensor, prefix: torch.Tensor | None, name: str = "prefix") -> None:
    if x.dim() != 3 or x.dtype not in HALF_DTYPES:
        raise ValueError(f"x must be (B, S, D) in bf16 or fp16, got {tuple(x.shape)} {x.dtype}")
    if prefix is not None and (
        prefix.dim() != 3
        or prefix.shape[0] != x.shape[0]
        or prefix.shape[2] != x.shape[2]
        or prefix.dtype != x.dtype
    ):
        raise ValueError(
            f"{name} must be (B, S, D) like x {tuple(x.shape)} {x.dtype}, "
            f"got {tuple(prefix.shape)} {prefix.dtype}"
        )


def _check_residual(x: torch.Tensor, y: torch.Tensor) -> None:
    _check(x, y, "y")
    if y.shape != x.shape:
        raise ValueError(f"y must have x's shape {tuple(x.shape)}, got {tuple(y.shape)}")


def adaln_layernorm_fp8_reference(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
    prefix: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm, modulation, rounding to x's dtype and row quantization in plain torch."""
    _check(x, prefix)
    b, d = x.shape[0], x.shape[-1]
    rows = x if prefix is None else torch.cat([prefix, x], dim=1)
    sh = _per_sample(shift, b, d, "shift").float()[:, None]
    sc = _per_sample(scale, b, d, "scale").float()[:, None]
    y = (F.layer_norm(rows.float(), (d,), eps=eps) * (1 + sc) + sh).to(x.dtype)
    return quantize_fp8_rowwise_reference(y)


def residual_adaln_layernorm_fp8_reference(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x + gate · y in fp32, rounded to x's dtype, then `adaln_layernorm_fp8_reference` of it."""
    _check_residual(x, y)
    branch = y.float()
    if gate is not None:
        branch = _per_sample(gate, x.shape[0], x.shape[-1], "gate").float()[:, None] * branch
    res = (x.float() + branch).to(x.dtype)
    return (res, *adaln_layernorm_fp8_reference(res, shift, scale, eps))


def _launch(x, y, gate, shift, scale, eps, prefix, block_m=None, num_warps=None):
    b, sx, d = x.shape
    x = x.contiguous()
    p = x if prefix is None else prefix.contiguous()
    sp = 0 if prefix is None else p.shape[1]
    yc = x if y is None else y.contiguous()
    sh = _per_sample(shift, b, d, "shift")
    sc = _per_sample(scale, b, d, "scale")
    g = sh if gate is None else _per_sample(gate, b, d, "gate")
    res = torch.empty_like(x) if y is not None else x
    q = torch.empty(b, sp + sx, d, device=x.device, dtype=FP8_DTYPE)
    s = torch.empty(b, sp + sx, 1, device=x.device, dtype=torch.float32)
    if b * (sp + sx) * d == 0:
        return res, q, s
    auto_m, block_n, auto_warps, _ = adaln_launch_sizes(d)
    block_m = auto_m if block_m is None else block_m
    grid = (triton.cdiv(sp + sx, block_m), b)
    _adaln_fp8_kernel[grid](
        p, x, yc, g, sh, sc, res, q, s, sp, sx, d, g.stride(0), sh.stride(0), sc.stride(0), eps,
        PREFIX=prefix is not None, RESIDUAL=y is not None, GATED=gate is not None,
        PRE_ROUND=INTERPRETING, BF16=x.dtype == torch.bfloat16,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=auto_warps if num_warps is None else num_warps,
    )
    return res, q, s


def adaln_layernorm_fp8_launch(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float,
    prefix: torch.Tensor | None,
    block_m: int | None = None,
    num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    _check(x, prefix)
    return _launch(x, None, None, shift, scale, eps, prefix, block_m, num_warps)[1:]


def residual_adaln_layernorm_fp8_launch(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float,
    block_m: int | None = None,
    num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_residual(x, y)
    return _launch(x, y, gate, shift, scale, eps, None, block_m, num_warps)


@torch.library.custom_op("mediagate::adaln_layernorm_fp8", mutates_args=())
def adaln_layernorm_fp8(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
    prefix: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 rows, fp32 row scales) of LayerNorm(cat([prefix, x])) * (1 + scale) + shift."""
    if not use_triton(x):
        return adaln_layernorm_fp8_reference(x, shift, scale, eps, prefix)
    return adaln_layernorm_fp8_launch(x, shift, scale, eps, prefix)


@adaln_layernorm_fp8.register_fake
def _adaln_layernorm_fp8_fake(x, shift, scale, eps=1e-6, prefix=None):
    b, sx, d = x.shape
    rows = sx + (0 if prefix is None else prefix.shape[1])
    return x.new_empty(b, rows, d, dtype=FP8_DTYPE), x.new_empty(b, rows, 1, dtype=torch.float32)


@torch.library.custom_op("mediagate::residual_adaln_layernorm_fp8", mutates_args=())
def residual_adaln_layernorm_fp8(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x + gate · y, and the e4m3 rows and fp32 row scales of its modulated LayerNorm)."""
    if not use_triton(x):
        return residual_adaln_layernorm_fp8_reference(x, y, gate, shift, scale, eps)
    return residual_adaln_layernorm_fp8_launch(x, y, gate, shift, scale, eps)


@residual_adaln_layernorm_fp8.register_fake
def _residual_adaln_layernorm_fp8_fake(x, y, gate, shift, scale, eps=1e-6):
    b, s, d = x.shape
    return (
        torch.empty_like(x),
        x.new_empty(b, s, d, dtype=FP8_DTYPE),
        x.new_empty(b, s, 1, dtype=torch.float32),
    )
