"""The encrypted artifact store: partner blobs encrypted at rest under per-partner data keys.

Blobs are addressed by the sha256 of their plaintext (`sha256:<hex>`, the OCI digest), in a
namespace per partner: the same layer uploaded twice by one partner is stored once, while two
partners never share (or learn about) each other's blobs. Objects in the storage backend are
named by a random blob id rather than the digest, so someone browsing storage cannot confirm
that a partner holds a known file. Each decryption writes an `artifact_access_log` row.

Services flush and never commit. An object written by a transaction that later rolls back
stays in storage without a row; it is unreadable ciphertext, named by no digest.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kit.db import utcnow
from kit.errors import InvalidInput, NotFound, PayloadTooLarge
from kit.ids import new_id
from kit.storage import Storage
from partners.tenancy import repository
from partners.tenancy.blob_upload import BlobUpload
from partners.tenancy.crypto import (
    DEFAULT_CHUNK_SIZE,
    ArtifactIntegrityError,
    EncryptingReader,
    decrypt_chunks,
    derive_blob_key,
    encode_header,
)
from partners.tenancy.kms import KeyManager, new_data_key
from partners.tenancy.models import ArtifactAccess, ArtifactBlob, PartnerDataKey

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_PARTNER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_KEY_CACHE_TTL_S = 300.0


class ArtifactNotFound(NotFound):
    """No blob with that digest in the partner's namespace."""

    type = "artifact-not-found"


def _check_partner(partner_id: str) -> str:
    if not _PARTNER_ID.match(partner_id):
        raise ValueError(f"not a partner id: {partner_id!r}")
    return partner_id


def _check_digest(digest: str) -> str:
    if not _DIGEST.match(digest):
        raise InvalidInput(f"not a sha256 digest: {digest!r}", type="invalid-digest")
    return digest


