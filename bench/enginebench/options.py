"""Inductor options and compiled-region sizes for `exact` (or another mode), side by side.

FLUX.1-dev's transformer alone (random weights, the pipeline's input shapes, no text
encoders or VAE): eager, diffusers + `torch.compile` (whole model, fullgraph) and each
`exact` variant, timed per call (median of CUDA events) and run through the same 28-step
Euler flow loop from the same noise, so that the final latents can be compared with
eager's. Compile seconds here are the first call's, in a process that has compiled other
variants before (cache directory fresh per variant); cold and cached compile times of a
configuration worth keeping come from fresh processes (`--part cache`).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.enginebench.common import (
    drift,
    env_info,
    flux_step_flops,
    free,
    log,
    optimize,
    peak_gb,
    report_of,
    run_variant,
    save_partial,
    sync,
    time_calls,
)

SINGLE, DOUBLE = "FluxSingleTransformerBlock", "FluxTransformerBlock"

DEFAULT_VARIANTS: list[dict[str, Any]] = [
    {"name": "exact", "kwargs": {}},
    {"name": "coordinate_descent_tuning", "options": {"coordinate_descent_tuning": True}},
    {"name": "max_autotune_pointwise", "options": {"max_autotune_pointwise": True}},
    {"name": "aggressive_fusion", "options": {"aggressive_fusion": True}},
    {"name": "epilogue_fusion off", "options": {"epilogue_fusion": False}},
    {"name": "combo_kernels", "options": {"combo_kernels": True}},
    {"name": "padding off", "options": {"shape_padding": False, "comprehensive_padding": False}},
    {
        "name": "inductor cudagraphs",
        "options": {"triton.cudagraphs": True},
        "kwargs": {"cuda_graphs": False},
    },
    {"name": "single x2", "kwargs": {"compile_group": {SINGLE: 2}}},
    {"name": "exact (again)", "kwargs": {}},
    {"name": "single x38", "kwargs": {"compile_group": {SINGLE: 38}}, "profile": True},
    {"name": "single x38 double x19", "kwargs": {"compile_group": {SINGLE: 38, DOUBLE: 19}}},
]


def _sigmas(steps: int) -> list[float]:
    return [1.0 - i / steps for i in range(steps + 1)]


@torch.no_grad()
def denoise(model: torch.nn.Module, inputs: dict[str, Any], steps: int) -> torch.Tensor:
    """The pipeline's flow-matching Euler loop on the transformer alone, fixed noise."""
    g = torch.Generator(device="cpu").manual_seed(7)
    x = torch.randn(inputs["hidden_states"].shape, generator=g).to(inputs["hidden_states"])
    sig = _sigmas(steps)
    kw = dict(inputs)
    for i in range(steps):
        kw["hidden_states"] = x
        kw["timestep"] = torch.full_like(inputs["timestep"], sig[i])
        v = model(**kw)[0]
        x = (x.float() + (sig[i + 1] - sig[i]) * v.float()).to(x.dtype)
    return x.float()


