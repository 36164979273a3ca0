"""Drift between an optimized output and its eager reference, and FLOP counts for FLUX/Wan."""

from __future__ import annotations

from typing import Any

import torch


def drift(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Relative L2 error and cosine similarity of `out` against `ref` (computed in fp64)."""
    a = out.detach().double().flatten()
    b = ref.detach().double().flatten()
    rel = (a - b).norm() / b.norm().clamp_min(1e-30)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=0)
    return {"rel_l2": float(rel), "cosine": float(cos)}


def flux_step_flops(
    config: Any, *, image_tokens: int, text_tokens: int = 512, batch: int = 1
) -> dict[str, float]:
    """FLOPs of one FLUX transformer forward: linears (2·M·K·N) and attention (4·S²·D per head set)."""
    d = config.num_attention_heads * config.attention_head_dim
    mlp = 4 * d
    s_img, s_txt = image_tokens, text_tokens
    s = s_img + s_txt
    per_double = (
        2 * s_img * d * (3 * d + d + mlp + mlp)  # image stream: qkv, out, ff up, ff down
        + 2 * s_txt * d * (3 * d + d + mlp + mlp)  # text stream
        + 2 * d * 12 * d  # two AdaLN modulations (6d each), one token per sample
    )
    per_single = 2 * s * d * (3 * d + mlp) + 2 * s * (d + mlp) * d + 2 * d * 3 * d
    linears = batch * (config.num_layers * per_double + config.num_single_layers * per_single)
    attn = batch * (config.num_layers + config.num_single_layers) * 4 * s * s * d
    return {"linears": float(linears), "attention": float(attn), "total": float(linears + attn)}


def wan_step_flops(
    config: Any, *, video_tokens: int, text_tokens: int = 512, batch: int = 1
) -> dict[str, float]:
    """FLOPs of one Wan transformer forward (self-attn, cross-attn, FFN, projections)."""
    d = config.num_attention_heads * config.attention_head_dim
    s = video_tokens
    per_block = (
        2 * s * d * 4 * d  # self-attention qkv + out
        + 2 * s * d * 2 * d  # cross-attention q + out
        + 2 * text_tokens * d * 2 * d  # cross-attention k, v over the text
        + 2 * s * d * config.ffn_dim * 2  # FFN up and down
    )
    linears = batch * config.num_layers * per_block
    attn = batch * config.num_layers * (4 * s * s * d + 4 * s * text_tokens * d)
    return {"linears": float(linears), "attention": float(attn), "total": float(linears + attn)}
