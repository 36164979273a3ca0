"""Attention on sequence-major (B, S, H, D) tensors, kept sequence-major under torch.compile.

cuDNN's fused attention on Hopper runs faster when q, k and v are laid out (B, S, H, D)
in memory and handed to SDPA as (B, H, S, D) views (measured on an H200 at FLUX's shape:
0.40 ms against 0.51 ms for head-major copies), and a profile of the compiled FLUX step
showed the cuDNN kernel at 26.8 ms per step against 23.9 ms in eager. Wrapping the call in
an opaque op makes inductor hand over the inputs in the layout they were traced with.
Measured inside compiled FLUX blocks on an H200 it did not pay (5.70 ms against 5.64 ms
for the stock processor), so `optimize` leaves it off unless `attention_op=True`.

`FluxSDPAProcessor` and `WanSDPAProcessor` are diffusers' processors with their attention
call routed through this op; everything else in them is unchanged. With the backend
"fp8" they call our fp8 attention kernel (kernels/attention_fp8.py, another opaque op on
the same (B, S, H, D) layout) instead, and with "fp8-cudnn" cuDNN's fp8 attention
(cudnn_fp8.py, bounds of the normed q and k passed along): `optimize(..., attention="fp8")`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.optimization.fp8 import is_plain_fp8
from engine.optimization.ulysses import attend_over_ranks, ulysses_group
from kernels.cudnn_fp8_operands import wan_rope_reference

_BACKENDS = {
    "_native_cudnn": "CUDNN_ATTENTION",
    "_native_flash": "FLASH_ATTENTION",
    "_native_efficient": "EFFICIENT_ATTENTION",
    "_native_math": "MATH",
}


@torch.library.custom_op("mediagate::sdpa_bshd", mutates_args=())
def sdpa_bshd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "native"
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for (B, S, H, D) inputs; output (B, S, H, D)."""
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    name = _BACKENDS.get(backend)
    if name is None:
        out = F.scaled_dot_product_attention(qh, kh, vh)
    else:
        with torch.nn.attention.sdpa_kernel(getattr(torch.nn.attention.SDPBackend, name)):
            out = F.scaled_dot_product_attention(qh, kh, vh)
    return out.transpose(1, 2).contiguous()


@sdpa_bshd.register_fake
def _sdpa_bshd_fake(q, k, v, backend="native"):
    return q.new_empty(q.shape[:-1] + (v.shape[-1],))


FP8_BACKEND = "fp8"
"""The backend name that routes attention through kernels.attention_fp8 (e4m3 Q·Kᵀ and P·V)."""
FP8_CUDNN_BACKEND = "fp8-cudnn"
"""The backend name that routes attention through cuDNN's fp8 attention (cudnn_fp8.py)."""
FP8_BACKENDS = (FP8_BACKEND, FP8_CUDNN_BACKEND)
CUDNN_FP8_HEAD_DIMS = (64, 128)
"""Head dims cuDNN's fp8 attention was verified at on Hopper; others run our kernel."""
FP8_MIN_KV_TOKENS = 2048
"""Shorter key sequences stay bf16 in our fp8 kernel: quantizing Q costs more than fp8 saves
there (Wan 480p's 512-token cross attention on an H200: 0.31 ms in fp8 against 0.19 ms for
cuDNN bf16)."""
CUDNN_FP8_MIN_KV_TOKENS = 512
"""cuDNN's fp8 attention from this many keys: Wan 480p's 512-token cross attention took
0.152 ms against 0.189 for cuDNN bf16 (H100), and its quantization rides in the kernel of
the q norm that runs anyway."""


def default_fp8_min_kv(backend: str) -> int:
    """Keys from which attention runs in fp8 on this fp8 backend, unless told otherwise."""
    return CUDNN_FP8_MIN_KV_TOKENS if backend == FP8_CUDNN_BACKEND else FP8_MIN_KV_TOKENS


def _attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    backend: str | None,
    fp8_min_kv: int = 0,
    bounds: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
    smooth_k: bool = True,
) -> torch.Tensor:
    if backend in FP8_BACKENDS:
        if _uses_cudnn_fp8(q, k, backend, fp8_min_kv):
            from engine.optimization.cudnn_fp8 import attention_fp8_cudnn

            return attention_fp8_cudnn(q, k, v, *bounds, smooth_k=smooth_k)
        if k.shape[1] >= fp8_min_kv:
            from kernels.attention_fp8 import attention_fp8

            return attention_fp8(q, k, v)
        backend = None
    return sdpa_bshd(q, k, v, backend or "native")


