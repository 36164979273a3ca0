"""Resumable, chunked package uploads.

`POST /v1/partner/uploads` opens a session; `PATCH` appends bytes at the current offset
(`Upload-Offset: N`, or `Content-Range: bytes N-M/TOTAL`); `HEAD` tells the offset after a
broken connection; completing with the expected SHA-256 validates the package and makes it
the model's next version. Bytes are encrypted before they reach the upload's private file
(`partners.tenancy.spool`: a key per upload, wrapped by the KMS), so memory stays flat and no
plaintext waits on disk; completing streams them back decrypted through the validator into
the artifact store in one pass, checking the SHA-256 as they go.

The file on disk is the truth for the offset: an exclusive `flock` serialises writers across
API processes, and a chunk cut off mid-way keeps what arrived so the client resumes there.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from kit.db import utcnow
from kit.errors import AppError, Conflict, InvalidInput, NotFound, PayloadTooLarge
from kit.settings import get_settings
from partners import repository as repo
from partners import service
from partners.models import ModelVersion, Partner, UploadSession
from partners.packaging import PackageRejected
from partners.tenancy.packages import ArchiveDigestMismatch, artifact_store
from partners.tenancy.spool import SpoolAppender, SpoolBusy, SpoolGone, UploadSpool

MAX_UPLOAD_BYTES = 64 * 1024**3
UPLOAD_TTL = dt.timedelta(hours=24)
_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_SHA256 = re.compile(r"^(sha256:)?[0-9a-f]{64}$")


class OffsetMismatch(Conflict):
    """The chunk does not start where the upload stands; the client should ask and resume."""

    type = "upload-offset-mismatch"

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"this upload is at offset {expected}, the chunk starts at {got}; resume from {expected}",
                         headers={"Upload-Offset": str(expected)}, offset=expected)


def part_path(upload: UploadSession) -> Path:
    """Where the upload's (encrypted) bytes collect; private to the API's data directory."""
    return get_settings().data_dir / "uploads" / upload.partner_id / f"{upload.id}.part"


def spool_of(upload: UploadSession) -> UploadSpool:
    """The upload's encrypted spool file."""
    return UploadSpool(part_path(upload), upload_id=upload.id, partner_id=upload.partner_id,
                       keys=artifact_store().key_manager)


def current_offset(upload: UploadSession) -> int:
    """How many bytes the server holds for this upload."""
    return spool_of(upload).offset()


def create_upload(session: Session, partner: Partner, *, model_slug: str, size: int | None = None) -> UploadSession:
    """Open an upload session for the model's next version."""
    model = service.get_model(session, partner, model_slug)
    if size is not None and size <= 0:
        raise InvalidInput("size must be positive")
    if size is not None and size > MAX_UPLOAD_BYTES:
        raise PayloadTooLarge(f"packages are limited to {MAX_UPLOAD_BYTES} bytes")
    now = utcnow()
    upload = UploadSession(partner_id=partner.id, model_id=model.id, size=size, created_at=now,
                           updated_at=now, expires_at=now + UPLOAD_TTL)
    session.add(upload)
    session.flush()
    spool_of(upload).create()
    return upload


def get_upload(session: Session, partner: Partner, upload_id: str, *, lock: bool = False) -> UploadSession:
    """One of the partner's uploads; another partner's is not found."""
    upload = repo.partner_upload(session, partner.id, upload_id, lock=lock)
    if upload is None:
        raise NotFound(f"no upload {upload_id!r}")
    return upload


@dataclass(frozen=True)
class ChunkRange:
    """Where a chunk claims to start, and optionally its length and the upload's total."""

    start: int
    length: int | None = None
    total: int | None = None


def parse_chunk_headers(upload_offset: str | None, content_range: str | None) -> ChunkRange:
    """Read `Upload-Offset` or `Content-Range`; one of them is required."""
    if content_range:
        m = _RANGE.match(content_range.strip())
        if not m:
            raise InvalidInput("Content-Range must look like 'bytes START-END/TOTAL' (or TOTAL '*')")
        start, end = int(m[1]), int(m[2])
        if end < start:
            raise InvalidInput("Content-Range ends before it starts")
        total = None if m[3] == "*" else int(m[3])
        if total is not None and end >= total:
            raise InvalidInput("Content-Range goes past the total size")
        if upload_offset is not None and int(upload_offset) != start:
            raise InvalidInput("Upload-Offset and Content-Range disagree")
        return ChunkRange(start, end - start + 1, total)
    if upload_offset is None or not upload_offset.strip().isdigit():
        raise InvalidInput("send Upload-Offset: <bytes already uploaded> (or a Content-Range) with each chunk")
    return ChunkRange(int(upload_offset))


