"""Helpers shared by the kernel modules: interpreter selection, launch sizes, operand layouts.

The package's __init__ imports this module first, before any op module imports Triton,
so that a process without a GPU runs the kernels through Triton's interpreter.
"""

from __future__ import annotations

import math
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


def row_block(n_cols: int, target_elems: int = 4096) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) for a kernel holding whole rows of n_cols in registers."""
    block_n = triton.next_power_of_2(max(n_cols, 16))
    block_m = max(1, min(64, target_elems // block_n))
    tile = block_m * block_n
    # Enough warps that each thread holds 8 to 32 elements: 16-byte accesses, no spills.
    num_warps = 4 if tile <= 2048 else 8 if tile <= 8192 else 16
    return block_m, block_n, num_warps


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """x as a contiguous (M, N) matrix of its rows (a view when x is contiguous)."""
    return x.contiguous().view(-1, x.shape[-1]) if x.dim() > 0 else x.view(1, 1)


def expand_modulation(mod: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample modulation (B, D) or (B, 1, D) or any broadcastable shape to x.

    A 2-D modulation against an x of 3 or more dims is read as one row per sample
    (diffusers' AdaLayerNorm hands out (B, D) chunks); anything else broadcasts as torch does.
    """
    if mod.dim() == 2 and x.dim() >= 3 and mod.shape[0] == x.shape[0]:
        mod = mod.view(mod.shape[0], *([1] * (x.dim() - 2)), mod.shape[1])
    return mod.expand(x.shape)


def modulation_layout(mod: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    """Describe a modulation for row kernels: (tensor, rows per sample R, stride per sample, stride per row).

    x's rows are numbered as (B, R) with B = x.shape[0]; row i reads the modulation at
    (i // R) * stride_b + (i % R) * stride_r. Per-sample modulations keep stride_r = 0, so
    nothing is materialized.
    """
    n = x.shape[-1]
    lead = x.shape[:-1]
    b = lead[0] if len(lead) else 1
    r = math.prod(lead[1:]) if len(lead) > 1 else 1
    m3 = expand_modulation(mod, x).reshape(b, r, n)
    if m3.stride(-1) != 1:
        m3 = m3.contiguous()
    return m3, r, m3.stride(0), m3.stride(1)
