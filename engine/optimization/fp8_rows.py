"""Blocks whose LayerNorms feed fp8 linears write the normed rows once, as e4m3 (`fast`).

In a FLUX double block or a Wan block every LayerNorm's output goes to an fp8 linear, which
quantizes it per row; under torch.compile that is one inductor kernel per norm, measured at
a quarter to a half of the traffic floor (Wan 480p on an H100: 158-255 µs per norm and
block). These hooks run the blocks' own forward with the norms through kernels/adaln_fp8.py:
    - the first norm of a block (adaLN) straight into the fp8 rows its QKV projection reads,
      handed to the attention processor as `fp8_rows` (FLUX: both streams);
    - where an attention output joins the residual stream and the next norm reads the
      stream (FLUX's feed-forwards, Wan's cross attention and feed-forward), the residual
      sum and the norm's fp8 rows in one pass.
Wan's affine cross-attention norm is the same modulation with scale = weight - 1 and
shift = bias. A block whose layers are not plain FP8Linears (a LoRA wrapper), whose
modulation is per token (Wan 2.2 TI2V) or whose processor is not ours runs diffusers'
forward unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

from engine.optimization.fp8 import is_plain_fp8
from engine.optimization.sdpa import FluxSDPAProcessor, WanSDPAProcessor, _linear_on_rows
from kernels._utils import HALF_DTYPES

HOOK_NAME = "mediagate_fp8_rows"


def adaln_rows(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float,
    prefix: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp8 rows of LayerNorm(cat([prefix, x])) * (1 + scale) + shift."""
    from kernels.adaln_fp8 import adaln_layernorm_fp8, adaln_layernorm_fp8_reference

    if x.is_cuda:
        return adaln_layernorm_fp8(x, shift, scale, eps, prefix)
    # Off the GPU the same math in torch (Triton's interpreter is for kernel tests).
    return adaln_layernorm_fp8_reference(x, shift, scale, eps, prefix)


