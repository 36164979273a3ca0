"""Power draw and SM clock while a workload loops: is a step compute-, memory- or power-bound?

An H100/H200 SXM caps board power at 700 W. When a FLUX step holds the GPU at that cap, the
driver lowers the SM clock and the step's time follows its energy: a memory-bound kernel
made faster saves less time than it did in isolation, because the clock it frees is taken
by the fp8 GEMMs around it. `nvidia-smi` is sampled every 50 ms while each workload loops
for a few seconds: an 8192³ fp8 GEMM (the matmul peak's own conditions), a 512 MiB copy
(the bandwidth ceiling's) and FLUX.1-dev's transformer per mode, CUDA graphs on.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import time
from typing import Any

import torch

from bench.enginebench.common import env_info, free, optimize, run_variant, save_partial, time_calls

POWER_CAP_REASON = 0x4
"""nvidia-smi's clocks_event_reasons bit for the software power cap."""


def sample(fn, seconds: float) -> dict[str, Any]:
    """Median board power (W) and SM clock (MHz) while fn() loops for `seconds`."""
    query = "power.draw,clocks.sm,clocks_throttle_reasons.active,power.limit"
    proc = subprocess.Popen(
        ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits", "-lms", "50"],
        stdout=subprocess.PIPE,
        text=True,
    )
    start, calls = time.time(), 0
    while time.time() - start < seconds:
        fn()
        calls += 1
    torch.cuda.synchronize()
    proc.terminate()
    # The first and last samples straddle the loop's start and end.
    rows = [line.split(", ") for line in proc.communicate()[0].strip().splitlines()[4:-2]]
    if not rows:
        return {"calls": calls}
    reasons = [int(r[2], 16) for r in rows]
    return {
        "power_w": statistics.median(float(r[0]) for r in rows),
        "sm_mhz": statistics.median(float(r[1]) for r in rows),
        "power_limit_w": float(rows[0][3]),
        "power_capped_share": sum(bool(x & POWER_CAP_REASON) for x in reasons) / len(reasons),
        "calls": calls,
    }


def power_part(args: argparse.Namespace) -> dict[str, Any]:
    from engine.pipelines import build_flux_transformer, flux_transformer_inputs

    device = torch.device(args.device)
    result: dict[str, Any] = {"env": env_info(device), "part": "power", "rows": []}
    if device.type != "cuda" or shutil.which("nvidia-smi") is None:
        result["skipped"] = "needs a CUDA GPU and nvidia-smi"
        return result
    seconds = 6.0

    def gemm():
        n = 8192
        a = torch.randn(n, n, device=device).to(torch.float8_e4m3fn)
        b = torch.randn(n, n, device=device).to(torch.float8_e4m3fn)
        sa, sb = torch.ones(n, 1, device=device), torch.ones(1, n, device=device)

        def run():
            return torch._scaled_mm(
                a, b.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16, use_fast_accum=True
            )

        ms = time_calls(run, device, iters=20)
        return {
            "workload": "fp8 GEMM 8192³",
            "ms": ms,
            "tflops": 2 * n**3 / ms / 1e9,
            **sample(run, seconds),
        }

    def copy():
        src = torch.randn(1 << 28, device=device, dtype=torch.bfloat16)
        dst = torch.empty_like(src)
        ms = time_calls(lambda: dst.copy_(src), device, iters=20)
        return {
            "workload": "copy 512 MiB",
            "ms": ms,
            "gbps": 2 * src.nbytes / ms / 1e6,
            **sample(lambda: dst.copy_(src), seconds),
        }

    result["rows"].append(run_variant("fp8 GEMM", gemm))
    result["rows"].append(run_variant("copy", copy))
    for mode in getattr(args, "profile_modes", "eager,fast,fast-fp8attn").split(","):

        def flux(mode=mode):
            torch._dynamo.reset()
            free(device)
            model = build_flux_transformer(args.size, device=device, dtype=torch.bfloat16, seed=0)
            inputs = flux_transformer_inputs(model, height=args.resolution, width=args.resolution)
            if mode != "eager":
                base, fp8, _ = mode.partition("-fp8attn")
                kw: dict[str, Any] = {"attention": "fp8"} if fp8 else {}
                optimize(model, base, cache_dir=args.cache_dir, **kw)
            with torch.no_grad():
                model(**inputs)
                ms = time_calls(lambda: model(**inputs), device, iters=10)
                row = {"workload": f"FLUX {mode}", "ms": ms, **sample(lambda: model(**inputs), 8.0)}
            return row

        result["rows"].append(run_variant(f"FLUX {mode}", flux))
        save_partial(args, "power", result)
    return result


def power_table(res: dict[str, Any]) -> list[str]:
    lines = [
        "| workload | ms per call | board W (limit) | SM MHz | samples at the power cap |",
        "|---|---|---|---|---|",
    ]
    if res.get("skipped"):
        return lines + [f"| skipped: {res['skipped']} | | | | |"]
    for r in res.get("rows", []):
        if "error" in r or "power_w" not in r:
            lines.append(f"| {r.get('variant')} | {r.get('error', 'no samples')[:80]} | | | |")
            continue
        lines.append(
            f"| {r['workload']} | {r['ms']:.2f} | {r['power_w']:.0f} ({r['power_limit_w']:.0f}) "
            f"| {r['sm_mhz']:.0f} | {100 * r['power_capped_share']:.0f} % |"
        )
    return lines
