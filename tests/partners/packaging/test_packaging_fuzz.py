"""Random and mutated archives: the reader answers PackageRejected or a safe package, never
anything else, and nothing it extracts lands outside the target directory."""

from __future__ import annotations

import collections
import functools
import io
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

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


def check(data: bytes) -> str:
    """Validate; on success, extract and make sure nothing escapes the target. The outcome:
    the rejection reason, or `accepted`."""
    try:
        package = validate_stream(io.BytesIO(data), LIMITS)
    except PackageRejected as exc:
        return exc.reason
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "out"
        try:
            package.extract_to(dest, whole_tree=True, limits=LIMITS)
        except PackageRejected as exc:
            return f"extract:{exc.reason}"
        real = os.path.realpath(dest)
        for dirpath, dirnames, filenames in os.walk(dest):
            for name in dirnames + filenames:
                resolved = os.path.realpath(os.path.join(dirpath, name))
                assert resolved == real or resolved.startswith(real + os.sep), name
    return "accepted"


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


# -- a time-bounded mutation campaign ---------------------------------------------------------
#
# Flipped bytes in an archive mostly meet the digest checks first. Here a valid layer's tar
# headers are mutated field by field (with the header checksum made right again) and the
# archive is rebuilt around it, so every digest matches and the layer reader itself meets the
# mutant; the OCI documents (index, manifest, config) are mutated the same way.

CAMPAIGN_S = float(os.environ.get("MEDIAGATE_PACKAGE_FUZZ_S", "20"))
CAMPAIGN_SEED = int(os.environ.get("MEDIAGATE_PACKAGE_FUZZ_SEED", "20261122"))
# Offsets and widths of the ustar header fields.
FIELDS = {"name": (0, 100), "mode": (100, 8), "uid": (108, 8), "gid": (116, 8), "size": (124, 12),
          "mtime": (136, 12), "typeflag": (156, 1), "linkname": (157, 100), "magic": (257, 6),
          "version": (263, 2), "uname": (265, 32), "devmajor": (329, 8), "devminor": (337, 8),
          "prefix": (345, 155)}
INTERESTING = {
    "name": [b"../evil", b"/etc/passwd", b"src/../../x", b"src/predict.py", b"", b"a" * 100, b"src/\xff\xfe",
             b"src//x", b"./src/x", b".wh..wh..opq", b"src/.wh.predict.py"],
    "mode": [b"0004755\x00", b"0002755\x00", b"0001777\x00", b"7777777\x00", b"-000001\x00", b"\x80" * 8],
    "size": [b"00000000000\x00", b"77777777777\x00", b"00000001000\x00", b"\x80" + b"\xff" * 11,
             b"\xff" * 12, b"-0000000001\x00", b"1e10\x00\x00\x00\x00\x00\x00\x00\x00"],
    "typeflag": [bytes([c]) for c in b"0123456789LKgxSDAVMN\x00\xff"],
    "linkname": [b"..", b"../../..", b"/etc/passwd", b"src/predict.py", b"predict.py", b"src", b"a" * 100],
    "magic": [b"ustar\x00", b"ustar ", b"\x00" * 6, b"GNUtar"],
}
PAX_RECORDS = [b"path=../../escape", b"path=/abs", b"linkpath=/etc/shadow", b"size=99999999999999",
               b"size=-1", b"path=" + b"a" * 5000, b"GNU.sparse.map=0,1", b"uid=0"]


def _headers(tar: bytes) -> list[int]:
    """Offsets of the header blocks of a tar written by tarfile."""
    offsets, at = [], 0
    while at + 512 <= len(tar) and tar[at:at + 512].strip(b"\x00"):
        offsets.append(at)
        try:
            size = int(tar[at + 124:at + 136].strip(b"\x00 ") or b"0", 8)
        except ValueError:
            break
        at += 512 + (size + 511) // 512 * 512
    return offsets


def _checksum(block: bytearray) -> None:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)