def _uses_cudnn_fp8(q: torch.Tensor, k: torch.Tensor, backend: str | None, fp8_min_kv: int) -> bool:
    return (
        backend == FP8_CUDNN_BACKEND
        and k.shape[1] >= fp8_min_kv
        and (not q.is_cuda or q.shape[-1] in CUDNN_FP8_HEAD_DIMS)
    )


class _SDPAProcessor:
    """What diffusers expects of a processor, with the attention backend to call."""

    _attention_backend = None
    fuse_fp8_output = True
    """cuDNN's e4m3 attention output goes straight to fp8 output projections' input rows
    (or FLUX single blocks' proj_out quantizer) instead of through a bf16 tensor."""
    _parallel_config = None

    def __init__(
        self,
        backend: str | None = None,
        fp8_min_kv: int = FP8_MIN_KV_TOKENS,
        fp8_producer: bool = False,
        fp8_smooth_k: bool = True,
    ) -> None:
        self.backend = backend
        self.fp8_min_kv = fp8_min_kv
        self.fp8_producer = fp8_producer
        self.fp8_smooth_k = fp8_smooth_k

    def _bounds(self, norms_q: tuple, norms_k: tuple) -> tuple:
        # Static bounds of the normed q and k, for cuDNN's per-tensor fp8 scales.
        if self.backend != FP8_CUDNN_BACKEND:
            return (None, None)
        from engine.optimization.cudnn_fp8 import rmsnorm_bound

        return rmsnorm_bound(*norms_q), rmsnorm_bound(*norms_k)

    def _attend(self, q, k, v, bounds: tuple, sharded_keys: bool = True) -> torch.Tensor:
        # Under context parallel (diffusers' enable_parallelism sets `_parallel_config`)
        # this rank holds a shard of the sequence: trade it for a shard of the heads first
        # (engine/optimization/ulysses.py). Keys every rank holds whole need no trade.
        def attention(q, k, v):
            return _attention(q, k, v, self.backend, self.fp8_min_kv, bounds, self.fp8_smooth_k)

        ulysses = ulysses_group(self._parallel_config) if sharded_keys else None
        if ulysses is None:
            return attention(q, k, v)
        return attend_over_ranks(q, k, v, attention, *ulysses)