def _cat_kernels(model: torch.nn.Module, inputs: dict[str, Any]) -> dict[str, float]:
    """GPU ms per call of inductor kernels that write a concatenation, graphs off."""
    from torch.profiler import ProfilerActivity, profile

    hooks = (report_of(model).hooks.get("cuda_graphs") or []) if report_of(model) else []
    for h in hooks:
        h.enabled = False
    with torch.no_grad():
        model(**inputs)
        sync(inputs["hidden_states"].device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(**inputs)
            sync(inputs["hidden_states"].device)
    for h in hooks:
        h.enabled = True
    out = {"all_inductor": 0.0, "cat": 0.0}
    for evt in prof.key_averages():
        t = getattr(evt, "device_time_total", 0) or 0
        if evt.device_type != torch.autograd.DeviceType.CUDA or t <= 0:
            continue
        if "triton" in evt.key.lower():
            out["all_inductor"] += t / 1e3
            if "cat" in evt.key.lower():
                out["cat"] += t / 1e3
    return out


def _pipelined_ms(model, inputs, device: torch.device, n: int) -> float:
    """Ms per call of `n` calls queued back to back (the host may run ahead, as in a pipeline)."""
    if device.type != "cuda":
        return time_calls(lambda: model(**inputs), device, iters=n)
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(n):
        model(**inputs)
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / n


def options_part(args: argparse.Namespace) -> dict[str, Any]:
    """Each `exact` variant against eager and diffusers + compile, one process."""
    from engine.pipelines import build_flux_transformer, flux_transformer_inputs

    device = torch.device(args.device)
    variants = json.loads(args.option_variants) if args.option_variants else DEFAULT_VARIANTS
    wanted = set(args.only.split(",")) if args.only else None
    root = Path(args.cache_dir or tempfile.mkdtemp(prefix="mg-options-"))
    res = args.resolution
    result: dict[str, Any] = {"env": env_info(device), "part": "options", "steps": args.steps}
    base = build_flux_transformer(args.size, device=device, dtype=torch.bfloat16, seed=0)
    inputs = flux_transformer_inputs(base, height=res, width=res)
    flops = flux_step_flops(
        base.config,
        image_tokens=inputs["hidden_states"].shape[1],
        text_tokens=inputs["encoder_hidden_states"].shape[1],
    )
    result["flops_per_step"] = flops
    rows: list[dict[str, Any]] = []
    ref: dict[str, torch.Tensor] = {}

    def measure(model: torch.nn.Module, t_setup: float, profile_cats: bool) -> dict[str, Any]:
        row: dict[str, Any] = {"setup_s": t_setup}
        with torch.no_grad():
            t0 = time.perf_counter()
            model(**inputs)
            sync(device)
            row["first_call_s"] = time.perf_counter() - t0
            row["ms_step"] = time_calls(lambda: model(**inputs), device, iters=args.iters)
            row["ms_step_pipelined"] = _pipelined_ms(model, inputs, device, args.iters)
        row["compile_s"] = max(0.0, row["first_call_s"] - row["ms_step"] / 1e3)
        latents = denoise(model, inputs, args.steps)
        if "eager" in ref:
            row["drift"] = drift(latents, ref["eager"])
        else:
            ref["eager"] = latents
        if profile_cats and device.type == "cuda":
            row["inductor_kernels_ms"] = _cat_kernels(model, inputs)
        row["peak_gb"] = peak_gb(device)
        rep = report_of(model)
        if rep is not None:
            row["report"] = rep.to_dict()
        return row

    def keep(row: dict[str, Any]) -> None:
        rows.append(row)
        if "ms_step" in row and "eager" in rows[0].get("variant", ""):
            row["x_eager"] = rows[0]["ms_step"] / row["ms_step"]
        save_partial(args, "options", {**result, "rows": rows})

    def eager():
        free(device)
        return measure(base, 0.0, False)

    keep(run_variant("eager", eager))

    def baseline():
        torch._dynamo.reset()
        free(device)
        model = copy.deepcopy(base)
        model.compile(fullgraph=True)
        row = measure(model, 0.0, False)
        del model
        return row

    if not args.no_baseline_compile:
        keep(run_variant("diffusers + torch.compile", baseline))

    for i, spec in enumerate(variants):
        name = spec["name"]
        if wanted is not None and name not in wanted:
            continue

        def one(spec=spec, i=i):
            torch._dynamo.reset()
            free(device)
            model = copy.deepcopy(base)
            kw = dict(spec.get("kwargs", {}))
            if spec.get("options"):
                kw["compile_options"] = spec["options"]
            t0 = time.perf_counter()
            optimize(model, spec.get("mode", "exact"), cache_dir=root / f"v{i}", **kw)
            row = measure(model, time.perf_counter() - t0, spec.get("profile", i == 0))
            row["spec"] = spec
            del model
            return row

        keep(run_variant(name, one))
    for row in rows:
        if row.get("ms_step"):
            row["tflops"] = flops["total"] / row["ms_step"] / 1e9
    result["rows"] = rows
    compiled = next((r for r in rows if r["variant"] == "diffusers + torch.compile"), None)
    for row in rows:
        if compiled and compiled.get("ms_step") and row.get("ms_step"):
            row["x_compile"] = compiled["ms_step"] / row["ms_step"]
        log(
            f"{row['variant']:<28} ms {row.get('ms_step', float('nan')):7.2f}"
            f"  xcompile {row.get('x_compile', float('nan')):5.3f}"
            f"  queued {row.get('ms_step_pipelined', float('nan')):7.2f}"
            f"  compile_s {row.get('compile_s', float('nan')):6.1f}"
            f"  cos {row.get('drift', {}).get('cosine', float('nan')):.6f}"
            f"  {row.get('error', '')}"
        )
    return result
