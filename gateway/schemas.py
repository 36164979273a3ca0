"""Request and response bodies of the customer API."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field, HttpUrl

Status = Literal["queued", "running", "succeeded", "failed", "canceled", "expired", "blocked"]


class SubmitBody(BaseModel):
    input: dict[str, Any] = Field(default_factory=dict, description="The model's inputs (see its schema)")
    webhook: HttpUrl | None = Field(default=None, description="Called when the request finishes")
    webhook_events: list[str] | None = None


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
