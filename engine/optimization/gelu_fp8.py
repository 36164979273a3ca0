"""GELU moved into the fp8 quantizer of the layer after it (`fast`, kernels=("gelu_fp8",)).

With the down projection in fp8, a GELU output is written in bf16 only to be read back
twice (row amax, then quantization; inductor's loop over a 9-15k wide row). The fused
quantizers of kernels/fp8.py read the up projection's output once and apply GELU on the way:
    - diffusers' FeedForward (FLUX's double blocks, Wan): the activation module keeps only its
      projection (`ProjectionOnly`), and the down projection's quantizer applies the GELU;
    - FLUX's single blocks: a hook runs the block with its output projection fed
      cat([attention, gelu(mlp)]) by one quantizer reading both halves, so the concatenation
      is never written (`FluxSingleBlockHook`); with cuDNN's fp8 attention the quantizer
      reads its e4m3 output directly, so no bf16 attention output is written either; and
      the block's modulated LayerNorm is written once, as the fp8 rows both of its input
      projections read.
Only layers that are plain FP8Linears (no LoRA wrapper) are changed; names are kept, so
state-dict keys and LoRA targets are unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

from engine.optimization.fp8 import FP8Linear, is_plain_fp8
from engine.optimization.fp8_rows import adaln_rows
from engine.optimization.sdpa import FluxSDPAProcessor
from kernels._utils import HALF_DTYPES

HOOK_NAME = "mediagate_gelu_fp8"


class ProjectionOnly(nn.Module):
    """diffusers' GELU module without its activation, which moved into the next quantizer.

    Keeps the `proj` name, so state-dict keys and LoRA targets are unchanged.
    """

    def __init__(self, proj: nn.Module) -> None:
        super().__init__()
        self.proj = proj

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden_states)


def fuse_feed_forwards(model: nn.Module) -> int:
    """Move the tanh-GELU of each feed-forward into its fp8 down projection's quantizer.

    diffusers' FeedForward runs up projection, GELU, dropout, down projection; with the
    down projection in fp8, the GELU output is written in bf16 only to be read back twice
    (row amax, then quantize). The fused quantizer reads the up projection's output once.
    Only feed-forwards whose layers are plain (no LoRA wrapper) are changed; returns how many.
    """
    from diffusers.models.activations import GELU
    from diffusers.models.attention import FeedForward

    n = 0
    for module in model.modules():
        if not isinstance(module, FeedForward) or len(module.net) < 3:
            continue
        act, down = module.net[0], module.net[2]
        if (
            type(act) is GELU
            and act.approximate == "tanh"
            and type(down) is FP8Linear
            and down.activation is None
            and isinstance(module.net[1], nn.Dropout)
        ):
            module.net[0] = ProjectionOnly(act.proj)
            down.activation = "gelu_tanh"
            n += 1
    return n


class FluxSingleBlockHook(ModelHook):
    """FluxSingleTransformerBlock.forward (diffusers 0.42) with the MLP's GELU and the
    concatenation of its output with the attention's inside proj_out's quantizer.

    When the MLP and the fused QKV projection are plain FP8Linears, the block's modulated
    LayerNorm goes straight into fp8 rows (kernels/adaln_fp8.py), read by both: the text
    and image tokens are read where they are, and no bf16 normed tensor is written."""

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
        kwargs = dict(joint_attention_kwargs or {})
        fp8_processor = isinstance(block.attn.processor, FluxSDPAProcessor)
        if fp8_processor:
            kwargs["fp8_output"] = True  # cuDNN's e4m3 output, if it ran, comes as it is
        if fp8_processor and _norm_into_fp8_rows(block, hidden_states):
            norm = block.norm
            shift, scale, gate = norm.linear(norm.silu(temb)).chunk(3, dim=1)
            xq, xs = adaln_rows(hidden_states, shift, scale, norm.norm.eps, encoder_hidden_states)
            mlp = block.proj_mlp.matmul_fp8(xq.flatten(0, 1), xs.flatten(0, 1), xq.shape[:2])
            kwargs["fp8_rows"] = (xq, xs)
            norm_hidden_states = xq  # the processor reads only its shape
        else:
            joint = torch.cat([encoder_hidden_states, hidden_states], dim=1)
            norm_hidden_states, gate = block.norm(joint, emb=temb)
            mlp = block.proj_mlp(norm_hidden_states)
        attn_output = block.attn(
            hidden_states=norm_hidden_states, image_rotary_emb=image_rotary_emb, **kwargs
        )
        if isinstance(attn_output, tuple):  # (e4m3, per-column unit)
            out = block.proj_out.forward_cat_gelu(attn_output[0], mlp, attn_output[1])
        else:
            out = block.proj_out.forward_cat_gelu(attn_output, mlp)
        residual = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        hidden_states = residual + gate.unsqueeze(1) * out
        if hidden_states.dtype == torch.float16:
            hidden_states = hidden_states.clip(-65504, 65504)
        return hidden_states[:, :text_seq_len], hidden_states[:, text_seq_len:]


def _norm_into_fp8_rows(block: nn.Module, hidden_states: torch.Tensor) -> bool:
    norm = getattr(block.norm, "norm", None)
    qkv = getattr(block.attn, "to_qkv", None)
    return (
        hidden_states.dtype in HALF_DTYPES
        and type(norm) is nn.LayerNorm
        and not norm.elementwise_affine
        and is_plain_fp8(block.proj_mlp)
        and is_plain_fp8(qkv)
    )


def fuse_flux_single_blocks(model: nn.Module) -> int:
    """Hook every FLUX single block whose MLP is tanh-GELU and proj_out a plain FP8Linear."""
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock

    n = 0
    for block in model.modules():
        if (
            isinstance(block, FluxSingleTransformerBlock)
            and type(block.act_mlp) is nn.GELU
            and block.act_mlp.approximate == "tanh"
            and type(block.proj_out) is FP8Linear
            and block.proj_out.activation is None
        ):
            registry = HookRegistry.check_if_exists_or_initialize(block)
            if registry.get_hook(HOOK_NAME) is None:
                registry.register_hook(FluxSingleBlockHook(), HOOK_NAME)
                n += 1
    return n


def fuse_gelu_into_fp8(model: nn.Module) -> int:
    """Both rewirings on this model instance; returns how many layers changed."""
    return fuse_feed_forwards(model) + fuse_flux_single_blocks(model)
