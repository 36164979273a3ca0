"""Engine benchmark: FLUX.1-dev and Wan 2.1 1.3B through `engine.optimize`, against diffusers.

Run on a CUDA machine from the repository root, one part per process:

    python bench/engine.py --part flux      # eager, diffusers+compile, exact, fast, turbo
    python bench/engine.py --part blocks    # our Triton kernels inside a compiled block vs inductor
    python bench/engine.py --part cache     # compile time cold / from the disk cache, LoRA hot-swap
    python bench/engine.py --part wan       # Wan 2.1 T2V 1.3B, 832x480, 81 frames
    python bench/engine.py --merge a.json b.json ...   # one table, engine.json and a PNG

Every model is built from its published config with random weights (text encoders too:
T5-XXL and CLIP-L for FLUX, UMT5-XXL for Wan), so whole-pipeline times are honest; the
outputs are not images of anything. Per variant it reports the transformer's ms per step
(median of CUDA-event timings of single calls with the pipeline's own inputs), the
effective ms per step inside the pipeline (GPU time between the first and the last step
callbacks, which is what step caching changes), whole-pipeline seconds, achieved TFLOP/s
against the bf16 matmul peak measured in the same process, compile/warm-up seconds, peak
GPU memory, and the drift of the final latents against eager bf16 with the same seed.

`--size tiny --device cpu` runs every part on tiny configs, to check the script.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine.optimization import drift, optimize, report_of  # noqa: E402
from engine.optimization.metrics import flux_step_flops, wan_step_flops  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PROMPT = "a photograph of an astronaut riding a horse on the moon, high detail"


def log(*parts: Any) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *parts, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_calls(fn, device: torch.device, *, iters: int, warmup: int = 1) -> float:
    """Median milliseconds of `iters` single calls (CUDA events on GPU, wall clock on CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def matmul_peaks(device: torch.device, n: int = 8192) -> dict[str, float]:
    """bf16 and fp8 (row-wise scaled) matmul TFLOP/s on random data, measured here."""
    if device.type != "cuda":
        return {"bf16_tflops": 0.0, "fp8_tflops": 0.0}
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
    ms = time_calls(lambda: a @ b, device, iters=10, warmup=3)
    out = {"bf16_tflops": 2 * n**3 / ms / 1e9}
    try:
        a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn)
        sa = torch.ones(n, 1, device=device)
        sb = torch.ones(1, n, device=device)
        ms8 = time_calls(
            lambda: torch._scaled_mm(
                a8, b8.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16, use_fast_accum=True
            ),
            device,
            iters=10,
            warmup=3,
        )
        out["fp8_tflops"] = 2 * n**3 / ms8 / 1e9
    except Exception as exc:  # noqa: BLE001
        out["fp8_tflops"] = 0.0
        out["fp8_error"] = str(exc)
    a = b = None  # noqa: F841  (free before the models are built)
    return out


