"""Build a model package: an OCI image layout archive, without Docker.

The model directory (with `mediagate.toml`, or a Cog project's `cog.yaml`) lands under
`/src` in the image. Weights-like files go into an uncompressed layer of their own (they
do not compress, and gzip would cap upload throughput), everything else into a gzip
layer. The image config carries the manifest, with its derived schemas, in the
`dev.mediagate.manifest` label. Entries are sorted and their times, owners and modes fixed,
so the same directory always gives the same digest.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import json
import os
import posixpath
import stat
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from engine.manifest import Manifest
from partners.packaging import layout as oci
from partners.packaging.model import (
    MANIFEST_LABEL,
    ROOT_LABEL,
    TITLE_LABEL,
    declared_manifest,
    with_schemas,
)
from partners.packaging.rules import PackageRejected
from partners.packaging.tarsafe import CHUNK
from partners.packaging.validate import LayerInfo

PREFIX = "src"
EPOCH = "1970-01-01T00:00:00Z"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".gguf")
# Anything this big goes with the weights, whatever its name: it is data, not code.
BIG_FILE = 64 << 20
IGNORED_DIRS = {".git", ".hg", "__pycache__", ".venv", ".mypy_cache", ".pytest_cache",
                ".ruff_cache", ".hypothesis", ".cog", ".idea", ".vscode"}
IGNORE_FILES = (".mediagateignore", ".dockerignore", ".cogignore")
IGNORED_FILES = {".DS_Store", *IGNORE_FILES}

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


@dataclass(frozen=True)
class BuildResult:
    """What `build_package` wrote."""

    path: Path
    digest: str                      # the image manifest's digest: the package's identity
    size: int                        # bytes of the archive
    manifest: Manifest
    layers: tuple[LayerInfo, ...]
    files: int                       # regular files packaged
    content_bytes: int               # their total size


@dataclass(frozen=True)
class _Item:
    rel: str            # relative to the model directory
    kind: str           # file, dir, symlink
    size: int = 0
    mode: int = 0o644
    target: str = ""


def _ignore_patterns(model_dir: Path) -> list[str]:
    patterns: list[str] = []
    for name in IGNORE_FILES:
        path = model_dir / name
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                line = line.strip()
                if line and not line.startswith(("#", "!")):
                    patterns.append(line.strip("/").removeprefix("./"))
    return patterns


def _ignored(rel: str, patterns: list[str]) -> bool:
    base = rel.rpartition("/")[2]
    for pat in patterns:
        if fnmatch.fnmatchcase(rel, pat) or fnmatch.fnmatchcase(rel, pat + "/*") or (
                "/" not in pat and fnmatch.fnmatchcase(base, pat)):
            return True
    return False


def _collect(model_dir: Path, exclude: set[Path]) -> list[_Item]:
    """Every path to package, sorted, with special files and escaping links refused."""
    patterns = _ignore_patterns(model_dir)
    items: list[_Item] = []
    for dirpath, dirnames, filenames in os.walk(model_dir):
        here = Path(dirpath)
        rel_dir = here.relative_to(model_dir).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        dirnames[:] = sorted(d for d in dirnames if d not in IGNORED_DIRS)
        for name in sorted(dirnames + filenames):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            path = here / name
            if name in IGNORED_FILES or name.endswith(".pyc") or _ignored(rel, patterns) or \
                    path in exclude:
                if name in dirnames:
                    dirnames.remove(name)
                continue
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
                resolved = posixpath.normpath(posixpath.join(rel_dir, target))
                if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
                    raise PackageRejected(f"symlink to {target!r} points outside the model directory",
                                          entry=rel, reason="link-escape")
                items.append(_Item(rel, "symlink", target=target, mode=0o777))
                if name in dirnames:
                    dirnames.remove(name)  # os.walk does not follow it; keep it a link
            elif stat.S_ISDIR(st.st_mode):
                items.append(_Item(rel, "dir", mode=0o755))
            elif stat.S_ISREG(st.st_mode):
                items.append(_Item(rel, "file", size=st.st_size,
                                   mode=0o755 if st.st_mode & 0o111 else 0o644))
            else:
                reason = ("fifo" if stat.S_ISFIFO(st.st_mode) else
                          "device-file" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                          else "special-file")
                raise PackageRejected("only files, directories and symlinks can be packaged",
                                      entry=rel, reason=reason)
    return sorted(items, key=lambda i: i.rel)


def _is_weights(item: _Item) -> bool:
    return item.kind == "file" and (item.rel.lower().endswith(WEIGHT_SUFFIXES) or item.size >= BIG_FILE)


def _tarinfo(name: str, kind: str, size: int = 0, mode: int = 0o644, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE}[kind]
    info.size = size if kind == "file" else 0
    info.mode = mode
    info.linkname = target
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _Reporting:
    """Reads a source file, reporting progress as bytes pass."""

    def __init__(self, f: BinaryIO, report: Callable[[int], None]) -> None:
        self._f = f
        self._report = report

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._report(len(data))
        return data


class _HashingWriter:
    """A write-only file that hashes and counts what is written through it."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._f.flush()

    def write(self, data: Any) -> int:
        self.sha.update(data)
        self.size += len(data)
        self._f.write(data)
        return len(data)


