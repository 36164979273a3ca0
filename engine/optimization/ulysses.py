"""Ulysses all-to-alls for our own attention processors (engine/optimization/sdpa.py).

Every rank holds 1/N of the sequence and all H heads; attention needs the whole sequence,
so before it the ranks trade sequence shards for head shards (each then holds the whole
sequence and H/N heads) and trade back after. diffusers' dispatch does the same with one
all-to-all each for q, k and v; here they travel packed in one, so a FLUX step makes two
exchanges per attention instead of four (NCCL 10.3 → 8.4 ms per step on two H200s).

Sending the heads in groups, so that one group's attention would run while the next is in
flight, measured slower on two H200s (FLUX `fast`: 59.7 ms per step in one exchange, 62.7
in two groups, 70.3 in four): the NCCL kernels need SMs that the attention kernel holds, so
they did not overlap, and each extra exchange adds its latency (BENCHMARKS.md).

Keys that every rank holds whole (Wan's text cross attention: its plan does not split the
text) need no exchange at all: each rank attends its own queries, all heads, to them.

The gathered sequence is the ranks' shards one after another. Attention without a mask
does not depend on the keys' order, and each query's output goes back to where it came
from, so FLUX's joint [text, image] shards need no reordering.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def ulysses_group(parallel_config) -> tuple[object, int] | None:
    """(process group, ranks) of a diffusers ParallelConfig's Ulysses mesh, or None."""
    if parallel_config is None:
        return None
    cp = getattr(parallel_config, "context_parallel_config", None)
    if cp is None:
        return None
    if getattr(cp, "ring_degree", 1) not in (None, 1):
        raise NotImplementedError("our attention processors run Ulysses only, not ring attention")
    degree = cp.ulysses_degree or 1
    if degree == 1:
        return None
    return cp._ulysses_mesh.get_group(), degree


def _send(x: torch.Tensor, group, ranks: int) -> torch.Tensor:
    # x: destination rank first. The functional op returns before the data has arrived.
    flat = x.contiguous().flatten()
    split = [flat.numel() // ranks] * ranks
    return torch.ops._c10d_functional.all_to_all_single(flat, split, split, group.group_name)


def _wait(x: torch.Tensor) -> torch.Tensor:
    return torch.ops._c10d_functional.wait_tensor(x)


def _pack_qkv(q, k, v, ranks: int) -> torch.Tensor:
    b, s_local, heads, d = q.shape
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"packed exchange needs q, k, v of one shape, got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if heads % ranks:
        raise ValueError(f"{heads} heads do not divide over {ranks} ranks")
    # Destination rank first, (N·3, B, S_l, H/N, D), stacked in that order: the buffer the
    # collective sends is the one the producing kernel writes (a permuted stack cost one
    # more copy of it).
    hn = heads // ranks
    return torch.stack([t[:, :, r * hn : (r + 1) * hn] for r in range(ranks) for t in (q, k, v)])


def _unpack_qkv(recv: torch.Tensor, like: torch.Tensor, ranks: int):
    b, s_local, heads, d = like.shape
    hn = heads // ranks
    # (source rank, 3, B, S_l, H/N, D) -> (3, B, source rank, S_l, H/N, D) -> (3, B, S, H/N, D)
    full = recv.view(ranks, 3, b, s_local, hn, d).permute(1, 2, 0, 3, 4, 5)
    full = full.reshape(3, b, ranks * s_local, hn, d)
    return full[0], full[1], full[2]


def _pack_out(out: torch.Tensor, ranks: int) -> torch.Tensor:
    b, s, hn, d = out.shape
    if s % ranks:
        raise ValueError(f"sequence of {s} does not divide over {ranks} ranks")
    return out.reshape(b, ranks, s // ranks, hn, d).transpose(0, 1)


def _unpack_out(recv: torch.Tensor, like: torch.Tensor, ranks: int) -> torch.Tensor:
    b, s, hn, d = like.shape
    # (source rank = head group, B, S_l, H/N, D) -> (B, S_l, N, H/N, D)
    out = recv.view(ranks, b, s // ranks, hn, d).permute(1, 2, 0, 3, 4)
    return out.reshape(b, s // ranks, ranks * hn, d)


def gather_sequence(q, k, v, group, ranks: int):
    """(B, S/N, H, D) shards of q, k, v -> (B, S, H/N, D) each, in one all-to-all."""
    return _unpack_qkv(_wait(_send(_pack_qkv(q, k, v, ranks), group, ranks)), q, ranks)


def scatter_sequence(out: torch.Tensor, group, ranks: int) -> torch.Tensor:
    """(B, S, H/N, D) attention output -> this rank's (B, S/N, H, D), in one all-to-all."""
    return _unpack_out(_wait(_send(_pack_out(out, ranks), group, ranks)), out, ranks)


def attend_over_ranks(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    group,
    ranks: int,
) -> torch.Tensor:
    """`attention` over the whole sequence for this rank's (B, S/N, H, D) shards of q, k, v."""
    return scatter_sequence(attention(*gather_sequence(q, k, v, group, ranks)), group, ranks)
