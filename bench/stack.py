"""The stack the gateway benches stand up: a fresh database, a priced, deployed no-op model,
and the API command (uvicorn, several processes)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import create_engine, text

NOOP = Path(__file__).resolve().parent / "models" / "noop"


def fresh_database(name: str) -> None:
    """Drop and recreate PostgreSQL database `name`, then migrate it (settings point at it)."""
    admin = create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    from kit.migrate import upgrade

    upgrade()


def seed_noop(workdir: Path, *, concurrency: int, unlimited: bool = False) -> str:
    """Partner `bench` with model `noop` deployed and priced, and a customer; returns its key."""
    from billing import service as billing
    from gateway import service as gateway
    from gateway.models import AccountSettings
    from kit.db import session_scope
    from partners import service as partners
    from partners.packaging import build_package

    with session_scope() as s:
        partner, _ = partners.create_partner(s, slug="bench", name="Bench")
        model = partners.create_model(s, partner, slug="noop")
        archive = workdir / "noop.oci.tar"
        build_package(NOOP, archive)
        data = archive.read_bytes()
        partners.create_version(s, partner, model, archive=archive, digest=hashlib.sha256(data).hexdigest(),
                                size=len(data))
        partners.create_deployment(s, partner, model_slug="noop", version=None, pool="shared",
                                   min_replicas=0, max_replicas=1, concurrency=concurrency, keep_alive_s=3600)
        billing.set_pricing(s, model, tier="open", unit="requests", unit_price_micros=100)
        account = billing.create_account(s, name="bench")
        if unlimited:  # one customer is the whole load: limits out of the way, the gateway measured
            s.add(AccountSettings(account_id=account.id, rate_per_s=1e6, rate_burst=10**7, max_concurrency=10_000))
        return gateway.issue_key(s, account)


def api_command(python: str, port: int, workers: int = 1) -> list[str]:
    """The API as the benches run it: uvicorn with `workers` processes sharing the port (what
    `mediagate serve --workers N` runs), no access log, a backlog deep enough for a burst."""
    return [python, "-m", "uvicorn", "gateway.app:create_app", "--factory", "--port", str(port),
            "--workers", str(workers), "--log-level", "warning", "--no-access-log", "--no-server-header",
            "--backlog", "4096"]
