"""One blob streaming into the encrypted store while something else reads it (the validator).

Plaintext is pushed in with `write()`, sealed chunk by chunk (`ChunkSealer`) and handed to
the storage backend as it goes: a blob bigger than one chunk streams through a background
thread into `Storage.put_stream`, so the disk write overlaps the caller's work; a smaller one
is written in one call at `commit()`. The plaintext digest is the caller's to compute (it
hashes the bytes anyway): `commit(digest, size)` names the blob, and if the partner already
holds that digest the new ciphertext is deleted. `discard()` removes whatever this upload
stored, row included, even after `commit()`.
"""

from __future__ import annotations

import io
import os
import queue
import threading
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError, PendingRollbackError
from sqlalchemy.orm import Session

from kit.ids import new_id
from partners.tenancy import repository
from partners.tenancy.crypto import ChunkSealer, derive_blob_key, encode_header
from partners.tenancy.models import ArtifactBlob, PartnerDataKey

if TYPE_CHECKING:
    from kit.storage import Storage

_QUEUE_DEPTH = 4  # sealed chunks in flight to the storage thread


class _Aborted(Exception):
    """Raised inside the storage thread's read so the backend drops its partial object."""


class _CiphertextPipe(io.RawIOBase):
    """A readable stream fed from another thread: `Storage.put_stream` runs on its own thread."""

    def __init__(self, storage: Storage, key: str) -> None:
        super().__init__()
        self._queue: queue.Queue[bytes | None | type[_Aborted]] = queue.Queue(_QUEUE_DEPTH)
        self._piece = memoryview(b"")
        self._eof = False
        self.error: BaseException | None = None
        self.result: tuple[int, str] | None = None
        self._thread = threading.Thread(target=self._run, args=(storage, key), daemon=True,
                                        name="artifact-write")
        self._thread.start()

    def _run(self, storage: Storage, key: str) -> None:
        try:
            self.result = storage.put_stream(key, self)  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - handed to the writing thread
            self.error = exc
            while self._queue.get() is not None:  # let the writer finish without blocking
                pass

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while not self._piece:
            if self._eof:
                return b""
            item = self._queue.get()
            if item is _Aborted:
                raise _Aborted("the blob was discarded")
            if item is None:
                self._eof = True
                return b""
            self._piece = memoryview(item)  # type: ignore[arg-type]
        n = len(self._piece) if size is None or size < 0 else min(size, len(self._piece))
        out = bytes(self._piece[:n])
        self._piece = self._piece[n:]
        return out

    def put(self, piece: bytes) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put(piece)

    def close_and_wait(self) -> tuple[int, str]:
        """Signal the end and wait for the backend; returns its (size, sha256)."""
        self._queue.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def abort(self) -> None:
        """Stop the backend mid-object (it removes its partial write)."""
        if self._thread.is_alive():
            self._queue.put(_Aborted)
            self._queue.put(None)
            self._thread.join()


class BlobUpload:
    """A blob of one partner being encrypted into storage as its plaintext streams past."""

    def __init__(self, session: Session, storage: Storage, partner_id: str, *, key_row: PartnerDataKey,
                 data_key: bytes, chunk_size: int, prefix: str) -> None:
        self.session = session
        self.storage = storage
        self.partner_id = partner_id
        self.key_row = key_row
        self.chunk_size = chunk_size
        salt = os.urandom(16)
        self._sealer = ChunkSealer(blob_key=derive_blob_key(data_key, salt, partner_id),
                                   header=encode_header(chunk_size, salt, key_row.id),
                                   chunk_size=chunk_size)
        self.blob_id = new_id("art")
        self.storage_key = f"{prefix}/{partner_id}/{self.blob_id[-2:]}/{self.blob_id}"
        self._held: list[bytes] = []  # ciphertext of a blob still smaller than one chunk
        self._pipe: _CiphertextPipe | None = None
        self.digest: str | None = None
        self.row: ArtifactBlob | None = None  # set when this upload created the blob's row
        self.state = "open"

    def write(self, data: bytes, /) -> None:
        """Encrypt more plaintext; full chunks go to storage as they are sealed."""
        if self.state != "open":
            raise RuntimeError(f"blob upload is {self.state}")
        self._send(self._sealer.feed(data))

    def _send(self, pieces: list[bytes]) -> None:
        if not pieces:
            return
        if self._pipe is None:
            self._held.extend(pieces)
            if len(self._held) == 1:  # only the header: wait until the blob outgrows a chunk
                return
            self._pipe = _CiphertextPipe(self.storage, self.storage_key)
            pieces, self._held = self._held, []
        for piece in pieces:
            self._pipe.put(piece)

    def commit(self, digest: str, size: int, /) -> None:
        """The plaintext ended with this digest: finish the object and index it (or drop it)."""
        if self.state != "open":
            raise RuntimeError(f"blob upload is {self.state}")
        if size != self._sealer.size:
            self.discard()
            raise ValueError(f"blob of {self._sealer.size} bytes committed as {size}")
        self.state = "committing"
        try:
            final = self._sealer.finish()
            if self._pipe is not None:
                for piece in final:
                    self._pipe.put(piece)
                ciphertext_size, ciphertext_sha256 = self._pipe.close_and_wait()
            else:
                ciphertext = b"".join(self._held + final)
                self._held = []
                ciphertext_size, ciphertext_sha256 = self.storage.put_stream(
                    self.storage_key, io.BytesIO(ciphertext))  # type: ignore[arg-type]
            self.digest = digest
            self._index(size, ciphertext_size, ciphertext_sha256)
        except BaseException:
            self.discard()
            raise
        self.state = "committed"

    def _index(self, size: int, ciphertext_size: int, ciphertext_sha256: str) -> None:
        assert self.digest is not None
        # Shared-locked, so an orphan sweep cannot delete the blob this package will name.
        if repository.blob(self.session, self.partner_id, self.digest, lock=True) is not None:
            self.storage.delete(self.storage_key)
            return
        row = ArtifactBlob(
            id=self.blob_id, partner_id=self.partner_id, digest=self.digest, size=size,
            storage_key=self.storage_key, ciphertext_size=ciphertext_size,
            ciphertext_sha256=ciphertext_sha256, data_key_id=self.key_row.id,
            chunk_size=self.chunk_size,
        )
        try:
            with self.session.begin_nested():
                self.session.add(row)
        except IntegrityError:
            # The same content landed concurrently; keep theirs.
            self.storage.delete(self.storage_key)
            return
        self.row = row

    def discard(self) -> None:
        """Remove what this upload stored (object and, if it made one, the row); idempotent."""
        if self.state == "discarded":
            return
        self.state = "discarded"
        self._held = []
        if self._pipe is not None:
            self._pipe.abort()
        self.storage.delete(self.storage_key)
        if self.row is not None:
            row, self.row = self.row, None
            try:
                self.session.delete(row)
                self.session.flush()
            except PendingRollbackError:
                pass  # the transaction failed already: the row goes with its rollback

    @property
    def kept(self) -> bool:
        """True when this upload's own ciphertext is the stored copy of its digest."""
        return self.state == "committed" and self.row is not None
