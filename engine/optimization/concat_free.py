"""FLUX single blocks without the concatenation before proj_out (bf16, kernels=("concat_free",)).

A FLUX single block runs proj_out(cat([attention, mlp], -1)): at 1024² the concatenation
writes and reads back 4,608 × 15,360 bf16 values (141 MB each way, about 90 us per block
on an H100, 3.4 ms per step in `exact`) only to feed one GEMM. The same linear is the sum
of two GEMMs over the two column ranges of its weight, attention @ W[:, :3072]ᵀ + mlp @
W[:, 3072:]ᵀ, whose sum inductor fuses into the block's gating and residual. The order of
the bf16 roundings changes (two partial products instead of one), nothing else.
`FluxSingleBlockConcatFreeHook` is diffusers' forward (0.42) with that one change, on
blocks whose proj_out is a plain bf16 linear (fp8 blocks have their own fused path,
engine/optimization/gelu_fp8.py).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

from kernels._utils import HALF_DTYPES

HOOK_NAME = "mediagate_concat_free"


def linear_of_concat(linear: nn.Linear, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """linear(cat([a, b], -1)) as two GEMMs over the weight's column ranges."""
    na = a.shape[-1]
    w = linear.weight
    return nn.functional.linear(a, w[:, :na], linear.bias) + nn.functional.linear(b, w[:, na:])


class FluxSingleBlockConcatFreeHook(ModelHook):
    """FluxSingleTransformerBlock.forward (diffusers 0.42), proj_out as two GEMMs."""

    def new_forward(
        self,
        block: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        joint_attention_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text_seq_len = encoder_hidden_states.shape[1]
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        residual = hidden_states
        norm_hidden_states, gate = block.norm(hidden_states, emb=temb)
        mlp_hidden_states = block.act_mlp(block.proj_mlp(norm_hidden_states))
        attn_output = block.attn(
            hidden_states=norm_hidden_states,
            image_rotary_emb=image_rotary_emb,
            **(joint_attention_kwargs or {}),
        )
        out = linear_of_concat(block.proj_out, attn_output, mlp_hidden_states)
        hidden_states = residual + gate.unsqueeze(1) * out
        if hidden_states.dtype == torch.float16:
            hidden_states = hidden_states.clip(-65504, 65504)
        return hidden_states[:, :text_seq_len], hidden_states[:, text_seq_len:]


def free_flux_single_blocks_of_concat(model: nn.Module) -> int:
    """Hook every FLUX single block with a plain bf16/fp16 proj_out; returns how many."""
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock

    n = 0
    for block in model.modules():
        if (
            isinstance(block, FluxSingleTransformerBlock)
            and type(block.proj_out) is nn.Linear
            and block.proj_out.weight.dtype in HALF_DTYPES
        ):
            registry = HookRegistry.check_if_exists_or_initialize(block)
            if registry.get_hook(HOOK_NAME) is None:
                registry.register_hook(FluxSingleBlockConcatFreeHook(), HOOK_NAME)
                n += 1
    return n
