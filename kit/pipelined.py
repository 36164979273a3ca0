"""Redis writes deferred to one pipeline per client, for work done many at a time.

Inside `collecting()`, code that writes to Redis as a best-effort follow-up (a task message,
an event) asks `pipeline_for(client)` and queues its command there; the commands of every
caller go out together when the block ends, one round trip per Redis client instead of one
per command. Outside such a block `pipeline_for` returns None and callers write directly.
What is queued is best effort by contract: a failed flush is logged, and what it carried is
redone from the database (tasks by the housekeeping sweeps, events by readers that fall back
on the request row).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)
_local = threading.local()


class Pipelines:
    """The Redis writes collected by one `collecting()` block, one pipeline per client."""

    def __init__(self) -> None:
        self.pipes: dict[int, Any] = {}

    def flush(self) -> None:
        """Send what was collected (best effort, see the module's note)."""
        pipes, self.pipes = self.pipes, {}
        for pipe in pipes.values():
            try:
                pipe.execute()
            except Exception:  # noqa: BLE001 - best effort by contract
                log.exception("a deferred Redis write failed; it is redone from the database")


@contextmanager
def collecting() -> Iterator[Pipelines]:
    """Collect the Redis writes made in this thread inside the block; the caller flushes them
    when it chooses (after answering its clients, say)."""
    if getattr(_local, "pipes", None) is not None:
        raise RuntimeError("Redis writes are already being collected in this thread")
    collected = Pipelines()
    _local.pipes = collected.pipes
    try:
        yield collected
    finally:
        _local.pipes = None


def pipeline_for(client: Any) -> Any | None:
    """The pipeline collecting writes to `client` in this thread's `collecting()` block, if any."""
    pipes = getattr(_local, "pipes", None)
    if pipes is None:
        return None
    pipe = pipes.get(id(client))
    if pipe is None:
        pipe = pipes[id(client)] = client.pipeline(transaction=False)
    return pipe
