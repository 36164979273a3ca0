"""Customer API under load: submit throughput, submit latency at a fixed rate, submit →
succeeded overhead, and memory with 1,000 open event streams.

The real stack: PostgreSQL, Redis (broker, events, limits), a Celery worker process, the
API under uvicorn, and load from this process over real HTTP (a lean asyncio HTTP/1.1
client, so the load generator takes as little of the machine as it can). Prints a table,
writes bench/results/gateway_load.json and a chart.

The worker shares the two cores with the API, as it never does when deployed (GPU workers
run on machines of their own), and runs fewer requests per second than the API accepts. So
the phases run first with the worker (submit → succeeded, 50 and 200 req/s, throughput),
then, once it has run its backlog, without it: the API tier's own latency at 200 req/s and
its throughput, and memory with open streams.

    .venv/bin/python bench/gateway_load.py [--api-workers 2] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = Path(tempfile.mkdtemp(prefix="mediagate-load-"))
PORT = 8741
os.environ.update(
    MEDIAGATE_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:5432/mediagate_load",
    MEDIAGATE_BROKER_URL="redis://127.0.0.1:6379/13", MEDIAGATE_REDIS_URL="redis://127.0.0.1:6379/13",
    MEDIAGATE_DATA_DIR=str(DATA), MEDIAGATE_PUBLIC_URL=f"http://127.0.0.1:{PORT}",
)

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.common import machine, summary, write_json  # noqa: E402
from bench.procstat import cpu_snapshot, cpu_used, descendants  # noqa: E402
from bench.stack import api_command, fresh_database, seed_noop  # noqa: E402

MODEL = "bench/noop"
TARGETS = {"throughput_rps": 1000, "submit_p50_ms": 5, "submit_p99_ms": 30, "overhead_p50_ms": 25,
           "overhead_p99_ms": 100, "sse_rss_mib": 1024}


# -- a lean HTTP/1.1 client over asyncio streams ---------------------------------------------


class Conn:
    """One keep-alive connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls) -> Conn:
        return cls(*await asyncio.open_connection("127.0.0.1", PORT))

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return status, await self.reader.readexactly(length) if length else b""

    def close(self) -> None:
        self.writer.close()


def submit_body(i: int) -> bytes:
    return json.dumps({"input": {"value": i}}).encode()


async def overhead(headers: dict[str, str], n: int) -> tuple[list[float], list[float]]:
    """Sequential submit → succeeded (Prefer: wait): what a request costs beyond the model."""
    conn = await Conn.open()
    total, queue = [], []
    wait = {**headers, "Prefer": "wait=30"}
    for i in range(n):
        t0 = time.perf_counter()
        status, body = await conn.request("POST", f"/v1/models/{MODEL}/requests", wait, submit_body(i))
        total.append((time.perf_counter() - t0) * 1000)
        env = json.loads(body)
        assert status == 201 and env["status"] == "succeeded", body[:300]
        queue.append(float(env["metrics"]["queue_ms"]))
    conn.close()
    return total, queue


async def paced(headers: dict[str, str], rate: float, seconds: float, conns: int = 32) -> list[float]:
    """Open-loop submits at a fixed rate; the latency of each."""
    pool: asyncio.Queue[Conn] = asyncio.Queue()
    for _ in range(conns):
        pool.put_nowait(await Conn.open())
    latencies: list[float] = []
    errors = 0

    async def one(i: int) -> None:
        nonlocal errors
        conn = await pool.get()
        t0 = time.perf_counter()
        status, _ = await conn.request("POST", f"/v1/models/{MODEL}/requests", headers, submit_body(i))
        latencies.append((time.perf_counter() - t0) * 1000)
        errors += status != 201
        pool.put_nowait(conn)

    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    while not pool.empty():
        pool.get_nowait().close()
    assert errors == 0, f"{errors} submits failed"
    return latencies


async def closed_loop(headers: dict[str, str], seconds: float, conns: int) -> tuple[int, float, int]:
    """As many submits as `conns` connections can push for `seconds`; (accepted, elapsed, errors)."""
    done = errors = 0
    stop = time.perf_counter() + seconds

    async def client(k: int) -> None:
        nonlocal done, errors
        conn = await Conn.open()
        i = 0
        while time.perf_counter() < stop:
            status, _ = await conn.request("POST", f"/v1/models/{MODEL}/requests", headers, submit_body(k * 10**6 + i))
            i += 1
            if status == 201:
                done += 1
            else:
                errors += 1
        conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(conns)))
    return done, time.perf_counter() - t0, errors


