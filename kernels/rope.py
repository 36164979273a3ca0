"""Rotary embeddings as FLUX applies them (3-axis RoPE, interleaved pairs), alone or fused with QK RMSNorm.

The rotation matches diffusers' ``apply_rotary_emb(x, (cos, sin), use_real=True,
use_real_unbind_dim=-1)``: for each pair (x[2i], x[2i+1]),
    out[2i]   = x[2i]   * cos[2i]   - x[2i+1] * sin[2i]
    out[2i+1] = x[2i+1] * cos[2i+1] + x[2i]   * sin[2i+1]
with cos and sin shaped (S, Dh) (FluxPosEmbed's output, usually fp32) and all arithmetic in
fp32.

API:
    apply_rope(x, cos, sin, sequence_dim=2) -> Tensor
        x: (B, H, S, Dh) (sequence_dim=2) or (B, S, H, Dh) (sequence_dim=1), bf16 or fp16,
        any strides with a unit last stride. Output contiguous, shaped and typed like x.
    qk_rmsnorm_rope(q, k, q_weight, k_weight, cos, sin, eps=1e-6, sequence_dim=2) -> (q, k)
        RMSNorm (weights (Dh,)) then RoPE on q and k: one read and one write of each.
    apply_rope_reference / qk_rmsnorm_rope_reference: the same in plain torch.
"""

from __future__ import annotations

import torch

from kernels._utils import use_triton
from kernels.qk_norm import qk_launch, rmsnorm_reference


def apply_rope_reference(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sequence_dim: int = 2
) -> torch.Tensor:
    """diffusers' apply_rotary_emb(use_real=True, use_real_unbind_dim=-1) in plain torch."""
    s_len, dh = x.shape[sequence_dim], x.shape[-1]
    cos, sin = cos.reshape(s_len, dh), sin.reshape(s_len, dh)
    if sequence_dim == 2:
        cos, sin = cos[None, None], sin[None, None]
    else:
        cos, sin = cos[None, :, None], sin[None, :, None]
    x_real, x_imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
    return (x.float() * cos + x_rotated.float() * sin).to(x.dtype)


def qk_rmsnorm_rope_reference(
    q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
    cos: torch.Tensor, sin: torch.Tensor, eps: float = 1e-6, sequence_dim: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm then RoPE of q and k in plain torch."""
    q = apply_rope_reference(rmsnorm_reference(q, q_weight, eps), cos, sin, sequence_dim)
    k = apply_rope_reference(rmsnorm_reference(k, k_weight, eps), cos, sin, sequence_dim)
    return q, k


def _check_seq_dim(sequence_dim: int) -> None:
    if sequence_dim not in (1, 2):
        raise ValueError(f"sequence_dim must be 1 or 2, got {sequence_dim}")


@torch.library.custom_op("mediagate::apply_rope", mutates_args=())
def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sequence_dim: int = 2
) -> torch.Tensor:
    """Rotate interleaved pairs of x by (cos, sin) of shape (S, Dh)."""
    _check_seq_dim(sequence_dim)
    if not use_triton(x):
        return apply_rope_reference(x, cos, sin, sequence_dim).contiguous()
    out = x.new_empty(x.shape)
    qk_launch(x, None, None, None, cos, sin, 0.0, out, None, seq_dim=sequence_dim)
    return out


@apply_rope.register_fake
def _apply_rope_fake(x, cos, sin, sequence_dim=2):
    return x.new_empty(x.shape)


@torch.library.custom_op("mediagate::qk_rmsnorm_rope", mutates_args=())
def qk_rmsnorm_rope(
    q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
    cos: torch.Tensor, sin: torch.Tensor, eps: float = 1e-6, sequence_dim: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm then RoPE of q and k in one Triton launch."""
    _check_seq_dim(sequence_dim)
    if not use_triton(q):
        q_ref, k_ref = qk_rmsnorm_rope_reference(
            q, k, q_weight, k_weight, cos, sin, eps, sequence_dim
        )
        return q_ref.contiguous(), k_ref.contiguous()
    q_out, k_out = q.new_empty(q.shape), k.new_empty(k.shape)
    qk_launch(q, k, q_weight, k_weight, cos, sin, eps, q_out, k_out, seq_dim=sequence_dim)
    return q_out, k_out


@qk_rmsnorm_rope.register_fake
def _qk_rmsnorm_rope_fake(q, k, q_weight, k_weight, cos, sin, eps=1e-6, sequence_dim=2):
    return q.new_empty(q.shape), k.new_empty(k.shape)
