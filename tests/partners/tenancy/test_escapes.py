"""Escape attempts from inside a sandbox, made as a partner's model would make them.

Each test packages `escape_model.py` in memory, runs it in a real bubblewrap sandbox through
the real runner and protocol, asks it to try one way out, and checks the attempt failed. After
every test a fresh sandbox must still start and serve a request.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import stat
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.runner.protocol import ProtocolError
from partners.tenancy.sandbox import (
    MiB,
    Runtime,
    Sandbox,
    SandboxError,
    SandboxSetupFailed,
    SandboxSpec,
)
from tests.support import files_holding

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/bwrap"), reason="needs bubblewrap")

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
MANIFEST = {"name": "probe", "entrypoint": "predict:Probe"}
RUNTIME_PATHS = Runtime.current().ro_paths


def tar_layer(files: dict[str, bytes], *, gzip: bool = False) -> bytes:
    """A package layer built in memory, so no plaintext package file exists on disk."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gzip else "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def probe_files(extra: dict[str, bytes] | None = None) -> dict[str, bytes]:
    files = {"predict.py": (HERE / "escape_model.py").read_bytes(),
             "mediagate.toml": b'[model]\nname = "probe"\nentrypoint = "predict:Probe"\n'}
    files.update(extra or {})
    return files


def start(files: dict[str, bytes] | None = None, **overrides: Any) -> Sandbox:
    spec = SandboxSpec(layers=[[tar_layer(files or probe_files())]], manifest=MANIFEST,
                       **overrides)
    sandbox = Sandbox(spec).start()
    try:
        sandbox.wait_ready(30)
    except BaseException:
        sandbox.stop()
        raise
    return sandbox


def ask(sandbox: Sandbox, action: str, arg: Any = None, *, timeout: float = 60) -> dict[str, Any]:
    frame = sandbox.predict(f"req_{uuid.uuid4().hex[:12]}",
                            {"action": action, "arg": json.dumps(arg) if arg is not None else ""},
                            timeout=timeout)
    assert frame["type"] == "result", frame.get("traceback") or frame
    return frame["output"]


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    box = start()
    yield box
    box.stop()


@pytest.fixture(autouse=True)
def platform_keeps_serving() -> Iterator[None]:
    """After every attempt, a fresh sandbox starts and answers."""
    yield
    with start() as fresh:
        assert ask(fresh, "echo", {"still": "serving"})["echo"] == {"still": "serving"}


def test_runs_confined_as_an_unprivileged_user(sandbox: Sandbox) -> None:
    out = ask(sandbox, "echo", [1])
    assert out["uid"] == 1000 and out["pid"] == 2
    assert sandbox.health()["state"] == "ready"


def test_no_network_but_loopback() -> None:
    host = socket.socket()
    host.bind(("127.0.0.1", 0))
    host.listen(1)
    abstract_name = f"mediagate-test-{uuid.uuid4().hex}"
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind("\0" + abstract_name)
    abstract.listen(1)
    # Postgres really is listening on the host, so a refusal means isolation, not absence.
    socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
    with host, abstract, start() as box:
        out = ask(box, "network", {"pg_port": 5432, "host_port": host.getsockname()[1],
                                   "abstract": abstract_name})
    assert out["interfaces"] == ["lo"]
    assert out["host_postgres"] == "ECONNREFUSED"
    assert out["host_service"] == "ECONNREFUSED"
    assert out["public"] == "ENETUNREACH"
    assert out["public_udp"] == "ENETUNREACH"
    assert not out["dns"].startswith("ok")
    assert out["host_abstract_socket"] == "ECONNREFUSED"
    assert out["loopback_self"] == "ok: loopback works"


