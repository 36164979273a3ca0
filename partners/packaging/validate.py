"""Validate an uploaded model package in one streaming pass, then extract it safely.

`validate_stream(fileobj)` reads the archive once, front to back, in 1 MiB chunks: every
blob is hashed as it passes, gzip layers are inflated incrementally with the ratio checked
as they grow, and every tar entry of every layer is checked before any byte of it is kept.
Nothing is written to disk here; a `BlobSink` may take each blob as it passes (to encrypt it
into the artifact store in the same pass) and is told to drop them all if the package is
rejected. What comes back is a `ValidatedPackage`: the manifest with
its derived schemas, the layers and blobs to store, and the final file tree (after
whiteouts) with sizes, modes and digests. `ValidatedPackage.extract_to(dest)` later
writes that tree into a directory (the sandbox's private tmpfs), reading the layers again
from the archive or from any store through `open_blob`, and checking their digests.

Accepted inputs: an OCI image layout archive (what `mediagate package`, `skopeo copy …
oci-archive:`, `docker save` or `podman save` write), the older `docker save` layout with
`manifest.json`, and a plain tar or tar.gz of a model directory holding `mediagate.toml`
or `cog.yaml`. Anything else raises `PackageRejected` naming the entry at fault.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from engine.manifest import Manifest
from partners.packaging import layout as oci
from partners.packaging.model import (
    MANIFEST_FILES,
    declared_manifest,
    find_root,
    labels_of,
    manifest_dirs,
    with_schemas,
)
from partners.packaging.rules import PackageLimits, PackageRejected
from partners.packaging.tarsafe import (
    ARCHIVE,
    CHUNK,
    HEAD,
    ChunkSource,
    Counting,
    Entry,
    Inflater,
    Prefixed,
    Reader,
    TarStream,
    ThreadedHash,
    classify,
    digest_of,
    is_tar_head,
    malformed,
    new_hasher,
    normalize,
    sniff,
)
from partners.packaging.tree import Tree, within

__all__ = [
    "BlobInfo",
    "BlobSink",
    "BlobWriter",
    "FileInfo",
    "LayerInfo",
    "PackageLimits",
    "PackageRejected",
    "ValidatedPackage",
    "validate_archive",
    "validate_stream",
]

_MAX_KEPT_SOURCE = 1 << 20
_MAX_REJECTED_BLOBS = 16
_THREADED_HASH_BYTES = 32 << 20
_BUDGET_REASONS = {"too-many-files", "size-limit", "file-too-large", "compression-bomb",
                   "header-too-large"}
_ROOT_JSON = ("index.json", "oci-layout", "manifest.json", "repositories")


class BlobWriter(Protocol):
    """Receives one blob's bytes while it streams past (e.g. to encrypt and store it)."""

    def write(self, data: bytes, /) -> object: ...

    def commit(self, digest: str, size: int, /) -> None:
        """The blob ended and its digest is verified."""

    def discard(self) -> None:
        """Forget the blob, even after commit: it or its package was rejected, or unused."""


class BlobSink(Protocol):
    """Opens a writer per archive member that may be a blob (None to skip it)."""

    def open_blob(self, path: str, /) -> BlobWriter | None: ...


# digest ("sha256:…") -> a readable binary stream of that blob's bytes
BlobOpener = Callable[[str], BinaryIO]


@dataclass(frozen=True)
class FileInfo:
    """One path of the final tree (relative to the tree root, no leading slash)."""

    path: str
    kind: str            # file, dir, symlink, hardlink
    size: int
    mode: int            # permission bits only
    digest: str | None   # content digest of files and hard links
    target: str | None   # symlink target as written; hard link: the linked path, same layer
    layer: int           # index into ValidatedPackage.layers (-1: implied directory)


@dataclass(frozen=True)
class LayerInfo:
    """One layer, in application order."""

    digest: str          # of the blob as stored (compressed if gzip)
    size: int
    media_type: str
    diff_id: str         # sha256 of the uncompressed tar
    path: str            # where the blob is in the archive ("" for a directory archive)