class _Null:
    def write(self, data: Any) -> int:
        return len(data)

    def flush(self) -> None:
        pass


def _write_layer(target: Any, items: list[_Item], model_dir: Path, *, compress: bool,
                 report: Callable[[int], None]) -> tuple[str, int, str]:
    """Write one layer tar to `target`; returns (blob digest, blob size, diff_id)."""
    blob = _HashingWriter(target)
    gz = gzip.GzipFile(filename="", mode="wb", fileobj=blob, mtime=0, compresslevel=6) \
        if compress else None
    plain = _HashingWriter(gz) if gz is not None else blob
    with tarfile.open(fileobj=plain, mode="w", format=tarfile.PAX_FORMAT,  # type: ignore[call-overload]
                      copybufsize=CHUNK) as tf:
        tf.addfile(_tarinfo(PREFIX, "dir", mode=0o755))
        for item in items:
            name = f"{PREFIX}/{item.rel}"
            info = _tarinfo(name, item.kind, item.size, item.mode, item.target)
            if item.kind == "file":
                with open(model_dir / item.rel, "rb") as src:
                    tf.addfile(info, _Reporting(src, report))  # type: ignore[arg-type]
            else:
                tf.addfile(info)
    if gz is not None:
        gz.close()
    return f"sha256:{blob.sha.hexdigest()}", blob.size, f"sha256:{plain.sha.hexdigest()}"


