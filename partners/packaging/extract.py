"""Write a validated package's final tree into a directory, reading its layers again.

The sandbox supervisor calls this (through `ValidatedPackage.extract_to`) into a private
tmpfs: only paths the validation accepted are created, directories first, then files
(opened with O_EXCL|O_NOFOLLOW), then symlinks last, so no write can pass through a link;
each layer's digest is checked as it streams and any failure removes what was written.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from partners.packaging import layout as oci
from partners.packaging.rules import PackageLimits, PackageRejected
from partners.packaging.tarsafe import (
    ARCHIVE,
    CHUNK,
    Counting,
    Inflater,
    Reader,
    TarStream,
    digest_of,
    new_hasher,
    normalize,
)
from partners.packaging.tree import within

if TYPE_CHECKING:
    from partners.packaging.validate import BlobOpener, ValidatedPackage


class _Bounded:
    """At most `size` bytes of `src`."""

    def __init__(self, src: Reader, size: int) -> None:
        self._src = src
        self._left = size

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        data = self._src.read(min(self._left, CHUNK if n is None or n < 0 else n))
        self._left -= len(data)
        return data


@contextlib.contextmanager
def open_layer(package: ValidatedPackage, index: int, open_blob: BlobOpener | None,
               limits: PackageLimits) -> Iterator[Reader]:
    """The stored bytes of one layer: from `open_blob(digest)`, else from the source archive."""
    layer = package.layers[index]
    if open_blob is not None:
        stream = open_blob(layer.digest)
        try:
            yield stream
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        return
    source = package._source
    if source is None:
        raise ValueError("this package was not validated from a seekable file; pass open_blob")
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(open(source, "rb")) if isinstance(source, Path) else source
        f.seek(package._source_start)
        if package.format == "directory":
            yield _Bounded(f, package.archive_size)
            return
        offset = package._offsets[layer.path]
        if not package._source_gzip:
            f.seek(package._source_start + offset)
            yield _Bounded(f, layer.size)
            return
        inflater = Inflater(Counting(f), limits, entry=ARCHIVE)
        while offset > 0:
            skipped = len(inflater.read(min(offset, CHUNK)))
            if not skipped:
                break
            offset -= skipped
        yield _Bounded(inflater, layer.size)


class Extractor:
    """One extraction of a package into an empty directory."""

    def __init__(self, package: ValidatedPackage, dest: Path, open_blob: BlobOpener | None,
                 whole_tree: bool, limits: PackageLimits) -> None:
        self.pkg = package
        self.dest = dest
        self.open_blob = open_blob
        self.base = "" if whole_tree else package.root
        self.limits = limits

    def rel(self, path: str) -> str:
        return path[len(self.base) + 1:] if self.base else path

    def run(self) -> Path:
        dest = self.dest
        created = not dest.exists()
        dest.mkdir(parents=True, exist_ok=True)
        if any(dest.iterdir()):
            raise ValueError(f"{dest} must be an empty directory")
        chosen = {p: f for p, f in self.pkg.files.items() if within(self.base, p) and p != self.base}
        try:
            dirs = sorted(p for p, f in chosen.items() if f.kind == "dir")
            for p in dirs:
                os.makedirs(dest / self.rel(p), mode=0o700, exist_ok=True)
            plan: dict[int, dict[str, list[tuple[str, int]]]] = {}
            for p, f in chosen.items():
                if f.kind in ("file", "hardlink"):
                    origin = f.target if f.kind == "hardlink" else p
                    assert origin is not None
                    plan.setdefault(f.layer, {}).setdefault(origin, []).append((self.rel(p), f.mode))
            for index in sorted(plan):
                self._layer(index, plan[index])
            for p, f in sorted(chosen.items()):
                if f.kind == "symlink":
                    assert f.target is not None
                    target = f.target
                    if target.startswith("/"):  # outside the model only: keep it inside dest
                        target = posixpath.relpath(target.lstrip("/") or ".",
                                                   posixpath.dirname(p) or ".")
                    os.symlink(target, dest / self.rel(p))
            for p in reversed(dirs):
                os.chmod(dest / self.rel(p), 0o755)
        except BaseException:
            if created:
                shutil.rmtree(dest, ignore_errors=True)
            else:
                for child in dest.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
            raise
        return dest

    def _layer(self, index: int, wanted: dict[str, list[tuple[str, int]]]) -> None:
        layer = self.pkg.layers[index]
        label = layer.path or ARCHIVE
        with open_layer(self.pkg, index, self.open_blob, self.limits) as stream:
            hasher = new_hasher(layer.digest.partition(":")[0])
            counting = Counting(stream, hashers=[hasher], limit=layer.size, on_limit=lambda: PackageRejected(
                "the stored layer is longer than validated", entry=label, reason="digest-mismatch"))
            data: Counting = counting
            if layer.media_type in oci.GZIP_TYPES:
                data = Counting(Inflater(counting, self.limits, entry=label, layer=label))
            tar = TarStream(data, self.limits, layer=label)
            written: set[str] = set()
            for member in tar:
                path = normalize(member.name, self.limits, layer=label)
                targets = wanted.get(path)
                if not targets or not member.isfile() or path in written:
                    continue
                reader = tar.data(member)
                first, mode = targets[0]
                first_path = self.dest / first
                fd = os.open(first_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    while chunk := reader.read(CHUNK):
                        out.write(chunk)
                os.chmod(first_path, 0o755 if mode & 0o111 else 0o644)
                for other, _ in targets[1:]:
                    os.link(first_path, self.dest / other)
                written.add(path)
            data.drain()
            counting.drain()
        if digest_of(hasher) != layer.digest or counting.count != layer.size:
            raise PackageRejected("the stored layer does not match its digest", entry=label,
                                  reason="digest-mismatch")
        missing = sorted(set(wanted) - written)
        if missing:
            raise PackageRejected("the stored layer lacks a validated file", entry=missing[0],
                                  layer=label, reason="digest-mismatch")
