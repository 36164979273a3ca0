"""The pool autoscaler against simulated load curves, and `mediagate autoscale` on a live database.

The simulation is a small discrete-time queue: Poisson arrivals at a rate that follows the
curve, a FIFO queue, replicas of `concurrency` slots that take `startup_s` to come up, run
times around `run_s`; every `interval_s` the autoscaler sees what `observe()` would report
(queued, running, median run time and start rate over a window) and its decision is applied.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from gateway.autoscale import Autoscaler, PoolLoad, PoolPolicy, recommend
from tests.support import ROOT

DT = 0.25


@dataclass
class Replica:
    ready_at: float
    slots: list[float] = field(default_factory=list)  # finish times of the requests it runs
    draining: bool = False


@dataclass
class Outcome:
    waits: list[tuple[float, float]]  # (arrival time, queue wait) of every started request
    replicas: list[tuple[float, int]]  # (time, desired count) after each round
    unfinished: int

    def p95_wait(self, start: float = 0.0, end: float = math.inf) -> float:
        waits = sorted(w for t, w in self.waits if start <= t < end)
        return waits[max(0, math.ceil(0.95 * len(waits)) - 1)] if waits else 0.0

    def count_at(self, t: float) -> int:
        return [n for when, n in self.replicas if when <= t][-1]

    def changes(self, start: float = 0.0, end: float = math.inf) -> list[tuple[float, int]]:
        """(time, delta) of each change of the desired count inside [start, end)."""
        out = []
        for (_, a), (t, b) in zip(self.replicas, self.replicas[1:], strict=False):
            if a != b and start <= t < end:
                out.append((t, b - a))
        return out

    def reversals(self, within: float) -> int:
        """Changes against the direction of the previous change less than `within` seconds ago."""
        changes = self.changes()
        return sum(1 for (t0, d0), (t1, d1) in zip(changes, changes[1:], strict=False)
                   if (d0 > 0) != (d1 > 0) and t1 - t0 < within)


def simulate(rate: Callable[[float], float], *, duration: float, policy: PoolPolicy, run_s: float = 2.0,
             startup_s: float = 5.0, interval_s: float = 5.0, window_s: float = 30.0, seed: int = 7,
             autoscale: bool = True) -> Outcome:
    rng = random.Random(seed)
    scaler = Autoscaler([policy], now=0.0)
    replicas = [Replica(ready_at=0.0) for _ in range(policy.min_replicas)]
    queue: deque[float] = deque()
    waits: list[tuple[float, float]] = []
    starts: deque[float] = deque()
    runs: deque[tuple[float, float]] = deque()  # (finish time, run time)
    history = [(0.0, len(replicas))]
    next_arrival = rng.expovariate(max(rate(0.0), 1e-9)) if rate(0.0) > 0 else DT
    next_round = interval_s
    t = 0.0
    while t < duration:
        t += DT
        while next_arrival <= t:  # thinning keeps a time-varying rate Poisson
            if rng.random() < rate(next_arrival) / 40.0:
                queue.append(next_arrival)
            next_arrival += rng.expovariate(40.0)
        for r in replicas:
            r.slots = [f for f in r.slots if f > t]
        replicas = [r for r in replicas if not (r.draining and not r.slots)]
        for r in replicas:
            if r.draining or r.ready_at > t:
                continue
            while queue and len(r.slots) < policy.concurrency:
                arrived = queue.popleft()
                took = run_s * rng.uniform(0.5, 1.5)
                r.slots.append(t + took)
                runs.append((t + took, took))
                starts.append(t)
                waits.append((arrived, t - arrived))
        if autoscale and t >= next_round:
            next_round += interval_s
            while starts and starts[0] < t - window_s:
                starts.popleft()
            recent = sorted(took for done, took in runs if t - window_s <= done <= t)
            load = PoolLoad(queued=len(queue), running=sum(len(r.slots) for r in replicas),
                            run_s=recent[len(recent) // 2] if recent else None,
                            started_per_s=len(starts) / window_s)
            desired = scaler.decide(policy.pool, load, now=t).desired
            active = [r for r in replicas if not r.draining]
            for _ in range(desired - len(active)):
                replicas.append(Replica(ready_at=t + startup_s))
            # Scale down takes idle replicas first; a busy one finishes what it runs, then stops.
            for r in sorted(active, key=lambda r: len(r.slots))[:max(0, len(active) - desired)]:
                r.draining = True
            history.append((t, desired))
    return Outcome(waits, history, unfinished=len(queue))


POLICY = PoolPolicy(pool="gold", min_replicas=1, max_replicas=40, concurrency=2, target_queue_s=10.0,
                    cooldown_s=120.0)


def step(t: float) -> float:
    return 12.0 if 60 <= t < 300 else 1.0


def ramp(t: float) -> float:
    if t < 200:
        return 15.0 * t / 200
    if t < 300:
        return 15.0
    return max(0.0, 15.0 * (1 - (t - 300) / 100))


def spike(t: float) -> float:
    return 30.0 if 100 <= t < 120 else 2.0


def decay(t: float) -> float:
    return 20.0 * math.exp(-t / 60)


def test_recommendation_covers_busy_slots_and_drains_the_queue_within_the_target() -> None:
    policy = PoolPolicy(pool="p", min_replicas=0, max_replicas=100, concurrency=2, target_queue_s=2.0,
                        utilization=1.0)
    assert recommend(policy, PoolLoad(queued=0, running=0)) == 0
    assert recommend(policy, PoolLoad(queued=1, running=0, run_s=0.5)) == 1  # scale from zero
    assert recommend(policy, PoolLoad(queued=0, running=6, run_s=1.0)) == 3
    # Little's law: 10 starts/s of 1 s runs keep 10 slots busy even when a sample sees fewer.
    assert recommend(policy, PoolLoad(queued=0, running=4, run_s=1.0, started_per_s=10)) == 5
    # 40 queued of 1 s runs drain within 2 s with 20 more slots; a run longer than the target
    # needs one slot per queued request, never more.
    assert recommend(policy, PoolLoad(queued=40, running=0, run_s=1.0)) == 10
    assert recommend(policy, PoolLoad(queued=40, running=0, run_s=60.0)) == 20
    assert recommend(replace(policy, min_replicas=3), PoolLoad(queued=0, running=0)) == 3
    assert recommend(policy, PoolLoad(queued=10_000, running=0, run_s=1.0)) == 100


def test_step_load_scales_up_within_two_rounds_holds_the_sla_and_scales_down_after_the_cooldown() -> None:
    fixed = simulate(step, duration=600, policy=POLICY, autoscale=False)
    assert fixed.p95_wait() > 10 * POLICY.target_queue_s  # the load does need scaling
    out = simulate(step, duration=600, policy=POLICY)
    need = math.ceil(12.0 * 2.0 / POLICY.concurrency)
    assert out.count_at(60 + 2 * 5.0) >= need  # two rounds after the step, capacity is there
    assert out.p95_wait() <= POLICY.target_queue_s
    assert out.p95_wait(90, 300) <= 1.0  # once scaled, the plateau waits next to nothing
    assert all(d > 0 for _, d in out.changes(90, 300))  # nothing released while the load holds
    assert out.reversals(within=POLICY.cooldown_s) == 0
    # The drop at t=300: what the plateau needed stays for a cooldown; then down to what 1 req/s needs.
    assert min(n for t, n in out.replicas if 300 <= t < 300 + POLICY.cooldown_s) >= need
    assert out.count_at(300 + 30 + POLICY.cooldown_s + 10) <= 3
    assert out.unfinished == 0


def test_ramp_is_followed_up_and_down_without_flapping() -> None:
    out = simulate(ramp, duration=700, policy=POLICY)
    assert out.p95_wait() <= POLICY.target_queue_s
    ups, downs = out.changes(0, 300), out.changes(300, 700)
    assert ups and all(d > 0 for _, d in ups)
    assert downs and all(d < 0 for _, d in downs)
    assert out.count_at(700) <= 2
    assert out.reversals(within=POLICY.cooldown_s) == 0
    assert out.unfinished == 0


def test_spike_is_absorbed_and_released_only_after_the_cooldown() -> None:
    out = simulate(spike, duration=500, policy=POLICY)
    assert out.count_at(100 + 2 * 5.0) >= 20
    # A spike shorter than startup + one round cannot be met at once; its backlog drains fast.
    assert out.p95_wait(100, 120) <= 2 * POLICY.target_queue_s
    assert out.p95_wait(140, 500) <= 1.0
    first_down = next(t for t, d in out.changes() if d < 0)
    assert 120 + POLICY.cooldown_s - 10 <= first_down <= 120 + 30 + POLICY.cooldown_s + 10
    assert out.count_at(500) <= 4
    assert out.reversals(within=POLICY.cooldown_s) == 0
    assert out.unfinished == 0


def test_decaying_load_steps_down_monotonically() -> None:
    out = simulate(decay, duration=600, policy=POLICY)
    assert out.p95_wait() <= POLICY.target_queue_s
    after_peak = out.changes(30, 600)
    assert after_peak and all(d < 0 for _, d in after_peak)
    assert out.count_at(600) == POLICY.min_replicas


def test_noisy_constant_load_does_not_flap() -> None:
    out = simulate(lambda t: 8.0, duration=900, policy=POLICY, seed=11)
    assert out.p95_wait(60, 900) <= 1.0
    assert out.reversals(within=POLICY.cooldown_s) == 0
    assert out.changes(300, 900) == []  # settled: the noise moves nothing
    assert out.count_at(900) == pytest.approx(8.0 * 2.0 / 0.8 / 2, abs=3)


def test_scale_down_waits_for_a_cooldown_and_ignores_small_changes() -> None:
    policy = PoolPolicy(pool="p", min_replicas=1, max_replicas=20, concurrency=1, target_queue_s=1.0,
                        utilization=1.0, cooldown_s=60.0, tolerance=0.1, smoothing_s=0.0)
    scaler = Autoscaler([policy], now=0.0)
    assert scaler.decide("p", PoolLoad(queued=0, running=10, run_s=1.0), now=0).desired == 10
    assert scaler.decide("p", PoolLoad(queued=0, running=11, run_s=1.0), now=10).desired == 10  # tolerance
    for t in range(20, 70, 10):
        d = scaler.decide("p", PoolLoad(queued=0, running=2, run_s=1.0), now=t)
        assert d.desired == 10 and d.reason == "cooldown"
    # The high recommendations have left the window: down to the highest one still in it.
    assert scaler.decide("p", PoolLoad(queued=0, running=2, run_s=1.0), now=75).desired == 2
    assert scaler.decide("p", PoolLoad(queued=0, running=0, run_s=1.0), now=80).desired == 2
    assert scaler.decide("p", PoolLoad(queued=0, running=0, run_s=1.0), now=140).desired == 1


def test_one_busy_sample_is_averaged_with_the_recent_ones() -> None:
    policy = PoolPolicy(pool="p", min_replicas=1, max_replicas=20, concurrency=1, target_queue_s=1.0,
                        utilization=1.0, smoothing_s=30.0)
    scaler = Autoscaler([policy], now=0.0)
    for t in (0, 10, 20):
        scaler.decide("p", PoolLoad(queued=0, running=4, run_s=1.0), now=t)
    assert scaler.decide("p", PoolLoad(queued=0, running=12, run_s=1.0), now=30).desired == 6
    # A backlog is acted on at once, unaveraged.
    assert scaler.decide("p", PoolLoad(queued=10, running=4, run_s=1.0), now=40).desired == 16


# -- the live command ------------------------------------------------------------------------


def _seed_pool(pool: str, *, queued: int, running: int, done: int) -> None:
    import datetime as dt

    from billing import service as billing
    from gateway.models import Pool, Request
    from kit.db import session_scope, utcnow
    from partners import service as partners
    from partners.models import Deployment, ModelVersion

    with session_scope() as s:
        partner, _ = partners.create_partner(s, slug="scale", name="Scale")
        model = partners.create_model(s, partner, slug="m")
        version = ModelVersion(model_id=model.id, number=1, artifact_digest="sha256:x", artifact_size=1, manifest={})
        s.add(version)
        s.flush()
        deployment = Deployment(model_id=model.id, version_id=version.id)
        s.add(deployment)
        account = billing.create_account(s, name="scaler")
        s.add(Pool(name=pool, kind="shared", p95_queue_ms_target=4000))
        s.flush()
        now = utcnow()
        rows = [("queued", None, None)] * queued + [("running", now, None)] * running
        rows += [("succeeded", now - dt.timedelta(seconds=5), 8000)] * done
        for status, started, run_ms in rows:
            s.add(Request(account_id=account.id, model_id=model.id, version_id=version.id,
                          deployment_id=deployment.id, model_ref="scale/m", pool=pool, status=status,
                          input={}, started_at=started, queue_ms=0 if started else None, run_ms=run_ms))


@pytest.mark.timeout(120)
def test_autoscale_command_reads_the_pool_writes_desired_counts_and_runs_the_scale_command(
        committed, redis_client, tmp_path: Path) -> None:
    _seed_pool("gold", queued=30, running=4, done=10)
    state, calls = tmp_path / "desired.json", tmp_path / "calls.txt"
    cmd = [sys.executable, "-m", "gateway.cli", "autoscale", "--pools", "gold,shared", "--once",
           "--concurrency", "2", "--max-replicas", "50", "--output", str(state),
           "--command", f"sh -c 'echo {{pool}}={{replicas}} >> {calls}'"]
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "COLUMNS": "200"}, capture_output=True, text=True,
                          timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    pools = json.loads(state.read_text())["pools"]
    gold = pools["gold"]
    assert gold["load"]["queued"] == 30 and gold["load"]["running"] == 4
    assert gold["load"]["run_s"] == pytest.approx(8.0)
    # 8 s runs against the pool's 4 s target: each queued request needs its own slot.
    assert gold["desired"] == math.ceil((4 + 30) / 0.8 / 2) and gold["reason"] == "scale up"
    assert pools["shared"]["desired"] == 1 and pools["shared"]["load"]["queued"] == 0
    assert sorted(calls.read_text().split()) == [f"gold={gold['desired']}", "shared=1"]
    assert "gold" in done.stdout and "scale up" in done.stdout


class FakeScaleAPI:
    """The Kubernetes API server's `deployments/{name}/scale` endpoints, over real HTTP."""

    def __init__(self, replicas: dict[str, int], token: str) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from threading import Thread

        self.replicas, self.patches = dict(replicas), []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _name(self) -> str | None:
                m = re.fullmatch(r"/apis/apps/v1/namespaces/mg/deployments/([\w-]+)/scale", self.path)
                ok = m and self.headers["Authorization"] == f"Bearer {token}" and m.group(1) in fake.replicas
                if not ok:
                    self.send_response(404 if m else 401)
                    self.end_headers()
                    return None
                return m.group(1)

            def _reply(self, name: str) -> None:
                body = json.dumps({"kind": "Scale", "spec": {"replicas": fake.replicas[name]}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                if (name := self._name()) is not None:
                    self._reply(name)

            def do_PATCH(self) -> None:  # noqa: N802
                if (name := self._name()) is None:
                    return
                assert self.headers["Content-Type"] == "application/merge-patch+json"
                patch = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.patches.append((name, patch))
                fake.replicas[name] = patch["spec"]["replicas"]
                self._reply(name)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_kubernetes_scale_reads_and_patches_the_worker_deployments(tmp_path: Path) -> None:
    from gateway.autoscale import Decision, KubernetesScale

    api = FakeScaleAPI({"mediagate-worker-gold": 2}, token="t0k3n")
    try:
        token = tmp_path / "token"
        token.write_text("t0k3n\n")
        cluster = KubernetesScale("mediagate-worker-{pool}", namespace="mg", api_url=api.url, token_file=token)
        assert cluster.replicas("gold") == 2
        assert cluster.replicas("missing") is None
        load = PoolLoad(queued=0, running=0)
        assert cluster.apply(Decision("gold", 2, 5, 5, "scale up", load))
        assert api.patches == [("mediagate-worker-gold", {"spec": {"replicas": 5}})]
        assert cluster.replicas("gold") == 5
        token.write_text("rotated")  # read on every call: a rotated token is used at once
        assert not cluster.apply(Decision("gold", 5, 6, 6, "scale up", load))
    finally:
        api.close()
