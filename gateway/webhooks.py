"""Webhooks: Standard Webhooks signatures, one delivery per event and URL, retries for > 24 h.

A delivery's id is the `webhook-id` of every attempt, so receivers can drop duplicates.
Attempts back off per the Standard Webhooks schedule (5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
10 h: about 27.6 h in all) with ±20 % jitter. Short waits ride on a Celery countdown; long
ones are picked up by the housekeeping tick from `next_attempt_at`, because a Redis ETA
longer than the broker's visibility timeout would be delivered twice. Redirects are not
followed, and private, loopback and link-local targets are refused unless allowed.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import secrets
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from gateway import repository as repo
from gateway.cache import cached
from gateway.config import get_gateway_settings
from gateway.models import FINAL_STATUSES, AccountSettings, Request, WebhookAttempt
from kit.db import database_unreachable, session_scope, utcnow
from kit.errors import InvalidInput
from kit.ids import new_id
from kit.tasks import enqueue, send_now

DELIVER_TASK = "gateway.deliver_webhook"
# Waits before attempts 2, 3, …; the first attempt is immediate.
SCHEDULE_S = (5, 300, 1800, 7200, 18000, 36000, 36000)
# A claimed attempt is not claimed again for this long (a crashed worker's attempt is retried).
LEASE_S = 120
# Countdowns shorter than this go to Celery; longer waits to the housekeeping tick, which
# leaves a due delivery this long to its countdown before sending it itself.
COUNTDOWN_MAX_S = 60
SWEEP_GRACE_S = 10
# How long an attempt's outcome waits for a database that is away before it gives up.
RECORD_PATIENCE_S = 60

EVENTS = ("request.started", "request.succeeded", "request.failed", "request.canceled",
          "request.expired", "request.blocked")
TERMINAL = tuple(e for e in EVENTS if e != "request.started")
STATUS_EVENT = {"running": "request.started", **{s: f"request.{s}" for s in FINAL_STATUSES}}
log = logging.getLogger(__name__)


def normalise_events(names: list[str] | None) -> list[str] | None:
    """`completed`, `succeeded` or `request.succeeded` → full event names; 422 on unknown ones."""
    if names is None:
        return None
    out: list[str] = []
    for name in names:
        if name == "completed":
            wanted = list(TERMINAL)
        elif name in ("started", "start"):
            wanted = ["request.started"]
        else:
            full = name if name.startswith("request.") else f"request.{name}"
            if full not in EVENTS:
                raise InvalidInput(f"unknown webhook event {name!r}; use completed, "
                                   + ", ".join(EVENTS), field="webhook_events")
            wanted = [full]
        out.extend(e for e in wanted if e not in out)
    return out


def new_secret() -> str:
    """A Standard Webhooks signing secret."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def account_secret(session: Session, account_id: str, *, rotate: bool = False) -> str:
    """The account's signing secret, made on first use."""
    settings = repo.account_settings(session, account_id)
    if settings is None:
        settings = AccountSettings(account_id=account_id)
        session.add(settings)
    if settings.webhook_secret is None or rotate:
        settings.webhook_secret = new_secret()
        settings.updated_at = utcnow()
    session.flush()
    return settings.webhook_secret


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value: `v1,` + base64 HMAC-SHA256 of `id.timestamp.body`."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def check_url(url: str, *, allow_private: bool | None = None) -> None:
    """Refuse URLs a webhook must not reach: not http(s), or resolving to a non-public address."""
    if allow_private is None:
        allow_private = get_gateway_settings().webhook_allow_private
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("a webhook URL must be http(s) with a host", field="webhook")
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                                   type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InvalidInput(f"the webhook host {parts.hostname!r} does not resolve", field="webhook") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global or address.is_multicast:
            raise InvalidInput("webhook URLs may not point at private, loopback or link-local addresses",
                               field="webhook")


def _wants(filter_: list[str] | None, event: str) -> bool:
    return event in (filter_ if filter_ is not None else TERMINAL)


def _endpoints(session: Session, account_id: str) -> list[tuple[str, str, list[str] | None]]:
    # Read on every status change of every request: cached briefly, like keys and prices.
    return cached("webhook-endpoints", account_id, lambda: [
        (e.url, e.id, e.events or None) for e in repo.endpoints_of(session, account_id) if e.enabled])


def targets_for(session: Session, req: Request, status: str) -> list[tuple[str, str | None]]:
    """The URLs (and account endpoint ids) that want this status change of the request."""
    event = STATUS_EVENT.get(status)
    if event is None:
        return []
    targets: list[tuple[str, str | None]] = []
    if req.webhook and _wants(req.webhook_events, event):
        targets.append((req.webhook, None))
    for url, endpoint_id, events in _endpoints(session, req.account_id):
        if _wants(events, event):
            targets.append((url, endpoint_id))
    return targets


