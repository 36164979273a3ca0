"""The housekeeping round: what partners left behind is swept, and some worker does the
rounds even while Redis is away."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from sqlalchemy.engine import Engine

from gateway import sweeps
from kit.storage import get_storage
from tests.faults.private_services import free_port
from tests.support import ROOT


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


LEADER = """
import sys, time
from gateway import sweeps
print(sweeps._leader(1.0), flush=True)
time.sleep(float(sys.argv[1]))
"""


def _leader_process(hold_s: float, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", LEADER, str(hold_s)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, text=True)


def test_with_redis_away_one_worker_holds_the_rounds_through_the_database(committed: Engine) -> None:
    # A Redis that answers nothing: the rounds must not stop, and must not run everywhere.
    env = {**os.environ, "MEDIAGATE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    first = _leader_process(6, env)
    assert first.stdout.readline().strip() == "True"
    second = _leader_process(0, env)
    assert second.stdout.readline().strip() == "False"
    second.wait(timeout=30)
    first.wait(timeout=30)  # its lock goes with it
    third = _leader_process(0, env)
    assert third.stdout.readline().strip() == "True"
    third.wait(timeout=30)
