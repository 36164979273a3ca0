"""fp8 attention through cuDNN's fused fp8 flash attention (the cudnn-frontend graph API).

On Hopper cuDNN's e4m3 attention overlaps the softmax of one tile with the tensor-core
work of another, which our Triton kernel (kernels/attention_fp8.py) cannot express, and
measured 1.39x its own bf16 attention at FLUX's 4,608 tokens and 1.46x at Wan's 32,760
(H100, BENCHMARKS.md). On Hopper it takes one scale per tensor and writes fp8 only, so
the quantization is arranged around that:

  - Q and K get static bounds instead of an amax pass: after an RMSNorm with weight w over
    n channels every element is at most sqrt(n)·max|w| in magnitude, and RoPE rotates
    pairs without growing them. The processors pass these bounds; without them
    (`bound=None`) the amax is taken.
  - K minus its mean over (a sample of) its tokens (softmax-invariant: every score of a
    query row moves by the same q·mean), so channels with a large common offset do not set
    K's step; the bound of the centred K is twice K's.
  - V per channel: each channel scaled to e4m3's ±448 and the scale folded back out of the
    output, since O = P·V is linear in V's channels. cuDNN sees descale_v = 1 and,
    because O is a convex combination of V's rows, |O| <= 448 fits e4m3 without a scale.
  - P in e4m3 as P·448 (cuDNN's scale_s), the row sum kept in fp32 by cuDNN.

`attention_fp8_cudnn` takes normed, rotated q and k and leaves the quantization
(kernels.cudnn_fp8_operands.quantize_for_cudnn, plain torch) to inductor, which fuses it
into the kernels around it. `norm_rope_attention_fp8_cudnn` takes the raw projections and
makes the operands in one producer kernel (the processors' default: FLUX 85.1 -> 79.9
ms/step, H200). The `_rows` variants hand the output to the next fp8 linear as its
row-quantized input; `_e4m3` hands it over as cuDNN writes it, with its per-channel unit,
to a consumer that reads e4m3 (FLUX single blocks' proj_out quantizer). The cuDNN call is an opaque custom op; without cuDNN (CPU, tests) it runs
`_reference_core`, the same quantized math in torch.
"""

from __future__ import annotations

import math
from functools import cache

import torch

from kernels.cudnn_fp8_operands import quantize_for_cudnn, rmsnorm_bound_of
from kernels.fp8 import FP8_DTYPE, FP8_MAX

KV_ALIGN = 128
"""Keys are padded to a multiple of this and masked: cuDNN's fp8 attention on Hopper ran
Wan 480p's 32,760 keys at 7.94 ms and the same padded to 32,768 and masked at 7.20 ms (H200)."""


@cache
def cudnn_fp8_attention_available(device_index: int = 0) -> bool:
    """cuDNN fp8 attention on this GPU: Hopper, cudnn-frontend importable, cuDNN >= 9.1."""
    if not torch.cuda.is_available():
        return False
    if torch.cuda.get_device_capability(device_index)[0] != 9:
        return False
    try:
        import cudnn
    except ImportError:
        return False
    return cudnn.backend_version() >= 90100


def rmsnorm_bound(
    norm: torch.nn.Module | None, *others: torch.nn.Module | None
) -> torch.Tensor | None:
    """max |x| after these RMSNorms (and a rotation): sqrt(n)·max|w|, or None if unknown."""
    weights = [getattr(module, "weight", None) for module in (norm, *others)]
    return None if any(w is None for w in weights) else rmsnorm_bound_of(*weights)


# ----------------------------------------------------------------------------- cuDNN graphs

_GRAPHS: dict[tuple, tuple] = {}


@cache
def _handle(device_index: int):
    import cudnn

    return cudnn.create_handle()


@cache
def _constants(device_index: int) -> dict[str, torch.Tensor]:
    dev = torch.device("cuda", device_index)

    def scalar(value: float) -> torch.Tensor:
        return torch.full((1, 1, 1, 1), value, device=dev, dtype=torch.float32)

    return {
        "descale_v": scalar(1.0),
        "descale_s": scalar(1.0 / FP8_MAX),
        "scale_s": scalar(FP8_MAX),
        "scale_o": scalar(1.0),
    }


def _bhsd(t: torch.Tensor) -> tuple[list[int], list[int]]:
    # cuDNN's logical order is (B, H, S, D); the tensors stay (B, S, H, D) in memory.
    b, s, h, d = t.shape
    sb, ss, sh, sd = t.stride()
    return [b, h, s, d], [sb, sh, ss, sd]


