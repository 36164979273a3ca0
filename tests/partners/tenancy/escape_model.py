"""The model a hostile partner would upload: every `predict(action=...)` tries one way out.

This file is packaged (in memory) and runs INSIDE a sandbox through the real runner; it only
imports the standard library and the engine SDK. Each probe returns what happened, as data,
so the tests on the host decide what counts as a failure.
"""

import ctypes
import errno
import json
import os
import socket
import stat
import subprocess
import time

from engine.sdk import Model

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]

# x86_64 syscall numbers of calls that have no libc or os wrapper here.
SYS = {"keyctl": 250, "bpf": 321, "perf_event_open": 298, "setns": 308, "init_module": 175,
       "kexec_load": 246, "userfaultfd": 323, "io_uring_setup": 425, "process_vm_readv": 310}
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWPID = 0x20000, 0x10000000, 0x40000000, 0x20000000


def outcome(fn):
    """'ok: ...' or the errno name (or exception type) of a failed attempt."""
    try:
        result = fn()
    except OSError as exc:
        return errno.errorcode.get(exc.errno, type(exc).__name__) if exc.errno else type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - a probe reports, never raises
        return type(exc).__name__
    return f"ok: {result}"


def c_call(result):
    """A libc return value: 'ok' or the errno name."""
    if result == -1:
        return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
    return f"ok: {result}"


