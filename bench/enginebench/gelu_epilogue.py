"""A bf16 feed-forward's up projection + tanh-GELU: two kernels against cuBLASLt's GELU epilogue.

`exact` runs each bf16 feed-forward's GELU inside its up projection's GEMM
(engine/optimization/gelu_epilogue.py). Per FLUX/Wan shape, median µs per call of: the
linear alone (the floor), linear then GELU (eager, and compiled), and the engine's
`linear_gelu_tanh` (eager, and compiled: inductor must leave `_addmm_activation` to aten for
the epilogue to survive). The error column is the relative L2 against fp32 math.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F

from bench.enginebench.common import env_info, log, time_calls

SHAPES = {
    "FLUX double, image (4,096 × 3,072 → 12,288)": (4096, 3072, 12288),
    "FLUX double, text (512 × 3,072 → 12,288)": (512, 3072, 12288),
    "FLUX single, MLP (4,608 × 3,072 → 12,288)": (4608, 3072, 12288),
    "Wan 2.1 1.3B 480p (32,760 × 1,536 → 8,960)": (32760, 1536, 8960),
}
TINY = {"tiny (64 × 32 → 96)": (64, 32, 96)}


def measure_shape(m: int, k: int, n: int, device: torch.device, iters: int) -> dict[str, Any]:
    """µs per call of each way to compute gelu_tanh(linear(x)) at one shape, and its error."""
    from engine.optimization.gelu_epilogue import linear_gelu_tanh

    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(m, k, device=device, generator=g).to(torch.bfloat16)
    lin = torch.nn.Linear(k, n, device=device, dtype=torch.bfloat16)

    def two_kernels(x):
        return F.gelu(lin(x), approximate="tanh")

    def epilogue(x):
        return linear_gelu_tanh(x, lin)

    compiled_two, compiled_epilogue = torch.compile(two_kernels), torch.compile(epilogue)
    calls = {
        "linear": lambda: lin(x),
        "linear + gelu": lambda: two_kernels(x),
        "linear + gelu, compiled": lambda: compiled_two(x),
        "epilogue": lambda: epilogue(x),
        "epilogue, compiled": lambda: compiled_epilogue(x),
    }
    row: dict[str, Any] = {}
    with torch.no_grad():
        for label, fn in calls.items():
            row[label] = 1000 * time_calls(fn, device, iters=iters, warmup=3)
        ref = F.gelu(F.linear(x.float(), lin.weight.float(), lin.bias.float()), approximate="tanh")
        for label, out in (("two kernels", two_kernels(x)), ("epilogue", epilogue(x))):
            row[f"rel L2, {label}"] = float((out.float() - ref).norm() / ref.norm())
    return row


def gelu_epilogue_part(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    result: dict[str, Any] = {"env": env_info(device), "part": "gelu-epilogue", "rows": []}
    shapes = TINY if args.size == "tiny" else SHAPES
    for name, (m, k, n) in shapes.items():
        row = {"shape": name, **measure_shape(m, k, n, device, args.iters)}
        log(name, row)
        result["rows"].append(row)
    return result


def gelu_epilogue_table(res: dict[str, Any]) -> list[str]:
    cols = ["linear", "linear + gelu", "linear + gelu, compiled", "epilogue", "epilogue, compiled"]
    out = [
        "| shape | "
        + " | ".join(f"{c} µs" for c in cols)
        + " | saved | rel L2 (two kernels / epilogue) |",
        "|---" * (len(cols) + 3) + "|",
    ]
    for r in res["rows"]:
        saved = r["linear + gelu, compiled"] - r["epilogue, compiled"]
        errs = f"{r['rel L2, two kernels']:.2e} / {r['rel L2, epilogue']:.2e}"
        out.append(
            f"| {r['shape']} | "
            + " | ".join(f"{r[c]:.1f}" for c in cols)
            + f" | {saved:.1f} | {errs} |"
        )
    return out
