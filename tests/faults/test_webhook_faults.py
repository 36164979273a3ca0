"""A webhook receiver that is down, or too slow to answer, for the first attempts.

Real worker, real API, real HTTP: a receiver that refuses connections until every delivery
has failed several times gets each event exactly once, under the id every attempt carried;
a receiver that takes the event but answers too late gets it again under the same id with
the same body, so it can drop the repeat. Every attempt is recorded and visible.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from standardwebhooks import Webhook

from tests.e2e.api_support import STEPPER_PRICING, WORKER_ENV
from tests.e2e.conftest import World
from tests.faults.private_services import free_port
from tests.support import FIXTURE_MODELS, WorkerProcess

pytestmark = pytest.mark.timeout(150)
os.environ["MEDIAGATE_GATEWAY_WEBHOOK_ALLOW_PRIVATE"] = "1"
TIMEOUT_S = 1.0
# Waits of 5 ms, 0.3 s, 1.8 s, 7.2 s, … (the Standard Webhooks schedule, scaled down).
WEBHOOK_ENV = {**WORKER_ENV, "MEDIAGATE_GATEWAY_WEBHOOK_TIMEOUT_S": str(TIMEOUT_S),
               "MEDIAGATE_GATEWAY_WEBHOOK_BACKOFF_SCALE": "0.001"}
FINAL = ("succeeded", "failed", "canceled", "expired", "blocked")


@pytest.fixture(scope="module")
def webhook_worker(engine: Engine) -> Iterator[WorkerProcess]:
    import redis

    from kit.settings import get_settings

    redis.Redis.from_url(get_settings().redis_url).flushdb()
    proc = WorkerProcess(pools="shared", concurrency=3, env=WEBHOOK_ENV)
    yield proc
    proc.stop()


@pytest.fixture
def api(committed: Engine, webhook_worker: WorkerProcess) -> Iterator[TestClient]:
    from gateway.app import create_app

    with TestClient(create_app()) as client:
        yield client


class Receiver:
    """A webhook endpoint on a fixed port that can be down (nothing listening) or slow.

    `slow_first` holds the answer to the first call of each webhook id past the sender's
    timeout; the receiver has the event by then, as a real one would.
    """

    def __init__(self, *, slow_first: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.calls: list[dict[str, Any]] = []
        self.slow_first = slow_first
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    first = all(c["id"] != headers.get("webhook-id") for c in receiver.calls)
                    receiver.calls.append({"id": headers.get("webhook-id"), "headers": headers, "body": body})
                if receiver.slow_first and first:
                    time.sleep(TIMEOUT_S * 2)
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def received(self) -> list[tuple[str, bytes]]:
        """(webhook-id, body) of every call that arrived."""
        with self.lock:
            return [(c["id"], c["body"]) for c in self.calls]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.down()


def _poll(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def _submit(api: TestClient, w: World, url: str, count: int) -> list[str]:
    ids = []
    for i in range(count):
        r = api.post(f"/v1/models/{w.model}/requests", headers=w.customer,
                     json={"input": {"steps": 1 + i % 3, "delay": 0.01}, "webhook": url,
                           "webhook_events": ["started", "completed"]})
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return ids


def _deliveries(api: TestClient, w: World, request_ids: list[str]) -> list[dict[str, Any]]:
    out = []
    for request_id in request_ids:
        out.extend({**d, "request_id": request_id}
                   for d in api.get(f"/v1/requests/{request_id}/webhooks", headers=w.customer).json())
    return out


def _all_final(api: TestClient, w: World, request_ids: list[str]) -> bool:
    return all(api.get(f"/v1/requests/{r}", headers=w.customer).json()["status"] in FINAL for r in request_ids)


def _check_one_id_per_event(received: list[tuple[str, bytes]], secret: str,
                            calls: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """Every id carries one event (one body), and every (request, event) travels under one id."""
    bodies: dict[str, set[bytes]] = defaultdict(set)
    for msg_id, body in received:
        bodies[msg_id].add(body)
    assert all(len(b) == 1 for b in bodies.values()), "a webhook id carried two different events"
    for call in calls:
        Webhook(secret).verify(call["body"], call["headers"])  # every attempt is signed
    ids_of: dict[tuple[str, str], set[str]] = defaultdict(set)
    for msg_id, (body,) in bodies.items():
        event = json.loads(body)
        ids_of[(event["data"]["id"], event["type"])].add(msg_id)
    assert all(len(ids) == 1 for ids in ids_of.values()), ids_of
    return {key: next(iter(ids)) for key, ids in ids_of.items()}


def _invariants(engine: Engine, received: list[tuple[str, bytes]]) -> None:
    from tests.faults.invariants import assert_invariants

    assert_invariants(engine, received_webhooks=received)


def test_receiver_down_for_the_first_attempts_gets_each_event_once_under_one_id(
        api: TestClient, tmp_path: Path, receiver: Receiver, committed: Engine) -> None:
    w = World(api, tmp_path, model_dir=FIXTURE_MODELS / "stepper", slug="stepper", pricing=STEPPER_PRICING)
    down_for = 3
    request_ids = _submit(api, w, receiver.url, 6)  # nothing listens on the receiver's port yet
    _poll(lambda: _all_final(api, w, request_ids), 60, "every request to finish")

    def failed_enough() -> bool:
        deliveries = _deliveries(api, w, request_ids)
        return len(deliveries) == 2 * len(request_ids) and all(len(d["attempts"]) >= down_for for d in deliveries)

    _poll(failed_enough, 30, f"every delivery to fail {down_for} times")
    receiver.up()

    def delivered() -> list[dict[str, Any]] | None:
        deliveries = _deliveries(api, w, request_ids)
        return deliveries if all(d["status"] == "delivered" for d in deliveries) else None

    deliveries = _poll(delivered, 60, "every delivery to arrive once the receiver is up")
    received = receiver.received()
    secret = api.get("/v1/webhooks/secret", headers=w.customer).json()["secret"]
    ids = _check_one_id_per_event(received, secret, receiver.calls)
    # Down means nothing arrived: each event came exactly once, under its delivery's id.
    assert sorted(msg_id for msg_id, _ in received) == sorted(d["id"] for d in deliveries)
    assert len(ids) == 2 * len(request_ids)
    for d in deliveries:
        assert ids[(d["request_id"], d["event"])] == d["id"]
        *failed, last = d["attempts"]
        assert len(failed) >= down_for and all(a["status_code"] is None and "Connect" in a["error"] for a in failed)
        assert last["status_code"] == 204 and last["error"] is None
    assert {json.loads(b)["type"] for _, b in received} == {"request.started", "request.succeeded"}
    _invariants(committed, received)


def test_receiver_that_answers_too_late_gets_the_repeat_under_the_same_id(
        api: TestClient, tmp_path: Path, committed: Engine) -> None:
    receiver = Receiver(slow_first=True)
    receiver.up()
    try:
        w = World(api, tmp_path, model_dir=FIXTURE_MODELS / "stepper", slug="stepper", pricing=STEPPER_PRICING)
        request_ids = _submit(api, w, receiver.url, 4)

        def delivered() -> list[dict[str, Any]] | None:
            deliveries = _deliveries(api, w, request_ids)
            done = len(deliveries) == 2 * len(request_ids) and all(d["status"] == "delivered" for d in deliveries)
            return deliveries if done else None

        deliveries = _poll(delivered, 60, "every delivery to be acknowledged")
        received = receiver.received()
        secret = api.get("/v1/webhooks/secret", headers=w.customer).json()["secret"]
        ids = _check_one_id_per_event(received, secret, receiver.calls)
        assert len(ids) == 2 * len(request_ids)
        for d in deliveries:
            got = [msg_id for msg_id, _ in received if msg_id == d["id"]]
            assert len(got) == len(d["attempts"]) >= 2  # the timed-out attempt had arrived too
            assert "Timeout" in d["attempts"][0]["error"] and d["attempts"][-1]["status_code"] == 204
        _invariants(committed, received)
    finally:
        receiver.down()
