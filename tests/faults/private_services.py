"""PostgreSQL and Redis servers of a test's own, on free ports, to stop and restart.

The shared servers on 5432 and 6379 serve every other test; a fault test that takes its
database or broker away does it to these instead. They listen on loopback and, for tests
with hosts of their own (tests/multihost), on one more address. Each is a context manager
that stops its server and deletes its files on exit, whatever happened inside.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

PG_USER = "postgres"


LOOPBACK = "127.0.0.1"


def free_port(address: str = LOOPBACK) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def _listening(address: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((address, port)) == 0


def _addresses(address: str) -> list[str]:
    return list(dict.fromkeys([LOOPBACK, address]))


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        found = [shutil.which(name) or ""]
    if not found[-1]:
        raise RuntimeError(f"PostgreSQL's {name} is not installed")
    return found[-1]  # the newest major version


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root.
    if os.geteuid() == 0:
        return ["runuser", "-u", PG_USER, "--", *cmd]
    return cmd


class PrivatePostgres:
    """A throwaway PostgreSQL cluster: trust auth (also for `subnet`), fsync off, one database."""

    def __init__(self, address: str = LOOPBACK, subnet: str | None = None, database: str = "mediagate") -> None:
        self.address, self.subnet = address, subnet
        self.port = free_port()
        self.database = database
        self.root = Path(tempfile.mkdtemp(prefix="mediagate-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._running = False

    @property
    def server_url(self) -> str:
        """The server, as `MEDIAGATE_TEST_PG` spells it (no database)."""
        return f"postgresql+psycopg://{PG_USER}@{self.address}:{self.port}"

    @property
    def url(self) -> str:
        """The `mediagate` database on this server."""
        return f"{self.server_url}/{self.database}"

    def __enter__(self) -> PrivatePostgres:
        try:
            self._init()
            self.start()
            self._run(["createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, self.database])
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, cmd: list[str], timeout: float = 60) -> None:
        done = subprocess.run(_as_postgres([_pg_bin(cmd[0]), *cmd[1:]]), capture_output=True, text=True,
                              timeout=timeout, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}\n{self._log_tail()}")

    def _init(self) -> None:
        if os.geteuid() == 0:
            user = pwd.getpwnam(PG_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self._run(["initdb", "-D", str(self.data), "-U", PG_USER, "--auth=trust", "--no-sync",
                   "--encoding=UTF8", "--locale=C"], timeout=120)
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nlisten_addresses = '{','.join(_addresses(self.address))}'\nport = {self.port}\n"
                       f"unix_socket_directories = '{self.root}'\nfsync = off\nsynchronous_commit = off\n"
                       "full_page_writes = off\nmax_connections = 300\nshared_buffers = 32MB\n")
        if self.subnet:
            with open(self.data / "pg_hba.conf", "a") as hba:
                hba.write(f"\nhost all all {self.subnet} trust\n")

    def start(self) -> None:
        """Start the server and wait until it takes connections."""
        self._run(["pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start"], timeout=90)
        self._running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: clients are cut off; `immediate`: as a crash would)."""
        if self._running:
            self._run(["pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"], timeout=90)
            self._running = False

    def restart(self, down_s: float = 0.0, mode: str = "fast") -> None:
        """Stop, stay down for `down_s` seconds, start again."""
        self.stop(mode)
        time.sleep(down_s)
        self.start()

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def close(self) -> None:
        try:
            self.stop("immediate")
        except (RuntimeError, subprocess.TimeoutExpired):
            pid_file = self.data / "postmaster.pid"
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().split()[0]), 9)
                except (OSError, ValueError):
                    pass
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """A throwaway redis-server on a free port, with no persistence: a restart loses everything,
    as a Redis without AOF does."""

    def __init__(self, address: str = LOOPBACK) -> None:
        self.address = address
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="mediagate-redis-"))
        self.log = self.root / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://{self.address}:{self.port}/{db}"

    def __enter__(self) -> PrivateRedis:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        """Start the server and wait until it answers."""
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", *_addresses(self.address),
             "--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", str(self.root),
             "--logfile", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while not _listening(self.address, self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start:\n" + self.log.read_text(errors="replace"))
            time.sleep(0.05)

    def stop(self) -> None:
        """Kill the server at once (its data is gone, as after a crash without persistence)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down for `down_s` seconds, start again on the same port."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
