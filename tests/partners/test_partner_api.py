"""The partner API on PostgreSQL: resumable uploads, deployments, logs, usage, members, keys,
and one partner never seeing another's anything."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from kit.settings import get_settings
from tests.support import ROOT, package_bytes

ADMIN = {"Authorization": f"Bearer {get_settings().admin_key}"}
ART = ROOT / "examples" / "procedural-art"


@pytest.fixture
def api(committed: Engine) -> Iterator[TestClient]:
    from gateway.app import create_app

    with TestClient(create_app()) as client:
        yield client


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return package_bytes(ART, tmp_path_factory.mktemp("pkg"))


def onboard(api: TestClient, slug: str, model: str | None = "art") -> dict[str, str]:
    r = api.post("/v1/admin/partners", json={"slug": slug, "name": slug.title()}, headers=ADMIN)
    assert r.status_code == 201, r.text
    headers = {"Authorization": f"Bearer {r.json()['api_key']}"}
    if model:
        assert api.post("/v1/partner/models", json={"slug": model}, headers=headers).status_code == 201
    return headers


def upload(api: TestClient, headers: dict[str, str], package: bytes, model: str = "art") -> dict:
    r = api.post(f"/v1/partner/models/{model}/versions", content=package,
                 headers={**headers, "Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    return r.json()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- resumable uploads ---------------------------------------------------------------------

def test_chunked_upload_resumes_from_the_server_offset_and_completes_once(api: TestClient, package: bytes) -> None:
    p = onboard(api, "acme")
    r = api.post("/v1/partner/uploads", json={"model": "art", "size": len(package)}, headers=p)
    assert r.status_code == 201, r.text
    up = r.json()
    assert r.headers["Location"] == f"/v1/partner/uploads/{up['id']}" and up["offset"] == 0
    url = f"/v1/partner/uploads/{up['id']}"
    first, rest = package[:4096], package[4096:]

    r = api.patch(url, content=first, headers={**p, "Upload-Offset": "0"})
    assert r.status_code == 204, r.text
    assert r.headers["Upload-Offset"] == "4096" and r.headers["Upload-Length"] == str(len(package))
    # A retried chunk (the answer was lost) is refused with the offset to resume from.
    r = api.patch(url, content=first, headers={**p, "Upload-Offset": "0"})
    assert r.status_code == 409 and r.headers["Upload-Offset"] == "4096"
    assert r.json()["offset"] == 4096 and r.headers["content-type"] == "application/problem+json"
    r = api.head(url, headers=p)
    assert r.status_code == 200 and r.headers["Upload-Offset"] == "4096"
    # Completing early names what is missing.
    r = api.post(f"{url}/complete", json={"sha256": sha(package)}, headers=p)
    assert r.status_code == 422 and "4096 of" in r.json()["detail"]
    # Content-Range works as well as Upload-Offset.
    end = len(package) - 1
    r = api.patch(url, content=rest, headers={**p, "Content-Range": f"bytes 4096-{end}/{len(package)}"})
    assert r.status_code == 204 and r.headers["Upload-Offset"] == str(len(package))
    assert api.get(url, headers=p).json()["offset"] == len(package)

    r = api.post(f"{url}/complete", json={"sha256": f"sha256:{sha(package)}"}, headers=p)
    assert r.status_code == 201, r.text
    version = r.json()
    assert version["number"] == 1 and version["artifact_digest"] == f"sha256:{sha(package)}"
    assert version["manifest"]["entrypoint"]
    # Completing again (a retry) gives the same version, not a second one.
    again = api.post(f"{url}/complete", json={"sha256": sha(package)}, headers=p)
    assert again.status_code == 201 and again.json()["id"] == version["id"]
    state = api.get(url, headers=p).json()
    assert state["status"] == "completed" and state["version_id"] == version["id"]
    assert [v["id"] for v in api.get("/v1/partner/models/art/versions", headers=p).json()] == [version["id"]]
    # The completed upload takes no more bytes.
    assert api.patch(url, content=b"x", headers={**p, "Upload-Offset": str(len(package))}).status_code == 409
    leftovers = list((get_settings().data_dir / "uploads").rglob("*.part"))
    assert not [f for f in leftovers if up["id"] in f.name]


def test_upload_digest_mismatch_and_rejected_package_are_recorded_and_nothing_is_stored(
        api: TestClient, package: bytes) -> None:
    p = onboard(api, "acme")
    up = api.post("/v1/partner/uploads", json={"model": "art"}, headers=p).json()
    url = f"/v1/partner/uploads/{up['id']}"
    assert api.patch(url, content=package, headers={**p, "Upload-Offset": "0"}).status_code == 204
    r = api.post(f"{url}/complete", json={"sha256": "0" * 64}, headers=p)
    assert r.status_code == 422 and r.json()["type"].endswith("upload-digest-mismatch")
    assert r.json()["digest"] == f"sha256:{sha(package)}"
    state = api.get(url, headers=p).json()
    assert state["status"] == "failed" and "hash to" in state["error"]

    junk = b"this is not an OCI archive" * 100
    up = api.post("/v1/partner/uploads", json={"model": "art", "size": len(junk)}, headers=p).json()
    url = f"/v1/partner/uploads/{up['id']}"
    assert api.patch(url, content=junk, headers={**p, "Upload-Offset": "0"}).status_code == 204
    r = api.post(f"{url}/complete", json={"sha256": sha(junk)}, headers=p)
    assert r.status_code == 422 and r.json()["type"].split("/")[-1].startswith("package-"), r.text
    state = api.get(url, headers=p).json()
    assert state["status"] == "rejected" and state["error"]
    assert api.get("/v1/partner/models/art/versions", headers=p).json() == []
    assert not list((get_settings().data_dir / "uploads").rglob(f"{up['id']}.part"))


def test_chunks_may_not_pass_the_declared_size_and_bad_headers_are_refused(api: TestClient) -> None:
    p = onboard(api, "acme")
    up = api.post("/v1/partner/uploads", json={"model": "art", "size": 10}, headers=p).json()
    url = f"/v1/partner/uploads/{up['id']}"
    assert api.patch(url, content=b"12345", headers={**p, "Upload-Offset": "0"}).status_code == 204
    r = api.patch(url, content=b"6789012", headers={**p, "Upload-Offset": "5"})
    assert r.status_code == 413
    assert api.head(url, headers=p).headers["Upload-Offset"] == "5"  # the refused chunk left nothing
    assert api.patch(url, content=b"678", headers={**p}).status_code == 422  # no offset at all
    r = api.patch(url, content=b"6789", headers={**p, "Content-Range": "bytes 5-6/10"})
    assert r.status_code == 422 and "longer" in r.json()["detail"]
    assert api.patch(url, content=b"67", headers={**p, "Content-Range": "bytes 5-6/99"}).status_code == 422
    r = api.delete(url, headers=p)
    assert r.status_code == 200 and r.json()["status"] == "aborted"
    assert api.patch(url, content=b"67", headers={**p, "Upload-Offset": "5"}).status_code == 409
    assert api.post("/v1/partner/uploads", json={"model": "nope"}, headers=p).status_code == 404


# -- deployments -------------------------------------------------------------------------------

def test_deployment_scale_rollout_rollback_stop_with_history(api: TestClient, package: bytes) -> None:
    p = onboard(api, "acme")
    v1, v2 = upload(api, p, package), upload(api, p, package)
    assert (v1["number"], v2["number"]) == (1, 2)
    r = api.post("/v1/partner/deployments", json={"model": "art", "version": 1}, headers=p)
    assert r.status_code == 201, r.text
    d1 = r.json()
    assert d1["model"] == "acme/art" and d1["version"] == 1 and d1["state"] == "idle"
    assert d1["replicas"] == {"ready": 0, "starting": 0, "failed": 0}

    r = api.patch(f"/v1/partner/deployments/{d1['id']}", json={"max_replicas": 3, "concurrency": 2}, headers=p)
    assert r.status_code == 200 and (r.json()["max_replicas"], r.json()["concurrency"]) == (3, 2)
    r = api.patch(f"/v1/partner/deployments/{d1['id']}", json={"min_replicas": 4}, headers=p)
    assert r.status_code == 422 and "min_replicas" in r.json()["detail"]

    r = api.post(f"/v1/partner/deployments/{d1['id']}/rollout", json={"version": 2}, headers=p)
    assert r.status_code == 201, r.text
    d2 = r.json()
    assert d2["id"] != d1["id"] and d2["version"] == 2 and d2["max_replicas"] == 3 and d2["status"] == "active"
    assert api.get(f"/v1/partner/deployments/{d1['id']}", headers=p).json()["status"] == "replaced"
    # Only the active deployment can move; the same version cannot be rolled out twice.
    assert api.post(f"/v1/partner/deployments/{d1['id']}/rollout", json={"version": 2}, headers=p).status_code == 409
    assert api.post(f"/v1/partner/deployments/{d2['id']}/rollout", json={"version": 2}, headers=p).status_code == 409
    assert api.post(f"/v1/partner/deployments/{d2['id']}/rollout", json={"version": 9}, headers=p).status_code == 404

    r = api.post(f"/v1/partner/deployments/{d2['id']}/rollback", headers=p)
    assert r.status_code == 200 and r.json()["id"] == d1["id"] and r.json()["status"] == "active"
    assert api.get(f"/v1/partner/deployments/{d2['id']}", headers=p).json()["status"] == "rolled_back"
    r = api.post(f"/v1/partner/deployments/{d1['id']}/rollback", headers=p)
    assert r.status_code == 409 and "no earlier" in r.json()["detail"]

    active = api.get("/v1/partner/deployments?status=active", headers=p).json()
    assert [d["id"] for d in active] == [d1["id"]]
    assert [d["id"] for d in api.get("/v1/partner/deployments?model=art", headers=p).json()] == [d2["id"], d1["id"]]

    r = api.delete(f"/v1/partner/deployments/{d1['id']}", headers=p)
    assert r.status_code == 200 and r.json()["state"] == "stopped"
    assert api.delete(f"/v1/partner/deployments/{d1['id']}", headers=p).status_code == 409
    events = api.get(f"/v1/partner/deployments/{d1['id']}/events", headers=p).json()
    assert [e["action"] for e in events] == ["stopped", "rollback", "rollout", "scaled", "created"]
    assert events[1]["from_version"] == 2 and events[1]["to_version"] == 1
    assert events[3]["detail"]["after"] == {"max_replicas": 3, "concurrency": 2}
    assert all(e["actor"] == "key:default" for e in events)


def test_replica_states_and_logs_reported_by_workers_are_visible(api: TestClient, package: bytes) -> None:
    from partners import logs

    p = onboard(api, "acme")
    upload(api, p, package)
    dep = api.post("/v1/partner/deployments", json={"model": "art"}, headers=p).json()
    base = f"/v1/partner/deployments/{dep['id']}"

    # What a worker does while starting a replica and serving a request.
    logs.report_replica(dep["id"], "rep-1", "starting")
    assert api.get(base, headers=p).json()["state"] == "starting"
    for i in range(5):
        logs.log_line(dep["id"], f"setup line {i}", replica_id="rep-1")
    logs.report_replica(dep["id"], "rep-1", "ready")
    logs.log_line(dep["id"], "painting", replica_id="rep-1", request_id="req_x")
    logs.shipper().flush()
    body = api.get(base, headers=p).json()
    assert body["state"] == "ready" and body["replicas"]["ready"] == 1

    page = api.get(f"{base}/logs", headers=p).json()
    assert [line["message"] for line in page["lines"]] == [f"setup line {i}" for i in range(5)] + ["painting"]
    assert page["lines"][-1]["request_id"] == "req_x"
    # Following: only lines after the last sequence number seen.
    logs.log_line(dep["id"], "later", replica_id="rep-1")
    logs.shipper().flush()
    newer = api.get(f"{base}/logs", params={"after": page["next_after"]}, headers=p).json()
    assert [line["message"] for line in newer["lines"]] == ["later"]
    only = api.get(f"{base}/logs", params={"request_id": "req_x"}, headers=p).json()
    assert [line["message"] for line in only["lines"]] == ["painting"]
    tail = api.get(f"{base}/logs", params={"limit": 2}, headers=p).json()
    assert [line["message"] for line in tail["lines"]] == ["painting", "later"]

    # A replica that fails to start shows the model's own traceback to the partner.
    logs.report_replica(dep["id"], "rep-1", "stopped")
    logs.report_replica(dep["id"], "rep-2", "failed", detail="Traceback:\n  ZeroDivisionError: boom")
    body = api.get(base, headers=p).json()
    assert body["state"] == "failing" and "ZeroDivisionError" in body["last_error"]
    replicas = api.get(f"{base}/replicas", params={"include_stopped": True}, headers=p).json()
    assert {r["id"]: r["state"] for r in replicas} == {"rep-1": "stopped", "rep-2": "failed"}
    errors = api.get(f"{base}/logs", params={"replica": "rep-2"}, headers=p).json()["lines"]
    assert [line["stream"] for line in errors] == ["stderr", "stderr"]


def _add_requests(deployment: dict, account_id: str, runs: list[tuple[str, int | None]], when: dt.datetime) -> list[str]:
    from gateway.models import Request
    from kit.db import session_scope
    from partners.models import Deployment

    ids = []
    with session_scope() as s:
        d = s.get(Deployment, deployment["id"])
        for i, (status, run_ms) in enumerate(runs):
            req = Request(account_id=account_id, model_id=d.model_id, version_id=d.version_id,
                          deployment_id=d.id, model_ref=deployment["model"], pool="shared", status=status,
                          input={"prompt": "x"}, run_ms=run_ms, created_at=when + dt.timedelta(minutes=i),
                          error="the model raised" if status == "failed" else None)
            s.add(req)
            s.flush()
            ids.append(req.id)
    return ids


def test_usage_counts_and_latency_percentiles_and_request_logs(api: TestClient, package: bytes) -> None:
    from kit.db import utcnow
    from partners import logs

    p = onboard(api, "acme")
    upload(api, p, package)
    dep = api.post("/v1/partner/deployments", json={"model": "art"}, headers=p).json()
    account = api.post("/v1/admin/accounts", json={"name": "C"}, headers=ADMIN).json()["id"]
    now = utcnow()
    ids = _add_requests(dep, account, [("succeeded", 100), ("succeeded", 200), ("succeeded", 300),
                                       ("succeeded", 400), ("failed", None)], now - dt.timedelta(hours=2))
    _add_requests(dep, account, [("succeeded", 1000)], now - dt.timedelta(days=3))

    week = api.get("/v1/partner/usage", params={"range": "7d"}, headers=p).json()
    assert week["bucket"] == "day"
    assert sum(r["requests"] for r in week["rows"]) == 6
    today = max(week["rows"], key=lambda r: r["bucket"])
    assert (today["requests"], today["succeeded"], today["failed"]) == (5, 4, 1)
    assert today["p50_ms"] == pytest.approx(250) and today["p95_ms"] == pytest.approx(385)
    day = api.get("/v1/partner/usage", params={"range": "24h", "model": "art"}, headers=p).json()
    assert day["bucket"] == "hour" and sum(r["requests"] for r in day["rows"]) == 5
    assert api.get("/v1/partner/usage", params={"range": "1y"}, headers=p).status_code == 422

    logs.log_line(dep["id"], "step 1/2", replica_id="r", request_id=ids[4])
    logs.log_line(dep["id"], "ValueError: bad prompt", replica_id="r", request_id=ids[4], stream="stderr")
    logs.shipper().flush()
    r = api.get(f"/v1/partner/requests/{ids[4]}/logs", headers=p)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "failed" and body["model"] == "acme/art" and body["error"] == "the model raised"
    assert [line["message"] for line in body["lines"]] == ["step 1/2", "ValueError: bad prompt"]


# -- members and keys ---------------------------------------------------------------------------

def test_members_and_keys_management(api: TestClient) -> None:
    p = onboard(api, "acme", model=None)
    r = api.post("/v1/partner/members", json={"email": "ada@acme.test", "name": "Ada", "role": "owner",
                                               "password": "correct horse battery"}, headers=p)
    assert r.status_code == 201, r.text
    owner = r.json()
    assert owner["invite_url"] is None and "password" not in r.text
    r = api.post("/v1/partner/members", json={"email": "bob@acme.test", "role": "viewer"}, headers=p)
    assert r.status_code == 201 and r.json()["invite_url"].startswith(get_settings().public_url)
    bob = r.json()
    assert api.post("/v1/partner/members", json={"email": "ADA@acme.test"}, headers=p).status_code == 409
    assert api.post("/v1/partner/members", json={"email": "x@acme.test", "password": "short"},
                    headers=p).status_code == 422
    r = api.patch(f"/v1/partner/members/{bob['id']}", json={"role": "developer"}, headers=p)
    assert r.status_code == 200 and r.json()["role"] == "developer"
    # The last owner stays.
    assert api.patch(f"/v1/partner/members/{owner['id']}", json={"role": "admin"}, headers=p).status_code == 409
    assert api.delete(f"/v1/partner/members/{owner['id']}", headers=p).status_code == 409
    r = api.delete(f"/v1/partner/members/{bob['id']}", headers=p)
    assert r.status_code == 200 and r.json()["disabled_at"]
    assert {m["email"] for m in api.get("/v1/partner/members", headers=p).json()} == {"ada@acme.test", "bob@acme.test"}

    r = api.post("/v1/partner/keys", json={"name": "ci"}, headers=p)
    assert r.status_code == 201 and r.json()["api_key"].startswith("mgp_")
    ci = r.json()
    ci_headers = {"Authorization": f"Bearer {ci['api_key']}"}
    assert api.get("/v1/partner/models", headers=ci_headers).status_code == 200
    listed = api.get("/v1/partner/keys", headers=p).json()
    assert {k["name"] for k in listed} == {"default", "ci"} and "api_key" not in listed[0]
    assert api.delete(f"/v1/partner/keys/{ci['id']}", headers=p).json()["revoked_at"]
    assert api.get("/v1/partner/models", headers=ci_headers).status_code == 401
    assert api.get("/v1/partner/models").status_code == 401
    assert api.get("/v1/partner/models", headers={"Authorization": "Bearer mg_live_x"}).status_code == 401


# -- isolation -------------------------------------------------------------------------------

def test_a_partner_never_sees_another_partners_anything(api: TestClient, package: bytes, tmp_path: Path) -> None:
    from partners import logs

    a = onboard(api, "acme")
    b = onboard(api, "bravo", model="other")
    upload(api, a, package)
    dep = api.post("/v1/partner/deployments", json={"model": "art"}, headers=a).json()
    logs.log_line(dep["id"], "secret line", replica_id="r")
    logs.shipper().flush()
    account = api.post("/v1/admin/accounts", json={"name": "C"}, headers=ADMIN).json()["id"]
    req_id = _add_requests(dep, account, [("succeeded", 5)], dt.datetime.now(dt.UTC))[0]
    up = api.post("/v1/partner/uploads", json={"model": "art"}, headers=a).json()
    member = api.post("/v1/partner/members", json={"email": "ada@acme.test"}, headers=a).json()
    key = api.post("/v1/partner/keys", json={"name": "ci"}, headers=a).json()
    d, u = f"/v1/partner/deployments/{dep['id']}", f"/v1/partner/uploads/{up['id']}"

    hidden = [
        ("GET", "/v1/partner/models/art", None), ("GET", "/v1/partner/models/art/versions", None),
        ("POST", "/v1/partner/models/art/versions", b"x"),
        ("PUT", "/v1/partner/models/art/pricing", {"tier": "open", "unit": "images", "unit_price_micros": 1}),
        ("POST", "/v1/partner/deployments", {"model": "art"}),
        ("GET", d, None), ("PATCH", d, {"max_replicas": 2}), ("DELETE", d, None),
        ("POST", f"{d}/rollout", {"version": 1}), ("POST", f"{d}/rollback", None),
        ("GET", f"{d}/events", None), ("GET", f"{d}/replicas", None), ("GET", f"{d}/logs", None),
        ("GET", f"/v1/partner/requests/{req_id}/logs", None),
        ("POST", "/v1/partner/uploads", {"model": "art"}),
        ("GET", u, None), ("HEAD", u, None), ("DELETE", u, None),
        ("PATCH", u, b"x"), ("POST", f"{u}/complete", {"sha256": "0" * 64}),
        ("PATCH", f"/v1/partner/members/{member['id']}", {"role": "viewer"}),
        ("DELETE", f"/v1/partner/members/{member['id']}", None),
        ("DELETE", f"/v1/partner/keys/{key['id']}", None),
        ("GET", "/v1/partner/usage?model=art", None),
    ]
    for method, path, body in hidden:
        kwargs: dict = {"headers": dict(b)}
        if isinstance(body, bytes):
            kwargs["content"] = body
            kwargs["headers"]["Upload-Offset"] = "0"
        elif body is not None:
            kwargs["json"] = body
        r = api.request(method, path, **kwargs)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
        assert "secret line" not in r.text and "acme" not in r.text.replace("/v1", "")

    # Lists show only one's own.
    assert [m["slug"] for m in api.get("/v1/partner/models", headers=b).json()] == ["other"]
    assert api.get("/v1/partner/deployments", headers=b).json() == []
    assert api.get("/v1/partner/uploads", headers=b).json() == []
    assert [m["email"] for m in api.get("/v1/partner/members", headers=b).json()] == []
    assert [k["name"] for k in api.get("/v1/partner/keys", headers=b).json()] == ["default"]
    assert api.get("/v1/partner/usage", headers=b).json()["rows"] == []
    # And A still sees all of it.
    assert api.get(d, headers=a).status_code == 200
    assert api.get(f"/v1/partner/requests/{req_id}/logs", headers=a).status_code == 200


def test_usage_stats_on_the_embedded_sqlite_database(tmp_path: Path) -> None:
    """The embedded default has no percentile aggregate; the numbers must match PostgreSQL's."""
    from sqlalchemy.orm import Session

    from billing.models import Account
    from gateway.models import Request
    from kit.db import make_engine
    from kit.migrate import upgrade
    from partners import repository as repo
    from partners.models import Deployment, Model, ModelVersion, Partner

    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    upgrade(url)
    engine = make_engine(url)
    when = dt.datetime(2026, 11, 20, 10, 5, tzinfo=dt.UTC)
    with Session(engine) as s:
        partner, account = Partner(slug="acme", name="Acme"), Account(name="C")
        s.add_all([partner, account])
        s.flush()
        model = Model(partner_id=partner.id, slug="art")
        s.add(model)
        s.flush()
        version = ModelVersion(model_id=model.id, number=1, artifact_digest="sha256:x", artifact_size=1, manifest={})
        s.add(version)
        s.flush()
        dep = Deployment(model_id=model.id, version_id=version.id)
        s.add(dep)
        s.flush()
        for i, (status, ms) in enumerate([("succeeded", 100), ("succeeded", 200), ("succeeded", 300),
                                          ("succeeded", 400), ("failed", None)]):
            s.add(Request(account_id=account.id, model_id=model.id, version_id=version.id, deployment_id=dep.id,
                          model_ref="acme/art", pool="shared", status=status, input={}, run_ms=ms,
                          created_at=when + dt.timedelta(minutes=i)))
        s.flush()
        rows = repo.request_stats(s, partner.id, since=when - dt.timedelta(days=1), until=when + dt.timedelta(days=1),
                                  bucket="hour")
        day = repo.request_stats(s, partner.id, since=when - dt.timedelta(days=1), until=when + dt.timedelta(days=1),
                                 bucket="day")
    engine.dispose()
    assert [(r["bucket"], r["requests"], r["succeeded"], r["failed"]) for r in rows] == [
        (dt.datetime(2026, 11, 20, 10, tzinfo=dt.UTC), 5, 4, 1)]
    assert rows[0]["p50_ms"] == pytest.approx(250) and rows[0]["p95_ms"] == pytest.approx(385)
    assert day[0]["bucket"] == dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
