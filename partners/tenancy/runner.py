"""Replicas of deployed models: one sandboxed runner each, and a warm pool per worker.

A worker process holds one `ReplicaPool`. Each replica is a `Sandbox` whose runner loaded the
partner's model once; requests reuse warm replicas and cold-start new ones, up to the
deployment's `max_replicas`, each serving up to `concurrency` requests at once.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry import trace

from engine.runner.protocol import ProtocolError, recv_frame, send_frame
from kit.ids import new_id
from partners import logs
from partners.tenancy.sandbox import Sandbox, SandboxError, SandboxSetupFailed, is_out_of_space
from partners.tenancy.sandbox_spec import OUT_DIR, LayerSource, SandboxSpec

tracer = trace.get_tracer("mediagate.replicas")
log = logging.getLogger(__name__)
GiB = 1 << 30
MiB = 1 << 20


class ReplicaError(RuntimeError):
    """The replica failed: setup failed, it died, or it did not answer in time."""

    def __init__(self, message: str, *, partner_detail: str | None = None) -> None:
        super().__init__(message)
        self.partner_detail = partner_detail


class ModelFailed(RuntimeError):
    """The model raised; the request fails with this message, the replica stays."""

    def __init__(self, message: str, *, traceback: str | None = None) -> None:
        super().__init__(message)
        self.traceback = traceback


@dataclass(frozen=True)
class PackageLayers:
    """A package opened for one replica start: its layer streams and where the model sits."""

    layers: Sequence[LayerSource]
    package_subdir: str
    size: int


@dataclass(frozen=True)
class DeploymentSpec:
    """What the pool needs to run replicas of one deployment."""

    deployment_id: str
    open_package: Callable[[], PackageLayers]  # decrypts (and audits) once per replica start
    manifest: dict[str, Any]
    max_replicas: int = 1
    concurrency: int = 1
    keep_alive_s: float = 300.0

    def sandbox_spec(self, package: PackageLayers) -> SandboxSpec:
        hardware = self.manifest.get("hardware") or {}
        memory_gb = int(hardware.get("memory_gb") or 0)
        return SandboxSpec(
            layers=package.layers, manifest=self.manifest, package_subdir=package.package_subdir,
            gpu=int(hardware.get("gpu_count") or 0) > 0,
            memory_bytes=max(memory_gb, 2) * GiB,
            package_tmpfs_bytes=package.size + 64 * MiB,
        )


def _file_names(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        if "$file" in value:
            yield str(value["$file"])
        else:
            for v in value.values():
                yield from _file_names(v)
    elif isinstance(value, list):
        for v in value:
            yield from _file_names(v)


@dataclass
class Replica:
    """One sandboxed runner serving one deployment."""

    deployment_id: str
    replica_id: str
    sandbox: Sandbox
    concurrency: int
    in_flight: int = 0
    last_used: float = field(default_factory=time.monotonic)
    failure: str | None = None  # why it broke, for the partner's view of its replicas

    @property
    def alive(self) -> bool:
        return self.sandbox.alive

    @property
    def logs(self) -> list[str]:
        return [line for _, line in self.sandbox.logs]

    def predict(
        self, request_id: str, inputs: dict[str, Any], dest: Path, *, timeout: float,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Run one request; its output files are copied into `dest` (never followed links).

        `timeout` bounds the whole request, not each silence: a model that keeps reporting
        progress past its deadline is stopped too.
        """
        deadline = time.monotonic() + timeout

        def watched(event: dict[str, Any]) -> None:
            if time.monotonic() > deadline:
                raise TimeoutError("past the request's deadline")
            if on_event is not None:
                on_event(event)

        try:
            with tracer.start_as_current_span("sandbox.predict", attributes={
                    "mediagate.request_id": request_id, "mediagate.deployment_id": self.deployment_id}):
                frame = self.sandbox.predict(request_id, inputs, timeout=timeout, on_event=watched)
        except TimeoutError as exc:
            raise ReplicaError(f"the model did not finish within {timeout:.0f} s") from exc
        except (ProtocolError, OSError, SandboxError) as exc:
            raise self._broken() from exc
        try:
            self._check_quota(frame)
            if frame["type"] == "error":
                raise ModelFailed(frame.get("message") or "the model failed",
                                  traceback=frame.get("traceback"))
            dest.mkdir(parents=True, exist_ok=True)
            for name in _file_names(frame.get("output")):
                try:
                    with self.sandbox.open_output(request_id, name) as src, open(dest / name, "wb") as out:
                        shutil.copyfileobj(src, out)
                except (OSError, SandboxError, ValueError) as exc:
                    raise ModelFailed(f"the model's output file {name!r} could not be read: {exc}") from exc
            return frame
        finally:
            self.sandbox.remove_outputs(request_id)

    def _broken(self) -> ReplicaError:
        """Why the sandbox stopped answering mid-request; the replica is marked failed."""
        sandbox = self.sandbox
        if sandbox.out_of_memory():
            cap = sandbox.cgroup.memory_max if sandbox.cgroup is not None else None
            self.failure = (f"the model ran out of memory: it passed its {(cap or 0) // MiB} MiB "
                            "cap (memory plus its package) and the replica was stopped")
        else:
            self.failure = f"the model's process stopped mid-request (exit status {sandbox.returncode})"
        return ReplicaError(self.failure, partner_detail=self.failure)

    def _check_quota(self, frame: dict[str, Any]) -> None:
        """Fail a request whose model filled /out (or /scratch, /tmp): its outputs may be partial."""
        full = self.sandbox.full_dirs()
        if frame["type"] == "error":
            if not is_out_of_space(str(frame.get("message") or "")):
                return
        elif OUT_DIR not in full:  # a result is only suspect when its own outputs may be cut
            return
        where = ", ".join(f"{path} ({self.sandbox.quota_of(path) // MiB} MiB)" for path in full)
        raise ModelFailed(f"the model wrote past its disk quota{': ' + where if where else ''}; "
                          "no output was kept", traceback=frame.get("traceback"))

    def cancel(self, request_id: str) -> None:
        """Ask the runner to stop a running request (the model checks `self.canceled`)."""
        try:
            with self.sandbox.connect(5.0) as sock:
                send_frame(sock, {"type": "cancel", "id": request_id})
                recv_frame(sock)
        except (TimeoutError, OSError, ProtocolError, SandboxError):
            pass

    def stop(self) -> None:
        self.sandbox.stop()
        if self.failure is not None:
            _report(self.deployment_id, self.replica_id, "failed", self.failure)
        else:
            _report(self.deployment_id, self.replica_id, "stopped")


