"""The `mediagate` command line: serve, worker, beat, autoscale, migrate, demo, up, report, package."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from billing.cli import app as billing_app

app = typer.Typer(help="mediagate: hosting gateway for generative-media models.", no_args_is_help=True)
report_app = typer.Typer(help="Finance reports.", no_args_is_help=True)
app.add_typer(report_app, name="report")
app.add_typer(billing_app, name="billing")
console = Console()


def _queues(pools: str) -> str:
    from kit.tasks import DEFAULT_QUEUE, pool_queue

    return ",".join([DEFAULT_QUEUE] + [pool_queue(p.strip()) for p in pools.split(",") if p.strip()])


@app.command()
def migrate(check: bool = typer.Option(False, "--check", help="Only tell whether the database is at "
                                       "the latest migration (exit 1 if not); change nothing")) -> None:
    """Bring the database schema up to date."""
    from kit import migrate as migrations
    from kit.settings import get_settings

    settings = get_settings()
    if check:
        from kit.db import DatabaseNotMigrated, assert_migrated

        try:
            assert_migrated()
        except DatabaseNotMigrated as exc:
            console.print(f"[yellow]{exc}[/]")
            raise typer.Exit(1) from None
        console.print("[green]database is at the latest migration[/]")
        return
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(settings.db_url)
    console.print(f"[green]database is at the latest migration[/] ({settings.db_url.split('@')[-1]})")


@app.command()
def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Run the API (customer, partner and admin routes)."""
    import uvicorn

    uvicorn.run("gateway.app:create_app", factory=True, host=host, port=port, workers=workers,
                log_level="info", server_header=False)


@app.command()
def worker(pools: str = typer.Option("shared", help="SLA pools to serve, comma separated"),
           concurrency: int = typer.Option(0, help="Requests at once (default from settings)")) -> None:
    """Run a Celery worker that executes requests on model replicas."""
    from gateway.worker import app as celery_app
    from kit.settings import get_settings

    threads = concurrency or get_settings().worker_concurrency
    os.environ["MEDIAGATE_WORKER_POOLS"] = pools  # the replica keeper warms these pools' deployments
    celery_app.worker_main(["worker", "--pool", "threads", "--concurrency", str(threads),
                            "--queues", _queues(pools), "--loglevel", "INFO", "--without-gossip",
                            "--without-mingle", "--without-heartbeat"])


@app.command()
def demo(base_url: str = "http://127.0.0.1:8000") -> None:
    """Seed a demo partner, model and customer key, and print the curl line to call it."""
    from gateway.demo import seed
    from kit.db import assert_migrated, session_scope

    assert_migrated()
    with session_scope() as session:
        d = seed(session)
    console.print(f"[bold]demo model[/] {d.model}\n[bold]customer key[/] {d.customer_key}\n"
                  f"[bold]partner key[/] {d.partner_key}\n\n[bold]call it:[/]")
    print(d.curl(base_url))


