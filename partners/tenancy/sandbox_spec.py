"""What defines a sandbox: its runtime (read-only software), its spec (limits, dirs, GPU), its host uid."""

from __future__ import annotations

import glob
import itertools
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

PROJECT_ROOT = Path(__file__).resolve().parents[2]
INIT_SCRIPT = Path(__file__).resolve().with_name("sandbox_init.py")

APP_DIR = "/opt/mediagate/app"
PKG_DIR = "/pkg"
OUT_DIR = "/out"
SCRATCH_DIR = "/scratch"
SOCKET_DIR = "/run/mediagate"
SOCKET_NAME = "runner.sock"
SANDBOX_UID = 1000
GiB = 1024**3
MiB = 1024**2

# A layer is plaintext tar bytes (plain or gzip), as an iterable of chunks or as a function
# that writes the tar into the file object it is given.
LayerSource = Iterable[bytes] | Callable[[BinaryIO], None]
LogCallback = Callable[[str, str], None]


class SandboxError(RuntimeError):
    """The sandbox could not start, died, or did not become ready."""

    def __init__(self, message: str, *, logs: str = "") -> None:
        super().__init__(message)
        self.logs = logs


class SandboxSetupFailed(SandboxError):
    """The model's own `setup()` raised; `traceback` is for the partner, not the customer."""

    def __init__(self, message: str, *, traceback: str, logs: str = "") -> None:
        super().__init__(message, logs=logs)
        self.traceback = traceback


@dataclass(frozen=True)
class Runtime:
    """The read-only software a sandbox runs on: host paths bound at the same place inside."""

    python: str
    ro_paths: tuple[str, ...]
    app_paths: Mapping[str, str]  # name under /opt/mediagate/app -> host path

    @classmethod
    def current(cls) -> Runtime:
        """This process's interpreter and environment, plus the project's engine and kernels."""
        paths = ["/usr"]
        for prefix in (sys.base_prefix, sys.prefix):
            if prefix not in paths and not prefix.startswith("/usr/"):
                paths.append(prefix)
        app = {name: str(PROJECT_ROOT / name) for name in ("engine", "kernels")
               if (PROJECT_ROOT / name).is_dir()}
        return cls(python=sys.executable, ro_paths=tuple(paths), app_paths=app)

    @classmethod
    def system(cls, python: str = "/usr/bin/python3") -> Runtime:
        """The distribution's Python (world-readable), with the project's engine and kernels."""
        app = {name: str(PROJECT_ROOT / name) for name in ("engine", "kernels")
               if (PROJECT_ROOT / name).is_dir()}
        return cls(python=python, ro_paths=("/usr",), app_paths=app)


@dataclass
class SandboxSpec:
    """Everything that defines one replica's sandbox."""

    layers: Sequence[LayerSource]
    manifest: Mapping[str, Any]
    package_subdir: str = ""
    runtime: Runtime = field(default_factory=Runtime.current)
    memory_bytes: int | None = 4 * GiB
    max_processes: int = 256
    max_open_files: int = 1024
    cpu_seconds: int | None = None
    max_file_bytes: int | None = None
    package_tmpfs_bytes: int = 16 * GiB
    tmp_tmpfs_bytes: int = 512 * MiB
    shm_bytes: int = 256 * MiB
    # /scratch and /out are tmpfs of these sizes: a model writing past them gets ENOSPC.
    # Their pages are the sandbox's memory, counted against a cgroup memory cap.
    scratch_tmpfs_bytes: int = 1 * GiB
    output_tmpfs_bytes: int = 2 * GiB
    socket_dir: Path | None = None
    gpu: bool = False
    gpu_devices: Sequence[str] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    # The host uid the sandbox runs as when the supervisor is root. None picks one from
    # AUTO_UID_BASE by itself when the runtime is readable by any user (else it stays root,
    # mapped to an unprivileged uid inside with no capabilities).
    host_uid: int | None = None
    host_gid: int | None = None
    auto_host_uid: bool = True
    hostname: str = "mediagate"
    log_lines: int = 2000
    use_cgroup: bool = True


AUTO_UID_BASE = 600_000
AUTO_UID_COUNT = 50_000


def _world_readable(path: str) -> bool:
    """True when any user can reach `path` (every ancestor searchable, itself readable)."""
    parts = Path(path).resolve().parts
    for depth in range(1, len(parts) + 1):
        current = Path(*parts[:depth])
        try:
            mode = current.stat().st_mode
        except OSError:
            return False
        last = depth == len(parts)
        needed = (stat.S_IROTH | stat.S_IXOTH) if stat.S_ISDIR(mode) else stat.S_IROTH
        if last and not mode & needed or not last and not mode & stat.S_IXOTH:
            return False
    return True


def run_base_dir() -> str:
    """Where sandboxes' socket dirs go when the spec names none."""
    return os.environ.get("MEDIAGATE_SANDBOX_RUN_DIR", tempfile.gettempdir())


def auto_host_uid(spec: SandboxSpec) -> int | None:
    """A dedicated host uid for a root supervisor's sandbox, when its runtime allows one."""
    if os.geteuid() != 0 or not spec.auto_host_uid:
        return None
    runtime = spec.runtime
    paths = [runtime.python, *runtime.ro_paths, *runtime.app_paths.values()]
    paths.append(str(spec.socket_dir.parent) if spec.socket_dir is not None else run_base_dir())
    if not all(_world_readable(p) for p in paths):
        return None
    # A uid of its own per sandbox: even past its namespaces it could not signal or read
    # another sandbox's processes.
    return AUTO_UID_BASE + (os.getpid() * 1000 + next(_uid_serial)) % AUTO_UID_COUNT


def gpu_device_nodes() -> list[str]:
    """The host's NVIDIA device nodes (`/dev/nvidia0`, `/dev/nvidiactl`, `/dev/nvidia-uvm`, ...)."""
    nodes = glob.glob("/dev/nvidia*")
    return sorted(n for n in nodes if os.path.exists(n) and not os.path.isdir(n))


def directory_layer(path: Path) -> Callable[[BinaryIO], None]:
    """A layer made from a host directory (development and tests): its tree as a tar stream."""
    import tarfile

    def write(out: BinaryIO) -> None:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for entry in sorted(path.rglob("*")):
                tar.add(entry, arcname=str(entry.relative_to(path)), recursive=False)

    return write



_uid_serial = itertools.count(1)
