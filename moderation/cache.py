"""What every input check reads, kept per process: policy layers and account holds.

Policies and holds change rarely and are read on every submit. Each process keeps them for
`MEDIAGATE_MODERATION_CACHE_TTL_S` (2 s by default; 0 turns the cache off). A change is
noticed wherever it is flushed through the ORM: the process that makes it drops its entries
at once and again after commit, and, when Redis is configured, tells every other process
through one pub/sub channel, so a new hold or policy reaches them in about a millisecond.
The TTL is only the bound for when Redis is unreachable.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from itertools import chain
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.orm import Session

from kit.db import after_commit
from kit.settings import get_settings
from moderation.config import get_moderation_settings
from moderation.models import AccountHold, ModerationPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")
CHANNEL = "mediagate:moderation:invalidate"
MAX_ENTRIES = 20_000
HOLD = "hold"
POLICY = "policy"
EVERYTHING = "*"

_MISSING = object()
_entries: dict[tuple[str, str], tuple[float, Any]] = {}
_lock = threading.Lock()
# Bumped by every invalidation: a value loaded before the bump is not stored after it.
_generation = 0
_listener_pid: int | None = None
# Set while this process follows the channel (cleared while it reconnects).
listening = threading.Event()
_CHANGED = "moderation_cache_changed"


def cached(session: Session, kind: str, key: str, load: Callable[[], T]) -> T:
    """`load()`'s value for (kind, key), reused until the TTL passes or it is invalidated.

    A session that has itself changed holds or policies reads around the cache: what it
    sees is not committed yet and may never be.
    """
    ttl = get_moderation_settings().cache_ttl_s
    if ttl <= 0 or session.info.get(_CHANGED):
        return load()
    _ensure_listener()
    now = time.monotonic()
    hit = _entries.get((kind, key), _MISSING)
    if hit is not _MISSING and hit[0] > now:  # type: ignore[index]
        return hit[1]  # type: ignore[index]
    generation = _generation
    value = load()
    with _lock:
        if generation == _generation:
            if len(_entries) >= MAX_ENTRIES:
                _entries.clear()
            _entries[(kind, key)] = (now + ttl, value)
    return value


def forget(kind: str, key: str = EVERYTHING) -> None:
    """Drop one entry of a kind, or all of them (`*`), in this process only."""
    global _generation
    with _lock:
        _generation += 1
        if kind == EVERYTHING:
            _entries.clear()
            return
        for k in [k for k in _entries if k[0] == kind and (key == EVERYTHING or k[1] == key)]:
            _entries.pop(k, None)


def invalidate(changes: set[tuple[str, str]]) -> None:
    """Drop entries here and tell the other processes to drop theirs."""
    for kind, key in changes:
        forget(kind, key)
    url = get_settings().redis_url
    if not url or not changes:
        return
    try:
        client = _publisher(url)
        for kind, key in changes:
            client.publish(CHANNEL, f"{kind}|{key}")
    except Exception:  # noqa: BLE001 - the TTL still bounds how long others keep the old value
        log.warning("could not broadcast a moderation cache invalidation", exc_info=True)


_publishers: dict[str, Any] = {}


def _publisher(url: str) -> Any:
    client = _publishers.get(url)
    if client is None:
        import redis

        client = _publishers[url] = redis.Redis.from_url(url, socket_timeout=2)
    return client


# -- noticing changes -------------------------------------------------------------------------


@event.listens_for(Session, "after_flush")
def _note_changes(session: Session, _flush_context: Any) -> None:
    changes: set[tuple[str, str]] = set()
    for obj in chain(session.new, session.dirty, session.deleted):
        if isinstance(obj, AccountHold):
            changes.add((HOLD, obj.account_id))
        elif isinstance(obj, ModerationPolicy):
            changes.add((POLICY, EVERYTHING))  # rare; every account's resolved policy may change
    if changes:
        session.info[_CHANGED] = True
        for kind, key in changes:
            forget(kind, key)  # this process's other threads must not read the old value meanwhile
        after_commit(session, lambda: invalidate(changes))


@event.listens_for(Session, "after_transaction_end")
def _transaction_over(session: Session, transaction: Any) -> None:
    if transaction.parent is None and not transaction.nested:
        session.info.pop(_CHANGED, None)


# -- hearing other processes' changes ---------------------------------------------------------


def _ensure_listener() -> None:
    """One daemon thread per process (a forked worker starts its own) following the channel."""
    global _listener_pid
    pid = os.getpid()
    if _listener_pid == pid:
        return
    with _lock:
        if _listener_pid == pid:
            return
        _listener_pid = pid
        _entries.clear()  # a fork inherits entries nobody will invalidate
    url = get_settings().redis_url
    if url:
        threading.Thread(target=_listen, args=(url,), name="moderation-cache", daemon=True).start()


def _listen(url: str) -> None:
    import redis

    while True:
        try:
            pubsub = redis.Redis.from_url(url, health_check_interval=30).pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(CHANNEL)
            pubsub.get_message(timeout=5)  # the subscription's confirmation: from here nothing is missed
            # Changes made while nobody listened are unknown: start from nothing.
            forget(EVERYTHING)
            listening.set()
            for message in pubsub.listen():
                data = message.get("data")
                if isinstance(data, bytes):
                    kind, _, key = data.decode().partition("|")
                    forget(kind, key or EVERYTHING)
        except Exception:  # noqa: BLE001 - keep following; entries expire meanwhile
            listening.clear()
            log.warning("moderation cache invalidations unavailable; retrying", exc_info=True)
            time.sleep(1.0)
