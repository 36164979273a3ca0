"""One-pass ingest of a package into the encrypted store, and the encrypted spool of a
resumable upload: what is stored, what is deduplicated, and that a rejection stores nothing."""

from __future__ import annotations

import base64
import io
import os
import tarfile
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kit.storage import LocalStorage
from partners.packaging import PackageRejected
from partners.tenancy.crypto import ArtifactIntegrityError
from partners.tenancy.kms import LocalKeyManager
from partners.tenancy.models import ArtifactBlob
from partners.tenancy.packages import ArchiveDigestMismatch, ingest_package
from partners.tenancy.spool import FRAME, SpoolBusy, UploadSpool
from partners.tenancy.store import ArtifactStore
from tests.partners.packaging.packaging_corpus import (
    E,
    good_entries,
    layer,
    sha,
    tar_bytes,
    write_oci,
)

MASTER = base64.b64encode(b"k" * 32).decode()
CHUNK = 64 * 1024
PARTNER = "par_ingest"


def make_store(root: Path) -> ArtifactStore:
    return ArtifactStore(LocalStorage(root), LocalKeyManager(MASTER), chunk_size=CHUNK)


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def blob_rows(db: Session) -> int:
    return db.scalar(select(func.count()).select_from(ArtifactBlob).where(ArtifactBlob.partner_id == PARTNER))


def weights_package(tmp_path: Path, weights: bytes, *, extra: list[E] | None = None) -> bytes:
    entries = [*good_entries(), E("src/weights.bin", data=weights), *(extra or [])]
    return write_oci(tmp_path / "p.tar", [layer(entries[:2]), layer(entries[2:], gz=True)]).read_bytes()


def test_every_blob_is_stored_encrypted_under_its_plaintext_digest(db: Session, tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    weights = os.urandom(5 * CHUNK + 123)
    archive = weights_package(tmp_path, weights)
    stored = ingest_package(db, PARTNER, io.BytesIO(archive), store=store)
    assert stored.digest == sha(archive) and stored.size == len(archive)
    package = stored.package
    assert {b.role for b in package.blobs} == {"manifest", "config", "layer"}
    members = {}
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for blob in package.blobs:
            members[blob.digest] = tar.extractfile(blob.path).read()  # type: ignore[union-attr]
    for digest, plain in members.items():
        assert sha(plain) == digest
        got = b"".join(store.open_blob(db, PARTNER, digest, actor="test", deployment_id=None, reason="test"))
        assert got == plain
    objects = files_under(tmp_path / "store")
    assert len(objects) == len(members) == blob_rows(db)
    assert not any(weights[:64] in p.read_bytes() for p in objects)


def test_the_same_package_twice_keeps_one_copy_and_drops_the_new_ciphertext(db: Session, tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    archive = weights_package(tmp_path, os.urandom(3 * CHUNK))
    ingest_package(db, PARTNER, io.BytesIO(archive), store=store)
    first = files_under(tmp_path / "store")
    ingest_package(db, PARTNER, [archive[i:i + 5000] for i in range(0, len(archive), 5000)], store=store)
    assert files_under(tmp_path / "store") == first
    assert blob_rows(db) == len(first)


def test_a_package_rejected_after_its_weights_streamed_leaves_nothing(db: Session, tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    # The escaping entry comes after several chunks of weights were already encrypted.
    archive = weights_package(tmp_path, os.urandom(6 * CHUNK), extra=[E("src/../../etc/evil", data=b"x")])
    with pytest.raises(PackageRejected) as caught:
        ingest_package(db, PARTNER, io.BytesIO(archive), store=store)
    assert caught.value.reason == "path-traversal"
    assert files_under(tmp_path / "store") == [] and blob_rows(db) == 0


def test_a_digest_other_than_declared_stores_nothing(db: Session, tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    archive = weights_package(tmp_path, os.urandom(2 * CHUNK))
    with pytest.raises(ArchiveDigestMismatch) as caught:
        ingest_package(db, PARTNER, io.BytesIO(archive), store=store, expected_digest="0" * 64)
    assert caught.value.actual == sha(archive)
    assert files_under(tmp_path / "store") == [] and blob_rows(db) == 0
    # A broken archive with a wrong digest is reported as the wrong bytes, not as a bad package.
    with pytest.raises(ArchiveDigestMismatch):
        ingest_package(db, PARTNER, io.BytesIO(archive[:-5000]), store=store, expected_digest=sha(archive))
    assert files_under(tmp_path / "store") == []


def test_a_directory_archive_is_stored_whole_as_its_only_layer(db: Session, tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    archive = tar_bytes([*good_entries(root=""), E("weights.bin", data=os.urandom(2 * CHUNK))])
    stored = ingest_package(db, PARTNER, io.BytesIO(archive), store=store)
    (blob,) = stored.package.blobs
    assert (blob.role, blob.digest) == ("archive", sha(archive))
    got = b"".join(store.open_blob(db, PARTNER, blob.digest, actor="t", deployment_id=None, reason="t"))
    assert got == archive and len(files_under(tmp_path / "store")) == 1


def spool(tmp_path: Path, upload_id: str = "upl_1") -> UploadSpool:
    return UploadSpool(tmp_path / "u" / f"{upload_id}.part", upload_id=upload_id, partner_id=PARTNER,
                       keys=LocalKeyManager(MASTER))


def test_spool_round_trip_resume_after_a_torn_frame_and_rollback(tmp_path: Path) -> None:
    data = os.urandom(2 * FRAME + 999)
    up = spool(tmp_path)
    up.create()
    with up.locked() as s:
        s.write(data[:FRAME + 10])
        s.flush()
    assert up.offset() == FRAME + 10
    with open(up.path, "ab") as f:  # a crash in the middle of writing a frame
        f.write(b"\x00\x10\x00\x00" + os.urandom(40))
    assert up.offset() == FRAME + 10
    with up.locked() as s:
        mark = s.mark()
        s.write(b"not meant")
        s.rollback(mark)
        s.write(data[FRAME + 10:])
        assert s.offset == len(data)
        with pytest.raises(SpoolBusy), up.locked():
            pass
        reader = s.reader()
        got = b"".join(iter(lambda: reader.read(12345), b""))
    assert got == data
    assert data[:4096] not in up.path.read_bytes()
    up.delete()
    assert up.offset() == 0


def test_spool_frames_cannot_be_altered_or_moved_between_uploads(tmp_path: Path) -> None:
    one, two = spool(tmp_path, "upl_one"), spool(tmp_path, "upl_two")
    for up in (one, two):
        up.create()
        with up.locked() as s:
            s.write(b"a" * 100)
            s.flush()
    raw = bytearray(one.path.read_bytes())
    raw[-3] ^= 1
    one.path.write_bytes(bytes(raw))
    with one.locked() as s, pytest.raises(ArtifactIntegrityError):
        s.reader().read()
    # The other upload's frame under this header (same partner key manager) does not open.
    header_len = 6 + int.from_bytes(two.path.read_bytes()[4:6], "big")
    two.path.write_bytes(two.path.read_bytes()[:header_len] + bytes(raw[header_len:]))
    with two.locked() as s, pytest.raises(ArtifactIntegrityError):
        s.reader().read()
