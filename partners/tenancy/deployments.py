"""From deployment rows to running replicas: the spec a pool starts, and the keeper that
holds each deployment's warm floor, retires replaced deployments and reaps idle replicas."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from kit.db import session_scope
from partners.models import Deployment, Model, ModelVersion
from partners.tenancy import packages
from partners.tenancy.runner import DeploymentSpec, PackageLayers, ReplicaError, ReplicaPool

log = logging.getLogger(__name__)


def replica_spec(session: Session, deployment: Deployment) -> DeploymentSpec:
    """What a pool needs to start replicas of `deployment`."""
    version = session.get(ModelVersion, deployment.version_id)
    model = session.get(Model, deployment.model_id)
    assert version is not None and model is not None
    partner_id, package, deployment_id = model.partner_id, version.package, deployment.id

    def open_package() -> PackageLayers:
        # Its own transaction: the decryption's audit record lands even if the start fails.
        with session_scope() as s:
            validated, layers = packages.open_layers(
                s, partner_id, package, actor=f"worker:{socket.gethostname()}", deployment_id=deployment_id)
        return PackageLayers(layers, validated.root, validated.total_size)

    return DeploymentSpec(
        deployment_id=deployment.id, open_package=open_package, manifest=version.manifest,
        max_replicas=deployment.max_replicas, concurrency=deployment.concurrency,
        keep_alive_s=deployment.keep_alive_s,
    )


def keep(pool: ReplicaPool, pools: Iterable[str]) -> None:
    """One round: warm floors up, replaced deployments' replicas down, idle replicas reaped."""
    pools = set(pools)
    with session_scope() as session:
        held = pool.deployment_ids()
        rows = list(session.scalars(select(Deployment).where(
            (Deployment.status == "active") & Deployment.pool.in_(pools) | Deployment.id.in_(held))))
        active = {d.id: d for d in rows if d.status == "active"}
        specs = {d.id: replica_spec(session, d) for d in active.values() if d.min_replicas > 0}
    for deployment_id in held - set(active):
        pool.retire(deployment_id)
    pool.reap_idle({d.id: float(d.keep_alive_s) for d in active.values()},
                   floors={d.id: d.min_replicas for d in active.values()})
    for deployment_id, spec in specs.items():
        try:
            pool.prewarm(spec, active[deployment_id].min_replicas)
        except ReplicaError as exc:
            log.warning("deployment %s could not warm a replica: %s", deployment_id, exc)


def start_keeper(pool: ReplicaPool, pools: Iterable[str], interval_s: float = 5.0) -> threading.Event:
    """Run `keep` every `interval_s` in a daemon thread; set the event to stop it."""
    stop, pools = threading.Event(), list(pools)

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                keep(pool, pools)
            except Exception:  # noqa: BLE001 - the keeper must outlive one bad round
                log.exception("replica keeper round failed")

    threading.Thread(target=loop, name="mediagate-replica-keeper", daemon=True).start()
    return stop
