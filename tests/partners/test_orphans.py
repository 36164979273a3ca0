"""The orphan sweep: objects an upload left when its process was killed, blob rows no version
names and spools of ended uploads go once past the grace period; nothing in use ever does."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from kit.db import session_scope, utcnow
from kit.settings import get_settings
from partners.orphans import DEFAULT_GRACE, purge_orphans
from partners.tenancy import repository
from partners.tenancy.packages import artifact_store
from tests.partners.packaging.packaging_corpus import E, good_entries, layer, tar_bytes, write_oci
from tests.support import ROOT

LATER = dt.timedelta(minutes=1)
# Ingests a package read slowly from a file, as a long upload would, until it is killed.
SLOW_INGEST = """
import sys, time
from kit.db import session_scope
from partners.tenancy.packages import ingest_package

def slowly():
    with open(sys.argv[1], "rb") as f:
        while chunk := f.read(1 << 20):
            yield chunk
            time.sleep(0.05)

with session_scope() as session:
    ingest_package(session, sys.argv[2], slowly())
"""


def partner_objects(partner_id: str) -> list[Path]:
    root = get_settings().storage_root / "artifacts" / partner_id
    return [p for p in root.rglob("*") if p.is_file()]


@pytest.mark.timeout(120)
def test_what_a_killed_upload_left_is_swept_after_the_grace_period(committed: Engine, tmp_path: Path) -> None:
    archive = write_oci(tmp_path / "big.tar", [layer(good_entries()),
                                               layer([E("src/w.bin", data=os.urandom(24 << 20))])])
    child = subprocess.Popen([sys.executable, "-c", SLOW_INGEST, str(archive), "par_crash"], cwd=ROOT,
                             env=dict(os.environ), start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        # Killed once the layer's ciphertext is being written (past its first 4 MiB chunk).
        while not any(p.stat().st_size > 4 << 20 for p in partner_objects("par_crash")):
            assert child.poll() is None and time.monotonic() < deadline, "the upload did not start writing"
            time.sleep(0.05)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    left = partner_objects("par_crash")
    assert left
    with session_scope() as s:  # an upload in flight is never swept
        assert purge_orphans(s).objects == 0
    assert partner_objects("par_crash") == left
    with session_scope() as s:
        purged = purge_orphans(s, now=utcnow() + DEFAULT_GRACE + LATER)
    assert purged.objects >= len(left)
    assert partner_objects("par_crash") == []


def _version_blobs() -> tuple[str, list[str]]:
    from partners import service

    with session_scope() as s:
        partner, _ = service.create_partner(s, slug="kept", name="Kept")
        model = service.create_model(s, partner, slug="m")
        version = service.create_version_from_stream(s, partner, model, [tar_bytes(good_entries(root=""))])
        return partner.id, [b["digest"] for b in version.package["blobs"]]


def test_blob_rows_no_version_names_are_swept_and_their_objects_after_commit(committed: Engine) -> None:
    store = artifact_store()
    partner_id, kept = _version_blobs()
    with session_scope() as s:
        loose = store.put_blob(s, partner_id, [b"named by no version"])
        audited = store.put_blob(s, partner_id, [b"decrypted once, so its audit trail stays"])
        b"".join(store.open_blob(s, partner_id, audited, actor="t", deployment_id=None, reason="t"))
    with session_scope() as s:
        loose_path = store.storage.local_path(store.blob(s, partner_id, loose).storage_key)
    later = utcnow() + DEFAULT_GRACE + LATER

    # An upload that just found this content stored holds its row: the sweep passes it by.
    with session_scope() as uploading:
        assert repository.blob(uploading, partner_id, loose, lock=True) is not None
        with session_scope() as s:
            assert purge_orphans(s, now=later).blobs == 0

    with pytest.raises(RuntimeError), session_scope() as s:
        assert purge_orphans(s, now=later).blobs == 1
        raise RuntimeError("the sweep's transaction fails")
    assert loose_path.exists()  # rolled back: the row is back, so its ciphertext must be too

    with session_scope() as s:
        assert purge_orphans(s, now=utcnow()).blobs == 0  # not past the grace period yet
        purged = purge_orphans(s, now=later)
        assert purged.blobs == 1
        assert loose_path.exists()  # deleted only once the sweep commits
    assert not loose_path.exists()
    with session_scope() as s:
        assert not store.has_blob(s, partner_id, loose)
        assert store.has_blob(s, partner_id, audited)
        for digest in kept:
            assert b"".join(store.open_blob(s, partner_id, digest, actor="t", deployment_id=None, reason="t"))


def test_spools_of_ended_uploads_go_and_open_ones_stay(committed: Engine) -> None:
    from partners import service, uploads

    with session_scope() as s:
        partner, _ = service.create_partner(s, slug="spools", name="Spools")
        service.create_model(s, partner, slug="m")
        still_open = uploads.create_upload(s, partner, model_slug="m")
        ended = uploads.create_upload(s, partner, model_slug="m")
        ended.status = "aborted"  # as if the process died before deleting its file
        open_path, ended_path = uploads.part_path(still_open), uploads.part_path(ended)
    legacy = get_settings().data_dir / "incoming" / "upload-left-by-an-earlier-release"
    legacy.parent.mkdir(parents=True, exist_ok=True)
    legacy.write_bytes(b"plaintext of an old upload")
    with session_scope() as s:
        assert purge_orphans(s).spools == 0
        purged = purge_orphans(s, now=utcnow() + DEFAULT_GRACE + LATER)
    assert purged.spools == 2
    assert open_path.exists() and not ended_path.exists() and not legacy.exists()