async def open_streams(headers: dict[str, str], n: int) -> list[asyncio.StreamWriter]:
    """Submit `n` requests (no worker runs them) and hold one SSE stream open on each."""
    conn = await Conn.open()
    ids = []
    for i in range(n):
        status, body = await conn.request("POST", f"/v1/models/{MODEL}/requests", headers, submit_body(i))
        assert status == 201, body[:200]
        ids.append(json.loads(body)["id"])
    conn.close()
    writers = []

    async def stream(request_id: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
        auth = headers["Authorization"]
        writer.write(f"GET /v1/requests/{request_id}/events HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n".encode())
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"stream refused: {status!r} {(await reader.read(500))!r}")
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        await reader.readuntil(b"event: status")  # the replayed `queued` event: the stream is live
        writers.append(writer)

    for start in range(0, n, 100):
        await asyncio.gather(*(stream(r) for r in ids[start:start + 100]))
    return writers


def queued() -> int:
    """Requests queued now (the worker's backlog)."""
    from sqlalchemy import func, select

    from gateway.models import Request
    from kit.db import session_scope

    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(Request).where(Request.status == "queued")) or 0


async def drain(limit_s: float) -> float | None:
    """Wait until the worker has run every queued request; seconds taken (None past the limit)."""
    t0 = time.perf_counter()
    while await asyncio.to_thread(queued):
        if time.perf_counter() - t0 > limit_s:
            return None
        await asyncio.sleep(0.5)
    return time.perf_counter() - t0


def rss_mib(pids: list[int]) -> float:
    """Resident memory of processes and their children, MiB."""
    total = 0
    seen = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            todo.extend(int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1024


def start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ), stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def wait_healthy() -> None:
    import httpx

    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{PORT}/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit((DATA / "stack.log").read_text()[-5000:])
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--worker-threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--overhead-requests", type=int, default=500)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--drain-s", type=float, default=180, help="how long the worker may take to run its backlog")
    parser.add_argument("--settle-s", type=float, default=15, help="pause after the worker stops")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    console = Console()
    import redis

    redis.Redis.from_url(os.environ["MEDIAGATE_REDIS_URL"]).flushdb()
    fresh_database("mediagate_load")
    headers = {"Authorization": f"Key {seed_noop(DATA, concurrency=8, unlimited=True)}",
               "Content-Type": "application/json"}
    log = DATA / "stack.log"
    api_cmd = api_command(sys.executable, PORT, args.api_workers)
    worker_cmd = [sys.executable, "-m", "gateway.cli", "worker", "--concurrency", str(args.worker_threads)]
    api, worker = start(api_cmd, log), start(worker_cmd, log)
    results: dict = {}
    try:
        wait_healthy()

        async def run_load() -> None:
            warm, _ = await overhead(headers, 30)  # cold start of the replica, connection pools
            total, queue = await overhead(headers, args.overhead_requests)
            results["overhead_ms"], results["overhead_queue_ms"] = summary(total), summary(queue)
            results["load_average"] = {"overhead": os.getloadavg()[0]}
            # At a rate the worker keeps up with on these cores, the latency is the gateway's.
            results["submit_at_50_ms"] = summary(await paced(headers, 50, args.seconds))
            results["load_average"]["submit_at_50"] = os.getloadavg()[0]
            # 200 req/s is more than the worker, sharing the two cores with the API, runs: its
            # backlog grows and the submits compete with it for the cores.
            results["submit_at_200_with_worker_ms"] = summary(await paced(headers, 200, args.seconds))
            results["queued_after_200_with_worker"] = queued()
            results["load_average"]["submit_at_200_with_worker"] = os.getloadavg()[0]
            def snapshots() -> dict[str, dict[int, float]]:
                return {"API (uvicorn)": cpu_snapshot(descendants(api.pid)),
                        "Celery worker + runner": cpu_snapshot(descendants(worker.pid)),
                        "PostgreSQL": cpu_snapshot(match="postgres"), "Redis": cpu_snapshot(match="redis-server"),
                        "load generator": cpu_snapshot({os.getpid()})}

            async def throughput() -> dict:
                before = snapshots()
                done, elapsed, errors = await closed_loop(headers, args.seconds, args.connections)
                after = snapshots()
                cpu = {name: cpu_used(before[name], after[name]) * 1000 / max(done, 1) for name in before}
                return {"accepted": done, "seconds": elapsed, "rps": done / elapsed, "errors": errors,
                        "connections": args.connections, "cpu_ms_per_submit": cpu, "load_average": os.getloadavg()}

            # The whole stack on these two cores: the worker runs what is submitted meanwhile.
            results["throughput_with_worker"] = await throughput()
            results["drained_s"] = await drain(args.drain_s)
            # The API tier as deployed, GPU workers on machines of their own: the worker is
            # stopped, so what is submitted stays queued.
            stop(worker)
            # Let the box settle after the drain (autovacuum of the thousands of rows it
            # updated, the worker's exit): measured at once, the p99 read 36–42 ms, not 14.
            await asyncio.sleep(args.settle_s)
            results["submit_at_200_ms"] = summary(await paced(headers, 200, args.seconds))
            results["load_average"]["submit_at_200"] = os.getloadavg()[0]
            results["throughput"] = await throughput()

        asyncio.run(run_load())  # it ends with the worker stopped: requests stay queued, streams open
        base_rss = rss_mib([api.pid])

        async def run_streams() -> None:
            writers = await open_streams(headers, args.streams)
            await asyncio.sleep(2)
            results["sse"] = {"streams": len(writers), "api_rss_mib": rss_mib([api.pid]),
                              "api_rss_before_mib": base_rss}
            for w in writers:
                w.close()

        asyncio.run(run_streams())
    finally:
        stop(api)
        stop(worker)
    report(console, args, results)


