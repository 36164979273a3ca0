"""The context-parallel exchange alone: NCCL all-to-all against copy-engine peer copies.

    torchrun --nproc_per_node 2 bench/engine.py --part alltoall      # NCCL, one rank per GPU
    python bench/engine.py --part alltoall --device cuda              # peer copies, one process

The sizes are FLUX.1-dev 1024² context parallel over two ranks: the packed q, k, v of one
attention (3 × 2,304 tokens × 3,072 channels, bf16) and its output. GB/s counts the bytes
that leave each GPU (half the buffer for two ranks). Under torchrun every rank runs the
all-to-all (rank 0 reports); in one process the same bytes go GPU 0 → GPU 1 and back by
`Tensor.copy_`, which uses the copy engines and no SMs.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch
import torch.distributed as dist

from bench.enginebench.common import env_info, log, time_calls

TOKENS, CHANNELS = 2304, 3072
SIZES = {"q,k,v packed": 3 * TOKENS * CHANNELS, "attention output": TOKENS * CHANNELS}


def alltoall_part(args: argparse.Namespace) -> dict[str, Any] | None:
    if "LOCAL_RANK" in os.environ:
        return _nccl()
    return _peer_copies()


def _nccl() -> dict[str, Any] | None:
    import torch.distributed._functional_collectives as funcol

    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(rank)
    nccl_env = {k: v for k, v in os.environ.items() if k.startswith("NCCL_")}
    rows = []
    for name, numel in SIZES.items():
        x = torch.randn(numel, device="cuda", dtype=torch.bfloat16)
        ms = time_calls(
            lambda x=x: funcol.all_to_all_single(x, None, None, dist.group.WORLD).wait(),
            torch.device("cuda"),
            iters=50,
            warmup=5,
        )
        sent = x.numel() * x.element_size() * (world - 1) / world
        rows.append(
            {"exchange": name, "MB": x.numel() * 2 / 1e6, "ms": ms, "GB/s": sent / ms / 1e6}
        )
        if rank == 0:
            log("nccl", nccl_env, rows[-1])
    dist.barrier()
    dist.destroy_process_group()
    return (
        {"part": "alltoall", "how": "nccl", "nccl_env": nccl_env, "rows": rows}
        if rank == 0
        else None
    )


def _swap(a0, a1, b0, b1, s0, s1) -> None:
    # Both directions at once, as in the exchange: each GPU sends half its buffer.
    with torch.cuda.stream(s0):
        b1.copy_(a0, non_blocking=True)
    with torch.cuda.stream(s1):
        b0.copy_(a1, non_blocking=True)
    s0.synchronize()
    s1.synchronize()


def _peer_copies() -> dict[str, Any]:
    if torch.cuda.device_count() < 2:
        raise SystemExit("peer copies need two GPUs in this process")
    rows = []
    for name, numel in SIZES.items():
        half = numel // 2
        a0, a1 = (torch.randn(half, device=f"cuda:{i}", dtype=torch.bfloat16) for i in (0, 1))
        b0, b1 = torch.empty_like(a0), torch.empty_like(a1)
        streams = torch.cuda.Stream("cuda:0"), torch.cuda.Stream("cuda:1")
        # Wall clock (`time_calls` on the host): the two launches and host waits (~10 µs)
        # are included.
        swap = lambda: _swap(a0, a1, b0, b1, *streams)  # noqa: E731, B023
        ms = time_calls(swap, torch.device("cpu"), iters=50, warmup=5)
        rows.append(
            {"exchange": name, "MB": numel * 2 / 1e6, "ms": ms, "GB/s": half * 2 / ms / 1e6}
        )
        log("peer copy", rows[-1])
    return {
        "part": "alltoall",
        "how": "peer copies",
        "env": env_info(torch.device("cuda")),
        "rows": rows,
    }