def _graph(
    q8: torch.Tensor,
    k8: torch.Tensor,
    v8: torch.Tensor,
    all_plans: bool = False,
    valid: tuple[int, int] | None = None,
):
    """The built cuDNN graph for these operands' shapes and strides (cached).

    all_plans: build every execution plan the heuristics (modes A, B and the fallback) offer,
    for `cudnn_fp8_plans` to time one by one; otherwise only cuDNN's first choice.
    valid: (query tokens, key tokens) that are real when the sequences were padded; cuDNN's
    padding mask then leaves the rest out.
    """
    key = (q8.device.index, q8.shape, q8.stride(), k8.shape, k8.stride(), v8.shape, v8.stride())
    key += (all_plans, valid)
    if key in _GRAPHS:
        return _GRAPHS[key]
    import cudnn

    g = cudnn.pygraph(
        io_data_type=cudnn.data_type.FP8_E4M3,
        intermediate_data_type=cudnn.data_type.FLOAT,
        compute_data_type=cudnn.data_type.FLOAT,
        handle=_handle(q8.device.index),
    )
    io = {}
    for name, t in (("q", q8), ("k", k8), ("v", v8)):
        dim, stride = _bhsd(t)
        io[name] = g.tensor(name=name, dim=dim, stride=stride, data_type=cudnn.data_type.FP8_E4M3)
    scalars = {
        name: g.tensor(
            name=name, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=cudnn.data_type.FLOAT
        )
        for name in ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o")
    }
    b, s, h, _ = q8.shape
    masking = {}
    if valid is not None:
        for name in ("seq_len_q", "seq_len_kv"):
            masking[name] = g.tensor(
                name=name, dim=[b, 1, 1, 1], stride=[1, 1, 1, 1], data_type=cudnn.data_type.INT32
            )
    o, _, amax_s, amax_o = g.sdpa_fp8(
        q=io["q"],
        k=io["k"],
        v=io["v"],
        **scalars,
        **masking,
        use_padding_mask=valid is not None,
        is_inference=True,
        attn_scale=1.0 / math.sqrt(q8.shape[-1]),
    )
    d_v = v8.shape[-1]
    o.set_output(True).set_dim([b, h, s, d_v]).set_stride([s * h * d_v, d_v, h * d_v, 1])
    o.set_data_type(cudnn.data_type.FP8_E4M3)
    for amax in (amax_s, amax_o):
        amax.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1])
        amax.set_data_type(cudnn.data_type.FLOAT)
    g.validate()
    g.build_operation_graph()
    modes = [cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK]
    if all_plans:
        modes.insert(1, cudnn.heur_mode.B)
    g.create_execution_plans(modes)
    g.check_support()
    plans: list[int] = []
    if all_plans:
        for index in range(g.get_execution_plan_count()):
            try:
                g.build_plan_at_index(index)
            except Exception:  # a plan cuDNN lists but cannot build here is no candidate
                continue
            plans.append(index)
        workspace = max((g.get_workspace_size_plan_at_index(i) for i in plans), default=0)
    else:
        g.build_plans()
        workspace = g.get_workspace_size()
    dev = q8.device
    scratch = {
        "workspace": torch.empty(max(workspace, 1), device=dev, dtype=torch.uint8),
        "amax_s": torch.empty(1, 1, 1, 1, device=dev, dtype=torch.float32),
        "amax_o": torch.empty(1, 1, 1, 1, device=dev, dtype=torch.float32),
        "plans": plans,
        "seq_lens": {
            masking[name]: torch.full((b, 1, 1, 1), n, device=dev, dtype=torch.int32)
            for name, n in zip(("seq_len_q", "seq_len_kv"), valid, strict=True)
        }
        if valid
        else {},
    }
    _GRAPHS[key] = (g, io, scalars, o, amax_s, amax_o, scratch)
    return _GRAPHS[key]