def test_host_files_are_not_there(sandbox: Sandbox) -> None:
    from kit.settings import get_settings

    data_dir = str(get_settings().data_dir.resolve())
    paths = ["/etc/shadow", "/etc/ssh", "/root/.ssh", "/root/.bash_history", "/home",
             str(REPO / "kit" / "settings.py"), str(REPO / ".git" / "config"),
             str(REPO / "partners"), str(REPO / "pyproject.toml"), data_dir, "/var/lib/postgresql",
             "/proc/1/root/etc/shadow", "/sys/kernel", "/etc", "/root", "/"]
    out = ask(sandbox, "read", {"paths": paths})
    for path in paths[:12]:
        assert out[path] in ("ENOENT", "EACCES"), (path, out[path])
    assert out["/proc/1/root/etc/shadow"] in ("ENOENT", "EACCES")
    assert out["/sys/kernel"] == "ENOENT"
    # What exists is only what the sandbox was given.
    assert out["/etc"] == "ok: ['group', 'hosts', 'ld.so.cache', 'passwd']"
    # /root holds nothing but, where the interpreter lives there, the runtime's own path.
    assert out["/root"] in ("ENOENT", "ok: ['.pyenv']")
    top = set(eval(out["/"].removeprefix("ok: ")))
    runtime_tops = {Path(p).parts[1] for p in RUNTIME_PATHS}
    assert top <= {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "opt", "out", "pkg",
                   "proc", "run", "sbin", "scratch", "tmp", "usr"} | runtime_tops


def test_another_tenants_tmpfs_is_unreachable() -> None:
    marker = uuid.uuid4().hex
    secret_files = probe_files({"weights.bin": b"\0" * 4096 + marker.encode() + b"\1" * 4096})
    with start(secret_files) as victim, start() as attacker:
        assert victim.sandbox_pid is not None
        # The victim itself can see its weights, so the search does work.
        skip = list(RUNTIME_PATHS)
        assert ask(victim, "find", {"marker": marker, "skip": skip})["hits"] == ["/pkg/weights.bin"]
        # Everything but the read-only runtime binds, which hold host software, not tenant data.
        hits = ask(attacker, "find", {"marker": marker, "skip": skip})["hits"]
        procs = ask(attacker, "processes", {"host_pid": victim.sandbox_pid,
                                            "other_pid": victim.sandbox_pid})
    assert hits == []
    assert procs["other_sandbox_root"] in ("ENOENT", "EACCES")


def test_only_its_own_processes_are_visible(sandbox: Sandbox) -> None:
    out = ask(sandbox, "processes", {"host_pid": os.getpid(), "other_pid": os.getpid()})
    assert out["pids"] == [1, 2]
    assert out["host_pid_exists"] is False
    assert all("pytest" not in cmd for cmd in out["cmdlines"])


def test_cannot_write_outside_its_dirs(sandbox: Sandbox) -> None:
    forbidden = ["/usr/evil", f"{Runtime.current().python}.evil", "/opt/mediagate/app/engine/evil.py",
                 "/opt/mediagate/init.py", "/etc/passwd", "/evil", "/dev/evil", "/proc/evil",
                 f"{os.path.dirname(Runtime.current().python)}/evil"]
    allowed = ["/tmp/ok", "/scratch/ok", "/pkg/ok", "/out/ok", "/dev/shm/ok"]
    out = ask(sandbox, "write", {"paths": forbidden + allowed})
    for path in forbidden:
        assert out[path] in ("EROFS", "EACCES", "ENOENT", "EPERM"), (path, out[path])
    for path in allowed:
        assert out[path] == "ok: written", (path, out[path])
    assert not os.path.exists("/usr/evil")
    out = sandbox._open_inside("/out")  # /out is the sandbox's own tmpfs, not a host dir
    try:
        with os.fdopen(os.open("ok", os.O_RDONLY, dir_fd=out), "rb") as f:
            assert f.read() == b"x"
    finally:
        os.close(out)


