"""Streaming building blocks for reading untrusted tar and gzip data with flat memory.

Everything here reads forward only, in bounded chunks, and turns every way the standard
library can fail on hostile input into a PackageRejected naming the entry at fault.
"""

from __future__ import annotations

import functools
import hashlib
import queue
import stat
import struct
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from partners.packaging.rules import PackageLimits, PackageRejected

CHUNK = 1 << 20
HEAD = 512
ARCHIVE = "(archive)"  # the entry named when the archive as a whole is at fault
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"

# What the standard library raises on corrupt tar or gzip input (besides its own errors).
READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, UnicodeError, ValueError, OverflowError,
               struct.error, IndexError, KeyError)


class Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def malformed(message: str, entry: str | None = None, layer: str | None = None) -> PackageRejected:
    """The rejection for input the tar or gzip reader cannot make sense of."""
    return PackageRejected(message, entry=entry, layer=layer, reason="malformed-archive")


class ChunkSource:
    """A `read(n)` view of an iterator of byte chunks (an upload body)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buf += bytes(chunk)
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out


class Prefixed:
    """A reader that yields `head` (bytes already read to sniff the format) before the rest."""

    def __init__(self, head: bytes, src: Reader) -> None:
        self._head = head
        self._src = src

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n < 0:
                out, self._head = self._head + self._src.read(), b""
                return out
            out, self._head = self._head[:n], self._head[n:]
            return out
        return self._src.read(n)


class Counting:
    """Counts and hashes what passes through; optionally copies it to `tee` and caps it."""

    def __init__(self, src: Reader, *, hashers: Iterable[Any] = (),
                 tee: Callable[[bytes], object] | None = None,
                 limit: int | None = None, on_limit: Callable[[], PackageRejected] | None = None,
                 wrap_errors: tuple[str | None, str | None] | None = None) -> None:
        self._src = src
        self.hashers = list(hashers)
        self.tee = tee
        self._limit = limit
        self._on_limit = on_limit
        self._wrap = wrap_errors
        self.count = 0
        self.eof = False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = CHUNK
        if self._wrap is not None:
            try:
                data = self._src.read(n)
            except READ_ERRORS as exc:
                raise malformed(f"unreadable data: {exc}", *self._wrap) from exc
        else:
            data = self._src.read(n)
        if not data:
            self.eof = True
            return b""
        if not isinstance(data, bytes):  # hashed later, maybe on another thread
            data = bytes(data)
        self.count += len(data)
        if self._limit is not None and self.count > self._limit:
            assert self._on_limit is not None
            raise self._on_limit()
        for h in self.hashers:
            h.update(data)
        if self.tee is not None:
            self.tee(data)
        return data

    def drain(self) -> None:
        """Read to the end, so that the count and hashes cover everything."""
        while self.read(CHUNK):
            pass


class Inflater:
    """Gzip decompression in bounded steps, checking the compression ratio as it goes.

    Concatenated gzip members (pigz) are followed; zero padding after the last member is
    allowed, anything else after it is not.
    """

    def __init__(self, src: Counting, limits: PackageLimits, *, entry: str | None,
                 layer: str | None = None) -> None:
        self._src = src
        self._limits = limits
        self._entry = entry
        self._layer = layer
        self._d: Any = None
        self._pending = b""
        self._done = False
        self.produced = 0

    def _fail(self, message: str) -> PackageRejected:
        return malformed(message, self._entry, self._layer)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = CHUNK
        out: list[bytes] = []
        have = 0
        while have < n and not self._done:
            if not self._pending:
                self._pending = self._src.read(CHUNK)
                if not self._pending:
                    if self._d is not None:
                        raise self._fail("the gzip stream is truncated")
                    self._done = True
                    break
            if self._d is None:
                if not any(self._pending):
                    self._pending = b""
                    continue
                if len(self._pending) < 2:
                    more = self._src.read(CHUNK)
                    if not more:
                        raise self._fail("data after the end of the gzip stream")
                    self._pending += more
                if not self._pending.startswith(GZIP_MAGIC):
                    raise self._fail("data after the end of the gzip stream")
                self._d = zlib.decompressobj(31)
            try:
                piece = self._d.decompress(self._pending, n - have)
            except zlib.error as exc:
                raise self._fail(f"corrupt gzip data: {exc}") from exc
            if self._d.eof:
                self._pending = self._d.unused_data
                self._d = None
            else:
                self._pending = self._d.unconsumed_tail
            if piece:
                out.append(piece)
                have += len(piece)
                self.produced += len(piece)
                self._check_ratio()
        return b"".join(out)

    def _check_ratio(self) -> None:
        limits = self._limits
        if self.produced > limits.ratio_slack_bytes and \
                self.produced > limits.max_ratio * max(self._src.count, 1):
            raise PackageRejected(
                f"decompresses more than {limits.max_ratio}:1 "
                f"({self.produced} bytes from {self._src.count})",
                entry=self._entry, layer=self._layer, reason="compression-bomb")


def sniff(head: bytes) -> str:
    """What a blob looks like from its first bytes: gzip, zstd, tar, json or other."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if is_tar_head(head):
        return "tar"
    if head.lstrip()[:1] in (b"{", b"["):
        return "json"
    return "other"