def run_cudnn_fp8(
    q8, k8, v8, descale_q, descale_k, plan: int | None = None, valid: tuple[int, int] | None = None
) -> torch.Tensor:
    """cuDNN's fp8 attention: its first choice, or one plan of `cudnn_fp8_plans` (the bench);
    valid = (query tokens, key tokens) that are real, the rest left out by the padding mask."""
    import cudnn

    g, io, scalars, o, amax_s, amax_o, scratch = _graph(q8, k8, v8, plan is not None, valid)
    idx = q8.device.index
    handle = _handle(idx)
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream(q8.device).cuda_stream)
    out = torch.empty(q8.shape[:-1] + (v8.shape[-1],), device=q8.device, dtype=FP8_DTYPE)
    const = _constants(idx)
    pack = {
        io["q"]: q8,
        io["k"]: k8,
        io["v"]: v8,
        scalars["descale_q"]: descale_q.reshape(1, 1, 1, 1),
        scalars["descale_k"]: descale_k.reshape(1, 1, 1, 1),
        **{scalars[n]: const[n] for n in ("descale_v", "descale_s", "scale_s", "scale_o")},
        o: out,
        amax_s: scratch["amax_s"],
        amax_o: scratch["amax_o"],
        **scratch["seq_lens"],
    }
    if plan is None:
        g.execute(pack, scratch["workspace"], handle=handle)
    else:
        g.execute_plan_at_index(pack, scratch["workspace"], plan, handle=handle)
    return out


def cudnn_fp8_plans(q8, k8, v8, valid=None) -> list[tuple[int, str]]:
    """(index, engine name) of every plan cuDNN builds for these operands (for the bench)."""
    g, *_, scratch = _graph(q8, k8, v8, True, valid)
    return [(i, g.get_plan_name_at_index(i)) for i in scratch["plans"]]


def _reference_core(q8, k8, v8, descale_q, descale_k, kv_len: int = 0) -> torch.Tensor:
    # What cuDNN computes: fp32 scores, P = exp(s - max) in e4m3 as P·448, P·V, / row sum.
    q, k, v = (t.float().transpose(1, 2) for t in (q8, k8, v8))
    s = (q @ k.transpose(-1, -2)) * (descale_q * descale_k).reshape(()) / math.sqrt(q.shape[-1])
    if kv_len:
        s[..., kv_len:] = float("-inf")
    p = torch.exp(s - s.amax(dim=-1, keepdim=True))
    p8 = (p * FP8_MAX).to(FP8_DTYPE).float()
    o = (p8 @ v) / FP8_MAX / p.sum(dim=-1, keepdim=True)
    return o.clamp(-FP8_MAX, FP8_MAX).transpose(1, 2).contiguous().to(FP8_DTYPE)


@torch.library.custom_op("mediagate::cudnn_attention_fp8", mutates_args=())
def cudnn_attention_fp8(
    q8: torch.Tensor,
    k8: torch.Tensor,
    v8: torch.Tensor,
    descale_q: torch.Tensor,
    descale_k: torch.Tensor,
    kv_len: int = 0,
) -> torch.Tensor:
    """softmax(q kᵀ·descale_q·descale_k/sqrt(d)) v on e4m3 (B, S, H, D) tensors; e4m3 output.

    kv_len > 0: only the first kv_len keys are real; the rest pad the key sequence to a
    length cuDNN runs faster at, and its padding mask leaves them out.
    """
    if q8.is_cuda and cudnn_fp8_attention_available(q8.device.index):
        valid = (q8.shape[1], kv_len) if kv_len else None
        return run_cudnn_fp8(q8, k8, v8, descale_q, descale_k, valid=valid)
    return _reference_core(q8, k8, v8, descale_q, descale_k, kv_len)


@cudnn_attention_fp8.register_fake
def _cudnn_attention_fp8_fake(q8, k8, v8, descale_q, descale_k, kv_len=0):
    return q8.new_empty(q8.shape[:-1] + (v8.shape[-1],))


def attention_fp8_cudnn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_bound: torch.Tensor | None = None,
    k_bound: torch.Tensor | None = None,
    smooth_k: bool = True,
    kv_align: int | None = None,
) -> torch.Tensor:
    """softmax(q kᵀ/sqrt(d)) v for (B, S, H, D) bf16 tensors through cuDNN's fp8 attention.

    q_bound and k_bound (0-d fp32 tensors) bound |q| and |k|; `rmsnorm_bound` gives them
    for normed q and k. Without them the amax of each tensor is taken. `smooth_k=False`
    skips K's centring. Keys are padded to a multiple of kv_align (default `KV_ALIGN`)
    and masked.
    """
    o8, unit = _attend_fp8(q, k, v, q_bound, k_bound, smooth_k, kv_align)
    return (o8.float() * unit).to(q.dtype)