class FluxSDPAProcessor(_SDPAProcessor):
    """diffusers' FluxAttnProcessor, attention through `sdpa_bshd`."""

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        fp8_output: bool = False,
        fp8_rows: tuple[torch.Tensor, torch.Tensor] | None = None,
        fp8_context_rows: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        """fp8_output: on the cuDNN fp8 path of a single block (no text stream), return
        cuDNN's output as it is, (e4m3 (B, S, H·D), per-column unit (B, 1, H·D)), for a
        consumer that reads it (engine/optimization/gelu_fp8.py's FluxSingleBlockHook).
        fp8_rows: the block's input already in fp8 rows (e4m3 (B, S, D), fp32 scales
        (B, S, 1)) for its fused QKV projection, and fp8_context_rows the text stream's for
        its fused added QKV (a double block, engine/optimization/fp8_rows.py); the
        hidden-state arguments then give only shapes."""
        from diffusers.models.embeddings import apply_rotary_emb
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections

        if attention_mask is not None:
            raise NotImplementedError("FluxSDPAProcessor handles unmasked attention only")
        if fp8_rows is not None:
            if (encoder_hidden_states is None) != (fp8_context_rows is None):
                raise ValueError(
                    "fp8_rows beside a text stream needs its rows too (fp8_context_rows), "
                    "and fp8_context_rows needs encoder_hidden_states"
                )
            query, key, value = _linear_on_rows(attn.to_qkv, *fp8_rows).chunk(3, dim=-1)
            e_query = e_key = e_value = (None,)  # as diffusers' fused projections give
            if fp8_context_rows is not None:
                e_query, e_key, e_value = _linear_on_rows(
                    attn.to_added_qkv, *fp8_context_rows
                ).chunk(3, dim=-1)
        else:
            query, key, value, e_query, e_key, e_value = _get_qkv_projections(
                attn, hidden_states, encoder_hidden_states
            )
        if self._fused_fp8(attn, hidden_states, encoder_hidden_states, image_rotary_emb):
            qkv = (attn, query, key, value, e_query, e_key, e_value, image_rotary_emb)
            if self.backend == FP8_CUDNN_BACKEND:
                fp8_out = self.fuse_fp8_output and (fp8_output or encoder_hidden_states is not None)
                return _flux_cudnn_fp8(*qkv, self.fp8_smooth_k, fp8_out, encoder_hidden_states)
            hidden_states = _flux_fp8_norm_rope(*qkv, self.fp8_smooth_k).flatten(2, 3)
            return _flux_out(attn, hidden_states, encoder_hidden_states)
        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))
        norms_q, norms_k = (attn.norm_q,), (attn.norm_k,)
        if attn.added_kv_proj_dim is not None:
            norms_q, norms_k = norms_q + (attn.norm_added_q,), norms_k + (attn.norm_added_k,)
            e_query = attn.norm_added_q(e_query.unflatten(-1, (-1, attn.head_dim)))
            e_key = attn.norm_added_k(e_key.unflatten(-1, (-1, attn.head_dim)))
            e_value = e_value.unflatten(-1, (-1, attn.head_dim))
            query = torch.cat([e_query, query], dim=1)
            key = torch.cat([e_key, key], dim=1)
            value = torch.cat([e_value, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        # Both streams are split over the ranks under context parallel (FLUX's plan).
        bounds = self._bounds(norms_q, norms_k)
        hidden_states = self._attend(query, key, value, bounds).flatten(2, 3).to(query.dtype)
        return _flux_out(attn, hidden_states, encoder_hidden_states)

    def _fused_fp8(self, attn, hidden_states, encoder_hidden_states, rotary) -> bool:
        # One producer for norms, rotation and quantization: our kernel's (Triton backend)
        # or cuDNN's operands (kernels/cudnn_fp8_operands.py), at head dims cuDNN runs.
        if self.backend not in FP8_BACKENDS or not self.fp8_producer or rotary is None:
            return False
        cudnn = self.backend == FP8_CUDNN_BACKEND
        if cudnn and hidden_states.is_cuda and attn.head_dim not in CUDNN_FP8_HEAD_DIMS:
            return False
        if self._parallel_config is not None:
            return False  # the producer reads the text stream in place: no exchange between
        norms = [attn.norm_q, attn.norm_k]
        if encoder_hidden_states is not None:
            if attn.added_kv_proj_dim is None:
                return False
            norms += [attn.norm_added_q, attn.norm_added_k]
        if any(getattr(n, "weight", None) is None for n in norms):
            return False
        eps = {getattr(n, "eps", None) for n in norms}
        if cudnn and (None in eps or len(eps) > 1):
            return False  # cuDNN's producer takes one eps for both streams
        s = hidden_states.shape[1] + (
            0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        )
        return s >= self.fp8_min_kv and (cudnn or attn.head_dim >= 32)


def _flux_out(attn, hidden_states, encoder_hidden_states):
    if encoder_hidden_states is not None:
        s_txt = encoder_hidden_states.shape[1]
        encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
            [s_txt, hidden_states.shape[1] - s_txt], dim=1
        )
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
        encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
        return hidden_states, encoder_hidden_states
    return hidden_states


def _flux_cudnn_fp8(
    attn, query, key, value, e_query, e_key, e_value, rotary, smooth_k, fp8_out, encoder_states
):
    # FLUX's QK norms and RoPE fused into cuDNN's fp8 operands, the text stream read in place.
    # fp8_out: a single block's output as cuDNN's e4m3 and its unit; a double block's as
    # rows of fp8, split between the streams' output projections, when both are fp8.
    from engine.optimization import cudnn_fp8

    heads = lambda t: t.unflatten(-1, (-1, attn.head_dim))  # noqa: E731
    text = None
    if encoder_states is not None:  # (diffusers' fused projections give (None,) without)
        text = (heads(e_query), heads(e_key), heads(e_value))
        text += (attn.norm_added_q, attn.norm_added_k)
    args = (heads(query), heads(key), heads(value), attn.norm_q, attn.norm_k, rotary, text)
    if fp8_out and text is None:
        o8, unit = cudnn_fp8.norm_rope_attention_fp8_cudnn_e4m3(*args, smooth_k)
        return o8.flatten(2, 3), unit.flatten(2, 3)
    if fp8_out and is_plain_fp8(attn.to_out[0]) and is_plain_fp8(attn.to_add_out):
        xq, xs = cudnn_fp8.norm_rope_attention_fp8_cudnn_rows(*args, smooth_k)
        s_txt = e_query.shape[1]
        (t_q, i_q), (t_s, i_s) = (x.split_with_sizes([s_txt, x.shape[1] - s_txt], 1) for x in (xq, xs))
        hidden_states = attn.to_out[1](_linear_on_rows(attn.to_out[0], i_q, i_s))
        return hidden_states, _linear_on_rows(attn.to_add_out, t_q, t_s)
    hidden_states = cudnn_fp8.norm_rope_attention_fp8_cudnn(*args, smooth_k).flatten(2, 3)
    return _flux_out(attn, hidden_states, encoder_states)


def _flux_fp8_norm_rope(attn, query, key, value, e_query, e_key, e_value, rotary, smooth_k):
    # QK RMSNorm, RoPE and the fp8 quantization in one producer kernel, the text stream read
    # in place (kernels/attention_fp8_producer.py), then fp8 attention. That producer always
    # centres K (SageAttention's recipe needs it), so smooth_k is not consulted.
    from kernels.attention_fp8_producer import attention_fp8_norm_rope

    heads = lambda t: t.unflatten(-1, (-1, attn.head_dim))  # noqa: E731
    eps = attn.norm_q.eps if attn.norm_q.eps is not None else 1e-6
    text = (None,) * 5
    if e_query is not None and attn.added_kv_proj_dim is not None:
        text = (
            heads(e_query),
            heads(e_key),
            heads(e_value),
            attn.norm_added_q.weight,
            attn.norm_added_k.weight,
        )
    cos, sin = rotary
    return attention_fp8_norm_rope(
        heads(query),
        heads(key),
        heads(value),
        attn.norm_q.weight,
        attn.norm_k.weight,
        cos,
        sin,
        float(eps),
        *text,
    )


class WanSDPAProcessor(_SDPAProcessor):
    """diffusers' WanAttnProcessor (text-to-video: no image branch), attention through `sdpa_bshd`.

    With cuDNN's fp8 attention and an fp8 output projection, the self attention's e4m3
    output goes to the projection's row-quantized input in one kernel
    (`attention_fp8_cudnn_rows`) instead of a bf16 tensor that is quantized again
    (Wan 480p on an H200: 142 -> 46 us per block, the call 349 -> 345 ms), and so does
    the text cross attention's; setting `fuse_fp8_output = False` turns that off. On that
    path, with `fp8_producer`, the self attention's QK norms, rotation and quantization of
    q, k and v run as one producer (`norm_rope_attention_fp8_cudnn_rows`) instead of
    inductor's kernels.
    """

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        fp8_rows: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """fp8_rows: the attention's input already in fp8 rows (e4m3 (B, S, D), fp32 scales
        (B, S, 1)) for the projections that read it (engine/optimization/fp8_rows.py);
        hidden_states then gives only the shape."""
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        if attn.add_k_proj is not None or attention_mask is not None:
            raise NotImplementedError(
                "WanSDPAProcessor handles unmasked text-to-video attention only"
            )
        if fp8_rows is None:
            query, key, value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        else:
            query, key, value = _wan_projections_on_rows(attn, fp8_rows, encoder_hidden_states)
        heads = lambda t: t.unflatten(2, (attn.heads, -1))  # noqa: E731
        if self._fused_producer(attn, heads(query), heads(key), encoder_hidden_states, rotary_emb):
            from engine.optimization.cudnn_fp8 import norm_rope_attention_fp8_cudnn_rows

            rows = norm_rope_attention_fp8_cudnn_rows(
                heads(query), heads(key), heads(value), attn.norm_q, attn.norm_k, rotary_emb,
                smooth_k=self.fp8_smooth_k,
            )  # fmt: skip
            return attn.to_out[1](_linear_on_rows(attn.to_out[0], *rows))
        query = heads(attn.norm_q(query))
        key = heads(attn.norm_k(key))
        value = heads(value)
        if rotary_emb is not None:
            query = wan_rope_reference(query, *rotary_emb)
            key = wan_rope_reference(key, *rotary_emb)
        bounds = self._bounds((attn.norm_q,), (attn.norm_k,))
        if self._output_as_fp8_rows(attn, query, key, encoder_hidden_states):
            # cuDNN's e4m3 output straight into the output projection's fp8 input rows.
            from engine.optimization.cudnn_fp8 import attention_fp8_cudnn_rows

            rows = attention_fp8_cudnn_rows(query, key, value, *bounds, self.fp8_smooth_k)
            return attn.to_out[1](_linear_on_rows(attn.to_out[0], *rows))
        # Wan's plan splits the video tokens and leaves the text whole on every rank.
        sharded_keys = encoder_hidden_states is None
        hidden_states = self._attend(query, key, value, bounds, sharded_keys).flatten(2, 3)
        hidden_states = hidden_states.type_as(query)
        if hidden_states.is_cuda and is_plain_fp8(attn.to_out[0]):
            # The output of an opaque op: inductor has nothing to fuse its fp8 quantization
            # into, and its lone kernel ran at under half our quantizer's bandwidth (Wan 480p
            # cross attention on an H100: 108 µs per block).
            from kernels.fp8 import quantize_fp8_rowwise

            rows = quantize_fp8_rowwise(hidden_states)
            return attn.to_out[1](_linear_on_rows(attn.to_out[0], *rows))
        return attn.to_out[1](attn.to_out[0](hidden_states))

    def _output_as_fp8_rows(self, attn, query, key, encoder_hidden_states) -> bool:
        # Attention through cuDNN's fp8 attention into an fp8 linear: the text cross
        # attention, or the self attention on one rank (under context parallel its keys
        # are traded between ranks first).
        return (
            self.fuse_fp8_output
            and (encoder_hidden_states is not None or ulysses_group(self._parallel_config) is None)
            and _uses_cudnn_fp8(query, key, self.backend, self.fp8_min_kv)
            and is_plain_fp8(attn.to_out[0])
        )

    def _fused_producer(self, attn, query, key, encoder_hidden_states, rotary_emb) -> bool:
        # The fp8-rows path, with Wan's full-width RMSNorms (weights and eps known) and RoPE.
        norms = (attn.norm_q, attn.norm_k)
        return (
            self.fp8_producer
            and rotary_emb is not None
            and all(
                isinstance(n, torch.nn.RMSNorm) and n.weight is not None and n.eps is not None
                for n in norms
            )
            and self._output_as_fp8_rows(attn, query, key, encoder_hidden_states)
        )


def _linear_on_rows(linear, xq: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    # An FP8Linear on fp8 rows (B, S, K) and their scales (B, S, 1).
    return linear.matmul_fp8(xq.flatten(0, 1), xs.flatten(0, 1), xq.shape[:2])


def _wan_projections_on_rows(attn, rows: tuple, encoder_hidden_states):
    # diffusers' _get_qkv_projections for Wan, the query side read from fp8 rows.
    if encoder_hidden_states is None:
        if attn.fused_projections:
            return _linear_on_rows(attn.to_qkv, *rows).chunk(3, dim=-1)
        return tuple(_linear_on_rows(p, *rows) for p in (attn.to_q, attn.to_k, attn.to_v))
    query = _linear_on_rows(attn.to_q, *rows)
    if attn.fused_projections:
        return (query, *attn.to_kv(encoder_hidden_states).chunk(2, dim=-1))
    return query, attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)


def use_sdpa_processors(
    model: torch.nn.Module,
    backend: str | None,
    fp8_min_kv: int | None = None,
    fp8_producer: bool = False,
    fp8_smooth_k: bool = True,
) -> int:
    """Route this instance's FLUX / Wan attention through `sdpa_bshd`; returns how many modules.

    fp8_min_kv: keys from which an fp8 backend runs in fp8 (None: `default_fp8_min_kv`)."""
    if fp8_min_kv is None:
        fp8_min_kv = default_fp8_min_kv(backend)
    from diffusers.models.transformers.transformer_flux import FluxAttention, FluxAttnProcessor
    from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor

    n = 0
    for module in model.modules():
        if isinstance(module, FluxAttention) and type(module.processor) is FluxAttnProcessor:
            module.set_processor(FluxSDPAProcessor(backend, fp8_min_kv, fp8_producer, fp8_smooth_k))
            n += 1
        elif (
            isinstance(module, WanAttention)
            and type(module.processor) is WanAttnProcessor
            and module.add_k_proj is None
        ):
            module.set_processor(WanSDPAProcessor(backend, fp8_min_kv, fp8_producer, fp8_smooth_k))
            n += 1
    return n
