"""The bytes of a resumable upload, kept encrypted on disk until the upload completes.

A chunked upload has to outlive its connections, so its bytes wait in a file; they are
encrypted before they reach it. Each upload session gets a fresh random key, which exists
on disk only wrapped by the key manager (the KMS) in the file's header and dies with the
file. The file is a header and a sequence of frames, each sealed with AES-256-GCM:

    header = MAGIC(4) | len(wrapped key)(u16) | wrapped key
    frame  = plaintext length(u32) | nonce(12) | ciphertext (plaintext + 16-byte tag)

A frame's AAD is `MAGIC | upload id | frame index | length`, so frames cannot be reordered,
moved to another upload or have their length edited. The offset a client resumes from is
the plaintext length of the whole frames; a frame torn by a crash is cut off under the lock
before the next append. Completing the upload reads the frames back as one plaintext
stream (`SpoolReader`), which goes straight into the validator and the artifact store.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from partners.tenancy.crypto import ArtifactIntegrityError
from partners.tenancy.kms import KeyManager, new_data_key

MAGIC = b"MGU\x01"
FRAME = 1 << 20  # plaintext bytes sealed per frame (a chunk's last frame may be shorter)
_WRAP_LEN = struct.Struct(">H")
_FRAME_HEAD = struct.Struct(">I12s")
_AAD_TAIL = struct.Struct(">QI")
_TAG = 16


class SpoolBusy(Exception):
    """Another writer holds the upload's lock."""


class SpoolGone(Exception):
    """The upload's file is gone: the upload ended."""


@dataclass
class SpoolState:
    """Where the whole frames end: file position, plaintext offset and frame count."""

    end: int
    offset: int
    frames: int


