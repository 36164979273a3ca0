"""Request and response bodies of the customer API."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import AnyUrl, BaseModel, Field, UrlConstraints, WithJsonSchema

Status = Literal["queued", "running", "succeeded", "failed", "canceled", "expired", "blocked"]


# http(s) only, and no longer than the column that keeps it.
WebhookUrl = Annotated[AnyUrl, UrlConstraints(max_length=2000, allowed_schemes=["http", "https"]),
                       WithJsonSchema({"type": "string", "format": "uri", "pattern": "^https?://[^/?#\\s]+",
                                       "maxLength": 2000})]
WebhookEvent = Literal["completed", "started", "succeeded", "failed", "canceled", "expired", "blocked",
                       "request.started", "request.succeeded", "request.failed", "request.canceled",
                       "request.expired", "request.blocked"]


class SubmitBody(BaseModel):
    input: dict[str, Any] = Field(default_factory=dict, description="The model's inputs (see its schema)")
    webhook: WebhookUrl | None = Field(default=None, description="Called when the request finishes")
    webhook_events: list[WebhookEvent] | None = Field(
        default=None, max_length=13,
        description="Events sent to `webhook` (default: `completed`, i.e. every final status)")


class Problem(BaseModel):
    """An RFC 9457 problem: `type` is stable, `detail` is for people."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    field: str | None = Field(default=None, description="The input field at fault, when one is")
    errors: list[dict[str, Any]] | None = None


class Metrics(BaseModel):
    queue_ms: int | None = None
    run_ms: int | None = None


class Cost(BaseModel):
    amount_micros: int
    currency: str
    units: dict[str, Any] | None = None


class ModerationOut(BaseModel):
    input: str
    output: str | None = None


class Urls(BaseModel):
    self: str
    cancel: str
    events: str


class Envelope(BaseModel):
    id: str
    model: str
    version: str
    status: Status
    queue_position: int | None = None
    input: dict[str, Any]
    output: Any = None
    error: str | None = None
    metrics: Metrics
    cost: Cost
    moderation: ModerationOut
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    urls: Urls


class PriceOut(BaseModel):
    unit: str
    unit_price_micros: int
    currency: str


class ModelCard(BaseModel):
    id: str
    owner: str
    name: str
    title: str
    description: str
    version: str | None
    license: str | None
    price: PriceOut | None
    pools: list[str]
    inputs_schema: dict[str, Any]


class UsageLine(BaseModel):
    model: str
    day: str
    meter: str
    currency: str
    requests: int
    quantity: float
    amount_micros: int


class UsageOut(BaseModel):
    since: dt.datetime
    until: dt.datetime
    total_micros: int
    lines: list[UsageLine]


class AccountCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    billing_mode: Literal["prepaid", "postpaid"] = "postpaid"
    commercial_use: bool = True


class AccountCreated(BaseModel):
    id: str
    name: str
    api_key: str = Field(description="Shown once; store it safely.")


class WebhookEndpointIn(BaseModel):
    url: WebhookUrl
    events: list[WebhookEvent] | None = Field(default=None, max_length=13,
                                              description="Default: `completed` (every final status)")
    description: str = Field(default="", max_length=500)
    enabled: bool = True


class WebhookEndpointPatch(BaseModel):
    url: WebhookUrl | None = None
    events: list[WebhookEvent] | None = Field(default=None, max_length=13)
    description: str | None = Field(default=None, max_length=500)
    enabled: bool | None = None


class WebhookEndpointOut(BaseModel):
    id: str
    url: str
    events: list[str]
    description: str
    enabled: bool
    created_at: dt.datetime


class WebhookSecretOut(BaseModel):
    secret: str = Field(description="The `whsec_` key that signs every webhook of this account")


class WebhookAttemptOut(BaseModel):
    number: int
    started_at: dt.datetime
    duration_ms: int
    status_code: int | None
    error: str | None


class WebhookDeliveryOut(BaseModel):
    id: str = Field(description="The `webhook-id` header of every attempt")
    url: str
    event: str
    status: Literal["pending", "delivered", "failed"]
    attempts: list[WebhookAttemptOut]
    next_attempt_at: dt.datetime | None
    delivered_at: dt.datetime | None
    created_at: dt.datetime


class AccountSettingsOut(BaseModel):
    id: str
    name: str
    rate_per_s: float
    rate_burst: int
    max_concurrency: int
    retention_days: int = Field(description="Output files are deleted this many days after the request (0: kept)")


class AccountSettingsPatch(BaseModel):
    retention_days: int | None = Field(default=None, ge=0, le=3650)


class AccountLimitsIn(BaseModel):
    rate_per_s: float | None = Field(default=None, gt=0, le=100_000)
    rate_burst: int | None = Field(default=None, ge=1, le=1_000_000)
    max_concurrency: int | None = Field(default=None, ge=1, le=100_000)
    retention_days: int | None = Field(default=None, ge=0, le=3650)


class PoolIn(BaseModel):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    kind: Literal["shared", "dedicated"] = "shared"
    account_id: str | None = None
    model: str | None = Field(default=None, description="owner/model, for a pool dedicated to one model")
    p95_queue_ms_target: int = Field(default=2000, ge=1, le=86_400_000)


class PoolOut(BaseModel):
    id: str
    name: str
    kind: str
    account_id: str | None
    model_id: str | None
    p95_queue_ms_target: int


class Percentiles(BaseModel):
    p50: float | None
    p95: float | None


class SlaOut(BaseModel):
    p95_queue_ms_target: int
    compliant: bool | None = Field(description="p95 queue wait within the target (null: no traffic)")
    within_target_ratio: float | None


class PoolStats(BaseModel):
    pool: str
    kind: str
    window_s: int
    since: dt.datetime
    until: dt.datetime
    queued: int
    started: int
    completed: int
    queue_ms: Percentiles
    run_ms: Percentiles
    sla: SlaOut
