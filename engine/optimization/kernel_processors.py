"""FLUX attention with our Triton QK-RMSNorm+RoPE kernel (`kernels.rope.qk_rmsnorm_rope`).

The stock processor normalizes q and k, rotates them and lays them out head-major for
SDPA in separate steps; under torch.compile inductor already fuses those into one pass
per tensor. This processor does the same in one launch for q and k together and writes
the head-major layout directly. Whether it beats inductor's fusion is measured per block
by `bench/engine.py`; `optimize(..., kernels=("qk_rmsnorm_rope",))` turns it on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_SDPA_BACKENDS = {
    "_native_cudnn": "CUDNN_ATTENTION",
    "_native_flash": "FLASH_ATTENTION",
    "_native_efficient": "EFFICIENT_ATTENTION",
    "_native_math": "MATH",
}


class FluxKernelAttnProcessor:
    """Drop-in for diffusers' FluxAttnProcessor (no IP-adapter, no context parallel)."""

    _attention_backend = None
    _parallel_config = None

    def __init__(self, sdpa_backend: str | None = None) -> None:
        self.sdpa_backend = sdpa_backend

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        name = _SDPA_BACKENDS.get(self.sdpa_backend or "")
        if name is None:
            return F.scaled_dot_product_attention(q, k, v)
        with torch.nn.attention.sdpa_kernel(getattr(torch.nn.attention.SDPBackend, name)):
            return F.scaled_dot_product_attention(q, k, v)

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections

        from kernels.rope import qk_rmsnorm_rope

        if self._parallel_config is not None:
            # SDPA here sees only this rank's shard; context parallel needs diffusers' dispatch.
            raise NotImplementedError("FluxKernelAttnProcessor does not run context parallel")
        if attention_mask is not None or image_rotary_emb is None:
            raise NotImplementedError(
                "FluxKernelAttnProcessor handles unmasked, rotary attention only"
            )
        d = attn.head_dim
        query, key, value, e_query, e_key, e_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states
        )
        # (B, S, H*D) -> head-major strided views; the kernel reads them in place.
        heads = lambda t: t.unflatten(-1, (-1, d)).transpose(1, 2)  # noqa: E731
        cos, sin = image_rotary_emb
        eps = attn.norm_q.eps if attn.norm_q.eps is not None else 1e-6
        if encoder_hidden_states is not None and attn.added_kv_proj_dim is not None:
            s_txt = encoder_hidden_states.shape[1]
            tq, tk = qk_rmsnorm_rope(
                heads(e_query),
                heads(e_key),
                attn.norm_added_q.weight,
                attn.norm_added_k.weight,
                cos[:s_txt],
                sin[:s_txt],
                eps,
                2,
            )
            iq, ik = qk_rmsnorm_rope(
                heads(query),
                heads(key),
                attn.norm_q.weight,
                attn.norm_k.weight,
                cos[s_txt:],
                sin[s_txt:],
                eps,
                2,
            )
            q = torch.cat([tq, iq], dim=2)
            k = torch.cat([tk, ik], dim=2)
            v = torch.cat([heads(e_value), heads(value)], dim=2)
        else:
            q, k = qk_rmsnorm_rope(
                heads(query), heads(key), attn.norm_q.weight, attn.norm_k.weight, cos, sin, eps, 2
            )
            v = heads(value)
        out = self._sdpa(q, k, v).transpose(1, 2).flatten(2).to(q.dtype)
        if encoder_hidden_states is not None:
            s_txt = encoder_hidden_states.shape[1]
            e_out, out = out[:, :s_txt], out[:, s_txt:]
            out = attn.to_out[1](attn.to_out[0](out.contiguous()))
            e_out = attn.to_add_out(e_out.contiguous())
            return out, e_out
        return out


def use_flux_kernel_attention(model: torch.nn.Module, sdpa_backend: str | None) -> int:
    """Give every FluxAttention of this model instance the kernel processor; returns how many."""
    from diffusers.models.transformers.transformer_flux import FluxAttention

    n = 0
    for module in model.modules():
        if isinstance(module, FluxAttention):
            module.set_processor(FluxKernelAttnProcessor(sdpa_backend))
            n += 1
    return n
