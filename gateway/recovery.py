"""Requests whose task the broker lost, sent again on the next housekeeping tick.

A request is committed `queued` and its task sent after the commit. A Redis broker that
restarts without persistence (no AOF) forgets every message it held: queued requests,
requests deferred by their account's concurrency limit, webhook attempts on a countdown.
The stale-request rule of `gateway.sweeps` (`requeue_stale_s`) finds such requests after
minutes; this finds them at once. A marker key lives in the broker's own database: when it
is missing, the broker lost what it held since it was set, so every queued request is sent
again. A duplicate message is harmless: a claimed request is never claimed twice, and a
webhook delivery is sent by the sweep only when it is due.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from redis.exceptions import RedisError

from gateway import repository as repo
from gateway import runs
from kit.db import session_scope, utcnow
from kit.settings import get_settings

log = logging.getLogger(__name__)
MARKER_KEY = "mediagate:broker:marker"
BATCH = 500
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


@functools.cache
def _broker_redis() -> Any:
    import redis

    return redis.Redis.from_url(get_settings().celery_broker_url, socket_timeout=5, socket_connect_timeout=5)


def broker_lost_messages() -> bool:
    """Whether the broker forgot what it held since the last look (it restarted empty or was
    flushed); sets the marker for the next look. False for a broker that is not Redis."""
    if not get_settings().celery_broker_url.startswith(REDIS_SCHEMES):
        return False
    return bool(_broker_redis().set(MARKER_KEY, utcnow().isoformat(), nx=True))


def resend_queued() -> int:
    """Send every queued request's task again, oldest first; the number sent."""
    sent, after = 0, None
    while True:
        with session_scope() as session:
            batch = repo.queued_after(session, after, BATCH)
            for req in batch:
                runs.send_again(session, req)
            if batch:
                after = (batch[-1].created_at, batch[-1].id)
        sent += len(batch)
        if len(batch) < BATCH:
            return sent


def resend_after_broker_loss() -> int:
    """On the tick after the broker lost its messages, send every queued request again."""
    try:
        lost = broker_lost_messages()
    except (RedisError, OSError):
        return 0  # the broker is away: nothing can be sent; the next tick looks again
    if not lost:
        return 0
    try:
        sent = resend_queued()
    except Exception:
        _broker_redis().delete(MARKER_KEY)  # not done: the next tick tries again
        raise
    if sent:
        log.warning("the broker lost its messages (restarted or flushed): %d queued requests sent again", sent)
    return sent