def mutate_tar(tar: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One header field of one entry set to an interesting or random value, checksum fixed."""
    data = bytearray(tar)
    offsets = _headers(tar)
    if not offsets:
        return bytes(data), "no headers"
    at = rng.choice(offsets)
    if data[at + 156:at + 157] in (b"x", b"g") and rng.random() < 0.5:
        record = rng.choice(PAX_RECORDS) + b"\n"
        record = b"%d " % (len(record) + len(str(len(record))) + 1) + record
        body = at + 512
        data[body:body + len(record)] = record
        return bytes(data), f"pax {record[:40]!r} at {at}"
    field = rng.choice(list(FIELDS))
    start, width = FIELDS[field]
    choices = INTERESTING.get(field)
    value = rng.choice(choices) if choices and rng.random() < 0.8 else rng.randbytes(rng.randint(0, width))
    value = value[:width].ljust(width, b"\x00")
    block = bytearray(data[at:at + 512])
    block[start:start + width] = value
    if rng.random() < 0.9:  # now and then a wrong checksum too
        _checksum(block)
    data[at:at + 512] = block
    return bytes(data), f"{field}={value.rstrip(bytes(1))[:40]!r} at {at}"


def _layer_tar(rng: random.Random) -> bytes:
    entries = [*good_entries(), E("src/w.bin", data=rng.randbytes(rng.randint(0, 2000))),
               E("src/sub", "dir"), E("src/sub/link", "symlink", link="../w.bin"),
               E("src/hard", "hardlink", link="src/w.bin"),
               E("src/" + "long/" * rng.randint(0, 30) + "name.txt", data=b"pax names")]
    return tar_bytes(entries)


def _mutate_document(doc: dict, rng: random.Random) -> str:
    """Set one field anywhere in a JSON document to a hostile value."""
    paths: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        for key, value in items:
            paths.append((node, key))
            walk(value)

    walk(doc)
    if not paths:
        return "empty"
    node, key = rng.choice(paths)
    node[key] = rng.choice([None, -1, 0, 2**63, "", "sha256:" + "0" * 64, "sha512:abc", "../../etc",
                            [], {}, "a" * 10_000, 1.5, True, "application/vnd.oci.image.index.v1+json"])
    return f"{key}={node[key]!r:.40}"


def mutant(rng: random.Random, tmp: Path) -> tuple[bytes, str]:
    """A valid archive with one deep mutation, its digests consistent with the mutant."""
    tar = _layer_tar(rng)
    how = "none"
    patches: dict[str, Any] = {}
    kind = rng.choice(["layer", "layer", "layer", "manifest", "config", "members"])
    if kind == "layer":
        for _ in range(rng.randint(1, 3)):
            tar, how = mutate_tar(tar, rng)
    elif kind == "manifest":
        patches["manifest_patch"] = lambda m: setattr(mutant, "how", _mutate_document(m, rng))
    elif kind == "config":
        patches["config_patch"] = lambda c: setattr(mutant, "how", _mutate_document(c, rng))
    else:
        def members(ms: dict[str, bytes]) -> None:
            index = json.loads(ms["index.json"])
            mutant.how = "index " + _mutate_document(index, rng)  # type: ignore[attr-defined]
            ms["index.json"] = json.dumps(index).encode()

        patches["members_patch"] = members
    data = write_oci(tmp / "m.tar", [Layer(tar, gzip=rng.random() < 0.5)], **patches).read_bytes()
    if kind == "members" and rng.random() < 0.3:  # the outer archive's own headers too
        data, outer = mutate_tar(data, rng)
        how = f"outer {outer}"
    return data, f"{kind}: {getattr(mutant, 'how', how) if kind != 'layer' else how}"


def test_mutation_campaign_for_a_bounded_time(tmp_path: Path) -> None:
    """Mutants for CAMPAIGN_S seconds (20 in CI): each is refused with a reason or is safe."""
    rng = random.Random(CAMPAIGN_SEED)
    deadline = time.monotonic() + CAMPAIGN_S
    outcomes: collections.Counter[str] = collections.Counter()
    runs = 0
    while time.monotonic() < deadline:
        seed = rng.randrange(2**32)
        data, how = mutant(random.Random(seed), tmp_path)
        try:
            outcome = check(data)
        except BaseException as exc:
            (tmp_path / f"mutant-{seed}.tar").write_bytes(data)
            raise AssertionError(f"mutant {seed} ({how}) raised {exc!r}; saved as mutant-{seed}.tar") from exc
        outcomes[outcome] += 1
        runs += 1
    assert runs >= 50, runs
    # The mutants reach the reader's deep checks, not only its first one.
    assert outcomes["accepted"] > 0 and len(outcomes) >= 5, outcomes
