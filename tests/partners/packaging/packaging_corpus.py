"""Builders for package archives, good and hostile, generated at test time.

`CASES` is the malicious-archive corpus: each case writes one archive and names the
rejection reason and offending entry it must get.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from partners.packaging import PackageLimits

MiB = 1 << 20

GOOD_TOML = b'[model]\nname = "corpus"\nentrypoint = "predict:Echo"\nbillable_unit = "images"\n'
GOOD_PY = b'''from engine import Input, Model


class Echo(Model):
    def predict(self, prompt: str = Input(description="what to say"),
                times: int = Input(default=1, ge=1, le=5)) -> str:
        return prompt * times
'''


@dataclass
class E:
    """One tar entry to write, however unsafe."""

    name: str
    kind: str = "file"          # file dir symlink hardlink char block fifo sparse
    data: bytes = b""
    mode: int | None = None
    link: str = ""
    size: int | None = None     # a header size that differs from the data

    def info(self) -> tarfile.TarInfo:
        types = {"door": b"D", "file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                 "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
                 "fifo": tarfile.FIFOTYPE, "sparse": tarfile.GNUTYPE_SPARSE}
        info = tarfile.TarInfo(self.name)
        info.type = types[self.kind]
        info.mode = self.mode if self.mode is not None else (0o755 if self.kind == "dir" else 0o644)
        info.linkname = self.link
        info.size = self.size if self.size is not None else (len(self.data) if self.kind == "file" else 0)
        info.mtime = 0
        return info


def good_entries(root: str = "src", toml: bytes = GOOD_TOML, py: bytes = GOOD_PY) -> list[E]:
    """A valid model directory: manifest plus entrypoint."""
    prefix = f"{root}/" if root else ""
    dirs = [E(root, "dir")] if root else []
    return [*dirs, E(f"{prefix}mediagate.toml", data=toml), E(f"{prefix}predict.py", data=py)]


def tar_bytes(entries: list[E]) -> bytes:
    """A tar of `entries`, written exactly as given (no name cleaning)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            info = e.info()
            if e.kind == "sparse":
                buf.write(info.tobuf(tarfile.GNU_FORMAT))
                tf.offset = buf.tell()
            elif e.kind == "file" and e.size is None:
                tf.addfile(info, io.BytesIO(e.data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Layer:
    """A layer: its uncompressed tar, stored gzip-compressed or not."""

    tar: bytes
    gzip: bool = False
    media_type: str | None = None
    blob_override: bytes | None = None

    def blob(self) -> bytes:
        if self.blob_override is not None:
            return self.blob_override
        return gzip.compress(self.tar, compresslevel=1, mtime=0) if self.gzip else self.tar

    def media(self) -> str:
        if self.media_type:
            return self.media_type
        return "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if self.gzip else "")


def layer(entries: list[E], *, gz: bool = False) -> Layer:
    return Layer(tar_bytes(entries), gzip=gz)


Patch = Callable[[Any], None]


def write_oci(path: Path, layers: list[Layer], *, labels: dict[str, str] | None = None,
              working_dir: str | None = None, config_patch: Patch | None = None,
              manifest_patch: Patch | None = None, members_patch: Patch | None = None) -> Path:
    """Write an OCI image layout archive; the patches make it wrong in chosen ways."""
    blobs: dict[str, bytes] = {}
    descs, diff_ids = [], []
    for lay in layers:
        blob = lay.blob()
        blobs[sha(blob)] = blob
        descs.append({"mediaType": lay.media(), "digest": sha(blob), "size": len(blob)})
        diff_ids.append(sha(lay.tar))
    config: dict[str, Any] = {
        "architecture": "amd64", "os": "linux",
        "config": {"Labels": labels or {}, **({"WorkingDir": working_dir} if working_dir else {})},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    if config_patch:
        config_patch(config)
    config_bytes = json.dumps(config).encode()
    blobs[sha(config_bytes)] = config_bytes
    manifest: dict[str, Any] = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(config_bytes), "size": len(config_bytes)},
        "layers": descs,
    }
    if manifest_patch:
        manifest_patch(manifest)
    manifest_bytes = json.dumps(manifest).encode()
    blobs[sha(manifest_bytes)] = manifest_bytes
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(manifest_bytes),
         "size": len(manifest_bytes)}]}
    members: dict[str, bytes] = {
        "blobs/sha256/" + d.split(":")[1]: b for d, b in sorted(blobs.items())}
    members["index.json"] = json.dumps(index).encode()
    members["oci-layout"] = b'{"imageLayoutVersion": "1.0.0"}'
    if members_patch:
        members_patch(members)
    path.write_bytes(tar_bytes([E(name, data=data) for name, data in members.items()]))
    return path


def layer_member(members: dict[str, bytes], index: int = -1) -> str:
    """The archive path of a layer blob (the biggest non-JSON blob by default)."""
    names = [n for n, b in members.items() if n.startswith("blobs/") and not b.startswith(b"{")]
    return sorted(names, key=lambda n: len(members[n]))[index]


