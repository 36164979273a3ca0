"""Housekeeping for partner storage: what a crash or a rolled-back upload leaves behind.

An upload writes ciphertext to the artifact store while it streams and indexes each blob in
its transaction; if the process dies or the transaction rolls back, objects stay in storage
with no row (unreadable: their key ids and digests are nowhere). Blob rows that no version
names, and spool files of uploads that ended, are leftovers too. `purge_orphans` removes all
of them once they are older than a grace period, so an upload still in flight (its objects
written, its rows not yet committed) is never swept: the grace must outlast any upload.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from kit.db import after_commit, utcnow
from kit.settings import get_settings
from kit.storage import Storage
from partners import repository as repo
from partners.tenancy.packages import artifact_store
from partners.tenancy.store import ArtifactStore
from partners.uploads import UPLOAD_TTL

DEFAULT_GRACE = UPLOAD_TTL  # an upload session lives this long, so none is in flight past it
_BATCH = 500


@dataclass(frozen=True)
class Purged:
    """What one sweep removed."""

    objects: int  # stored objects no blob row names (a crash or rollback mid-upload)
    blobs: int    # blob rows (and their objects) that no version names
    spools: int   # files of uploads that ended or never got a row


def _objects(storage: Storage, prefix: str) -> Iterator[tuple[str, float]]:
    """(key, modified time) of every object under `prefix`, partial writes included."""
    lister = getattr(storage, "list_objects", None)
    if lister is not None:  # a remote backend lists by itself
        yield from lister(prefix)
        return
    root = storage.local_path(prefix)
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            try:
                modified = path.lstat().st_mtime
            except FileNotFoundError:
                continue
            yield f"{prefix}/{path.relative_to(root)}", modified


def _purge_unindexed(session: Session, store: ArtifactStore, cutoff: dt.datetime, keep: set[str]) -> int:
    old = [key for key, modified in _objects(store.storage, store.prefix)
           if modified < cutoff.timestamp() and key not in keep]
    removed = 0
    for start in range(0, len(old), _BATCH):
        batch = old[start:start + _BATCH]
        indexed = repo.indexed_storage_keys(session, batch)
        for key in batch:
            if key not in indexed:
                store.storage.delete(key)
                removed += 1
    return removed


def _purge_spools(session: Session, cutoff: dt.datetime) -> int:
    data_dir = get_settings().data_dir
    old: dict[str, Path] = {}
    # Spool files of resumable uploads, and plaintext spools an earlier release wrote.
    candidates = [*(data_dir / "uploads").glob("*/*.part"), *(data_dir / "incoming").glob("upload-*")]
    for path in candidates:
        try:
            if path.lstat().st_mtime < cutoff.timestamp():
                old[path.stem if path.suffix == ".part" else path.name] = path
        except FileNotFoundError:
            continue
    ids = list(old)
    still_open: set[str] = set()
    for start in range(0, len(ids), _BATCH):
        still_open |= repo.open_upload_ids(session, ids[start:start + _BATCH])
    for upload_id, path in old.items():
        if upload_id not in still_open:
            path.unlink(missing_ok=True)
    return len(old) - len(still_open)


def purge_orphans(session: Session, *, grace: dt.timedelta = DEFAULT_GRACE, now: dt.datetime | None = None,
                  store: ArtifactStore | None = None, limit: int = 1000) -> Purged:
    """Remove stored objects, blob rows and upload spools nothing refers to, once older than `grace`.

    Blob rows go in this transaction and their objects only after it commits, so a rollback
    never leaves a row whose ciphertext is gone. Rows an upload in progress has locked are
    skipped. For the periodic housekeeping tick.
    """
    cutoff = (now or utcnow()) - grace
    store = store or artifact_store()
    rows = repo.orphan_blobs(session, created_before=cutoff, limit=limit)
    keys = [row.storage_key for row in rows]
    for row in rows:
        session.delete(row)
    session.flush()

    def delete_objects() -> None:
        for key in keys:
            store.storage.delete(key)

    if keys:
        after_commit(session, delete_objects)
    objects = _purge_unindexed(session, store, cutoff, set(keys))
    return Purged(objects=objects, blobs=len(rows), spools=_purge_spools(session, cutoff))
