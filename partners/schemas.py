"""Request and response bodies of the partner API."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SLUG = r"^[a-z0-9][a-z0-9-]{0,62}$"


class PartnerCreate(BaseModel):
    slug: str = Field(pattern=SLUG)
    name: str = Field(min_length=1, max_length=200)


class PartnerOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    slug: str
    name: str


class PartnerCreated(PartnerOut):
    api_key: str = Field(description="Shown once; store it safely.")


class ModelCreate(BaseModel):
    slug: str = Field(pattern=SLUG)
    title: str = Field(default="", max_length=200)
    description: str = Field(default="", max_length=2000)


class ModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    slug: str
    title: str
    description: str
    created_at: dt.datetime


class VersionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    model_id: str
    number: int
    artifact_digest: str
    artifact_size: int
    manifest: dict[str, Any]
    created_at: dt.datetime


class DeploymentCreate(BaseModel):
    model: str = Field(description="The model's slug")
    version: int | None = Field(default=None, ge=1, le=2**31 - 1, description="Version number; latest if omitted")
    pool: str = Field(default="shared", pattern=SLUG)
    min_replicas: int = Field(default=0, ge=0, le=64)
    max_replicas: int = Field(default=1, ge=1, le=64)
    concurrency: int = Field(default=1, ge=1, le=64)
    keep_alive_s: int = Field(default=300, ge=0, le=86400)


class DeploymentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    model_id: str
    version_id: str
    pool: str
    min_replicas: int
    max_replicas: int
    concurrency: int
    keep_alive_s: int
    status: str
    created_at: dt.datetime


class DeploymentDetail(DeploymentOut):
    """A deployment with its model, version number and live replica state."""

    model: str = Field(description="owner/model")
    version: int
    state: str = Field(description="ready, starting, failing, idle (scaled to zero), pending, "
                       "or the deployment's status when it no longer serves")
    replicas: dict[str, int] = Field(description="replicas by state: ready, starting, failed")
    last_error: str | None = Field(default=None, description="the model's own error from the last failed start")


class DeploymentUpdate(BaseModel):
    min_replicas: int | None = Field(default=None, ge=0, le=64)
    max_replicas: int | None = Field(default=None, ge=1, le=64)
    concurrency: int | None = Field(default=None, ge=1, le=64)
    keep_alive_s: int | None = Field(default=None, ge=0, le=86400)


class Rollout(BaseModel):
    version: int = Field(ge=1, le=2**31 - 1, description="The version number to move to")


class DeploymentEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    deployment_id: str
    action: str
    from_version: int | None
    to_version: int | None
    detail: dict[str, Any]
    actor: str
    created_at: dt.datetime


class ReplicaOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    deployment_id: str
    state: str
    host: str
    detail: str | None
    started_at: dt.datetime
    updated_at: dt.datetime


class LogLineOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    seq: int
    deployment_id: str
    replica_id: str | None
    request_id: str | None
    stream: str
    message: str
    created_at: dt.datetime


class LogPage(BaseModel):
    lines: list[LogLineOut]
    next_after: int = Field(description="Pass as `after` to get only newer lines")


class RequestLogs(LogPage):
    request_id: str
    model: str
    deployment_id: str
    status: str
    run_ms: int | None
    created_at: dt.datetime
    error: str | None = Field(default=None, description="Why the request failed, as the customer saw it")


class UploadCreate(BaseModel):
    model: str = Field(description="The model's slug")
    size: int | None = Field(default=None, gt=0, le=2**50, description="Total bytes, if known; chunks may not pass it")


class UploadOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    model_id: str
    size: int | None
    offset: int
    status: str = Field(description="open, completed, rejected, failed, aborted or expired")
    version_id: str | None
    error: str | None
    created_at: dt.datetime
    expires_at: dt.datetime


class UploadComplete(BaseModel):
    sha256: str = Field(description="The package's SHA-256, hex (optionally 'sha256:'-prefixed)")


class UsageRow(BaseModel):
    bucket: dt.datetime
    model: str
    requests: int
    succeeded: int
    failed: int
    p50_ms: float | None
    p95_ms: float | None


class UsageOut(BaseModel):
    range: str
    bucket: str
    since: dt.datetime
    until: dt.datetime
    rows: list[UsageRow]


class KeyCreate(BaseModel):
    name: str = Field(default="default", min_length=1, max_length=200)


class KeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None


class KeyCreated(KeyOut):
    api_key: str = Field(description="Shown once; store it safely.")


ROLE = r"^(owner|admin|developer|viewer)$"


class MemberCreate(BaseModel):
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=320)
    name: str = Field(default="", max_length=200)
    role: str = Field(default="developer", pattern=ROLE)
    password: str | None = Field(default=None, min_length=12, max_length=1024,
                                 description="Set the password now; without it an invitation link is returned")


class MemberUpdate(BaseModel):
    name: str | None = Field(default=None, max_length=200)
    role: str | None = Field(default=None, pattern=ROLE)


class MemberOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    email: str
    name: str
    role: str
    created_at: dt.datetime
    last_sign_in_at: dt.datetime | None
    disabled_at: dt.datetime | None


class MemberCreated(MemberOut):
    invite_url: str | None = Field(default=None, description="Single-use link to set a password (7 days)")