def test_fork_bomb_is_contained() -> None:
    with start(max_processes=48) as box:
        assert box.process_cap in ("cgroup", "rlimit")
        out = ask(box, "fork_bomb", timeout=60)
        assert out["error"] == "EAGAIN"
        assert out["forked"] <= 48 + 4  # the cap counts bubblewrap's processes too
        # The bombed replica may be too full to start a thread per connection, but it fails
        # fast rather than hanging its supervisor.
        started = time.monotonic()
        with contextlib.suppress(OSError, ProtocolError):
            box.health(timeout=5)
        assert time.monotonic() - started < 5
        pid = box.sandbox_pid
    # Stopping the sandbox took every forked child with it, and the host can still fork.
    assert subprocess.run(["true"]).returncode == 0
    assert not _processes_in_namespace_of(pid)


def _processes_in_namespace_of(pid: int | None) -> list[int]:
    if pid is None:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as f:
                    if f"NSpid:\t{entry}\t" in f.read() and int(entry) > pid:
                        found.append(int(entry))
            except OSError:
                continue
    return [p for p in found if _same_pidns(p, pid)]


def _same_pidns(a: int, b: int) -> bool:
    try:
        return os.readlink(f"/proc/{a}/ns/pid") == os.readlink(f"/proc/{b}/ns/pid")
    except OSError:
        return False


def test_memory_cap_holds_and_the_replica_keeps_serving() -> None:
    # Where a cgroup caps memory, passing it kills the sandbox instead: test_sandbox_limits.
    with start(memory_bytes=768 * MiB, use_cgroup=False) as box:
        assert box.memory_cap == "rlimit"
        out = ask(box, "memory", timeout=60)
        assert out["error"] == "MemoryError"
        assert out["held_mb"] < 768
        assert ask(box, "echo", "after")["echo"] == "after"


def test_dangerous_syscalls_fail(sandbox: Sandbox) -> None:
    out = ask(sandbox, "syscalls")
    denied = ["ptrace_traceme", "ptrace_attach_init", "process_vm_readv", "mknod_char",
              "mknod_block", "mount_tmpfs", "mount_proc", "umount_pkg", "unshare_user",
              "unshare_mount", "unshare_net", "setns", "keyctl", "bpf", "perf_event_open",
              "init_module", "kexec_load", "userfaultfd", "io_uring_setup", "chroot"]
    for name in denied:
        assert out[name] == "EPERM", (name, out[name])
    assert out["setuid_root"] in ("EPERM", "EINVAL")  # uid 0 is not even mapped
    assert out["unshare_binary"] != 0
    assert out["mkfifo"] == "ok: None"  # FIFOs stay allowed: the filter is targeted
    assert out["seccomp"] == "2" and out["no_new_privs"] == "1"
    assert int(out["cap_eff"], 16) == 0


def test_setuid_binaries_do_not_elevate(sandbox: Sandbox) -> None:
    assert os.stat("/usr/bin/su").st_mode & stat.S_ISUID
    out = ask(sandbox, "setuid_binary")
    assert out["su_uids"].split() == ["1000"] * 4
    assert out["all_mounts_nosuid"] is True


def test_supervisor_ignores_planted_links(sandbox: Sandbox, tmp_path: Path) -> None:
    host_socket = socket.socket(socket.AF_UNIX)
    host_socket.bind(str(tmp_path / "host.sock"))
    host_socket.listen(1)
    secret = tmp_path / "host-secret.txt"
    secret.write_text("host only")
    request_id = "req_hijack"
    with host_socket:
        ask(sandbox, "hijack", {"socket_target": str(tmp_path / "host.sock"),
                                "file_target": str(secret), "request_id": request_id})
        with pytest.raises(SandboxError):
            sandbox.connect(timeout=1)
        with pytest.raises(OSError):
            sandbox.open_output(request_id, "stolen.txt")
        with sandbox.open_output(request_id, "fine.txt") as f:
            assert f.read() == b"a real output"
        with pytest.raises(ValueError):
            sandbox.open_output(request_id, "../../etc/passwd")
        host_socket.settimeout(0.2)
        with pytest.raises(TimeoutError):
            host_socket.accept()


