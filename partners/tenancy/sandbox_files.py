"""What the supervisor reads and removes inside a running sandbox: outputs and tmpfs usage.

`/out` (and `/scratch`, `/tmp`) are tmpfs mounted in the sandbox's own mount namespace, so
the host reaches them only through `/proc/PID/root` of the sandbox's init. That pid is
checked against a pidfd after every open, so a pid recycled by another process (whose root
may be the host's) is never followed; every component below is opened without following
symlinks, so nothing the model plants can redirect the supervisor.
"""

from __future__ import annotations

import errno
import os
import select
import shutil
import stat
from typing import TYPE_CHECKING, BinaryIO

from partners.tenancy.sandbox_spec import OUT_DIR, SCRATCH_DIR, SandboxError

if TYPE_CHECKING:
    from partners.tenancy.sandbox_spec import SandboxSpec


def check_name(name: str) -> None:
    """Refuse anything but a plain file name (no slash, no dot dirs, no NUL)."""
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise ValueError(f"not a plain file name: {name!r}")


class SandboxFiles:
    """The output and tmpfs side of `Sandbox` (mixed into it)."""

    spec: SandboxSpec
    sandbox_pid: int | None
    _pidfd: int | None
    _pid_started: str | None

    @property
    def alive(self) -> bool:
        raise NotImplementedError

    def _open_inside(self, path: str) -> int:
        """A directory fd of `path` inside the running sandbox (its own mount namespace)."""
        pid, pidfd = self.sandbox_pid, self._pidfd
        if pid is None or not self.alive:
            raise SandboxError("the sandbox is not running")
        nofollow = os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(f"/proc/{pid}/root{path}", os.O_RDONLY | os.O_DIRECTORY | nofollow)
        # If it exited, that pid may be another process now (whose root could be the host's).
        if (select.select([pidfd], [], [], 0)[0] if pidfd is not None
                else started_at(pid) != self._pid_started or self._pid_started is None):
            os.close(fd)
            raise SandboxError("the sandbox is not running")
        return fd

    def open_output(self, request_id: str, name: str) -> BinaryIO:
        """Open an output file the model wrote, refusing symlinks and anything but regular files."""
        check_name(request_id)
        check_name(name)
        nofollow = os.O_NOFOLLOW | os.O_CLOEXEC
        root = self._open_inside(OUT_DIR)
        try:
            sub = os.open(request_id, os.O_RDONLY | os.O_DIRECTORY | nofollow, dir_fd=root)
            try:
                fd = os.open(name, os.O_RDONLY | nofollow | os.O_NONBLOCK, dir_fd=sub)
            finally:
                os.close(sub)
        finally:
            os.close(root)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise SandboxError(f"output {name!r} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    def remove_outputs(self, request_id: str) -> None:
        """Delete one request's output dir inside the sandbox (never following its links)."""
        check_name(request_id)
        try:
            root = self._open_inside(OUT_DIR)
        except (OSError, SandboxError):
            return  # a stopped sandbox took its tmpfs with it
        try:
            info = os.stat(request_id, dir_fd=root, follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                shutil.rmtree(request_id, dir_fd=root, ignore_errors=True)
            else:
                os.unlink(request_id, dir_fd=root)
        except FileNotFoundError:
            pass
        finally:
            os.close(root)

    def full_dirs(self) -> list[str]:
        """The sandbox's writable tmpfs (`/out`, `/scratch`, `/tmp`) that have no space left."""
        full = []
        for path in (OUT_DIR, SCRATCH_DIR, "/tmp"):
            try:
                fd = self._open_inside(path)
            except (OSError, SandboxError):
                continue
            try:
                if os.fstatvfs(fd).f_bavail == 0:
                    full.append(path)
            finally:
                os.close(fd)
        return full

    def quota_of(self, path: str) -> int:
        """The size of one of the sandbox's tmpfs, in bytes."""
        spec = self.spec
        return {OUT_DIR: spec.output_tmpfs_bytes, SCRATCH_DIR: spec.scratch_tmpfs_bytes,
                "/tmp": spec.tmp_tmpfs_bytes}[path]


def started_at(pid: int) -> str | None:
    """When a process started (clock ticks since boot): with the pid, it names one process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def is_out_of_space(message: str) -> bool:
    """True when an error message a model reported is ENOSPC."""
    return f"[Errno {errno.ENOSPC}]" in message or os.strerror(errno.ENOSPC) in message
