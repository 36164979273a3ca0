"""Process-wide settings a replica's GPU libraries read once, when they first load.

cuBLASLt picks among its kernels by the workspace it is offered. With torch's default
workspace its choice for the engine's row-scaled fp8 GEMMs on Hopper is a kernel that needs
the workspace zeroed before every call (one memset and one more graph node per GEMM); with
none it takes the statically scheduled variant of the same tile, which measured faster at
every FLUX and Wan shape (H100: 4,096 x 3,072 x 9,216 179.8 -> 168.1 us, Wan's FFN down
projection 730.8 -> 697.5 us; a FLUX `fast` step 78.5 -> 77.0 ms, eager unchanged,
BENCHMARKS.md). torch reads CUBLASLT_WORKSPACE_SIZE when it creates its cuBLASLt
workspace, so the value only counts if set before the process's first GEMM: the replica
runner applies it at start; `optimize` notes in its report when a process runs without it.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

GPU_PROCESS_ENV = {"CUBLASLT_WORKSPACE_SIZE": "0"}
"""Variables a replica sets before its first GEMM (unless the deployment set them)."""


def apply_gpu_process_env(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set GPU_PROCESS_ENV's variables that `environ` lacks; returns those it set."""
    added = {name: value for name, value in GPU_PROCESS_ENV.items() if name not in environ}
    environ.update(added)
    return added


def gpu_process_env_missing(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """`NAME=value` for each of GPU_PROCESS_ENV's settings this process runs without."""
    return [f"{k}={v}" for k, v in GPU_PROCESS_ENV.items() if environ.get(k) != v]
