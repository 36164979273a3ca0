"""Queries of the artifact store; all SQL of the tenancy package lives here."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from partners.tenancy.models import ArtifactAccess, ArtifactBlob, PartnerDataKey


def active_data_key(session: Session, partner_id: str) -> PartnerDataKey | None:
    """The partner's newest data key that is not retired."""
    return session.scalars(
        select(PartnerDataKey)
        .where(PartnerDataKey.partner_id == partner_id, PartnerDataKey.retired_at.is_(None))
        .order_by(PartnerDataKey.version.desc())
        .limit(1)
    ).first()


def next_data_key_version(session: Session, partner_id: str) -> int:
    """One past the partner's highest data key version."""
    current = session.scalar(
        select(func.max(PartnerDataKey.version)).where(PartnerDataKey.partner_id == partner_id)
    )
    return (current or 0) + 1


def data_key(session: Session, key_id: str) -> PartnerDataKey | None:
    """A data key row by id."""
    return session.get(PartnerDataKey, key_id)


def data_keys(session: Session, partner_id: str | None = None) -> list[PartnerDataKey]:
    """Every data key row, or one partner's."""
    query = select(PartnerDataKey).order_by(PartnerDataKey.partner_id, PartnerDataKey.version)
    if partner_id is not None:
        query = query.where(PartnerDataKey.partner_id == partner_id)
    return list(session.scalars(query))


def blob(session: Session, partner_id: str, digest: str, *, lock: bool = False) -> ArtifactBlob | None:
    """A partner's blob by plaintext digest; `lock` holds it (shared) until the transaction ends."""
    query = select(ArtifactBlob).where(ArtifactBlob.partner_id == partner_id, ArtifactBlob.digest == digest)
    if lock:
        query = query.with_for_update(read=True)
    return session.scalars(query).first()


def access_log(session: Session, partner_id: str, digest: str | None = None) -> list[ArtifactAccess]:
    """Decryption records of a partner's blobs, oldest first."""
    query = select(ArtifactAccess).where(ArtifactAccess.partner_id == partner_id)
    if digest is not None:
        query = query.where(ArtifactAccess.digest == digest)
    return list(session.scalars(query.order_by(ArtifactAccess.accessed_at, ArtifactAccess.id)))
