"""Request and response bodies of the trust-and-safety API."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class AccountPolicyIn(BaseModel):
    """Fields left out stay as they are."""

    verified: bool | None = None
    nsfw_opt_in: bool | None = None
    actions: dict[str, str] | None = None
    custom_terms: list[str] | None = Field(default=None, max_length=1000)


class ModelPolicyIn(BaseModel):
    actions: dict[str, str] | None = None
    nsfw_threshold: float | None = Field(default=None, ge=0.05, le=1.0)


class PolicyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    scope: str
    subject_id: str
    source: str
    actions: dict[str, str]
    nsfw_threshold: float | None
    verified: bool
    nsfw_opt_in: bool
    custom_terms: list[str]
    version: int
    updated_by: str
    updated_at: dt.datetime


class RecordOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    request_id: str | None
    account_id: str
    model_id: str
    stage: str
    decision: str
    categories: list[str]
    reason: str | None
    scores: dict[str, Any]
    checks: list[dict[str, Any]]
    policy_version: str
    policy: dict[str, Any]
    nsfw: bool
    error: str | None
    latency_ms: float
    created_at: dt.datetime


class ReviewTaskOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str
    status: str
    priority: int
    account_id: str
    model_id: str
    request_id: str | None
    record_id: str
    evidence_id: str | None
    hold_id: str | None
    summary: str
    created_at: dt.datetime
    resolved_at: dt.datetime | None
    resolved_by: str | None
    resolution_note: str | None
    external_ref: str | None


class EvidenceOut(BaseModel):
    """Evidence metadata: hashes and ids only."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    record_id: str
    request_id: str | None
    account_id: str
    stage: str
    category: str
    manifest_sha256: str
    manifest_intact: bool = True
    summary: dict[str, Any]
    created_at: dt.datetime


class ReviewTaskDetail(BaseModel):
    task: ReviewTaskOut
    record: RecordOut | None
    evidence: EvidenceOut | None


class ResolveIn(BaseModel):
    resolution: Literal["reported", "dismissed", "confirmed"]
    note: str = ""
    release_hold: bool = False


class HoldOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    account_id: str
    status: str
    category: str
    reason: str
    record_id: str | None
    evidence_id: str | None
    created_at: dt.datetime
    released_at: dt.datetime | None
    released_by: str | None
    release_note: str | None


class ReleaseIn(BaseModel):
    note: str = Field(min_length=1)


class StatsRow(BaseModel):
    subject_id: str
    inputs_checked: int
    inputs_blocked: int
    inputs_flagged: int
    outputs_checked: int
    outputs_blocked: int
    outputs_flagged: int
    outputs_nsfw: int
    nsfw_share: float
    blocked: int
    check_errors: int
    categories: dict[str, int]
