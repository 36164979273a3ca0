"""Redis and PostgreSQL restarted under load, on servers of the test's own.

The API runs as a uvicorn process and the worker as a Celery process, both on a private
PostgreSQL and a private Redis, while clients submit requests as a well-behaved client
does (an `Idempotency-Key`, retrying 503s after `Retry-After`). Redis restarts without
persistence, so every queued message, event stream and lock is gone; PostgreSQL restarts
and refuses connections meanwhile. Neither the API nor the worker is restarted. After each:
every accepted request is final, usage equals succeeded requests, the ledger balances, and
no webhook id carries two events.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Engine

from gateway.models import FINAL_STATUSES, Request
from tests.e2e.api_support import STEPPER_PRICING, LiveAPI, Receiver, sse_events
from tests.e2e.conftest import World
from tests.faults.invariants import assert_invariants
from tests.faults.private_services import PrivatePostgres, PrivateRedis
from tests.support import FIXTURE_MODELS, WorkerProcess

pytestmark = pytest.mark.timeout(240)
# A claim cut off by the database outage leaves its request queued with no message: the
# stale-request rule sends it again after 5 s. Messages Redis forgot are sent at once.
# A run cut off by it is taken up again once its 2 s lease lapses.
STACK_ENV = {"MEDIAGATE_GATEWAY_REQUEUE_STALE_S": "5", "MEDIAGATE_GATEWAY_LEASE_S": "2",
             "MEDIAGATE_GATEWAY_LEASE_RENEW_S": "0.4", "MEDIAGATE_GATEWAY_SWEEP_INTERVAL_S": "0.2",
             "MEDIAGATE_RUNNER_PREDICT_TIMEOUT_S": "30"}


@dataclass
class Stack:
    pg: PrivatePostgres
    redis: PrivateRedis
    api: LiveAPI
    worker: WorkerProcess
    engine: Engine
    world: World
    receiver: Receiver

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api.url, timeout=30)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from kit.migrate import upgrade

    tmp = tmp_path_factory.mktemp("infra")
    with PrivatePostgres() as pg, PrivateRedis() as redis_server:
        env = {"MEDIAGATE_DATABASE_URL": pg.url, "MEDIAGATE_REDIS_URL": redis_server.url(0),
               "MEDIAGATE_BROKER_URL": redis_server.url(0), "MEDIAGATE_DATA_DIR": str(tmp / "data"), **STACK_ENV}
        upgrade(pg.url)
        engine = create_engine(pg.url, pool_pre_ping=True)  # it outlives the restart, as the app does
        api = LiveAPI(env=env)
        worker = None
        receiver = Receiver()
        try:
            worker = WorkerProcess(pools="shared", concurrency=3, env=env)
            with httpx.Client(base_url=api.url, timeout=60) as client:
                world = World(client, tmp, model_dir=FIXTURE_MODELS / "stepper", slug="stepper",  # type: ignore[arg-type]
                              pricing=STEPPER_PRICING, max_replicas=2)
            yield Stack(pg, redis_server, api, worker, engine, world, receiver)
        finally:
            receiver.close()
            if worker is not None:
                worker.stop()
            api.stop()
            engine.dispose()


@dataclass
class Load:
    """Clients submitting requests until stopped, as a careful client would."""

    stack: Stack
    clients: int = 3
    accepted: list[str] = field(default_factory=list)
    answers: Counter[int] = field(default_factory=Counter)
    refusals: list[dict[str, Any]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Load:
        for _ in range(self.clients):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _run(self) -> None:
        world = self.stack.world
        with self.stack.client() as client:
            while not self.stop.is_set():
                self._submit_one(client, world)
                time.sleep(0.05)

    def _submit_one(self, client: httpx.Client, world: World) -> None:
        key = uuid.uuid4().hex
        body = {"input": {"steps": 2, "delay": 0.01}, "webhook": self.stack.receiver.url}
        for _ in range(100):  # the same key until it is accepted: never a second request
            try:
                r = client.post(f"/v1/models/{world.model}/requests", json=body,
                                headers={**world.customer, "Idempotency-Key": key})
            except httpx.TransportError:
                time.sleep(0.2)
                continue
            with self.lock:
                self.answers[r.status_code] += 1
            if r.status_code in (200, 201):
                with self.lock:
                    self.accepted.append(r.json()["id"])
                return
            with self.lock:
                self.refusals.append({"status": r.status_code, "type": r.headers.get("content-type"),
                                      "retry_after": r.headers.get("retry-after"), "body": r.text[:300]})
            time.sleep(float(r.headers.get("retry-after", "0.5")))
        raise AssertionError("a request was never accepted")

    def wait_accepted(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.accepted) < count:
            assert time.monotonic() < deadline, f"only {len(self.accepted)} requests accepted"
            time.sleep(0.05)


def _statuses(engine: Engine, ids: list[str]) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(conn.scalars(select(Request.status).where(Request.id.in_(ids))))


def _wait_final(engine: Engine, ids: list[str], timeout: float) -> Counter[str]:
    deadline = time.monotonic() + timeout
    while True:
        statuses = _statuses(engine, ids)
        if sum(n for s, n in statuses.items() if s in FINAL_STATUSES) == len(ids):
            return statuses
        assert time.monotonic() < deadline, f"requests not final: {statuses}"
        time.sleep(0.2)


def _received(receiver: Receiver) -> list[tuple[str, bytes]]:
    with receiver.lock:
        return [(c["headers"]["webhook-id"], c["body"]) for c in receiver.calls]


def _webhooks_settled(stack: Stack, ids: list[str], timeout: float = 60) -> None:
    """Each request's `request.succeeded` reached the receiver (its retries may repeat it)."""
    import json

    deadline = time.monotonic() + timeout
    while True:
        told = {json.loads(b)["data"]["id"] for _, b in _received(stack.receiver)}
        missing = set(ids) - told
        if not missing:
            return
        assert time.monotonic() < deadline, f"{len(missing)} requests' webhooks never arrived"
        time.sleep(0.2)


