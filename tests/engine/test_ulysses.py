"""The packed Ulysses exchange over two real CPU ranks (gloo): shards in, heads out, back."""

from __future__ import annotations

import os
import socket

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from engine.optimization.ulysses import (  # noqa: E402
    attend_over_ranks,
    gather_sequence,
    scatter_sequence,
)

RANKS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, failures) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=RANKS)
    try:
        group = dist.group.WORLD
        g = torch.Generator().manual_seed(0)  # the same full tensors on every rank
        b, s, h, d = 2, 12, 4, 8
        q, k, v = (torch.randn(b, s, h, d, generator=g) for _ in range(3))
        s_local, h_local = s // RANKS, h // RANKS
        mine = slice(rank * s_local, (rank + 1) * s_local)
        heads = slice(rank * h_local, (rank + 1) * h_local)

        fq, fk, fv = gather_sequence(q[:, mine], k[:, mine], v[:, mine], group, RANKS)
        # The whole sequence, in rank order, of this rank's heads.
        torch.testing.assert_close(fq, q[:, :, heads], rtol=0, atol=0)
        torch.testing.assert_close(fk, k[:, :, heads], rtol=0, atol=0)
        torch.testing.assert_close(fv, v[:, :, heads], rtol=0, atol=0)

        attend = lambda q_, k_, v_: torch.nn.functional.scaled_dot_product_attention(  # noqa: E731
            q_.transpose(1, 2), k_.transpose(1, 2), v_.transpose(1, 2)
        ).transpose(1, 2)
        out = scatter_sequence(attend(fq, fk, fv), group, RANKS)
        torch.testing.assert_close(out, attend(q, k, v)[:, mine])

        # The same through the processors' entry point, attention passed in.
        torch.testing.assert_close(
            attend_over_ranks(q[:, mine], k[:, mine], v[:, mine], attend, group, RANKS),
            attend(q, k, v)[:, mine],
        )

        with pytest.raises(ValueError, match="3 heads do not divide"):
            gather_sequence(*(t[:, mine, :3] for t in (q, k, v)), group, RANKS)
    except BaseException as exc:  # noqa: BLE001  (reported to the parent, which fails)
        failures.put(f"rank {rank}: {type(exc).__name__}: {exc}")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_packed_exchange_trades_sequence_shards_for_head_shards_and_back():
    ctx = mp.get_context("spawn")
    failures = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, failures)) for r in range(RANKS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(100)
    errors = [failures.get() for _ in range(failures.qsize())] if not failures.empty() else []
    assert not errors, errors
    assert [p.exitcode for p in procs] == [0, 0]
