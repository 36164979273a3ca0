"""The per-process cache of policies and holds: reused while nothing changes, dropped at once
when something does, in this process and, through Redis, in another one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from kit.db import session_scope
from kit.ids import new_id
from moderation import cache
from moderation.config import get_moderation_settings
from moderation.models import AccountHold
from moderation.policy_service import effective_policy, set_account_policy
from moderation.service import check_input, is_account_suspended
from tests.support import ROOT

pytestmark = pytest.mark.timeout(60)

# Long enough that only an invalidation, never the TTL, can explain a change seen in a test.
TTL = "60"

# Follows one account's hold status from another process, printing each change it sees.
WATCHER = """
import sys, time
from kit.db import session_scope
from moderation.service import is_account_suspended
account_id = sys.argv[1]
last = None
deadline = time.monotonic() + 45
while time.monotonic() < deadline:
    with session_scope() as s:
        now = is_account_suspended(s, account_id)
    if now != last:
        print(f"{now} {time.time():.3f}", flush=True)
        last = now
    time.sleep(0.01)
"""


@pytest.fixture
def caching(moderation_env: pytest.MonkeyPatch, committed: Engine, redis_client) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """The cache on, as in production, over committed data."""
    moderation_env.setenv("MEDIAGATE_MODERATION_CACHE_TTL_S", TTL)
    get_moderation_settings.cache_clear()
    with session_scope() as s:
        is_account_suspended(s, new_id("acc"))  # starts this process's listener
    assert cache.listening.wait(10)
    cache.forget(cache.EVERYTHING)
    yield
    cache.forget(cache.EVERYTHING)


def _hold(account_id: str) -> None:
    with session_scope() as s:
        s.add(AccountHold(account_id=account_id, category="csam", reason="test"))


def _release(account_id: str) -> None:
    with session_scope() as s:
        for hold in s.scalars(select(AccountHold).where(AccountHold.account_id == account_id)):
            hold.status = "released"


def _suspended(account_id: str) -> bool:
    with session_scope() as s:
        return is_account_suspended(s, account_id)


def test_hold_is_cached_until_this_process_changes_it(caching) -> None:  # type: ignore[no-untyped-def]
    account_id = new_id("acc")
    assert _suspended(account_id) is False
    # Written behind the ORM's back: the cache has no way to know, so it answers from memory.
    with session_scope() as s:
        s.connection().execute(AccountHold.__table__.insert(), {
            "id": new_id("hold"), "account_id": account_id, "status": "active", "category": "csam",
            "reason": "raw"})
    assert _suspended(account_id) is False
    _hold(account_id)  # through the ORM: the entry is dropped on commit
    assert _suspended(account_id) is True
    _release(account_id)
    assert _suspended(account_id) is False


def test_a_session_with_uncommitted_changes_reads_around_the_cache(caching) -> None:  # type: ignore[no-untyped-def]
    account_id = new_id("acc")
    assert _suspended(account_id) is False
    with session_scope() as s:
        s.add(AccountHold(account_id=account_id, category="csam", reason="never committed"))
        s.flush()
        assert is_account_suspended(s, account_id) is True  # its own write, not cached
        s.rollback()
    assert _suspended(account_id) is False  # the rolled-back hold was not remembered


def test_policy_change_reaches_the_next_check_at_once(caching) -> None:  # type: ignore[no-untyped-def]
    account_id, model_id = new_id("acc"), new_id("mdl")
    with session_scope() as s:
        before = effective_policy(s, account_id=account_id, model_id=model_id)
        assert check_input(s, account_id=account_id, model_id=model_id,
                           input={"prompt": "a bowl of marzipan fruit"}).decision == "passed"
    with session_scope() as s:
        set_account_policy(s, account_id=account_id, changed_by="stf_test", custom_terms=["marzipan"])
    with session_scope() as s:
        after = effective_policy(s, account_id=account_id, model_id=model_id)
        verdict = check_input(s, account_id=account_id, model_id=model_id,
                              input={"prompt": "a bowl of marzipan fruit"})
    assert after.fingerprint != before.fingerprint
    assert verdict.blocked and verdict.categories == ["custom"]


def test_another_process_hears_of_a_new_hold_and_its_release(caching) -> None:  # type: ignore[no-untyped-def]
    account_id = new_id("acc")
    env = {**os.environ, "MEDIAGATE_MODERATION_CACHE_TTL_S": TTL}
    watcher = subprocess.Popen([sys.executable, "-c", WATCHER, account_id], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout is not None
        first = watcher.stdout.readline()
        assert first.startswith("False"), first or watcher.stderr.read()
        time.sleep(0.5)  # its listener has subscribed; its entry is cached for the next 60 s
        for change, expected in ((_hold, "True"), (_release, "False")):
            t0 = time.time()
            change(account_id)
            line = watcher.stdout.readline()
            assert line.split()[0] == expected, line
            assert float(line.split()[1]) - t0 < 1.0  # an invalidation, not the 60 s TTL
    finally:
        watcher.kill()
        watcher.wait(timeout=10)