@app.command()
def up(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Migrate, seed the demo, and run the API with a worker: the whole service on one machine."""
    os.environ.setdefault("MEDIAGATE_PUBLIC_URL", f"http://{host}:{port}")
    migrate(check=False)
    demo(base_url=f"http://{host}:{port}")
    env = dict(os.environ)
    procs = [
        subprocess.Popen([sys.executable, "-m", "gateway.cli", "worker"], env=env),
        subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--host", host,
                          "--port", str(port)], env=env),
    ]
    console.print(f"[green]mediagate is up[/] on http://{host}:{port} (docs at /docs); Ctrl-C stops it")
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


@app.command()
def beat() -> None:
    """Run Celery beat: the periodic tasks (billing's period close)."""
    from gateway.worker import app as celery_app
    from kit.settings import get_settings

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    celery_app.start(["beat", "--loglevel", "INFO",
                      "--schedule", str(settings.data_dir / "celerybeat-schedule")])


@app.command()
def autoscale(
    pools: str = typer.Option("shared", help="SLA pools to scale, comma separated"),
    interval: float = typer.Option(15.0, help="Seconds between rounds"),
    window: float = typer.Option(60.0, help="Seconds of history for run time and start rate"),
    min_replicas: int = typer.Option(1, help="Fewest workers per pool"),
    max_replicas: int = typer.Option(10, help="Most workers per pool"),
    concurrency: int = typer.Option(0, help="Requests one worker runs at once (default from settings)"),
    cooldown: float = typer.Option(300.0, help="Seconds a lower count must hold before scaling down"),
    target_ms: int = typer.Option(2000, help="Queue-wait target of pools without a pool row"),
    config: Path | None = typer.Option(None, help="JSON of per-pool overrides, e.g. "
                                       '{"gold": {"min_replicas": 2, "max_replicas": 40}}'),
    output: Path | None = typer.Option(None, help="Write the desired counts to this JSON file"),
    command: str | None = typer.Option(None, help="Run on each change, e.g. 'kubectl scale "
                                       "deployment/mediagate-worker-{pool} --replicas={replicas}'"),
    kubernetes: str | None = typer.Option(None, help="Scale these Deployments from inside the cluster, "
                                          "e.g. 'mediagate-worker-{pool}'"),
    once: bool = typer.Option(False, help="One round, then exit"),
) -> None:
    """Compute each pool's desired worker replicas from its queue and SLA, in a loop."""
    import datetime as dt

    from gateway import autoscale as scaling
    from kit.db import assert_migrated
    from kit.settings import get_settings

    assert_migrated()
    names = [p.strip() for p in pools.split(",") if p.strip()]
    overrides = json.loads(config.read_text()) if config else {}
    base = scaling.PoolPolicy(pool="*", min_replicas=min_replicas, max_replicas=max_replicas,
                              concurrency=concurrency or get_settings().worker_concurrency,
                              target_queue_s=target_ms / 1000, cooldown_s=cooldown)
    policies = scaling.policies_from(names, base, overrides, scaling.pool_targets(names))
    current = scaling.read_state(output) if output else {}
    apply = scaling.command_applier(command) if command else None
    if kubernetes:
        cluster = scaling.KubernetesScale(kubernetes)
        apply = cluster.apply
        current = {name: n for name in names if (n := cluster.replicas(name)) is not None}
    scaler = scaling.Autoscaler(policies, now=time.monotonic(), current=current)
    applied: set[str] = set()
    while True:
        decisions = [scaler.decide(name, scaling.observe(name, window_s=window), now=time.monotonic())
                     for name in names]
        for d in decisions:
            # The first round applies too: the cluster may not be where the state file says.
            if apply and (d.desired != d.current or d.pool not in applied):
                if apply(d):
                    applied.add(d.pool)
                else:
                    scaler.set_current(d.pool, d.current)
        if output:
            scaling.write_state(output, decisions, at=dt.datetime.now(dt.UTC).isoformat())
        _print_decisions(decisions)
        if once:
            return
        time.sleep(interval)


def _print_decisions(decisions: list) -> None:
    table = Table(title=time.strftime("pool replicas, %H:%M:%S"))
    for col in ("pool", "queued", "running", "run s", "started/s", "now", "recommended", "desired", "why"):
        table.add_column(col, justify="left" if col in ("pool", "why") else "right")
    for d in decisions:
        run_s = "-" if d.load.run_s is None else f"{d.load.run_s:.2f}"
        table.add_row(d.pool, str(d.load.queued), str(d.load.running), run_s, f"{d.load.started_per_s:.2f}",
                      str(d.current), str(d.recommended), str(d.desired), d.reason)
    console.print(table)


@report_app.command("revenue-share")
def revenue_share(period: str = typer.Option(..., help="Billing period, e.g. 2026-11"),
                  format: str = typer.Option("table", help="table, json or csv"),
                  output: Path | None = typer.Option(None, help="Write to a file instead of stdout")) -> None:
    """Revenue by partner and model for a period, with the platform / licensor / partner split."""
    from billing.service import REPORT_COLUMNS, revenue_share_report
    from kit.db import session_scope

    with session_scope() as session:
        rows = revenue_share_report(session, period)
    if format == "json":
        text = json.dumps({"period": period, "rows": rows}, indent=2)
    elif format == "csv":
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=REPORT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    elif format == "table":
        table = Table(title=f"Revenue share, {period} (micro-units)")
        for col in REPORT_COLUMNS:
            table.add_column(col, justify="right" if col.endswith(("micros", "requests")) else "left")
        for row in rows:
            table.add_row(*(str(row[c]) for c in REPORT_COLUMNS))
        console.print(table)
        return
    else:
        raise typer.BadParameter("format must be table, json or csv")
    if output:
        output.write_text(text)
        console.print(f"wrote {output}")
    else:
        print(text)


@app.command()
def package(directory: Path = typer.Argument(..., exists=True, file_okay=False),
            output: Path | None = typer.Option(None, "-o", "--output",
                                               help="Archive to write (default: DIR.oci.tar)")) -> None:
    """Build a model package (OCI image archive) from a model directory or a Cog project."""
    from partners.packaging import package_command

    package_command(directory, output, console=console)


if __name__ == "__main__":
    app()