def status_field(name, pid="self"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    return None


def tcp(host, port):
    with socket.create_connection((host, port), timeout=2):
        return "connected"


def read(path):
    if os.path.isdir(path):
        return sorted(os.listdir(path))
    with open(path, "rb") as f:
        return len(f.read(1 << 16))


def write(path):
    with open(path, "wb") as f:
        f.write(b"x")
    return "written"


def find_marker(marker, skip=()):
    """Every readable file (not in /proc, /sys or `skip`) whose bytes contain `marker`."""
    hits = []
    skip = {"/proc", "/sys", *skip}
    for dirpath, dirnames, filenames in os.walk("/"):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    continue
                with open(path, "rb") as f:
                    if marker in f.read():
                        hits.append(path)
            except OSError:
                continue
    return hits


class Probe(Model):
    def predict(self, action: str, arg: str = "") -> dict:
        return getattr(self, "do_" + action)(json.loads(arg) if arg else None)

    def do_echo(self, arg):
        return {"echo": arg, "uid": os.getuid(), "pid": os.getpid()}

    def do_network(self, arg):
        unreachable = "192.0.2.1"  # TEST-NET-1: never routed, so nothing could leave even if open
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        return {
            "interfaces": [name for _, name in socket.if_nameindex()],
            "host_postgres": outcome(lambda: tcp("127.0.0.1", arg["pg_port"])),
            "host_service": outcome(lambda: tcp("127.0.0.1", arg["host_port"])),
            "public": outcome(lambda: tcp(unreachable, 443)),
            "public_udp": outcome(lambda: udp.sendto(b"x", (unreachable, 53))),
            "dns": outcome(lambda: socket.getaddrinfo("example.com", 443)),
            "host_abstract_socket": outcome(lambda: abstract.connect("\0" + arg["abstract"])),
            "loopback_self": outcome(self._loopback_self),
        }

    def _loopback_self(self):
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=2):
            return "loopback works"

    def do_read(self, arg):
        return {path: outcome(lambda p=path: read(p)) for path in arg["paths"]}

    def do_processes(self, arg):
        pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        return {
            "pids": pids,
            "host_pid_exists": os.path.exists(f"/proc/{arg['host_pid']}"),
            "other_sandbox_root": outcome(lambda: read(f"/proc/{arg['other_pid']}/root/pkg")),
            "cmdlines": [open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace")
                         for p in pids if os.path.exists(f"/proc/{p}/cmdline")],
        }

    def do_find(self, arg):
        return {"hits": find_marker(arg["marker"].encode(), arg.get("skip", ()))}

    def do_write(self, arg):
        return {path: outcome(lambda p=path: write(p)) for path in arg["paths"]}

    def do_fork_bomb(self, arg):
        children, error = [], None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                pid = os.fork()
            except OSError as exc:
                error = errno.errorcode.get(exc.errno)
                break
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            children.append(pid)
        return {"forked": len(children), "error": error}

    def do_memory(self, arg):
        blocks, error = [], None
        try:
            while len(blocks) < 1024:
                block = bytearray(64 * 1024 * 1024)
                block[::4096] = b"\1" * len(block[::4096])  # touch every page
                blocks.append(block)
        except MemoryError:
            error = "MemoryError"
        held_mb = 64 * len(blocks)
        blocks.clear()
        return {"held_mb": held_mb, "error": error}

    def do_syscalls(self, arg):
        flags = CLONE_NEWNS
        mount_point = "/tmp/m"
        os.makedirs(mount_point, exist_ok=True)
        return {
            "ptrace_traceme": c_call(_libc.ptrace(0, 0, None, None)),
            "ptrace_attach_init": c_call(_libc.ptrace(16, 1, None, None)),
            "process_vm_readv": c_call(_libc.syscall(SYS["process_vm_readv"], 1, 0, 0, 0, 0, 0)),
            "mknod_char": outcome(lambda: os.mknod("/tmp/null2", stat.S_IFCHR | 0o666, os.makedev(1, 3))),
            "mknod_block": outcome(lambda: os.mknod("/tmp/sda", stat.S_IFBLK | 0o666, os.makedev(8, 0))),
            "mkfifo": outcome(lambda: os.mkfifo("/tmp/fifo")),
            "mount_tmpfs": c_call(_libc.mount(b"none", mount_point.encode(), b"tmpfs", 0, None)),
            "mount_proc": c_call(_libc.mount(b"proc", mount_point.encode(), b"proc", 0, None)),
            "umount_pkg": c_call(_libc.umount2(b"/pkg", 2)),
            "unshare_user": c_call(_libc.unshare(CLONE_NEWUSER)),
            "unshare_mount": c_call(_libc.unshare(flags)),
            "unshare_net": c_call(_libc.unshare(CLONE_NEWNET)),
            "setns": c_call(_libc.syscall(SYS["setns"], 0, 0)),
            "unshare_binary": subprocess.run(["/usr/bin/unshare", "-U", "-r", "true"],
                                             capture_output=True).returncode,
            "keyctl": c_call(_libc.syscall(SYS["keyctl"], 0, 0, 0, 0, 0)),
            "bpf": c_call(_libc.syscall(SYS["bpf"], 0, 0, 0)),
            "perf_event_open": c_call(_libc.syscall(SYS["perf_event_open"], 0, 0, -1, -1, 0)),
            "init_module": c_call(_libc.syscall(SYS["init_module"], 0, 0, 0)),
            "kexec_load": c_call(_libc.syscall(SYS["kexec_load"], 0, 0, 0, 0)),
            "userfaultfd": c_call(_libc.syscall(SYS["userfaultfd"], 0)),
            "io_uring_setup": c_call(_libc.syscall(SYS["io_uring_setup"], 1, 0)),
            "setuid_root": outcome(lambda: os.setuid(0)),
            "chroot": outcome(lambda: os.chroot("/tmp")),
            "seccomp": status_field("Seccomp"),
            "no_new_privs": status_field("NoNewPrivs"),
            "cap_eff": status_field("CapEff"),
        }

    def do_setuid_binary(self, arg):
        # su is setuid root on the host; started here it must run with our own uid.
        proc = subprocess.Popen(["/usr/bin/su"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        time.sleep(0.3)
        try:
            uids = status_field("Uid", proc.pid)
        except OSError:
            uids = None
        proc.kill()
        proc.communicate()
        mounts = open("/proc/self/mountinfo").read().splitlines()
        return {"su_uids": uids, "uid": os.getuid(),
                "all_mounts_nosuid": all("nosuid" in line.split()[5] for line in mounts)}

    def do_hijack(self, arg):
        """Point the supervisor's socket and an output file at host paths."""
        os.unlink("/run/mediagate/runner.sock")
        os.symlink(arg["socket_target"], "/run/mediagate/runner.sock")
        out = f"/out/{arg['request_id']}"
        os.makedirs(out, exist_ok=True)
        os.symlink(arg["file_target"], f"{out}/stolen.txt")
        with open(f"{out}/fine.txt", "w") as f:
            f.write("a real output")
        return {"done": True}

    def do_devices(self, arg):
        return {"dev": sorted(os.listdir("/dev"))}

    def do_limits(self, arg):
        import resource

        return {"as": resource.getrlimit(resource.RLIMIT_AS)[0],
                "data": resource.getrlimit(resource.RLIMIT_DATA)[0]}

    def do_exit(self, arg):
        os._exit(3)

    def do_fill_out(self, arg):
        """Write `mb` MiB as an output; with `swallow`, ignore running out of space and
        return the cut file anyway, as a careless model would."""
        from pathlib import Path

        if not arg["swallow"]:
            path = Path("/tmp/blob.bin")
            path.write_bytes(b"\1" * (arg["mb"] << 20))
            return path  # the runner copies it into this request's /out dir
        (own,) = os.listdir("/out")  # the runner made this request's dir
        try:
            with open(f"/out/{own}/blob.bin", "wb") as f:
                for _ in range(arg["mb"]):
                    f.write(b"\1" * (1 << 20))
        except OSError:
            pass
        return {"wrote": True}
