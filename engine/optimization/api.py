"""`optimize(pipeline, mode)`: the engine's one call, applied to one pipeline instance.

Everything goes through seams diffusers offers on the instance (attention backends,
`fuse_qkv_projections`, module replacement, model hooks, regional compile), so two
pipelines in one process can run different modes and nothing global is patched.

Modes:
    exact  bf16, fused QKV, fastest exact attention (measured), regional compile,
           CUDA graphs where they pay (measured), channels-last VAE, each feed-forward's
           GELU in its up projection's GEMM epilogue (engine/optimization/gelu_epilogue.py).
           FLUX's single blocks skip the concatenation before proj_out
           (engine/optimization/concat_free.py), and in `exact` only its q/k RMSNorm +
           RoPE run as one Triton kernel (engine/optimization/kernel_processors.py). FLUX
           also compiles the modules outside its blocks and always captures graphs
           (measured). The text encoders' layers and an image VAE's decoder are compiled
           as well (engine/optimization/components.py; `compile_components=False` leaves
           them).
    fast   exact + fp8 e4m3 linears in the repeated blocks (row-wise weight scales,
           row-wise dynamic activation scales); each GELU runs inside the fp8 quantizer
           of the layer after it (engine/optimization/gelu_fp8.py), and each LayerNorm
           writes the fp8 rows of the linear after it (engine/optimization/fp8_rows.py).
    turbo  fast + step caching (fixed skip schedule, or first-block cache).

In every mode a pipeline's decoded images go to PIL with the scaling and rounding on the
GPU, the same pixels (engine/optimization/postprocess.py), and FLUX computes each
generation's adaLN modulations in one pass over their weights when its scheduler sets the
timesteps (engine/optimization/modulation.py).

`attention="fp8"` (fast and turbo) runs FLUX and Wan attention in fp8 e4m3, through
cuDNN's fused fp8 attention or our kernel (kernels/attention_fp8.py, SageAttention-style
scales), via the sequence-major
processors of engine/optimization/sdpa.py, on this instance only; attention over fewer
than `attention_fp8_min_kv` keys stays bf16 (default: 512 for cuDNN, so Wan's 512-token text
cross attention runs in fp8 there; 2048 for our kernel, where it stays bf16).
With `attention_fp8_producer` (on by default) the QK RMSNorm, RoPE and the fp8
quantization of q, k and v run as one producer kernel: for cuDNN, FLUX's and Wan's self
attention (kernels/cudnn_fp8_operands.py), for our kernel, FLUX's
(kernels/attention_fp8_producer.py); off, they are left to inductor.
`attention_fp8_backend` picks the fp8 attention: "cudnn" (cuDNN's fused fp8 attention,
engine/optimization/cudnn_fp8.py), "triton" (our kernel), or "auto" (default): cuDNN on
Hopper where cudnn-frontend is installed, measured faster there, else our kernel.
`attention_fp8_smooth_k=False` skips the cuDNN path's K centring (one reduction over the
tokens per attention).

`context_parallel=N` (exact and fast) splits the sequence over N ranks of an initialised
torch.distributed group, Ulysses-style, through diffusers' `enable_parallelism`
(engine/optimization/parallel.py). Attention runs in our processors, which exchange q, k
and v in one packed all-to-all and skip it for keys every rank holds whole
(engine/optimization/ulysses.py); fp8 attention composes with it; `attention_op=False`
keeps diffusers' dispatch (one all-to-all per tensor). CUDA graphs: `auto` times eager
against replay per rank, and ranks that chose differently would no longer be in step, so
with context parallel only "always" captures; that is FLUX's default, and other models
stay eager unless asked. A process whose graphs hold NCCL work was seen to hang in
`destroy_process_group`: capture where the process group lives as long as the process.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.optimization import attention as attn_mod
from engine.optimization import compile as compile_mod
from engine.optimization.components import (
    TEXT_ENCODERS,
    compile_encoders_and_vae,
    device_of,
    image_vae,
)
from engine.optimization.concat_free import free_flux_single_blocks_of_concat
from engine.optimization.cudagraph import apply_cuda_graphs
from engine.optimization.fp8 import quantize_linears
from engine.optimization.fp8_rows import norms_into_fp8_rows
from engine.optimization.gelu_epilogue import fuse_gelu_into_gemms
from engine.optimization.gelu_fp8 import fuse_gelu_into_fp8
from engine.optimization.lora import add_lora_slot, has_lora
from engine.optimization.modulation import tabulate_flux_modulations
from engine.optimization.parallel import (
    check_context_parallel,
    context_parallel_backend,
    enable_context_parallel,
    modules_with_cp_hooks,
)
from engine.optimization.postprocess import use_device_postprocess
from engine.optimization.turbo import TurboConfig, apply_turbo
from engine.process_env import gpu_process_env_missing

MODES = ("exact", "fast", "turbo")
FP8_ATTENTION_BACKENDS = ("auto", "cudnn", "triton")
# Triton kernels of `kernels/` used by default: only those measured faster, inside the
# compiled model, than inductor's own code for the same op (`bench/engine.py --part
# blocks`/`options`). On an H200 (2026-11-22), one FLUX double + single block at 1024^2: QK
# RMSNorm+RoPE 5.92 ms against inductor's 5.98 (1%, inside run-to-run spread), the fp8
# linear's Triton quantizer 5.413 ms against 5.410: neither was on. In `exact`, once its GELU
# and concatenation had left inductor's kernels, the QK kernel measured faster: FLUX
# 126.6/126.1 -> 125.2/125.5 ms per step, two alternated pairs (H100, 2026-11-23); `fast`
# without fp8 attention was not measured again and keeps inductor's. The feed-forward's GELU
# fused into the down projection's fp8 quantizer (one read of the up projection's output
# instead of inductor's two, no bf16 activation written) is: Wan 2.1 1.3B `fast` 496-501 ->
# 482 ms per call, with fp8 attention 395-398 -> 383; FLUX `fast` 104.2 -> 101.2 ms/step,
# with fp8 attention 94.9 -> 93.1 (H100, 2026-11-22). The quantizers on the SFU's tanh and
# in power-of-two segments (2.9-3.1x inductor's, BENCHMARKS.md) then took Wan's call from
# 386.3 to 382.4 ms and FLUX's from 89.5 to 88.9: a FLUX step runs at the 700 W board cap,
# so memory-bound time saved is mostly spent again at a lower clock.
# Every norm of a FLUX double block and a Wan block into the fp8 rows its linear reads
# (engine/optimization/fp8_rows.py): BENCHMARKS.md, "Twelfth round".
# The bf16 feed-forwards' GELU in cuBLASLt's epilogue (`exact`): FLUX 131.4 -> 128.4/128.9
# ms per step, Wan 519.0 -> 512.6 ms per call; FLUX's single blocks without the
# concatenation before proj_out: 128.5/130.5 -> 126.6/127.8 (H100, 2026-11-23; BENCHMARKS.md,
# "Fourteenth round"). FLUX's adaLN modulations tabulated per generation: in pipeline
# `fast` 78.4 -> 77.1 ms per step, `exact` 128.2-128.5 -> 126.1-126.4 (H100, 2026-11-23;
# "Fifteenth round").
DEFAULT_KERNELS: tuple[str, ...] = (
    "gelu_fp8",
    "norm_fp8",
    "gelu_epilogue",
    "concat_free",
    "modulation_table",
)
EXACT_KERNELS: tuple[str, ...] = (*DEFAULT_KERNELS, "qk_rmsnorm_rope")
KERNEL_NAMES = (
    "gelu_fp8",
    "norm_fp8",
    "gelu_epilogue",
    "concat_free",
    "modulation_table",
    "fp8_linear",
    "qk_rmsnorm_rope",
)
# FLUX in `exact` (H200, 2026-11-22, one process, ms per call): the modules outside the
# blocks compiled too and CUDA graphs always on took a call from 137.4/136.3 to 132.5
# (diffusers + torch.compile 134.0). The graphs' "auto" test, three queued calls each way,
# sits inside the clock drift of a 130 ms call and had turned them off.
# `fast` (H100, 2026-11-22): the same "auto" test chose eager in one process (104.2 ms per
# call) and graphs in the next (100.3) for the same model, so FLUX captures in every mode.
FLUX_GRAPHS = "always"
DENOISERS = ("transformer", "transformer_2", "unet")
REPORT_ATTR = "_mediagate_optimization"


@dataclass
class OptimizationReport:
    """What `optimize` did to a pipeline, for logs and the benchmark."""

    mode: str
    denoisers: list[str] = field(default_factory=list)
    dtype: str = "bfloat16"
    attention_backend: str | None = None
    attention_probe_ms: dict[str, float] = field(default_factory=dict)
    fused_qkv: bool = False
    fp8_linears: int = 0
    fp8_backend: str | None = None
    compiled: str | None = None
    compile_options: dict[str, Any] = field(default_factory=dict)
    compiled_components: list[str] = field(default_factory=list)
    cache_dir: str | None = None
    cuda_graphs: str | None = None
    turbo: dict[str, Any] | None = None
    lora_slot_rank: int | None = None
    channels_last_vae: bool = False
    device_postprocess: bool = False
    kernels: list[str] = field(default_factory=list)
    context_parallel: str | None = None
    warmup_seconds: float | None = None
    notes: list[str] = field(default_factory=list)
    hooks: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (hook objects left out)."""
        # Not asdict(): it deep-copies every field, and captured CUDA graphs cannot be copied.
        d = {
            f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "hooks"
        }
        graphs = self.hooks.get("cuda_graphs")
        if graphs:
            d["cuda_graph_decisions"] = [dec for h in graphs for dec in h.stats.decisions]
        tables = self.hooks.get("modulation_table")
        if tables:
            d["modulation_calls"] = [dict(h.stats) for h in tables]
        skip = self.hooks.get("turbo")
        if skip:
            d["turbo_steps"] = [
                {"computed": h.computed, "skipped": h.skipped}
                for h in skip
                if hasattr(h, "computed")
            ]
        return d


