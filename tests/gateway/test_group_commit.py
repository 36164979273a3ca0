"""Group commit on real PostgreSQL and Redis: concurrent submits share transactions and
Redis round trips, and one failing submit never fails or duplicates its neighbours."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from gateway import group_commit, service
from gateway.models import Request
from kit.db import after_commit, session_scope
from kit.errors import Conflict, InvalidInput
from kit.settings import get_settings
from kit.tasks import _publisher, enqueue, get_celery
from tests.support import deploy_stepper

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def commits(committed: Engine) -> Iterator[list[int]]:
    """How many transactions the engine committed while the test ran."""
    seen: list[int] = []

    def count(conn: object) -> None:
        seen.append(1)

    event.listen(committed, "commit", count)
    yield seen
    event.remove(committed, "commit", count)


@pytest.fixture
def probe(committed: Engine) -> Iterator[None]:
    with committed.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS group_commit_probe (v text PRIMARY KEY)"))
    yield
    with committed.begin() as conn:
        conn.execute(text("DROP TABLE group_commit_probe"))


def _insert(value: str):  # type: ignore[no-untyped-def]
    def job(s: Session) -> str:
        s.execute(text("INSERT INTO group_commit_probe VALUES (:v)"), {"v": value})
        return value
    return job


def _stored() -> list[str]:
    with session_scope() as s:
        return list(s.scalars(text("SELECT v FROM group_commit_probe ORDER BY v")))


def test_a_client_error_fails_its_own_job_and_the_batch_commits_once(probe: None, commits: list[int]) -> None:
    def refused(s: Session) -> str:
        raise InvalidInput("input.steps: not an integer", field="input.steps")

    outcomes = group_commit.run_batch([_insert("a"), refused, _insert("b")])
    assert outcomes[0] == (True, "a") and outcomes[2] == (True, "b")
    assert outcomes[1][0] is False and isinstance(outcomes[1][1], InvalidInput)
    assert _stored() == ["a", "b"]
    assert len(commits) == 2  # the batch, and the read above


def test_a_crash_after_writing_rolls_back_and_each_job_runs_alone(probe: None) -> None:
    def crashes(s: Session) -> str:
        s.execute(text("INSERT INTO group_commit_probe VALUES ('lost')"))
        raise RuntimeError("a bug")

    outcomes = group_commit.run_batch([_insert("c"), crashes, _insert("d")])
    assert outcomes[0] == (True, "c") and outcomes[2] == (True, "d")
    assert outcomes[1][0] is False and isinstance(outcomes[1][1], RuntimeError)
    assert _stored() == ["c", "d"]  # each once; the crashed job's write is gone


def test_a_client_error_after_a_write_is_not_trusted_with_the_batch(probe: None) -> None:
    ran: list[str] = []

    def late(s: Session) -> str:
        after_commit(s, lambda: ran.append("hook"))
        raise Conflict("this Idempotency-Key was used with a different body")

    outcomes = group_commit.run_batch([_insert("e"), late])
    assert outcomes[0] == (True, "e")
    assert outcomes[1][0] is False and isinstance(outcomes[1][1], Conflict)
    assert _stored() == ["e"] and ran == []  # the failed job's follow-up never ran


def test_a_failed_commit_fails_every_job_of_the_batch(probe: None) -> None:
    # Both rows pass their INSERT and collide only at COMMIT (a deferred constraint).
    with session_scope() as s:
        s.execute(text("ALTER TABLE group_commit_probe DROP CONSTRAINT group_commit_probe_pkey"))
        s.execute(text("ALTER TABLE group_commit_probe ADD CONSTRAINT probe_unique UNIQUE (v) "
                       "DEFERRABLE INITIALLY DEFERRED"))
    outcomes = group_commit.run_batch([_insert("f"), _insert("f")])
    assert [ok for ok, _ in outcomes] == [False, False]
    assert _stored() == []


def test_follow_up_writes_go_out_once_the_batch_commits(probe: None, redis_client) -> None:  # type: ignore[no-untyped-def]
    publisher = _publisher(get_celery())
    assert publisher is not None

    def sends(value: str):  # type: ignore[no-untyped-def]
        def job(s: Session) -> str:
            _insert(value)(s)
            enqueue(s, "gateway.run_request", value, queue="pool.probe")
            return value
        return job

    def refused(s: Session) -> str:
        raise InvalidInput("no")

    group_commit.run_batch([sends("g"), refused, sends("h")])
    messages = redis_client.lrange(publisher.key("pool.probe", None), 0, -1)
    assert len(messages) == 2


def _deployed(tmp: Path) -> tuple[str, str]:
    """A deployed, priced model and a customer key; returns (key, owner/model)."""
    with session_scope() as s:
        account, ref = deploy_stepper(s, tmp)
        return service.issue_key(s, account), ref


def test_concurrent_submits_share_commits_and_one_key_makes_one_request(
        commits: list[int], redis_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from gateway.app import create_app

    key, ref = _deployed(tmp_path)
    headers = {"Authorization": f"Key {key}"}

    async def load() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(check_schema=False))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            def submit(i: int, **extra: str) -> object:
                return client.post(f"/v1/models/{ref}/requests", json={"input": {"steps": 1}},
                                   headers={**headers, **extra})
            calls = [submit(i) for i in range(40)]
            calls += [submit(0, **{"Idempotency-Key": "twice"}) for _ in range(2)]
            return await asyncio.gather(*calls)  # type: ignore[arg-type]

    before = len(commits)
    answers = asyncio.run(load())
    assert [a.status_code for a in answers[:40]] == [201] * 40
    assert sorted(a.status_code for a in answers[40:]) == [200, 201]
    assert answers[40].json()["id"] == answers[41].json()["id"]
    assert len(commits) - before < 30  # without group commit: one per submit (42)
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Request)) == 41
    publisher = _publisher(get_celery())
    assert publisher is not None
    queue = f"pool.p-{ref.split('/')[0]}"
    # The task messages and `queued` events follow the answers, in one pipeline per client.
    deadline = time.monotonic() + 10
    while redis_client.llen(publisher.key(queue, 0)) < 41 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert redis_client.llen(publisher.key(queue, 0)) == 41
    events = [k for k in redis_client.scan_iter("mediagate:events:*")]
    assert len(events) == 41
    assert get_settings().redis_url


def test_plain_submits_of_a_batch_are_one_insert_with_the_positions_a_read_gives(
        committed: Engine, tmp_path: Path) -> None:
    from gateway import repository as repo
    from gateway.auth import authenticate

    key, ref = _deployed(tmp_path)
    owner, model = ref.split("/")

    def submitter(priority: str):  # type: ignore[no-untyped-def]
        def job(s: Session) -> group_commit.AfterWrites:
            account = authenticate(f"Key {key}", {}, s, "requests:write")
            done = service.submit(s, account, owner=owner, model_slug=model, input={"steps": 1}, priority=priority)
            return group_commit.AfterWrites(lambda: (done.request.id, done.queue_position))
        return job

    inserts: list[str] = []

    def seen(conn, cursor, statement: str, *args: object) -> None:  # type: ignore[no-untyped-def]
        if statement.startswith("INSERT INTO requests"):
            inserts.append(statement)

    group_commit.run_batch([submitter("normal"), submitter("low")])
    event.listen(committed, "before_cursor_execute", seen)
    try:
        outcomes = group_commit.run_batch([submitter(p) for p in ("low", "normal", "low", "normal")])
    finally:
        event.remove(committed, "before_cursor_execute", seen)
    assert len(inserts) == 1
    assert [ok for ok, _ in outcomes] == [True] * 4
    positions = [value for _, value in outcomes]
    assert [p for _, p in positions] == [4, 1, 5, 2]  # normal ones go before low ones
    with session_scope() as s:
        for request_id, position in positions:
            assert position == repo.queue_position(s, s.get(Request, request_id))


def test_a_batch_takes_its_rate_limit_tokens_together_and_a_refusal_writes_nothing(
        probe: None, redis_client) -> None:  # type: ignore[no-untyped-def]
    from gateway import limits
    from kit.errors import RateLimited

    states: list[dict] = [{} for _ in range(3)]

    def admitted(i: int) -> group_commit.Admitted:
        def admit(s: Session) -> tuple[str, limits.Charge]:
            return f"caller-{i}", limits.Charge(states[i], "w:probe-key", rate_per_s=0.01, burst=2)

        def work(s: Session, who: str) -> str:
            return _insert(f"{who}")(s)

        return group_commit.Admitted(admit, work)

    outcomes = group_commit.run_batch([admitted(0), admitted(1), admitted(2)])
    assert outcomes[:2] == [(True, "caller-0"), (True, "caller-1")]
    assert outcomes[2][0] is False and isinstance(outcomes[2][1], RateLimited)
    assert _stored() == ["caller-0", "caller-1"]
    assert [s["ratelimit_headers"]["RateLimit-Remaining"] for s in states] == ["1", "0", "0"]
    assert "Retry-After" in states[2]["ratelimit_headers"]
