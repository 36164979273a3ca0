"""Pool autoscaling: how many worker replicas each SLA pool needs, from its queue and its SLA.

A replica is one worker process on the pool's queue `pool.<name>`, running `concurrency`
requests at once. The recommendation covers the busy slots (requests running, averaged over
recent rounds, or when higher the start rate times the run time: Little's law) plus enough
slots to drain the queue within the pool's queue-wait target, at a target utilisation. It
scales up at once; it scales down only to the highest recommendation of the cooldown window
(what Kubernetes' HPA calls the stabilization window) and ignores changes inside a
tolerance, so a noisy load does not flap. A backlog is drained with extra replicas, which
are released once the cooldown has passed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolPolicy:
    """How one pool may scale."""

    pool: str
    min_replicas: int = 1
    max_replicas: int = 10
    concurrency: int = 2
    # The pool's SLA: p95 queue wait at most this (Pool.p95_queue_ms_target).
    target_queue_s: float = 2.0
    # Slots are planned at this share of their capacity: headroom for bursts inside a round.
    utilization: float = 0.8
    # A recommendation within this fraction of the current count changes nothing.
    tolerance: float = 0.1
    # Scale down only to the highest recommendation of the last `cooldown_s`.
    cooldown_s: float = 300.0
    # Running counts are averaged over this long: one sample is too noisy to act on.
    smoothing_s: float = 30.0
    # The run time assumed until the pool has run anything.
    default_run_s: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"pool {self.pool}: need 0 <= min_replicas <= max_replicas")
        if self.concurrency < 1 or self.target_queue_s <= 0 or not 0 < self.utilization <= 1:
            raise ValueError(f"pool {self.pool}: concurrency >= 1, target > 0, 0 < utilization <= 1")


@dataclass(frozen=True)
class PoolLoad:
    """What a pool looks like now."""

    queued: int
    running: float
    run_s: float | None = None  # observed run time (median) of its recent requests
    started_per_s: float = 0.0  # requests started per second over the observation window


@dataclass(frozen=True)
class Decision:
    """One round's outcome for one pool."""

    pool: str
    current: int
    desired: int
    recommended: int
    reason: str
    load: PoolLoad


def recommend(policy: PoolPolicy, load: PoolLoad) -> int:
    """Replicas this load needs to keep the pool's queue wait within its target."""
    run_s = load.run_s if load.run_s and load.run_s > 0 else policy.default_run_s
    busy = max(float(load.running), load.started_per_s * run_s)
    # A queued request needs a slot for `run_s` within the target, and never more than one slot.
    drain = load.queued * min(1.0, run_s / policy.target_queue_s)
    slots = (busy + drain) / policy.utilization
    replicas = math.ceil(slots / policy.concurrency - 1e-9)
    return max(policy.min_replicas, min(policy.max_replicas, replicas))


@dataclass
class _PoolState:
    current: int
    last_up: float
    history: deque[tuple[float, int]] = field(default_factory=deque)
    running: deque[tuple[float, float]] = field(default_factory=deque)


class Autoscaler:
    """Turns each round's pool loads into desired replica counts, remembering what it decided."""

    def __init__(self, policies: Iterable[PoolPolicy], *, now: float,
                 current: Mapping[str, int] | None = None) -> None:
        self.policies = {p.pool: p for p in policies}
        current = current or {}
        self._state = {
            name: _PoolState(current=min(p.max_replicas, max(p.min_replicas, current.get(name, p.min_replicas))),
                             last_up=now)
            for name, p in self.policies.items()
        }

    def current(self, pool: str) -> int:
        return self._state[pool].current

    def set_current(self, pool: str, replicas: int) -> None:
        """What is really running (e.g. after applying a decision failed)."""
        self._state[pool].current = replicas

    def decide(self, pool: str, load: PoolLoad, *, now: float) -> Decision:
        """The desired replica count for `pool` at time `now` (seconds, monotonic)."""
        policy, state = self.policies[pool], self._state[pool]
        state.running.append((now, load.running))
        while state.running[0][0] < now - policy.smoothing_s:
            state.running.popleft()
        smoothed = sum(n for _, n in state.running) / len(state.running)
        recommended = recommend(policy, replace(load, running=smoothed))
        state.history.append((now, recommended))
        while state.history[0][0] < now - policy.cooldown_s:
            state.history.popleft()
        current = state.current
        desired, reason = current, "steady"
        if recommended > current:
            if current and recommended <= current * (1 + policy.tolerance):
                reason = "within tolerance"
            else:
                desired, reason = recommended, "scale up"
        elif recommended < current:
            stable = max(n for _, n in state.history)
            if now - state.last_up < policy.cooldown_s or stable >= current:
                reason = "cooldown"
            elif stable >= current * (1 - policy.tolerance):
                reason = "within tolerance"
            else:
                desired, reason = stable, "scale down"
        if desired > current:
            state.last_up = now
        state.current = desired
        return Decision(pool, current, desired, recommended, reason, load)


# -- observing a live pool ------------------------------------------------------------------


def broker_queue_length(queue: str) -> int:
    """Messages waiting in a Celery queue (every priority step), 0 if the broker has none."""
    from kit.tasks import get_celery

    try:
        with get_celery().connection_for_read() as conn:
            return int(conn.default_channel.queue_declare(queue, passive=True).message_count)
    except Exception:  # noqa: BLE001 - a queue no worker ever declared, or the broker away
        return 0


