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
    version: int | None = Field(default=None, description="Version number; latest if omitted")
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
