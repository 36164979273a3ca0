"""Streaming authenticated encryption for artifacts: AES-256-GCM in fixed-size chunks.

Layout of one encrypted blob:

    header  = MAGIC(4) | version(1) | chunk_size(u32) | salt(16) | len(key_id)(u8) | key_id
    chunks  = ciphertext_0 | ciphertext_1 | ... | ciphertext_n      (each plaintext + 16-byte tag)

Every chunk but the last holds exactly `chunk_size` plaintext bytes. Each blob gets its own
AES key, derived with HKDF from the partner's data key, a random salt and the partner id, so
per-chunk nonces can be the chunk counter without any risk of reuse across blobs. The AAD of
chunk i is `header | i | final-flag`: reordering chunks, dropping the tail (the new last chunk
was sealed with final=0), appending after the final chunk, splicing chunks from another blob
(different salt, so a different key) or editing the header all fail authentication.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kit.errors import AppError

MAGIC = b"MGA\x00"
VERSION = 1
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
TAG_SIZE = 16
SALT_SIZE = 16
_FIXED = struct.Struct(">4sBI16sB")
_CHUNK_AAD = struct.Struct(">QB")
_NONCE = struct.Struct(">QI")
MAX_CHUNK_SIZE = 64 * 1024 * 1024


class ArtifactIntegrityError(AppError):
    """Stored ciphertext failed authentication: tampered, truncated, reordered or mis-keyed."""

    status_code, type, title = 500, "artifact-integrity", "Artifact integrity check failed"


def derive_blob_key(data_key: bytes, salt: bytes, partner_id: str) -> bytes:
    """The AES-256 key of one blob: HKDF-SHA256(data key, salt, partner id)."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=salt,
        info=b"mediagate artifact v1|" + partner_id.encode(),
    ).derive(data_key)


def encode_header(chunk_size: int, salt: bytes, key_id: str) -> bytes:
    """The blob header; it is authenticated as part of every chunk's AAD."""
    kid = key_id.encode()
    if len(kid) > 255:
        raise ValueError("key id too long")
    return _FIXED.pack(MAGIC, VERSION, chunk_size, salt, len(kid)) + kid


def read_header(stream: BinaryIO) -> tuple[bytes, int, bytes, str]:
    """Parse a header from `stream`: (raw header bytes, chunk size, salt, data key id)."""
    fixed = _read_exact(stream, _FIXED.size)
    if len(fixed) < _FIXED.size:
        raise ArtifactIntegrityError("artifact is shorter than its header")
    magic, version, chunk_size, salt, kid_len = _FIXED.unpack(fixed)
    if magic != MAGIC or version != VERSION:
        raise ArtifactIntegrityError("artifact header is not a mediagate artifact (bad magic)")
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise ArtifactIntegrityError(f"artifact header names an invalid chunk size {chunk_size}")
    kid = _read_exact(stream, kid_len)
    if len(kid) < kid_len:
        raise ArtifactIntegrityError("artifact header is truncated")
    try:
        key_id = kid.decode()
    except UnicodeDecodeError as exc:
        raise ArtifactIntegrityError("artifact header has a malformed key id") from exc
    return fixed + kid, chunk_size, salt, key_id


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    """Read up to `n` bytes, looping over short reads; fewer only at end of stream."""
    first = stream.read(n)
    if not first or len(first) == n:
        return first or b""
    parts = [first]
    got = len(first)
    while got < n:
        more = stream.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class _Source:
    """Plaintext input as fixed-size reads, from a binary stream or an iterable of bytes."""

    def __init__(self, source: BinaryIO | Iterable[bytes]) -> None:
        if hasattr(source, "read"):
            self._stream: BinaryIO | None = source  # type: ignore[assignment]
            self._iter: Iterator[bytes] | None = None
        else:
            self._stream = None
            self._iter = iter(source)  # type: ignore[arg-type]
        self._pending = b""

    def read(self, n: int) -> bytes:
        if self._stream is not None:
            return _read_exact(self._stream, n)
        assert self._iter is not None
        parts = [self._pending] if self._pending else []
        got = len(self._pending)
        self._pending = b""
        while got < n:
            piece = next(self._iter, None)
            if piece is None:
                break
            parts.append(bytes(piece))
            got += len(piece)
        data = b"".join(parts)
        if len(data) > n:
            data, self._pending = data[:n], data[n:]
        return data


