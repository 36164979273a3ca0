"""Customer API keys, requests, output files, webhooks, SLA pools and account limits."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from kit.db import Base, utcnow
from kit.ids import new_id

FINAL_STATUSES = ("succeeded", "failed", "canceled", "expired", "blocked")


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("key"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="default")
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON, default=lambda: ["requests:write", "requests:read"])
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class Request(Base):
    __tablename__ = "requests"
    __table_args__ = (
        Index("ix_requests_account_created", "account_id", "created_at"),
        Index("ix_requests_status_pool", "status", "pool"),
        Index("ix_requests_account_status", "account_id", "status"),
        Index("ix_requests_pool_started", "pool", "started_at"),
        Index("ix_requests_status_deadline", "status", "deadline_at"),
        # Queue positions count only queued rows: a small index however long the history.
        Index("ix_requests_queued", "pool", "priority", "created_at",
              postgresql_where=text("status = 'queued'"), sqlite_where=text("status = 'queued'")),
        UniqueConstraint("account_id", "idempotency_key"),
        # The recovery sweep reads only requests that hold a lease: running or re-sent ones.
        Index("ix_requests_lease", "status", "lease_expires_at",
              postgresql_where=text("lease_expires_at IS NOT NULL"),
              sqlite_where=text("lease_expires_at IS NOT NULL")),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("req"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"))
    version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id"))
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"))
    model_ref: Mapped[str] = mapped_column(String(140))
    pool: Mapped[str] = mapped_column(String(64))
    priority: Mapped[str] = mapped_column(String(8), default="normal")
    status: Mapped[str] = mapped_column(String(12), default="queued")
    input: Mapped[dict[str, Any]] = mapped_column(JSON)
    output: Mapped[Any | None] = mapped_column(JSON, default=None)
    error: Mapped[str | None] = mapped_column(String(4000), default=None)
    moderation_input: Mapped[str] = mapped_column(String(16), default="passed")
    moderation_output: Mapped[str | None] = mapped_column(String(16), default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    body_digest: Mapped[str | None] = mapped_column(String(64), default=None)
    webhook: Mapped[str | None] = mapped_column(String(2000), default=None)
    webhook_events: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    attempts: Mapped[int] = mapped_column(default=0)
    # Running: the worker that holds the request (host/pid/nonce) and until when; a lapsed
    # lease means that worker is gone. Queued after a retry or recovery: when it is sent
    # again if no worker has picked it up. Cleared when the request ends; the owner stays.
    lease_owner: Mapped[str | None] = mapped_column(String(120), default=None)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    units: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    currency: Mapped[str] = mapped_column(String(3), default="usd")
    deadline_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    completed_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    run_ms: Mapped[int | None] = mapped_column(default=None)
    queue_ms: Mapped[int | None] = mapped_column(default=None)


class File(Base):
    """An output file, stored once, fetched through short-lived signed URLs."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("file"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("requests.id"), index=True)
    storage_key: Mapped[str] = mapped_column(String(400))
    file_name: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Pool(Base):
    """An SLA pool: a named set of replicas (the workers on its queue) with a latency target.

    A shared pool serves everyone best effort; a dedicated one serves one account (for one
    model, or for every model when `model_id` is empty).
    """

    __tablename__ = "pools"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("pool"))
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16), default="shared")
    account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id"), default=None, index=True)
    model_id: Mapped[str | None] = mapped_column(ForeignKey("models.id"), default=None)
    # The SLA: p95 queue wait at most this, over the reporting window.
    p95_queue_ms_target: Mapped[int] = mapped_column(default=2000)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AccountSettings(Base):
    """A customer account's limits, retention and webhook signing secret."""

    __tablename__ = "account_settings"

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    rate_per_s: Mapped[float | None] = mapped_column(default=None)
    rate_burst: Mapped[int | None] = mapped_column(default=None)
    max_concurrency: Mapped[int | None] = mapped_column(default=None)
    retention_days: Mapped[int | None] = mapped_column(default=None)
    webhook_secret: Mapped[str | None] = mapped_column(String(100), default=None)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class WebhookEndpoint(Base):
    """An account-wide webhook: every request's matching events are sent to it."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("whe"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[list[str]] = mapped_column(JSON, default=list)
    description: Mapped[str] = mapped_column(String(500), default="")
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One event for one URL; its id is the `webhook-id` of every attempt."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("request_id", "url", "event"),
        Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("msg"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("requests.id"), index=True)
    endpoint_id: Mapped[str | None] = mapped_column(ForeignKey("webhook_endpoints.id"), default=None)
    url: Mapped[str] = mapped_column(String(2000))
    event: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(12), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class WebhookAttempt(Base):
    """One try at delivering a webhook: what was answered, or why it failed."""

    __tablename__ = "webhook_attempts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("wha"))
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id"), index=True)
    number: Mapped[int]
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    duration_ms: Mapped[int] = mapped_column(default=0)
    status_code: Mapped[int | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(String(1000), default=None)
    response_excerpt: Mapped[str | None] = mapped_column(Text, default=None)