def residual_rows(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor | None,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x + gate · y, fp8 rows of its LayerNorm * (1 + scale) + shift)."""
    from kernels.adaln_fp8 import (
        residual_adaln_layernorm_fp8,
        residual_adaln_layernorm_fp8_reference,
    )

    if x.is_cuda:
        return residual_adaln_layernorm_fp8(x, y, gate, shift, scale, eps)
    return residual_adaln_layernorm_fp8_reference(x, y, gate, shift, scale, eps)


def _plain_layer_norm(norm: Any, affine: bool = False) -> bool:
    return isinstance(norm, nn.LayerNorm) and (affine or not norm.elementwise_affine)


def _feed_forward_reads_rows(ff: nn.Module) -> bool:
    from diffusers.models.activations import GELU

    from engine.optimization.gelu_fp8 import ProjectionOnly

    first = ff.net[0]
    return type(first) in (GELU, ProjectionOnly) and is_plain_fp8(first.proj)


def _feed_forward_on_rows(ff: nn.Module, xq: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    # diffusers' FeedForward with its up projection reading fp8 rows.
    from diffusers.models.activations import GELU

    first = ff.net[0]
    hidden = _linear_on_rows(first.proj, xq, xs)
    if type(first) is GELU:
        hidden = first.gelu(hidden)
    for layer in ff.net[1:]:
        hidden = layer(hidden)
    return hidden


# ---------------------------------------------------------------------------------- FLUX


def _flux_double_reads_rows(block: nn.Module, hidden_states: torch.Tensor) -> bool:
    from diffusers.models.normalization import AdaLayerNormZero

    norms = (block.norm1, block.norm1_context)
    attn = block.attn
    return (
        hidden_states.dtype in HALF_DTYPES
        and isinstance(attn.processor, FluxSDPAProcessor)
        and all(type(n) is AdaLayerNormZero and n.emb is None for n in norms)
        and all(_plain_layer_norm(getattr(n, "norm", None)) for n in norms)
        and _plain_layer_norm(block.norm2)
        and _plain_layer_norm(block.norm2_context)
        and is_plain_fp8(getattr(attn, "to_qkv", None))
        and is_plain_fp8(getattr(attn, "to_added_qkv", None))
        and _feed_forward_reads_rows(block.ff)
        and _feed_forward_reads_rows(block.ff_context)
    )


class FluxDoubleBlockHook(ModelHook):
    """FluxTransformerBlock.forward (diffusers 0.42) with every norm into fp8 rows."""

    def new_forward(
        self,
        block: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        joint_attention_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not _flux_double_reads_rows(block, hidden_states):
            return self.fn_ref.original_forward(
                hidden_states, encoder_hidden_states, temb, image_rotary_emb, joint_attention_kwargs
            )
        # AdaLayerNormZero: shift, scale, gate of the attention, then of the feed-forward.
        img = block.norm1.linear(block.norm1.silu(temb)).chunk(6, dim=1)
        txt = block.norm1_context.linear(block.norm1_context.silu(temb)).chunk(6, dim=1)
        rows = adaln_rows(hidden_states, img[0], img[1], block.norm1.norm.eps)
        text_rows = adaln_rows(encoder_hidden_states, txt[0], txt[1], block.norm1_context.norm.eps)
        attn_output, context_attn_output = block.attn(
            hidden_states=hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            image_rotary_emb=image_rotary_emb,
            fp8_rows=rows,
            fp8_context_rows=text_rows,
            **(joint_attention_kwargs or {}),
        )
        hidden_states = _flux_feed_forward(
            block.ff, block.norm2, hidden_states, attn_output, img[2:]
        )
        encoder_hidden_states = _flux_feed_forward(
            block.ff_context, block.norm2_context, encoder_hidden_states, context_attn_output, txt[2:]
        )
        if encoder_hidden_states.dtype == torch.float16:
            encoder_hidden_states = encoder_hidden_states.clip(-65504, 65504)
        return encoder_hidden_states, hidden_states


def _flux_feed_forward(ff, norm, x, attn_output, modulation) -> torch.Tensor:
    gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation
    x, xq, xs = residual_rows(x, attn_output, gate_msa, shift_mlp, scale_mlp, norm.eps)
    return x + gate_mlp.unsqueeze(1) * _feed_forward_on_rows(ff, xq, xs)


# ----------------------------------------------------------------------------------- Wan


def _wan_reads_rows(block: nn.Module, hidden_states: torch.Tensor, temb: torch.Tensor) -> bool:
    self_attn, cross = block.attn1, block.attn2
    qkv = (self_attn.to_qkv,) if self_attn.fused_projections else (
        self_attn.to_q, self_attn.to_k, self_attn.to_v
    )  # fmt: skip
    return (
        hidden_states.dtype in HALF_DTYPES
        and temb.ndim == 3  # per-sample modulation (not Wan 2.2 TI2V's per token)
        and isinstance(self_attn.processor, WanSDPAProcessor)
        and isinstance(cross.processor, WanSDPAProcessor)
        and _plain_layer_norm(block.norm1)
        and _plain_layer_norm(block.norm2, affine=True)
        and _plain_layer_norm(block.norm3)
        and all(is_plain_fp8(linear) for linear in qkv)
        and is_plain_fp8(cross.to_q)
        and _feed_forward_reads_rows(block.ffn)
    )


class WanBlockHook(ModelHook):
    """WanTransformerBlock.forward (diffusers 0.42) with every norm into fp8 rows."""

    def new_forward(
        self,
        block: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        rotary_emb: torch.Tensor,
    ) -> torch.Tensor:
        if not _wan_reads_rows(block, hidden_states, temb):
            return self.fn_ref.original_forward(
                hidden_states, encoder_hidden_states, temb, rotary_emb
            )
        shift_msa, scale_msa, gate_msa, c_shift, c_scale, c_gate = (
            block.scale_shift_table + temb.float()
        ).chunk(6, dim=1)
        rows = adaln_rows(hidden_states, shift_msa, scale_msa, block.norm1.eps)
        attn_output = block.attn1(rows[0], None, None, rotary_emb, fp8_rows=rows)
        scale2, shift2 = _affine_as_modulation(block.norm2, hidden_states)
        hidden_states, *rows = residual_rows(
            hidden_states, attn_output, gate_msa, shift2, scale2, block.norm2.eps
        )
        attn_output = block.attn2(rows[0], encoder_hidden_states, None, None, fp8_rows=rows)
        hidden_states, *rows = residual_rows(
            hidden_states, attn_output, None, c_shift, c_scale, block.norm3.eps
        )
        ff_output = _feed_forward_on_rows(block.ffn, *rows)
        return (hidden_states.float() + ff_output.float() * c_gate).type_as(hidden_states)


def _affine_as_modulation(norm: nn.LayerNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # LayerNorm(x) · w + b = LayerNorm(x) · (1 + (w - 1)) + b: (scale, shift) of the kernel.
    zeros = torch.zeros(x.shape[-1], device=x.device)
    scale = zeros if norm.weight is None else norm.weight.float() - 1.0
    shift = zeros if norm.bias is None else norm.bias.float()
    return scale, shift


def norms_into_fp8_rows(model: nn.Module) -> int:
    """Hook every FLUX double block and Wan block of this instance; returns how many."""
    from diffusers.models.transformers.transformer_flux import FluxTransformerBlock
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    n = 0
    for block in model.modules():
        if isinstance(block, FluxTransformerBlock):
            hook = FluxDoubleBlockHook()
        elif isinstance(block, WanTransformerBlock):
            hook = WanBlockHook()
        else:
            continue
        registry = HookRegistry.check_if_exists_or_initialize(block)
        if registry.get_hook(HOOK_NAME) is None:
            registry.register_hook(hook, HOOK_NAME)
            n += 1
    return n
