"""All SQL of the partners domain."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    Integer,
    String,
    case,
    column,
    delete,
    func,
    insert,
    select,
    table,
    text,
    update,
)
from sqlalchemy.orm import Session

from kit.db import UTCDateTime
from partners.models import (
    Deployment,
    DeploymentEvent,
    DeploymentLog,
    Model,
    ModelVersion,
    Partner,
    PartnerKey,
    PartnerMember,
    PortalSession,
    ReplicaState,
    UploadSession,
)
from partners.tenancy.models import ArtifactAccess, ArtifactBlob


def partner_by_slug(session: Session, slug: str) -> Partner | None:
    return session.scalar(select(Partner).where(Partner.slug == slug))


def partner_by_key_digest(session: Session, digest: str) -> Partner | None:
    return session.scalar(
        select(Partner).join(PartnerKey, PartnerKey.partner_id == Partner.id)
        .where(PartnerKey.digest == digest, PartnerKey.revoked_at.is_(None))
    )


def model_by_slug(session: Session, partner_slug: str, model_slug: str) -> Model | None:
    return session.scalar(
        select(Model).join(Partner, Partner.id == Model.partner_id)
        .where(Partner.slug == partner_slug, Model.slug == model_slug)
    )


def partner_model(session: Session, partner_id: str, model_slug: str) -> Model | None:
    return session.scalar(select(Model).where(Model.partner_id == partner_id, Model.slug == model_slug))


def models_of(session: Session, partner_id: str) -> list[Model]:
    return list(session.scalars(select(Model).where(Model.partner_id == partner_id).order_by(Model.id)))


def all_models(session: Session) -> list[Model]:
    return list(session.scalars(select(Model).order_by(Model.id)))


def next_version_number(session: Session, model_id: str) -> int:
    current = session.scalar(select(func.max(ModelVersion.number)).where(ModelVersion.model_id == model_id))
    return (current or 0) + 1


def versions_of(session: Session, model_id: str) -> list[ModelVersion]:
    return list(session.scalars(
        select(ModelVersion).where(ModelVersion.model_id == model_id).order_by(ModelVersion.number)
    ))


def version(session: Session, version_id: str) -> ModelVersion | None:
    return session.get(ModelVersion, version_id)


def version_by_number(session: Session, model_id: str, number: int) -> ModelVersion | None:
    return session.scalar(
        select(ModelVersion).where(ModelVersion.model_id == model_id, ModelVersion.number == number)
    )


def deployment(session: Session, deployment_id: str) -> Deployment | None:
    return session.get(Deployment, deployment_id)


def active_deployments(session: Session, model_id: str) -> list[Deployment]:
    return list(session.scalars(
        select(Deployment).where(Deployment.model_id == model_id, Deployment.status == "active")
        .order_by(Deployment.id.desc())
    ))


def deployments_of(session: Session, partner_id: str) -> list[Deployment]:
    return list(session.scalars(
        select(Deployment).join(Model, Model.id == Deployment.model_id)
        .where(Model.partner_id == partner_id).order_by(Deployment.id)
    ))


# -- deployments: one partner's view, history, replicas ----------------------------------

def partner_deployment(session: Session, partner_id: str, deployment_id: str) -> Deployment | None:
    """A deployment, only when it belongs to one of the partner's models."""
    return session.scalar(
        select(Deployment).join(Model, Model.id == Deployment.model_id)
        .where(Deployment.id == deployment_id, Model.partner_id == partner_id)
    )


def lock_model(session: Session, model_id: str) -> None:
    """Serialise changes to one model's deployments (rollout, rollback, stop)."""
    session.execute(select(Model.id).where(Model.id == model_id).with_for_update())


def deployments_of_model(session: Session, model_id: str) -> list[Deployment]:
    return list(session.scalars(
        select(Deployment).where(Deployment.model_id == model_id).order_by(Deployment.id.desc())
    ))


def previous_deployment(session: Session, model_id: str, before_id: str) -> Deployment | None:
    """The newest replaced deployment of the model older than `before_id` (rollback target)."""
    return session.scalar(
        select(Deployment).where(Deployment.model_id == model_id, Deployment.id < before_id,
                                 Deployment.status == "replaced")
        .order_by(Deployment.id.desc()).limit(1)
    )