def is_tar_head(head: bytes) -> bool:
    """A ustar/GNU header, or the zero blocks of an empty archive."""
    return len(head) >= HEAD and (head[257:262] == b"ustar" or not any(head[:HEAD]))


@functools.lru_cache(maxsize=8)
def _tarinfo_class(max_header: int) -> type[tarfile.TarInfo]:
    class GuardedTarInfo(tarfile.TarInfo):
        # tarfile reads a whole pax or GNU long-name header into memory, and follows sparse
        # maps of any length: both are checked here before it does.
        def _proc_member(self, tf: Any) -> Any:
            if self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                             tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE) and self.size > max_header:
                raise PackageRejected(
                    f"an extended header of {self.size} bytes (limit {max_header})",
                    entry=self.name or None, reason="header-too-large")
            if self.type == tarfile.GNUTYPE_SPARSE:
                raise PackageRejected("sparse files are not supported", entry=self.name or None,
                                      reason="special-file")
            return super()._proc_member(tf)

        def _proc_gnusparse_10(self, next: Any, pax_headers: Any, tf: Any) -> Any:
            raise PackageRejected("sparse files are not supported",
                                  entry=pax_headers.get("GNU.sparse.name"), reason="special-file")

    return GuardedTarInfo


class _ForwardSeeker:
    """Lets tarfile's seekable mode run over a forward-only stream.

    tarfile only ever seeks forward, or back by one byte to probe for the end of the data
    (`next()`), so the last block read is kept to replay. Reading member data straight
    from here avoids the copies of tarfile's stream mode.
    """

    def __init__(self, src: Reader) -> None:
        self._src = src
        self._pos = 0
        self._hist = b""
        self._replay = b""

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0:
            raise tarfile.ReadError("only absolute seeks are supported")
        if pos < self._pos:
            back = self._pos - pos
            if back > len(self._hist):
                raise tarfile.ReadError("seeking backwards is not supported")
            self._replay = self._hist[len(self._hist) - back:] + self._replay
            self._hist = self._hist[:len(self._hist) - back]
            self._pos = pos
        while self._pos < pos:
            if not self.read(min(pos - self._pos, CHUNK)):
                break
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = CHUNK
        # tarfile takes a short read of a header for the end of the archive, so keep
        # reading: upload bodies and pipes hand out whatever pieces they have.
        parts, have = [], 0
        if self._replay:
            parts.append(self._replay[:n])
            self._replay = self._replay[n:]
            have = len(parts[0])
        while have < n:
            piece = self._src.read(n - have)
            if not piece:
                break
            parts.append(piece)
            have += len(piece)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self._pos += len(data)
        self._hist = (self._hist + data[-HEAD:])[-HEAD:]
        return data


class _MemberData:
    """One member's data, read straight from the stream; truncation is a rejection."""

    def __init__(self, seeker: _ForwardSeeker, member: tarfile.TarInfo, layer: str | None) -> None:
        self._seeker = seeker
        self._start = member.offset_data
        self._left = member.size
        self._name = member.name
        self._layer = layer
        self._started = False

    def read(self, n: int = -1) -> bytes:
        if not self._started:
            self._started = True
            if self._seeker.seek(self._start) != self._start:
                raise malformed("the archive ends inside this entry", self._name, self._layer)
        if self._left <= 0:
            return b""
        data = self._seeker.read(min(self._left, CHUNK if n is None or n < 0 else n))
        if not data:
            raise malformed("the archive ends inside this entry", self._name, self._layer)
        self._left -= len(data)
        return data


class TarStream:
    """A forward-only tar reader that rejects oversized headers and sparse files."""

    def __init__(self, src: Reader, limits: PackageLimits, *, layer: str | None) -> None:
        self._seeker = _ForwardSeeker(src)
        self._layer = layer
        try:
            self._tf = tarfile.open(fileobj=self._seeker, mode="r:",  # type: ignore[call-overload]
                                    tarinfo=_tarinfo_class(limits.max_header_bytes))
        except READ_ERRORS as exc:
            raise malformed(f"not a tar archive: {exc}", layer or ARCHIVE, layer) from exc

    def __iter__(self) -> Iterator[tarfile.TarInfo]:
        """The members, without tarfile keeping every one in memory."""
        while True:
            try:
                member = self._tf.next()
            except READ_ERRORS as exc:
                raise malformed(f"corrupt tar data: {exc}", self._layer or ARCHIVE, self._layer) from exc
            self._tf.members.clear()
            if member is None:
                return
            yield member

    def data(self, member: tarfile.TarInfo) -> Reader:
        """A reader of the member's data; read it before moving to the next member."""
        return _MemberData(self._seeker, member, self._layer)