@dataclass(frozen=True)
class BlobInfo:
    """A blob worth storing: what the sandbox needs to extract the package again."""

    digest: str
    size: int
    media_type: str
    role: str            # manifest, config, layer, archive (a directory tar is its own layer)
    path: str


@dataclass
class ValidatedPackage:
    """A package that passed validation: its manifest, layers, blobs and final file tree."""

    manifest: Manifest
    format: str                      # oci, docker, directory
    root: str                        # the model directory inside the tree ("" = the root)
    layers: tuple[LayerInfo, ...]
    blobs: tuple[BlobInfo, ...]
    files: dict[str, FileInfo]
    archive_digest: str | None       # of the archive bytes; only for directory archives
    archive_size: int
    manifest_digest: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    _source: Any = field(default=None, repr=False, compare=False)
    _source_start: int = field(default=0, repr=False, compare=False)
    _source_gzip: bool = field(default=False, repr=False, compare=False)
    _offsets: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    @property
    def total_size(self) -> int:
        """Bytes of all regular files in the final tree."""
        return sum(f.size for f in self.files.values() if f.kind in ("file", "hardlink"))

    def model_files(self) -> dict[str, FileInfo]:
        """The final tree below the model directory, keyed by path relative to it."""
        cut = len(self.root) + 1 if self.root else 0
        return {p[cut:]: f for p, f in self.files.items() if within(self.root, p) and p != self.root}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, stored with the version so the sandbox can extract it later."""
        return {
            "manifest": self.manifest.to_dict(),
            "format": self.format,
            "root": self.root,
            "layers": [_asdict(layer) for layer in self.layers],
            "blobs": [_asdict(b) for b in self.blobs],
            "files": [_asdict(f) for f in self.files.values()],
            "archive_digest": self.archive_digest,
            "archive_size": self.archive_size,
            "manifest_digest": self.manifest_digest,
            "config": self.config,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidatedPackage:
        """The inverse of to_dict (for data this service wrote itself)."""
        return cls(
            manifest=Manifest.from_dict(data["manifest"]),
            format=data["format"],
            root=data["root"],
            layers=tuple(LayerInfo(**x) for x in data["layers"]),
            blobs=tuple(BlobInfo(**x) for x in data["blobs"]),
            files={x["path"]: FileInfo(**x) for x in data["files"]},
            archive_digest=data["archive_digest"],
            archive_size=data["archive_size"],
            manifest_digest=data.get("manifest_digest"),
            config=data.get("config") or {},
        )

    def extract_to(self, dest: Path | str, *, open_blob: BlobOpener | None = None,
                   whole_tree: bool = False, limits: PackageLimits | None = None) -> Path:
        """Write the model directory (or the whole tree) into `dest`, which must be empty.

        Layers are read from `open_blob(digest)` (e.g. decrypting from the artifact store)
        or, by default, from the archive this package was validated from; each layer's
        digest is checked, and on any failure everything written is removed. Files get
        0644/0755 and directories 0755; no owner, setuid or device is ever created, and
        symlinks are made last, so no write can pass through one.
        """
        from partners.packaging.extract import Extractor  # extraction needs this module's types

        return Extractor(self, Path(dest), open_blob, whole_tree, limits or PackageLimits()).run()


def _asdict(obj: Any) -> dict[str, Any]:
    return {k: getattr(obj, k) for k in obj.__dataclass_fields__}


class _Walker:
    """The single pass over an archive."""

    def __init__(self, limits: PackageLimits, sink: BlobSink | None) -> None:
        self.limits = limits
        self.sink = sink
        self.files = 0
        self.unpacked = 0
        self.json_bytes = 0
        self.source_bytes = 0
        self.blobs: dict[str, oci.BlobRecord] = {}
        self.aliases: dict[str, str] = {}
        self.kept: dict[tuple[str, str], bytes] = {}
        self.writers: dict[str, Any] = {}
        # Set once the archive shows it is an image layout: the digest of the archive as a
        # whole is then not needed (only a plain directory tar is its own layer), which
        # saves one of three hashing passes.
        self.layout_hint: str | None = None
        self.raw: Counting | None = None
        self.rejected_blobs = 0
        # A plain directory archive is its own single layer: it streams into the sink as a
        # whole until the archive shows it is an image layout instead (then its blobs do).
        writer = sink.open_blob("") if sink is not None else None
        if writer is not None:
            self.writers[""] = writer

    # -- budgets ---------------------------------------------------------------------------

    def _count(self, name: str, layer: str | None) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise PackageRejected(f"more than {self.limits.max_files} entries", entry=name,
                                  layer=layer, reason="too-many-files")

    def _unpack(self, size: int, name: str, layer: str | None) -> None:
        self.unpacked += size
        if self.unpacked > self.limits.max_total_bytes:
            raise PackageRejected(f"unpacks to more than {self.limits.max_total_bytes} bytes",
                                  entry=name, layer=layer, reason="size-limit")

    def _keep(self, path: str, size: int) -> bool:
        base = path.rpartition("/")[2]
        if not (base.endswith(".py") or base in MANIFEST_FILES) or size > _MAX_KEPT_SOURCE:
            return False
        if self.source_bytes + size > self.limits.max_source_bytes:
            return False
        self.source_bytes += size
        return True

    # -- tar streams -----------------------------------------------------------------------

    def scan_tar(self, src: Reader, *, key: str, label: str | None, outer: bool) -> list[Entry]:
        """Check every entry of one tar stream (a layer, or the archive itself)."""
        limits = self.limits
        tar = TarStream(src, limits, layer=label)
        entries: list[Entry] = []
        seen: set[str] = set()
        linkable: dict[str, Entry] = {}
        for member in tar:
            self._count(member.name, label)
            path = normalize(member.name, limits, layer=label)
            if path and path in seen:
                raise PackageRejected("the same path appears twice", entry=member.name,
                                      layer=label, reason="duplicate-entry")
            seen.add(path)
            if outer and self.layout_hint is None and (
                    path in ("index.json", "manifest.json", oci.OCI_LAYOUT)
                    or oci.blob_path_digest(path) is not None):
                self.layout_hint = member.name
                if self.raw is not None:
                    self.raw.hashers.clear()
                    self.raw.tee = None
                archive_writer = self.writers.pop("", None)
                if archive_writer is not None:
                    archive_writer.discard()
            entry = classify(member, path, limits, layer=label)
            if not path:
                continue  # the layer's own root directory ("./")
            if entry.kind == "file":
                if not outer and entry.size > limits.max_file_bytes:
                    raise PackageRejected(
                        f"a file of {entry.size} bytes (limit {limits.max_file_bytes})",
                        entry=member.name, layer=label, reason="file-too-large")
                reader = tar.data(member)
                if outer and self._is_blob_candidate(path):
                    # bounded by the archive size; its files count once, inside the layer
                    entry.digest = self.consume_blob(reader, entry)
                else:
                    self._unpack(entry.size, member.name, label)
                    entry.digest = self._consume_file(reader, entry, key)
                linkable[path] = entry
            elif entry.kind == "hardlink":
                self._hardlink(member.linkname, entry, linkable, label)
                self._unpack(entry.size, member.name, label)
                linkable[path] = entry
            entries.append(entry)
        return entries

    def _hardlink(self, linkname: str, entry: Entry, linkable: dict[str, Entry],
                  label: str | None) -> None:
        try:
            target = normalize(linkname, self.limits, layer=label, what="hard link target")
        except PackageRejected as exc:
            raise PackageRejected(f"hard link to {linkname!r} leaves the package", entry=entry.name,
                                  layer=label, reason="hardlink-escape") from exc
        linked = linkable.get(target)
        if linked is None:
            raise PackageRejected(
                f"hard link to {linkname!r}, which is not an earlier file of the same layer",
                entry=entry.name, layer=label, reason="hardlink-escape")
        entry.target = linked.target if linked.kind == "hardlink" else linked.path
        entry.digest, entry.size = linked.digest, linked.size

    def _consume_file(self, reader: Reader, entry: Entry, key: str) -> str:
        hasher = hashlib.sha256()
        keep = self._keep(entry.path, entry.size)
        parts: list[bytes] = []
        while data := reader.read(CHUNK):
            hasher.update(data)
            if keep:
                parts.append(data)
        if keep:
            self.kept[(key, entry.path)] = b"".join(parts)
        return digest_of(hasher)

    # -- blobs -----------------------------------------------------------------------------

    @staticmethod
    def _is_blob_candidate(path: str) -> bool:
        # OCI blobs; `docker save` layers (<id>/layer.tar) and, from skopeo or podman's
        # docker-archive, <digest>.tar layers and <digest>.json configs at the top level.
        return (oci.blob_path_digest(path) is not None or path in _ROOT_JSON
                or path.rpartition("/")[2] == "layer.tar"
                or ("/" not in path and path.endswith((".json", ".tar"))))

    def consume_blob(self, reader: Reader, entry: Entry) -> str:
        """Hash one archive member and, when it is a layer, check every entry inside it."""
        path = entry.path
        named = oci.blob_path_digest(path)
        algorithm = named.partition(":")[0] if named else "sha256"
        big = entry.size >= _THREADED_HASH_BYTES
        hasher = ThreadedHash(algorithm) if big else new_hasher(algorithm)
        plain = hasher if algorithm == "sha256" else hashlib.sha256()
        try:
            return self._consume_blob(reader, entry, named, hasher, plain)
        finally:
            if big:
                hasher.close()

    def _consume_blob(self, reader: Reader, entry: Entry, named: str | None, hasher: Any,
                      plain: Any) -> str:
        path = entry.path
        writer = self.sink.open_blob(path) if self.sink is not None else None
        if writer is not None:
            self.writers[path] = writer
        head = _read_exact(reader, HEAD)
        counting = Counting(Prefixed(head, reader), hashers={hasher, plain},
                            tee=writer.write if writer is not None else None)
        record = oci.BlobRecord(path=path, digest="", size=entry.size, kind=sniff(head),
                                offset=entry.offset)
        try:
            if record.kind == "gzip":
                inflater = Inflater(counting, self.limits, entry=path, layer=path)
                inner_head = _read_exact(inflater, HEAD)
                if is_tar_head(inner_head):
                    record.kind = "tar+gzip"
                    diff = hashlib.sha256()
                    stream = Counting(Prefixed(inner_head, inflater), hashers=[diff])
                    record.entries = self.scan_tar(stream, key=path, label=path, outer=False)
                    stream.drain()
                    record.diff_id = digest_of(diff)
            elif record.kind == "tar":
                record.entries = self.scan_tar(counting, key=path, label=path, outer=False)
            elif record.kind == "json" and entry.size <= self.limits.max_json_bytes and \
                    self.json_bytes + entry.size <= self.limits.max_json_total_bytes:
                self.json_bytes += entry.size
                parts = []
                while data := counting.read(CHUNK):
                    parts.append(data)
                record.doc = b"".join(parts)
        except PackageRejected as exc:
            # Raised only if the image uses this blob as a layer: a blob nothing refers to
            # (or a partner's own data.tar in a directory archive) is not unpacked anyway.
            # Limits on the whole archive still stop it at once.
            if exc.reason in _BUDGET_REASONS:
                raise
            record.error, record.entries, record.diff_id = exc, None, None
            self.rejected_blobs += 1
            if self.rejected_blobs > _MAX_REJECTED_BLOBS:
                raise
        counting.drain()
        record.digest = digest_of(hasher)
        if record.kind == "tar" and record.error is None:
            record.diff_id = digest_of(plain)
        if named is not None and record.digest != named:
            raise PackageRejected(f"blob content hashes to {record.digest}", entry=path,
                                  reason="digest-mismatch")
        if writer is not None:
            writer.commit(record.digest, record.size)
        self.blobs[path] = record
        return digest_of(plain)

    # -- the whole archive -----------------------------------------------------------------

    def walk(self, source: Reader) -> ValidatedPackage:
        """Read the archive and return the validated package (or raise PackageRejected)."""
        try:
            return self._walk(source)
        except BaseException:
            for writer in self.writers.values():
                writer.discard()
            raise

    def _walk(self, source: Reader) -> ValidatedPackage:
        limits = self.limits
        archive_hash = hashlib.sha256()
        head = _read_exact(source, HEAD)
        if not head:
            raise malformed("the archive is empty", ARCHIVE)
        archive_writer = self.writers.get("")
        raw = Counting(Prefixed(head, source), hashers=[archive_hash], limit=limits.max_archive_bytes,
                       on_limit=lambda: PackageRejected(
                           f"the archive is larger than {limits.max_archive_bytes} bytes",
                           entry=ARCHIVE, reason="size-limit"),
                       tee=archive_writer.write if archive_writer is not None else None)
        self.raw = raw
        gzipped = head.startswith(b"\x1f\x8b")
        diff_hash = hashlib.sha256()
        tar_stream: Counting = raw
        if gzipped:
            tar_stream = Counting(Inflater(raw, limits, entry=ARCHIVE), hashers=[diff_hash])
        outer = self.scan_tar(tar_stream, key="", label=None, outer=True)
        tar_stream.drain()
        raw.drain()
        archive_digest = digest_of(archive_hash) if self.layout_hint is None else None
        for e in outer:
            if e.kind == "symlink" and e.target is not None and not e.target.startswith("/"):
                self.aliases[e.path] = posixpath.normpath(posixpath.join(posixpath.dirname(e.path),
                                                                         e.target))
        image = oci.resolve(self.blobs, self.aliases, limits)
        if image is None and self.layout_hint is not None:
            raise PackageRejected("an image layout without index.json (or manifest.json)",
                                  entry=self.layout_hint, reason="bad-layout")
        if image is None:
            assert archive_digest is not None
            for e in outer:
                if e.kind == "file" and e.size > limits.max_file_bytes:
                    raise PackageRejected(f"a file of {e.size} bytes (limit {limits.max_file_bytes})",
                                          entry=e.name, reason="file-too-large")
            media = oci.LAYER_GZIP if gzipped else oci.LAYER_TAR
            diff_id = digest_of(diff_hash) if gzipped else archive_digest
            layers = (LayerInfo(archive_digest, raw.count, media, diff_id, ""),)
            layer_entries, keys = [outer], [""]
            config: dict[str, Any] = {}
            blobs = (BlobInfo(archive_digest, raw.count, media, "archive", ""),)
            fmt, manifest_digest = "directory", None
            if archive_writer is not None:
                archive_writer.commit(archive_digest, raw.count)
        else:
            layers = tuple(LayerInfo(ref.digest, ref.size, ref.media_type,
                                     self.blobs[ref.path].diff_id or "", ref.path) for ref in image.layers)
            layer_entries = [self.blobs[ref.path].entries or [] for ref in image.layers]
            keys = [ref.path for ref in image.layers]
            config = image.config
            blob_list = []
            if image.format == "oci" and image.manifest_path:
                m = self.blobs[image.manifest_path]
                blob_list.append(BlobInfo(m.digest, m.size, oci.OCI_MANIFEST, "manifest", m.path))
            if image.config_path:
                c = self.blobs[image.config_path]
                blob_list.append(BlobInfo(c.digest, c.size, oci.OCI_CONFIG, "config", c.path))
            blob_list += [BlobInfo(x.digest, x.size, x.media_type, "layer", x.path) for x in layers]
            blobs = tuple(blob_list)
            fmt, manifest_digest = image.format, image.manifest_digest
        tree = Tree()
        for index, entries in enumerate(layer_entries):
            tree.apply(index, entries, keys[index] or None)
        package = self._package(tree, config, keys)
        kept_paths = {b.path for b in blobs}
        for path, writer in self.writers.items():
            if path not in kept_paths:
                writer.discard()
        root, manifest = package
        files = {p: FileInfo(p, n.kind, n.size, n.mode, n.digest, n.target, n.layer)
                 for p, n in sorted(tree.nodes.items()) if p}
        return ValidatedPackage(
            manifest=manifest, format=fmt, root=root, layers=layers, blobs=blobs, files=files,
            archive_digest=archive_digest, archive_size=raw.count, manifest_digest=manifest_digest,
            config=config, _source_gzip=gzipped,
            _offsets={path: rec.offset for path, rec in self.blobs.items()},
        )

    def _package(self, tree: Tree, config: dict[str, Any], keys: list[str]) -> tuple[str, Manifest]:
        """Find the model directory and its manifest in the final tree; check links."""
        def kind_of(path: str) -> str | None:
            resolved = tree.resolve(path)
            node = tree.nodes.get(resolved) if resolved is not None else None
            if node is None:
                return None
            return "file" if node.kind in ("file", "hardlink") else node.kind

        def read_text(path: str) -> str | None:
            resolved = tree.resolve(path)
            node = tree.nodes.get(resolved) if resolved is not None else None
            if node is None or node.layer < 0:
                return None
            origin = node.target if node.kind == "hardlink" else resolved
            data = self.kept.get((keys[node.layer], origin or ""))
            return None if data is None else data.decode("utf-8", "replace")

        labels = labels_of(config)
        inner = config.get("config") if isinstance(config.get("config"), dict) else {}
        working_dir = None
        if isinstance(inner.get("WorkingDir"), str) and inner["WorkingDir"].strip("/"):
            with contextlib.suppress(PackageRejected):
                working_dir = normalize(inner["WorkingDir"].lstrip("/"), self.limits, layer=None)
        candidates = manifest_dirs([p for p in tree.nodes if p.rpartition("/")[2] in MANIFEST_FILES],
                                   kind_of)
        # A WorkingDir or label may name the model directory through a symlink (/src ->
        # /app); the files live under the real path.
        root = find_root(kind_of, candidates, labels, working_dir)
        root = tree.resolve(root) or root
        tree.check_links(root)
        default_name = (root.rpartition("/")[2] or "model").lower()
        manifest, methods = declared_manifest(kind_of, read_text, root, labels=labels,
                                              default_name=default_name)
        return root, with_schemas(manifest, methods, kind_of, read_text, root)


def _read_exact(src: Reader, n: int) -> bytes:
    parts, have = [], 0
    while have < n:
        data = src.read(n - have)
        if not data:
            break
        parts.append(data)
        have += len(data)
    return b"".join(parts)


def validate_stream(source: BinaryIO | Iterable[bytes] | bytes, limits: PackageLimits | None = None, *,
                    sink: BlobSink | None = None) -> ValidatedPackage:
    """Validate a package read once from a binary file object or an iterator of chunks.

    Memory stays flat whatever the archive's size. With `sink`, every blob-like member is
    also handed to `sink.open_blob(path)` as it streams (to encrypt and store it in the
    same pass), and the archive itself to `sink.open_blob("")` until it shows it is an image
    layout (a plain directory archive is its own single layer, path ""): on success the sink
    keeps exactly the blobs in `ValidatedPackage.blobs`; on rejection every writer is
    discarded. If `source` is seekable, the
    package can later `extract_to()` from it without `open_blob`, while it stays open.
    """
    limits = limits or PackageLimits()
    reader: Reader
    start, seekable = 0, False
    if isinstance(source, bytes | bytearray | memoryview):
        source = io.BytesIO(bytes(source))
    if hasattr(source, "read"):
        reader = source  # type: ignore[assignment]
        with contextlib.suppress(AttributeError, OSError, io.UnsupportedOperation):
            seekable = bool(source.seekable())  # type: ignore[union-attr]
            start = source.tell() if seekable else 0  # type: ignore[union-attr]
    else:
        reader = ChunkSource(source)  # type: ignore[arg-type]
    package = _Walker(limits, sink).walk(reader)
    if seekable:
        package._source, package._source_start = source, start
    return package


def validate_archive(path: Path | str, limits: PackageLimits | None = None, *,
                     sink: BlobSink | None = None) -> ValidatedPackage:
    """Validate the package archive at `path` (see validate_stream)."""
    with open(path, "rb") as f:
        package = validate_stream(f, limits, sink=sink)
    package._source, package._source_start = Path(path), 0
    return package
