# ruff: noqa: F811 - fixtures imported from api_support are redefined as arguments
"""The customer API over real HTTP (uvicorn processes): events, idempotency under concurrent
duplicates, the limiter across two API processes, and the Python client.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time

import httpx
import pytest
from rich.console import Console
from sqlalchemy import func, select

from billing.models import UsageRecord
from gateway.client import AsyncClient, Client, MediagateError, RequestFailed
from gateway.models import Request
from kit.db import session_scope
from tests.e2e.api_support import (  # noqa: F401 - fixtures
    STEPPER_PRICING,
    LiveAPI,
    gw_worker,
    live,
    live_api,
    sse_events,
    wait_for,
)
from tests.e2e.conftest import ADMIN, World
from tests.support import FIXTURE_MODELS

pytestmark = pytest.mark.usefixtures("gw_worker")


def _world(client: httpx.Client, tmp) -> World:  # type: ignore[no-untyped-def]
    return World(client, tmp, model_dir=FIXTURE_MODELS / "stepper", slug="stepper", pricing=STEPPER_PRICING)


def test_events_resume_after_a_dropped_connection_without_losing_any(live, tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = _world(live, tmp_path)
    req = live.post(f"/v1/models/{w.model}/requests", headers=w.customer,
                    json={"input": {"steps": 20, "delay": 0.08}}).json()
    url = f"/v1/requests/{req['id']}/events"
    seen: list[dict] = []
    with live.stream("GET", url, headers=w.customer) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for event in sse_events(r.iter_lines()):
            seen.append(event)
            if event["event"] == "progress" and event["data"]["done"] == 5:
                break  # the connection drops here
    last_id = seen[-1]["id"]
    time.sleep(0.5)  # events keep coming while nobody listens
    with live.stream("GET", url, headers={**w.customer, "Last-Event-ID": last_id}) as r:
        seen.extend(sse_events(r.iter_lines()))

    kinds = [e["event"] for e in seen]
    assert kinds[-1] == "done" and seen[-1]["data"]["status"] == "succeeded"
    assert [e["data"]["done"] for e in seen if e["event"] == "progress"] == list(range(1, 21))
    assert [e["data"]["message"] for e in seen if e["event"] == "log"] == [f"step {i}" for i in range(1, 21)]
    assert [e["data"]["status"] for e in seen if e["event"] == "status"] == ["queued", "running", "succeeded"]
    assert "output" in kinds and seen[-1]["data"]["output"]["steps"] == 20
    ids = [tuple(map(int, e["id"].split("-"))) for e in seen]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # in order, none twice

    # A finished request replays its whole history, and another account gets 404.
    with live.stream("GET", url, headers=w.customer) as r:
        assert [e["event"] for e in sse_events(r.iter_lines())] == kinds
    other = live.post("/v1/admin/accounts", json={"name": "Other"}, headers=ADMIN).json()
    assert live.get(url, headers={"Authorization": f"Key {other['api_key']}"}).status_code == 404


def test_concurrent_duplicates_make_one_request_and_one_charge(live, tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = _world(live, tmp_path)
    url = f"/v1/models/{w.model}/requests"
    headers = {**w.customer, "Idempotency-Key": "order-42"}
    body = {"input": {"steps": 1}}
    barrier = threading.Barrier(4)
    answers: list[httpx.Response] = []

    def submit() -> None:
        with httpx.Client(base_url=str(live.base_url), timeout=30) as c:
            barrier.wait()
            answers.append(c.post(url, headers=headers, json=body))

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in answers) == [200, 200, 200, 201], [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    done = wait_for(live, w.customer, answers[0].json()["id"])
    assert done["status"] == "succeeded"
    again = live.post(url, headers=headers, json=body)
    assert again.status_code == 200 and again.json()["id"] == done["id"]
    conflict = live.post(url, headers=headers, json={"input": {"steps": 2}})
    assert conflict.status_code == 409 and conflict.headers["content-type"] == "application/problem+json"
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Request)) == 1
        assert s.scalar(select(func.count()).select_from(UsageRecord)) == 1


def test_rate_limit_holds_across_two_api_processes(live, live_api, tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = _world(live, tmp_path)
    r = live.put(f"/v1/admin/accounts/{w.account_id}/limits", json={"rate_per_s": 1, "rate_burst": 5},
                 headers=ADMIN)
    assert r.status_code == 200
    second = LiveAPI()
    try:
        clients = [live, second.client()]
        t0 = time.monotonic()
        answers = [clients[i % 2].post("/v1/requests/req_unknown/cancel", headers=w.customer) for i in range(16)]
        elapsed = time.monotonic() - t0
    finally:
        second.stop()
    allowed = [a for a in answers if a.status_code != 429]
    refused = [a for a in answers if a.status_code == 429]
    assert all(a.status_code == 404 for a in allowed)  # through the limiter, then not found
    assert 5 <= len(allowed) <= 5 + int(elapsed) + 1, (len(allowed), elapsed)
    assert {a.request.url.port for a in allowed} == {live_api.port, second.port} or len(allowed) >= 5
    limited = refused[0]
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.headers["RateLimit-Limit"] == "5" and limited.headers["RateLimit-Remaining"] == "0"
    assert limited.headers["content-type"] == "application/problem+json"
    assert allowed[0].headers["RateLimit-Limit"] == "5"


def test_python_client_sync_and_async(live, tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = _world(live, tmp_path)
    key = w.customer["Authorization"].split()[1]
    base = str(live.base_url)
    out = io.StringIO()
    with Client(base, key) as client:
        done = client.run(w.model, {"steps": 5, "delay": 0.05},
                          console=Console(file=out, force_terminal=False, width=120))
        assert done["status"] == "succeeded" and done["output"]["steps"] == 5
        assert "100%" in out.getvalue() and done["id"] in out.getvalue()
        queued = client.submit(w.model, {"steps": 30, "delay": 0.1})
        events = []
        for event in client.stream(queued["id"]):
            events.append(event["event"])
            if event["event"] == "progress" and len(events) > 3:
                client.cancel(queued["id"])
        assert events[-1] == "done"
        with pytest.raises(RequestFailed) as failed:
            client.result(queued["id"])
        assert failed.value.envelope["status"] == "canceled"
        with pytest.raises(MediagateError) as missing:
            client.status("req_nope")
        assert missing.value.status == 404 and missing.value.type.endswith("/not-found")

    async def use_async() -> dict:
        async with AsyncClient(base, key) as client:
            env = await client.submit(w.model, {"steps": 3, "delay": 0.02})
            kinds = [e["event"] async for e in client.stream(env["id"])]
            assert kinds[-1] == "done" and "progress" in kinds
            return await client.run(w.model, {"steps": 2})

    assert asyncio.run(use_async())["status"] == "succeeded"
