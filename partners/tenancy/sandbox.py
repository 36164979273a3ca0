"""Sandboxes: one replica of a partner's model in bubblewrap, reachable through one Unix socket.

How the package gets in without touching disk
---------------------------------------------
The package's layers are decrypted in the supervisor as a stream (`ArtifactStore.open_blob`)
and written into one pipe per layer. bubblewrap passes the read ends into the sandbox, whose
first process (`sandbox_init.py`, run from the read-only runtime before any partner code)
extracts them into `/pkg`: a size-capped tmpfs mounted inside the sandbox's own mount
namespace, so it exists in RAM and is reachable from nowhere else. Plaintext therefore only
ever lives in pipe buffers, this process's memory and that tmpfs: never in a file on shared
disk, never in a path another tenant or the host's other services could open. The supervisor
never writes into the sandbox's file system (e.g. through `/proc/PID/root`), where symlinks
planted by sandboxed code could redirect its writes onto the host. If a layer fails
authentication mid-stream the sandbox is killed before the pipe closes, so the runner never
starts on a partial package.

The isolation
-------------
- Namespaces: new user, PID, IPC, UTS, mount, network and cgroup namespaces
  (`--unshare-all --unshare-user`), so the only network is a private loopback; nested user
  namespaces are disabled (`--disable-userns`); `--die-with-parent` and `--new-session`.
- File system: an empty root, read-only binds of the runtime (system libraries, the Python
  interpreter and its site-packages), the engine and kernels at `/opt/mediagate/app`; its own
  `/proc` (only its own processes) and a minimal `/dev`; size-capped tmpfs at `/pkg`, `/tmp`,
  `/dev/shm`, `/scratch` and `/out` (outputs, one dir per request), so a model writing past
  its quota gets ENOSPC rather than filling a host disk; the socket dir at `/run/mediagate`
  bound writable; `/` and `/dev` remounted read-only. GPU device nodes are bound only when
  the spec asks for a GPU. Every mount is nosuid and no-new-privs is set.
- Privileges: an unprivileged uid inside (1000) with every capability dropped. A root
  supervisor runs each sandbox as a host uid of its own (`host_uid`, picked automatically when
  the runtime is world-readable), so even a kernel-level escape lands as nobody in particular;
  otherwise the sandbox maps to host root without capabilities, and only a `pids` cgroup
  (`partners.tenancy.cgroups`) caps its process count, since the kernel exempts uid 0 from
  RLIMIT_NPROC. `Sandbox.process_cap` says which holds.
- seccomp: `partners.tenancy.seccomp` (ptrace, mount, unshare/setns, keyctl, bpf, perf, module
  loading, kexec, io_uring, device nodes, ... get EPERM).
- Memory: where cgroup v2 lets the supervisor make groups, `memory.max` of the replica's
  group caps everything it holds (the model's memory plus its tmpfs pages; the cap is
  `memory_bytes` plus the package tmpfs), without swap; passing it gets the whole sandbox
  OOM-killed, and the replica reports that it ran out of memory. Elsewhere RLIMIT_AS (for
  CPU replicas; RLIMIT_DATA for GPU ones, since the CUDA driver reserves huge virtual
  ranges) refuses allocations past `memory_bytes`. `Sandbox.memory_cap` says which holds.
- Other resource limits, set by the in-sandbox loader before it execs the runner:
  RLIMIT_NPROC (counted per sandbox, as each has its own user namespace), RLIMIT_NOFILE,
  RLIMIT_CORE=0, optional RLIMIT_CPU and RLIMIT_FSIZE.

The supervisor reads outputs from the sandbox's `/out` through `/proc/PID/root` of the
sandbox's init (checked against a pidfd, so a recycled pid is never followed), opening every
component without following symlinks; it only ever reads them, and removes a request's
outputs through directory fds. The socket is opened the same way (`connect`), so a model
cannot point the supervisor at a host socket or file.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from engine.runner.protocol import ProtocolError, recv_frame, send_frame
from partners.tenancy import cgroups, seccomp
from partners.tenancy.sandbox_files import SandboxFiles, check_name, is_out_of_space, started_at
from partners.tenancy.sandbox_spec import (
    APP_DIR,
    INIT_SCRIPT,
    OUT_DIR,
    PKG_DIR,
    SANDBOX_UID,
    SCRATCH_DIR,
    SOCKET_DIR,
    SOCKET_NAME,
    GiB,
    LayerSource,
    LogCallback,
    MiB,
    Runtime,
    SandboxError,
    SandboxSetupFailed,
    SandboxSpec,
    auto_host_uid,
    directory_layer,
    gpu_device_nodes,
    run_base_dir,
)

__all__ = [
    "GiB", "LayerSource", "MiB", "Runtime", "Sandbox", "SandboxError", "SandboxSetupFailed",
    "SandboxSpec", "directory_layer", "gpu_device_nodes", "is_out_of_space",
]

BWRAP = os.environ.get("MEDIAGATE_BWRAP", "/usr/bin/bwrap")
# bubblewrap's --die-with-parent is tied to the thread that forked it: start every sandbox
# from one long-lived thread so a short-lived caller thread ending does not kill its sandbox.
_spawner = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-spawn")
_serial = itertools.count(1)


def _data_fd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class Sandbox(SandboxFiles):
    """One running sandbox: `start()`, `wait_ready()`, talk over `connect()`, `stop()`."""

    def __init__(self, spec: SandboxSpec, *, on_log: LogCallback | None = None) -> None:
        self.spec = spec
        self.on_log = on_log
        self.logs: deque[tuple[str, str]] = deque(maxlen=spec.log_lines)
        self.process: subprocess.Popen[bytes] | None = None
        self.sandbox_pid: int | None = None
        self.started_at: float | None = None
        self._feed_error: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self._own_dirs: list[Path] = []
        self.socket_dir = spec.socket_dir
        self._pidfd: int | None = None
        self._pid_started: str | None = None
        self.cgroup: cgroups.SandboxCgroup | None = None
        self.host_uid = spec.host_uid if spec.host_uid is not None else auto_host_uid(spec)
        self._stopped = False

    # -- properties ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The host pid of the bubblewrap process (the sandbox lives and dies with it)."""
        return self.process.pid if self.process else None

    @property
    def returncode(self) -> int | None:
        """None while running; bubblewrap's exit status (the runner's, or -signal) after."""
        return self.process.poll() if self.process else None

    @property
    def alive(self) -> bool:
        """True while the sandbox runs."""
        return self.process is not None and self.process.poll() is None

    @property
    def socket_path(self) -> Path:
        """The runner's socket, as a host path."""
        assert self.socket_dir is not None
        return self.socket_dir / SOCKET_NAME

    @property
    def process_cap(self) -> str:
        """What holds the process count: `cgroup`, `rlimit`, or `none` (root without either)."""
        if self.cgroup is not None and self.cgroup.pids_max is not None:
            return "cgroup"
        if os.geteuid() == 0 and self.host_uid is None:
            return "none"  # the kernel does not apply RLIMIT_NPROC to host uid 0
        return "rlimit"

    @property
    def memory_cap(self) -> str:
        """What caps memory: `cgroup` (memory.max), `rlimit` (RLIMIT_AS/DATA) or `none`."""
        if self.cgroup is not None and self.cgroup.memory_max is not None:
            return "cgroup"
        return "rlimit" if self.spec.memory_bytes is not None else "none"

    def _cgroup_memory_bytes(self) -> int | None:
        spec = self.spec
        return None if spec.memory_bytes is None else spec.memory_bytes + spec.package_tmpfs_bytes

    def out_of_memory(self) -> bool:
        """True once the kernel killed the sandbox for passing its cgroup memory cap."""
        return self.cgroup is not None and self.cgroup.oom_kills() > 0

    def log_text(self) -> str:
        """The captured output so far, oldest first."""
        return "\n".join(line for _, line in self.logs)

    # -- command line ------------------------------------------------------------------------

    def _rlimits(self) -> dict[str, int | None]:
        spec = self.spec
        memory = {"AS": None, "DATA": None}
        if spec.memory_bytes is not None and self.memory_cap != "cgroup":
            memory["DATA" if spec.gpu else "AS"] = spec.memory_bytes
        return {"NPROC": spec.max_processes, "NOFILE": spec.max_open_files, "CORE": 0,
                "CPU": spec.cpu_seconds, "FSIZE": spec.max_file_bytes, **memory}

    def _env(self) -> dict[str, str]:
        python_bin = str(Path(self.spec.runtime.python).parent)
        env = {
            "PATH": f"{python_bin}:/usr/local/bin:/usr/bin:/bin",
            "HOME": SCRATCH_DIR,
            "TMPDIR": "/tmp",
            "LANG": "C.UTF-8",
            "PYTHONPATH": APP_DIR,
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            # Fewer malloc arenas: each reserves 64 MiB of address space, which RLIMIT_AS counts.
            "MALLOC_ARENA_MAX": "2",
            "MEDIAGATE_SANDBOX": "1",
        }
        env.update(self.spec.env)
        return env

    def _system_args(self) -> list[str]:
        args: list[str] = []
        for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(top):
                args += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                args += ["--ro-bind", top, top]
        for path in self.spec.runtime.ro_paths:
            if path not in ("/bin", "/sbin", "/lib", "/lib64"):
                args += ["--ro-bind", path, path]
        if os.path.exists("/etc/ld.so.cache"):
            args += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
        for name, host in sorted(self.spec.runtime.app_paths.items()):
            args += ["--ro-bind", host, f"{APP_DIR}/{name}"]
        return args

    def command(self, fds: Mapping[str, int], layer_fds: Sequence[int]) -> list[str]:
        """The bubblewrap command line for this spec, given the data fds it will inherit."""
        spec = self.spec
        assert self.socket_dir is not None
        args = [
            BWRAP, "--unshare-all", "--unshare-user", "--disable-userns",
            "--die-with-parent", "--new-session", "--clearenv",
            "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", spec.hostname,
        ]
        if os.geteuid() == 0 and self.host_uid is None:
            args += ["--cap-drop", "ALL"]
        # /tmp first: a runtime that lives under /tmp (a checkout there) is bound on top of it,
        # where a later tmpfs would hide it.
        args += ["--size", str(spec.tmp_tmpfs_bytes), "--tmpfs", "/tmp"]
        args += self._system_args()
        args += ["--proc", "/proc", "--dev", "/dev",
                 "--size", str(spec.shm_bytes), "--tmpfs", "/dev/shm"]
        if spec.gpu:
            for node in spec.gpu_devices if spec.gpu_devices is not None else gpu_device_nodes():
                args += ["--dev-bind", node, node]
        args += ["--size", str(spec.package_tmpfs_bytes), "--tmpfs", PKG_DIR,
                 "--size", str(spec.scratch_tmpfs_bytes), "--tmpfs", SCRATCH_DIR,
                 "--size", str(spec.output_tmpfs_bytes), "--tmpfs", OUT_DIR,
                 "--bind", str(self.socket_dir), SOCKET_DIR]
        for name, target in (("passwd", "/etc/passwd"), ("group", "/etc/group"),
                             ("hosts", "/etc/hosts"), ("init", "/opt/mediagate/init.py"),
                             ("config", "/opt/mediagate/config.json"),
                             ("manifest", "/opt/mediagate/manifest.json")):
            args += ["--ro-bind-data", str(fds[name]), target]
        args += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", APP_DIR]
        for key, value in sorted(self._env().items()):
            args += ["--setenv", key, value]
        args += ["--seccomp", str(fds["seccomp"]), "--info-fd", str(fds["info"])]
        args += ["--", spec.runtime.python, "-I", "-S", "/opt/mediagate/init.py",
                 "/opt/mediagate/config.json"]
        return args

    def _config(self, layer_fds: Sequence[int]) -> dict[str, Any]:
        package = PKG_DIR if not self.spec.package_subdir else (
            f"{PKG_DIR}/{self.spec.package_subdir.strip('/')}")
        return {
            "layer_fds": list(layer_fds),
            "package_root": PKG_DIR,
            "rlimits": self._rlimits(),
            "chdir": APP_DIR,
            "exec": [self.spec.runtime.python, "-s", "-m", "engine.runner",
                     "--package", package, "--manifest", "/opt/mediagate/manifest.json",
                     "--socket", f"{SOCKET_DIR}/{SOCKET_NAME}"],
        }

    # -- lifecycle ---------------------------------------------------------------------------

    def _prepare_dirs(self) -> None:
        base = Path(run_base_dir())
        if self.socket_dir is None:
            # Kept short: a Unix socket path must fit in 108 bytes.
            self.socket_dir = Path(tempfile.mkdtemp(prefix="mgsb-", dir=base))
            self._own_dirs.append(self.socket_dir)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.socket_dir, 0o700)
        if self.host_uid is not None:
            os.chown(self.socket_dir, self.host_uid, self._host_gid())
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    def _host_gid(self) -> int:
        spec = self.spec
        return spec.host_gid if spec.host_gid is not None else (self.host_uid or 0)

    def start(self) -> Sandbox:
        """Launch the sandbox and begin streaming the package in; returns at once."""
        if self.process is not None:
            raise SandboxError("sandbox already started")
        self._prepare_dirs()
        spec = self.spec
        if spec.use_cgroup:
            # Room for bubblewrap's two processes and the launching shell besides the model's.
            self.cgroup = cgroups.create(
                f"sb-{os.getpid()}-{next(_serial)}", max_pids=spec.max_processes + 4,
                memory_bytes=self._cgroup_memory_bytes())
        passwd = (f"root:x:0:0::/:/usr/sbin/nologin\nmodel:x:{SANDBOX_UID}:{SANDBOX_UID}::"
                  f"{SCRATCH_DIR}:/usr/sbin/nologin\nnobody:x:65534:65534::/:/usr/sbin/nologin\n")
        group = f"root:x:0:\nmodel:x:{SANDBOX_UID}:\nnogroup:x:65534:\n"
        layer_pipes = [os.pipe() for _ in spec.layers]
        info_r, info_w = os.pipe()
        fds = {
            "passwd": _data_fd("passwd", passwd.encode()),
            "group": _data_fd("group", group.encode()),
            "hosts": _data_fd("hosts", b"127.0.0.1 localhost\n::1 localhost\n"),
            "init": _data_fd("init", INIT_SCRIPT.read_bytes()),
            "config": _data_fd("config", json.dumps(
                self._config([r for r, _ in layer_pipes])).encode()),
            "manifest": _data_fd("manifest", json.dumps(dict(spec.manifest)).encode()),
            "seccomp": seccomp.bpf_fd(),
            "info": info_w,
        }
        child_fds = [*fds.values(), *(r for r, _ in layer_pipes)]
        argv = self.command(fds, [r for r, _ in layer_pipes])
        if self.cgroup is not None:
            argv = self.cgroup.launch_prefix() + argv
        kwargs: dict[str, Any] = {}
        if self.host_uid is not None:
            kwargs.update(user=self.host_uid, group=self._host_gid(), extra_groups=[])
        self.started_at = time.perf_counter()
        try:
            self.process = _spawner.submit(
                subprocess.Popen, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                stdin=subprocess.PIPE if self.cgroup is not None else subprocess.DEVNULL,
                pass_fds=child_fds, env={}, cwd="/", start_new_session=True, **kwargs,
            ).result()
            if self.cgroup is not None:
                self.cgroup.admit(self.process)
        except BaseException:
            for _, w in layer_pipes:
                os.close(w)
            if self.process is not None:
                self.process.kill()
                self.process.wait()
            self._cleanup()
            raise
        finally:
            for fd in child_fds:
                os.close(fd)
        self._spawn(self._read_info, info_r)
        assert self.process.stdout is not None and self.process.stderr is not None
        self._spawn(self._pump, self.process.stdout, "stdout")
        self._spawn(self._pump, self.process.stderr, "stderr")
        self._spawn(self._feed, [w for _, w in layer_pipes])
        return self

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True,
                                  name=f"sandbox-{self.pid}-{target.__name__}")
        thread.start()
        self._threads.append(thread)

    def _read_info(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as f:
            data = f.read()
        with contextlib.suppress(ValueError, TypeError, KeyError):
            pid = int(json.loads(data.decode() or "{}")["child-pid"])
            with contextlib.suppress(OSError):
                self._pidfd = os.pidfd_open(pid)
            self._pid_started = started_at(pid)
            self.sandbox_pid = pid

    def _pump(self, stream: BinaryIO, name: str) -> None:
        with stream:
            for raw in stream:
                line = raw.decode(errors="replace").rstrip("\n")
                self.logs.append((name, line))
                if self.on_log is not None:
                    with contextlib.suppress(Exception):
                        self.on_log(name, line)

    def _feed(self, write_fds: list[int]) -> None:
        """Stream every layer's plaintext into its pipe, in order; kill the sandbox on failure."""
        pending = list(write_fds)
        try:
            for source, fd in zip(self.spec.layers, write_fds, strict=True):
                with os.fdopen(fd, "wb", buffering=1 << 20, closefd=False) as out:
                    if callable(source):
                        source(out)
                    else:
                        for chunk in source:
                            out.write(chunk)
                os.close(fd)
                pending.remove(fd)
        except BrokenPipeError:
            pass  # the sandbox went away; its exit is what gets reported
        except BaseException as exc:  # noqa: BLE001 - any failure voids the whole package
            self._feed_error = exc
            # Kill before closing the pipes: the runner must never start on a partial package.
            self.kill()
        finally:
            for fd in pending:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        """Block until the runner reports `ready`; raises SandboxSetupFailed or SandboxError."""
        deadline = time.monotonic() + timeout
        while True:
            if self._feed_error is not None:
                raise SandboxError(f"the package could not be streamed in: {self._feed_error}",
                                   logs=self.log_text()) from self._feed_error
            if not self.alive:
                self._join_pumps()
                raise SandboxError(f"the sandbox exited during start-up (status {self.returncode})",
                                   logs=self.log_text())
            try:
                status = self.health(timeout=max(0.05, min(2.0, deadline - time.monotonic())))
            except (OSError, ProtocolError):
                status = {"state": "starting"}
            state = status.get("state")
            if state == "ready":
                return status
            if state == "setup_failed":
                raise SandboxSetupFailed("the model failed to set up",
                                         traceback=str(status.get("error") or ""),
                                         logs=self.log_text())
            if time.monotonic() >= deadline:
                raise SandboxError(f"the sandbox was not ready within {timeout:.0f} s",
                                   logs=self.log_text())
            time.sleep(0.005 if state == "starting" else 0.02)

    def _join_pumps(self) -> None:
        for thread in self._threads:
            if thread.name.endswith("_pump"):
                thread.join(timeout=1.0)

    def stop(self, timeout: float = 5.0) -> int | None:
        """Terminate the sandbox (SIGTERM, then SIGKILL) and wait until every process in it is gone."""
        if self.process is None:
            return None
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process.wait()
        self._await_teardown(timeout)
        self._cleanup()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the sandbox at once; its PID namespace takes every process in it down."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    def _await_teardown(self, timeout: float) -> None:
        # bubblewrap's own exit does not wait for the namespace's init to be reaped.
        pid = self.sandbox_pid
        deadline = time.monotonic() + timeout
        while pid is not None and os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                        break
            except OSError:
                break
            time.sleep(0.005)

    def _cleanup(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self.cgroup is not None:
            self.cgroup.remove()
        for d in self._own_dirs:
            shutil.rmtree(d, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- talking to the runner -------------------------------------------------------------

    def connect(self, timeout: float | None = 10.0) -> socket.socket:
        """A connection to the runner's socket, opened without following links the sandbox made."""
        fd = os.open(self.socket_path, os.O_PATH | os.O_NOFOLLOW)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                raise SandboxError("the runner's socket was replaced by something else")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(f"/proc/self/fd/{fd}")
            except BaseException:
                sock.close()
                raise
            return sock
        finally:
            os.close(fd)

    def health(self, timeout: float = 5.0) -> dict[str, Any]:
        """The runner's status frame (`setting_up`, `ready` or `setup_failed`)."""
        with self.connect(timeout) as sock:
            send_frame(sock, {"type": "health"})
            return recv_frame(sock)

    def output_dir_inside(self, request_id: str) -> str:
        """Where the runner writes one request's outputs, as a path inside the sandbox."""
        check_name(request_id)
        return f"{OUT_DIR}/{request_id}"

    def predict(
        self, request_id: str, inputs: Mapping[str, Any], *, timeout: float | None = 600.0,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Run one request; returns the final `result` or `error` frame."""
        with self.connect(timeout) as sock:
            send_frame(sock, {"type": "predict", "id": request_id, "input": dict(inputs),
                              "output_dir": self.output_dir_inside(request_id)})
            while True:
                frame = recv_frame(sock)
                if frame["type"] in ("result", "error"):
                    return frame
                if on_event is not None:
                    on_event(frame)
