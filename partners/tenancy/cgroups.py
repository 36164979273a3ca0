"""Per-sandbox control groups: process and memory caps that hold whoever the sandbox runs as.

RLIMIT_NPROC is not enforced for processes whose host uid is 0 (the kernel exempts the root
user whatever its namespace), so a sandbox started by a root supervisor without a dedicated
`host_uid` needs a `pids` cgroup to contain a fork bomb. And RLIMIT_AS caps address space,
not memory: it refuses a CUDA driver's huge reservations, while pages the model never maps
(its tmpfs files) escape it. On cgroup v2 a sandbox's group therefore caps its memory too
(`memory.max`, no swap, the whole group killed together on OOM) and the rlimit is dropped.

Where groups are made: the delegated directory named by `MEDIAGATE_SANDBOX_CGROUP` (v2, or
v1 for pids only); else, on cgroup v2, under this process's own group when the memory and
pids controllers can be handed down there (the cgroup root, or a delegated group whose
processes sit in a leaf); else the `pids` controller of a cgroup v1 hierarchy under this
process's own group. Each sandbox gets its own child group, removed when it stops.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

V1_PIDS = Path("/sys/fs/cgroup/pids")
V2_CONTROLLERS = ("memory", "pids")  # memory is required of a v2 parent; pids where offered


@dataclass
class SandboxCgroup:
    """One sandbox's group: a process started through `launch_prefix` waits until `admit`
    moved it in, so everything the sandbox ever runs is inside."""

    path: Path
    version: int
    pids_max: int | None = None    # set when the group caps the sandbox's process count
    memory_max: int | None = None  # set when the group caps the sandbox's memory

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def oom_kills(self) -> int:
        """How many times the kernel killed a process of the group for passing `memory.max`."""
        try:
            text = (self.path / "memory.events").read_text()
        except OSError:
            return 0
        counts = dict(line.split() for line in text.splitlines() if line.strip())
        return int(counts.get("oom_kill", 0)) + int(counts.get("oom_group_kill", 0))

    def launch_prefix(self) -> list[str]:
        """A command prefix that waits for a line on stdin (sent by `admit`), then execs the rest."""
        return ["/bin/sh", "-c", 'read -r _ || exit 70; exec "$@" </dev/null', "sandbox-launch"]

    def admit(self, process: subprocess.Popen[bytes]) -> None:
        """Move a process started with `launch_prefix` into the group and let it go on.

        The supervisor writes the pid itself: cgroup v2 lets a process move another only with
        write access to their common ancestor's `cgroup.procs`, which a sandbox's own
        unprivileged host uid does not have. Closing stdin without the line stops it.
        """
        assert process.stdin is not None
        try:
            self.procs.write_text(str(process.pid))
            process.stdin.write(b"go\n")
        finally:
            process.stdin.close()

    def pids_current(self) -> int:
        """How many tasks the group holds now."""
        try:
            return int((self.path / "pids.current").read_text())
        except (OSError, ValueError):
            return 0

    def remove(self, timeout: float = 5.0) -> None:
        """Delete the group once it is empty (killing anything left in it first)."""
        deadline = time.monotonic() + timeout
        while self.path.exists():
            with contextlib.suppress(OSError):
                for pid in self.procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), 9)
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.01)


def _own_v1_group(controller: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controller in controllers.split(","):
                return path
    return None


def _v2_mount() -> Path | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            if right.split()[:1] == ["cgroup2"]:
                return Path(left.split()[4])
    return None


def _own_v2_group() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:]
    return None


def _hand_down(group: Path, controllers: tuple[str, ...] = V2_CONTROLLERS) -> bool:
    """Enable those of `controllers` that `group` has for its children; False unless memory
    is among them (a group that holds processes itself, other than the root, cannot)."""
    try:
        available = set((group / "cgroup.controllers").read_text().split())
        enabled = set((group / "cgroup.subtree_control").read_text().split())
        missing = [c for c in controllers if c in available and c not in enabled]
        if missing:
            (group / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in missing))
        return "memory" in (group / "cgroup.subtree_control").read_text().split()
    except OSError:
        return False


def v2_parent() -> Path | None:
    """A cgroup v2 group under this process's own where sandbox groups get memory and pids caps."""
    mount, own = _v2_mount(), _own_v2_group()
    if mount is None or own is None:
        return None
    group = mount / own.lstrip("/")
    try:
        if "memory" not in (group / "cgroup.controllers").read_text().split():
            return None
    except OSError:
        return None
    if not _hand_down(group):
        return None
    path = group / "mediagate-sandboxes"
    try:
        path.mkdir(exist_ok=True)
    except OSError:
        return None
    return path if _hand_down(path) and os.access(path, os.W_OK) else None


def parent_group() -> tuple[Path, int] | None:
    """Where sandbox groups can be created here, and the cgroup version; None if nowhere."""
    configured = os.environ.get("MEDIAGATE_SANDBOX_CGROUP")
    if configured:
        path = Path(configured)
        version = 2 if (path / "cgroup.controllers").exists() else 1
        return (path, version) if os.access(path, os.W_OK) else None
    v2 = v2_parent()
    if v2 is not None:
        return v2, 2
    own = _own_v1_group("pids")
    if own is None or not V1_PIDS.is_dir():
        return None
    path = V1_PIDS / own.lstrip("/") / "mediagate-sandboxes"
    try:
        path.mkdir(exist_ok=True)
    except OSError:
        return None
    return (path, 1) if os.access(path, os.W_OK) else None


def create(name: str, *, max_pids: int, memory_bytes: int | None) -> SandboxCgroup | None:
    """A new group for one sandbox with its caps set; None where cgroups cannot be used."""
    found = parent_group()
    if found is None:
        return None
    parent, version = found
    path = parent / name
    if version == 2:
        _hand_down(parent)  # a delegated v2 parent may not have handed them down yet
    group = SandboxCgroup(path, version)
    try:
        path.mkdir()
        if (path / "pids.max").exists():
            (path / "pids.max").write_text(str(max_pids))
            group.pids_max = max_pids
        if version == 2 and memory_bytes is not None and (path / "memory.max").exists():
            (path / "memory.max").write_text(str(memory_bytes))
            if (path / "memory.swap.max").exists():
                (path / "memory.swap.max").write_text("0")
            # One OOM kill takes the whole sandbox down rather than leaving it half alive.
            if (path / "memory.oom.group").exists():
                (path / "memory.oom.group").write_text("1")
            group.memory_max = int((path / "memory.max").read_text())
        if group.pids_max is None and group.memory_max is None:
            raise OSError("no controller to cap anything with")
    except (OSError, ValueError):
        with contextlib.suppress(OSError):
            path.rmdir()
        return None
    return group