def _denoisers(pipeline: Any) -> list[tuple[str, nn.Module]]:
    if isinstance(pipeline, nn.Module):
        return [("model", pipeline)]
    found = [(n, getattr(pipeline, n, None)) for n in DENOISERS]
    found = [(n, m) for n, m in found if isinstance(m, nn.Module)]
    if not found:
        raise ValueError(f"{type(pipeline).__name__} has no transformer or unet to optimize")
    return found


def _to_dtype(model: nn.Module, dtype: torch.dtype) -> None:
    from engine.pipelines._build import cast_keeping_fp32

    cast_keeping_fp32(model, dtype)


def _fp8_attention_backend(requested: str, device: torch.device) -> str:
    """The sdpa backend name for `attention="fp8"`: cuDNN's where it runs, else our kernel."""
    from engine.optimization.cudnn_fp8 import cudnn_fp8_attention_available
    from engine.optimization.sdpa import FP8_BACKEND, FP8_CUDNN_BACKEND

    if requested == "auto":
        available = device.type == "cuda" and cudnn_fp8_attention_available(device.index or 0)
        requested = "cudnn" if available else "triton"
    return FP8_CUDNN_BACKEND if requested == "cudnn" else FP8_BACKEND


def _block_filter(model: nn.Module):
    """Quantize linears inside the repeated blocks only (embedders and the final projection
    stay bf16: they are a rounding error of the FLOPs and the most sensitive layers)."""
    classes = set(getattr(model, "_repeated_blocks", None) or [])
    prefixes: list[str] = []
    for name, module in model.named_modules():
        if type(module).__name__ in classes or type(module).__name__ in (
            "BasicTransformerBlock",
            "Transformer2DModel",
        ):
            prefixes.append(name + ".")

    def include(full: str, linear: nn.Linear) -> bool:
        return any(full.startswith(p) for p in prefixes)

    return include