def attention_fp8_cudnn_rows(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_bound: torch.Tensor | None = None,
    k_bound: torch.Tensor | None = None,
    smooth_k: bool = True,
    kv_align: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`attention_fp8_cudnn`'s output as the next fp8 linear's input, heads merged.

    (x_fp8 (B, S, H·D), fp32 scale per row (B, S, 1)): the same rows `quantize_rowwise`
    makes of the bf16 output, in one pass from cuDNN's e4m3 output
    (kernels.fp8.requantize_fp8_rowwise).
    """
    o8, unit = _attend_fp8(q, k, v, q_bound, k_bound, smooth_k, kv_align)
    return _as_rows(o8, unit)


def norm_rope_attention_fp8_cudnn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    norm_q: torch.nn.Module,
    norm_k: torch.nn.Module,
    rotary: tuple[torch.Tensor, torch.Tensor],
    text: tuple | None = None,
    smooth_k: bool = True,
    kv_align: int | None = None,
) -> torch.Tensor:
    """Attention from raw projections q, k, v (B, S, H, D): norms, rotation and quantization
    in one producer (kernels.cudnn_fp8_operands.norm_rope_quantize_for_cudnn), then cuDNN.

    norm_q / norm_k: RMSNorms per head (FLUX) or over H·D (Wan); rotary: (cos, sin) with
    each frequency at its pair's positions. text = (q_t, k_t, v_t, norm_added_q,
    norm_added_k): a stream placed first, with its own norms (FLUX's double blocks).
    Output (B, S_text + S, H, D) in q's dtype.
    """
    o8, unit = norm_rope_attention_fp8_cudnn_e4m3(q, k, v, norm_q, norm_k, rotary, text,
                                                  smooth_k, kv_align)  # fmt: skip
    return (o8.float() * unit).to(q.dtype)


def norm_rope_attention_fp8_cudnn_rows(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    norm_q: torch.nn.Module,
    norm_k: torch.nn.Module,
    rotary: tuple[torch.Tensor, torch.Tensor],
    text: tuple | None = None,
    smooth_k: bool = True,
    kv_align: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`norm_rope_attention_fp8_cudnn`'s output as the next fp8 linear's input rows
    (`attention_fp8_cudnn_rows`' requantization): Wan's self attention, FLUX's joint one
    (each row a token of one stream, so the rows split between the streams' projections)."""
    return _as_rows(*norm_rope_attention_fp8_cudnn_e4m3(
        q, k, v, norm_q, norm_k, rotary, text, smooth_k, kv_align
    ))  # fmt: skip


def norm_rope_attention_fp8_cudnn_e4m3(
    q, k, v, norm_q, norm_k, rotary, text=None, smooth_k=True, kv_align=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`norm_rope_attention_fp8_cudnn`'s output as cuDNN writes it: (e4m3 (B, S, H, D), the
    per-channel unit (B, 1, H, D) it is in), for a consumer that reads e4m3 itself (FLUX's
    single blocks: proj_out's quantizer, kernels.fp8.quantize_cat_gelu_fp8_rowwise)."""
    from kernels.cudnn_fp8_operands import norm_rope_quantize_for_cudnn

    kv_align = KV_ALIGN if kv_align is None else kv_align
    streams, s = (), q.shape[1]
    if text is not None:
        streams, s = (*text[:3], text[3].weight, text[4].weight), s + text[0].shape[1]
    operands = norm_rope_quantize_for_cudnn(
        q, k, v, norm_q.weight, norm_k.weight, float(norm_q.eps), *rotary, smooth_k, kv_align,
        *streams,
    )  # fmt: skip
    return _attend_quantized(s, *operands)


def _as_rows(o8: torch.Tensor, unit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from kernels.fp8 import requantize_fp8_rowwise

    b, s, h, d = o8.shape
    return requantize_fp8_rowwise(o8.reshape(b, s, h * d), unit.reshape(b, 1, h * d))


def _attend_fp8(q, k, v, q_bound, k_bound, smooth_k, kv_align) -> tuple[torch.Tensor, ...]:
    kv_align = KV_ALIGN if kv_align is None else kv_align
    operands = quantize_for_cudnn(q, k, v, q_bound, k_bound, smooth_k, kv_align)
    return _attend_quantized(k.shape[1], *operands)


def _attend_quantized(kv_tokens, q8, k8, v8, descale_q, descale_k, v_amax):
    # cuDNN's e4m3 output and V's per-channel unit (B, 1, H, D) it is in.
    kv_len = kv_tokens if k8.shape[1] != kv_tokens else 0
    o8 = cudnn_attention_fp8(q8, k8, v8, descale_q, descale_k, kv_len)
    return o8, v_amax / FP8_MAX
