"""Gateway overhead: submit → succeeded for a no-op model, against calling its runner directly.

Runs the real stack: PostgreSQL, Redis (broker and events), a Celery worker process, the API
in a uvicorn process, and load from this process over HTTP. Prints a table, writes
bench/results/gateway_overhead.json and a latency chart.

    .venv/bin/python bench/gateway_overhead.py [--requests 500] [--profile worker.raw]

It also reports the CPU each request costs the worker (its process and the sandboxed runner
under it) and the benchmark database's PostgreSQL backends, from /proc, over the timed loop.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = Path(tempfile.mkdtemp(prefix="mediagate-bench-"))
PORT = 8731
os.environ.update(
    MEDIAGATE_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:5432/mediagate_bench",
    MEDIAGATE_BROKER_URL="redis://127.0.0.1:6379/14", MEDIAGATE_REDIS_URL="redis://127.0.0.1:6379/14",
    MEDIAGATE_DATA_DIR=str(DATA), MEDIAGATE_PUBLIC_URL=f"http://127.0.0.1:{PORT}",
)

import httpx  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import track  # noqa: E402
from rich.table import Table  # noqa: E402
from sqlalchemy import select  # noqa: E402

from bench.common import machine, summary, write_json  # noqa: E402
from bench.procstat import cpu_snapshot, cpu_used, descendants  # noqa: E402
from bench.stack import NOOP, api_command, fresh_database, seed_noop  # noqa: E402
from kit.db import session_scope  # noqa: E402

# The envelope's timestamps (this machine's clock for all of them): where a request's time goes.
PHASES = (("submit → created", "sent", "created"), ("created → started", "created", "started"),
          ("started → completed", "started", "completed"), ("completed → answer", "completed", "answer"))


def commits() -> int:
    """Transactions committed in the benchmark's database so far (PostgreSQL's own count)."""
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/mediagate_bench", autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return int(conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = 'mediagate_bench'")
                   .fetchone()[0])


def worker_path(n: int) -> dict[str, float]:
    """The worker's database path alone, in this process: claim and finish of `n` queued requests
    (no broker, no sandbox), with this thread's CPU time per request and statements sent."""
    import statistics

    from sqlalchemy import event

    from billing.models import Account
    from gateway import runs, service
    from kit.db import get_engine

    sent = [0]

    def count(*_: object) -> None:
        sent[0] += 1

    with session_scope() as s:
        account_id = s.scalars(select(Account.id)).first()
    ids = []
    for i in range(n + 30):
        with session_scope() as s:
            account = s.get(Account, account_id)
            ids.append(service.submit(s, account, owner="bench", model_slug="noop", input={"value": i}).request.id)
    event.listen(get_engine(), "before_cursor_execute", count)
    cpu, statements = [], []
    for k, request_id in enumerate(ids):  # the first 30 warm the caches
        c0, s0 = time.thread_time(), sent[0]
        with session_scope() as s:
            claimed = runs.claim(s, request_id, owner="bench")
        assert claimed is not None
        runs._succeed(claimed, {"output": {"value": k}, "units": {"requests": 1}}, DATA / "none", run_ms=1)
        if k >= 30:
            cpu.append((time.thread_time() - c0) * 1000)
            statements.append(sent[0] - s0)
    event.remove(get_engine(), "before_cursor_execute", count)
    return {"cpu_ms_p50": statistics.median(cpu), "cpu_ms_mean": statistics.fmean(cpu),
            "orm_statements": statistics.median(statements)}