def normalize(name: str, limits: PackageLimits, *, layer: str | None, what: str = "entry") -> str:
    """The entry's path relative to the root, or a rejection for names that leave it."""
    if not name or "\x00" in name:
        raise PackageRejected(f"{what} with an empty or NUL-containing name", entry=name,
                              layer=layer, reason="bad-name")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PackageRejected(f"{what} name is not UTF-8", entry=name.encode("utf-8", "replace")
                              .decode(), layer=layer, reason="bad-name") from exc
    if name.startswith("/"):
        raise PackageRejected(f"{what} has an absolute path", entry=name, layer=layer,
                              reason="absolute-path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PackageRejected(f"{what} path escapes the root", entry=name, layer=layer,
                              reason="path-traversal")
    if len(encoded) > limits.max_path_bytes or len(parts) > limits.max_depth or \
            any(len(p.encode()) > 255 for p in parts):
        raise PackageRejected(f"{what} name is too long or too deep", entry=name, layer=layer,
                              reason="bad-name")
    return "/".join(parts)


@dataclass(slots=True)
class Entry:
    """One tar member, checked: what it is and where it lands."""

    path: str            # normalized; for whiteouts the path they delete, for opaque the dir
    name: str            # as written in the archive, for messages
    kind: str            # file, dir, symlink, hardlink, whiteout, opaque
    mode: int            # permission bits
    size: int = 0
    digest: str | None = None
    target: str | None = None  # symlink: as written; hardlink: the linked file's path
    offset: int = 0      # where the data starts in the (uncompressed) tar stream


_KINDS = {
    tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.CONTTYPE: "file",
    tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink",
}


def classify(member: tarfile.TarInfo, path: str, limits: PackageLimits, *,
             layer: str | None) -> Entry:
    """Check one member's type and mode bits and turn it into an Entry."""
    name = member.name
    if member.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        raise PackageRejected("device files are not allowed", entry=name, layer=layer,
                              reason="device-file")
    if member.type == tarfile.FIFOTYPE:
        raise PackageRejected("named pipes are not allowed", entry=name, layer=layer, reason="fifo")
    kind = _KINDS.get(member.type)
    if kind is None:
        raise PackageRejected(f"unsupported entry type {member.type!r}", entry=name, layer=layer,
                              reason="special-file")
    mode = member.mode & 0o7777
    for bit, reason in ((stat.S_ISUID, "setuid"), (stat.S_ISGID, "setgid"),
                        (stat.S_ISVTX, "sticky-bit")):
        if mode & bit:
            raise PackageRejected(f"{reason} mode bits are not allowed", entry=name, layer=layer,
                                  reason=reason)
    entry = Entry(path=path, name=name, kind=kind, mode=mode & 0o777,
                  size=member.size if kind == "file" else 0, offset=member.offset_data)
    base = path.rpartition("/")[2]
    if base.startswith(WHITEOUT):
        parent = path.rpartition("/")[0]
        if base == OPAQUE:
            entry.kind, entry.path = "opaque", parent
        elif base.startswith(WHITEOUT + WHITEOUT):
            entry.kind = "meta"  # AUFS bookkeeping (.wh..wh.plnk etc.): no effect on the tree
        else:
            hidden = base[len(WHITEOUT):]
            if hidden in ("", "."):
                raise PackageRejected("whiteout without a name", entry=name, layer=layer,
                                      reason="bad-name")
            if hidden == "..":
                raise PackageRejected("whiteout path escapes the root", entry=name, layer=layer,
                                      reason="path-traversal")
            entry.kind, entry.path = "whiteout", f"{parent}/{hidden}" if parent else hidden
    if member.type == tarfile.SYMTYPE and entry.kind == "symlink":
        target = member.linkname
        if not target or "\x00" in target or len(target.encode("utf-8", "surrogateescape")) > \
                limits.max_path_bytes:
            raise PackageRejected("symlink with an empty or invalid target", entry=name,
                                  layer=layer, reason="bad-name")
        try:
            target.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PackageRejected("symlink target is not UTF-8", entry=name, layer=layer,
                                  reason="bad-name") from exc
        entry.target = target
    return entry


def digest_of(hasher: Any) -> str:
    """An OCI digest string for a hashlib object."""
    return f"{hasher.name}:{hasher.hexdigest()}"


class ThreadedHash:
    """A hash fed on a worker thread, so that a blob's digest and its files' digests are
    computed on two cores (hashlib releases the GIL); at most a few chunks are queued."""

    def __init__(self, algorithm: str = "sha256") -> None:
        self._h = hashlib.new(algorithm)
        self.name = self._h.name
        self._q: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        self._t = threading.Thread(target=self._run, name="package-hash", daemon=True)
        self._t.start()
        self._open = True

    def _run(self) -> None:
        while (data := self._q.get()) is not None:
            self._h.update(data)

    def update(self, data: bytes) -> None:
        """Queue `data` (immutable bytes) for hashing."""
        self._q.put(data)

    def close(self) -> None:
        """Stop the worker once the queue is hashed."""
        if self._open:
            self._open = False
            self._q.put(None)
            self._t.join()

    def hexdigest(self) -> str:
        """The digest of everything queued."""
        self.close()
        return self._h.hexdigest()


def new_hasher(algorithm: str = "sha256") -> Any:
    """A hashlib object for an OCI digest algorithm."""
    return hashlib.new(algorithm)
