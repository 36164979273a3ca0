"""End-to-end fixtures: the API in-process, a real Celery worker on Redis, real runner processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from kit.settings import get_settings
from tests.support import FIXTURE_MODELS, ROOT, WorkerProcess, package_bytes

ADMIN = {"Authorization": f"Bearer {get_settings().admin_key}"}


@pytest.fixture(scope="module")
def worker(engine: Engine) -> Iterator[WorkerProcess]:
    import redis

    redis.Redis.from_url(get_settings().redis_url).flushdb()
    proc = WorkerProcess(pools="shared,fast", concurrency=3, env={"MEDIAGATE_TELEMETRY_EXPORTER": "console"})
    yield proc
    proc.stop()


@pytest.fixture
def api(committed: Engine) -> Iterator[TestClient]:
    from gateway.app import create_app

    with TestClient(create_app()) as client:
        yield client


class World:
    """A partner with a deployed, priced model, and a customer key: set up through the API."""

    def __init__(self, api: TestClient, tmp: Path, *, model_dir: Path | None = None, slug: str,
                 pricing: dict, pool: str = "shared", max_replicas: int = 1,
                 archive: bytes | None = None, partner_slug: str = "acme") -> None:
        r = api.post("/v1/admin/partners", json={"slug": partner_slug, "name": "Acme Labs"}, headers=ADMIN)
        assert r.status_code == 201, r.text
        self.partner = {"Authorization": f"Bearer {r.json()['api_key']}"}
        r = api.post("/v1/partner/models", json={"slug": slug, "title": slug}, headers=self.partner)
        assert r.status_code == 201, r.text
        if archive is None:
            assert model_dir is not None
            archive = package_bytes(model_dir, tmp)
        r = api.post(f"/v1/partner/models/{slug}/versions", content=archive,
                     headers={**self.partner, "Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
        self.version = r.json()
        r = api.put(f"/v1/partner/models/{slug}/pricing", json=pricing, headers=self.partner)
        assert r.status_code == 200, r.text
        r = api.post("/v1/partner/deployments", json={"model": slug, "pool": pool, "max_replicas": max_replicas},
                     headers=self.partner)
        assert r.status_code == 201, r.text
        self.deployment = r.json()
        r = api.post("/v1/admin/accounts", json={"name": "Customer"}, headers=ADMIN)
        assert r.status_code == 201, r.text
        self.account_id = r.json()["id"]
        self.customer = {"Authorization": f"Key {r.json()['api_key']}"}
        self.model = f"{partner_slug}/{slug}"


@pytest.fixture
def flaky_world(api: TestClient, tmp_path: Path) -> World:
    return World(api, tmp_path, model_dir=FIXTURE_MODELS / "flaky", slug="flaky",
                 pricing={"tier": "revenue_share", "unit": "images", "unit_price_micros": 40_000,
                          "licensor": "bfl", "royalty_bps": 2_500})


@pytest.fixture
def art_world(api: TestClient, tmp_path: Path) -> World:
    return World(api, tmp_path, model_dir=ROOT / "examples" / "procedural-art", slug="art",
                 pricing={"tier": "partner_priced", "unit": "megapixels", "unit_price_micros": 3_000,
                          "platform_fee_bps": 2_000})