def optimize(
    pipeline: Any,
    mode: str = "exact",
    *,
    compile: bool = True,
    compile_mode: str | None = None,
    compile_options: dict[str, Any] | None = None,
    compile_backend: str = "inductor",
    compile_group: dict[str, int] | None = None,
    compile_rest: bool | None = None,
    compile_components: bool = True,
    fullgraph: bool | None = None,
    dynamic: bool | None = None,
    cuda_graphs: str | bool | None = None,
    attention: str = "auto",
    attention_op: bool | None = None,
    attention_seq_len: int = 4608,
    attention_fp8_min_kv: int | None = None,
    attention_fp8_producer: bool = True,
    attention_fp8_backend: str = "auto",
    attention_fp8_smooth_k: bool = True,
    fuse_qkv: bool = True,
    fp8_backend: str | None = None,
    kernels: tuple[str, ...] | None = None,
    fp8_fast_accum: bool = True,
    turbo: TurboConfig | None = None,
    lora_rank: int | None = None,
    cache_dir: str | Path | None = None,
    dtype: torch.dtype = torch.bfloat16,
    context_parallel: int | None = None,
) -> Any:
    """Optimize a diffusers pipeline (or a bare denoiser) in place for `mode`; returns it.

    The report of what was applied is at `report_of(pipeline)`. Compilation is lazy: the
    first call at each resolution compiles (or loads from `cache_dir`); `warmup` runs it.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if context_parallel is not None:
        if mode == "turbo":
            # Step caching decides per rank; ranks that disagree would deadlock in the
            # attention all-to-all. Not supported until measured with a shared decision.
            raise ValueError("context_parallel composes with 'exact' and 'fast', not 'turbo'")
        for _, model in _denoisers(pipeline):
            check_context_parallel(model, context_parallel)
    fp8_attention = attention == "fp8"
    if fp8_attention and mode == "exact":
        raise ValueError(
            "attention='fp8' rounds to e4m3: use it with 'fast' or 'turbo', not 'exact'"
        )
    if attention_fp8_backend not in FP8_ATTENTION_BACKENDS:
        raise ValueError(
            f"attention_fp8_backend must be one of {FP8_ATTENTION_BACKENDS}, "
            f"got {attention_fp8_backend!r}"
        )
    report = OptimizationReport(mode=mode, dtype=str(dtype).removeprefix("torch."))
    quantize = mode in ("fast", "turbo")
    if kernels is None:
        kernels = EXACT_KERNELS if mode == "exact" else DEFAULT_KERNELS
    use_kernels = tuple(kernels)
    unknown = sorted(set(use_kernels) - set(KERNEL_NAMES))
    if unknown:
        raise ValueError(f"unknown kernels {unknown}: choose from {KERNEL_NAMES}")
    if fp8_backend is None:
        fp8_backend = "kernels" if "fp8_linear" in use_kernels else "torch"
    turbo_cfg = (turbo or TurboConfig()) if mode == "turbo" else None

    if compile:
        report.cache_dir = str(compile_mod.configure_cache(cache_dir))

    if not isinstance(pipeline, nn.Module):
        for name in TEXT_ENCODERS:
            enc = getattr(pipeline, name, None)
            if isinstance(enc, nn.Module) and device_of(enc).type == "cuda":
                p = next(enc.parameters(), None)
                if p is not None and p.dtype == torch.float32:
                    enc.to(dtype)
        vae = image_vae(pipeline)
        if vae is not None:
            # cuDNN's NHWC convolutions avoid a layout transpose around every conv. A video
            # VAE's 5-D weights have no channels-last layout (torch refuses them).
            vae.to(memory_format=torch.channels_last)
            report.channels_last_vae = True
        report.device_postprocess = use_device_postprocess(pipeline)
        if compile and compile_components:
            report.compiled_components = compile_encoders_and_vae(
                pipeline, dynamic=dynamic, backend=compile_backend
            )

    for name, model in _denoisers(pipeline):
        report.denoisers.append(name)
        device = device_of(model)
        _to_dtype(model, dtype)

        if lora_rank:
            add_lora_slot(model, lora_rank)
            report.lora_slot_rank = lora_rank

        if fuse_qkv and hasattr(model, "fuse_qkv_projections"):
            if has_lora(model):
                report.notes.append(f"{name}: QKV left unfused (LoRA layers sit on to_q/to_k/to_v)")
            else:
                try:
                    with torch.no_grad():
                        model.fuse_qkv_projections()
                    _drop_unfused_projections(model)
                    model.requires_grad_(False)
                    report.fused_qkv = True
                except (ValueError, NotImplementedError, AttributeError) as exc:
                    report.notes.append(f"{name}: QKV not fused ({exc})")

        backend, probe = attn_mod.choose_attention_backend(
            model,
            device=device,
            seq_len=attention_seq_len,
            requested="auto" if fp8_attention else attention,
            via_op=bool(attention_op),
        )
        report.attention_probe_ms = probe
        if context_parallel:
            backend = context_parallel_backend(backend, probe)
        routed = 0
        if fp8_attention:
            from engine.optimization.sdpa import use_sdpa_processors

            fp8_name = _fp8_attention_backend(attention_fp8_backend, device)
            routed = use_sdpa_processors(
                model,
                fp8_name,
                attention_fp8_min_kv,
                fp8_producer=attention_fp8_producer,
                fp8_smooth_k=attention_fp8_smooth_k,
            )
            if routed:
                report.attention_backend = f"sdpa_bshd:{fp8_name}"
            else:
                report.notes.append(f"{name}: no FLUX/Wan attention for fp8; kept bf16 attention")
        elif (context_parallel and attention_op is not False) or attention_op:
            # Under context parallel our processors pack q, k and v into one all-to-all
            # (engine/optimization/ulysses.py); attention_op=False keeps diffusers' dispatch.
            from engine.optimization.sdpa import use_sdpa_processors

            routed = use_sdpa_processors(model, backend)
        if routed:
            report.attention_backend = (
                report.attention_backend or f"sdpa_bshd:{backend or 'native'}"
            )
        elif backend is not None and hasattr(model, "set_attention_backend"):
            model.set_attention_backend(backend)
            report.attention_backend = backend

        if (
            not context_parallel
            and not fp8_attention
            and not routed
            and "qk_rmsnorm_rope" in use_kernels
            and type(model).__name__ == "FluxTransformer2DModel"
        ):
            from engine.optimization.kernel_processors import use_flux_kernel_attention

            use_flux_kernel_attention(model, report.attention_backend)
            report.kernels.append("qk_rmsnorm_rope")

        if quantize:
            if fp8_backend == "kernels":
                import kernels.fp8  # noqa: F401  (fails early if the package is missing)
            replaced = quantize_linears(
                model, include=_block_filter(model), backend=fp8_backend, fast_accum=fp8_fast_accum
            )
            report.fp8_linears += len(replaced)
            report.fp8_backend = fp8_backend
            missing = gpu_process_env_missing()
            if replaced and device.type == "cuda" and missing:
                report.notes.append(
                    f"this process runs without {', '.join(missing)}: cuBLASLt's fp8 GEMMs "
                    "take slower kernels (engine/process_env.py)"
                )
            if fp8_backend == "kernels" and "fp8_linear" not in report.kernels:
                report.kernels.append("fp8_linear")
            if "gelu_fp8" in use_kernels and fuse_gelu_into_fp8(model):
                report.kernels.append("gelu_fp8")
            if "norm_fp8" in use_kernels and norms_into_fp8_rows(model):
                report.kernels.append("norm_fp8")
        if "gelu_epilogue" in use_kernels and fuse_gelu_into_gemms(model):
            report.kernels.append("gelu_epilogue")
        if "concat_free" in use_kernels and free_flux_single_blocks_of_concat(model):
            report.kernels.append("concat_free")

        flux = type(model).__name__ == "FluxTransformer2DModel"
        # The rest of the model compiled: measured to pay in `exact` only (fast: 91.5 ms per
        # call either way, H100, 2026-11-22), where it costs compile time for nothing.
        rest = (flux and mode == "exact") if compile_rest is None else compile_rest
        graphs_req = cuda_graphs if cuda_graphs is not None else FLUX_GRAPHS if flux else "auto"
        if turbo_cfg is not None and turbo_cfg.method == "fbc":
            # The first-block cache decides per step on the GPU's numbers: a graph break
            # between blocks, so no full-graph compile and no whole-forward CUDA graph.
            fullgraph_eff, graphs = False, False
        else:
            fullgraph_eff = True if fullgraph is None else fullgraph
            # With context parallel only an explicit "always" captures (measured in
            # bench/engine.py --part cp); "auto" decides per rank, and ranks must agree.
            graphs = graphs_req if not context_parallel or graphs_req == "always" else False

        if context_parallel:
            report.context_parallel = enable_context_parallel(model, context_parallel)

        if compile:
            report.compiled = compile_mod.compile_model(
                model,
                mode=compile_mode,
                fullgraph=fullgraph_eff,
                dynamic=dynamic,
                options=compile_options,
                backend=compile_backend,
                skip=modules_with_cp_hooks(model) if context_parallel else None,
                group=compile_group if fullgraph_eff and not context_parallel else None,
                rest=rest and not context_parallel,
            )
            report.compile_options = {
                "mode": compile_mode,
                "fullgraph": fullgraph_eff,
                "dynamic": dynamic,
                "backend": compile_backend,
                "group": compile_group,
                "rest": rest,
                **(compile_options or {}),
            }

        if graphs and device.type == "cuda":
            hook = apply_cuda_graphs(
                model, mode="always" if graphs == "always" or graphs is True else "auto"
            )
            report.hooks.setdefault("cuda_graphs", []).append(hook)
            report.cuda_graphs = "always" if hook.mode == "always" else "auto"

        if "modulation_table" in use_kernels:
            # Outside the graph, whose captured blocks read the buffer it fills; inside the
            # step skipping, so that a skipped step looks nothing up.
            hook = tabulate_flux_modulations(
                model,
                getattr(pipeline, "scheduler", None),
                check_after_launch=bool(graphs) and device.type == "cuda",
            )
            if hook is not None:
                report.kernels.append("modulation_table")
                report.hooks.setdefault("modulation_table", []).append(hook)

        if turbo_cfg is not None:
            scheduler = getattr(pipeline, "scheduler", None)
            hook = apply_turbo(model, turbo_cfg, scheduler)
            report.hooks.setdefault("turbo", []).append(hook)
            report.turbo = asdict(turbo_cfg)

    _attach(pipeline, report)
    return pipeline


def _drop_unfused_projections(model: nn.Module) -> None:
    # After fusion the separate q/k/v weights are dead: free them (a fifth of FLUX's weights).
    for module in model.modules():
        if not getattr(module, "fused_projections", False):
            continue
        cross = getattr(module, "is_cross_attention", False)
        names = ("to_k", "to_v") if cross else ("to_q", "to_k", "to_v")
        if hasattr(module, "to_added_qkv"):
            names += ("add_q_proj", "add_k_proj", "add_v_proj")
        if hasattr(module, "to_added_kv"):
            names += ("add_k_proj", "add_v_proj")
        for n in names:
            lin = getattr(module, n, None)
            if isinstance(lin, nn.Linear):
                # Keep shapes readable (some code inspects them) but release the storage.
                lin.weight = nn.Parameter(
                    torch.empty(0, device=lin.weight.device, dtype=lin.weight.dtype),
                    requires_grad=False,
                )
                if lin.bias is not None:
                    lin.bias = nn.Parameter(
                        torch.empty(0, device=lin.bias.device, dtype=lin.bias.dtype),
                        requires_grad=False,
                    )


def _attach(pipeline: Any, report: OptimizationReport) -> None:
    try:
        object.__setattr__(pipeline, REPORT_ATTR, report)
    except (AttributeError, TypeError):
        pass


def report_of(pipeline: Any) -> OptimizationReport | None:
    """The report `optimize` left on a pipeline or model, if any."""
    return getattr(pipeline, REPORT_ATTR, None)


def warmup(pipeline: Any, *, save_artifacts: bool = True, **call_kwargs: Any) -> float:
    """Run the pipeline once (compiling, capturing graphs) and return the seconds it took.

    Call with the resolution and step count you will serve; each other resolution
    compiles on its first request. The compiled artefacts are written to the cache.
    """
    start = time.perf_counter()
    with torch.inference_mode(False), torch.no_grad():
        pipeline(**call_kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    report = report_of(pipeline)
    if report is not None:
        report.warmup_seconds = seconds
        if save_artifacts and report.cache_dir:
            try:
                compile_mod.save_cache_artifacts(report.cache_dir)
            except Exception as exc:  # the artefact file is an optimization of restarts only
                report.notes.append(f"compile artefacts not saved: {exc}")
    return seconds