def deployment_events(session: Session, *, model_id: str | None = None,
                      deployment_ids: list[str] | None = None, partner_id: str | None = None,
                      limit: int = 50) -> list[DeploymentEvent]:
    query = select(DeploymentEvent)
    if model_id is not None:
        query = query.where(DeploymentEvent.model_id == model_id)
    if deployment_ids is not None:
        query = query.where(DeploymentEvent.deployment_id.in_(deployment_ids))
    if partner_id is not None:
        query = query.join(Model, Model.id == DeploymentEvent.model_id).where(Model.partner_id == partner_id)
    return list(session.scalars(query.order_by(DeploymentEvent.id.desc()).limit(limit)))


def replicas_of(session: Session, deployment_ids: list[str], *, include_stopped: bool = False) -> list[ReplicaState]:
    query = select(ReplicaState).where(ReplicaState.deployment_id.in_(deployment_ids))
    if not include_stopped:
        query = query.where(ReplicaState.state != "stopped")
    return list(session.scalars(query.order_by(ReplicaState.started_at.desc()).limit(200)))


def replica_state(session: Session, replica_id: str) -> ReplicaState | None:
    return session.get(ReplicaState, replica_id)


# -- logs ----------------------------------------------------------------------------------

def add_log_lines(session: Session, rows: list[dict[str, Any]]) -> None:
    if rows:
        session.execute(insert(DeploymentLog), rows)


def deployment_logs(session: Session, deployment_id: str, *, after: int = 0, limit: int = 200,
                    replica_id: str | None = None, request_id: str | None = None) -> list[DeploymentLog]:
    """Lines after `after`, oldest first; with no `after`, the latest `limit` lines."""
    query = select(DeploymentLog).where(DeploymentLog.deployment_id == deployment_id)
    if replica_id is not None:
        query = query.where(DeploymentLog.replica_id == replica_id)
    if request_id is not None:
        query = query.where(DeploymentLog.request_id == request_id)
    if after:
        return list(session.scalars(query.where(DeploymentLog.seq > after)
                                    .order_by(DeploymentLog.seq).limit(limit)))
    newest = list(session.scalars(query.order_by(DeploymentLog.seq.desc()).limit(limit)))
    return newest[::-1]


def request_logs(session: Session, request_id: str, deployment_ids: list[str], *, after: int = 0,
                 limit: int = 1000) -> list[DeploymentLog]:
    return list(session.scalars(
        select(DeploymentLog).where(DeploymentLog.request_id == request_id,
                                    DeploymentLog.deployment_id.in_(deployment_ids),
                                    DeploymentLog.seq > after)
        .order_by(DeploymentLog.seq).limit(limit)
    ))


def prune_logs(session: Session, before: dt.datetime) -> int:
    result = session.execute(delete(DeploymentLog).where(DeploymentLog.created_at < before))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# -- the customer requests table, read through SQL only (partners never import gateway) ---

REQUESTS = table(
    "requests",
    column("id", String), column("model_id", String), column("version_id", String),
    column("deployment_id", String), column("status", String), column("run_ms", Integer),
    column("error", String), column("created_at", UTCDateTime()), column("started_at", UTCDateTime()),
    column("completed_at", UTCDateTime()),
)


def partner_request(session: Session, partner_id: str, request_id: str) -> dict[str, Any] | None:
    """A customer request to one of the partner's models: ids, status and timings only."""
    r = REQUESTS.c
    row = session.execute(
        select(r.id, r.model_id, r.version_id, r.deployment_id, r.status, r.run_ms, r.error,
               r.created_at, r.started_at, r.completed_at, Model.slug)
        .join(Model, Model.id == r.model_id)
        .where(r.id == request_id, Model.partner_id == partner_id)
    ).one_or_none()
    return None if row is None else dict(row._mapping)


def recent_requests(session: Session, partner_id: str, *, deployment_id: str | None = None,
                    limit: int = 20) -> list[dict[str, Any]]:
    r = REQUESTS.c
    query = (select(r.id, r.status, r.run_ms, r.created_at, r.deployment_id, Model.slug)
             .join(Model, Model.id == r.model_id).where(Model.partner_id == partner_id))
    if deployment_id is not None:
        query = query.where(r.deployment_id == deployment_id)
    return [dict(row._mapping) for row in session.execute(query.order_by(r.created_at.desc()).limit(limit))]