class UploadSpool:
    """The encrypted file of one upload session."""

    def __init__(self, path: Path, *, upload_id: str, partner_id: str, keys: KeyManager) -> None:
        self.path = path
        self.upload_id = upload_id
        self.partner_id = partner_id
        self.keys = keys

    def create(self) -> None:
        """Make the file (private to this service) with a fresh wrapped key in its header."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        wrapped = self.keys.wrap(self.partner_id, new_data_key())
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            _write_all(fd, MAGIC + _WRAP_LEN.pack(len(wrapped)) + wrapped)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _aad(self, index: int, length: int) -> bytes:
        return MAGIC + self.upload_id.encode() + _AAD_TAIL.pack(index, length)

    def _key(self, fd: int) -> tuple[AESGCM, int]:
        head = os.pread(fd, 6, 0)
        if len(head) < 6 or head[:4] != MAGIC:
            raise ArtifactIntegrityError("the upload's file is not an upload spool")
        (size,) = _WRAP_LEN.unpack(head[4:6])
        wrapped = os.pread(fd, size, 6)
        return AESGCM(self.keys.unwrap(self.partner_id, wrapped)), 6 + size

    @staticmethod
    def _scan(fd: int, start: int) -> SpoolState:
        position, offset, frames = start, 0, 0
        file_size = os.fstat(fd).st_size
        while position + _FRAME_HEAD.size <= file_size:
            (length, _) = _FRAME_HEAD.unpack(os.pread(fd, _FRAME_HEAD.size, position))
            end = position + _FRAME_HEAD.size + length + _TAG
            if length > FRAME or end > file_size:
                break  # a torn last frame
            position, offset, frames = end, offset + length, frames + 1
        return SpoolState(position, offset, frames)

    def offset(self) -> int:
        """Plaintext bytes held in whole frames (0 when the file is gone)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return 0
        try:
            size = _WRAP_LEN.unpack(os.pread(fd, 2, 4))[0] if os.fstat(fd).st_size >= 6 else 0
            return self._scan(fd, 6 + size).offset
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def locked(self) -> Iterator[SpoolAppender]:
        """The upload's file under an exclusive lock, torn tail removed: append or read it."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError as exc:
            raise SpoolGone(str(self.path)) from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise SpoolBusy(str(self.path)) from exc
            aead, start = self._key(fd)
            state = self._scan(fd, start)
            if os.fstat(fd).st_size != state.end:
                os.ftruncate(fd, state.end)
            yield SpoolAppender(self, fd, aead, start, state)
        finally:
            os.close(fd)

    def delete(self) -> None:
        """Remove the file (and with it the only copy of its key)."""
        self.path.unlink(missing_ok=True)


class SpoolAppender:
    """Appends plaintext to a locked spool as sealed frames; reads it back as a stream."""

    def __init__(self, spool: UploadSpool, fd: int, aead: AESGCM, start: int, state: SpoolState) -> None:
        self.spool = spool
        self.fd = fd
        self.aead = aead
        self.start = start
        self.state = state
        self._pending = bytearray()

    @property
    def offset(self) -> int:
        """Plaintext bytes held, including any not yet sealed."""
        return self.state.offset + len(self._pending)

    def write(self, data: bytes) -> None:
        """Append plaintext; full frames are sealed and written at once."""
        self._pending += data
        while len(self._pending) >= FRAME:
            self._seal(bytes(self._pending[:FRAME]))
            del self._pending[:FRAME]

    def _seal(self, plain: bytes) -> None:
        state = self.state
        nonce = os.urandom(12)
        sealed = self.aead.encrypt(nonce, plain, self.spool._aad(state.frames, len(plain)))
        _write_all(self.fd, _FRAME_HEAD.pack(len(plain), nonce) + sealed, state.end)
        state.end += _FRAME_HEAD.size + len(sealed)
        state.offset += len(plain)
        state.frames += 1

    def flush(self) -> None:
        """Seal what is pending (a short frame) and make it durable."""
        if self._pending:
            self._seal(bytes(self._pending))
            self._pending = bytearray()
        os.fsync(self.fd)

    def mark(self) -> SpoolState:
        """The state now, to `rollback` to (after `flush`)."""
        self.flush()
        return SpoolState(self.state.end, self.state.offset, self.state.frames)

    def rollback(self, mark: SpoolState) -> None:
        """Forget everything appended since `mark`."""
        self._pending = bytearray()
        os.ftruncate(self.fd, mark.end)
        self.state = SpoolState(mark.end, mark.offset, mark.frames)

    def reader(self) -> SpoolReader:
        """The plaintext of every whole frame, authenticated frame by frame."""
        self.flush()
        return SpoolReader(self)


class SpoolReader:
    """`read(n)` over a spool's decrypted frames (each authenticated before it is returned)."""

    def __init__(self, appender: SpoolAppender) -> None:
        self._a = appender
        self._position = appender.start
        self._index = 0
        self._buf = b""
        self._pos = 0

    def _next_frame(self) -> bytes:
        a = self._a
        if self._index >= a.state.frames:
            return b""
        head = os.pread(a.fd, _FRAME_HEAD.size, self._position)
        length, nonce = _FRAME_HEAD.unpack(head)
        sealed = os.pread(a.fd, length + _TAG, self._position + _FRAME_HEAD.size)
        try:
            plain = a.aead.decrypt(nonce, sealed, a.spool._aad(self._index, length))
        except InvalidTag:
            raise ArtifactIntegrityError(f"upload frame {self._index} failed authentication") from None
        self._position += _FRAME_HEAD.size + len(sealed)
        self._index += 1
        return plain

    def read(self, n: int = -1, /) -> bytes:
        if self._pos >= len(self._buf):
            self._buf, self._pos = self._next_frame(), 0
            if not self._buf:
                return b""
        end = len(self._buf) if n is None or n < 0 else min(len(self._buf), self._pos + n)
        out = self._buf if self._pos == 0 and end == len(self._buf) else self._buf[self._pos:end]
        self._pos = end
        return out


def _write_all(fd: int, data: bytes, position: int | None = None) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view) if position is None else os.pwrite(fd, view, position)
        if position is not None:
            position += written
        view = view[written:]
