"""Following many request streams with one blocking Redis read per API process.

A thousand open SSE streams or long polls would otherwise hold a thousand Redis
connections, each parked in its own `XREAD BLOCK`. Here one task per event loop reads every
followed stream in a single `XREAD BLOCK` and hands each event to the followers that have
not seen it. A follower that joins while that read is parked wakes it through a stream of
the process's own, so the new stream is read at once, not after the block times out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
import weakref
from collections.abc import AsyncIterator
from typing import Any

from gateway import events

log = logging.getLogger(__name__)
BLOCK_MS = 5_000
Event = tuple[str, str, dict[str, Any]]


def _key(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


class Follower:
    """One reader of one request's events, positioned after the last event it saw."""

    def __init__(self, request_id: str, after: str) -> None:
        self.request_id, self.after = request_id, after
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    async def next(self, timeout: float) -> list[Event]:
        """The events that arrived (waiting up to `timeout` s for the first); [] when none did."""
        try:
            first = await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return []
        batch = [first]
        while not self.queue.empty():
            batch.append(self.queue.get_nowait())
        return batch


class Hub:
    """This event loop's reader of every followed stream."""

    def __init__(self) -> None:
        self.followers: dict[str, set[Follower]] = {}
        self.wake_key = f"mediagate:wake:{uuid.uuid4().hex}"
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def add(self, follower: Follower) -> None:
        self.followers.setdefault(follower.request_id, set()).add(follower)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run())
        self.changed.set()
        # Interrupt a read parked on the old set of streams (without it, the new stream is read
        # when that read's block ends).
        try:
            client = events.async_redis()
            await client.xadd(self.wake_key, {"w": "1"}, maxlen=10, approximate=True)
            await client.expire(self.wake_key, 3600)
        except events.REDIS_AWAY:
            log.warning("could not wake the event hub; Redis is away", exc_info=True)

    def remove(self, follower: Follower) -> None:
        group = self.followers.get(follower.request_id)
        if group is not None:
            group.discard(follower)
            if not group:
                del self.followers[follower.request_id]

    async def _run(self) -> None:
        client = events.async_redis()
        while True:
            if not self.followers:
                self.changed.clear()
                await self.changed.wait()
                continue
            self.changed.clear()
            streams: dict[str, str] = {self.wake_key: "$"}
            for request_id, group in self.followers.items():
                streams[events.stream_key(request_id)] = min((f.after for f in group), key=_key)
            try:
                reply = await client.xread(streams, count=500, block=BLOCK_MS)
            except Exception:  # noqa: BLE001 - a Redis hiccup: followers fall back on the database
                log.warning("event hub read failed; retrying", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            for raw_key, entries in reply or []:
                key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
                if key == self.wake_key:
                    continue
                request_id = key.removeprefix(events.stream_key(""))
                for event in events.decode(entries):
                    for follower in self.followers.get(request_id, ()):
                        if _key(event[0]) > _key(follower.after):
                            follower.after = event[0]
                            follower.queue.put_nowait(event)


_hubs: weakref.WeakKeyDictionary[Any, Hub] = weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def follow(request_id: str, after: str) -> AsyncIterator[Follower]:
    """Receive the request's events after `after` until the block exits."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = Hub()
    follower = Follower(request_id, after)
    await hub.add(follower)
    try:
        yield follower
    finally:
        hub.remove(follower)