def test_no_gpu_nodes_unless_asked(sandbox: Sandbox) -> None:
    devices = ask(sandbox, "devices")["dev"]
    assert not [d for d in devices if d.startswith("nvidia")]
    assert set(devices) <= {"console", "core", "fd", "full", "null", "ptmx", "pts", "random",
                            "shm", "stderr", "stdin", "stdout", "tty", "urandom", "zero"}
    spec = SandboxSpec(layers=[], manifest=MANIFEST, gpu=True,
                       gpu_devices=["/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm"])
    box = Sandbox(spec)
    box.socket_dir = Path("/nonexistent")
    argv = box.command({k: 9 for k in ("passwd", "group", "hosts", "init", "config",
                                       "manifest", "seccomp", "info")}, [])
    binds = [argv[i + 1] for i, a in enumerate(argv) if a == "--dev-bind"]
    assert binds == ["/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm"]
    assert "DATA" in json.dumps(box._rlimits()) and box._rlimits()["AS"] is None


def test_setup_failure_reports_the_models_traceback() -> None:
    broken = probe_files({"predict.py": b"from engine.sdk import Model\n"
                                        b"class Probe(Model):\n"
                                        b"    def setup(self):\n"
                                        b"        raise RuntimeError('weights missing')\n"})
    spec = SandboxSpec(layers=[[tar_layer(broken)]], manifest=MANIFEST)
    with Sandbox(spec) as box, pytest.raises(SandboxSetupFailed) as info:
        box.wait_ready(30)
    assert "weights missing" in info.value.traceback
    assert "Traceback" in info.value.traceback


def test_layers_apply_in_order_with_whiteouts() -> None:
    base = tar_layer(probe_files({"old.txt": b"old", "dir/a": b"a", "dir/b": b"b"}), gzip=True)
    top = tar_layer({".wh.old.txt": b"", "dir/.wh..wh..opq": b"", "dir/c": b"c"})
    spec = SandboxSpec(layers=[[base], [top[:100], top[100:]]], manifest=MANIFEST)
    with Sandbox(spec) as box:
        box.wait_ready(30)
        out = ask(box, "read", {"paths": ["/pkg/old.txt", "/pkg/dir"]})
    assert out["/pkg/old.txt"] == "ENOENT"
    assert out["/pkg/dir"] == "ok: ['c']"


def test_hostile_layer_cannot_write_outside_the_package_root() -> None:
    def hostile(*entries: tarfile.TarInfo) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for info in entries:
                tar.addfile(info, io.BytesIO(b"x" * info.size))
        return buf.getvalue()

    def entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.size = kind, link, 1 if kind == tarfile.REGTYPE else 0
        return info

    attempts = {
        "dot-dot": hostile(entry("../../tmp/escaped")),
        "link out then write": hostile(entry("etc", tarfile.SYMTYPE, "../../etc"),
                                       entry("etc/evil")),
        "absolute link": hostile(entry("shadow", tarfile.SYMTYPE, "/etc/shadow")),
        "device": hostile(entry("null", tarfile.CHRTYPE)),
    }
    for name, layer in attempts.items():
        spec = SandboxSpec(layers=[[tar_layer(probe_files())], [layer]], manifest=MANIFEST)
        with Sandbox(spec) as box, pytest.raises(SandboxError) as info:
            box.wait_ready(30)
            pytest.fail(f"{name} was accepted")
        assert "sandbox start failed" in info.value.logs, name


def test_a_failing_package_stream_never_starts_the_runner() -> None:
    def failing() -> Iterator[bytes]:
        yield tar_layer(probe_files())[:1024]
        raise ValueError("chunk 3 failed authentication")

    spec = SandboxSpec(layers=[failing()], manifest=MANIFEST)
    with Sandbox(spec) as box, pytest.raises(SandboxError) as info:
        box.wait_ready(30)
    assert "failed authentication" in str(info.value)
    assert "package unpacked" not in box.log_text()


