"""Sandbox limits as a model meets them: the memory cap (a cgroup v2 `memory.max` where the
host lets the supervisor make groups, else RLIMIT_AS) and the quotas of the tmpfs it writes
to. Each runs the packaged probe model in a real bubblewrap sandbox."""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from partners.tenancy import cgroups
from partners.tenancy.runner import ModelFailed, Replica, ReplicaError
from partners.tenancy.sandbox import MiB
from tests.partners.tenancy.test_escapes import ask, probe_files, start, tar_layer

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/bwrap")
                                and not os.environ.get("MEDIAGATE_BWRAP"), reason="needs bubblewrap")


def _cgroup_v2_memory() -> bool:
    """Whether this host lets the supervisor cap a sandbox's memory with cgroup v2."""
    found = cgroups.parent_group()
    if found is None or found[1] != 2:
        return False
    return "memory" in (found[0] / "cgroup.subtree_control").read_text().split()


needs_cgroup_memory = pytest.mark.skipif(
    not _cgroup_v2_memory(),
    reason="no cgroup v2 memory controller to delegate here: RLIMIT_AS holds (test_escapes)")


def _predict(replica: Replica, action: str, arg: object, dest: Path) -> dict:
    return replica.predict(f"req_{action}_{time.monotonic_ns()}", {"action": action, "arg": json.dumps(arg)},
                           dest, timeout=60)


def test_memory_cap_is_the_cgroup_one_where_cgroup_v2_allows() -> None:
    with start(memory_bytes=512 * MiB, package_tmpfs_bytes=64 * MiB) as box:
        limits = ask(box, "limits")
        if not _cgroup_v2_memory():
            assert box.memory_cap == "rlimit"
            assert limits["as"] == 512 * MiB
            return
        assert box.memory_cap == "cgroup" and box.cgroup is not None
        group = box.cgroup.path
        # The model's memory plus the package it was given, in RAM; no swap to hide in.
        assert int((group / "memory.max").read_text()) == 576 * MiB
        assert (group / "memory.swap.max").read_text().strip() == "0"
        assert (group / "memory.oom.group").read_text().strip() == "1"
        assert limits["as"] == limits["data"] == resource.RLIM_INFINITY
        with open(f"/proc/{box.sandbox_pid}/cgroup") as f:
            assert f.read().strip().endswith("/" + group.name)


@needs_cgroup_memory
def test_allocating_past_the_cgroup_cap_kills_the_replica_and_says_why(tmp_path: Path) -> None:
    box = start(memory_bytes=256 * MiB, package_tmpfs_bytes=32 * MiB)
    replica = Replica("dep_oom", "rep_oom", box, 1)
    try:
        with pytest.raises(ReplicaError, match="ran out of memory") as caught:
            _predict(replica, "memory", None, tmp_path / "out")
        assert "288 MiB" in str(caught.value)
        assert box.out_of_memory()
        box.process.wait(timeout=10)  # the whole group went down together
        assert not box.alive and box.returncode == -9
        assert replica.failure and "ran out of memory" in replica.failure
    finally:
        box.stop()
    with start() as fresh:
        assert ask(fresh, "echo", "after")["echo"] == "after"


def _deployment() -> str:
    from kit.db import session_scope
    from partners import service

    with session_scope() as s:
        partner, _ = service.create_partner(s, slug="limits", name="Limits")
        model = service.create_model(s, partner, slug="probe")
        service.create_version_from_stream(s, partner, model, [tar_layer(probe_files())])
        deployment = service.create_deployment(
            s, partner, model_slug="probe", version=None, pool="shared", min_replicas=0,
            max_replicas=1, concurrency=1, keep_alive_s=60)
        return deployment.id


def test_a_replica_that_breaks_mid_request_is_reported_failed_with_why(committed: Engine, tmp_path: Path) -> None:
    from kit.db import session_scope
    from partners import repository as repo
    from partners.tenancy.runner import ReplicaPool

    deployment_id = _deployment()
    # Past a cgroup cap the kernel kills the sandbox; elsewhere a model that dies mid-request
    # breaks its replica the same way.
    oom = _cgroup_v2_memory()
    box = start(memory_bytes=256 * MiB, package_tmpfs_bytes=32 * MiB) if oom else start()
    replica = Replica(deployment_id, "rep_broken", box, 1)
    replica.in_flight = 1
    with pytest.raises(ReplicaError) as caught:
        _predict(replica, "memory" if oom else "exit", None, tmp_path / "out")
    ReplicaPool().release(replica, broken=True)
    assert not box.alive
    with session_scope() as s:
        (state,) = repo.replicas_of(s, [deployment_id])
        assert (state.id, state.state) == ("rep_broken", "failed")
        assert state.detail == str(caught.value)
        assert ("ran out of memory" if oom else "stopped mid-request") in state.detail


def test_writing_past_the_output_quota_fails_the_request_and_keeps_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "outputs"
    with start(output_tmpfs_bytes=4 * MiB) as box:
        replica = Replica("dep_quota", "rep_quota", box, 1)
        # The runner's copy of the model's 8 MiB output hits the 4 MiB /out.
        with pytest.raises(ModelFailed, match=r"past its disk quota: /out \(4 MiB\); no output was kept"):
            _predict(replica, "fill_out", {"mb": 8, "swallow": False}, dest)
        assert not dest.exists()
        # A model that swallows ENOSPC and returns its cut file is refused as well.
        with pytest.raises(ModelFailed, match="past its disk quota"):
            _predict(replica, "fill_out", {"mb": 8, "swallow": True}, dest)
        assert not dest.exists()
        # Nothing is left behind in /out, so the replica keeps serving within its quota.
        assert box.full_dirs() == []
        frame = _predict(replica, "fill_out", {"mb": 1, "swallow": False}, dest)
        assert frame["type"] == "result"
        assert (dest / frame["output"]["$file"]).stat().st_size == 1 * MiB
        assert box.alive
