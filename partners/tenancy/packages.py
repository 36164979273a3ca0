"""Uploaded packages into the encrypted store in one pass, and back out into a sandbox's layers.

An upload is read once, front to back: the validator checks every entry while each blob it
passes streams through `PackageSink` into the artifact store, encrypted under the partner's
data key and addressed by the plaintext digest the validator computes anyway. The archive's
own digest is taken in the same pass. Plaintext is never written anywhere: if the package
is rejected (or its digest is not the one declared) every blob written so far is removed.
A replica start opens the layers again (one audit record each) as the plaintext streams
that `SandboxSpec.layers` pipes into the sandbox's private tmpfs.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from sqlalchemy.orm import Session

from kit.errors import AppError
from kit.storage import get_storage
from partners.packaging import PackageLimits, PackageRejected, ValidatedPackage, validate_stream
from partners.packaging.tarsafe import CHUNK, ChunkSource, Reader, ThreadedHash
from partners.tenancy.blob_upload import BlobUpload
from partners.tenancy.kms import LocalKeyManager
from partners.tenancy.store import ArtifactStore


@functools.cache
def artifact_store() -> ArtifactStore:
    """The process-wide encrypted artifact store."""
    return ArtifactStore(get_storage(), LocalKeyManager.from_settings())


class ArchiveDigestMismatch(AppError):
    """The bytes received do not hash to the digest the uploader declared."""

    status_code, type, title = 422, "upload-digest-mismatch", "Upload digest mismatch"

    def __init__(self, actual: str, expected: str) -> None:
        super().__init__(f"the bytes received hash to {actual}, not {expected}", digest=actual)
        self.actual = actual


class PackageSink:
    """A `BlobSink` that encrypts each blob into the artifact store as the validator reads it."""

    def __init__(self, session: Session, partner_id: str, store: ArtifactStore) -> None:
        self.session = session
        self.partner_id = partner_id
        self.store = store
        self.uploads: list[BlobUpload] = []

    def open_blob(self, path: str, /) -> BlobUpload:
        upload = self.store.open_upload(self.session, self.partner_id)
        self.uploads.append(upload)
        return upload

    def abort(self) -> None:
        """Remove every blob this package stored (the validator already dropped the rest)."""
        for upload in self.uploads:
            upload.discard()


class _Digesting:
    """Reads through to `src`, hashing every byte on a second thread and counting them."""

    def __init__(self, src: Reader) -> None:
        self._src = src
        self._hash = ThreadedHash("sha256")
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(CHUNK if n is None or n < 0 else n)
        if data:
            data = bytes(data)
            self._hash.update(data)
            self.size += len(data)
        return data

    def finish(self) -> str:
        """Read whatever the validator left, then return `sha256:<hex>` of all of it."""
        while self.read(CHUNK):
            pass
        return "sha256:" + self._hash.hexdigest()

    def close(self) -> None:
        self._hash.close()


@dataclass(frozen=True)
class StoredPackage:
    """A validated package whose blobs are in the store: what a version records."""

    package: ValidatedPackage
    digest: str     # sha256 of the archive as uploaded
    size: int
    sink: PackageSink

    def discard(self) -> None:
        """Remove the stored blobs again (the version could not be recorded)."""
        self.sink.abort()


def _normalized(digest: str) -> str:
    digest = digest.strip().lower()
    return digest if digest.startswith("sha256:") else f"sha256:{digest}"


def ingest_package(session: Session, partner_id: str, source: BinaryIO | Iterable[bytes] | Reader, *,
                   expected_digest: str | None = None, limits: PackageLimits | None = None,
                   store: ArtifactStore | None = None) -> StoredPackage:
    """Validate a package as it streams and store its blobs encrypted, in the same pass.

    With `expected_digest`, an archive that hashes otherwise raises ArchiveDigestMismatch
    (even when it is also an invalid package: the bytes are not the ones meant). On any
    failure nothing stays stored.
    """
    store = store or artifact_store()
    reader: Reader = source if hasattr(source, "read") else ChunkSource(source)  # type: ignore[arg-type]
    digesting = _Digesting(reader)
    sink = PackageSink(session, partner_id, store)
    try:
        try:
            package = validate_stream(digesting, limits or PackageLimits(), sink=sink)
        except PackageRejected:
            if expected_digest is not None:
                actual = digesting.finish()
                if actual != _normalized(expected_digest):
                    raise ArchiveDigestMismatch(actual, _normalized(expected_digest)) from None
            raise
        digest = digesting.finish()
        if expected_digest is not None and digest != _normalized(expected_digest):
            raise ArchiveDigestMismatch(digest, _normalized(expected_digest))
    except BaseException:
        sink.abort()
        raise
    finally:
        digesting.close()
    return StoredPackage(package, digest, digesting.size, sink)


def open_layers(
    session: Session, partner_id: str, package: dict[str, Any], *, actor: str, deployment_id: str
) -> tuple[ValidatedPackage, list[Iterator[bytes]]]:
    """The package and its layers' plaintext streams, each decryption audited."""
    validated = ValidatedPackage.from_dict(package)
    layers = artifact_store().open_layers(
        session, partner_id, [layer.digest for layer in validated.layers], actor=actor,
        deployment_id=deployment_id, reason="start replica")
    return validated, layers
