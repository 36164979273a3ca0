"""Request events in Redis Streams, so any API process can follow and replay any request.

Each request has one stream (`XADD` gives every event a sortable id); SSE replays it from
`Last-Event-ID` and follows it with `XREAD BLOCK`, so a dropped connection loses nothing.
The database stays the source of truth: a missed event is recovered from the request row.
Without Redis (the embedded default), or while it is away, waiting polls the database.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy.orm import Session

from gateway.config import get_gateway_settings
from kit.db import after_commit
from kit.pipelined import pipeline_for
from kit.settings import get_settings

log = logging.getLogger(__name__)
# Events customers see; `cancel` is a signal to the worker running the request.
PUBLIC_EVENTS = ("status", "progress", "log", "output", "done")
MAXLEN = 5000
# Blocking reads wait up to 15 s; the socket may stay quiet a little longer than that.
SOCKET_TIMEOUT_S = 30
# A Redis host that stops answering (cut off, not refusing) is given up on this fast.
CONNECT_TIMEOUT_S = 5
# Redis unreachable, reset or timing out: the stream is away, the database is not.
REDIS_AWAY = (RedisError, OSError)
DB_POLL_S = 0.05


def stream_key(request_id: str) -> str:
    return f"mediagate:events:{request_id}"


@functools.cache
def _sync_redis() -> Any:
    import redis

    return redis.Redis.from_url(get_settings().redis_url, socket_timeout=SOCKET_TIMEOUT_S,
                                socket_connect_timeout=CONNECT_TIMEOUT_S)


# Keyed by the loop itself (weakly): a client is bound to its loop, and a closed loop's id
# may be reused by a new one.
_async_clients: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def async_redis() -> Any:
    """This event loop's Redis client (a client is bound to the loop that made it)."""
    import redis.asyncio as aioredis

    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = _async_clients[loop] = aioredis.Redis.from_url(
            get_settings().redis_url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=CONNECT_TIMEOUT_S)
    return client


def publish(request_id: str, kind: str, data: dict[str, Any]) -> str | None:
    """Append an event now (best effort: the database stays the source of truth)."""
    ids = publish_many(request_id, [(kind, data)])
    return ids[0] if ids else None


def publish_many(request_id: str, batch: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Append several events in order, in one round trip."""
    if not get_settings().redis_url or not batch:
        return []
    key = stream_key(request_id)
    deferred = pipeline_for(_sync_redis())
    try:
        pipe = _sync_redis().pipeline(transaction=False) if deferred is None else deferred
        for kind, data in batch:
            pipe.xadd(key, {"type": kind, "data": json.dumps(data, default=str)}, maxlen=MAXLEN,
                      approximate=True)
        pipe.expire(key, get_gateway_settings().events_ttl_s)
        if deferred is not None:  # sent with the rest of the batch's writes; ids unknown yet
            return []
        *ids, _ = pipe.execute()
        return [i.decode() if isinstance(i, bytes) else i for i in ids]
    except Exception:  # noqa: BLE001 - a missed event is recovered from the database
        return []


def publish_after_commit(session: Session, request_id: str, kind: str, data: dict[str, Any]) -> None:
    """Publish once the session's transaction commits."""
    after_commit(session, lambda: publish(request_id, kind, data))


def decode(entries: list[Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Stream entries as (id, type, data)."""
    out = []
    for raw_id, fields in entries:
        event_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
        kind = fields.get(b"type", fields.get("type", b""))
        data = fields.get(b"data", fields.get("data", b"{}"))
        out.append((event_id, kind.decode() if isinstance(kind, bytes) else kind, json.loads(data)))
    return out


async def read(request_id: str, after: str, *, block_ms: int | None, count: int = 200) -> list[tuple[str, str, dict[str, Any]]]:
    """Events after the id `after` ("0" for all); waits up to `block_ms` when there are none."""
    reply = await async_redis().xread({stream_key(request_id): after}, count=count, block=block_ms)
    return decode(reply[0][1]) if reply else []


def read_sync(request_id: str, after: str, *, block_ms: int | None, count: int = 200) -> list[tuple[str, str, dict[str, Any]]]:
    """As `read`, from a worker thread."""
    reply = _sync_redis().xread({stream_key(request_id): after}, count=count, block=block_ms)
    return decode(reply[0][1]) if reply else []


async def replay(request_id: str, after: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Every event after `after` that the stream holds now, without waiting."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    while True:
        got = await read(request_id, after, block_ms=None, count=500)
        out.extend(got)
        if len(got) < 500:
            return out
        after = got[-1][0]


async def wait_until(is_done: Callable[[], bool], request_id: str, timeout: float) -> dict[str, Any] | None:
    """Wait until the request is final or `timeout` passes; returns the `done` event's envelope when
    the stream had it (None: read the request from the database)."""
    deadline = time.monotonic() + timeout
    if get_settings().redis_url:
        try:
            return await _wait_on_stream(is_done, request_id, deadline)
        except REDIS_AWAY:
            log.warning("event stream of %s unavailable; waiting on the database", request_id, exc_info=True)
    while not await asyncio.to_thread(is_done) and time.monotonic() < deadline:
        await asyncio.sleep(DB_POLL_S)
    return None


async def _wait_on_stream(is_done: Callable[[], bool], request_id: str, deadline: float) -> dict[str, Any] | None:
    from gateway.follow import follow

    # The stream holds the request's whole history, so reading it from the start also finds
    # a `done` that came before we looked; the database is asked only when the stream is quiet.
    history = await replay(request_id, "0")
    for _, kind, data in history:
        if kind == "done":
            return data
    if not history and await asyncio.to_thread(is_done):
        return None
    async with follow(request_id, history[-1][0] if history else "0") as follower:
        while (remaining := deadline - time.monotonic()) > 0:
            batch = await follower.next(min(remaining, 5.0))
            for _, kind, data in batch:
                if kind == "done":
                    return data
            if not batch and await asyncio.to_thread(is_done):
                return None
    return None
