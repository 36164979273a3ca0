"""The trust-and-safety API and review page, through HTTP."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from kit.db import get_session
from kit.ids import new_id
from kit.web import install_error_handlers
from moderation.endpoints import router
from moderation.review import create_staff
from moderation.service import check_input, is_account_suspended


@pytest.fixture
def client(db: Session) -> Iterator[TestClient]:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)

    def session_override(request: Request) -> Iterator[Session]:
        request.state.db = db
        yield db

    app.dependency_overrides[get_session] = session_override
    with TestClient(app) as c:
        yield c


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_staff_key_is_required(client: TestClient, db: Session) -> None:
    r = client.get("/v1/moderation/queue")
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    assert client.get("/v1/moderation/queue", headers=auth("mgs_wrong")).status_code == 401
    _, key = create_staff(db, name="R")
    assert client.get("/v1/moderation/queue", headers=auth(key)).status_code == 200


def test_queue_detail_resolve_and_holds(client: TestClient, db: Session) -> None:
    _, key = create_staff(db, name="R")
    account, model = new_id("acc"), new_id("mdl")
    check_input(db, account_id=account, model_id=model, request_id=new_id("req"),
                input={"prompt": "nude child on a beach"})
    db.commit()
    queue = client.get("/v1/moderation/queue", headers=auth(key)).json()
    (task,) = [t for t in queue if t["account_id"] == account]
    detail = client.get(f"/v1/moderation/queue/{task['id']}", headers=auth(key)).json()
    assert detail["evidence"]["manifest_intact"] is True
    assert detail["record"]["decision"] == "blocked"
    assert "on a beach" not in str(detail)
    holds = client.get("/v1/moderation/holds", headers=auth(key)).json()
    assert account in [h["account_id"] for h in holds]
    r = client.post(f"/v1/moderation/queue/{task['id']}/resolve", headers=auth(key),
                    json={"resolution": "dismissed", "note": "art history", "release_hold": True})
    assert r.status_code == 200 and r.json()["status"] == "dismissed"
    assert not is_account_suspended(db, account)
    again = client.post(f"/v1/moderation/queue/{task['id']}/resolve", headers=auth(key),
                        json={"resolution": "dismissed"})
    assert again.status_code == 409


def test_policies_need_an_admin(client: TestClient, db: Session) -> None:
    _, reviewer = create_staff(db, name="R")
    _, admin = create_staff(db, name="A", role="admin")
    db.commit()  # an error response rolls the request's session back; keep the staff rows
    account = new_id("acc")
    body = {"verified": True, "nsfw_opt_in": True}
    assert client.put(f"/v1/moderation/policies/accounts/{account}", headers=auth(reviewer),
                      json=body).status_code == 403
    r = client.put(f"/v1/moderation/policies/accounts/{account}", headers=auth(admin), json=body)
    assert r.status_code == 200 and r.json()["nsfw_opt_in"] is True
    bad = client.put(f"/v1/moderation/policies/models/{new_id('mdl')}", headers=auth(admin),
                     json={"actions": {"csam": "allow"}})
    assert bad.status_code == 422 and "csam" in bad.json()["detail"]


def test_records_and_stats(client: TestClient, db: Session) -> None:
    _, key = create_staff(db, name="R")
    model, request = new_id("mdl"), new_id("req")
    check_input(db, account_id=new_id("acc"), model_id=model, request_id=request, input={"prompt": "a dog"})
    (record,) = client.get(f"/v1/moderation/records?request_id={request}", headers=auth(key)).json()
    assert record["decision"] == "passed" and record["policy_version"].startswith("pol_")
    rows = client.get("/v1/moderation/stats?by=model", headers=auth(key)).json()
    assert any(r["subject_id"] == model and r["inputs_checked"] == 1 for r in rows)
    assert client.get("/v1/moderation/stats?by=planet", headers=auth(key)).status_code == 422


def test_review_page_login_and_form(client: TestClient, db: Session) -> None:
    _, key = create_staff(db, name="Page Reviewer")
    account = new_id("acc")
    check_input(db, account_id=account, model_id=new_id("mdl"), input={"prompt": "jailbait selfie in a red kitchen"})
    db.commit()
    assert client.post("/moderation/login", data={"key": "mgs_nope"}).status_code == 401
    r = client.post("/moderation/login", data={"key": key}, follow_redirects=False)
    assert r.status_code == 303 and "samesite=strict" in r.headers["set-cookie"].lower()
    page = client.get("/moderation/review")
    assert page.status_code == 200 and "Page Reviewer" in page.text
    assert account in page.text and "red kitchen" not in page.text
    task_id = re.search(r'action="/moderation/review/tasks/(rvw_\w+)"', page.text).group(1)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    forged = client.post(f"/moderation/review/tasks/{task_id}",
                         data={"resolution": "dismissed", "csrf": "1.bad"}, follow_redirects=False)
    assert forged.status_code == 403
    done = client.post(f"/moderation/review/tasks/{task_id}", follow_redirects=False,
                       data={"resolution": "confirmed", "note": "ok", "csrf": csrf})
    assert done.status_code == 303