class EncryptingReader(io.RawIOBase):
    """A readable stream of ciphertext for a plaintext source, hashing the plaintext as it goes.

    Hand it to any `Storage.put_stream`; once it is exhausted, `digest` and `size` describe
    the plaintext. `max_size` stops a stream that grows past a limit (raises `too_large`).
    """

    def __init__(
        self,
        source: BinaryIO | Iterable[bytes],
        *,
        blob_key: bytes,
        header: bytes,
        chunk_size: int,
        max_size: int | None = None,
        too_large: type[Exception] = ValueError,
    ) -> None:
        super().__init__()
        self._source = _Source(source)
        self._aead = AESGCM(blob_key)
        self._header = header
        self._chunk_size = chunk_size
        self._max_size = max_size
        self._too_large = too_large
        self._hash = hashlib.sha256()
        # Hashing the plaintext runs beside the encryption (both release the GIL), one chunk
        # behind it, so at most two chunks are held at any time.
        self._hasher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="artifact-hash")
        self._hashing: concurrent.futures.Future[None] | None = None
        self.size = 0
        self._index = 0
        self._out = memoryview(header)
        self._pos = 0
        self._next: bytes | None = None
        self._done = False

    def readable(self) -> bool:
        return True

    @property
    def digest(self) -> str:
        """`sha256:<hex>` of the plaintext read so far (all of it, once exhausted)."""
        self._settle()
        return "sha256:" + self._hash.hexdigest()

    def _settle(self) -> None:
        if self._hashing is not None:
            self._hashing.result()
            self._hashing = None

    def close(self) -> None:
        self._settle()
        self._hasher.shutdown(wait=True)
        super().close()

    def _pull(self) -> bytes:
        data = self._source.read(self._chunk_size)
        if data:
            self._settle()
            self._hashing = self._hasher.submit(self._hash.update, data)
            self.size += len(data)
            if self._max_size is not None and self.size > self._max_size:
                raise self._too_large(f"artifact exceeds the {self._max_size}-byte limit")
        return data

    def _seal_next(self) -> bool:
        """Encrypt the next chunk into the output buffer; False once the final chunk is out."""
        if self._done:
            return False
        current = self._pull() if self._next is None else self._next
        # Look one chunk ahead: a chunk is final when nothing follows it, even a full one.
        following = self._pull() if len(current) == self._chunk_size else b""
        final = not following
        aad = self._header + _CHUNK_AAD.pack(self._index, final)
        self._out = memoryview(self._aead.encrypt(_NONCE.pack(self._index, final), current, aad))
        self._pos = 0
        self._index += 1
        self._next = following
        self._done = final
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        while self._pos >= len(self._out):
            if not self._seal_next():
                return b""
        end = min(self._pos + size, len(self._out))
        piece = bytes(self._out[self._pos:end])
        self._pos = end
        return piece

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        parts = []
        while piece := self.read(1 << 20):
            parts.append(piece)
        return b"".join(parts)


class ChunkSealer:
    """The same ciphertext as `EncryptingReader`, for plaintext that is pushed rather than pulled.

    `feed()` returns the ciphertext that is final already (the header, then every chunk that
    more plaintext has followed); `finish()` seals the last chunk. A full chunk waits until
    the next byte or `finish()`, because its AAD says whether it is the last one.
    """

    def __init__(self, *, blob_key: bytes, header: bytes, chunk_size: int) -> None:
        self._aead = AESGCM(blob_key)
        self._header = header
        self._chunk_size = chunk_size
        self._buffer = bytearray()
        self._index = 0
        self._started = False
        self.size = 0

    def _seal(self, data: bytes | bytearray, final: bool) -> bytes:
        aad = self._header + _CHUNK_AAD.pack(self._index, final)
        sealed = self._aead.encrypt(_NONCE.pack(self._index, final), data, aad)
        self._index += 1
        return sealed

    def _head(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        return [self._header]

    def feed(self, data: bytes) -> list[bytes]:
        """Take more plaintext; returns the ciphertext pieces now ready to be written."""
        out = self._head()
        self.size += len(data)
        chunk = self._chunk_size
        if not self._buffer and len(data) <= chunk:
            self._buffer += data
            return out
        self._buffer += data
        while len(self._buffer) > chunk:
            with memoryview(self._buffer) as view, view[:chunk] as piece:
                out.append(self._seal(piece, False))
            del self._buffer[:chunk]
        return out

    def finish(self) -> list[bytes]:
        """Seal the last chunk (empty for an empty blob); returns the remaining ciphertext."""
        out = self._head()
        out.append(self._seal(self._buffer, True))
        self._buffer = bytearray()
        return out


def decrypt_chunks(
    stream: BinaryIO, *, data_key_for: object, partner_id: str
) -> Iterator[bytes]:
    """Yield plaintext chunks of an encrypted blob, each authenticated before it is yielded.

    `data_key_for(key_id)` returns the data key named in the header. The stream ends with an
    `ArtifactIntegrityError` when anything is wrong, including a missing tail, so a consumer
    must treat everything it received as void if iteration raises.
    """
    header, chunk_size, salt, key_id = read_header(stream)
    data_key = data_key_for(key_id)  # type: ignore[operator]
    aead = AESGCM(derive_blob_key(data_key, salt, partner_id))
    record = chunk_size + TAG_SIZE
    current = _read_exact(stream, record)
    if not current:
        raise ArtifactIntegrityError("artifact has no chunks (truncated)")
    index = 0
    while True:
        following = _read_exact(stream, record) if len(current) == record else b""
        final = not following
        try:
            plain = aead.decrypt(
                _NONCE.pack(index, final), current, header + _CHUNK_AAD.pack(index, final)
            )
        except InvalidTag:
            raise ArtifactIntegrityError(
                f"artifact chunk {index} failed authentication (tampered, truncated, "
                "reordered or encrypted under another key)"
            ) from None
        yield plain
        if final:
            return
        current = following
        index += 1
