"""Compile time cold and from the disk cache, and LoRA hot-swap."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench.enginebench.common import (
    drift,
    env_info,
    log,
    optimize,
    report_of,
    save_partial,
    sync,
    time_calls,
)

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
            # The entry point, not this file: run as a script, this folder would go first on
            # sys.path and our profile.py would shadow the standard library's.
            str(Path(__file__).resolve().parents[1] / "engine.py"),
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
