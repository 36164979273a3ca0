"""Operands for bench/kernels.py: the engine's own argument shapes, random values."""

from __future__ import annotations

import torch

from kernels.fp8 import quantize_fp8_rowwise_reference, quantize_weight_fp8_rowwise

FLUX_TEXT_TOKENS = 512


def gemv_operands(m: int, k: int, n: int, dev: str) -> tuple:
    w_fp8, w_scale = quantize_weight_fp8_rowwise(torch.randn(n, k, device=dev) / k**0.5)
    x = torch.randn(m, k, dtype=torch.bfloat16, device=dev)
    return x, w_fp8, w_scale.view(1, n), torch.randn(n, dtype=torch.bfloat16, device=dev)


def scaled_mm_rowwise(x, w_fp8, w_scale, bias):
    xq, xs = quantize_fp8_rowwise_reference(x)
    return torch._scaled_mm(xq, w_fp8.t(), scale_a=xs, scale_b=w_scale, bias=bias,
                            out_dtype=torch.bfloat16, use_fast_accum=True)  # fmt: skip


def _fused_qkv(t: int, h: int, dh: int, dtype: torch.dtype, dev: str) -> list[torch.Tensor]:
    # Chunks of one fused QKV projection, as the engine's processors hand them over.
    fused = torch.randn(1, t, 3 * h * dh, dtype=dtype, device=dev)
    return [x.unflatten(-1, (h, dh)) for x in fused.chunk(3, dim=-1)]


def wan_qkv(t: int, h: int, dh: int, dtype: torch.dtype, dev: str) -> tuple:
    """norm_rope_quantize_for_cudnn's arguments at Wan: one norm over H·D channels."""
    q, k, v = _fused_qkv(t, h, dh, dtype, dev)
    w_q, w_k = (1 + 0.2 * torch.randn(h * dh, dtype=dtype, device=dev) for _ in range(2))
    angles = torch.rand(1, t, 1, dh, device=dev) * 6.28
    return q, k, v, w_q, w_k, 1e-6, angles.cos(), angles.sin()


def flux_qkv(t: int, h: int, dh: int, dtype: torch.dtype, dev: str) -> tuple:
    """The same at FLUX: norms per head, the text stream first with its own weights."""
    tx = min(FLUX_TEXT_TOKENS, t // 2)
    q, k, v = _fused_qkv(t - tx, h, dh, dtype, dev)
    text = _fused_qkv(tx, h, dh, dtype, dev)
    w_q, w_k, w_qt, w_kt = (1 + 0.2 * torch.randn(dh, dtype=dtype, device=dev) for _ in range(4))
    angles = torch.rand(t, dh, device=dev) * 6.28
    return q, k, v, w_q, w_k, 1e-6, angles.cos(), angles.sin(), (*text, w_qt, w_kt)
