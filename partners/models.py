"""Partner organisations, their keys, members, models, versions, deployments, uploads and logs."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from kit.db import Base, utcnow
from kit.ids import new_id


class Partner(Base):
    __tablename__ = "partners"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("par"))
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class PartnerKey(Base):
    __tablename__ = "partner_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("pkey"))
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="default")
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("partner_id", "slug"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("mdl"))
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"), index=True)
    slug: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(200), default="")
    description: Mapped[str] = mapped_column(String(2000), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    partner: Mapped[Partner] = relationship(lazy="joined")


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "number"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ver"))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    number: Mapped[int]
    artifact_digest: Mapped[str] = mapped_column(String(80))
    artifact_size: Mapped[int] = mapped_column(BigInteger)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The validated package (layers, file tree) the sandbox needs to unpack it again.
    package: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    @property
    def inputs_schema(self) -> dict[str, Any]:
        return self.manifest.get("inputs_schema") or {}


class Deployment(Base):
    __tablename__ = "deployments"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("dep"))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id"))
    pool: Mapped[str] = mapped_column(String(64), default="shared")
    min_replicas: Mapped[int] = mapped_column(default=0)
    max_replicas: Mapped[int] = mapped_column(default=1)
    concurrency: Mapped[int] = mapped_column(default=1)
    keep_alive_s: Mapped[int] = mapped_column(default=300)
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    version: Mapped[ModelVersion] = relationship(lazy="joined")


# -- history of a deployment: what changed, who did it -------------------------------------

class DeploymentEvent(Base):
    """One change to a model's deployments (created, scaled, rolled out, rolled back, stopped)."""

    __tablename__ = "deployment_events"
    __table_args__ = (Index("ix_deployment_events_model_time", "model_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("dev"))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"))
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"), index=True)
    action: Mapped[str] = mapped_column(String(16))
    from_version: Mapped[int | None] = mapped_column(default=None)
    to_version: Mapped[int | None] = mapped_column(default=None)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    actor: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


# -- what the workers report: replica states and log lines ---------------------------------

class ReplicaState(Base):
    """The last known state of one replica of a deployment, as its worker reported it."""

    __tablename__ = "deployment_replicas"
    __table_args__ = (Index("ix_deployment_replicas_deployment", "deployment_id", "started_at"),)

    id: Mapped[str] = mapped_column(String(120), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"))
    state: Mapped[str] = mapped_column(String(16))
    host: Mapped[str] = mapped_column(String(200), default="")
    detail: Mapped[str | None] = mapped_column(Text, default=None)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DeploymentLog(Base):
    """One log line of a replica, or of one request on it; append-only, read by the partner."""

    __tablename__ = "deployment_logs"
    __table_args__ = (
        Index("ix_deployment_logs_deployment_seq", "deployment_id", "seq"),
        Index("ix_deployment_logs_request", "request_id", "seq"),
    )

    # A sequence, not a sortable id: followers page with `after=<seq>` and never miss a line
    # written by a slower worker in the same millisecond.
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=True)
    deployment_id: Mapped[str] = mapped_column(String(40))
    replica_id: Mapped[str | None] = mapped_column(String(120), default=None)
    request_id: Mapped[str | None] = mapped_column(String(40), default=None)
    stream: Mapped[str] = mapped_column(String(8), default="stdout")
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


# -- resumable uploads ---------------------------------------------------------------------

class UploadSession(Base):
    """A chunked package upload in progress; its bytes wait, encrypted, in a private file."""

    __tablename__ = "upload_sessions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("upl"))
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"), index=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"))
    size: Mapped[int | None] = mapped_column(BigInteger, default=None)
    received: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[str] = mapped_column(String(12), default="open")
    version_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"), default=None)
    error: Mapped[str | None] = mapped_column(String(2000), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]

    model: Mapped[Model] = relationship(lazy="joined")


# -- people of a partner: members who sign in to the portal ---------------------------------

MEMBER_ROLES = ("owner", "admin", "developer", "viewer")


class PartnerMember(Base):
    """A person of a partner organisation who signs in to the portal."""

    __tablename__ = "partner_members"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("mem"))
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"), index=True)
    # Emails are unique across partners so a sign-in names exactly one organisation.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[str] = mapped_column(String(16), default="developer")
    password_hash: Mapped[str | None] = mapped_column(String(255), default=None)
    invite_digest: Mapped[str | None] = mapped_column(String(64), default=None, unique=True)
    invite_expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    failed_sign_ins: Mapped[int] = mapped_column(default=0)
    locked_until: Mapped[dt.datetime | None] = mapped_column(default=None)
    last_sign_in_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[dt.datetime | None] = mapped_column(default=None)

    partner: Mapped[Partner] = relationship(lazy="joined")


class PortalSession(Base):
    """A signed-in browser: the cookie holds a random token, the table only its digest."""

    __tablename__ = "portal_sessions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("pss"))
    member_id: Mapped[str] = mapped_column(ForeignKey("partner_members.id"), index=True)
    token_digest: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    user_agent: Mapped[str] = mapped_column(String(300), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)

    member: Mapped[PartnerMember] = relationship(lazy="joined")
