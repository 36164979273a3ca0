"""Open a model package archive and read what is in it.

Reading and validating are one pass (see validate.py): a package is only ever looked at
through the checks, so `open_package` returns the same `ValidatedPackage`. The image
structure (index -> manifest -> config -> layers) is resolved in layout.py, the layers
are applied with their whiteouts in tree.py, and the manifest is found (config label,
else `mediagate.toml`, else `cog.yaml`) with its schemas derived in model.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

from partners.packaging import layout as oci
from partners.packaging.extract import open_layer
from partners.packaging.rules import PackageLimits, PackageRejected
from partners.packaging.tarsafe import CHUNK, Counting, Inflater, TarStream, normalize
from partners.packaging.validate import (
    BlobOpener,
    ValidatedPackage,
    validate_archive,
    validate_stream,
)


def open_package(source: Path | str | BinaryIO, limits: PackageLimits | None = None) -> ValidatedPackage:
    """Read and validate the package at a path (or from a binary file object)."""
    if isinstance(source, str | Path):
        return validate_archive(source, limits)
    return validate_stream(source, limits)


def read_file(package: ValidatedPackage, path: str, *, open_blob: BlobOpener | None = None,
              max_bytes: int = 16 << 20) -> bytes:
    """The content of one file of the final tree (`path` relative to the model directory).

    Streams only the layer that holds it; for showing a partner their own files, not for
    weights (`max_bytes` bounds what is returned).
    """
    full = f"{package.root}/{path}" if package.root else path
    info = package.files.get(full)
    if info is None or info.kind not in ("file", "hardlink"):
        raise KeyError(path)
    if info.size > max_bytes:
        raise ValueError(f"{path} is {info.size} bytes, more than {max_bytes}")
    origin = info.target if info.kind == "hardlink" else full
    layer = package.layers[info.layer]
    limits = PackageLimits()
    with open_layer(package, info.layer, open_blob, limits) as stream:
        data: Counting = Counting(stream)
        if layer.media_type in oci.GZIP_TYPES:
            data = Counting(Inflater(data, limits, entry=layer.path, layer=layer.path))
        tar = TarStream(data, limits, layer=layer.path or None)
        for member in tar:
            if member.isfile() and normalize(member.name, limits, layer=layer.path) == origin:
                reader = tar.data(member)
                parts = []
                while chunk := reader.read(CHUNK):
                    parts.append(chunk)
                content = b"".join(parts)
                if info.digest and f"sha256:{hashlib.sha256(content).hexdigest()}" != info.digest:
                    raise PackageRejected("the stored file does not match its digest", entry=full,
                                          reason="digest-mismatch")
                return content
    raise PackageRejected("the stored layer lacks a validated file", entry=full,
                          reason="digest-mismatch")
