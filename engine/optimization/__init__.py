"""The engine's optimizer: `optimize(pipeline, mode="exact" | "fast" | "turbo")`.

This package imports torch and diffusers; `engine` itself stays light and exposes
`engine.optimize` lazily.
"""

from engine.optimization.api import MODES, OptimizationReport, optimize, report_of, warmup
from engine.optimization.fp8 import FP8Linear, quantize_linears
from engine.optimization.lora import add_lora_slot, compiled_frame_count, hotswap_lora
from engine.optimization.metrics import drift
from engine.optimization.turbo import TurboConfig, compute_plan

__all__ = [
    "MODES",
    "FP8Linear",
    "OptimizationReport",
    "TurboConfig",
    "add_lora_slot",
    "compiled_frame_count",
    "compute_plan",
    "drift",
    "hotswap_lora",
    "optimize",
    "quantize_linears",
    "report_of",
    "warmup",
]
