"""Request events over Redis pub/sub, so any API process can follow any request.

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

from kit.db import after_commit
from kit.settings import get_settings


def channel(request_id: str) -> str:
    return f"mediagate:request:{request_id}"


@functools.cache
def _sync_redis() -> Any:
    import redis

    return redis.Redis.from_url(get_settings().redis_url)


def publish(request_id: str, kind: str, data: dict[str, Any]) -> None:
    """Publish an event now (best effort: the database stays the source of truth)."""
    if not get_settings().redis_url:
        return
    message = json.dumps({"type": kind, "data": data, "ts": time.time()})
    try:
        _sync_redis().publish(channel(request_id), message)
    except Exception:  # noqa: BLE001 - a missed event is recovered from the database
        pass


def publish_after_commit(session: Session, request_id: str, kind: str, data: dict[str, Any]) -> None:
    """Publish once the session's transaction commits."""
    after_commit(session, lambda: publish(request_id, kind, data))


async def wait_until(is_done: Callable[[], bool], request_id: str, timeout: float) -> None:
    """Return when `is_done()` holds (checked on each event and at least every second) or at timeout."""
    deadline = time.monotonic() + timeout
    settings = get_settings()
    if not settings.redis_url:
        while not await asyncio.to_thread(is_done) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(settings.redis_url)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(channel(request_id))
        while not await asyncio.to_thread(is_done):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await pubsub.get_message(ignore_subscribe_messages=True, timeout=min(remaining, 1.0))
    finally:
        await pubsub.aclose()
        await client.aclose()
