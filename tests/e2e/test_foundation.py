"""The whole path on PostgreSQL + Redis + a real Celery worker + runner processes.

partner → model → upload → price → deploy → customer key → submit → worker runs it in a
runner process → succeeded → usage record → balanced ledger → revenue-share report.
"""

from __future__ import annotations

import io
import os
import time

from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select

from billing import service as billing
from billing.models import LedgerEntry, UsageRecord
from kit.db import session_scope


def _wait(api: TestClient, world, request_id: str, timeout: float = 60) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        body = api.get(f"/v1/requests/{request_id}", headers=world.customer).json()
        if body["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def test_partner_to_customer_to_money(api: TestClient, worker, art_world) -> None:  # type: ignore[no-untyped-def]
    w = art_world
    r = api.post(f"/v1/models/{w.model}/requests", headers={**w.customer, "Prefer": "wait=60"},
                 json={"input": {"prompt": "a lighthouse at dusk", "width": 1024, "height": 1024}})
    assert r.status_code == 201, r.text
    env = r.json()
    assert env["status"] == "succeeded", env
    assert env["cost"] == {"amount_micros": 6_000, "currency": "usd",
                           "units": env["cost"]["units"]}  # 1024² = 1.05 MP → 2 MP rounded up
    assert env["cost"]["units"]["megapixels"] == 2
    assert env["metrics"]["run_ms"] > 0 and env["moderation"]["input"] == "passed"

    image = env["output"]
    assert image["content_type"] == "image/png" and image["width"] == 1024
    got = api.get(image["url"].split("8000", 1)[-1])
    assert got.status_code == 200
    assert Image.open(io.BytesIO(got.content)).size == (1024, 1024)

    usage = api.get("/v1/usage", headers=w.customer).json()
    assert usage["total_micros"] == 6_000
    assert usage["lines"][0]["model"] == w.model and usage["lines"][0]["requests"] == 1

    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(UsageRecord)) == 1
        assert s.scalar(select(func.sum(LedgerEntry.amount_micros))) == 0
        assert billing.ledger_is_balanced(s)
        period = billing.period_of(s.scalar(select(UsageRecord.occurred_at)))
        (row,) = billing.revenue_share_report(s, period)
    assert row["gross_micros"] == 6_000
    assert row["platform_micros"] == 1_200 and row["partner_micros"] == 4_800  # 20% platform fee
    assert row["platform_micros"] + row["royalty_micros"] + row["partner_micros"] == row["gross_micros"]


def test_model_runs_in_its_own_process_and_replica_is_reused(api, worker, flaky_world) -> None:  # type: ignore[no-untyped-def]
    w = flaky_world
    pids = set()
    for _ in range(2):
        r = api.post(f"/v1/models/{w.model}/requests", headers={**w.customer, "Prefer": "wait=30"},
                     json={"input": {}})
        body = r.json()
        assert body["status"] == "succeeded", body
        pids.add(body["output"]["runner_pid"])
    assert len(pids) == 1 and os.getpid() not in pids and worker.process.pid not in pids
    with session_scope() as s:
        (row,) = billing.revenue_share_report(s, billing.period_of(s.scalar(select(func.max(UsageRecord.occurred_at)))))
    assert row["gross_micros"] == 80_000 and row["royalty_micros"] == 20_000 and row["licensor"] == "bfl"


def test_failures_are_readable_uncharged_and_the_service_keeps_serving(api, worker, flaky_world) -> None:  # type: ignore[no-untyped-def]
    w = flaky_world
    url = f"/v1/models/{w.model}/requests"
    wait = {**w.customer, "Prefer": "wait=30"}

    raised = api.post(url, headers=wait, json={"input": {"mode": "raise"}}).json()
    assert raised["status"] == "failed" and "refused this input" in raised["error"]

    died = api.post(url, headers=wait, json={"input": {"mode": "exit"}}).json()
    assert died["status"] == "failed" and "stopped mid-request" in died["error"]

    bad_units = api.post(url, headers=wait, json={"input": {"mode": "bad_units"}}).json()
    assert bad_units["status"] == "failed" and "non-negative" in bad_units["error"]

    ok = api.post(url, headers=wait, json={"input": {}}).json()
    assert ok["status"] == "succeeded", ok  # a fresh replica replaced the dead one

    for failed in (raised, died, bad_units):
        assert failed["cost"]["amount_micros"] == 0
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(UsageRecord)) == 1


