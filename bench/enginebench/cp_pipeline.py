"""The whole FLUX pipeline (text encoders, 28 steps, VAE, PIL) on one GPU and split over
the ranks: `torchrun --nproc_per_node 2 bench/engine.py --part cp --cp-pipeline fast-fp8attn`.

Every rank runs the same pipeline call with the same seed; context parallel splits only
the transformer, so each rank encodes the prompt and decodes the image itself (the
encoders and VAE are a few per cent of the time). Seconds are rank 0's wall clock per
image, median of `--pipeline-runs`, after a warm-up call; "in pipeline" ms/step is GPU
time per denoising step inside those calls.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.distributed as dist

from bench.enginebench.common import PROMPT, StepClock, drift, free, log, sync


def pipeline_rows(name: str, args, device: torch.device, world: int) -> list[dict]:
    """One-GPU and split rows for the pipeline in variant `name` (cp.CP_VARIANTS)."""
    rows: list[dict[str, Any]] = []
    latents: dict[int, torch.Tensor] = {}
    for degree in (None, world):
        row = _pipeline(name, degree, args, device)
        latents[row["gpus"]] = row.pop("_latents")
        if degree and 1 in latents:
            row["drift_vs_1gpu"] = drift(latents[world], latents[1])
            row["speedup"] = rows[0]["pipeline_s"] / row["pipeline_s"]
        if dist.get_rank() == 0:
            log(f"pipeline {name} x{row['gpus']}", row)
        rows.append(row)
    return rows


def _pipeline(name, degree, args, device) -> dict[str, Any]:
    from bench.enginebench.cp import prepare
    from engine.pipelines import build_flux_pipeline

    torch._dynamo.reset()
    free(device)
    pipe = build_flux_pipeline(args.size, device=device, dtype=torch.bfloat16, seed=0)
    pipe.set_progress_bar_config(disable=True)
    t0 = time.perf_counter()
    prepare(pipe, name, degree, args)
    res, steps = args.resolution, args.steps
    call = {"prompt": PROMPT, "height": res, "width": res, "guidance_scale": 3.5}

    def run(n: int, clock=None):
        return pipe(
            **call,
            num_inference_steps=n,
            generator=torch.Generator(device=device).manual_seed(0),
            callback_on_step_end=clock,
            callback_on_step_end_tensor_inputs=["latents"] if clock else None,
        )

    with torch.no_grad():
        run(2)
        sync(device)
        first_s = time.perf_counter() - t0
        times, per_step, clock = [], [], None
        for _ in range(args.pipeline_runs):
            clock = StepClock(device, steps)
            dist.barrier()
            sync(device)
            t0 = time.perf_counter()
            run(steps, clock)
            sync(device)
            times.append(time.perf_counter() - t0)
            per_step.append(clock.ms_per_step())
    return {
        "variant": name,
        "gpus": degree or 1,
        "pipeline_s": statistics.median(times),
        "pipeline_runs_s": times,
        "ms_step_pipeline": statistics.median(per_step),
        "setup_and_warmup_s": first_s,
        "_latents": clock.latents.float().cpu(),
    }


def pipeline_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "whole pipeline (text encoders, steps, VAE, PIL), seconds per image",
        "| variant | GPUs | pipeline s | speed-up | ms/step in pipeline | cosine vs 1 GPU |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r.get('variant')} | {r.get('gpus')} | error: {r['error'][:80]} |||")
            continue
        speedup = f"{r['speedup']:.2f}×" if "speedup" in r else "–"
        cos = f"{r['drift_vs_1gpu']['cosine']:.5f}" if "drift_vs_1gpu" in r else "–"
        lines.append(
            f"| {r['variant']} | {r['gpus']} | {r['pipeline_s']:.3f} | {speedup} | "
            f"{r['ms_step_pipeline'] or 0:.1f} | {cos} |"
        )
    return lines