def report(console: Console, args: argparse.Namespace, r: dict) -> None:
    o, s, t, sse = r["overhead_ms"], r["submit_at_200_ms"], r["throughput"], r["sse"]
    checks = {
        "throughput": t["rps"] >= TARGETS["throughput_rps"],
        "submit": s["p50"] <= TARGETS["submit_p50_ms"] and s["p99"] <= TARGETS["submit_p99_ms"],
        "overhead": o["p50"] <= TARGETS["overhead_p50_ms"] and o["p99"] <= TARGETS["overhead_p99_ms"],
        "sse": sse["api_rss_mib"] <= TARGETS["sse_rss_mib"],
    }
    table = Table(title=f"Customer API under load ({machine()}, {args.api_workers} API processes)")
    for col in ("measure", "result", "target", "met"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    table.add_row("sustained submit throughput, API tier (worker off this box)", f"{t['rps']:.0f} req/s",
                  "≥ 1,000 req/s", _yes(checks["throughput"]))
    w = r["throughput_with_worker"]
    table.add_row("  same, with the worker running every request on these cores", f"{w['rps']:.0f} req/s", "", "")
    table.add_row("submit latency at 200 req/s, API tier, p50 / p99", f"{s['p50']:.1f} / {s['p99']:.1f} ms",
                  "≤ 5 / ≤ 30 ms", _yes(checks["submit"]))
    busy = r["submit_at_200_with_worker_ms"]
    table.add_row(f"  same, worker on these cores (falls behind: {r['queued_after_200_with_worker']} queued after)",
                  f"{busy['p50']:.1f} / {busy['p99']:.1f} ms", "", "")
    light = r["submit_at_50_ms"]
    table.add_row("  submit latency at 50 req/s, worker on these cores, p50 / p99",
                  f"{light['p50']:.1f} / {light['p99']:.1f} ms", "", "")
    table.add_row("submit → succeeded, no-op model, p50 / p99", f"{o['p50']:.1f} / {o['p99']:.1f} ms",
                  "≤ 25 / ≤ 100 ms", _yes(checks["overhead"]))
    table.add_row(f"API RSS with {sse['streams']} open SSE streams", f"{sse['api_rss_mib']:.0f} MiB "
                  f"(idle {sse['api_rss_before_mib']:.0f})", "≤ 1,024 MiB", _yes(checks["sse"]))
    console.print(table)
    for label, run in (("API tier", t), ("with the worker", w)):
        console.print(f"CPU per accepted submit, {label} (ms): " + ", ".join(
            f"{k} {v:.2f}" for k, v in run["cpu_ms_per_submit"].items())
            + f"; load average {run['load_average'][0]:.1f} on 2 cores (other work shares this machine)")
    console.print("load average (1 min) at the end of each phase: " + ", ".join(
        f"{k} {v:.1f}" for k, v in r["load_average"].items()))
    path = write_json("gateway_load", {"date": dt.date.today().isoformat(), "machine": machine(),
                                       "args": vars(args), "targets": TARGETS, "met": checks, **r})
    chart(path, r)
    console.print(f"wrote {path}")


def _yes(ok: bool) -> str:
    return "[green]yes[/]" if ok else "[red]no[/]"


def chart(path: Path, r: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    names = ["p50", "p90", "p99"]
    for label, key in (("submit at 200 req/s, API tier", "submit_at_200_ms"),
                       ("submit at 200 req/s, worker on the cores", "submit_at_200_with_worker_ms"),
                       ("submit → succeeded", "overhead_ms")):
        axes[0].plot(names, [r[key][n] for n in names], marker="o", label=label)
    axes[0].set_ylabel("ms")
    axes[0].set_title("latency percentiles")
    axes[0].legend()
    axes[1].bar(["API tier", "with worker", "target"],
                [r["throughput"]["rps"], r["throughput_with_worker"]["rps"], TARGETS["throughput_rps"]],
                color=["tab:blue", "tab:cyan", "tab:gray"])
    axes[1].set_ylabel("req/s")
    axes[1].set_title("sustained submits")
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=110)


if __name__ == "__main__":
    main()
