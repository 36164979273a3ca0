"""Server-Sent Events of one request, replayed and followed from its Redis stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from gateway import events
from gateway import repository as repo
from gateway.follow import follow
from gateway.models import FINAL_STATUSES
from kit.db import session_scope
from kit.settings import get_settings

DESCRIPTION = (
    "A `text/event-stream`. Each event has an `id:` (send it back as `Last-Event-ID` to resume "
    "without a gap), an `event:` (`status`, `progress`, `log`, `output`, `done`) and JSON `data:`. "
    "`done` carries the final envelope and ends the stream; `: keep-alive` comments come every 15 s."
)
KEEPALIVE_MS = 15_000


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


async def _from_database(request_id: str, account_id: str) -> AsyncIterator[bytes]:
    # Without Redis there is no stream: report status changes read from the database.
    last = None
    while True:
        status = await asyncio.to_thread(_current_status, request_id)
        if status != last:
            last = status
            yield frame("status", {"status": status})
        if status in FINAL_STATUSES:
            final = await asyncio.to_thread(_final_envelope, request_id, account_id)
            yield frame("done", final or {"status": status})
            return
        await asyncio.sleep(0.2)


async def stream(request_id: str, account_id: str, last_event_id: str | None) -> AsyncIterator[bytes]:
    """Replay the request's events after `last_event_id`, then follow until `done`."""
    if not get_settings().redis_url:
        async for chunk in _from_database(request_id, account_id):
            yield chunk
        return
    yield b"retry: 1000\n\n"
    after = last_event_id or "0"
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
                final = await asyncio.to_thread(_final_envelope, request_id, account_id)
                if final is not None:
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
