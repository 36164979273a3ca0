"""The encrypted artifact store: round trips, tamper detection, audit, addressing, no plaintext at rest."""

from __future__ import annotations

import base64
import hashlib
import io
import os
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kit.errors import InvalidInput, PayloadTooLarge
from kit.storage import LocalStorage
from partners.tenancy import repository
from partners.tenancy.crypto import TAG_SIZE, ArtifactIntegrityError, decrypt_chunks
from partners.tenancy.kms import KeyUnavailable, LocalKeyManager
from partners.tenancy.models import ArtifactAccess, ArtifactBlob, PartnerDataKey
from partners.tenancy.store import ArtifactNotFound, ArtifactStore

CHUNK = 64 * 1024
MASTER = base64.b64encode(b"m" * 32).decode()


def make_store(root: Path, *, chunk_size: int = CHUNK, master: str = MASTER) -> ArtifactStore:
    return ArtifactStore(LocalStorage(root), LocalKeyManager(master), chunk_size=chunk_size)


def read_all(chunks) -> bytes:
    return b"".join(chunks)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def open_plain(store: ArtifactStore, db: Session, partner: str, digest: str) -> bytes:
    return read_all(store.open_blob(db, partner, digest, actor="test", deployment_id=None,
                                    reason="test"))


def object_path(store: ArtifactStore, db: Session, partner: str, digest: str) -> Path:
    return store.storage.local_path(store.blob(db, partner, digest).storage_key)


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17])
def test_round_trip_at_chunk_boundaries(db: Session, tmp_path: Path, size: int) -> None:
    store = make_store(tmp_path)
    data = os.urandom(size)
    digest = store.put_blob(db, "prt_a", io.BytesIO(data))
    assert digest == sha(data)
    assert open_plain(store, db, "prt_a", digest) == data
    row = store.blob(db, "prt_a", digest)
    assert row.size == size
    expected_chunks = max(1, -(-size // CHUNK))
    assert row.ciphertext_size == object_path(store, db, "prt_a", digest).stat().st_size
    header = row.ciphertext_size - size - expected_chunks * TAG_SIZE
    assert 0 < header < 100


def test_iterable_source_with_odd_pieces(db: Session, tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = os.urandom(5 * CHUNK + 3)
    pieces = [data[i:i + 7777] for i in range(0, len(data), 7777)]
    digest = store.put_blob(db, "prt_a", pieces)
    assert open_plain(store, db, "prt_a", digest) == data


def test_dedupe_by_plaintext_digest_per_partner(db: Session, tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = os.urandom(2 * CHUNK)
    first = store.put_blob(db, "prt_a", io.BytesIO(data))
    again = store.put_blob(db, "prt_a", io.BytesIO(data))
    other = store.put_blob(db, "prt_b", io.BytesIO(data))
    assert first == again == other == sha(data)
    count = db.scalar(select(func.count()).select_from(ArtifactBlob).where(ArtifactBlob.digest == first))
    assert count == 2  # one per partner namespace
    objects = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(objects) == 2
    # Object names reveal neither the digest nor anything of the content.
    assert not any(first.split(":")[1] in str(p) for p in objects)
    a, b = (object_path(store, db, p, first).read_bytes() for p in ("prt_a", "prt_b"))
    assert a != b


def test_partner_namespaces_are_separate(db: Session, tmp_path: Path) -> None:
    store = make_store(tmp_path)
    digest = store.put_blob(db, "prt_a", io.BytesIO(b"only a's"))
    assert store.has_blob(db, "prt_a", digest)
    assert not store.has_blob(db, "prt_b", digest)
    with pytest.raises(ArtifactNotFound):
        store.open_blob(db, "prt_b", digest, actor="x", deployment_id=None, reason="x")


def test_flipped_byte_is_detected_anywhere(db: Session, tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = os.urandom(3 * CHUNK + 5)
    digest = store.put_blob(db, "prt_a", io.BytesIO(data))
    path = object_path(store, db, "prt_a", digest)
    original = path.read_bytes()
    for offset in (0, 10, 40, len(original) // 2, len(original) - 1):
        tampered = bytearray(original)
        tampered[offset] ^= 0x01
        path.write_bytes(bytes(tampered))
        with pytest.raises(ArtifactIntegrityError):
            open_plain(store, db, "prt_a", digest)
    path.write_bytes(original)
    assert open_plain(store, db, "prt_a", digest) == data


def _split(store: ArtifactStore, db: Session, digest: str, raw: bytes) -> tuple[bytes, list[bytes]]:
    row = store.blob(db, "prt_a", digest)
    record = row.chunk_size + TAG_SIZE
    n_chunks = -(-row.size // row.chunk_size)
    header_len = len(raw) - row.size - n_chunks * TAG_SIZE
    body = raw[header_len:]
    return raw[:header_len], [body[i:i + record] for i in range(0, len(body), record)]


def test_truncation_reordering_and_appending_are_detected(db: Session, tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = os.urandom(4 * CHUNK)  # exactly four full chunks: truncation lands on a boundary
    digest = store.put_blob(db, "prt_a", io.BytesIO(data))
    path = object_path(store, db, "prt_a", digest)
    raw = path.read_bytes()
    header, chunks = _split(store, db, digest, raw)
    assert len(chunks) == 4
    variants = {
        "drop last chunk": header + b"".join(chunks[:3]),
        "drop to header": header,
        "cut mid chunk": raw[:-100],
        "swap chunks": header + chunks[1] + chunks[0] + chunks[2] + chunks[3],
        "duplicate chunk": header + chunks[0] + chunks[0] + chunks[2] + chunks[3],
        "append a chunk": raw + chunks[1],
        "append bytes": raw + b"\0" * 32,
    }
    for name, blob in variants.items():
        path.write_bytes(blob)
        with pytest.raises(ArtifactIntegrityError):
            open_plain(store, db, "prt_a", digest)
            pytest.fail(f"{name} was not detected")


def test_chunks_spliced_from_another_blob_are_detected(db: Session, tmp_path: Path) -> None:
    store = make_store(tmp_path)
    one = store.put_blob(db, "prt_a", io.BytesIO(os.urandom(2 * CHUNK)))
    two = store.put_blob(db, "prt_a", io.BytesIO(os.urandom(2 * CHUNK)))
    p1, p2 = object_path(store, db, "prt_a", one), object_path(store, db, "prt_a", two)
    h1, c1 = _split(store, db, one, p1.read_bytes())
    _, c2 = _split(store, db, two, p2.read_bytes())
    p1.write_bytes(h1 + c2[0] + c1[1])
    with pytest.raises(ArtifactIntegrityError):
        open_plain(store, db, "prt_a", one)


def test_wrong_partner_key_fails(db: Session, tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = os.urandom(CHUNK + 1)
    digest = store.put_blob(db, "prt_a", io.BytesIO(data))
    store.put_blob(db, "prt_b", io.BytesIO(b"b's own"))
    key_b = store._unwrap(repository.active_data_key(db, "prt_b"))
    with open(object_path(store, db, "prt_a", digest), "rb") as f, pytest.raises(ArtifactIntegrityError):
        read_all(decrypt_chunks(f, data_key_for=lambda _kid: key_b, partner_id="prt_a"))
    # The right key under another partner's id (HKDF info) fails as well.
    key_a = store._unwrap(repository.active_data_key(db, "prt_a"))
    with open(object_path(store, db, "prt_a", digest), "rb") as f, pytest.raises(ArtifactIntegrityError):
        read_all(decrypt_chunks(f, data_key_for=lambda _kid: key_a, partner_id="prt_b"))
    # A wrapped key moved onto another partner's row does not unwrap (AAD = partner id).
    row_a = repository.active_data_key(db, "prt_a")
    with pytest.raises(KeyUnavailable):
        LocalKeyManager(MASTER).unwrap("prt_b", row_a.wrapped_key)


def test_wrong_master_key_cannot_open(db: Session, tmp_path: Path) -> None:
    store = make_store(tmp_path)
    digest = store.put_blob(db, "prt_a", io.BytesIO(b"secret"))
    other = make_store(tmp_path, master=base64.b64encode(b"o" * 32).decode())
    with pytest.raises(KeyUnavailable):
        open_plain(other, db, "prt_a", digest)


def test_master_key_rotation_rewraps(db: Session, tmp_path: Path) -> None:
    store = make_store(tmp_path)
    digest = store.put_blob(db, "prt_a", io.BytesIO(b"kept across rotation"))
    new_master = base64.b64encode(b"n" * 32).decode()
    rotated = ArtifactStore(LocalStorage(tmp_path), LocalKeyManager(new_master, previous=[MASTER]),
                            chunk_size=CHUNK)
    assert rotated.rewrap_data_keys(db) == 1
    only_new = make_store(tmp_path, master=new_master)
    assert open_plain(only_new, db, "prt_a", digest) == b"kept across rotation"


def test_data_key_rotation_keeps_old_blobs_readable(db: Session, tmp_path: Path) -> None:
    store = make_store(tmp_path)
    old = store.put_blob(db, "prt_a", io.BytesIO(b"before"))
    first_key = repository.active_data_key(db, "prt_a")
    new_key = store.rotate_data_key(db, "prt_a")
    assert new_key.version == first_key.version + 1 and first_key.retired_at is not None
    new = store.put_blob(db, "prt_a", io.BytesIO(b"after"))
    assert store.blob(db, "prt_a", new).data_key_id == new_key.id
    assert open_plain(store, db, "prt_a", old) == b"before"
    assert open_plain(store, db, "prt_a", new) == b"after"


def test_data_keys_are_stored_wrapped_only(db: Session, tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.put_blob(db, "prt_a", io.BytesIO(b"x"))
    row = db.scalars(select(PartnerDataKey).where(PartnerDataKey.partner_id == "prt_a")).one()
    key = store._unwrap(row)
    assert key not in row.wrapped_key and len(row.wrapped_key) > 32


def test_every_decryption_is_audited(db: Session, tmp_path: Path) -> None:
    store = make_store(tmp_path)
    digest = store.put_blob(db, "prt_a", io.BytesIO(b"weights"))
    assert repository.access_log(db, "prt_a") == []
    chunks = store.open_blob(db, "prt_a", digest, actor="supervisor:host-1",
                             deployment_id="dep_1", reason="start replica")
    # Recorded at open, before a single byte is decrypted.
    log = repository.access_log(db, "prt_a", digest)
    assert len(log) == 1
    assert read_all(chunks) == b"weights"
    store.open_blob(db, "prt_a", digest, actor="user:usr_9", deployment_id=None, reason="support")
    log = repository.access_log(db, "prt_a", digest)
    assert [(r.actor, r.deployment_id, r.reason) for r in log] == [
        ("supervisor:host-1", "dep_1", "start replica"), ("user:usr_9", None, "support")]
    assert all(r.accessed_at.tzinfo is not None and r.blob_id == store.blob(db, "prt_a", digest).id
               for r in log)
    with pytest.raises(ValueError):
        store.open_blob(db, "prt_a", digest, actor="", deployment_id=None, reason="x")
    assert db.scalar(select(func.count()).select_from(ArtifactAccess)) == 2


def test_expected_digest_and_size_limit_refuse_and_keep_nothing(db: Session, tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = os.urandom(3 * CHUNK)
    with pytest.raises(InvalidInput):
        store.put_blob(db, "prt_a", io.BytesIO(data), expected_digest=sha(b"something else"))
    with pytest.raises(PayloadTooLarge):
        store.put_blob(db, "prt_a", io.BytesIO(data), max_size=2 * CHUNK)
    assert store.put_blob(db, "prt_a", io.BytesIO(data), expected_digest=sha(data)) == sha(data)
    assert db.scalar(select(func.count()).select_from(ArtifactBlob)) == 1
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) == 1


def test_known_plaintext_never_in_storage_root(db: Session, tmp_path: Path) -> None:
    store = make_store(tmp_path)
    marker = os.urandom(8).hex().encode()
    weights = (b"\0" * 1000 + marker) * 300 + os.urandom(CHUNK)
    code = b"class Model:\n    SECRET = '" + marker + b"'\n"
    digests = [store.put_blob(db, "prt_a", io.BytesIO(blob)) for blob in (weights, code)]
    for digest in digests:
        open_plain(store, db, "prt_a", digest)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 2
    for path in files:
        content = path.read_bytes()
        assert marker not in content
        assert b"class Model" not in content
        assert b"\0" * 64 not in content  # repetitive plaintext leaves no pattern


def test_memory_stays_flat_for_a_large_stream(db: Session, tmp_path: Path) -> None:
    store = make_store(tmp_path, chunk_size=1 << 20)

    class Zeros(io.RawIOBase):
        def __init__(self, n: int) -> None:
            self.left = n

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            n = min(n, self.left)
            self.left -= n
            return bytes(n)

    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    size = 256 * 1024 * 1024
    digest = store.put_blob(db, "prt_a", Zeros(size))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert digest == sha(bytes(size))
    assert grown_mb < 40, f"peak RSS grew by {grown_mb:.0f} MB for a 256 MB stream"
    assert store.blob(db, "prt_a", digest).ciphertext_size - size < 256 * TAG_SIZE + 100
