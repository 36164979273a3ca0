"""Random and mutated archives: the reader answers PackageRejected or a safe package, never
anything else, and nothing it extracts lands outside the target directory."""

from __future__ import annotations

import functools
import io
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from partners.packaging import PackageLimits, PackageRejected, build_package, validate_stream
from tests.partners.packaging.packaging_corpus import (
    E,
    Layer,
    good_entries,
    tar_bytes,
    thin_tgz,
    write_oci,
)

LIMITS = PackageLimits(max_total_bytes=8 << 20, max_files=500, ratio_slack_bytes=1 << 20,
                       max_archive_bytes=16 << 20)
FUZZ = settings(max_examples=250, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@functools.cache
def seeds() -> tuple[bytes, ...]:
    """Valid archives of each format to mutate."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = root / "m"
        model.mkdir()
        (model / "mediagate.toml").write_text('[model]\nname = "f"\nentrypoint = "predict:Echo"\n')
        (model / "predict.py").write_text("class Echo:\n    def predict(self, n: int = 1) -> int:\n        return n\n")
        (model / "w.bin").write_bytes(bytes(range(256)) * 4)
        (model / "link").symlink_to("w.bin")
        built = build_package(model, root / "m.oci.tar").path.read_bytes()
        layered = write_oci(root / "l.tar", [Layer(tar_bytes(good_entries()), gzip=True),
                                             Layer(tar_bytes([E("src/.wh.predict.py"),
                                                              E("src/predict.py", data=b"class Echo: pass")]))])
        thin = thin_tgz(root / "t.tgz", good_entries("model"))
        return built, layered.read_bytes(), thin.read_bytes()


def check(data: bytes) -> None:
    """Validate; on success, extract and make sure nothing escapes the target."""
    try:
        package = validate_stream(io.BytesIO(data), LIMITS)
    except PackageRejected:
        return
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "out"
        try:
            package.extract_to(dest, whole_tree=True, limits=LIMITS)
        except PackageRejected:
            return
        real = os.path.realpath(dest)
        for dirpath, dirnames, filenames in os.walk(dest):
            for name in dirnames + filenames:
                resolved = os.path.realpath(os.path.join(dirpath, name))
                assert resolved == real or resolved.startswith(real + os.sep), name


@FUZZ
@given(seed=st.sampled_from([0, 1, 2]),
       flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=6),
       cut=st.one_of(st.none(), st.floats(0, 1)),
       junk=st.binary(max_size=64))
def test_mutated_archives(seed: int, flips: list[tuple[float, int]], cut: float | None, junk: bytes):
    data = bytearray(seeds()[seed])
    for where, value in flips:
        data[int(where * len(data))] = value
    if cut is not None:
        del data[int(cut * len(data)):]
        data += junk
    check(bytes(data))


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes):
    check(data)


# Mostly plausible names, so that most examples get past the per-entry checks and
# exercise layering, whiteouts and links; the hostile parts still turn up.
_parts = st.sampled_from(["src"] * 6 + ["a"] * 4 + ["b"] * 3 + [
    "predict.py", "mediagate.toml", ".wh.a", ".wh.b", ".wh..wh..opq", "..", ".", "", ".wh...", "/"])
_paths = st.lists(_parts, min_size=1, max_size=4).map("/".join)
_targets = st.one_of(_paths, st.sampled_from(["..", "../..", "/etc/passwd", ".", "a", "src/a", "b/.."]))
_entries = st.builds(
    E,
    name=_paths,
    kind=st.sampled_from(["file"] * 4 + ["dir"] * 3 + ["symlink"] * 3 + ["hardlink"] * 2 + ["fifo", "char"]),
    data=st.binary(max_size=16),
    mode=st.sampled_from([0o644] * 6 + [0o755] * 3 + [0o4755, 0o1777]),
    link=_targets,
)


_mostly = st.sampled_from([True, True, True, False])


def _tame(entries: list[E]) -> list[E]:
    """The same entries minus what per-entry checks refuse, so the tree logic gets exercised."""
    out: dict[str, E] = {}
    for e in entries:
        name = "/".join(p for p in e.name.split("/") if p not in ("", ".", "..", ".wh...")) or "src"
        kind, link = ("file" if e.kind in ("fifo", "char") else e.kind), e.link
        if kind == "hardlink":
            files = [f.name for f in out.values() if f.kind == "file"]
            kind, link = ("hardlink", files[len(link) % len(files)]) if files else ("file", "")
        out.setdefault(name, E(name, kind, e.data, e.mode & 0o777, link))
    return list(out.values())


@FUZZ
@given(layers=st.lists(st.tuples(st.lists(_entries, max_size=8), st.booleans(), _mostly),
                       min_size=1, max_size=3),
       with_model=_mostly)
def test_random_layer_trees(layers: list[tuple[list[E], bool, bool]], with_model: bool):
    built = []
    for i, (entries, gz, tame) in enumerate(layers):
        if tame:
            entries = _tame(entries)
        if i == 0 and with_model:
            entries = [*good_entries(), *(e for e in entries if e.name not in
                                          ("src", "src/predict.py", "src/mediagate.toml"))]
        built.append(Layer(tar_bytes(entries), gzip=gz))
    with tempfile.TemporaryDirectory() as tmp:
        data = write_oci(Path(tmp) / "p.tar", built).read_bytes()
    check(data)
