"""mediagate across hosts: workers on two hosts and a second API on a third, each in a network
namespace of the test's own, reaching PostgreSQL and Redis over a virtual network.

This machine is the database host (a private PostgreSQL and Redis listen on the bridge) and
runs the first API; `host-a` and `host-b` each run a Celery worker; `host-api` runs the
second API. Which host ran a request is the host name in its lease (`lease_owner`). Cutting
`host-a`'s cable mid-request leaves its requests held by a worker nobody can reach: their
leases lapse and `host-b` runs them to the end, each charged once, also after `host-a`
comes back and tries to finish what it had.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Engine

from gateway.models import FINAL_STATUSES, Request
from tests.e2e.conftest import World
from tests.faults.invariants import assert_invariants
from tests.faults.private_services import PrivatePostgres, PrivateRedis
from tests.multihost.hosts import ApiProcess, Host, Network
from tests.support import FIXTURE_MODELS, WorkerProcess

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nsenter"),
                       reason="network namespaces need root and util-linux"),
]

# Leases lapse 2 s after a worker stops renewing; the housekeeping tick looks every 0.2 s.
TIMINGS = {
    "MEDIAGATE_GATEWAY_SWEEP_INTERVAL_S": "0.2",
    "MEDIAGATE_GATEWAY_REQUEUE_DELAY_S": "0.1",
    "MEDIAGATE_GATEWAY_LEASE_S": "2",
    "MEDIAGATE_GATEWAY_LEASE_RENEW_S": "0.4",
    "MEDIAGATE_GATEWAY_RETRY_DELAY_S": "0.2",
    "MEDIAGATE_GATEWAY_REQUEUE_STALE_S": "5",
    "MEDIAGATE_GATEWAY_MAX_ATTEMPTS": "3",
    "MEDIAGATE_RUNNER_PREDICT_TIMEOUT_S": "30",
}
PRICING = {"tier": "open", "unit": "requests", "unit_price_micros": 1_000}


@dataclass
class Cluster:
    network: Network
    hosts: dict[str, Host]
    apis: list[ApiProcess]
    workers: dict[str, WorkerProcess]
    engine: Engine
    world: World


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from kit.migrate import upgrade

    tmp = tmp_path_factory.mktemp("multihost")
    with Network() as network:
        hosts = {name: network.add_host(name) for name in ("host-a", "host-b", "host-api")}
        with PrivatePostgres(network.gateway, str(network.subnet)) as pg, PrivateRedis(network.gateway) as redis:
            env = {"MEDIAGATE_DATABASE_URL": pg.url, "MEDIAGATE_REDIS_URL": redis.url(0),
                   "MEDIAGATE_BROKER_URL": redis.url(0), "MEDIAGATE_DATA_DIR": str(tmp / "data"), **TIMINGS}
            upgrade(pg.url)
            engine = create_engine(pg.url)
            apis: list[ApiProcess] = []
            workers: dict[str, WorkerProcess] = {}
            try:
                apis.append(ApiProcess(env, log_dir=tmp))
                apis.append(ApiProcess(env, host=hosts["host-api"], log_dir=tmp))
                workers.update(_start_workers(env, hosts["host-a"], hosts["host-b"]))
                with httpx.Client(base_url=apis[0].url, timeout=60) as client:
                    world = World(client, tmp, model_dir=FIXTURE_MODELS / "stepper", slug="stepper",  # type: ignore[arg-type]
                                  pricing=PRICING, max_replicas=2)
                yield Cluster(network, hosts, apis, workers, engine, world)
            finally:
                for host in hosts.values():
                    host.heal()
                # Side by side: a worker that was cut off may take its full grace period.
                stoppers = [threading.Thread(target=p.stop) for p in [*workers.values(), *apis]]
                for t in stoppers:
                    t.start()
                for t in stoppers:
                    t.join()
                engine.dispose()


def _start_workers(env: dict[str, str], *hosts: Host) -> dict[str, WorkerProcess]:
    """One worker per host, started side by side (each takes seconds to come up)."""
    started: dict[str, WorkerProcess] = {}
    errors: list[BaseException] = []

    def start(host: Host) -> None:
        try:
            started[host.name] = WorkerProcess(pools="shared", concurrency=2, env=env, prefix=host.prefix())
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others started
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(h,)) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for worker in started.values():
            worker.stop()
        raise errors[0]
    return started


def submit(cluster: Cluster, count: int, *, steps: int, delay: float) -> list[str]:
    """Submit through both APIs in turn; the ids accepted."""
    ids = []
    for i in range(count):
        api = cluster.apis[i % len(cluster.apis)]
        r = httpx.post(f"{api.url}/v1/models/{cluster.world.model}/requests", timeout=30,
                       json={"input": {"steps": steps, "delay": delay}}, headers=cluster.world.customer)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return ids


def rows(engine: Engine, ids: list[str]) -> dict[str, Request]:
    from sqlalchemy.orm import Session

    with Session(engine, expire_on_commit=False) as session:
        return {r.id: r for r in session.scalars(select(Request).where(Request.id.in_(ids)))}


def wait_final(engine: Engine, ids: list[str], timeout: float) -> dict[str, Request]:
    deadline = time.monotonic() + timeout
    while True:
        now = rows(engine, ids)
        if all(r.status in FINAL_STATUSES for r in now.values()):
            return now
        if time.monotonic() > deadline:
            pytest.fail(f"not final after {timeout} s: {Counter(r.status for r in now.values())}")
        time.sleep(0.2)


def host_of(req: Request) -> str:
    assert req.lease_owner, f"{req.id} carries no lease owner"
    return req.lease_owner.split("/")[0]


def test_requests_through_two_apis_are_served_by_workers_on_two_hosts(cluster: Cluster) -> None:
    ids = submit(cluster, 24, steps=3, delay=0.1)
    done = wait_final(cluster.engine, ids, timeout=90)
    assert Counter(r.status for r in done.values()) == {"succeeded": 24}
    served = Counter(host_of(r) for r in done.values())
    assert set(served) == {"host-a", "host-b"}, served
    # The workers' own sessions came over the virtual network, not loopback.
    with cluster.engine.connect() as conn:
        from sqlalchemy import text

        clients = {row[0] for row in conn.execute(text(
            "SELECT DISTINCT host(client_addr) FROM pg_stat_activity WHERE client_addr IS NOT NULL"))}
    assert {cluster.hosts["host-a"].address, cluster.hosts["host-b"].address} <= clients, clients
    assert_invariants(cluster.engine)


def test_a_host_cut_off_mid_request_leaves_every_request_to_the_other_host(cluster: Cluster) -> None:
    engine, host_a = cluster.engine, cluster.hosts["host-a"]
    first = submit(cluster, 16, steps=10, delay=0.2)  # 2 s each: some are mid-run at the cut

    def held_by_a() -> list[str]:
        return [r.id for r in rows(engine, first).values() if r.status == "running" and host_of(r) == "host-a"]

    deadline = time.monotonic() + 60
    while not held_by_a():
        assert time.monotonic() < deadline, "host-a never took a request"
        time.sleep(0.1)
    host_a.cut()
    cut_at = time.time()
    stranded = held_by_a()  # from here host-a can change nothing in the database
    assert stranded
    later = submit(cluster, 10, steps=2, delay=0.05)  # accepted by both APIs while host-a is gone
    done = wait_final(engine, first + later, timeout=120)
    assert Counter(r.status for r in done.values()) == {"succeeded": 26}
    for rid in stranded:  # the stranded ones ran again, to the end, on host-b
        assert host_of(done[rid]) == "host-b" and done[rid].attempts >= 2, rid
    finished_after_cut = [r for r in done.values() if r.completed_at.timestamp() > cut_at]
    assert finished_after_cut and all(host_of(r) == "host-b" for r in finished_after_cut)
    # host-a comes back and tries to finish what it held: nothing is recorded twice.
    host_a.heal()
    time.sleep(5)
    after = rows(engine, first + later)
    assert all(after[rid].status == "succeeded" and host_of(after[rid]) == "host-b" for rid in stranded)
    assert_invariants(engine)
