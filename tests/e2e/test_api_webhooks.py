# ruff: noqa: F811 - fixtures imported from api_support are redefined as arguments
"""Webhooks and SLA pools on the real stack: signed deliveries, retries with one id, attempts
listed, endpoint filters, redirects not followed; dedicated pool routing and pool stats.
"""

from __future__ import annotations

import pytest
from standardwebhooks import Webhook

from tests.e2e.api_support import STEPPER_PRICING, Receiver, gw_worker, wait_for  # noqa: F401
from tests.e2e.conftest import ADMIN, World
from tests.support import FIXTURE_MODELS

pytestmark = pytest.mark.usefixtures("gw_worker")


@pytest.fixture
def receiver():  # type: ignore[no-untyped-def]
    r = Receiver()
    yield r
    r.close()


def _world(api, tmp) -> World:  # type: ignore[no-untyped-def]
    return World(api, tmp, model_dir=FIXTURE_MODELS / "stepper", slug="stepper", pricing=STEPPER_PRICING)


def test_webhook_down_five_times_arrives_on_the_sixth_with_one_id_and_a_valid_signature(
        api, tmp_path, receiver) -> None:  # type: ignore[no-untyped-def]
    w = _world(api, tmp_path)
    receiver.script = [503, 503, 500, 502, 503]
    req = api.post(f"/v1/models/{w.model}/requests", headers=w.customer,
                   json={"input": {"steps": 1}, "webhook": receiver.url}).json()
    calls = receiver.wait(6, timeout=30)
    assert len({c["headers"]["webhook-id"] for c in calls}) == 1  # the same id on every retry
    secret = api.get("/v1/webhooks/secret", headers=w.customer).json()["secret"]
    assert secret.startswith("whsec_")
    payload = Webhook(secret).verify(calls[5]["body"], calls[5]["headers"])
    assert payload["type"] == "request.succeeded" and payload["data"]["id"] == req["id"]
    assert payload["data"]["status"] == "succeeded" and payload["data"]["output"]["steps"] == 1
    gaps = [b["at"] - a["at"] for a, b in zip(calls, calls[1:], strict=False)]
    assert gaps[4] > gaps[3] > gaps[1]  # backing off: 5 s, 5 min, 30 min, 2 h, 5 h, scaled down

    attempts = api.get(f"/v1/requests/{req['id']}/webhooks", headers=w.customer).json()
    (delivery,) = attempts
    assert delivery["id"] == calls[0]["headers"]["webhook-id"] and delivery["status"] == "delivered"
    assert [a["status_code"] for a in delivery["attempts"]] == [503, 503, 500, 502, 503, 204]
    assert delivery["attempts"][0]["error"] == "HTTP 503"
    # The result never depended on the webhook.
    assert api.get(f"/v1/requests/{req['id']}", headers=w.customer).json()["status"] == "succeeded"


def test_account_endpoints_filter_events_and_redirects_are_not_followed(api, tmp_path, receiver) -> None:  # type: ignore[no-untyped-def]
    w = _world(api, tmp_path)
    started = api.post("/v1/webhooks", headers=w.customer,
                       json={"url": receiver.url + "?only=started", "events": ["started"]})
    assert started.status_code == 201 and started.json()["events"] == ["request.started"]
    everything = api.post("/v1/webhooks", headers=w.customer, json={"url": receiver.url + "?all"}).json()
    assert everything["events"] == ["request.succeeded", "request.failed", "request.canceled",
                                    "request.expired", "request.blocked"]
    assert len(api.get("/v1/webhooks", headers=w.customer).json()) == 2

    req = api.post(f"/v1/models/{w.model}/requests", headers=w.customer, json={"input": {"steps": 1}}).json()
    wait_for(api, w.customer, req["id"])
    receiver.wait(2)
    by_path = {c["path"]: Webhook(api.get("/v1/webhooks/secret", headers=w.customer).json()["secret"])
               .verify(c["body"], c["headers"])["type"] for c in receiver.calls}
    assert by_path == {"/hook?only=started": "request.started", "/hook?all": "request.succeeded"}

    # Another account sees none of it.
    other = api.post("/v1/admin/accounts", json={"name": "Other"}, headers=ADMIN).json()
    other_key = {"Authorization": f"Key {other['api_key']}"}
    assert api.get(f"/v1/webhooks/{everything['id']}", headers=other_key).status_code == 404
    assert api.get(f"/v1/requests/{req['id']}/webhooks", headers=other_key).status_code == 404
    assert api.delete(f"/v1/webhooks/{everything['id']}", headers=other_key).status_code == 404

    # A redirect is an answer, not an instruction: recorded, retried, never followed.
    assert api.delete(f"/v1/webhooks/{everything['id']}", headers=w.customer).status_code == 204
    assert api.patch(f"/v1/webhooks/{started.json()['id']}", headers=w.customer,
                     json={"enabled": False}).json()["enabled"] is False
    receiver.calls.clear()
    receiver.script = [302]
    req = api.post(f"/v1/models/{w.model}/requests", headers=w.customer,
                   json={"input": {"steps": 1}, "webhook": receiver.url}).json()
    receiver.wait(2)
    assert all(c["path"] == "/hook" for c in receiver.calls)  # /elsewhere was never called
    (delivery,) = api.get(f"/v1/requests/{req['id']}/webhooks", headers=w.customer).json()
    assert delivery["attempts"][0]["status_code"] == 302
    assert "redirects are not followed" in delivery["attempts"][0]["error"]


def test_dedicated_pool_routing_and_pool_stats(api, tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = _world(api, tmp_path)
    r = api.post("/v1/admin/pools", headers=ADMIN, json={
        "name": "gold", "kind": "dedicated", "account_id": w.account_id, "model": w.model,
        "p95_queue_ms_target": 5000})
    assert r.status_code == 201, r.text
    for _ in range(3):
        body = api.post(f"/v1/models/{w.model}/requests", headers={**w.customer, "Prefer": "wait=30"},
                        json={"input": {"steps": 2, "delay": 0.02}}).json()
        assert body["status"] == "succeeded"
    stats = api.get("/v1/pools/gold/stats", headers=w.customer).json()
    assert stats["pool"] == "gold" and stats["kind"] == "dedicated"
    assert stats["started"] == 3 and stats["completed"] == 3 and stats["queued"] == 0
    assert stats["queue_ms"]["p50"] is not None and stats["run_ms"]["p95"] >= stats["run_ms"]["p50"] > 0
    assert stats["sla"]["p95_queue_ms_target"] == 5000 and stats["sla"]["within_target_ratio"] is not None
    assert stats["sla"]["compliant"] == (stats["queue_ms"]["p95"] <= 5000)

    other = api.post("/v1/admin/accounts", json={"name": "Other"}, headers=ADMIN).json()
    other_key = {"Authorization": f"Key {other['api_key']}"}
    assert api.get("/v1/pools/gold/stats", headers=other_key).status_code == 404  # not theirs
    assert api.get("/v1/pools/nowhere/stats", headers=other_key).status_code == 404
    shared = api.post(f"/v1/models/{w.model}/requests", headers={**other_key, "Prefer": "wait=30"},
                      json={"input": {"steps": 1}}).json()
    assert shared["status"] == "succeeded"
    assert api.get("/v1/pools/shared/stats", headers=other_key).json()["started"] == 1
