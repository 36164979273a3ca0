"""Hosts of a test's own: network namespaces on a private /24, with PostgreSQL and Redis on it.

`Network` puts a bridge on this machine (the hosts' LAN; this machine is `.1` on it) and
gives each host a network namespace joined to the bridge by a veth pair. A process runs
"on" a host through `host.prefix()`: it enters the host's network namespace (nsenter, so
mounts and cgroups stay this machine's) and a UTS namespace whose hostname is the host's
name, which is what the worker writes into the leases it holds. `host.cut()` takes the
host's cable out (its veth goes down: packets vanish, connections hang, as in a real
partition); `host.heal()` plugs it back.

`PrivatePostgres` and `PrivateRedis` listen on loopback and on the bridge address, so the
hosts reach them over the virtual network; the shared servers on 127.0.0.1 are never
touched. Everything is removed on exit, also after a failure, and `sweep_leftovers()`
removes what a killed test run left behind.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
from pathlib import Path

from tests.faults.private_services import free_port
from tests.support import wait_healthy

NAME = "mgnet"  # namespaces are `mgnet-<pid>-<host>`: the pid of the run that made them


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_members(netns: str) -> None:
    # Whatever still runs in a namespace being removed is this run's own process.
    for pid in ip("netns", "pids", netns, check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def sweep_leftovers() -> None:
    """Remove namespaces and bridges of earlier runs whose process is gone."""
    for line in ip("netns", "list", check=False).stdout.splitlines():
        m = re.match(rf"({NAME}-(\d+)-\S+)", line)
        if m and not _alive(int(m.group(2))):
            _kill_members(m.group(1))
            ip("netns", "del", m.group(1), check=False)
    for line in ip("-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
        m = re.search(r"\d+: (mgb(\d+)):", line)
        if m and not _alive(int(m.group(2))):
            ip("link", "del", m.group(1), check=False)


def _free_subnet() -> ipaddress.IPv4Network:
    used = ip("-4", "-o", "addr", "show", check=False).stdout + ip("-4", "route", check=False).stdout
    pid = os.getpid()
    for n in range(250):
        net = ipaddress.IPv4Network(f"10.{200 + (pid + n) % 50}.{(pid // 50 + n) % 250}.0/24")
        if f"10.{net.network_address.packed[1]}.{net.network_address.packed[2]}." not in used:
            return net
    raise RuntimeError("no free private /24 for the test network")


class Host:
    """One host: a network namespace on the test network."""

    def __init__(self, network: Network, name: str, index: int) -> None:
        self.name = name
        self.netns = f"{NAME}-{os.getpid()}-{name}"
        self.outside = f"mgv{os.getpid()}x{index}"  # this machine's end of the host's cable
        self.address = str(network.subnet.network_address + 1 + index)
        ip("netns", "add", self.netns)
        ip("link", "add", self.outside, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        ip("link", "set", self.outside, "master", network.bridge, "up")
        inside = ["netns", "exec", self.netns, "ip"]
        ip(*inside, "addr", "add", f"{self.address}/{network.subnet.prefixlen}", "dev", "eth0")
        ip(*inside, "link", "set", "eth0", "up")
        ip(*inside, "link", "set", "lo", "up")
        ip(*inside, "route", "add", "default", "via", network.gateway)

    def prefix(self) -> list[str]:
        """Run a command on this host: the argv to put before it (it is exec'd, same pid)."""
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--", "unshare", "--uts", "--",
                "sh", "-c", 'hostname "$0" && exec "$@"', self.name]

    def cut(self) -> None:
        """Unplug the host: nothing reaches it and it reaches nothing."""
        ip("link", "set", self.outside, "down")

    def heal(self) -> None:
        ip("link", "set", self.outside, "up")

    def close(self) -> None:
        _kill_members(self.netns)
        ip("netns", "del", self.netns, check=False)  # takes the veth pair with it
        ip("link", "del", self.outside, check=False)


class Network:
    """A bridge with this machine at `.1` and hosts at `.2`, `.3`, ..."""

    def __init__(self) -> None:
        sweep_leftovers()
        self.subnet = _free_subnet()
        self.gateway = str(self.subnet.network_address + 1)
        self.bridge = f"mgb{os.getpid()}"
        self.hosts: list[Host] = []
        ip("link", "add", self.bridge, "type", "bridge")
        try:
            ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise

    def add_host(self, name: str) -> Host:
        host = Host(self, name, len(self.hosts) + 1)
        self.hosts.append(host)
        return host

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for host in self.hosts:
            host.close()
        self.hosts = []
        ip("link", "del", self.bridge, check=False)


# -- private servers on the test network: tests/faults/private_services, bound to the bridge


# -- an API process on a host ----------------------------------------------------------------


class ApiProcess:
    """`uvicorn gateway.app:create_app` on a host (or on this machine), reached over HTTP."""

    def __init__(self, env: dict[str, str], *, host: Host | None = None, log_dir: Path,
                 workers: int = 1) -> None:
        import sys

        self.address = host.address if host else "127.0.0.1"
        self.port = 8000 if host else free_port()
        self.url = f"http://{self.address}:{self.port}"
        self.log = log_dir / f"api-{host.name if host else 'local'}.log"
        self._file = open(self.log, "wb")
        root = Path(__file__).resolve().parents[2]
        self.process = subprocess.Popen(
            [*(host.prefix() if host else []), sys.executable, "-m", "uvicorn", "gateway.app:create_app",
             "--factory", "--host", "0.0.0.0" if host else "127.0.0.1", "--port", str(self.port),
             "--workers", str(workers), "--log-level", "warning", "--no-access-log", "--no-server-header"],
            cwd=root, env={**os.environ, **env}, stdout=self._file, stderr=subprocess.STDOUT,
            start_new_session=True)
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        try:
            wait_healthy(self.url, self.process, self.log)
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._file.close()
