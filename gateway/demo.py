"""Seed a working demo: a partner, the procedural-art package deployed and priced, a customer key."""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from billing import service as billing
from gateway import service as gateway
from kit.settings import get_settings
from partners import repository as partners_repo
from partners import service as partners
from partners.packaging import build_package

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "procedural-art"
PRICE_PER_MEGAPIXEL_MICROS = 3_000  # $0.003


@dataclass
class Demo:
    partner_key: str
    customer_key: str
    model: str

    def curl(self, base_url: str) -> str:
        body = json.dumps({"input": {"prompt": "a lighthouse at dusk", "width": 512, "height": 512}})
        return (f"curl -s -X POST {base_url}/v1/models/{self.model}/requests "
                f"-H 'Authorization: Key {self.customer_key}' -H 'Content-Type: application/json' "
                f"-H 'Prefer: wait=30' -d '{body}'")


def seed(session: Session) -> Demo:
    """Create the demo once; later calls return the same keys (kept under the data dir)."""
    saved = get_settings().data_dir / "demo.json"
    if saved.exists() and partners_repo.partner_by_slug(session, "demo") is not None:
        return Demo(**json.loads(saved.read_text()))
    partner, partner_key = partners.create_partner(session, slug="demo", name="Demo Labs")
    model = partners.create_model(session, partner, slug="procedural-art", title="Procedural art",
                                  description="Procedural noise paintings (no neural network).")
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "procedural-art.oci.tar"
        build_package(EXAMPLE, archive)
        data = archive.read_bytes()
        partners.create_version(session, partner, model, archive=archive,
                                digest=hashlib.sha256(data).hexdigest(), size=len(data))
    partners.create_deployment(session, partner, model_slug=model.slug, version=None, pool="shared",
                               min_replicas=0, max_replicas=2, concurrency=1, keep_alive_s=600)
    billing.set_pricing(session, model, tier="open", unit="megapixels",
                        unit_price_micros=PRICE_PER_MEGAPIXEL_MICROS)
    account = billing.create_account(session, name="Demo customer")
    demo = Demo(partner_key=partner_key, customer_key=gateway.issue_key(session, account),
                model="demo/procedural-art")
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(demo.__dict__))
    return demo