def _report(deployment_id: str, replica_id: str, state: str, detail: str | None = None) -> None:
    # The partner's view of its replicas must never stop a replica from serving.
    try:
        logs.report_replica(deployment_id, replica_id, state, detail=detail)
    except Exception:  # noqa: BLE001 - logged, and the replica carries on
        log.exception("could not record replica %s of %s as %s", replica_id, deployment_id, state)


def start_replica(spec: DeploymentSpec, *, setup_timeout: float) -> Replica:
    """Open the package, start a sandbox on it and wait until the model has set up."""
    replica_id = new_id("rep")
    _report(spec.deployment_id, replica_id, "starting")
    package = spec.open_package()

    def ship(stream: str, line: str) -> None:
        logs.log_line(spec.deployment_id, line, replica_id=replica_id, stream=stream)

    sandbox = Sandbox(spec.sandbox_spec(package), on_log=ship)
    try:
        with tracer.start_as_current_span("sandbox.start", attributes={
                "mediagate.deployment_id": spec.deployment_id}):
            sandbox.start()
            sandbox.wait_ready(setup_timeout)
    except SandboxSetupFailed as exc:
        sandbox.stop()
        _report(spec.deployment_id, replica_id, "failed", exc.traceback)
        raise ReplicaError("the model failed to set up", partner_detail=exc.traceback) from exc
    except SandboxError as exc:
        sandbox.stop()
        _report(spec.deployment_id, replica_id, "failed", exc.logs)
        raise ReplicaError(str(exc), partner_detail=exc.logs) from exc
    _report(spec.deployment_id, replica_id, "ready")
    return Replica(spec.deployment_id, replica_id, sandbox, spec.concurrency)


class ReplicaPool:
    """Warm replicas per deployment, shared by the worker's threads."""

    def __init__(self, *, setup_timeout: float = 600.0) -> None:
        self.setup_timeout = setup_timeout
        self._replicas: dict[str, list[Replica]] = {}
        self._starting: dict[str, int] = {}
        self._cond = threading.Condition()

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
            replica = start_replica(spec, setup_timeout=self.setup_timeout)
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
        drop = broken or not replica.alive
        with self._cond:
            replica.in_flight -= 1
            replica.last_used = time.monotonic()
            replicas = self._replicas.get(replica.deployment_id, [])
            if drop and replica in replicas:
                replicas.remove(replica)
            self._cond.notify_all()
        if drop:
            replica.stop()

    def find(self, deployment_id: str) -> list[Replica]:
        with self._cond:
            return list(self._replicas.get(deployment_id, []))

    def deployment_ids(self) -> set[str]:
        with self._cond:
            return {dep for dep, replicas in self._replicas.items() if replicas}

    def prewarm(self, spec: DeploymentSpec, count: int) -> int:
        """Start replicas until `count` are up (or starting); returns how many were started."""
        started = 0
        while True:
            with self._cond:
                up = len(self._replicas.get(spec.deployment_id, [])) + self._starting.get(spec.deployment_id, 0)
                if up >= min(count, spec.max_replicas):
                    return started
                self._starting[spec.deployment_id] = self._starting.get(spec.deployment_id, 0) + 1
            try:
                replica = start_replica(spec, setup_timeout=self.setup_timeout)
            finally:
                with self._cond:
                    self._starting[spec.deployment_id] -= 1
            with self._cond:
                self._replicas.setdefault(spec.deployment_id, []).append(replica)
                self._cond.notify_all()
            started += 1

    def retire(self, deployment_id: str) -> None:
        """Stop a deployment's idle replicas now; busy ones finish their request first."""
        with self._cond:
            replicas = self._replicas.get(deployment_id, [])
            idle = [r for r in replicas if r.in_flight == 0]
            for r in idle:
                replicas.remove(r)
        for r in idle:
            r.stop()

    def reap_idle(self, keep_alive: dict[str, float], floors: dict[str, int] | None = None) -> int:
        """Stop replicas idle past their deployment's keep-alive, keeping each warm floor."""
        now, floors = time.monotonic(), floors or {}
        stopped: list[Replica] = []
        with self._cond:
            for dep, replicas in self._replicas.items():
                for r in sorted(replicas, key=lambda r: r.last_used):
                    if len(replicas) <= floors.get(dep, 0):
                        break
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