def request_stats(session: Session, partner_id: str, *, since: dt.datetime, until: dt.datetime,
                  bucket: str, model_id: str | None = None) -> list[dict[str, Any]]:
    """Per time bucket (hour or day) and model: requests by status, and p50/p95 run time."""
    r = REQUESTS.c
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        start = func.date_trunc(bucket, r.created_at, "UTC")
    else:
        fmt = "%Y-%m-%d %H:00:00" if bucket == "hour" else "%Y-%m-%d 00:00:00"
        start = func.strftime(fmt, r.created_at)
    where = [Model.partner_id == partner_id, r.created_at >= since, r.created_at < until]
    if model_id is not None:
        where.append(r.model_id == model_id)
    done = case((r.status == "succeeded", 1), else_=0)
    failed = case((r.status.in_(("failed", "expired", "blocked")), 1), else_=0)
    columns = [start.label("bucket"), Model.slug.label("model"), func.count().label("requests"),
               func.sum(done).label("succeeded"), func.sum(failed).label("failed")]
    if dialect == "postgresql":
        columns += [
            func.percentile_cont(0.5).within_group(r.run_ms).label("p50_ms"),
            func.percentile_cont(0.95).within_group(r.run_ms).label("p95_ms"),
        ]
    rows = [dict(row._mapping) for row in session.execute(
        select(*columns).join(Model, Model.id == r.model_id).where(*where)
        .group_by(start, Model.slug).order_by(start, Model.slug)
    )]
    if dialect != "postgresql":  # SQLite has no percentile aggregate: rank the run times here
        runs = session.execute(
            select(start.label("bucket"), Model.slug, r.run_ms).join(Model, Model.id == r.model_id)
            .where(*where, r.run_ms.is_not(None))
        )
        by_key: dict[tuple[Any, str], list[int]] = {}
        for b, slug, ms in runs:
            by_key.setdefault((b, slug), []).append(ms)
        for row in rows:
            values = sorted(by_key.get((row["bucket"], row["model"]), []))
            row["p50_ms"], row["p95_ms"] = _percentile(values, 0.5), _percentile(values, 0.95)
    for row in rows:
        b = row["bucket"]
        if isinstance(b, str):
            b = dt.datetime.fromisoformat(b)
        row["bucket"] = b if b.tzinfo else b.replace(tzinfo=dt.UTC)
        row["succeeded"], row["failed"] = int(row["succeeded"] or 0), int(row["failed"] or 0)
    return rows


