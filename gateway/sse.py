"""Server-Sent Events of one request, replayed and followed from its Redis stream."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy import exc as sa_exc

from gateway import events
from gateway import repository as repo
from gateway.follow import follow
from gateway.models import FINAL_STATUSES
from kit.db import database_unreachable, session_scope
from kit.settings import get_settings

DESCRIPTION = (
    "A `text/event-stream`. Each event has an `id:` (send it back as `Last-Event-ID` to resume "
    "without a gap), an `event:` (`status`, `progress`, `log`, `output`, `done`) and JSON `data:`. "
    "`done` carries the final envelope and ends the stream; `: keep-alive` comments come every 15 s."
)
KEEPALIVE_MS = 15_000
log = logging.getLogger(__name__)
AWAY = object()


def frame(kind: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    """One SSE event."""
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n".encode()


def _final_envelope(request_id: str, account_id: str) -> dict[str, Any] | None:
    from gateway.envelope import envelope

    with session_scope() as session:
        req = repo.request_of_account(session, request_id, account_id)
        if req is None or req.status not in FINAL_STATUSES:
            return None
        return envelope(session, req).model_dump(mode="json")


def _current_status(request_id: str) -> str | None:
    from gateway.models import Request

    with session_scope() as session:
        req = session.get(Request, request_id)
        return None if req is None else req.status


async def _ask_database(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` in a thread; `AWAY` while the database is unreachable (the stream stays open)."""
    try:
        return await asyncio.to_thread(fn, *args)
    except (sa_exc.DBAPIError, sa_exc.TimeoutError) as exc:
        if not database_unreachable(exc):
            raise
        return AWAY


async def _from_database(request_id: str, account_id: str) -> AsyncIterator[bytes]:
    # Without Redis there is no stream: report status changes read from the database.
    last = None
    while True:
        status = await _ask_database(_current_status, request_id)
        if status is AWAY:
            await asyncio.sleep(1.0)
            continue
        if status != last:
            last = status
            yield frame("status", {"status": status})
        if status in FINAL_STATUSES:
            final = await _ask_database(_final_envelope, request_id, account_id)
            yield frame("done", final if isinstance(final, dict) else {"status": status})
            return
        await asyncio.sleep(0.2)


async def stream(request_id: str, account_id: str, last_event_id: str | None) -> AsyncIterator[bytes]:
    """Replay the request's events after `last_event_id`, then follow until `done`."""
    if not get_settings().redis_url:
        async for chunk in _from_database(request_id, account_id):
            yield chunk
        return
    yield b"retry: 1000\n\n"
    try:
        async for chunk in _from_stream(request_id, account_id, last_event_id or "0"):
            yield chunk
    except events.REDIS_AWAY:
        # Redis went away: the rest of the story comes from the database, the source of truth.
        log.warning("event stream of %s unavailable; following the database", request_id, exc_info=True)
        async for chunk in _from_database(request_id, account_id):
            yield chunk


async def _from_stream(request_id: str, account_id: str, after: str) -> AsyncIterator[bytes]:
    history = await events.replay(request_id, after)
    for event_id, kind, data in history:
        after = event_id
        if kind in events.PUBLIC_EVENTS:
            yield frame(kind, data, event_id)
        if kind == "done":
            return
    async with follow(request_id, after) as follower:
        quiet = not history
        while True:
            if quiet:
                # Nothing new: a request that is over (its stream lost or expired) ends here
                # from the database, the source of truth; otherwise keep the line open.
                final = await _ask_database(_final_envelope, request_id, account_id)
                if isinstance(final, dict):
                    yield frame("status", {"status": final["status"]})
                    yield frame("done", final)
                    return
            batch = await follower.next(KEEPALIVE_MS / 1000)
            quiet = not batch
            if quiet:
                yield b": keep-alive\n\n"
            for event_id, kind, data in batch:
                if kind in events.PUBLIC_EVENTS:
                    yield frame(kind, data, event_id)
                if kind == "done":
                    return