def test_bad_requests_get_problem_json(api, worker, flaky_world) -> None:  # type: ignore[no-untyped-def]
    w = flaky_world
    url = f"/v1/models/{w.model}/requests"

    r = api.post("/v1/models/acme/nope/requests", headers=w.customer, json={"input": {}})
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"

    r = api.post(url, headers={"Authorization": "Key mg_live_wrong"}, json={"input": {}})
    assert r.status_code == 401 and r.json()["type"].endswith("/unauthorized")

    r = api.post(url, headers={**w.customer, "Content-Type": "application/json"}, content=b"{not json")
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"

    r = api.post(url, headers=w.customer, json={"input": {"size": 4}})
    assert r.status_code == 422 and r.json()["field"] == "input.size"

    r = api.post(url, headers=w.customer, json={"input": {"mode": "explode"}})
    assert r.status_code == 422 and "input.mode" in r.json()["detail"]

    r = api.post(url, headers=w.customer, json={"input": {"unknown": 1}})
    assert r.status_code == 422

    r = api.get("/v1/requests/req_doesnotexist", headers=w.customer)
    assert r.status_code == 404


def test_another_account_cannot_see_a_request(api, worker, flaky_world) -> None:  # type: ignore[no-untyped-def]
    from tests.e2e.conftest import ADMIN

    w = flaky_world
    req = api.post(f"/v1/models/{w.model}/requests", headers=w.customer, json={"input": {}}).json()
    other = api.post("/v1/admin/accounts", json={"name": "Other"}, headers=ADMIN).json()
    r = api.get(f"/v1/requests/{req['id']}", headers={"Authorization": f"Key {other['api_key']}"})
    assert r.status_code == 404
    assert _wait(api, w, req["id"])["status"] == "succeeded"


def test_blocked_input_is_not_run_or_charged(api, worker, art_world) -> None:  # type: ignore[no-untyped-def]
    from moderation.service import set_account_policy

    w = art_world
    with session_scope() as s:
        set_account_policy(s, account_id=w.account_id, changed_by="test", custom_terms=["forbiddenword"])
    r = api.post(f"/v1/models/{w.model}/requests", headers={**w.customer, "Prefer": "wait=5"},
                 json={"input": {"prompt": "a forbiddenword landscape"}})
    body = r.json()
    assert r.status_code == 201 and body["status"] == "blocked", body
    assert body["moderation"]["input"] == "blocked" and body["cost"]["amount_micros"] == 0
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(UsageRecord)) == 0


def test_license_and_credit_are_checked_before_a_request_is_queued(api, worker, flaky_world) -> None:  # type: ignore[no-untyped-def]
    from tests.e2e.conftest import ADMIN

    w = flaky_world
    url = f"/v1/models/{w.model}/requests"
    hobbyist = api.post("/v1/admin/accounts", json={"name": "Hobbyist", "commercial_use": False},
                        headers=ADMIN).json()
    r = api.post(url, headers={"Authorization": f"Key {hobbyist['api_key']}"}, json={"input": {}})
    assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json", r.text

    prepaid = api.post("/v1/admin/accounts", json={"name": "Prepaid", "billing_mode": "prepaid"},
                       headers=ADMIN).json()
    r = api.post(url, headers={"Authorization": f"Key {prepaid['api_key']}"}, json={"input": {}})
    assert r.status_code == 402 and r.json()["type"].endswith("/insufficient-credit"), r.text
    with session_scope() as s:
        from gateway.models import Request

        assert s.scalar(select(func.count()).select_from(Request).where(
            Request.account_id.in_([hobbyist["id"], prepaid["id"]]))) == 0
