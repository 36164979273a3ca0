"""Streaming validation with flat memory, and extraction from a blob store."""

from __future__ import annotations

import io
import json
import os
import tracemalloc
from pathlib import Path

import pytest

from partners.packaging import (
    PackageLimits,
    PackageRejected,
    ValidatedPackage,
    build_package,
    validate_archive,
    validate_stream,
)
from tests.partners.packaging.packaging_corpus import E, good_entries, layer, write_oci
from tests.partners.packaging.test_packaging_build import make_model
from tests.partners.packaging.test_packaging_corpus import RecordingSink

MiB = 1 << 20


class OneWay(io.RawIOBase):
    """A non-seekable upload body that hands out data in uneven pieces."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), 301, len(self._data) - self._pos)
        b[:n] = self._data[self._pos:self._pos + n]
        self._pos += n
        return n


def test_chunks_and_one_way_streams_give_the_same_package(tmp_path: Path):
    result = build_package(make_model(tmp_path / "m"), tmp_path / "m.oci.tar")
    data = result.path.read_bytes()
    reference = validate_archive(result.path)
    from_chunks = validate_stream(data[i:i + 4099] for i in range(0, len(data), 4099))
    from_pipe = validate_stream(OneWay(data))
    for package in (from_chunks, from_pipe, validate_stream(data)):
        assert package.manifest == reference.manifest
        assert package.files == reference.files
        assert package.layers == reference.layers
    with pytest.raises(ValueError, match="open_blob"):
        from_pipe.extract_to(tmp_path / "nowhere")


@pytest.mark.parametrize("gz", [False, True], ids=["tar-layer", "gzip-layer"])
def test_memory_stays_flat_for_big_layers(gz: bool, tmp_path: Path):
    weights = os.urandom(32 * MiB)
    archive = write_oci(tmp_path / "big.tar", [layer([*good_entries(), E("src/model.safetensors",
                                                                       data=weights)], gz=gz)])
    del weights
    tracemalloc.start()
    try:
        with open(archive, "rb") as f:
            package = validate_stream(f)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert package.files["src/model.safetensors"].size == 32 * MiB
    assert peak < 12 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_sandbox_extracts_from_the_store_with_stored_metadata(tmp_path: Path):
    result = build_package(make_model(tmp_path / "m"), tmp_path / "m.oci.tar")
    sink = RecordingSink()
    with open(result.path, "rb") as f:
        package = validate_stream(f, sink=sink)
    stored = json.loads(json.dumps(package.to_dict()))
    store = {sink.committed[path][0]: bytes(data) for path, data in sink.open.items()}
    again = ValidatedPackage.from_dict(stored)
    assert again.manifest == package.manifest and again.files == package.files
    dest = again.extract_to(tmp_path / "tmpfs" / "replica-1", open_blob=lambda d: io.BytesIO(store[d]))
    assert (dest / "predict.py").read_bytes() == (tmp_path / "m" / "predict.py").read_bytes()
    assert (dest / "model.safetensors").read_bytes() == (tmp_path / "m" / "model.safetensors").read_bytes()

    weights = next(x for x in again.layers if x.media_type.endswith(".tar"))
    store[weights.digest] = store[weights.digest].replace(b"\x00weights", b"\x00WEIGHTS", 1)
    target = tmp_path / "tmpfs" / "replica-2"
    with pytest.raises(PackageRejected) as caught:
        again.extract_to(target, open_blob=lambda d: io.BytesIO(store[d]))
    assert caught.value.reason == "digest-mismatch"
    assert not target.exists()
    existing = tmp_path / "tmpfs" / "replica-3"
    existing.mkdir()
    with pytest.raises(PackageRejected):
        again.extract_to(existing, open_blob=lambda d: io.BytesIO(store[d]))
    assert existing.is_dir() and list(existing.iterdir()) == []
    with pytest.raises(ValueError, match="empty"):
        again.extract_to(dest, open_blob=lambda d: io.BytesIO(store[d]))


def test_whole_tree_extraction_keeps_absolute_links_inside(tmp_path: Path):
    lay = layer([E("usr", "dir"), E("usr/lib", "dir"), E("usr/lib/libx.so", data=b"elf"),
                 E("lib", "symlink", link="/usr/lib"), *good_entries()])
    package = validate_archive(write_oci(tmp_path / "p.tar", [lay]))
    dest = package.extract_to(tmp_path / "all", whole_tree=True)
    assert os.readlink(dest / "lib") == "usr/lib"
    assert (dest / "lib" / "libx.so").read_bytes() == b"elf"
    assert (dest / "src" / "predict.py").is_file()
    assert sorted(os.listdir(package.extract_to(tmp_path / "model"))) == ["mediagate.toml", "predict.py"]


def test_gzip_wrapped_image_layout(tmp_path: Path):
    import gzip

    archive = write_oci(tmp_path / "p.tar", [layer(good_entries())])
    wrapped = tmp_path / "p.tar.gz"
    wrapped.write_bytes(gzip.compress(archive.read_bytes()))
    package = validate_archive(wrapped)
    assert package.format == "oci"
    assert (package.extract_to(tmp_path / "out") / "predict.py").is_file()


def test_archive_size_limit(tmp_path: Path):
    archive = write_oci(tmp_path / "p.tar", [layer([*good_entries(), E("src/w", data=bytes(200_000))])])
    with pytest.raises(PackageRejected) as caught:
        validate_archive(archive, PackageLimits(max_archive_bytes=100_000))
    assert (caught.value.reason, caught.value.entry) == ("size-limit", "(archive)")
