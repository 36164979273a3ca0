"""Blob storage for outputs and artifacts: a local directory behind a small interface."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from kit.settings import get_settings


class Storage(Protocol):
    """What any backend (local disk, S3-compatible) offers."""

    def put_file(self, key: str, source: Path) -> int: ...
    def put_stream(self, key: str, stream: BinaryIO) -> tuple[int, str]: ...
    def open(self, key: str) -> BinaryIO: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def local_path(self, key: str) -> Path: ...


class LocalStorage:
    """Keys are relative paths under one root; writes are atomic (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError(f"storage key escapes the root: {key!r}")
        return path

    def put_file(self, key: str, source: Path) -> int:
        """Copy `source` in under `key`; returns its size."""
        with open(source, "rb") as f:
            size, _ = self.put_stream(key, f)
        return size

    def put_stream(self, key: str, stream: BinaryIO) -> tuple[int, str]:
        """Write a stream under `key`; returns (size, sha256 hex)."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return size, digest.hexdigest()

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def iter_bytes(self, key: str, chunk: int = 1 << 16) -> Iterator[bytes]:
        with self.open(key) as f:
            yield from iter(lambda: f.read(chunk), b"")

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path:
        return self._path(key)

    def delete_tree(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)


def get_storage() -> LocalStorage:
    """The configured storage backend."""
    return LocalStorage(get_settings().storage_root)