def _follow_events(stack: Stack, request_id: str, out: list[dict[str, Any]]) -> threading.Thread:
    def run() -> None:
        headers = {**stack.world.customer, "Accept": "text/event-stream"}
        with stack.client() as client, client.stream("GET", f"/v1/requests/{request_id}/events",
                                                      headers=headers, timeout=60) as r:
            for event in sse_events(r.iter_lines()):
                out.append(event)
                if event["event"] == "done":
                    return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _running(engine: Engine, request_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _statuses(engine, [request_id]) != Counter({"running": 1}):
        assert time.monotonic() < deadline, f"request {request_id} never started"
        time.sleep(0.1)


def test_redis_restart_under_load_loses_no_request(stack: Stack) -> None:
    world = stack.world
    with stack.client() as client:
        submit = f"/v1/models/{world.model}/requests"
        slow = client.post(submit, headers=world.customer, json={"input": {"steps": 60, "delay": 0.1}}).json()
        doomed = client.post(submit, headers=world.customer, json={"input": {"steps": 150, "delay": 0.1}}).json()
        followed: list[dict[str, Any]] = []
        follower = _follow_events(stack, slow["id"], followed)
        _running(stack.engine, doomed["id"])
        with Load(stack) as load:
            load.wait_accepted(20)
            stack.redis.stop()  # every queued message, stream, bucket and lock is gone
            at = len(load.accepted)
            # Without Redis: a cancel still reaches the worker (through the database), a long
            # poll still answers, and rate limits step aside rather than refuse.
            canceled = client.post(f"/v1/requests/{doomed['id']}/cancel", headers=world.customer)
            assert canceled.status_code == 200, canceled.text
            polled = client.get(f"/v1/requests/{slow['id']}", headers={**world.customer, "Prefer": "wait=1"})
            assert polled.status_code == 200 and polled.json()["id"] == slow["id"]
            assert "ratelimit-limit" not in polled.headers
            load.wait_accepted(at + 10)  # accepted while Redis is away
            stack.redis.start()
            load.wait_accepted(len(load.accepted) + 20)
        accepted = load.accepted + [slow["id"]]
        statuses = _wait_final(stack.engine, accepted + [doomed["id"]], timeout=90)
        assert "ratelimit-limit" in client.get("/v1/models", headers=world.customer).headers  # limits are back
    assert statuses == Counter({"succeeded": len(accepted), "canceled": 1}), statuses
    assert not [a for a in load.refusals if a["status"] != 429], load.refusals  # Redis away is no error
    # Found by the broker-loss check on the next tick, not minutes later by the stale rule.
    resent = re.findall(r"the broker lost its messages \(restarted or flushed\): (\d+) queued", stack.worker.output())
    assert resent and int(resent[-1]) >= 1, "the lost messages were not sent again by the broker-loss check"
    follower.join(timeout=30)
    assert followed and followed[-1]["event"] == "done" and followed[-1]["data"]["status"] == "succeeded"
    _webhooks_settled(stack, load.accepted)
    assert_invariants(stack.engine, received_webhooks=_received(stack.receiver), settle_s=10)


def test_postgres_restart_under_load_answers_503_then_recovers_by_itself(stack: Stack) -> None:
    world = stack.world
    api_pid = stack.api.process.pid
    with stack.client() as client:
        before = client.get("/v1/models", headers=world.customer)
        assert before.status_code == 200
        with Load(stack) as load:
            load.wait_accepted(20)
            stack.pg.stop()
            try:
                down = client.get(f"/v1/requests/{load.accepted[0]}", headers=world.customer)
                assert down.status_code == 503, down.text
                assert down.headers["content-type"].startswith("application/problem+json")
                assert int(down.headers["retry-after"]) >= 1
                assert down.json()["type"].endswith("/database-unavailable")
                time.sleep(2.0)
            finally:
                stack.pg.start()
            at = len(load.accepted)
            load.wait_accepted(at + 20, timeout=60)  # the same API process serves again
        accepted = list(load.accepted)
        statuses = _wait_final(stack.engine, accepted, timeout=120)
    assert stack.api.process.poll() is None and stack.api.process.pid == api_pid
    assert statuses["succeeded"] >= len(accepted) - 3, statuses  # a run cut off by the outage may fail
    refused = [a for a in load.refusals if a["status"] != 503 or not a["retry_after"]
               or not (a["type"] or "").startswith("application/problem+json")]
    assert not refused, refused
    assert load.answers[503] >= 1, load.answers
    _webhooks_settled(stack, [rid for rid, s in _final_of(stack.engine, accepted) if s == "succeeded"])
    assert_invariants(stack.engine, received_webhooks=_received(stack.receiver), settle_s=10)


def _final_of(engine: Engine, ids: list[str]) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [(rid, status) for rid, status in conn.execute(select(Request.id, Request.status).where(Request.id.in_(ids)))]


def test_private_services_restart_in_place(tmp_path: Path) -> None:
    """The servers the fault tests break come back on the same port with what they kept."""
    import redis
    from sqlalchemy import text

    with PrivatePostgres() as pg, PrivateRedis() as redis_server:
        engine = create_engine(pg.url, pool_pre_ping=True)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE kept (x int)"))
            conn.execute(text("INSERT INTO kept VALUES (1)"))
        pg.restart()
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT x FROM kept")) == 1
        engine.dispose()
        client = redis.Redis.from_url(redis_server.url())
        client.set("k", "v")
        redis_server.restart()
        assert client.get("k") is None  # no persistence: a restart loses everything
        client.close()
        root = (pg.root, redis_server.root)
    assert not any(p.exists() for p in root)


def test_only_a_database_that_is_away_is_unavailable() -> None:
    """A lost or refused connection is a 503 to retry; a deadlock or a bad query stays a bug."""
    import psycopg
    from sqlalchemy import exc as sa_exc

    from kit.db import database_unreachable

    def wrapped(orig: Exception, cls: type[sa_exc.DBAPIError] = sa_exc.OperationalError) -> sa_exc.DBAPIError:
        return cls("SELECT 1", {}, orig)

    assert database_unreachable(wrapped(psycopg.OperationalError("connection refused")))
    assert database_unreachable(wrapped(psycopg.errors.AdminShutdown("terminating connection")))
    assert database_unreachable(wrapped(psycopg.errors.CannotConnectNow("the database system is starting up")))
    assert database_unreachable(sa_exc.TimeoutError("QueuePool limit reached"))
    assert not database_unreachable(wrapped(psycopg.errors.DeadlockDetected("deadlock detected")))
    assert not database_unreachable(wrapped(psycopg.errors.UndefinedTable("no such table"),
                                            sa_exc.ProgrammingError))
    assert not database_unreachable(ValueError("not a database error"))
