"""The malicious-archive corpus: every archive is refused with its reason and entry."""

from __future__ import annotations

import fnmatch
import os
import tempfile
from pathlib import Path

import pytest

from partners.packaging import PackageRejected, validate_archive, validate_stream
from tests.partners.packaging.packaging_corpus import CASES, Case, good_entries, layer, write_oci


def _snapshot(*dirs: Path) -> set[str]:
    found = set()
    for d in dirs:
        for root, dirnames, files in os.walk(d):
            found.update(os.path.join(root, n) for n in dirnames + files)
    return found


def test_corpus_is_big_enough():
    assert len(CASES) >= 15
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_archive_is_rejected(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    archive = case.build(tmp_path / "package.tar")
    # Any temporary file the reader made would land here (the shared /tmp is busy).
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    before = _snapshot(tmp_path)
    with pytest.raises(PackageRejected) as caught:
        validate_archive(archive, case.limits)
    err = caught.value
    assert err.reason == case.reason, str(err)
    assert err.entry is not None and fnmatch.fnmatchcase(err.entry, case.entry), str(err)
    assert err.status_code == 422
    problem = err.problem()
    assert problem["type"].endswith(f"/package-{case.reason}")
    assert problem["entry"] == err.entry
    assert _snapshot(tmp_path) == before
    assert list(private_tmp.iterdir()) == []


class RecordingSink:
    """Stores blobs in memory, like the artifact store would, and records discards."""

    def __init__(self):
        self.open: dict[str, bytearray] = {}
        self.committed: dict[str, tuple[str, int]] = {}
        self.discarded: list[str] = []

    def open_blob(self, path):
        sink = self

        class Writer:
            def write(self, data):
                sink.open[path] += data

            def commit(self, digest, size):
                sink.committed[path] = (digest, size)

            def discard(self):
                sink.discarded.append(path)
                sink.open.pop(path, None)
                sink.committed.pop(path, None)

        self.open[path] = bytearray()
        return Writer()


@pytest.mark.parametrize("name", ["blob-digest-mismatch", "diff-id-mismatch", "missing-manifest",
                                  "gzip-bomb"])
def test_rejected_package_leaves_nothing_in_the_sink(name: str, tmp_path: Path):
    case = next(c for c in CASES if c.name == name)
    archive = case.build(tmp_path / "package.tar")
    sink = RecordingSink()
    with open(archive, "rb") as f, pytest.raises(PackageRejected):
        validate_stream(f, case.limits, sink=sink)
    assert sink.discarded
    assert sink.open == {} and sink.committed == {}


def test_accepted_package_keeps_exactly_its_blobs_in_the_sink(tmp_path: Path):
    archive = write_oci(tmp_path / "ok.tar", [layer(good_entries(), gz=True)])
    sink = RecordingSink()
    with open(archive, "rb") as f:
        package = validate_stream(f, sink=sink)
    kept = {b.path for b in package.blobs}
    assert set(sink.committed) == kept
    assert {b.role for b in package.blobs} == {"manifest", "config", "layer"}
    for blob in package.blobs:
        assert sink.committed[blob.path] == (blob.digest, blob.size)
        assert len(sink.open[blob.path]) == blob.size
    assert "oci-layout" in sink.discarded and "index.json" in sink.discarded