def gzip_bomb_layer(zeros: int = 64 * MiB) -> Layer:
    """A gzip layer holding one file of `zeros` zero bytes (about 1000:1)."""
    info = tarfile.TarInfo("src/zeros.bin")
    info.size, info.mtime = zeros, 0
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [comp.compress(info.tobuf(tarfile.PAX_FORMAT))]
    block = bytes(MiB)
    for _ in range(zeros // MiB):
        parts.append(comp.compress(block))
    parts.append(comp.compress(bytes(-zeros % 512 + 1024)))
    parts.append(comp.flush())
    return Layer(b"", gzip=True, blob_override=b"".join(parts))


def huge_pax_header_tar() -> bytes:
    """A pax header that claims 2 GiB, to make a reader allocate it."""
    info = tarfile.TarInfo("PaxHeaders/evil")
    info.type = tarfile.XHDTYPE
    info.size = 2 << 30
    return info.tobuf(tarfile.USTAR_FORMAT) + bytes(1024)


def thin_tgz(path: Path, entries: list[E]) -> Path:
    """A plain tar.gz of a directory (the older package format)."""
    path.write_bytes(gzip.compress(tar_bytes(entries), mtime=0))
    return path


@dataclass
class Case:
    """One hostile archive and the rejection it must get."""

    name: str
    reason: str
    entry: str                      # fnmatch pattern for PackageRejected.entry
    build: Callable[[Path], Path]
    limits: PackageLimits = field(default_factory=PackageLimits)


def _oci(*layers_entries: list[E], **kw: Any) -> Callable[[Path], Path]:
    return lambda p: write_oci(p, [layer(entries) for entries in layers_entries], **kw)


def _label(manifest: dict[str, Any]) -> dict[str, str]:
    return {"dev.mediagate.manifest": json.dumps(manifest), "dev.mediagate.root": "src"}


def _tamper_layer(members: dict[str, bytes]) -> None:
    name = layer_member(members)
    members[name] = members[name][:-1] + b"X"


def _drop_layer(members: dict[str, bytes]) -> None:
    del members[layer_member(members)]


def _truncate(path: Path) -> Path:
    write_oci(path, [layer([*good_entries(), E("src/w.bin", data=bytes(range(256)) * 400)])])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _sizes(manifest: dict[str, Any]) -> None:
    manifest["layers"][0]["size"] += 1


def _diff_ids(config: dict[str, Any]) -> None:
    config["rootfs"]["diff_ids"][0] = sha(b"something else")


def _zstd(path: Path) -> Path:
    blob = b"\x28\xb5\x2f\xfd" + bytes(100)
    lay = Layer(tar_bytes(good_entries()), blob_override=blob,
                media_type="application/vnd.oci.image.layer.v1.tar+zstd")
    return write_oci(path, [lay], config_patch=lambda c: c["rootfs"].update(diff_ids=[sha(blob)]))


CASES: list[Case] = [
    Case("dotdot", "path-traversal", "../evil.py",
         _oci([*good_entries(), E("../evil.py", data=b"x")])),
    Case("dotdot-nested", "path-traversal", "src/../../etc/cron.d/x",
         _oci([*good_entries(), E("src/../../etc/cron.d/x", data=b"* * * * * root sh")])),
    Case("absolute-path", "absolute-path", "/etc/passwd",
         _oci([*good_entries(), E("/etc/passwd", data=b"root::0:0")])),
    Case("symlink-out", "link-escape", "src/passwd",
         _oci([*good_entries(), E("src/passwd", "symlink", link="../../etc/passwd")])),
    Case("symlink-absolute", "link-escape", "src/passwd",
         _oci([*good_entries(), E("src/passwd", "symlink", link="/etc/passwd")])),
    Case("symlink-chain-across-layers", "link-escape", "src/deep/a",
         _oci([*good_entries(), E("src/deep", "dir"), E("src/deep/b", "symlink", link="..")],
              [E("src/deep/a", "symlink", link="b/../outside")])),
    Case("write-through-symlink", "path-through-link", "src/sub/evil.py",
         _oci([*good_entries(), E("src/sub", "symlink", link="../..")],
              [E("src/sub/evil.py", data=b"pwned")])),
    Case("hardlink-outside", "hardlink-escape", "src/shadow",
         _oci([*good_entries(), E("src/shadow", "hardlink", link="../../etc/shadow")])),
    Case("hardlink-across-layers", "hardlink-escape", "src/w2.bin",
         _oci([*good_entries(), E("src/w.bin", data=b"weights")],
              [E("src/w2.bin", "hardlink", link="src/w.bin")])),
    Case("char-device", "device-file", "src/null", _oci([*good_entries(), E("src/null", "char")])),
    Case("block-device", "device-file", "src/sda", _oci([*good_entries(), E("src/sda", "block")])),
    Case("fifo", "fifo", "src/pipe", _oci([*good_entries(), E("src/pipe", "fifo")])),
    Case("unknown-entry-type", "special-file", "src/door", _oci([*good_entries(), E("src/door", "door")])),
    Case("sparse-file", "special-file", "src/sparse", _oci([*good_entries(), E("src/sparse", "sparse")])),
    Case("setuid", "setuid", "src/run.sh",
         _oci([*good_entries(), E("src/run.sh", data=b"#!/bin/sh", mode=0o4755)])),
    Case("setgid", "setgid", "src/run.sh",
         _oci([*good_entries(), E("src/run.sh", data=b"#!/bin/sh", mode=0o2755)])),
    Case("sticky-dir", "sticky-bit", "src/tmp", _oci([*good_entries(), E("src/tmp", "dir", mode=0o1777)])),
    Case("duplicate-entry", "duplicate-entry", "src/predict.py",
         _oci([*good_entries(), E("src/predict.py", data=b"import os")])),
    Case("gzip-bomb", "compression-bomb", "blobs/sha256/*",
         lambda p: write_oci(p, [gzip_bomb_layer()])),
    Case("archive-gzip-bomb", "compression-bomb", "(archive)",
         lambda p: thin_tgz(p, [*good_entries("m"), E("m/zeros.bin", data=bytes(64 * MiB))])),
    Case("size-bomb", "size-limit", "src/b.bin",
         _oci([*good_entries(), E("src/a.bin", data=bytes(600_000)), E("src/b.bin", data=bytes(600_000))]),
         PackageLimits(max_total_bytes=1 * MiB)),
    Case("file-too-large", "file-too-large", "src/huge.bin",
         _oci([*good_entries(), E("src/huge.bin", size=40 << 30)])),
    Case("file-count-bomb", "too-many-files", "src/f*",
         _oci([*good_entries(), *(E(f"src/f{i}") for i in range(300))]), PackageLimits(max_files=200)),
    Case("pax-header-bomb", "header-too-large", "PaxHeaders/evil",
         lambda p: write_oci(p, [Layer(huge_pax_header_tar())])),
    Case("blob-digest-mismatch", "digest-mismatch", "blobs/sha256/*",
         _oci(good_entries(), members_patch=_tamper_layer)),
    Case("descriptor-size-mismatch", "size-mismatch", "blobs/sha256/*",
         _oci(good_entries(), manifest_patch=_sizes)),
    Case("diff-id-mismatch", "diff-id-mismatch", "blobs/sha256/*",
         _oci(good_entries(), config_patch=_diff_ids)),
    Case("missing-blob", "missing-blob", "blobs/sha256/*", _oci(good_entries(), members_patch=_drop_layer)),
    Case("bad-index", "bad-layout", "index.json",
         _oci(good_entries(), members_patch=lambda m: m.update({"index.json": b"{not json"}))),
    Case("layout-without-index", "bad-layout", "blobs/sha256/*",
         _oci(good_entries(), members_patch=lambda m: m.pop("index.json"))),
    Case("zstd-layer", "unsupported-media-type", "blobs/sha256/*", _zstd),
    Case("truncated", "malformed-archive", "blobs/sha256/*", _truncate),
    Case("not-an-archive", "malformed-archive", "(archive)",
         lambda p: (p.write_bytes(b"MZ\x90\x00" + bytes(range(256)) * 8), p)[1]),
    Case("missing-manifest", "missing-manifest", "mediagate.toml",
         _oci([E("src", "dir"), E("src/predict.py", data=GOOD_PY)])),
    Case("bad-manifest-toml", "bad-manifest", "src/mediagate.toml",
         _oci(good_entries(toml=b"[model\nname = "))),
    Case("bad-manifest-label", "bad-manifest", "label dev.mediagate.manifest",
         _oci(good_entries(), labels=_label({"name": "x", "entrypoint": "predict:Echo",
                                             "billable_unit": "bitcoins"}))),
    Case("entrypoint-module-missing", "entrypoint-missing", "src/missing.py",
         _oci(good_entries(toml=b'[model]\nname = "m"\nentrypoint = "missing:Echo"\n'))),
    Case("entrypoint-class-missing", "entrypoint-missing", "src/predict.py",
         _oci(good_entries(toml=b'[model]\nname = "m"\nentrypoint = "predict:Nope"\n'))),
    Case("entrypoint-whited-out", "entrypoint-missing", "src/predict.py",
         _oci(good_entries(), [E("src/.wh.predict.py")])),
    Case("symlink-loop", "link-escape", "src/a",
         _oci([*good_entries(), E("src/a", "symlink", link="b"), E("src/b", "symlink", link="a")])),
    Case("schema-kwargs", "bad-schema", "src/predict.py",
         _oci(good_entries(py=b"class Echo:\n    def predict(self, **kw):\n        pass\n"))),
    Case("whiteout-dotdot", "path-traversal", "src/.wh...",
         _oci(good_entries(), [E("src/.wh...")])),
    Case("ambiguous-model-dirs", "ambiguous-manifest", "b/mediagate.toml",
         lambda p: thin_tgz(p, [*good_entries("a"), *good_entries("b")])),
    Case("directory-archive-traversal", "path-traversal", "model/../../evil.py",
         lambda p: thin_tgz(p, [*good_entries("model"), E("model/../../evil.py", data=b"x")])),
]
