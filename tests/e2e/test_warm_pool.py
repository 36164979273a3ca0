"""Warm floors, rollouts and keep-alive: the worker's replica keeper at work."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient


def _replicas(api: TestClient, w, deployment_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
    r = api.get(f"/v1/partner/deployments/{deployment_id}/replicas", headers=w.partner)
    assert r.status_code == 200, r.text
    return r.json()


def _wait_for(predicate, timeout: float = 45.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return False


def test_min_replicas_are_warm_before_any_request_and_retired_on_rollout(api, worker, flaky_world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    w = flaky_world
    dep = w.deployment["id"]
    r = api.patch(f"/v1/partner/deployments/{dep}", json={"min_replicas": 1}, headers=w.partner)
    assert r.status_code == 200, r.text
    assert _wait_for(lambda: any(x["state"] == "ready" for x in _replicas(api, w, dep))), _replicas(api, w, dep)

    started = time.monotonic()
    body = api.post(f"/v1/models/{w.model}/requests", headers={**w.customer, "Prefer": "wait=30"},
                    json={"input": {}}).json()
    assert body["status"] == "succeeded"
    assert time.monotonic() - started < 5  # served warm: no sandbox start on this request's path

    from tests.support import FIXTURE_MODELS, package_bytes

    r = api.post("/v1/partner/models/flaky/versions", content=package_bytes(FIXTURE_MODELS / "flaky", tmp_path),
                 headers={**w.partner, "Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    r = api.post(f"/v1/partner/deployments/{dep}/rollout", json={"version": r.json()["number"]},
                 headers=w.partner)
    assert r.status_code == 201, r.text
    assert _wait_for(lambda: all(x["state"] == "stopped" for x in _replicas(api, w, dep))), _replicas(api, w, dep)


def test_one_replica_serves_concurrent_requests_each_with_its_own_progress(api, worker, flaky_world) -> None:  # type: ignore[no-untyped-def]
    from concurrent.futures import ThreadPoolExecutor

    w = flaky_world
    r = api.patch(f"/v1/partner/deployments/{w.deployment['id']}", json={"concurrency": 2}, headers=w.partner)
    assert r.status_code == 200, r.text

    def run(seconds: float) -> dict:
        time.sleep(0.5 if seconds < 1 else 0)  # the short one starts second and ends first
        return api.post(f"/v1/models/{w.model}/requests", headers={**w.customer, "Prefer": "wait=60"},
                        json={"input": {"mode": "sleep", "seconds": seconds}}).json()

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(run, [2.5, 0.5])
    assert a["status"] == b["status"] == "succeeded", (a["error"], b["error"])
    assert a["output"]["runner_pid"] == b["output"]["runner_pid"]  # one replica, two at once
