"""Where a step's time goes, by kernel class."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from bench.enginebench.common import (
    env_info,
    free,
    optimize,
    run_variant,
    save_partial,
    sync,
    time_calls,
)

# ---------------------------------------------------------------------------- where the time goes


def _kernel_class(name: str) -> str:
    low = name.lower()
    if "nccl" in low:
        return "communication (NCCL)"
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


def kernel_breakdown(prof, *, calls: int, ms_step: float) -> dict[str, Any]:
    """GPU ms per call by kernel class, the top kernels, and the idle time, from a profile of `calls` calls.

    `gaps_ms` is the step timed unprofiled less the profiled kernels: the clock under the
    power cap moves it by milliseconds either way. `idle_ms` is the GPU's idle time itself."""
    classes: dict[str, float] = {}
    top: dict[str, float] = {}
    counts: dict[str, int] = {}
    for evt in prof.key_averages():
        t = getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0) or 0
        if t <= 0 or evt.device_type != torch.autograd.DeviceType.CUDA:
            continue
        ms_evt = t / 1e3 / calls
        classes[_kernel_class(evt.key)] = classes.get(_kernel_class(evt.key), 0.0) + ms_evt
        top[evt.key[:160]] = top.get(evt.key[:160], 0.0) + ms_evt
        counts[evt.key[:160]] = counts.get(evt.key[:160], 0) + evt.count // calls
    busy = sum(classes.values())
    ranked = sorted(top, key=lambda k: -top[k])[:40]
    return {
        "kernel_ms": busy,
        "gaps_ms": ms_step - busy,
        "classes_ms": classes,
        "top_kernels_ms": {k: top[k] for k in ranked},
        "top_kernel_calls": {k: counts[k] for k in ranked},
        **idle_between_kernels(prof, calls=calls),
    }


def idle_between_kernels(prof, *, calls: int) -> dict[str, Any]:
    """The GPU's idle time between consecutive kernels, by the pair of kernels around it.

    Gaps longer than a millisecond are taken to be between calls and left out."""
    spans = sorted(
        (e.time_range.start, e.time_range.end, e.name[:90])
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start
    )
    pairs: dict[str, float] = {}
    pair_counts: dict[str, int] = {}
    idle, overlapped = 0.0, 0
    end = None
    prev = ""
    for start, stop, name in spans:
        if end is not None:
            gap = start - end
            if gap < 0:
                overlapped += 1
            elif gap < 1000:
                key = f"{prev} -> {name}"
                pairs[key] = pairs.get(key, 0.0) + gap / 1e3 / calls
                pair_counts[key] = pair_counts.get(key, 0) + 1
                idle += gap / 1e3 / calls
        if end is None or stop >= end:
            end, prev = stop, name  # the gap after is the last kernel to finish's
    ranked = sorted(pairs, key=lambda k: -pairs[k])[:25]
    return {
        "idle_ms": idle,
        "overlapping_kernels": overlapped // max(calls, 1),
        "idle_pairs_ms": {k: pairs[k] for k in ranked},
        "idle_pair_calls": {k: pair_counts[k] // calls for k in ranked},
    }


def profile_part(args: argparse.Namespace) -> dict[str, Any]:
    """GPU time of one FLUX (or Wan) transformer call by kernel class, per mode (torch.profiler).

    With `--profile-graphs` the calls replay their CUDA graphs after 30 warm calls, so the
    kernels are timed as a served step runs them: back to back, at the clock the board's
    power cap allows (torch.profiler records a graph replay's kernels one by one)."""
    from torch.profiler import ProfilerActivity, profile

    from engine.pipelines import (
        build_flux_transformer,
        build_wan_transformer,
        flux_transformer_inputs,
        wan_transformer_inputs,
    )

    def build():
        if getattr(args, "profile_model", "flux") == "wan":
            size = "1.3b" if args.size == "dev" else "tiny"
            (h, w), frames = ((480, 832), 81) if args.size == "dev" else ((32, 32), 5)
            model = build_wan_transformer(size, device=device, dtype=torch.bfloat16, seed=0)
            return model, wan_transformer_inputs(model, height=h, width=w, num_frames=frames)
        model = build_flux_transformer(args.size, device=device, dtype=torch.bfloat16, seed=0)
        return model, flux_transformer_inputs(model, height=args.resolution, width=args.resolution)

    device = torch.device(args.device)
    graphs = bool(getattr(args, "profile_graphs", False))
    result: dict[str, Any] = {
        "env": env_info(device),
        "part": "profile",
        "cuda_graphs": graphs,
        "rows": [],
    }
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for mode in getattr(args, "profile_modes", "eager,exact,fast").split(","):

        def one(mode=mode):
            torch._dynamo.reset()
            free(device)
            model, inp = build()
            if mode != "eager":
                # mode, or mode-fp8attn[-backend]: with fp8 attention.
                base, fp8, backend = mode.partition("-fp8attn")
                kw: dict[str, Any] = {"attention": "fp8"} if fp8 else {}
                if backend:
                    kw["attention_fp8_backend"] = backend.removeprefix("-")
                optimize(model, base, cuda_graphs=graphs, cache_dir=args.cache_dir, **kw)
            with torch.no_grad():
                for _ in range(30 if graphs else 3):
                    model(**inp)
                sync(device)
                ms = time_calls(lambda: model(**inp), device, iters=5, warmup=0)
                with profile(activities=activities) as prof:
                    for _ in range(2):
                        model(**inp)
                    sync(device)
            breakdown = kernel_breakdown(prof, calls=2, ms_step=ms)
            return {"mode": mode, "ms_step": ms, "cuda_graphs": graphs, **breakdown}

        result["rows"].append(run_variant(f"profile {mode}", one))
        save_partial(args, "profile", result)
    return result
