"""Per-sandbox control groups: a process cap that holds whoever the sandbox runs as.

RLIMIT_NPROC is not enforced for processes whose host uid is 0 (the kernel exempts the root
user whatever its namespace), so a sandbox started by a root supervisor without a dedicated
`host_uid` needs a `pids` cgroup to contain a fork bomb. Used when the supervisor may create
child groups: a delegated cgroup v2 directory named by `MEDIAGATE_SANDBOX_CGROUP` (where
`memory.max` is set too), or else the `pids` controller of a cgroup v1 hierarchy under this
process's own group. Each sandbox gets its own child group, removed when it stops.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

V1_PIDS = Path("/sys/fs/cgroup/pids")


@dataclass
class SandboxCgroup:
    """One sandbox's group: processes started through `launch_prefix` join it before exec."""

    path: Path
    version: int

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def launch_prefix(self) -> list[str]:
        """A command prefix that moves itself into the group, then execs the rest."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.procs)]

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


def parent_group() -> tuple[Path, int] | None:
    """Where sandbox groups can be created here, and the cgroup version; None if nowhere."""
    configured = os.environ.get("MEDIAGATE_SANDBOX_CGROUP")
    if configured:
        path = Path(configured)
        version = 2 if (path / "cgroup.controllers").exists() else 1
        return (path, version) if os.access(path, os.W_OK) else None
    own = _own_v1_group("pids")
    if own is None or not V1_PIDS.is_dir():
        return None
    path = V1_PIDS / own.lstrip("/") / "mediagate-sandboxes"
    try:
        path.mkdir(exist_ok=True)
    except OSError:
        return None
    return (path, 1) if os.access(path, os.W_OK) else None


def create(name: str, *, max_pids: int, memory_bytes: int | None, owner: int | None) -> SandboxCgroup | None:
    """A new group for one sandbox with its caps set; None where cgroups cannot be used."""
    found = parent_group()
    if found is None:
        return None
    parent, version = found
    path = parent / name
    if version == 2:
        # A delegated v2 parent may not have handed the controllers down yet.
        for controller in ("+pids", "+memory"):
            with contextlib.suppress(OSError):
                (parent / "cgroup.subtree_control").write_text(controller)
    try:
        path.mkdir()
        (path / "pids.max").write_text(str(max_pids))
        if version == 2 and memory_bytes is not None and (path / "memory.max").exists():
            (path / "memory.max").write_text(str(memory_bytes))
        if owner is not None:
            os.chown(path / "cgroup.procs", owner, -1)
    except OSError:
        with contextlib.suppress(OSError):
            path.rmdir()
        return None
    return SandboxCgroup(path, version)
