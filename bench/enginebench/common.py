"""Shared pieces of the engine benchmark: timing, peaks, results."""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine.optimization import drift, optimize, report_of  # noqa: E402,F401
from engine.optimization.metrics import flux_step_flops, wan_step_flops  # noqa: E402,F401

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
        "cublaslt_workspace": os.environ.get("CUBLASLT_WORKSPACE_SIZE", "torch's default"),
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


SWITCH_SUFFIXES = ("-unaligned", "-unfused")


def without_switches(variant: str) -> str:
    """The variant's name without its A/B suffixes (`with_switches`)."""
    while suffix := next((s for s in SWITCH_SUFFIXES if variant.endswith(s)), None):
        variant = variant.removesuffix(suffix)
    return variant


def with_switches(variant: str, run):
    """run(variant) with its A/B suffixes stripped, each set while the variant is built and
    timed: `-unaligned` leaves cuDNN fp8 attention's keys unpadded (cudnn_fp8.KV_ALIGN = 1);
    `-unfused` sends cuDNN's e4m3 attention output through bf16 before the projections
    that read it (the processors' fuse_fp8_output = False)."""
    from engine.optimization import cudnn_fp8
    from engine.optimization.sdpa import _SDPAProcessor

    switches = dict(zip(SWITCH_SUFFIXES, [
        (cudnn_fp8, "KV_ALIGN", 1),
        (_SDPAProcessor, "fuse_fp8_output", False),
    ], strict=True))  # fmt: skip
    saved = []
    try:
        while suffix := next((s for s in switches if variant.endswith(s)), None):
            owner, name, value = switches[suffix]
            saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, value)
            variant = variant.removesuffix(suffix)
        return run(variant)
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)
