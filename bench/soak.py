"""Reliability soak: 10,000 requests to a no-op model through workers on two hosts while one
worker is killed (SIGKILL) every 30 s and started again, and Redis is restarted once.

The hosts are network namespaces on a private network (tests/multihost/hosts.py); without
root it falls back to two worker processes on this machine (the table says which). This
machine holds a private PostgreSQL and Redis (Redis without persistence: its restart loses
every queued message) and the API (uvicorn). Clients submit at a steady rate as a careful
client does: an `Idempotency-Key` per request, the same key again after a refusal or a
lost connection. At the end: accepted, succeeded, lost, duplicate charges, p99 submit →
succeeded (server timestamps), the ledger's balance, and the fault invariants.

    .venv/bin/python bench/soak.py [--requests 10000] [--rate 50] [--kill-every 30]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = Path(tempfile.mkdtemp(prefix="mediagate-soak-"))
os.environ["MEDIAGATE_DATA_DIR"] = str(DATA)

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.common import machine, summary, write_json  # noqa: E402
from tests.faults.private_services import PrivatePostgres, PrivateRedis  # noqa: E402
from tests.multihost.hosts import ApiProcess, Host, Network  # noqa: E402

MODEL = "bench/noop"
# Leases short enough that a killed worker's requests move on in seconds (production: 60 s).
TIMINGS = {
    "MEDIAGATE_GATEWAY_SWEEP_INTERVAL_S": "0.5",
    "MEDIAGATE_GATEWAY_LEASE_S": "5",
    "MEDIAGATE_GATEWAY_LEASE_RENEW_S": "1",
    "MEDIAGATE_GATEWAY_RETRY_DELAY_S": "0.5",
    "MEDIAGATE_GATEWAY_REQUEUE_STALE_S": "15",
    "MEDIAGATE_GATEWAY_MAX_ATTEMPTS": "5",
    "MEDIAGATE_RUNNER_PREDICT_TIMEOUT_S": "60",
}


class Workers:
    """One worker per host; `kill_one()` SIGKILLs one (in turn) and starts it again."""

    def __init__(self, hosts: list[Host | None], env: dict[str, str], concurrency: int) -> None:
        from tests.support import WorkerProcess

        self._make = lambda host: WorkerProcess(pools="shared", concurrency=concurrency, env=env,
                                                prefix=host.prefix() if host else None)
        self.hosts = hosts
        self.procs = list(self._start_all())
        self.next = 0
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def _start_all(self) -> list[Any]:
        out: list[Any] = [None] * len(self.hosts)

        def start(i: int) -> None:
            out[i] = self._make(self.hosts[i])

        threads = [threading.Thread(target=start, args=(i,)) for i in range(len(self.hosts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if any(p is None for p in out):
            for p in out:
                if p is not None:
                    p.stop()
            raise RuntimeError("a worker did not start")
        return out

    def kill_one(self, t0: float) -> None:
        i = self.next
        self.next = (self.next + 1) % len(self.procs)
        proc = self.procs[i]
        os.killpg(proc.process.pid, signal.SIGKILL)
        proc.process.wait()
        proc.stop()
        killed = time.monotonic() - t0
        name = self.hosts[i].name if self.hosts[i] else f"worker-{i}"
        self.procs[i] = self._make(self.hosts[i])
        with self.lock:
            self.events.append({"event": "worker killed", "host": name, "at_s": round(killed, 1),
                                "back_after_s": round(time.monotonic() - t0 - killed, 1)})

    def stop(self) -> None:
        threads = [threading.Thread(target=p.stop) for p in self.procs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


class Load:
    """Open-loop submits at a steady rate; each retried with its key until accepted."""

    def __init__(self, url: str, key: str, total: int, rate: float) -> None:
        self.url, self.total, self.rate = url, total, rate
        self.headers = {"Authorization": f"Key {key}", "Content-Type": "application/json"}
        self.accepted: dict[str, str] = {}  # idempotency key -> request id
        self.answers: Counter[str] = Counter()
        self.submitted = 0

    async def _one(self, client: Any, i: int) -> None:
        import httpx

        key = uuid.uuid4().hex
        body = {"input": {"value": i}}
        for attempt in range(600):
            try:
                r = await client.post(f"/v1/models/{MODEL}/requests", json=body,
                                      headers={**self.headers, "Idempotency-Key": key})
            except httpx.TransportError as exc:
                self.answers[type(exc).__name__] += 1
                await asyncio.sleep(min(2.0, 0.2 * (attempt + 1)))
                continue
            self.answers[str(r.status_code)] += 1
            if r.status_code in (200, 201):
                self.accepted[key] = r.json()["id"]
                return
            await asyncio.sleep(float(r.headers.get("retry-after", "0.5")))
        raise RuntimeError(f"request {i} was never accepted")

    async def run(self) -> None:
        import httpx

        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=self.url, timeout=30, limits=limits) as client:
            tasks = []
            start = time.perf_counter()
            for i in range(self.total):
                delay = start + i / self.rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(self._one(client, i)))
                self.submitted = i + 1
            await asyncio.gather(*tasks)


def snapshot(engine: Any) -> dict[str, int]:
    from sqlalchemy import func, select

    from gateway.models import Request

    with engine.connect() as conn:
        return {status: n for status, n in conn.execute(
            select(Request.status, func.count()).group_by(Request.status))}


def outcome(engine: Any, accepted: dict[str, str], *, by_process: bool = False) -> dict[str, Any]:
    """What became of the accepted requests, and what the books say."""
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from billing.models import LedgerEntry, UsageRecord
    from gateway.models import FINAL_STATUSES, Request

    ids = set(accepted.values())
    with Session(engine) as s:
        reqs = {r.id: r for r in s.scalars(select(Request))}
        usage = Counter(s.scalars(select(UsageRecord.request_id)))
        postings = Counter(s.scalars(select(UsageRecord.request_id).join(
            LedgerEntry, LedgerEntry.usage_id == UsageRecord.id).where(LedgerEntry.amount_micros > 0)))
        balance = {cur: int(total) for cur, total in s.execute(
            select(LedgerEntry.currency, func.sum(LedgerEntry.amount_micros)).group_by(LedgerEntry.currency))}
        unbalanced = s.scalar(select(func.count()).select_from(
            select(LedgerEntry.transaction_id).group_by(LedgerEntry.transaction_id, LedgerEntry.currency)
            .having(func.sum(LedgerEntry.amount_micros) != 0).subquery()))
    statuses = Counter(reqs[i].status if i in reqs else "missing" for i in ids)
    succeeded = [reqs[i] for i in ids if i in reqs and reqs[i].status == "succeeded"]
    latency = [(r.completed_at - r.created_at).total_seconds() * 1000 for r in succeeded]
    lost = sum(n for status, n in statuses.items() if status not in FINAL_STATUSES)
    duplicates = sum(n - 1 for n in usage.values() if n > 1) + sum(n - 1 for n in postings.values() if n > 1)
    charged_unsucceeded = sum(1 for rid in usage if rid not in reqs or reqs[rid].status != "succeeded")
    return {
        "accepted": len(ids), "statuses": dict(statuses), "succeeded": len(succeeded), "lost": lost,
        "duplicate_charges": duplicates, "charged_but_not_succeeded": charged_unsucceeded,
        "usage_records": sum(usage.values()), "extra_requests": len(set(reqs) - ids),
        "attempts": dict(Counter(r.attempts for r in succeeded)),
        "submit_to_succeeded_ms": summary(latency) if latency else None,
        "ledger_balance_micros": balance, "unbalanced_transactions": unbalanced,
        # Which host ran each request (its lease owner: host/pid/nonce); on one machine, which process.
        "hosts": dict(Counter("/".join((r.lease_owner or "?").split("/")[:2 if by_process else 1])
                              for r in succeeded)),
    }


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    namespaces = os.geteuid() == 0 and shutil.which("nsenter") is not None and not args.processes
    network = Network() if namespaces else None
    try:
        hosts: list[Host | None] = ([network.add_host("host-a"), network.add_host("host-b")]
                                    if network else [None, None])
        address = network.gateway if network else "127.0.0.1"
        subnet = str(network.subnet) if network else "127.0.0.1/32"
        with PrivatePostgres(address, subnet) as pg, PrivateRedis(address) as redis_server:
            env = {"MEDIAGATE_DATABASE_URL": pg.url, "MEDIAGATE_REDIS_URL": redis_server.url(0),
                   "MEDIAGATE_BROKER_URL": redis_server.url(0), **TIMINGS}
            os.environ.update(env)  # this process seeds and reads the same database
            from sqlalchemy import create_engine

            from bench.stack import seed_noop
            from kit.migrate import upgrade

            upgrade(pg.url)
            key = seed_noop(DATA, concurrency=args.worker_concurrency, unlimited=True)
            engine = create_engine(pg.url)
            api = ApiProcess(env, log_dir=DATA, workers=args.api_workers)
            workers = None
            try:
                workers = Workers(hosts, env, args.worker_concurrency)
                return _soak(args, console, engine, api, workers, redis_server, key,
                             "network namespaces" if network else "processes on one machine")
            finally:
                if workers is not None:
                    workers.stop()
                api.stop()
                engine.dispose()
    finally:
        if network is not None:
            network.close()


def _soak(args: argparse.Namespace, console: Console, engine: Any, api: ApiProcess, workers: Workers,
          redis_server: PrivateRedis, key: str, hosts_kind: str) -> dict[str, Any]:
    from kit.settings import get_settings

    load = Load(api.url, key, args.requests, args.rate)
    t0 = time.monotonic()
    done = threading.Event()
    events: list[dict[str, Any]] = []
    timeline: list[dict[str, Any]] = []

    def chaos() -> None:
        next_kill = t0 + args.kill_every
        redis_done = False
        while not done.wait(0.5):
            now = time.monotonic()
            if not redis_done and load.submitted >= args.requests * args.redis_restart_at:
                redis_done = True
                redis_server.restart(down_s=args.redis_down)
                events.append({"event": "redis restarted", "at_s": round(now - t0, 1),
                               "down_s": args.redis_down})
            if now >= next_kill:
                workers.kill_one(t0)
                next_kill = now + args.kill_every

    def sample() -> None:
        while not done.wait(5):
            try:
                counts = snapshot(engine)
            except Exception as exc:  # noqa: BLE001 - a sample is skipped, the soak goes on
                counts = {"error": str(exc)[:100]}
            timeline.append({"t_s": round(time.monotonic() - t0, 1), "submitted": load.submitted,
                             "accepted": len(load.accepted), "load_average": os.getloadavg()[0], **counts})
            if len(timeline) % 6 == 0:
                console.print(f"[dim]{timeline[-1]}[/]")

    threads = [threading.Thread(target=chaos, daemon=True), threading.Thread(target=sample, daemon=True)]
    for t in threads:
        t.start()
    try:
        asyncio.run(load.run())
        submitted_s = time.monotonic() - t0
        console.print(f"{len(load.accepted)} accepted in {submitted_s:.0f} s; waiting for the rest")
        deadline = time.monotonic() + args.drain_timeout
        while time.monotonic() < deadline:
            counts = snapshot(engine)
            if not counts.get("queued") and not counts.get("running"):
                break
            time.sleep(1)
    finally:
        done.set()
        for t in threads:
            t.join(timeout=120)
    drained_s = time.monotonic() - t0
    result = outcome(engine, load.accepted, by_process=hosts_kind.startswith("processes"))
    from tests.faults.invariants import assert_invariants

    try:
        assert_invariants(engine)
        invariants = "hold"
    except AssertionError as exc:
        invariants = str(exc)[:4000]
    return {**result, "invariants": invariants, "answers": dict(load.answers),
            "events": sorted(events + workers.events, key=lambda e: e["at_s"]), "timeline": timeline,
            "submit_seconds": round(submitted_s, 1), "total_seconds": round(drained_s, 1),
            "hosts_kind": hosts_kind, "settings": {**TIMINGS, "db": get_settings().db_url.split("@")[-1]}}


def report(console: Console, args: argparse.Namespace, r: dict[str, Any]) -> None:
    lat = r["submit_to_succeeded_ms"] or {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    kills = sum(1 for e in r["events"] if e["event"] == "worker killed")
    balance = r["ledger_balance_micros"]
    table = Table(title=f"Reliability soak ({machine()}; workers on two hosts: {r['hosts_kind']})")
    for col in ("measure", "result", "target"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    table.add_row("requests accepted", f"{r['accepted']:,}", f"{args.requests:,}")
    table.add_row("succeeded", f"{r['succeeded']:,}", f"{r['accepted']:,}")
    table.add_row("lost (accepted, never final)", str(r["lost"]), "0")
    table.add_row("other final statuses", str({k: v for k, v in r["statuses"].items() if k != "succeeded"} or "none"), "")
    table.add_row("duplicate charges", str(r["duplicate_charges"] + r["charged_but_not_succeeded"]), "0")
    table.add_row("submit → succeeded p50 / p99 / max", f"{lat['p50']:.0f} / {lat['p99']:.0f} / {lat['max']:.0f} ms", "")
    table.add_row("ledger balance", ", ".join(f"{v} {k}" for k, v in balance.items()) or "0", "exactly 0")
    table.add_row("unbalanced ledger transactions", str(r["unbalanced_transactions"]), "0")
    table.add_row("fault invariants", "hold" if r["invariants"] == "hold" else "BROKEN", "hold")
    table.add_row("workers killed (SIGKILL) / Redis restarts",
                  f"{kills} / {sum(1 for e in r['events'] if e['event'] == 'redis restarted')}", f"every {args.kill_every:.0f} s / 1")
    table.add_row("succeeded per host", ", ".join(f"{h}: {n:,}" for h, n in sorted(r["hosts"].items())), "")
    table.add_row("run time (submit / until drained)", f"{r['submit_seconds']:.0f} / {r['total_seconds']:.0f} s", "")
    loads = [t["load_average"] for t in r["timeline"]]
    if loads:
        table.add_row("machine load average (1 min) min / max", f"{min(loads):.1f} / {max(loads):.1f}", "")
    console.print(table)
    if r["invariants"] != "hold":
        console.print(r["invariants"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=50.0, help="submits per second")
    parser.add_argument("--kill-every", type=float, default=30.0)
    parser.add_argument("--redis-restart-at", type=float, default=0.5, help="fraction of submits")
    parser.add_argument("--redis-down", type=float, default=2.0, help="seconds Redis stays down")
    parser.add_argument("--worker-concurrency", type=int, default=4)
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument("--processes", action="store_true", help="two worker processes, no namespaces")
    args = parser.parse_args()
    console = Console()
    started = dt.datetime.now(dt.UTC)
    try:
        result = run(args, console)
    finally:
        shutil.rmtree(DATA, ignore_errors=True)
    report(console, args, result)
    path = write_json("soak", {"machine": machine(), "started": started.isoformat(), "args": vars(args),
                               **result})
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
