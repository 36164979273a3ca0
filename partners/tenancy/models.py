"""Tables of the encrypted artifact store: wrapped data keys, blob index, decryption audit log."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kit.db import Base, utcnow
from kit.ids import new_id


class PartnerDataKey(Base):
    """One data key of a partner, stored only wrapped by the master key (KMS)."""

    __tablename__ = "partner_data_keys"
    __table_args__ = (UniqueConstraint("partner_id", "version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("pdk"))
    partner_id: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    kek_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Retired keys still decrypt older blobs; new blobs use the partner's newest active key.
    retired_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class ArtifactBlob(Base):
    """A stored, encrypted blob, addressed by its plaintext digest within one partner."""

    __tablename__ = "artifact_blobs"
    __table_args__ = (UniqueConstraint("partner_id", "digest"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("art"))
    partner_id: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(80))
    size: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(255))
    ciphertext_size: Mapped[int] = mapped_column(BigInteger)
    ciphertext_sha256: Mapped[str] = mapped_column(String(64))
    data_key_id: Mapped[str] = mapped_column(ForeignKey("partner_data_keys.id"))
    chunk_size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ArtifactAccess(Base):
    """One decryption of a blob: who asked, for which deployment, why and when."""

    __tablename__ = "artifact_access_log"
    __table_args__ = (Index("ix_artifact_access_log_partner_time", "partner_id", "accessed_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("aal"))
    partner_id: Mapped[str] = mapped_column(String(64))
    blob_id: Mapped[str] = mapped_column(ForeignKey("artifact_blobs.id"), index=True)
    digest: Mapped[str] = mapped_column(String(80))
    actor: Mapped[str] = mapped_column(String(200))
    deployment_id: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    reason: Mapped[str] = mapped_column(String(200))
    accessed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
