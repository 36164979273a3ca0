"""Request events in Redis Streams, so any API process can follow and replay any request.

Each request has one stream (`XADD` gives every event a sortable id); SSE replays it from
`Last-Event-ID` and follows it with `XREAD BLOCK`, so a dropped connection loses nothing.
The database stays the source of truth: a missed event is recovered from the request row.
Without Redis (the embedded default) waiting falls back to polling the database.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from gateway.config import get_gateway_settings
from kit.db import after_commit
from kit.settings import get_settings

# Events customers see; `cancel` is a signal to the worker running the request.
PUBLIC_EVENTS = ("status", "progress", "log", "output", "done")
MAXLEN = 5000
# Blocking reads wait up to 15 s; the socket may stay quiet a little longer than that.
SOCKET_TIMEOUT_S = 30


def stream_key(request_id: str) -> str:
    return f"mediagate:events:{request_id}"


@functools.cache
def _sync_redis() -> Any:
    import redis

    return redis.Redis.from_url(get_settings().redis_url, socket_timeout=SOCKET_TIMEOUT_S)


_async_clients: dict[int, Any] = {}


def async_redis() -> Any:
    """This event loop's Redis client (a client is bound to the loop that made it)."""
    import redis.asyncio as aioredis

    loop = asyncio.get_running_loop()
    client = _async_clients.get(id(loop))
    if client is None:
        client = _async_clients[id(loop)] = aioredis.Redis.from_url(get_settings().redis_url,
                                                                    socket_timeout=SOCKET_TIMEOUT_S)
    return client


def publish(request_id: str, kind: str, data: dict[str, Any]) -> str | None:
    """Append an event now (best effort: the database stays the source of truth)."""
    if not get_settings().redis_url:
        return None
    key = stream_key(request_id)
    try:
        pipe = _sync_redis().pipeline(transaction=False)
        pipe.xadd(key, {"type": kind, "data": json.dumps(data, default=str)}, maxlen=MAXLEN,
                  approximate=True)
        pipe.expire(key, get_gateway_settings().events_ttl_s)
        event_id, _ = pipe.execute()
        return event_id.decode() if isinstance(event_id, bytes) else event_id
    except Exception:  # noqa: BLE001 - a missed event is recovered from the database
        return None


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


async def last_id(request_id: str) -> str:
    """The id of the stream's newest event, or "0" when it has none."""
    newest = await async_redis().xrevrange(stream_key(request_id), count=1)
    if not newest:
        return "0"
    raw = newest[0][0]
    return raw.decode() if isinstance(raw, bytes) else raw


async def wait_until(is_done: Callable[[], bool], request_id: str, timeout: float) -> None:
    """Return when `is_done()` holds (checked on each event and at least every few seconds) or at timeout."""
    deadline = time.monotonic() + timeout
    if not get_settings().redis_url:
        while not await asyncio.to_thread(is_done) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return
    after = await last_id(request_id)
    while not await asyncio.to_thread(is_done):
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            got = await read(request_id, after, block_ms=max(1, int(min(remaining, 5.0) * 1000)))
            if not got:
                break  # a quiet spell: look at the database again
            after = got[-1][0]
            if any(kind == "done" for _, kind, _ in got):
                return