def observe(pool: str, *, window_s: float) -> PoolLoad:
    """The pool's load now: queued (database or broker, whichever is longer), running, run time."""
    import datetime as dt

    from gateway import repository as repo
    from kit.db import session_scope, utcnow
    from kit.tasks import pool_queue

    with session_scope() as session:
        queued = repo.queued_count(session, pool)
        running = repo.running_in_pool(session, pool)
        timings = repo.pool_timings(session, pool, utcnow() - dt.timedelta(seconds=window_s))
    # The database counts requests a worker has prefetched; the broker counts messages not
    # yet delivered, e.g. re-sent ones: the longer of the two is the backlog.
    queued = max(queued, broker_queue_length(pool_queue(pool)))
    run_ms = timings["run_p50"]
    return PoolLoad(queued=queued, running=running,
                    run_s=None if run_ms is None else float(run_ms) / 1000,
                    started_per_s=timings["started"] / window_s)


def pool_targets(pools: Iterable[str]) -> dict[str, float]:
    """The SLA queue-wait target (seconds) of each pool that has a row."""
    from gateway import repository as repo
    from kit.db import session_scope

    with session_scope() as session:
        return {name: p.p95_queue_ms_target / 1000 for name in pools
                if (p := repo.pool_by_name(session, name)) is not None}


def policies_from(pools: Iterable[str], base: PoolPolicy, overrides: Mapping[str, Mapping[str, Any]],
                  targets: Mapping[str, float]) -> list[PoolPolicy]:
    """One policy per pool: the base, the pool's SLA target, then the pool's own overrides."""
    out = []
    for name in pools:
        fields: dict[str, Any] = {"pool": name}
        if name in targets:
            fields["target_queue_s"] = targets[name]
        fields.update(overrides.get(name, {}))
        out.append(replace(base, **fields))
    return out


# -- applying decisions ---------------------------------------------------------------------


def write_state(path: Path, decisions: list[Decision], *, at: str) -> None:
    """Write the decisions as JSON, atomically (a reader never sees half a file)."""
    payload = {"at": at, "pools": {d.pool: {"desired": d.desired, "previous": d.current,
                                            "recommended": d.recommended, "reason": d.reason,
                                            "load": asdict(d.load)} for d in decisions}}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


def read_state(path: Path) -> dict[str, int]:
    """The desired counts a previous run wrote (empty when there is none)."""
    try:
        pools = json.loads(path.read_text())["pools"]
    except (FileNotFoundError, ValueError, KeyError):
        return {}
    return {name: int(p["desired"]) for name, p in pools.items()}


def command_applier(template: str, *, timeout_s: float = 60.0) -> Callable[[Decision], bool]:
    """Run `template` (e.g. `kubectl scale deployment/mediagate-worker-{pool} --replicas={replicas}`)
    for each change; True when it succeeded."""

    def apply(decision: Decision) -> bool:
        argv = [part.format(pool=decision.pool, replicas=decision.desired) for part in shlex.split(template)]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("scaling pool %s failed: %s", decision.pool, exc)
            return False
        if done.returncode != 0:
            log.warning("scaling pool %s failed (%s): %s", decision.pool, done.returncode,
                        (done.stderr or done.stdout).strip()[-500:])
        return done.returncode == 0

    return apply


class KubernetesScale:
    """A pool's worker Deployment read and scaled through its `scale` subresource.

    In a pod it finds the API server, namespace and service-account token where Kubernetes
    puts them; the token is read on every call, as the kubelet rotates it.
    """

    ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")

    def __init__(self, deployment: str = "mediagate-worker-{pool}", *, namespace: str | None = None,
                 api_url: str | None = None, token_file: Path | None = None, ca_file: Path | None = None,
                 timeout_s: float = 10.0) -> None:
        self.deployment = deployment
        self.namespace = namespace or (self.ACCOUNT / "namespace").read_text().strip()
        if api_url is None:
            host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            api_url = f"https://{host}:{port}"
        self.api_url = api_url.rstrip("/")
        self.token_file = token_file or self.ACCOUNT / "token"
        default_ca = self.ACCOUNT / "ca.crt"
        self.verify: str | bool = str(ca_file or default_ca) if (ca_file or default_ca.exists()) else True
        self.timeout_s = timeout_s

    def _url(self, pool: str) -> str:
        name = self.deployment.format(pool=pool)
        return f"{self.api_url}/apis/apps/v1/namespaces/{self.namespace}/deployments/{name}/scale"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token_file.read_text().strip()}", "Accept": "application/json"}

    def replicas(self, pool: str) -> int | None:
        """The Deployment's replica count now (None when it cannot be read)."""
        import httpx

        try:
            r = httpx.get(self._url(pool), headers=self._headers(), verify=self.verify, timeout=self.timeout_s)
            r.raise_for_status()
            return int(r.json()["spec"].get("replicas", 0))
        except (httpx.HTTPError, OSError, ValueError, KeyError) as exc:
            log.warning("reading the replicas of pool %s failed: %s", pool, exc)
            return None

    def apply(self, decision: Decision) -> bool:
        """Set the Deployment's replicas to the decision; True when the API server took it."""
        import httpx

        try:
            r = httpx.patch(self._url(decision.pool), json={"spec": {"replicas": decision.desired}},
                            headers={**self._headers(), "Content-Type": "application/merge-patch+json"},
                            verify=self.verify, timeout=self.timeout_s)
        except (httpx.HTTPError, OSError) as exc:
            log.warning("scaling pool %s failed: %s", decision.pool, exc)
            return False
        if r.status_code >= 300:
            log.warning("scaling pool %s failed (%s): %s", decision.pool, r.status_code, r.text[:500])
        return r.status_code < 300
