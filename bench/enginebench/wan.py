"""Wan 2.1 text-to-video 1.3B."""

from __future__ import annotations

import argparse
import json
import time
import traceback
from typing import Any

import torch

from bench.enginebench.common import (
    PROMPT,
    StepClock,
    add_rates,
    drift,
    env_info,
    free,
    log,
    matmul_peaks,
    optimize,
    peak_gb,
    report_of,
    run_variant,
    save_partial,
    sync,
    time_calls,
    wan_step_flops,
    with_switches,
)

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
        elif "-fp8attn" in variant:
            # mode-fp8attn (the default fp8 attention) or mode-fp8attn-<backend>; a
            # `-separate` suffix turns the fused q/k/v producer off.
            mode, _, backend = variant.partition("-fp8attn")
            kw = {**extra, "attention": "fp8"}
            if backend.endswith("-separate"):
                kw["attention_fp8_producer"] = False
                backend = backend.removesuffix("-separate")
            if backend:
                kw["attention_fp8_backend"] = backend.removeprefix("-")
            optimize(model, mode, cache_dir=args.cache_dir, **kw)
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
        if variant in ("eager", "fast", "fast-fp8attn") and not args.no_pipeline:
            pipes[variant] = model
        else:
            del model
        return row

    for v in args.wan_variants.split(","):
        rows.append(run_variant(v, lambda v=v: with_switches(v, one)))
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
