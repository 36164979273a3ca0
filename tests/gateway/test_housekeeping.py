"""The housekeeping round sweeps what partners left behind, stored objects included."""

from __future__ import annotations

import os
import time

from sqlalchemy.engine import Engine

from gateway import sweeps
from kit.storage import get_storage


def test_an_old_object_no_blob_names_is_swept_by_the_housekeeping_round(committed: Engine) -> None:
    storage = get_storage()
    stray = storage.local_path("artifacts/par_gone/ab/blob_stray")
    fresh = storage.local_path("artifacts/par_gone/cd/blob_fresh")
    for path in (stray, fresh):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"ciphertext nobody refers to")
    two_days_ago = time.time() - 2 * 86400
    os.utime(stray, (two_days_ago, two_days_ago))

    sweeps.purge_partner_leftovers()

    assert not stray.exists()
    assert fresh.exists()  # within the grace period an upload may still be writing it
