"""Licensor usage reports: counts per model slug, sent once with retries, every attempt kept."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing import service as billing
from billing.close import reports
from billing.close import service as close
from billing.close.models import LicensorReport
from tests.billing import factories as f


class Licensor:
    """A licensor's usage-report endpoint that answers with the statuses it is given."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.received.append({"body": body, "key": self.headers.get("Idempotency-Key"),
                                       "auth": self.headers.get("Authorization")})
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/usage-reports"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def licensor() -> Iterator[Licensor]:
    server = Licensor([503, 200])
    yield server
    server.server.shutdown()


def _closed_with_usage(db: Session, url: str | None) -> LicensorReport:
    lab = f.partner(db, "bfl-host")
    dev = f.model(db, lab, slug="flux-dev", tier="revenue_share", licensor="bfl", royalty_bps=1_000)
    kontext = f.model(db, lab, slug="flux-kontext", tier="revenue_share", licensor="bfl", royalty_bps=1_000)
    billing.ensure_payee(db, "licensor", "bfl", name="Black Forest Labs", report_url=url, report_token="tok_bfl")
    customer = f.account(db)
    for _ in range(3):
        f.use(db, customer, dev, f.at("2026-09"), {"images": 2})
    f.use(db, customer, kontext, f.at("2026-09"), {"images": 1})
    f.use(db, customer, f.model(db, lab, tier="open"), f.at("2026-09"))  # open models are not reported
    close.close_period(db, "2026-09")
    return db.scalars(select(LicensorReport)).one()


def test_report_is_sent_with_retries_and_recorded(db: Session, licensor: Licensor) -> None:
    report = _closed_with_usage(db, licensor.url)
    assert reports.send_report(db, report.id, backoff_s=0.01) == "sent"
    assert [a.get("status") for a in report.attempts] == [503, 200]
    first, second = licensor.received
    assert first["key"] == second["key"] == report.id and second["auth"] == "Bearer tok_bfl"
    assert second["body"] == {"report_id": report.id, "licensor": "bfl", "period": "2026-09", "models": [
        {"model": "bfl-host/flux-dev", "model_slug": "flux-dev", "number_of_generations": 6, "requests": 3},
        {"model": "bfl-host/flux-kontext", "model_slug": "flux-kontext", "number_of_generations": 1, "requests": 1}]}
    assert reports.send_report(db, report.id) == "sent" and len(licensor.received) == 2  # never resent


def test_unreachable_licensor_stays_pending_and_a_refusal_is_flagged(db: Session) -> None:
    report = _closed_with_usage(db, "http://127.0.0.1:9/unreachable")
    assert reports.send_report(db, report.id, backoff_s=0.01) == "pending"
    assert len(report.attempts) == 3 and all("error" in a for a in report.attempts)
    refusing = Licensor([400])
    try:
        billing.ensure_payee(db, "licensor", "bfl", report_url=refusing.url)
        assert reports.send_report(db, report.id) == "failed"
    finally:
        refusing.server.shutdown()


def test_a_licensor_without_an_endpoint_is_kept_for_finance(db: Session) -> None:
    report = _closed_with_usage(db, None)
    assert report.status == "unconfigured" and report.payload["models"][0]["number_of_generations"] == 6