def test_logs_are_captured_with_a_callback() -> None:
    lines: list[tuple[str, str]] = []
    spec = SandboxSpec(layers=[[tar_layer(probe_files())]], manifest=MANIFEST)
    box = Sandbox(spec, on_log=lambda stream, line: lines.append((stream, line)))
    with box:
        box.wait_ready(30)
    assert ("stderr", "mediagate: package unpacked (1 layers, 2 entries)") in lines
    assert "package unpacked" in box.log_text()
    assert box.returncode is not None and not box.alive


def _host_uid_of(pid: int | None) -> int:
    with open(f"/proc/{pid}/status") as f:
        uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
    assert len(set(uids)) == 1
    return int(uids[0])


@pytest.mark.skipif(os.geteuid() != 0, reason="running as a dedicated host uid needs root")
def test_runs_as_a_dedicated_host_uid_when_root() -> None:
    with start(runtime=Runtime.system(), host_uid=61_000) as box:
        out = ask(box, "echo", "x")
        assert out["uid"] == 1000
        assert _host_uid_of(box.sandbox_pid) == 61_000
        assert box.process_cap in ("cgroup", "rlimit")
        syscalls = ask(box, "syscalls")
        assert syscalls["ptrace_attach_init"] == "EPERM" and syscalls["mount_tmpfs"] == "EPERM"
    # With a world-readable runtime, a root supervisor picks a uid of its own per sandbox.
    with start(runtime=Runtime.system()) as one, start(runtime=Runtime.system()) as two:
        uids = {_host_uid_of(one.sandbox_pid), _host_uid_of(two.sandbox_pid)}
        assert len(uids) == 2 and all(uid >= 600_000 for uid in uids)
        assert ask(one, "echo", "a")["echo"] == "a"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_fork_bomb_is_contained_by_rlimit_as_a_dedicated_uid() -> None:
    with start(runtime=Runtime.system(), host_uid=61_001, use_cgroup=False,
               max_processes=32) as box:
        assert box.process_cap == "rlimit"
        out = ask(box, "fork_bomb", timeout=60)
    assert out["error"] == "EAGAIN" and out["forked"] < 32


def test_cold_start_is_fast() -> None:
    times = []
    for _ in range(3):
        started = time.perf_counter()
        with start() as box:
            times.append(time.perf_counter() - started)
            assert box.health()["state"] == "ready"
    assert sorted(times)[1] < 1.0, times


def test_decrypted_package_never_touches_disk(db) -> None:
    from kit.settings import get_settings
    from kit.storage import LocalStorage
    from partners.tenancy import repository
    from partners.tenancy.kms import LocalKeyManager
    from partners.tenancy.store import ArtifactStore

    settings = get_settings()
    store = ArtifactStore(LocalStorage(settings.storage_root), LocalKeyManager.from_settings())
    marker = os.urandom(16).hex()
    code = (HERE / "escape_model.py").read_bytes() + f"\nWATERMARK = '{marker}'\n".encode()
    layer = tar_layer(probe_files({"predict.py": code,
                                   "weights.bin": os.urandom(1 << 20) + marker.encode()}))
    digest = store.put_blob(db, "par_disk", [layer])
    del layer
    layers = store.open_layers(db, "par_disk", [digest], actor="supervisor:test",
                               deployment_id="dep_disk", reason="start replica")
    with Sandbox(SandboxSpec(layers=layers, manifest=MANIFEST)) as box:
        box.wait_ready(30)
        seen = ask(box, "find", {"marker": marker, "skip": list(RUNTIME_PATHS)})["hits"]
        assert sorted(seen) == ["/pkg/predict.py", "/pkg/weights.bin"]
        roots = [settings.data_dir.resolve(), Path(tempfile.gettempdir()), Path("/var/tmp"),
                 Path("/dev/shm"), box.socket_dir]
        assert files_holding(roots, marker.encode()) == []
    log = repository.access_log(db, "par_disk", digest)
    assert [(r.actor, r.deployment_id) for r in log] == [("supervisor:test", "dep_disk")]