def _percentile(values: list[int], q: float) -> float | None:
    """Linear interpolation between closest ranks, as PostgreSQL's percentile_cont does."""
    if not values:
        return None
    pos = (len(values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


# -- keys ---------------------------------------------------------------------------------

def keys_of(session: Session, partner_id: str) -> list[PartnerKey]:
    return list(session.scalars(
        select(PartnerKey).where(PartnerKey.partner_id == partner_id).order_by(PartnerKey.id)
    ))


def partner_key(session: Session, partner_id: str, key_id: str) -> PartnerKey | None:
    return session.scalar(select(PartnerKey).where(PartnerKey.partner_id == partner_id,
                                                   PartnerKey.id == key_id))


def key_by_digest(session: Session, digest: str) -> PartnerKey | None:
    return session.scalar(select(PartnerKey).where(PartnerKey.digest == digest,
                                                   PartnerKey.revoked_at.is_(None)))


# -- members and portal sessions ------------------------------------------------------------

def member_by_email(session: Session, email: str) -> PartnerMember | None:
    return session.scalar(select(PartnerMember).where(func.lower(PartnerMember.email) == email.lower()))


def member_by_invite(session: Session, digest: str) -> PartnerMember | None:
    return session.scalar(select(PartnerMember).where(PartnerMember.invite_digest == digest))


def partner_member(session: Session, partner_id: str, member_id: str) -> PartnerMember | None:
    return session.scalar(select(PartnerMember).where(PartnerMember.partner_id == partner_id,
                                                      PartnerMember.id == member_id))


def members_of(session: Session, partner_id: str) -> list[PartnerMember]:
    return list(session.scalars(
        select(PartnerMember).where(PartnerMember.partner_id == partner_id).order_by(PartnerMember.id)
    ))


def count_owners(session: Session, partner_id: str) -> int:
    return int(session.scalar(
        select(func.count()).select_from(PartnerMember)
        .where(PartnerMember.partner_id == partner_id, PartnerMember.role == "owner",
               PartnerMember.disabled_at.is_(None))
    ) or 0)


def portal_session_by_digest(session: Session, digest: str) -> PortalSession | None:
    return session.scalar(select(PortalSession).where(PortalSession.token_digest == digest))


def revoke_member_sessions(session: Session, member_id: str, when: dt.datetime) -> None:
    session.execute(
        update(PortalSession).where(PortalSession.member_id == member_id, PortalSession.revoked_at.is_(None))
        .values(revoked_at=when)
    )


def prune_portal_sessions(session: Session, before: dt.datetime) -> int:
    result = session.execute(delete(PortalSession).where(PortalSession.expires_at < before))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# -- uploads ---------------------------------------------------------------------------------

def partner_upload(session: Session, partner_id: str, upload_id: str, *, lock: bool = False) -> UploadSession | None:
    query = select(UploadSession).where(UploadSession.partner_id == partner_id, UploadSession.id == upload_id)
    if lock:
        query = query.with_for_update(of=UploadSession)
    return session.scalar(query)


def uploads_of(session: Session, partner_id: str, *, status: str | None = None) -> list[UploadSession]:
    query = select(UploadSession).where(UploadSession.partner_id == partner_id)
    if status is not None:
        query = query.where(UploadSession.status == status)
    return list(session.scalars(query.order_by(UploadSession.id.desc()).limit(100)))


def expired_uploads(session: Session, now: dt.datetime, *, limit: int = 100) -> list[UploadSession]:
    return list(session.scalars(
        select(UploadSession).where(UploadSession.status == "open", UploadSession.expires_at < now)
        .limit(limit)
    ))


# -- orphans (housekeeping) -------------------------------------------------------------------

# A blob is wanted while any version of its partner names it in its package.
_NAMED_BY_NO_VERSION = {
    "postgresql": text("""NOT EXISTS (
        SELECT 1 FROM model_versions v JOIN models m ON m.id = v.model_id,
               json_array_elements(CAST(v.package AS json) -> 'blobs') AS b
        WHERE m.partner_id = artifact_blobs.partner_id AND b ->> 'digest' = artifact_blobs.digest)"""),
    "sqlite": text("""NOT EXISTS (
        SELECT 1 FROM model_versions v JOIN models m ON m.id = v.model_id, json_each(v.package, '$.blobs') AS b
        WHERE m.partner_id = artifact_blobs.partner_id
          AND json_extract(b.value, '$.digest') = artifact_blobs.digest)"""),
}


def orphan_blobs(session: Session, *, created_before: dt.datetime, limit: int) -> list[ArtifactBlob]:
    """Blobs no version names and nobody ever decrypted, older than `created_before`; locked,
    skipping those an upload in progress holds (it is about to name them)."""
    audited = select(ArtifactAccess.id).where(ArtifactAccess.blob_id == ArtifactBlob.id).exists()
    return list(session.scalars(
        select(ArtifactBlob)
        .where(ArtifactBlob.created_at < created_before, ~audited,
               _NAMED_BY_NO_VERSION[session.get_bind().dialect.name])
        .order_by(ArtifactBlob.created_at).limit(limit)
        .with_for_update(skip_locked=True)
    ))


def indexed_storage_keys(session: Session, keys: list[str]) -> set[str]:
    """Which of these storage keys a blob row names."""
    return set(session.scalars(select(ArtifactBlob.storage_key).where(ArtifactBlob.storage_key.in_(keys))))


def open_upload_ids(session: Session, ids: list[str]) -> set[str]:
    """Which of these uploads are still open."""
    return set(session.scalars(select(UploadSession.id).where(UploadSession.id.in_(ids),
                                                              UploadSession.status == "open")))