def direct_runner(n: int) -> list[float]:
    """The floor: the same model in its sandbox, called over its socket with no gateway between."""
    from partners.models import Deployment
    from partners.packaging import validate_archive
    from partners.tenancy.runner import DeploymentSpec, PackageLayers, ReplicaPool
    from partners.tenancy.sandbox_spec import directory_layer

    with session_scope() as s:
        deployment_id = s.scalars(select(Deployment.id)).one()
    manifest = validate_archive(DATA / "noop.oci.tar").manifest.to_dict()
    spec = DeploymentSpec(deployment_id, lambda: PackageLayers([directory_layer(NOOP)], "", 1 << 20), manifest,
                          concurrency=4)
    pool = ReplicaPool()
    replica = pool.acquire(spec, timeout=60)
    times = []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            replica.predict(f"r{i}", {"value": i}, DATA / "direct-out" / str(i), timeout=30)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        pool.release(replica)
        pool.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--api-workers", type=int, default=1)
    parser.add_argument("--worker-path", type=int, default=300,
                        help="requests for the in-process claim and finish timing (0: skip)")
    parser.add_argument("--profile", help="record the worker with py-spy (--gil, raw) into this file")
    args = parser.parse_args()
    console = Console()
    import redis

    redis.Redis.from_url(os.environ["MEDIAGATE_REDIS_URL"]).flushdb()
    fresh_database("mediagate_bench")
    key = seed_noop(DATA, concurrency=4, unlimited=False)
    env = dict(os.environ)
    log = open(DATA / "stack.log", "wb")
    procs = [
        subprocess.Popen([sys.executable, "-m", "gateway.cli", "worker", "--concurrency", "4"], cwd=ROOT,
                         env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True),
        subprocess.Popen(api_command(sys.executable, PORT, args.api_workers), cwd=ROOT, env=env,
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True),
    ]
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=60,
                              headers={"Authorization": f"Key {key}", "Prefer": "wait=30"})
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit((DATA / "stack.log").read_text())
            time.sleep(0.2)
        for i in range(30):  # warm-up: cold start of the replica, connection pools
            r = client.post("/v1/models/bench/noop/requests", json={"input": {"value": i}})
            assert r.json()["status"] == "succeeded", r.text
        gateway_ms, queue_ms = [], []
        phases: dict[str, list[float]] = {name: [] for name, _, _ in PHASES}
        worker = procs[0].pid

        def cpu() -> dict[str, dict[int, float]]:
            return {"worker + runner": cpu_snapshot(descendants(worker)),
                    "PostgreSQL (bench database)": cpu_snapshot(match="mediagate_bench"),
                    "API": cpu_snapshot(descendants(procs[1].pid))}

        spy = None
        if args.profile:
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--gil", "-f", "raw",
                                    "-r", "200", "-o", args.profile, "-p", str(worker)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        cpu_before, commits_before = cpu(), commits()
        for i in track(range(args.requests), description="submit → succeeded"):
            sent, t0 = time.time(), time.perf_counter()
            body = client.post("/v1/models/bench/noop/requests", json={"input": {"value": i}}).json()
            gateway_ms.append((time.perf_counter() - t0) * 1000)
            answered = time.time()
            assert body["status"] == "succeeded", body
            queue_ms.append(body["metrics"]["queue_ms"])
            stamps = {"sent": sent, "answer": answered, **{k: dt.datetime.fromisoformat(body[f"{k}_at"]).timestamp()
                                                          for k in ("created", "started", "completed")}}
            for name, a, b in PHASES:
                phases[name].append((stamps[b] - stamps[a]) * 1000)
        cpu_after, commits_after = cpu(), commits()
        commits_per_request = (commits_after - commits_before) / args.requests
        cpu_ms = {name: cpu_used(cpu_before[name], cpu_after[name]) * 1000 / args.requests for name in cpu_after}
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)
    # After the stack is gone, so that nothing else competes; the replica rows name the real deployment.
    direct_ms = direct_runner(args.requests)
    g, d = summary(gateway_ms), summary(direct_ms)
    path_cpu = worker_path(args.worker_path) if args.worker_path else {}
    overhead = {"p50": g["p50"] - d["p50"], "p99": g["p99"] - d["p99"]}
    table = Table(title=f"Gateway overhead, no-op model, {args.requests} sequential requests ({machine()})")
    for col in ("path", "p50 ms", "p90 ms", "p99 ms", "mean ms"):
        table.add_column(col, justify="right" if "ms" in col else "left")
    table.add_row("API submit → succeeded (Prefer: wait)", *(f"{g[k]:.2f}" for k in ("p50", "p90", "p99", "mean")))
    table.add_row("runner called directly", *(f"{d[k]:.2f}" for k in ("p50", "p90", "p99", "mean")))
    table.add_row("overhead (difference)", f"{overhead['p50']:.2f}", "", f"{overhead['p99']:.2f}", "")
    queue = summary([float(x) for x in queue_ms])
    table.add_row("queue wait (server side)", *(f"{queue[k]:.2f}" for k in ("p50", "p90", "p99", "mean")))
    phase = {name: summary(values) for name, values in phases.items()}
    for name, stats in phase.items():
        table.add_row(f"  {name}", *(f"{stats[k]:.2f}" for k in ("p50", "p90", "p99", "mean")))
    console.print(table)
    console.print("CPU per request: " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in cpu_ms.items())
                  + f"; {commits_per_request:.2f} commits per request (every process)")
    if path_cpu:
        console.print(f"worker path in-process (claim + finish, no broker or sandbox): {path_cpu['cpu_ms_p50']:.2f} ms "
                      f"CPU per request (median), {path_cpu['orm_statements']:.0f} statements through the ORM")
    console.print(f"targets: overhead p50 ≤ 25 ms, p99 ≤ 100 ms → "
                  f"{'met' if overhead['p50'] <= 25 and overhead['p99'] <= 100 else 'missed'}")
    console.print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    path = write_json("gateway_overhead", {
        "date": dt.date.today().isoformat(), "machine": machine(), "requests": args.requests,
        "load_average": os.getloadavg()[0],
        "gateway_ms": g, "direct_ms": d, "overhead_ms": overhead, "queue_ms": queue, "phases_ms": phase,
        "cpu_ms_per_request": cpu_ms, "commits_per_request": commits_per_request,
        "worker_path": path_cpu,
    })
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        ax.hist(gateway_ms, bins=60, alpha=0.7, label="via gateway")
        ax.hist(direct_ms, bins=60, alpha=0.7, label="runner directly")
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("requests")
        ax.set_title("submit → succeeded, no-op model")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path.with_suffix(".png"), dpi=110)
    except ImportError:
        pass
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
