"""The submit path's own pieces on real PostgreSQL and Redis: the one-statement insert with
its queue position, a duplicate Idempotency-Key under a concurrent first submit, and task
messages written straight to the broker as Celery's `send_task` writes them."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from billing.models import Account
from gateway import repository as repo
from gateway import service
from gateway.models import Request
from kit.db import session_scope, utcnow
from kit.errors import Conflict
from kit.ids import new_id
from kit.tasks import _publisher, get_celery, send_now
from moderation import repository as moderation_repo
from moderation.models import ModerationRecord
from moderation.service import check_input
from tests.support import deploy_stepper

pytestmark = pytest.mark.timeout(120)


def _deployed(s: Session, tmp: Path) -> tuple[Account, str]:
    return deploy_stepper(s, tmp)


def _submit(s: Session, account: Account, ref: str, **kw) -> service.Submitted:  # type: ignore[no-untyped-def]
    owner, model = ref.split("/")
    return service.submit(s, account, owner=owner, model_slug=model, input={"steps": 1}, **kw)


def test_the_insert_counts_the_same_queue_position_as_a_read(db: Session, tmp_path: Path) -> None:
    account, ref = _deployed(db, tmp_path)
    done = [_submit(db, account, ref, priority=p) for p in ("normal", "low", "normal", "low", "normal")]
    assert [d.created for d in done] == [True] * 5
    # Normal requests queue before low ones, each in arrival order.
    assert [d.queue_position for d in done] == [0, 1, 1, 3, 2]
    for d in done:
        row = db.get(Request, d.request.id)
        assert row is d.request  # the written object is the session's own
        assert row.status == "queued" and row.cost_micros == 0 and row.attempts == 0
        # Its input check's record went in with it, in the same statement.
        [record] = moderation_repo.records_for_request(db, row.id)
        assert (record.stage, record.decision, record.account_id) == ("input", "passed", account.id)
    # Each count matches what `queue_position` reads, given what was queued when it was written.
    assert repo.queue_position(db, done[-1].request) == done[-1].queue_position


def test_idempotency_key_returns_the_first_request_and_refuses_another_body(db: Session, tmp_path: Path) -> None:
    account, ref = _deployed(db, tmp_path)
    first = _submit(db, account, ref, idempotency_key="order-1")
    again = _submit(db, account, ref, idempotency_key="order-1")
    assert first.created and not again.created and again.request.id == first.request.id
    with pytest.raises(Conflict):
        owner, model = ref.split("/")
        service.submit(db, account, owner=owner, model_slug=model, input={"steps": 2}, idempotency_key="order-1")


def test_a_duplicate_key_waits_for_the_first_submit_then_finds_it(committed: Engine, tmp_path: Path) -> None:
    with session_scope() as s:
        account, ref = _deployed(s, tmp_path)
    owner, model = ref.split("/")

    def request(s: Session) -> Request:
        target = service._target(s, owner, model)
        return Request(id=new_id("req"), account_id=account.id, model_id=target.model_id,
                       version_id=target.version_id, deployment_id=target.deployment_id, model_ref=ref,
                       pool=target.pool, priority="normal", input={}, idempotency_key="same",
                       body_digest="d", created_at=utcnow())

    def record(s: Session, req: Request) -> dict:
        verdict = check_input(s, account_id=account.id, model_id=req.model_id, input={},
                              request_id=req.id, defer_record=True)
        assert verdict.record is not None
        return verdict.record

    results: list[tuple[bool, int | None]] = []
    with session_scope() as first:
        req = request(first)
        assert repo.insert_request(first, req, record=record(first, req))[0] is True

        def second() -> None:
            with session_scope() as s:
                req = request(s)
                results.append(repo.insert_request(s, req, record=record(s, req)))

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(1.0)
        assert thread.is_alive()  # held on the unique index until the first transaction ends
    thread.join(30)
    assert results == [(False, None)]
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Request)) == 1
        # The second submit's check record was not written: it belongs to no request.
        assert s.scalar(select(func.count()).select_from(ModerationRecord)) == 1


def _stored(raw: bytes) -> dict:
    message = json.loads(raw)
    for key in ("id", "root_id"):
        message["headers"].pop(key)
    for key in ("correlation_id", "delivery_tag"):
        message["properties"].pop(key)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


@pytest.mark.parametrize(("priority", "key"), [(None, "q.t"), (0, "q.t"), (2, "q.t"), (4, "q.t\x06\x163"),
                                               (6, "q.t\x06\x166"), (9, "q.t\x06\x169")])
def test_a_plain_send_writes_what_send_task_writes(redis_client, priority: int | None, key: str) -> None:  # type: ignore[no-untyped-def]
    app = get_celery()
    publisher = _publisher(app)
    assert publisher is not None  # the tests' broker is Redis
    options = {} if priority is None else {"priority": priority}
    app.send_task("gateway.run_request", args=["req_1", 2], queue="q.t", headers={"traceparent": "00-ab-cd-01"},
                  **options)
    expected = _stored(redis_client.rpop(key))
    publisher.publish("gateway.run_request", ["req_1", 2], "q.t", {"traceparent": "00-ab-cd-01"}, priority)
    assert _stored(redis_client.rpop(key)) == expected
    assert redis_client.keys("q.t*") == []


def test_a_countdown_goes_through_send_task(redis_client) -> None:  # type: ignore[no-untyped-def]
    send_now("gateway.deliver_webhook", "whd_1", queue="q.t", countdown=30)
    message = _stored(redis_client.rpop("q.t"))
    assert message["headers"]["task"] == "gateway.deliver_webhook" and message["headers"]["eta"]
