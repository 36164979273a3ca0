"""Requests on the real stack: queue position, priority, cancel, deadlines, concurrency limits,
a hung model, metrics and cost, suspended accounts, retention.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from billing.models import UsageRecord
from gateway.models import File, Request
from kit.db import session_scope
from tests.e2e.api_support import FLAKY_PRICING, STEPPER_PRICING, gw_worker, wait_for  # noqa: F401
from tests.e2e.conftest import ADMIN, World
from tests.support import FIXTURE_MODELS

pytestmark = pytest.mark.usefixtures("gw_worker")


def _world(api: TestClient, tmp: Path, **kw) -> World:  # type: ignore[no-untyped-def]
    return World(api, tmp, model_dir=FIXTURE_MODELS / "flaky", slug="flaky", pricing=FLAKY_PRICING, **kw)


def _usage_count() -> int:
    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(UsageRecord)) or 0


def test_queue_position_cancel_deadline_and_concurrency_limit(api, tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = _world(api, tmp_path)
    r = api.put(f"/v1/admin/accounts/{w.account_id}/limits", json={"max_concurrency": 1}, headers=ADMIN)
    assert r.status_code == 200, r.text
    url = f"/v1/models/{w.model}/requests"
    first = api.post(url, headers=w.customer, json={"input": {"mode": "sleep", "seconds": 1.5}}).json()
    wait_for(api, w.customer, first["id"], ("running",))

    # Over the account's concurrency limit: queued, in order, never dropped.
    normal = api.post(url, headers=w.customer, json={"input": {}}).json()
    low = api.post(url, headers={**w.customer, "Priority": "low"}, json={"input": {}}).json()
    deadline = api.post(url, headers={**w.customer, "Request-Timeout": "1"}, json={"input": {}}).json()
    assert [normal["status"], low["status"], deadline["status"]] == ["queued"] * 3
    positions = {k: api.get(f"/v1/requests/{v['id']}", headers=w.customer).json()["queue_position"]
                 for k, v in (("normal", normal), ("low", low), ("deadline", deadline))}
    assert positions == {"normal": 0, "deadline": 1, "low": 2}  # normal priority first, then low

    canceled = api.post(f"/v1/requests/{normal['id']}/cancel", headers=w.customer)
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"

    expired = wait_for(api, w.customer, deadline["id"], timeout=10)
    assert expired["status"] == "expired" and expired["cost"]["amount_micros"] == 0
    assert expired["started_at"] is None and "Request-Timeout" in expired["error"]

    done = wait_for(api, w.customer, first["id"])
    assert done["status"] == "succeeded"
    assert done["metrics"]["run_ms"] >= 1400 and done["metrics"]["queue_ms"] is not None
    assert done["cost"] == {"amount_micros": 40_000, "currency": "usd", "units": done["cost"]["units"]}
    later = wait_for(api, w.customer, low["id"])
    assert later["status"] == "succeeded"  # waited for the slot, then ran
    assert later["started_at"] >= done["completed_at"]
    assert _usage_count() == 2


def test_cancel_running_reaches_the_model_fast(api, tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = _world(api, tmp_path)
    req = api.post(f"/v1/models/{w.model}/requests", headers=w.customer,
                   json={"input": {"mode": "sleep", "seconds": 5}}).json()
    wait_for(api, w.customer, req["id"], ("running",))
    time.sleep(0.3)
    t0 = time.monotonic()
    r = api.post(f"/v1/requests/{req['id']}/cancel", headers=w.customer)
    assert r.status_code == 200 and r.json()["status"] == "running"  # signaled; ends when it stops
    body = wait_for(api, w.customer, req["id"], timeout=10)
    assert body["status"] == "canceled" and body["cost"]["amount_micros"] == 0
    assert time.monotonic() - t0 < 3.0  # the Redis event; the database is only looked at every 5 s
    assert _usage_count() == 0


def test_priority_normal_starts_before_low(api, tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = _world(api, tmp_path)  # one replica: the second and third wait for it, holding their threads
    url = f"/v1/models/{w.model}/requests"
    busy = [api.post(url, headers=w.customer, json={"input": {"mode": "sleep", "seconds": s}}).json()
            for s in (1.0, 0.5, 0.5)]
    for b in busy:  # every worker thread is taken
        wait_for(api, w.customer, b["id"], ("running",))
    lows = [api.post(url, headers={**w.customer, "Priority": "low"}, json={"input": {}}).json() for _ in range(2)]
    normal = api.post(url, headers=w.customer, json={"input": {}}).json()
    assert api.get(f"/v1/requests/{normal['id']}", headers=w.customer).json()["queue_position"] == 0
    results = [wait_for(api, w.customer, x["id"]) for x in [normal, *lows, *busy]]
    assert all(x["status"] == "succeeded" for x in results), [(x["status"], x["error"]) for x in results]
    assert results[0]["started_at"] < min(x["started_at"] for x in results[1:3])


def test_hung_model_times_out_uncharged_and_replica_is_replaced(api, tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = World(api, tmp_path, model_dir=FIXTURE_MODELS / "stepper", slug="stepper", pricing=STEPPER_PRICING)
    url = f"/v1/models/{w.model}/requests"
    wait = {**w.customer, "Prefer": "wait=30"}
    ok = api.post(url, headers=wait, json={"input": {"steps": 1}}).json()
    assert ok["status"] == "succeeded", ok
    hung = api.post(url, headers=wait, json={"input": {"stall": 60}}).json()
    assert hung["status"] == "failed" and "did not finish" in hung["error"], hung
    assert hung["cost"]["amount_micros"] == 0
    again = api.post(url, headers=wait, json={"input": {"steps": 1}}).json()
    assert again["status"] == "succeeded"  # on a fresh replica: the hung one was stopped
    assert _usage_count() == 2


def test_suspended_account_is_refused(api, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from moderation.models import AccountHold

    w = _world(api, tmp_path)
    with session_scope() as s:
        s.add(AccountHold(account_id=w.account_id, category="csam", reason="review"))
    r = api.post(f"/v1/models/{w.model}/requests", headers=w.customer, json={"input": {}})
    assert r.status_code == 403 and r.json()["type"].endswith("/account-suspended")
    assert r.headers["content-type"] == "application/problem+json"


def test_retention_deletes_old_files_and_keeps_the_request(api, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from gateway.sweeps import purge_expired_files

    w = _world(api, tmp_path)
    r = api.patch("/v1/account", headers=w.customer, json={"retention_days": 7})
    assert r.status_code == 200 and r.json()["retention_days"] == 7
    body = api.post(f"/v1/models/{w.model}/requests", headers={**w.customer, "Prefer": "wait=30"},
                    json={"input": {}}).json()
    url = body["output"]["image"]["url"].split("8000", 1)[-1]
    assert api.get(url).status_code == 200
    with session_scope() as s:
        for f in s.scalars(select(File)):
            f.created_at -= dt.timedelta(days=8)
    assert purge_expired_files() == 1
    assert api.get(url).status_code == 404
    after = api.get(f"/v1/requests/{body['id']}", headers=w.customer).json()
    assert after["status"] == "succeeded" and after["output"]["image"]["url"] is None
    assert after["output"]["image"]["expired"] is True
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Request)) == 1