def env_info(device: torch.device) -> dict[str, Any]:
    import diffusers
    import transformers

    info = {
        "date": dt.date.today().isoformat(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "device": device.type,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cudnn"] = torch.backends.cudnn.version()
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    return info


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def capture_call_kwargs(model: torch.nn.Module, run) -> dict[str, Any]:
    """The keyword arguments of the model's first call during `run()`, cloned."""
    seen: dict[str, Any] = {}

    def hook(_module, args, kwargs):
        if not seen:
            seen.update(
                {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
            )

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return seen


class StepClock:
    """Pipeline callback: GPU time from the end of step 0 to the end of the last step, and the final latents."""

    def __init__(self, device: torch.device, steps: int, key: str = "latents") -> None:
        self.device, self.steps, self.key = device, steps, key
        self.first = self.last = None
        self.t_first = self.t_last = 0.0
        self.latents: torch.Tensor | None = None

    def __call__(self, pipe, i, t, kwargs):
        if i == 0:
            if self.device.type == "cuda":
                self.first = torch.cuda.Event(enable_timing=True)
                self.first.record()
            else:
                self.t_first = time.perf_counter()
        if i == self.steps - 1:
            if self.device.type == "cuda":
                self.last = torch.cuda.Event(enable_timing=True)
                self.last.record()
            else:
                self.t_last = time.perf_counter()
            self.latents = kwargs[self.key].detach().float().clone()
        return {}

    def ms_per_step(self) -> float | None:
        if self.steps < 2:
            return None
        if self.device.type == "cuda":
            if self.first is None or self.last is None:
                return None
            self.last.synchronize()
            return self.first.elapsed_time(self.last) / (self.steps - 1)
        return (self.t_last - self.t_first) * 1e3 / (self.steps - 1)


def run_variant(name: str, fn) -> dict[str, Any]:
    log(f"--- {name}")
    try:
        row = fn()
        row["variant"] = name
        log(
            name,
            {
                k: v
                for k, v in row.items()
                if not k.startswith("_") and not isinstance(v, dict | list)
            },
        )
        return row
    except Exception as exc:  # noqa: BLE001  (one failed variant must not lose the others)
        traceback.print_exc()
        return {"variant": name, "error": f"{type(exc).__name__}: {exc}"}


def pick_block_kwargs(path: str) -> dict[str, dict[str, Any]]:
    """Per mode, the optimize() arguments of the fastest block variant in a blocks result."""
    picks: dict[str, tuple[float, dict[str, Any]]] = {}
    for row in json.loads(Path(path).read_text()).get("rows", []):
        if "error" in row or "ms" not in row:
            continue
        best = picks.get(row["mode"])
        if best is None or row["ms"] < best[0]:
            picks[row["mode"]] = (row["ms"], row.get("kwargs", {}))
    chosen = {mode: kw for mode, (_, kw) in picks.items()}
    log("picked from blocks", chosen)
    return chosen


def save_partial(args: argparse.Namespace, part: str, result: dict[str, Any]) -> None:
    """Write what is measured so far, so a run cut short by its time limit still reports."""
    if not args.out:
        return
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"engine-{part}.partial.json").write_text(
        json.dumps(result, indent=2, default=str)
    )


def add_rates(row: dict[str, Any], flops: dict[str, float], peaks: dict[str, float]) -> None:
    # Step caching skips work, so FLOP rates would count work not done: none for turbo.
    ms = row.get("ms_step")
    if not ms or row.get("variant") == "turbo":
        return
    peak = peaks.get("bf16_tflops") or 0.0
    row["tflops"] = flops["total"] / ms / 1e9
    if peak:
        row["pct_peak"] = 100 * row["tflops"] / peak
        floor_ms = flops["total"] / peak / 1e9
        row["floor_ms"] = floor_ms
        row["pct_floor"] = 100 * floor_ms / ms


# ---------------------------------------------------------------------------- FLUX


def flux_part(args: argparse.Namespace) -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    from engine.optimization.turbo import TurboConfig, apply_turbo
    from engine.pipelines import build_flux_pipeline, build_flux_transformer, configs

    device = torch.device(args.device)
    dtype = torch.bfloat16
    h = w = args.resolution
    steps = args.steps
    result: dict[str, Any] = {
        "env": env_info(device),
        "model": f"FLUX.1-{args.size}",
        "resolution": [h, w],
        "steps": steps,
    }
    result["peaks"] = matmul_peaks(device) if not args.no_peaks else {}
    log("peaks", result["peaks"])
    free(device)

    log("building text encoders and VAE")
    shared = build_flux_pipeline(
        args.size, device=device, dtype=dtype, seed=1, transformer=torch.nn.Identity()
    )
    components = {
        k: getattr(shared, k)
        for k in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
    }
    del shared

    def make_pipe(transformer):
        sched = FlowMatchEulerDiscreteScheduler(**configs.FLUX_SCHEDULER)
        pipe = FluxPipeline(scheduler=sched, transformer=transformer, **components)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    call = {"prompt": PROMPT, "height": h, "width": w, "guidance_scale": 3.5}
    ref_latents: dict[str, torch.Tensor] = {}
    inputs: dict[str, Any] = {}
    flops = None

    def measure(variant: str, prepare) -> dict[str, Any]:
        nonlocal flops
        torch._dynamo.reset()
        free(device)
        transformer = build_flux_transformer(args.size, device=device, dtype=dtype, seed=0)
        pipe = make_pipe(transformer)
        row: dict[str, Any] = {}
        t0 = time.perf_counter()
        prepare(pipe)
        row["setup_s"] = time.perf_counter() - t0
        if not inputs:
            inputs.update(
                capture_call_kwargs(
                    transformer, lambda: pipe(**call, num_inference_steps=1, output_type="latent")
                )
            )
            tokens = inputs["hidden_states"].shape[1]
            flops = flux_step_flops(
                transformer.config,
                image_tokens=tokens,
                text_tokens=inputs["encoder_hidden_states"].shape[1],
            )
            result["flops_per_step"] = flops
        tr = pipe.transformer
        with torch.no_grad():
            t0 = time.perf_counter()
            tr(**inputs)
            sync(device)
            first = time.perf_counter() - t0
            row["ms_step"] = time_calls(lambda: tr(**inputs), device, iters=args.iters, warmup=1)
        row["first_call_s"] = first
        row["compile_s"] = max(0.0, first - row["ms_step"] / 1e3)
        # Warm the rest of the pipeline (VAE, encoders, cuDNN plans) with a short run.
        pipe(**call, num_inference_steps=2, generator=torch.Generator(device=device).manual_seed(0))
        clock = StepClock(device, steps)
        sync(device)
        t0 = time.perf_counter()
        pipe(
            **call,
            num_inference_steps=steps,
            generator=torch.Generator(device=device).manual_seed(0),
            callback_on_step_end=clock,
            callback_on_step_end_tensor_inputs=["latents"],
        )
        sync(device)
        row["pipeline_s"] = time.perf_counter() - t0
        row["ms_step_pipeline"] = clock.ms_per_step()
        row["peak_gb"] = peak_gb(device)
        if variant == "eager":
            ref_latents["eager"] = clock.latents
        elif "eager" in ref_latents:
            row["drift"] = drift(clock.latents, ref_latents["eager"])
        report = report_of(pipe)
        if report is not None:
            row["report"] = report.to_dict()
        row["_pipe"] = pipe
        return row

    rows: list[dict[str, Any]] = []

    def keep(row: dict[str, Any]) -> dict[str, Any]:
        row.pop("_pipe", None)
        rows.append(row)
        save_partial(args, "flux", {**result, "rows": rows})
        return row

    keep(run_variant("eager", lambda: measure("eager", lambda p: None)))
    cache = args.cache_dir
    extra = json.loads(args.optimize_kwargs) if args.optimize_kwargs else {}
    picks = pick_block_kwargs(args.pick_from) if args.pick_from else {}
    result["picked_kwargs"] = picks
    kw_exact = {**extra, **picks.get("exact", {})}
    kw_fast = {**extra, **picks.get("fast", {})}
    keep(
        run_variant(
            "exact",
            lambda: measure("exact", lambda p: optimize(p, "exact", cache_dir=cache, **kw_exact)),
        )
    )

    fast_holder: dict[str, Any] = {}

    def fast_run():
        row = measure("fast", lambda p: optimize(p, "fast", cache_dir=cache, **kw_fast))
        fast_holder["pipe"] = row["_pipe"]
        return row

    keep(run_variant("fast", fast_run))

    def turbo_run():
        # turbo = fast + the step cache: optimize() adds the same hook last, so reuse the
        # compiled fast pipeline instead of compiling it a second time.
        pipe = fast_holder["pipe"]
        cfg = TurboConfig()
        hook = apply_turbo(pipe.transformer, cfg, pipe.scheduler)
        row: dict[str, Any] = {"setup_s": 0.0}
        pipe(**call, num_inference_steps=2, generator=torch.Generator(device=device).manual_seed(0))
        hook.computed = hook.skipped = 0
        clock = StepClock(device, steps)
        sync(device)
        t0 = time.perf_counter()
        pipe(
            **call,
            num_inference_steps=steps,
            generator=torch.Generator(device=device).manual_seed(0),
            callback_on_step_end=clock,
            callback_on_step_end_tensor_inputs=["latents"],
        )
        sync(device)
        row["pipeline_s"] = time.perf_counter() - t0
        row["ms_step_pipeline"] = clock.ms_per_step()
        row["turbo_steps"] = {
            "computed": hook.computed,
            "skipped": hook.skipped,
            "config": vars(cfg),
        }
        row["peak_gb"] = peak_gb(device)
        if "eager" in ref_latents:
            row["drift"] = drift(clock.latents, ref_latents["eager"])
        return row

    if "pipe" in fast_holder:
        keep(run_variant("turbo", turbo_run))
    fast_holder.clear()
    # diffusers + torch.compile last: its whole-model compile is the slowest step here.
    if not args.no_baseline_compile:
        keep(
            run_variant(
                "compile",
                lambda: measure("compile", lambda p: p.transformer.compile(fullgraph=True)),
            )
        )

    for row in rows:
        if flops:
            add_rates(row, flops, result["peaks"])
    result["rows"] = rows
    return result


# ---------------------------------------------------------------------------- kernels in blocks


def blocks_part(args: argparse.Namespace) -> dict[str, Any]:
    """FLUX with one double and one single block at full width: our kernels vs inductor's code."""
    from diffusers import FluxTransformer2DModel

    from engine.pipelines import configs, flux_transformer_inputs
    from engine.pipelines._build import random_model

    device = torch.device(args.device)
    cfg = dict(
        configs.FLUX_DEV_TRANSFORMER if args.size == "dev" else configs.FLUX_TINY_TRANSFORMER
    )
    cfg.update(num_layers=1, num_single_layers=1)
    res = args.resolution
    result: dict[str, Any] = {
        "env": env_info(device),
        "part": "blocks",
        "config": "FLUX.1-dev width, 1 double + 1 single block",
    }
    variants = (
        [(v["name"], v["mode"], v.get("kwargs", {})) for v in json.loads(args.block_variants)]
        if args.block_variants
        else [
            ("exact/inductor", "exact", {"kernels": []}),
            ("exact/qk_rmsnorm_rope", "exact", {"kernels": ["qk_rmsnorm_rope"]}),
            ("fast/inductor", "fast", {"kernels": []}),
            ("fast/fp8_linear", "fast", {"kernels": ["fp8_linear"]}),
        ]
    )
    rows = []
    ref = None
    for name, mode, kw in variants:

        def one(mode=mode, kw=kw):
            nonlocal ref
            torch._dynamo.reset()
            free(device)
            model = random_model(
                FluxTransformer2DModel, cfg, device=device, dtype=torch.bfloat16, seed=0
            )
            inp = flux_transformer_inputs(model, height=res, width=res)
            with torch.no_grad():
                eager_out = model(**inp)[0].float()
                eager_ms = time_calls(lambda: model(**inp), device, iters=args.iters, warmup=1)
            optimize(model, mode, **{"cuda_graphs": False, "cache_dir": args.cache_dir, **kw})
            with torch.no_grad():
                t0 = time.perf_counter()
                out = model(**inp)[0].float()
                sync(device)
                first = time.perf_counter() - t0
                ms = time_calls(lambda: model(**inp), device, iters=args.iters, warmup=2)
            return {
                "mode": mode,
                "kwargs": kw,
                "ms": ms,
                "eager_ms": eager_ms,
                "compile_s": first,
                "drift": drift(out, eager_out),
            }

        rows.append(run_variant(name, one))
        save_partial(args, "blocks", {**result, "rows": rows})
    result["rows"] = rows
    return result


# ---------------------------------------------------------------------------- where the time goes


def _kernel_class(name: str) -> str:
    low = name.lower()
    # Inductor names its kernels after every op fused in, attention's neighbours included.
    if low.startswith("triton") or "triton_" in low:
        return "fused elementwise (inductor)"
    if any(k in low for k in ("fmha", "flash", "attention", "sdpa", "attn")):
        return "attention"
    if any(
        k in low for k in ("gemm", "xmma", "nvjet", "cutlass", "f8f8", "cublas", "matmul", "gemv")
    ):
        return "matmul"
    return "other"


def profile_part(args: argparse.Namespace) -> dict[str, Any]:
    """GPU time of one FLUX transformer step by kernel class, per mode (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    from engine.pipelines import build_flux_transformer, flux_transformer_inputs

    device = torch.device(args.device)
    result: dict[str, Any] = {"env": env_info(device), "part": "profile", "rows": []}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for mode in ("eager", "exact", "fast"):

        def one(mode=mode):
            torch._dynamo.reset()
            free(device)
            model = build_flux_transformer(args.size, device=device, dtype=torch.bfloat16, seed=0)
            inp = flux_transformer_inputs(model, height=args.resolution, width=args.resolution)
            if mode != "eager":
                optimize(model, mode, cuda_graphs=False, cache_dir=args.cache_dir)
            with torch.no_grad():
                for _ in range(3):
                    model(**inp)
                sync(device)
                ms = time_calls(lambda: model(**inp), device, iters=5, warmup=0)
                with profile(activities=activities) as prof:
                    for _ in range(2):
                        model(**inp)
                    sync(device)
            classes: dict[str, float] = {}
            top: dict[str, float] = {}
            for evt in prof.key_averages():
                t = (
                    getattr(evt, "device_time_total", None)
                    or getattr(evt, "cuda_time_total", 0)
                    or 0
                )
                if t <= 0 or evt.device_type != torch.autograd.DeviceType.CUDA:
                    continue
                ms_evt = t / 1e3 / 2
                classes[_kernel_class(evt.key)] = classes.get(_kernel_class(evt.key), 0.0) + ms_evt
                top[evt.key[:90]] = ms_evt
            busy = sum(classes.values())
            return {
                "mode": mode,
                "ms_step": ms,
                "kernel_ms": busy,
                "gaps_ms": ms - busy,
                "classes_ms": classes,
                "top_kernels_ms": dict(sorted(top.items(), key=lambda kv: -kv[1])[:12]),
            }

        result["rows"].append(run_variant(f"profile {mode}", one))
        save_partial(args, "profile", result)
    return result


# ---------------------------------------------------------------------------- compile cache + LoRA


DEFAULT_PROBES = [
    # label, mode, cache subdir, extra optimize() kwargs, LoRA slot
    {"label": "fast cold", "mode": "fast", "dir": "a"},
    {"label": "fast warm", "mode": "fast", "dir": "a"},
    {"label": "fast LoRA slot", "mode": "fast", "dir": "lora", "lora": True},
]


def cache_part(args: argparse.Namespace) -> dict[str, Any]:
    """Compile time in fresh processes: cold (empty cache dir), then warm (same dir); LoRA hot-swap."""
    import tempfile

    root = Path(args.cache_dir or tempfile.mkdtemp(prefix="mg-compile-"))
    result: dict[str, Any] = {
        "env": env_info(torch.device(args.device)),
        "part": "cache",
        "cache_dir": str(root),
    }
    probes = json.loads(args.probes) if args.probes else DEFAULT_PROBES
    runs = {}
    for spec in probes:
        label = spec["label"]
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--part",
            "probe",
            "--size",
            args.size,
            "--device",
            args.device,
            "--resolution",
            str(args.resolution),
            "--iters",
            str(args.iters),
            "--cache-dir",
            str(root / spec.get("dir", "a")),
            "--probe-mode",
            spec.get("mode", "fast"),
            "--optimize-kwargs",
            json.dumps(
                {
                    **(json.loads(args.optimize_kwargs) if args.optimize_kwargs else {}),
                    **spec.get("kwargs", {}),
                }
            ),
        ]
        if spec.get("lora"):
            cmd += ["--lora-rank", str(args.lora_rank)]
        log(f"--- compile probe: {label}")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.probe_timeout)
            sys.stderr.write(proc.stderr[-3000:])
            line = next(
                (ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("PROBE ")), None
            )
            run = (
                json.loads(line[6:])
                if line
                else {"error": f"rc={proc.returncode}", "tail": proc.stdout[-2000:]}
            )
        except subprocess.TimeoutExpired:
            run = {"error": f"timeout after {args.probe_timeout}s"}
        run["process_wall_s"] = time.perf_counter() - t0
        run["spec"] = spec
        runs[label] = run
        log(label, {k: v for k, v in run.items() if not isinstance(v, dict | list)})
        save_partial(args, "cache", {**result, "runs": runs})
    result["runs"] = runs
    return result


def probe_part(args: argparse.Namespace) -> None:
    """One fresh process: build FLUX's transformer, optimize(fast), time the first call."""
    from torch._dynamo.utils import counters

    from engine.optimization import compiled_frame_count, hotswap_lora
    from engine.optimization.lora import random_lora_state_dict
    from engine.pipelines import build_flux_transformer, flux_transformer_inputs

    device = torch.device(args.device)
    cache_dir = args.cache_dir
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    model = build_flux_transformer(args.size, device=device, dtype=torch.bfloat16, seed=0)
    inp = flux_transformer_inputs(model, height=args.resolution, width=args.resolution)
    out["build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    extra = json.loads(args.optimize_kwargs) if args.optimize_kwargs else {}
    optimize(model, args.probe_mode, cache_dir=cache_dir, lora_rank=args.lora_rank or None, **extra)
    out["optimize_s"] = time.perf_counter() - t0
    with torch.no_grad():
        t0 = time.perf_counter()
        model(**inp)
        sync(device)
        out["first_call_s"] = time.perf_counter() - t0
        out["ms_step"] = time_calls(lambda: model(**inp), device, iters=args.iters, warmup=1)
    out["compile_s"] = out["first_call_s"] - out["ms_step"] / 1e3
    out["inductor_counters"] = {k: v for k, v in counters["inductor"].items() if "cache" in k}
    out["report"] = report_of(model).to_dict()
    if args.lora_rank:
        frames = compiled_frame_count()
        swaps = []
        with torch.no_grad():
            before = model(**inp)[0].float()
            for i, rank in enumerate((args.lora_rank // 4, args.lora_rank, args.lora_rank // 2)):
                sd = random_lora_state_dict(model, rank=rank, seed=i + 1, scale=0.05)
                swap_s = hotswap_lora(model, sd)
                t0 = time.perf_counter()
                after = model(**inp)[0].float()
                sync(device)
                call_s = time.perf_counter() - t0
                swaps.append(
                    {
                        "rank": rank,
                        "swap_ms": swap_s * 1e3,
                        "next_call_ms": call_s * 1e3,
                        "changed": drift(after, before)["rel_l2"],
                    }
                )
                before = after
            # The graph replays must see the swapped weights: compare with graphs off.
            hooks = report_of(model).hooks.get("cuda_graphs") or []
            for h in hooks:
                h.enabled = False
            plain = model(**inp)[0].float()
            for h in hooks:
                h.enabled = True
            out["graph_vs_plain"] = drift(after, plain)
        out["recompiles_after_swaps"] = compiled_frame_count() - frames
        out["swaps"] = swaps
    print("PROBE " + json.dumps(out, default=str), flush=True)


# ---------------------------------------------------------------------------- Wan


def wan_part(args: argparse.Namespace) -> dict[str, Any]:
    from diffusers import UniPCMultistepScheduler, WanPipeline

    from engine.pipelines import (
        build_wan_pipeline,
        build_wan_transformer,
        configs,
        wan_transformer_inputs,
    )

    device = torch.device(args.device)
    size = "1.3b" if args.size == "dev" else "tiny"
    if size == "tiny":
        hw, frames = (32, 32), 5
    else:
        hw, frames = (480, 832), 81
    result: dict[str, Any] = {
        "env": env_info(device),
        "model": f"Wan2.1-T2V-{size}",
        "size": [*hw, frames],
    }
    result["peaks"] = matmul_peaks(device) if not args.no_peaks else {}
    free(device)
    rows = []
    ref: dict[str, torch.Tensor] = {}
    flops: dict[str, float] = {}
    extra = json.loads(args.optimize_kwargs) if args.optimize_kwargs else {}
    pipes: dict[str, Any] = {}

    def one(variant: str):
        torch._dynamo.reset()
        free(device)
        model = build_wan_transformer(size, device=device, dtype=torch.bfloat16, seed=0)
        inp = wan_transformer_inputs(model, height=hw[0], width=hw[1], num_frames=frames)
        if not flops:
            p = model.config.patch_size
            x = inp["hidden_states"]
            tokens = (x.shape[2] // p[0]) * (x.shape[3] // p[1]) * (x.shape[4] // p[2])
            flops.update(wan_step_flops(model.config, video_tokens=tokens))
            result["flops_per_call"] = flops
        row: dict[str, Any] = {}
        t0 = time.perf_counter()
        if variant == "compile":
            model.compile(fullgraph=True)
        elif variant != "eager":
            optimize(model, variant, cache_dir=args.cache_dir, **extra)
        row["setup_s"] = time.perf_counter() - t0
        with torch.no_grad():
            t0 = time.perf_counter()
            out = model(**inp)[0].float()
            sync(device)
            row["first_call_s"] = time.perf_counter() - t0
            row["ms_step"] = time_calls(
                lambda: model(**inp), device, iters=max(3, args.iters // 3), warmup=1
            )
        row["compile_s"] = max(0.0, row["first_call_s"] - row["ms_step"] / 1e3)
        row["peak_gb"] = peak_gb(device)
        if variant == "eager":
            ref["call"] = out
        else:
            row["drift_call"] = drift(out, ref["call"])
        rep = report_of(model)
        if rep is not None:
            row["report"] = rep.to_dict()
        if variant in ("eager", "fast") and not args.no_pipeline:
            pipes[variant] = model
        else:
            del model
        return row

    for v in args.wan_variants.split(","):
        rows.append(run_variant(v, lambda v=v: one(v)))
        save_partial(args, "wan", {**result, "rows": rows})

    if pipes and not args.no_pipeline:
        log("--- Wan whole pipeline")
        shared = build_wan_pipeline(
            size, device=device, dtype=torch.bfloat16, seed=1, transformer=torch.nn.Identity()
        )
        steps = args.wan_steps
        for variant, model in list(pipes.items()):
            try:
                pipe = WanPipeline(
                    tokenizer=shared.tokenizer,
                    text_encoder=shared.text_encoder,
                    vae=shared.vae,
                    scheduler=UniPCMultistepScheduler(**configs.WAN_SCHEDULER),
                    transformer=model,
                )
                pipe.set_progress_bar_config(disable=True)
                call = {
                    "prompt": PROMPT,
                    "negative_prompt": "blurry",
                    "height": hw[0],
                    "width": hw[1],
                    "num_frames": frames,
                    "guidance_scale": 5.0,
                }
                pipe(
                    **call,
                    num_inference_steps=2,
                    generator=torch.Generator(device=device).manual_seed(0),
                    output_type="latent",
                )
                clock = StepClock(device, steps)
                sync(device)
                t0 = time.perf_counter()
                pipe(
                    **call,
                    num_inference_steps=steps,
                    generator=torch.Generator(device=device).manual_seed(0),
                    callback_on_step_end=clock,
                    callback_on_step_end_tensor_inputs=["latents"],
                    output_type="np",
                )
                sync(device)
                row = next(r for r in rows if r.get("variant") == variant)
                row["pipeline_s"] = time.perf_counter() - t0
                row["pipeline_steps"] = steps
                row["ms_step_pipeline"] = clock.ms_per_step()
                row["peak_gb_pipeline"] = peak_gb(device)
                if variant == "eager":
                    ref["latents"] = clock.latents
                elif "latents" in ref:
                    row["drift"] = drift(clock.latents, ref["latents"])
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                rows.append({"variant": f"{variant}-pipeline", "error": str(exc)})
            pipes.pop(variant)
            del model
            free(device)
    for row in rows:
        if flops:
            add_rates(row, flops, result["peaks"])
    result["rows"] = rows
    return result


# ---------------------------------------------------------------------------- report


def fmt(v: Any, spec: str = ".1f") -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float | int):
        return format(v, spec)
    return str(v)


def flux_table(res: dict[str, Any]) -> list[str]:
    rows = {r["variant"]: r for r in res.get("rows", [])}
    lines = [
        "| variant | ms/step | ms/step in pipeline | x eager | x compile | TFLOP/s | % of bf16 floor | pipeline s | compile s | peak GB | rel L2 | cosine |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error'][:80]} |" + " |" * 10)
            continue
        # Step caching only shows inside the pipeline: turbo compares pipeline-effective times.
        key = "ms_step_pipeline" if name == "turbo" else "ms_step"
        ms = r.get(key)
        eager = rows.get("eager", {}).get(key)
        comp = rows.get("compile", {}).get(key)
        fast = rows.get("fast", {}).get(key)
        d = r.get("drift") or {}
        xf = f" ({fast / ms:.2f}x fast)" if name == "turbo" and fast and ms else ""
        lines.append(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                name,
                fmt(r.get("ms_step") if name != "turbo" else None),
                fmt(r.get("ms_step_pipeline")),
                fmt(eager / ms if eager and ms else None, ".2f") + xf,
                fmt(comp / ms if comp and ms else None, ".2f"),
                fmt(r.get("tflops"), ".0f"),
                fmt(r.get("pct_floor"), ".0f"),
                fmt(r.get("pipeline_s"), ".2f"),
                fmt(r.get("compile_s"), ".1f"),
                fmt(r.get("peak_gb"), ".1f"),
                fmt(d.get("rel_l2"), ".4f"),
                fmt(d.get("cosine"), ".5f"),
            )
        )
    return lines


def wan_table(res: dict[str, Any]) -> list[str]:
    rows = {r["variant"]: r for r in res.get("rows", [])}
    eager = rows.get("eager", {}).get("ms_step")
    lines = [
        "| variant | ms/call | x eager | TFLOP/s | % of bf16 floor | compile s | peak GB | call cosine | pipeline s (steps) | latents cosine |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error'][:80]} |" + " |" * 8)
            continue
        ms = r.get("ms_step")
        lines.append(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                name,
                fmt(ms),
                fmt(eager / ms if eager and ms else None, ".2f"),
                fmt(r.get("tflops"), ".0f"),
                fmt(r.get("pct_floor"), ".0f"),
                fmt(r.get("compile_s"), ".1f"),
                fmt(r.get("peak_gb"), ".1f"),
                fmt((r.get("drift_call") or {}).get("cosine"), ".5f"),
                f"{fmt(r.get('pipeline_s'), '.1f')} ({r.get('pipeline_steps', '-')})",
                fmt((r.get("drift") or {}).get("cosine"), ".5f"),
            )
        )
    return lines


def blocks_table(res: dict[str, Any]) -> list[str]:
    lines = [
        "| variant | ms (1 double + 1 single) | eager ms | compile s | rel L2 vs eager | optimize() arguments |",
        "|---|---|---|---|---|---|",
    ]
    for r in res.get("rows", []):
        if "error" in r:
            lines.append(f"| {r['variant']} | error: {r['error'][:80]} | | | | |")
            continue
        kw = json.dumps(r.get("kwargs", r.get("kernels", {})))
        lines.append(
            f"| {r['variant']} | {fmt(r['ms'], '.3f')} | {fmt(r['eager_ms'], '.3f')} | {fmt(r['compile_s'])} | {fmt(r['drift']['rel_l2'], '.4f')} | `{kw}` |"
        )
    return lines


def profile_table(res: dict[str, Any]) -> list[str]:
    classes = ["matmul", "attention", "fused elementwise (inductor)", "other"]
    lines = [
        "| mode | ms/step | " + " | ".join(classes) + " | gaps |",
        "|---" * (len(classes) + 3) + "|",
    ]
    for r in res.get("rows", []):
        if "error" in r:
            lines.append(f"| {r['variant']} | error: {r['error'][:80]} |")
            continue
        c = r["classes_ms"]
        lines.append(
            f"| {r['mode']} | {fmt(r['ms_step'])} | "
            + " | ".join(fmt(c.get(k, 0.0)) for k in classes)
            + f" | {fmt(r['gaps_ms'])} |"
        )
    return lines


def cache_table(res: dict[str, Any]) -> list[str]:
    runs = res.get("runs", {})
    lines = [
        "| process | first call s (compile) | ms/step | fx-graph cache hits | process wall s |",
        "|---|---|---|---|---|",
    ]
    for label, r in runs.items():
        hits = (r.get("inductor_counters") or {}).get("fxgraph_cache_hit")
        lines.append(
            f"| {label} | {fmt(r.get('first_call_s'))} | {fmt(r.get('ms_step'))} | {fmt(hits, 'd') if hits is not None else '-'} | {fmt(r.get('process_wall_s'))} |"
        )
    lora = next((r for r in runs.values() if r.get("swaps")), {})
    for s in lora.get("swaps", []):
        lines.append(
            f"| LoRA swap rank {s['rank']} | swap {s['swap_ms']:.1f} ms | next call {s['next_call_ms']:.1f} ms | changed rel {s['changed']:.3f} | |"
        )
    if "recompiles_after_swaps" in lora:
        lines.append(
            f"| LoRA recompiles after swaps | {lora['recompiles_after_swaps']} | graph vs plain cos {fmt((lora.get('graph_vs_plain') or {}).get('cosine'), '.6f')} | | |"
        )
    return lines


def print_tables(results: list[dict[str, Any]]) -> str:
    out: list[str] = []
    for res in results:
        env = res.get("env", {})
        head = f"{res.get('model') or res.get('part')} on {env.get('gpu', env.get('device'))}, torch {env.get('torch')}, diffusers {env.get('diffusers')}"
        out.append(f"\n{head}")
        if res.get("peaks"):
            out.append(
                "peaks: "
                + ", ".join(f"{k} {v:.0f}" for k, v in res["peaks"].items() if isinstance(v, float))
            )
        if res.get("part") == "blocks":
            out += blocks_table(res)
        elif res.get("part") == "profile":
            out += profile_table(res)
        elif res.get("part") == "cache":
            out += cache_table(res)
        elif str(res.get("model", "")).startswith("Wan"):
            out += wan_table(res)
        else:
            out += flux_table(res)
    text = "\n".join(out)
    print(text, flush=True)
    return text


def chart(results: list[dict[str, Any]], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    flux = next((r for r in results if str(r.get("model", "")).startswith("FLUX")), None)
    if not flux:
        return None
    names, values = [], []
    for r in flux.get("rows", []):
        ms = r.get("ms_step_pipeline") if r.get("variant") == "turbo" else r.get("ms_step")
        if ms:
            names.append(r["variant"])
            values.append(ms)
    if not values:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    palette = {"eager": "#999", "compile": "#777", "exact": "#4a7", "fast": "#27a", "turbo": "#a52"}
    ax.bar(names, values, color=[palette.get(n, "#555") for n in names])
    floor = next((r.get("floor_ms") for r in flux["rows"] if r.get("floor_ms")), None)
    if floor:
        ax.axhline(
            floor, color="k", linestyle="--", linewidth=1, label=f"bf16 floor {floor:.0f} ms"
        )
        ax.legend()
    ax.set_ylabel("ms per denoising step")
    ax.set_title(
        f"FLUX.1-dev {flux['resolution'][0]}x{flux['resolution'][1]} on {flux['env'].get('gpu', '?')}"
    )
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.0f}", ha="center", va="bottom")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--part", choices=["flux", "blocks", "cache", "probe", "wan", "profile"], default="flux"
    )
    parser.add_argument(
        "--merge", nargs="*", help="result JSON files to merge into engine.json and print"
    )
    parser.add_argument("--size", choices=["dev", "tiny"], default="dev")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--lora-rank", type=int, default=0)
    parser.add_argument("--probe-timeout", type=int, default=240)
    parser.add_argument("--probe-mode", default="fast")
    parser.add_argument("--block-variants", default="", help="JSON list of {name, mode, kwargs}")
    parser.add_argument(
        "--pick-from", default="", help="blocks result JSON: use its fastest kwargs per mode"
    )
    parser.add_argument(
        "--probes", default="", help="JSON list of compile probes (see DEFAULT_PROBES)"
    )
    parser.add_argument("--optimize-kwargs", default="", help="JSON of extra optimize() arguments")
    parser.add_argument("--no-baseline-compile", action="store_true")
    parser.add_argument("--no-peaks", action="store_true")
    parser.add_argument("--no-pipeline", action="store_true")
    parser.add_argument("--wan-variants", default="eager,exact,fast")
    parser.add_argument("--wan-steps", type=int, default=4)
    parser.add_argument("--out", default=os.environ.get("OUT"))
    args = parser.parse_args()
    if args.size == "tiny" and args.resolution == 1024:
        args.resolution = 64
    if args.part == "cache" and not args.lora_rank:
        args.lora_rank = 64 if args.size == "dev" else 8

    if args.merge is not None and args.merge:
        results = [json.loads(Path(p).read_text()) for p in args.merge]
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "engine.json").write_text(
            json.dumps({"results": results}, indent=2, default=str)
        )
        text = print_tables(results)
        (RESULTS / "engine.md").write_text(text + "\n")
        chart(results, RESULTS / "engine.png")
        return

    if args.part == "probe":
        probe_part(args)
        return
    part = {
        "flux": flux_part,
        "blocks": blocks_part,
        "cache": cache_part,
        "wan": wan_part,
        "profile": profile_part,
    }[args.part]
    result = part(args)
    result.setdefault("part", args.part)
    payload = json.dumps(result, indent=2, default=str)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"engine-{args.part}{'-tiny' if args.size == 'tiny' else ''}.json"
    (RESULTS / name).write_text(payload)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / name).write_text(payload)
    print_tables([result])


if __name__ == "__main__":
    main()
