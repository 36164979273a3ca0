"""The Celery app, and enqueueing that happens only when the transaction commits."""

from __future__ import annotations

import base64
import bisect
import functools
import uuid
from typing import Any

from celery import Celery, signals
from kombu import serialization
from kombu.utils import json as kombu_json
from opentelemetry import context as otel_context
from sqlalchemy.orm import Session

from kit import telemetry
from kit.db import after_commit, reset_engine
from kit.pipelined import pipeline_for
from kit.settings import get_settings

DEFAULT_QUEUE = "default"


def pool_queue(pool: str) -> str:
    """The Celery queue that serves an SLA pool."""
    return f"pool.{pool}"


@functools.cache
def get_celery() -> Celery:
    """The process-wide Celery app, configured from settings."""
    settings = get_settings()
    app = Celery("mediagate", broker=settings.celery_broker_url)
    app.conf.update(
        task_default_queue=DEFAULT_QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A running task is never cut short when Redis goes away; if its message comes back,
        # the request's lease tells the second delivery to leave it alone.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
    )
    if settings.celery_broker_url.startswith("sqla+"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        app.conf.broker_transport = "kit.broker:EmbeddedTransport"
    else:
        # The broker's backstop for a message whose worker vanished; requests do not wait for
        # it: their leases lapse sooner and the housekeeping tick queues them again.
        app.conf.broker_transport_options = {"visibility_timeout": 3600}
    return app


def send_now(name: str, *args: Any, queue: str = DEFAULT_QUEUE, **options: Any) -> None:
    """Send a task by name at once, carrying the current trace context."""
    _send(name, list(args), queue, telemetry.inject(), options)


def enqueue(session: Session, name: str, *args: Any, queue: str = DEFAULT_QUEUE, **options: Any) -> None:
    """Send a task once `session` commits; a rollback drops it."""
    headers = telemetry.inject()
    after_commit(session, lambda: _send(name, list(args), queue, headers, options))


def _send(name: str, args: list[Any], queue: str, headers: dict[str, str], options: dict[str, Any]) -> None:
    app = get_celery()
    publisher = _publisher(app)
    if publisher is not None and publisher.takes(options):
        publisher.publish(name, args, queue, headers, options.get("priority"))
    else:
        app.send_task(name, args=args, queue=queue, headers=headers, **options)


class RedisPublisher:
    """Celery task messages pushed straight onto the Redis broker's lists.

    `send_task` costs about 0.5 ms of CPU: routing, a producer from the pool, kombu's publish
    with its retry wrapper. For the plain case (a task by name, a queue, a priority) this
    writes the same message with one LPUSH: Celery builds the protocol-2 headers and body,
    and the envelope is what kombu's Redis transport puts on the list (the same key for the
    priority, the same encoding), so workers cannot tell the two apart. Anything else (a
    countdown, publish signals someone listens to, sent events) goes through `send_task`.
    """

    def __init__(self, app: Celery) -> None:
        import redis
        from kombu.transport import redis as kombu_redis

        self.app = app
        opts = app.conf.broker_transport_options or {}
        self.sep = opts.get("sep", kombu_redis.Channel.sep)
        self.steps = sorted(opts.get("priority_steps", kombu_redis.PRIORITY_STEPS))
        self.prefix = opts.get("global_keyprefix", "")
        self.client = redis.Redis.from_url(app.conf.broker_url)

    def takes(self, options: dict[str, Any]) -> bool:
        """Whether a send with these options is the plain case this writes itself."""
        return (set(options) <= {"priority"} and not self.app.conf.task_send_sent_event
                and not self.app.conf.task_inherit_parent_priority
                and not signals.before_task_publish.receivers and not signals.after_task_publish.receivers)

    def key(self, queue: str, priority: int | None) -> str:
        """The list a message of this priority goes to (kombu's `_q_for_pri`)."""
        step = self.steps[bisect.bisect(self.steps, min(max(int(priority or 0), 0), 9)) - 1]
        return f"{self.prefix}{queue}{self.sep}{step}" if step else f"{self.prefix}{queue}"

    def publish(self, name: str, args: list[Any], queue: str, headers: dict[str, str],
                priority: int | None) -> None:
        """LPUSH one task message, as `send_task(name, args, queue=queue, priority=...)` would."""
        app = self.app
        task_id = str(uuid.uuid4())
        parent = app.current_worker_task
        root_id = parent_id = None
        if parent is not None:
            root_id = parent.request.root_id or parent.request.id
            parent_id = parent.request.id
        message = app.amqp.create_task_message(
            task_id, name, args, {}, reply_to=app.thread_oid, root_id=root_id, parent_id=parent_id,
            ignore_result=None)
        task_headers = {**message.headers, **headers}
        content_type, encoding, body = serialization.dumps(message.body, serializer=app.conf.task_serializer)
        payload = {
            "body": base64.b64encode(body if isinstance(body, bytes) else body.encode(encoding)).decode(),
            "content-encoding": encoding,
            "content-type": content_type,
            "headers": task_headers,
            "properties": {
                **message.properties, "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0 if priority is None else priority, "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
            },
        }
        deferred = pipeline_for(self.client)  # an empty pipeline is falsy: compare with None
        (self.client if deferred is None else deferred).lpush(self.key(queue, priority), kombu_json.dumps(payload))


_publishers: dict[int, RedisPublisher | None] = {}


def _publisher(app: Celery) -> RedisPublisher | None:
    """The app's Redis publisher; None when the broker is not plain Redis (the embedded one)."""
    key = id(app)
    if key not in _publishers:
        url = str(app.conf.broker_url or "")
        plain = (url.startswith(("redis://", "rediss://")) and not app.conf.broker_transport
                 and not app.conf.broker_use_ssl)  # TLS settings kombu would apply: leave it to kombu
        _publishers[key] = RedisPublisher(app) if plain else None
    return _publishers[key]


# A task runs inside the trace of whoever enqueued it.
_task_tokens: dict[str, Any] = {}


@signals.task_prerun.connect
def _attach_trace(task_id: str, task: Any, **_: Any) -> None:
    headers = getattr(task.request, "headers", None) or {}
    carrier = {k: v for k, v in (headers.items() if isinstance(headers, dict) else [])}
    carrier.update({k: getattr(task.request, k) for k in ("traceparent", "tracestate")
                    if getattr(task.request, k, None)})
    _task_tokens[task_id] = otel_context.attach(telemetry.extract(carrier))


@signals.task_postrun.connect
def _detach_trace(task_id: str, **_: Any) -> None:
    token = _task_tokens.pop(task_id, None)
    if token is not None:
        otel_context.detach(token)


@signals.worker_process_init.connect
def _fresh_engine_after_fork(**_: Any) -> None:
    reset_engine()
