"""Helpers shared by the kernel modules: interpreter selection, launch sizes, operand layouts.

The package's __init__ imports this module first, before any op module imports Triton,
so that a process without a GPU runs the kernels through Triton's interpreter.
"""

from __future__ import annotations

import os
import sys

import torch

# Triton decorates its own standard library (tl.sum, tl.max, ...) when it is first imported,
# so the interpreter has to be chosen before that. Without a CUDA device Triton has no
# backend at all; interpreting is then the only way these kernels can run.
if "triton" not in sys.modules and "TRITON_INTERPRET" not in os.environ:
    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

INTERPRETING: bool = isinstance(tl.standard.max, InterpretedFunction)
"""True when this process runs Triton kernels in the (CPU) interpreter."""

HALF_DTYPES = (torch.bfloat16, torch.float16)


def use_triton(t: torch.Tensor) -> bool:
    """Whether a tensor on this device can go through the Triton kernels."""
    if t.is_cuda:
        return True
    return INTERPRETING and t.device.type == "cpu"


def row_block(
    n_cols: int, block_m: int | None = None, num_warps: int | None = None
) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) for a kernel holding whole rows of n_cols in registers.

    From the launch sweep on H200 (bench/kernels.py --sweep): rows of 4096 and wider do best
    one per program at 32 elements per thread; narrower rows at 16 elements per thread, in
    tiles of 4096 (2048 for head-dim rows).
    """
    block_n = triton.next_power_of_2(max(n_cols, 16))
    if block_m is None:
        block_m = max(1, min(64, (2048 if block_n <= 256 else 4096) // block_n))
    if num_warps is None:
        per_thread = 32 if block_n >= 4096 else 16
        num_warps = max(1, min(16, block_m * block_n // (per_thread * 32)))
    return block_m, block_n, num_warps


def late_modulation(block_n: int) -> bool:
    """Whether row kernels load shift/scale after the row statistics rather than up front.

    Later loads keep fewer registers live while a row streams in from DRAM; for rows of 4096
    that lets more programs stay resident (gated_residual_adaln at FLUX sizes: 79% -> 89% of
    copy bandwidth on H200). Narrower rows were not measured to gain, so they load up front.
    """
    return block_n >= 4096


def expand_modulation(mod: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample modulation (B, D) or (B, 1, D) or any broadcastable shape to x.

    A 2-D modulation against an x of 3 or more dims is read as one row per sample
    (diffusers' AdaLayerNorm hands out (B, D) chunks); anything else broadcasts as torch does.
    """
    if mod.dim() == 2 and x.dim() >= 3 and mod.shape[0] == x.shape[0]:
        mod = mod.view(mod.shape[0], *([1] * (x.dim() - 2)), mod.shape[1])
    return mod.expand(x.shape)


MAX_GRID_YZ = 65535


def sample_split(x: torch.Tensor) -> tuple[int, int]:
    """x's rows as (B samples, R rows each): B = x.shape[0] for 3-D and up, else one sample."""
    n = x.shape[-1] if x.dim() else 1
    m = x.numel() // n if n else 0
    b = x.shape[0] if x.dim() >= 3 else 1
    if b > MAX_GRID_YZ or b == 0:
        b = 1
    return b, (m // b if b else 0)


def modulation_layout(mod: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, int, int, bool]:
    """A modulation as (tensor, stride per sample, stride per row, per_sample) for row kernels.

    Row r of sample b reads the modulation at b * stride_b + r * stride_r. A per-sample
    modulation has stride_r = 0: kernels then load it once per program, and nothing is
    materialized.
    """
    b, r = sample_split(x)
    m3 = expand_modulation(mod, x).reshape(b, r, x.shape[-1])
    if m3.stride(-1) != 1:
        m3 = m3.contiguous()
    per_sample = r == 1 or m3.stride(1) == 0
    return m3, m3.stride(0), (0 if per_sample else m3.stride(1)), per_sample
