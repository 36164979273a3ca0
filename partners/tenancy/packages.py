"""Validated packages into the encrypted store, and back out into a sandbox's layers.

An upload's layers are encrypted under the partner's data key as they are copied out of the
archive; a replica start opens them again (one audit record each) as the plaintext streams
that `SandboxSpec.layers` pipes into the sandbox's private tmpfs.
"""

from __future__ import annotations

import functools
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from kit.storage import get_storage
from partners.packaging import ValidatedPackage
from partners.tenancy.kms import LocalKeyManager
from partners.tenancy.store import ArtifactStore


@functools.cache
def artifact_store() -> ArtifactStore:
    """The process-wide encrypted artifact store."""
    return ArtifactStore(get_storage(), LocalKeyManager.from_settings())


def store_package(session: Session, partner_id: str, archive: Path, package: ValidatedPackage, *,
                  store: ArtifactStore | None = None) -> None:
    """Encrypt and store every layer of a validated package (deduplicated by digest)."""
    store = store or artifact_store()
    with tarfile.open(archive, mode="r:*") as tar:
        for layer in package.layers:
            if store.has_blob(session, partner_id, layer.digest):
                continue
            if not layer.path:  # a directory archive is its own single layer
                with open(archive, "rb") as f:
                    store.put_blob(session, partner_id, f, expected_digest=layer.digest)
                continue
            member = tar.extractfile(layer.path)
            if member is None:
                raise ValueError(f"layer {layer.digest} is not a file in the archive")
            with member:
                store.put_blob(session, partner_id, member, expected_digest=layer.digest)


def open_layers(
    session: Session, partner_id: str, package: dict[str, Any], *, actor: str, deployment_id: str
) -> tuple[ValidatedPackage, list[Iterator[bytes]]]:
    """The package and its layers' plaintext streams, each decryption audited."""
    validated = ValidatedPackage.from_dict(package)
    layers = artifact_store().open_layers(
        session, partner_id, [layer.digest for layer in validated.layers], actor=actor,
        deployment_id=deployment_id, reason="start replica")
    return validated, layers