@contextlib.contextmanager
def _locked_part(upload: UploadSession) -> Iterator[SpoolAppender]:
    try:
        with spool_of(upload).locked() as spool:
            yield spool
    except SpoolGone as exc:
        raise Conflict(f"upload {upload.id} is {upload.status}; start a new one") from exc
    except SpoolBusy as exc:
        raise Conflict("another chunk of this upload is being written; retry when it is done",
                       headers={"Retry-After": "1"}) from exc


def _check_open(upload: UploadSession) -> None:
    if upload.status != "open":
        raise Conflict(f"upload {upload.id} is {upload.status}")
    if upload.expires_at < utcnow():
        raise Conflict(f"upload {upload.id} expired; start a new one")


async def append_chunk(upload: UploadSession, chunk: ChunkRange, body: AsyncIterator[bytes]) -> int:
    """Append a chunk's bytes at the upload's offset; returns the new offset.

    A chunk cut short (the connection dropped) keeps the bytes that arrived; one that would
    pass the declared size is undone whole.
    """
    _check_open(upload)
    if chunk.total is not None:
        if upload.size is None:
            if chunk.total > MAX_UPLOAD_BYTES:
                raise PayloadTooLarge(f"packages are limited to {MAX_UPLOAD_BYTES} bytes")
            upload.size = chunk.total
        elif upload.size != chunk.total:
            raise InvalidInput(f"this upload was declared as {upload.size} bytes, the chunk says {chunk.total}")
    limit = upload.size if upload.size is not None else MAX_UPLOAD_BYTES
    with _locked_part(upload) as spool:
        start = spool.offset
        if chunk.start != start:
            raise OffsetMismatch(start, chunk.start)
        mark = spool.mark()
        written = 0
        try:
            async for data in body:
                if chunk.length is not None and written + len(data) > chunk.length:
                    spool.rollback(mark)
                    raise InvalidInput("the chunk is longer than its Content-Range says")
                if start + written + len(data) > limit:
                    spool.rollback(mark)
                    raise PayloadTooLarge(f"the upload would pass its size of {limit} bytes")
                spool.write(data)
                written += len(data)
        finally:
            spool.flush()  # a chunk cut off keeps what arrived
        offset = spool.offset
    upload.received = offset
    upload.updated_at = utcnow()
    return offset


def complete_upload(session: Session, partner: Partner, upload_id: str, *, sha256: str) -> ModelVersion:
    """Check the digest, validate the package and store it as the model's next version.

    Completing twice returns the same version. A rejected package is recorded on the upload
    (its reason visible to the partner) and its bytes are deleted; nothing is stored.
    """
    sha256 = sha256.strip().lower()
    if not _SHA256.match(sha256):
        raise InvalidInput("sha256 must be 64 hex digits (optionally prefixed 'sha256:')")
    sha256 = sha256.removeprefix("sha256:")
    upload = get_upload(session, partner, upload_id, lock=True)
    if upload.status == "completed" and upload.version_id:
        version = repo.version(session, upload.version_id)
        assert version is not None
        if version.artifact_digest != f"sha256:{sha256}":
            raise Conflict("this upload was completed with a different digest")
        return version
    _check_open(upload)
    with _locked_part(upload) as spool:
        size = spool.offset
        if size == 0:
            raise InvalidInput("nothing has been uploaded yet")
        if upload.size is not None and size != upload.size:
            raise InvalidInput(f"only {size} of {upload.size} bytes have arrived; send the rest first",
                               offset=size)
        try:
            version = service.create_version_from_stream(session, partner, upload.model, spool.reader(),
                                                         expected_digest=sha256)
        except ArchiveDigestMismatch as exc:
            _finish(upload, "failed", str(exc))
            raise UploadFailed(upload.error or "", digest=exc.actual) from None
        except PackageRejected as exc:
            _finish(upload, "rejected", str(exc))
            raise
    upload.version_id = version.id
    _finish(upload, "completed", None)
    return version


class UploadFailed(AppError):
    status_code, type, title = 422, "upload-digest-mismatch", "Upload digest mismatch"


def _finish(upload: UploadSession, status: str, error: str | None) -> None:
    upload.status, upload.error, upload.updated_at = status, error, utcnow()
    spool = spool_of(upload)
    upload.received = spool.offset()
    spool.delete()


def abort_upload(session: Session, partner: Partner, upload_id: str) -> UploadSession:
    """Give up an upload and delete its bytes."""
    upload = get_upload(session, partner, upload_id, lock=True)
    if upload.status == "open":
        _finish(upload, "aborted", None)
        session.flush()
    return upload


def purge_expired(session: Session, now: dt.datetime | None = None) -> int:
    """Delete the bytes of uploads left open past their expiry (for a periodic task)."""
    expired = repo.expired_uploads(session, now or utcnow())
    for upload in expired:
        _finish(upload, "expired", None)
    session.flush()
    return len(expired)