def queue_for(session: Session, req: Request, status: str, rendered: dict[str, Any] | None,
              targets: list[tuple[str, str | None]]) -> None:
    """Record deliveries of a status change to its targets; sent after commit."""
    event = STATUS_EVENT.get(status)
    if event is None or rendered is None or not targets:
        return
    now = utcnow()
    payload = {"type": event, "timestamp": now.isoformat(), "data": rendered}
    for url, endpoint_id in targets:
        delivery_id = new_id("msg")
        added = repo.insert_delivery_if_new(session, {
            "id": delivery_id, "account_id": req.account_id, "request_id": req.id, "endpoint_id": endpoint_id,
            "url": url, "event": event, "payload": payload, "status": "pending", "attempts": 0,
            "next_attempt_at": now, "created_at": now,
        })
        if added:
            enqueue(session, DELIVER_TASK, delivery_id)


def backoff_s(attempt: int) -> float | None:
    """Seconds to wait after failed attempt number `attempt` (1-based); None when out of tries."""
    if attempt > len(SCHEDULE_S):
        return None
    base = SCHEDULE_S[attempt - 1] * get_gateway_settings().webhook_backoff_scale
    return base * random.uniform(0.8, 1.2)


def deliver(delivery_id: str) -> None:
    """One delivery attempt (the body of the `gateway.deliver_webhook` task); safe to run twice."""
    settings = get_gateway_settings()
    with session_scope() as session:
        delivery = repo.delivery_for_update(session, delivery_id)
        now = utcnow()
        if delivery is None or delivery.status != "pending":
            return
        if delivery.next_attempt_at is not None and delivery.next_attempt_at > now + dt.timedelta(seconds=0.5):
            return  # not due (a duplicate send, or another worker holds the lease)
        delivery.attempts += 1
        delivery.next_attempt_at = now + dt.timedelta(seconds=LEASE_S + settings.webhook_timeout_s)
        number, url, msg_id = delivery.attempts, delivery.url, delivery.id
        body = json.dumps(delivery.payload, separators=(",", ":")).encode()
        secret = account_secret(session, delivery.account_id)
    status_code, error, excerpt = None, None, None
    started = utcnow()
    t0 = time.perf_counter()
    try:
        check_url(url)
        timestamp = int(time.time())
        headers = {"content-type": "application/json", "user-agent": "mediagate-webhooks/1",
                   "webhook-id": msg_id, "webhook-timestamp": str(timestamp),
                   "webhook-signature": signature(secret, msg_id, timestamp, body)}
        with httpx.Client(follow_redirects=False, timeout=settings.webhook_timeout_s, trust_env=False) as client:
            response = client.post(url, content=body, headers=headers)
        status_code, excerpt = response.status_code, response.text[:500]
        if not 200 <= response.status_code < 300:
            error = f"HTTP {response.status_code}" + (" (redirects are not followed)"
                                                      if 300 <= response.status_code < 400 else "")
    except InvalidInput as exc:
        error = exc.message
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:1000]
    duration_ms = int((time.perf_counter() - t0) * 1000)
    _record(delivery_id, number, started, duration_ms, status_code, error, excerpt)


def _record(delivery_id: str, number: int, started: dt.datetime, duration_ms: int,
            status_code: int | None, error: str | None, excerpt: str | None) -> None:
    # The attempt has happened: a database that is away for a moment (a restart) must not lose
    # its answer, or a delivered webhook is sent again when its lease runs out.
    deadline = time.monotonic() + RECORD_PATIENCE_S
    while True:
        try:
            _record_once(delivery_id, number, started, duration_ms, status_code, error, excerpt)
            return
        except (DBAPIError, PoolTimeout) as exc:
            if not database_unreachable(exc) or time.monotonic() > deadline:
                raise
            log.warning("webhook %s attempt %d not recorded yet: the database is away", delivery_id, number)
            time.sleep(1.0)


def _record_once(delivery_id: str, number: int, started: dt.datetime, duration_ms: int,
                 status_code: int | None, error: str | None, excerpt: str | None) -> None:
    with session_scope() as session:
        delivery = repo.delivery_for_update(session, delivery_id)
        if delivery is None:
            return
        session.add(WebhookAttempt(delivery_id=delivery_id, number=number, started_at=started,
                                   duration_ms=duration_ms, status_code=status_code, error=error,
                                   response_excerpt=excerpt))
        if delivery.status != "pending":
            return
        now = utcnow()
        if error is None:
            delivery.status, delivery.delivered_at, delivery.next_attempt_at = "delivered", now, None
            return
        wait = backoff_s(number)
        if wait is None:
            delivery.status, delivery.next_attempt_at = "failed", None
            log.warning("webhook %s to %s failed after %d attempts", delivery_id, delivery.url, number)
            return
        delivery.next_attempt_at = now + dt.timedelta(seconds=wait)
        if wait <= COUNTDOWN_MAX_S:
            enqueue(session, DELIVER_TASK, delivery_id, countdown=wait)


def send_due(limit: int = 200) -> int:
    """Send the deliveries whose next attempt is due (the long waits of the schedule)."""
    with session_scope() as session:
        now = utcnow()
        due = repo.due_deliveries(session, now - dt.timedelta(seconds=SWEEP_GRACE_S), limit)
        # Due again only after another grace period: a backlog is not flooded with duplicates.
        repo.touch_deliveries(session, due, now)
    for delivery_id in due:
        send_now(DELIVER_TASK, delivery_id)
    return len(due)