class ArtifactStore:
    """Encrypts blobs into a `Storage` backend and decrypts them for audited readers."""

    def __init__(
        self,
        storage: Storage,
        key_manager: KeyManager,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        prefix: str = "artifacts",
    ) -> None:
        self.storage = storage
        self.key_manager = key_manager
        self.chunk_size = chunk_size
        self.prefix = prefix
        # Unwrapped data keys, briefly, so a cloud KMS is not called for every layer.
        self._keys: dict[str, tuple[bytes, float]] = {}

    # -- data keys ---------------------------------------------------------------------------

    def _unwrap(self, row: PartnerDataKey) -> bytes:
        cached = self._keys.get(row.id)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        key = self.key_manager.unwrap(row.partner_id, row.wrapped_key)
        self._keys[row.id] = (key, now + _KEY_CACHE_TTL_S)
        return key

    def _create_data_key(self, session: Session, partner_id: str) -> PartnerDataKey:
        key = new_data_key()
        for _ in range(3):
            row = PartnerDataKey(
                partner_id=partner_id,
                version=repository.next_data_key_version(session, partner_id),
                wrapped_key=self.key_manager.wrap(partner_id, key),
                kek_id=self.key_manager.key_id,
            )
            try:
                with session.begin_nested():
                    session.add(row)
            except IntegrityError:
                # Another upload created this version first; use the key it made if active.
                existing = repository.active_data_key(session, partner_id)
                if existing is not None:
                    return existing
                continue
            self._keys[row.id] = (key, time.monotonic() + _KEY_CACHE_TTL_S)
            return row
        raise RuntimeError(f"could not create a data key for {partner_id}")

    def active_data_key(self, session: Session, partner_id: str) -> PartnerDataKey:
        """The partner's current data key, created (and wrapped) on first use."""
        _check_partner(partner_id)
        return repository.active_data_key(session, partner_id) or self._create_data_key(
            session, partner_id
        )

    def rotate_data_key(self, session: Session, partner_id: str) -> PartnerDataKey:
        """Retire the partner's current data key; new blobs use a fresh one, old ones still open."""
        current = repository.active_data_key(session, _check_partner(partner_id))
        if current is not None:
            current.retired_at = utcnow()
            session.flush()
        return self._create_data_key(session, partner_id)

    def rewrap_data_keys(self, session: Session, partner_id: str | None = None) -> int:
        """Re-wrap data keys under the key manager's current master key; returns how many changed."""
        changed = 0
        for row in repository.data_keys(session, partner_id):
            if row.kek_id == self.key_manager.key_id:
                continue
            key = self.key_manager.unwrap(row.partner_id, row.wrapped_key)
            row.wrapped_key = self.key_manager.wrap(row.partner_id, key)
            row.kek_id = self.key_manager.key_id
            changed += 1
        session.flush()
        return changed

    # -- blobs ---------------------------------------------------------------------------------

    def put_blob(
        self,
        session: Session,
        partner_id: str,
        stream: BinaryIO | Iterable[bytes],
        *,
        expected_digest: str | None = None,
        max_size: int | None = None,
    ) -> str:
        """Encrypt and store a stream; returns its plaintext digest (`sha256:<hex>`).

        Memory stays at a few chunks whatever the size. With `expected_digest`, a stream whose
        content does not match is refused and nothing is kept; past `max_size` bytes, likewise.
        """
        _check_partner(partner_id)
        if expected_digest is not None:
            _check_digest(expected_digest)
        key_row = self.active_data_key(session, partner_id)
        salt = os.urandom(16)
        reader = EncryptingReader(
            stream,
            blob_key=derive_blob_key(self._unwrap(key_row), salt, partner_id),
            header=encode_header(self.chunk_size, salt, key_row.id),
            chunk_size=self.chunk_size,
            max_size=max_size,
            too_large=PayloadTooLarge,
        )
        blob_id = new_id("art")
        storage_key = f"{self.prefix}/{partner_id}/{blob_id[-2:]}/{blob_id}"
        try:
            with reader:
                ciphertext_size, ciphertext_sha256 = self.storage.put_stream(storage_key, reader)
                digest = reader.digest
        except BaseException:
            self.storage.delete(storage_key)
            raise
        if expected_digest is not None and digest != expected_digest:
            self.storage.delete(storage_key)
            raise InvalidInput(
                f"content digest {digest} does not match the declared {expected_digest}",
                type="digest-mismatch",
            )
        if repository.blob(session, partner_id, digest) is not None:
            self.storage.delete(storage_key)
            return digest
        row = ArtifactBlob(
            id=blob_id, partner_id=partner_id, digest=digest, size=reader.size,
            storage_key=storage_key, ciphertext_size=ciphertext_size,
            ciphertext_sha256=ciphertext_sha256, data_key_id=key_row.id,
            chunk_size=self.chunk_size,
        )
        try:
            with session.begin_nested():
                session.add(row)
        except IntegrityError:
            # The same content landed concurrently; keep theirs.
            self.storage.delete(storage_key)
        return digest

    def open_upload(self, session: Session, partner_id: str) -> BlobUpload:
        """A blob to push plaintext into as it streams past; see `BlobUpload`."""
        key_row = self.active_data_key(session, _check_partner(partner_id))
        return BlobUpload(session, self.storage, partner_id, key_row=key_row,
                          data_key=self._unwrap(key_row), chunk_size=self.chunk_size,
                          prefix=self.prefix)

    def has_blob(self, session: Session, partner_id: str, digest: str) -> bool:
        """True when the partner has a blob with this plaintext digest."""
        return repository.blob(session, _check_partner(partner_id), _check_digest(digest)) is not None

    def blob(self, session: Session, partner_id: str, digest: str) -> ArtifactBlob:
        """The partner's blob row by digest; ArtifactNotFound when it has none."""
        row = repository.blob(session, _check_partner(partner_id), _check_digest(digest))
        if row is None:
            raise ArtifactNotFound(f"no artifact {digest}")
        return row

    def open_blob(
        self,
        session: Session,
        partner_id: str,
        digest: str,
        *,
        actor: str,
        deployment_id: str | None,
        reason: str,
    ) -> Iterator[bytes]:
        """Record an audited decryption, then return an iterator of authenticated plaintext chunks.

        The audit row and the key lookups happen now, on the caller's session; the returned
        iterator touches only storage, so it may be consumed in another thread. It raises
        ArtifactIntegrityError if the stored ciphertext was altered in any way.
        """
        if not actor:
            raise ValueError("open_blob needs an actor for the audit log")
        row = self.blob(session, partner_id, digest)
        key_row = repository.data_key(session, row.data_key_id)
        if key_row is None or key_row.partner_id != partner_id:
            raise ArtifactIntegrityError(f"artifact {digest} names a data key it cannot use")
        data_key = self._unwrap(key_row)
        session.add(ArtifactAccess(
            partner_id=partner_id, blob_id=row.id, digest=digest, actor=actor,
            deployment_id=deployment_id, reason=reason,
        ))
        session.flush()
        return self._plaintext(row.storage_key, key_row.id, data_key, partner_id, digest)

    def open_layers(
        self,
        session: Session,
        partner_id: str,
        digests: Iterable[str],
        *,
        actor: str,
        deployment_id: str | None,
        reason: str,
    ) -> list[Iterator[bytes]]:
        """`open_blob` for each layer of a package, in order: a sandbox's `SandboxSpec.layers`."""
        return [self.open_blob(session, partner_id, d, actor=actor, deployment_id=deployment_id,
                               reason=reason) for d in digests]

    def _plaintext(
        self, storage_key: str, key_id: str, data_key: bytes, partner_id: str, digest: str
    ) -> Iterator[bytes]:
        def key_for(named: str) -> bytes:
            if named != key_id:
                raise ArtifactIntegrityError("artifact header names another data key")
            return data_key

        try:
            stream = self.storage.open(storage_key)
        except FileNotFoundError:
            raise ArtifactNotFound(f"artifact {digest} is missing from storage") from None
        with stream:
            yield from decrypt_chunks(stream, data_key_for=key_for, partner_id=partner_id)
