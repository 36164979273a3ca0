"""Where one whole FLUX pipeline call's wall time goes, phase by phase.

    python bench/engine.py --part timeline [--timeline-mode fast --timeline-kwargs '{"attention": "fp8"}']
    python bench/engine.py --part timeline --size tiny --device cpu   # the script check

CUDA events are recorded at the edges of each phase of a real `pipeline(...)` call (prompt
encoding, every transformer call, VAE decode, conversion to PIL), so the phases and the
time between them add up to the call's wall clock. A torch.profiler pass over one more
call gives the GPU's busy time and its idle gaps: what the host leaves on the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from bench.enginebench.common import PROMPT, env_info, log, optimize, sync


class _Marks:
    """Named instants on the GPU's stream (CUDA events), or the host clock on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.events: list[tuple[str, Any]] = []

    def __call__(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
        else:
            event = time.perf_counter()
        self.events.append((name, event))

    def _ms(self, first, other) -> float:
        return first.elapsed_time(other) if self.cuda else (other - first) * 1e3

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            self(f"{name}>")
            out = fn(*args, **kwargs)
            self(f"{name}<")
            return out

        return timed

    def phases(self) -> dict[str, Any]:
        """ms per phase and between phases, from the first mark to the last."""
        t = {i: self._ms(self.events[0][1], e) for i, (_, e) in enumerate(self.events)}
        names = [n for n, _ in self.events]
        out: dict[str, Any] = {"total_ms": t[len(names) - 1], "steps_ms": []}
        between = 0.0
        for i in range(len(names) - 1):
            span = t[i + 1] - t[i]
            if names[i].endswith(">") and names[i + 1] == names[i][:-1] + "<":
                key = names[i][:-1]
                if key == "step":
                    out["steps_ms"].append(span)
                else:
                    out[f"{key}_ms"] = span
            else:
                between += span
        out["between_phases_ms"] = between
        return out


def _gpu_idle(prof) -> dict[str, float]:
    kernels = sorted(
        (e.time_range.start, e.time_range.end)
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA
    )
    merged: list[list[float]] = []
    for start, end in kernels:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    busy = sum(e - s for s, e in merged) / 1e3
    span = (merged[-1][1] - merged[0][0]) / 1e3 if merged else 0.0
    gaps = [(merged[i + 1][0] - merged[i][1]) / 1e3 for i in range(len(merged) - 1)]
    return {"gpu_busy_ms": busy, "gpu_span_ms": span, "largest_gap_ms": max(gaps, default=0.0)}


def timeline_part(args: argparse.Namespace) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    from engine.pipelines import build_flux_pipeline

    device = torch.device(args.device)
    pipe = build_flux_pipeline(args.size, device=device, dtype=torch.bfloat16, seed=0)
    pipe.set_progress_bar_config(disable=True)
    kwargs = json.loads(args.timeline_kwargs) if args.timeline_kwargs else {}
    if device.type == "cpu":  # the script check on tiny configs: no GPU-only paths
        kwargs = {**kwargs, "compile_backend": "aot_eager", "cuda_graphs": False}
        kwargs.pop("attention", None)
    if args.timeline_mode != "eager":
        optimize(pipe, args.timeline_mode, cache_dir=args.cache_dir, **kwargs)
    res = args.resolution
    call = {"prompt": PROMPT, "height": res, "width": res, "guidance_scale": 3.5}

    def run():
        return pipe(
            **call,
            num_inference_steps=args.steps,
            generator=torch.Generator(device=device).manual_seed(0),
        )

    with torch.no_grad():
        for _ in range(2):
            run()
        sync(device)
        marks = _Marks(device)
        hooks = [
            pipe.transformer.register_forward_pre_hook(lambda m, a: marks("step>")),
            pipe.transformer.register_forward_hook(lambda m, a, o: marks("step<")),
        ]
        pipe.encode_prompt = marks.wrap("encode_prompt", pipe.encode_prompt)
        pipe.vae.decode = marks.wrap("vae_decode", pipe.vae.decode)
        pipe.image_processor.postprocess = marks.wrap("to_pil", pipe.image_processor.postprocess)
        runs = []
        for _ in range(args.pipeline_runs):
            marks.events.clear()
            marks("start")
            t0 = time.perf_counter()
            run()
            marks("end")
            sync(device)
            row = marks.phases()
            row["wall_s"] = time.perf_counter() - t0
            runs.append(row)
        for hook in hooks:
            hook.remove()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if marks.cuda else [])
        with profile(activities=activities) as prof:
            run()
            sync(device)
    best = min(runs, key=lambda r: r["wall_s"])
    steps = best["steps_ms"]
    result = {
        "part": "timeline",
        "env": env_info(device),
        "mode": args.timeline_mode,
        "optimize_kwargs": kwargs,
        "wall_s": [r["wall_s"] for r in runs],
        "phases_ms": {k: v for k, v in best.items() if k not in ("steps_ms", "wall_s")},
        "step_ms": {"first": steps[0], "median": statistics.median(steps), "n": len(steps)},
        "steps_total_ms": sum(steps),
        **_gpu_idle(prof),
    }
    log("timeline", result)
    return result


def timeline_table(result: dict[str, Any]) -> str:
    p, s = result["phases_ms"], result["step_ms"]
    return "\n".join(
        [
            f"FLUX pipeline timeline, {result['mode']} {result['optimize_kwargs'] or ''} on "
            f"{result['env'].get('gpu') or result['env'].get('device')}: wall {min(result['wall_s']):.3f} s",
            "| encode prompt | steps (n × median) | VAE decode | to PIL | between | GPU busy / span |",
            "|---|---|---|---|---|---|",
            f"| {p.get('encode_prompt_ms', 0):.1f} | {result['steps_total_ms']:.1f} ({s['n']} × "
            f"{s['median']:.1f}, first {s['first']:.1f}) | {p.get('vae_decode_ms', 0):.1f} | "
            f"{p.get('to_pil_ms', 0):.1f} | {p['between_phases_ms']:.1f} | "
            f"{result['gpu_busy_ms']:.0f} / {result['gpu_span_ms']:.0f} |",
        ]
    )
