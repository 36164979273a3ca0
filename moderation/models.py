"""Moderation tables: policies, per-request records, holds, evidence, review tasks, staff.

Account and model ids are stored as plain strings: moderation sits below the billing and
partner packages and must not depend on their tables.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, CheckConstraint, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kit.db import Base, utcnow
from kit.ids import new_id


class ModerationPolicy(Base):
    """One policy layer: a model's (set by its partner or by the platform) or an account's."""

    __tablename__ = "moderation_policies"
    __table_args__ = (
        UniqueConstraint("scope", "subject_id", "source"),
        CheckConstraint("scope IN ('model', 'account')", name="scope"),
        CheckConstraint("source IN ('partner', 'platform')", name="source"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("mpol"))
    scope: Mapped[str] = mapped_column(String(16))
    subject_id: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))
    actions: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    nsfw_threshold: Mapped[float | None] = mapped_column(default=None)
    verified: Mapped[bool] = mapped_column(default=False)
    nsfw_opt_in: Mapped[bool] = mapped_column(default=False)
    custom_terms: Mapped[list[str]] = mapped_column(JSON, default=list)
    version: Mapped[int] = mapped_column(default=1)
    updated_by: Mapped[str] = mapped_column(String(64), default="")
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ModerationPolicyChange(Base):
    """Every version a policy layer ever had, so old decisions stay explainable."""

    __tablename__ = "moderation_policy_changes"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("mpc"))
    policy_id: Mapped[str] = mapped_column(String(40), index=True)
    version: Mapped[int] = mapped_column()
    snapshot: Mapped[dict[str, Any]] = mapped_column(JSON)
    changed_by: Mapped[str] = mapped_column(String(64))
    changed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ModerationRecord(Base):
    """One check of one request (input or output): what ran, what it found, what it decided."""

    __tablename__ = "moderation_records"
    __table_args__ = (
        CheckConstraint("stage IN ('input', 'output')", name="stage"),
        CheckConstraint("decision IN ('passed', 'flagged', 'blocked')", name="decision"),
        Index("ix_moderation_records_account_created", "account_id", "created_at"),
        Index("ix_moderation_records_model_created", "model_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("mod"))
    request_id: Mapped[str | None] = mapped_column(String(64), index=True, default=None)
    account_id: Mapped[str] = mapped_column(String(64))
    model_id: Mapped[str] = mapped_column(String(64))
    stage: Mapped[str] = mapped_column(String(8))
    decision: Mapped[str] = mapped_column(String(8))
    categories: Mapped[list[str]] = mapped_column(JSON, default=list)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    scores: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    checks: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    policy_version: Mapped[str] = mapped_column(String(40))
    policy: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    request_options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    minor_signal: Mapped[bool] = mapped_column(default=False)
    nsfw: Mapped[bool] = mapped_column(default=False)
    files_checked: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    latency_ms: Mapped[float] = mapped_column(default=0.0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AccountHold(Base):
    """A suspension of an account's API access pending trust-and-safety review."""

    __tablename__ = "account_holds"
    __table_args__ = (CheckConstraint("status IN ('active', 'released')", name="status"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("hold"))
    account_id: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    category: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    record_id: Mapped[str | None] = mapped_column(String(40), default=None)
    evidence_id: Mapped[str | None] = mapped_column(String(40), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    released_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    released_by: Mapped[str | None] = mapped_column(String(64), default=None)
    release_note: Mapped[str | None] = mapped_column(Text, default=None)


class EvidenceRecord(Base):
    """Preserved evidence of a severe hit: a manifest of hashes and metadata, never content."""

    __tablename__ = "moderation_evidence"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("evd"))
    record_id: Mapped[str] = mapped_column(String(40), index=True)
    request_id: Mapped[str | None] = mapped_column(String(64), default=None)
    account_id: Mapped[str] = mapped_column(String(64), index=True)
    model_id: Mapped[str] = mapped_column(String(64))
    stage: Mapped[str] = mapped_column(String(8))
    category: Mapped[str] = mapped_column(String(32))
    manifest_path: Mapped[str] = mapped_column(String(300))
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ReviewTask(Base):
    """An item in the trust-and-safety queue; `csam_report` tasks end in an external report."""

    __tablename__ = "moderation_review_tasks"
    __table_args__ = (
        CheckConstraint("status IN ('open', 'reported', 'dismissed', 'confirmed')", name="status"),
        Index("ix_moderation_review_tasks_status_priority", "status", "priority", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("rvw"))
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="open")
    priority: Mapped[int] = mapped_column(default=1)
    account_id: Mapped[str] = mapped_column(String(64), index=True)
    model_id: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64), default=None)
    record_id: Mapped[str] = mapped_column(String(40))
    evidence_id: Mapped[str | None] = mapped_column(String(40), default=None)
    hold_id: Mapped[str | None] = mapped_column(String(40), default=None)
    summary: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    resolved_by: Mapped[str | None] = mapped_column(String(64), default=None)
    resolution_note: Mapped[str | None] = mapped_column(Text, default=None)
    external_ref: Mapped[str | None] = mapped_column(String(200), default=None)


class ModerationStaff(Base):
    """A trust-and-safety staff member who may use the review API and page."""

    __tablename__ = "moderation_staff"
    __table_args__ = (CheckConstraint("role IN ('reviewer', 'admin')", name="role"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("stf"))
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16), default="reviewer")
    key_digest: Mapped[str] = mapped_column(String(64), unique=True)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