class _ArchiveWriter:
    """The outer tar, written by hand so a layer can stream straight into it."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.offset = 0

    def _write(self, data: bytes) -> None:
        self.f.write(data)
        self.offset += len(data)

    def write(self, data: Any) -> int:
        self._write(data)
        return len(data)

    def flush(self) -> None:
        self.f.flush()

    def header(self, name: str, kind: str, size: int = 0) -> None:
        info = _tarinfo(name, kind, size, mode=0o755 if kind == "dir" else 0o644)
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def pad(self) -> None:
        self._write(tarfile.NUL * (-self.offset % tarfile.BLOCKSIZE))

    def file(self, name: str, data: bytes) -> None:
        self.header(name, "file", len(data))
        self._write(data)
        self.pad()

    def close(self) -> None:
        self._write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
        self._write(tarfile.NUL * (-self.offset % tarfile.RECORDSIZE))


def _json_bytes(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _disk_manifest(model_dir: Path, items: list[_Item]) -> Manifest:
    by_rel = {i.rel: i for i in items}

    def kind_of(rel: str, hops: int = 0) -> str | None:
        item = by_rel.get(rel)
        if item is None or hops > 40:
            return None
        if item.kind == "symlink":
            target = posixpath.normpath(posixpath.join(posixpath.dirname(rel), item.target))
            return kind_of(target, hops + 1)
        return item.kind

    def read_text(rel: str) -> str | None:
        path = model_dir / rel
        if path.stat().st_size > 4 << 20:
            return None
        return path.read_text(encoding="utf-8", errors="replace")

    default_name = "".join(c if c.isalnum() or c in "-_." else "-" for c in model_dir.name.lower())
    manifest, methods = declared_manifest(kind_of, read_text, "", labels={},
                                          default_name=default_name or "model")
    return with_schemas(manifest, methods, kind_of, read_text, "")


def build_package(model_dir: Path | str, out: Path | str, *,
                  progress: Progress | None = None) -> BuildResult:
    """Package `model_dir` into the OCI image layout archive `out` (e.g. model.oci.tar).

    Raises PackageRejected (naming the file at fault) for a missing or invalid manifest,
    an entrypoint that does not exist, links out of the directory or special files.
    """
    model_dir = Path(model_dir).resolve()
    out = Path(out).resolve()
    if not model_dir.is_dir():
        raise PackageRejected(f"{model_dir} is not a directory", entry=str(model_dir),
                              reason="missing-manifest")
    out.parent.mkdir(parents=True, exist_ok=True)
    items = _collect(model_dir, exclude={out})
    manifest = _disk_manifest(model_dir, items)
    total = sum(i.size for i in items if i.kind == "file")
    done = 0

    def report(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None and n:
            progress(done, 2 * total)  # every file is read twice: to hash, then to write

    weights = [i for i in items if _is_weights(i)]
    weight_dirs = {posixpath.dirname(i.rel) for i in weights}
    for d in list(weight_dirs):
        while d:
            d = posixpath.dirname(d)
            weight_dirs.add(d)
    weight_dirs.discard("")
    code = [i for i in items if not _is_weights(i)]
    plans: list[tuple[str, list[_Item], bool]] = []
    if weights:
        dirs = [i for i in items if i.kind == "dir" and i.rel in weight_dirs]
        plans.append(("weights", sorted(dirs + weights, key=lambda i: i.rel), False))
    plans.append(("code", code, True))

    layers: list[LayerInfo] = []
    history = []
    for what, layer_items, compress in plans:
        # First pass: only the digest, so the layer can then stream into the archive
        # without a temporary copy of the weights.
        digest, size, diff_id = _write_layer(_Null(), layer_items, model_dir, compress=compress,
                                             report=report)
        media = oci.LAYER_GZIP if compress else oci.LAYER_TAR
        layers.append(LayerInfo(digest, size, media, diff_id, "blobs/" + digest.replace(":", "/")))
        history.append({"created": EPOCH, "created_by": f"mediagate package: {what}"})
    labels = {
        MANIFEST_LABEL: _json_bytes(manifest.to_dict()).decode(),
        ROOT_LABEL: PREFIX,
        TITLE_LABEL: manifest.name,
    }
    config = _json_bytes({
        "created": EPOCH,
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": labels, "WorkingDir": f"/{PREFIX}", "Env": ["PYTHONUNBUFFERED=1"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": history,
    })
    config_digest = f"sha256:{hashlib.sha256(config).hexdigest()}"
    image = _json_bytes({
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": {"mediaType": oci.OCI_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": x.media_type, "digest": x.digest, "size": x.size} for x in layers],
        "annotations": {TITLE_LABEL: manifest.name},
    })
    image_digest = f"sha256:{hashlib.sha256(image).hexdigest()}"
    index = _json_bytes({
        "schemaVersion": 2,
        "mediaType": oci.OCI_INDEX,
        "manifests": [{
            "mediaType": oci.OCI_MANIFEST, "digest": image_digest, "size": len(image),
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    })
    fd, partial_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    partial = Path(partial_name)
    try:
        with os.fdopen(fd, "wb") as f:
            archive = _ArchiveWriter(f)
            archive.file("oci-layout", _json_bytes({"imageLayoutVersion": "1.0.0"}))
            archive.file("index.json", index)
            archive.header("blobs", "dir")
            archive.header("blobs/sha256", "dir")
            archive.file("blobs/" + image_digest.replace(":", "/"), image)
            archive.file("blobs/" + config_digest.replace(":", "/"), config)
            for layer, (_, layer_items, compress) in zip(layers, plans, strict=True):
                archive.header(layer.path, "file", layer.size)
                again = _write_layer(archive, layer_items, model_dir, compress=compress, report=report)
                if again != (layer.digest, layer.size, layer.diff_id):
                    raise PackageRejected("the model directory changed while it was being packaged",
                                          entry=str(model_dir), reason="digest-mismatch")
                archive.pad()
            archive.close()
        os.chmod(partial, 0o644)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return BuildResult(
        path=out, digest=image_digest, size=out.stat().st_size, manifest=manifest,
        layers=tuple(layers), files=sum(1 for i in items if i.kind == "file"), content_bytes=total,
    )
