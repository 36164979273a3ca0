"""FLUX.1-dev: eager, diffusers+compile and each optimize() mode."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from bench.enginebench.common import (
    PROMPT,
    StepClock,
    add_rates,
    capture_call_kwargs,
    drift,
    env_info,
    flux_step_flops,
    free,
    log,
    matmul_peaks,
    optimize,
    peak_gb,
    pick_block_kwargs,
    report_of,
    run_variant,
    save_partial,
    sync,
    time_calls,
    with_switches,
    without_switches,
)

# ---------------------------------------------------------------------------- FLUX


# fast with fp8 attention: the default ("auto": cuDNN's fp8 attention on Hopper, its
# operands from the fused norm/RoPE/quantize producer), cuDNN without the producer, our
# Triton kernel with its own producer, and without it.
FP8_ATTENTION_VARIANTS: dict[str, dict[str, Any]] = {
    "fast-fp8attn": {},
    "fast-fp8attn-cudnn-separate": {"attention_fp8_producer": False},
    "fast-fp8attn-triton": {"attention_fp8_backend": "triton"},
    "fast-fp8attn-separate": {"attention_fp8_backend": "triton", "attention_fp8_producer": False},
}


def outside_denoiser_ms(pipe, call: dict[str, Any], device: torch.device) -> dict[str, float]:
    """Ms per image of the work around the transformer: prompt encoding, VAE decode, to PIL."""
    vae = pipe.vae
    z = torch.randn(
        1, vae.config.latent_channels, call["height"] // pipe.vae_scale_factor,
        call["width"] // pipe.vae_scale_factor, device=device, dtype=vae.dtype,
    )
    with torch.no_grad():
        encode = time_calls(
            lambda: pipe.encode_prompt(call["prompt"], None, device=device), device, iters=5
        )
        decode = time_calls(lambda: vae.decode(z, return_dict=False)[0], device, iters=5)
        image = vae.decode(z, return_dict=False)[0]
        to_pil = time_calls(
            lambda: pipe.image_processor.postprocess(image, output_type="pil"), device, iters=3
        )
    return {"encode_prompt": encode, "vae_decode": decode, "postprocess": to_pil}


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
    schedule: list[torch.Tensor] = []
    flops = None

    def measure(variant: str, prepare) -> dict[str, Any]:
        nonlocal flops
        # The text encoders and VAE are shared between variants: what an earlier variant
        # compiled of them (optimize's compile_components) must not speed up this one.
        for component in components.values():
            for module in component.modules() if isinstance(component, torch.nn.Module) else ():
                module._compiled_call_impl = None
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
            # The steady step reads its modulations from the table of its generation.
            schedule.append(pipe.scheduler.timesteps.clone())
            tokens = inputs["hidden_states"].shape[1]
            flops = flux_step_flops(
                transformer.config,
                image_tokens=tokens,
                text_tokens=inputs["encoder_hidden_states"].shape[1],
            )
            result["flops_per_step"] = flops
        tr = pipe.transformer
        report = report_of(pipe)
        for hook in report.hooks.get("modulation_table", []) if report else ():
            hook.new_schedule(schedule[0])
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
        row["outside_denoiser_ms"] = outside_denoiser_ms(pipe, call, device)
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

    wanted = set(args.flux_variants.split(","))
    keep(run_variant("eager", lambda: measure("eager", lambda p: None)))
    cache = args.cache_dir
    extra = json.loads(args.optimize_kwargs) if args.optimize_kwargs else {}
    picks = pick_block_kwargs(args.pick_from) if args.pick_from else {}
    result["picked_kwargs"] = picks
    kw_exact = {**extra, **picks.get("exact", {})}
    kw_fast = {**extra, **picks.get("fast", {})}
    if "exact" in wanted:
        keep(
            run_variant(
                "exact",
                lambda: measure(
                    "exact", lambda p: optimize(p, "exact", cache_dir=cache, **kw_exact)
                ),
            )
        )

    fast_holder: dict[str, Any] = {}

    def fast_run():
        row = measure("fast", lambda p: optimize(p, "fast", cache_dir=cache, **kw_fast))
        fast_holder["pipe"] = row["_pipe"]
        return row

    if "fast" in wanted:
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

    if "pipe" in fast_holder and "turbo" in wanted:
        keep(run_variant("turbo", turbo_run))
    fast_holder.clear()
    def fp8_attention_run(variant: str, base: str):
        kw = {**kw_fast, "attention": "fp8", **FP8_ATTENTION_VARIANTS[base]}
        return measure(variant, lambda p: optimize(p, "fast", cache_dir=cache, **kw))

    # In the order asked; A/B suffixes (common.with_switches) on any fp8 attention variant.
    for variant in args.flux_variants.split(","):
        if without_switches(variant) in FP8_ATTENTION_VARIANTS:
            run = lambda v=variant: with_switches(v, lambda base: fp8_attention_run(v, base))  # noqa: E731
            keep(run_variant(variant, run))
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
