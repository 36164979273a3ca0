"""Replicas of deployed models: runner processes, a client for their socket, and a warm pool.

A worker process holds one `ReplicaPool`. Each replica is a separate runner process (later
inside its sandbox) that loaded the partner's model once; requests reuse warm replicas and
cold-start new ones up to the deployment's `max_replicas`.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.runner.protocol import ProtocolError, recv_frame, send_frame

PROJECT_ROOT = Path(__file__).resolve().parents[2]
_counter = itertools.count(1)


class ReplicaError(RuntimeError):
    """The replica failed: setup failed, it died, or it did not answer in time."""

    def __init__(self, message: str, *, partner_detail: str | None = None) -> None:
        super().__init__(message)
        self.partner_detail = partner_detail


@dataclass(frozen=True)
class DeploymentSpec:
    """What the pool needs to run replicas of one deployment."""

    deployment_id: str
    package_dir: Callable[[Path], None]  # materialises the package's files into a directory
    manifest: dict[str, Any]
    max_replicas: int = 1
    concurrency: int = 1
    keep_alive_s: float = 300.0


@dataclass
class Replica:
    """One runner process serving one deployment."""

    deployment_id: str
    workdir: Path
    process: subprocess.Popen[bytes]
    socket_path: Path
    concurrency: int
    in_flight: int = 0
    last_used: float = field(default_factory=time.monotonic)
    logs: deque[str] = field(default_factory=lambda: deque(maxlen=500))

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def connect(self, timeout: float | None) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(str(self.socket_path))
        return sock

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        with self.connect(timeout) as sock:
            send_frame(sock, {"type": "health"})
            return recv_frame(sock)

    def wait_ready(self, timeout: float) -> None:
        """Block until setup finished; raise with the model's traceback if it failed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise ReplicaError("the model's process exited during start-up",
                                   partner_detail="\n".join(self.logs))
            if self.socket_path.exists():
                try:
                    state = self.status()
                except (OSError, ProtocolError):
                    state = {"state": "starting"}
                if state.get("state") == "ready":
                    return
                if state.get("state") == "setup_failed":
                    raise ReplicaError("the model failed to set up", partner_detail=state.get("error"))
            time.sleep(0.02)
        raise ReplicaError(f"the model did not become ready within {timeout:.0f} s")

    def predict(
        self, request_id: str, inputs: dict[str, Any], output_dir: Path, *, timeout: float,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Run one request; returns the `result` frame or raises ReplicaError / ModelFailed."""
        try:
            with self.connect(timeout) as sock:
                send_frame(sock, {"type": "predict", "id": request_id, "input": inputs,
                                  "output_dir": str(output_dir)})
                while True:
                    frame = recv_frame(sock)
                    kind = frame["type"]
                    if kind == "result":
                        return frame
                    if kind == "error":
                        raise ModelFailed(frame.get("message") or "the model failed",
                                          traceback=frame.get("traceback"))
                    if on_event is not None:
                        on_event(frame)
        except TimeoutError as exc:
            raise ReplicaError(f"the model did not finish within {timeout:.0f} s") from exc
        except (ProtocolError, OSError) as exc:
            code = self.process.poll()
            raise ReplicaError(f"the model's process stopped mid-request (exit code {code})") from exc

    def cancel(self, request_id: str) -> None:
        try:
            with self.connect(5.0) as sock:
                send_frame(sock, {"type": "cancel", "id": request_id})
                recv_frame(sock)
        except (OSError, ProtocolError):
            pass

    def stop(self) -> None:
        if self.alive:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)
        shutil.rmtree(self.socket_path.parent, ignore_errors=True)


class ModelFailed(RuntimeError):
    """The model raised; the request fails with this message, the replica stays."""

    def __init__(self, message: str, *, traceback: str | None = None) -> None:
        super().__init__(message)
        self.traceback = traceback


def start_replica(spec: DeploymentSpec, *, root: Path, python: str | None = None) -> Replica:
    """Materialise the package into a private directory and start a runner process on it."""
    root.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"{spec.deployment_id}-{next(_counter)}-", dir=root))
    package = workdir / "package"
    package.mkdir()
    spec.package_dir(package)
    manifest_file = workdir / "manifest.json"
    manifest_file.write_text(json.dumps(spec.manifest))
    # Unix socket paths are limited to ~107 bytes, so sockets live in a short private dir.
    socket_path = Path(tempfile.mkdtemp(prefix="mg-")) / "runner.sock"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(PROJECT_ROOT),
        "PYTHONUNBUFFERED": "1",
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
    }
    process = subprocess.Popen(
        [python or sys.executable, "-m", "engine.runner", "--package", str(package),
         "--manifest", str(manifest_file), "--socket", str(socket_path)],
        cwd=package, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    replica = Replica(spec.deployment_id, workdir, process, socket_path, spec.concurrency)
    threading.Thread(target=_pump_logs, args=(replica,), daemon=True).start()
    return replica


def _pump_logs(replica: Replica) -> None:
    assert replica.process.stdout is not None
    for line in replica.process.stdout:
        replica.logs.append(line.decode(errors="replace").rstrip())


class ReplicaPool:
    """Warm replicas per deployment, shared by the worker's threads."""

    def __init__(self, root: Path, *, setup_timeout: float = 600.0, python: str | None = None) -> None:
        self.root = root
        self.setup_timeout = setup_timeout
        self.python = python
        self._replicas: dict[str, list[Replica]] = {}
        self._cond = threading.Condition()
        self._starting: dict[str, int] = {}

    def acquire(self, spec: DeploymentSpec, *, timeout: float) -> Replica:
        """A replica with a free slot: warm if possible, else a cold start, else wait."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                replicas = [r for r in self._replicas.get(spec.deployment_id, []) if r.alive]
                self._replicas[spec.deployment_id] = replicas
                free = [r for r in replicas if r.in_flight < r.concurrency]
                if free:
                    replica = min(free, key=lambda r: r.in_flight)
                    replica.in_flight += 1
                    return replica
                starting = self._starting.get(spec.deployment_id, 0)
                if len(replicas) + starting < spec.max_replicas:
                    self._starting[spec.deployment_id] = starting + 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ReplicaError("no replica became free in time")
                self._cond.wait(min(remaining, 1.0))
        try:
            replica = start_replica(spec, root=self.root, python=self.python)
            try:
                replica.wait_ready(self.setup_timeout)
            except ReplicaError:
                replica.stop()
                raise
        finally:
            with self._cond:
                self._starting[spec.deployment_id] -= 1
                self._cond.notify_all()
        with self._cond:
            replica.in_flight = 1
            self._replicas.setdefault(spec.deployment_id, []).append(replica)
        return replica

    def release(self, replica: Replica, *, broken: bool = False) -> None:
        """Give a slot back; a broken replica is stopped and replaced on next demand."""
        with self._cond:
            replica.in_flight -= 1
            replica.last_used = time.monotonic()
            if broken or not replica.alive:
                replicas = self._replicas.get(replica.deployment_id, [])
                if replica in replicas:
                    replicas.remove(replica)
            self._cond.notify_all()
        if broken or not replica.alive:
            replica.stop()

    def find(self, deployment_id: str) -> list[Replica]:
        with self._cond:
            return list(self._replicas.get(deployment_id, []))

    def reap_idle(self, keep_alive: dict[str, float]) -> int:
        """Stop replicas idle longer than their deployment's keep-alive."""
        now = time.monotonic()
        stopped = []
        with self._cond:
            for dep, replicas in self._replicas.items():
                for r in list(replicas):
                    if r.in_flight == 0 and now - r.last_used > keep_alive.get(dep, 300.0):
                        replicas.remove(r)
                        stopped.append(r)
        for r in stopped:
            r.stop()
        return len(stopped)

    def close(self) -> None:
        with self._cond:
            replicas = [r for rs in self._replicas.values() for r in rs]
            self._replicas.clear()
        for r in replicas:
            r.stop()
