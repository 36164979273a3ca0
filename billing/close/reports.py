"""Licensor usage reports: per-period counts per model slug, POSTed to each licensor's endpoint.

A report is written once by the close; sending it is idempotent (the report id travels as
`Idempotency-Key`, and a sent report is never sent again), retried on network errors and
5xx answers, and every attempt is kept on the report row.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.close.models import LicensorReport
from billing.models import Payee
from billing.settings import get_billing_settings
from kit.db import utcnow

RETRYABLE = {408, 425, 429}


def body(report: LicensorReport) -> dict[str, Any]:
    """What the licensor receives (BFL-style `number_of_generations` per model slug)."""
    return {"report_id": report.id, **report.payload}


def send_report(session: Session, report_id: str, *, client: httpx.Client | None = None,
                backoff_s: float = 0.5) -> str:
    """Deliver one pending report; its status afterwards (`sent`, `pending` or `failed`)."""
    report = session.scalar(select(LicensorReport).where(LicensorReport.id == report_id)
                            .with_for_update(skip_locked=True))
    if report is None or report.status != "pending":
        return report.status if report else "busy"
    payee = session.get(Payee, report.payee_id)
    if payee is None or not payee.report_url:
        report.status = "unconfigured"
        return report.status
    settings = get_billing_settings()
    headers = {"Idempotency-Key": report.id, "Content-Type": "application/json"}
    if payee.report_token:
        headers["Authorization"] = f"Bearer {payee.report_token}"
    own = client is None
    client = client or httpx.Client(timeout=settings.licensor_report_timeout_s)
    attempts = list(report.attempts or [])
    try:
        for attempt in range(settings.licensor_report_attempts):
            if attempt:
                time.sleep(backoff_s * 2 ** (attempt - 1))
            record: dict[str, Any] = {"at": utcnow().isoformat()}
            try:
                response = client.post(payee.report_url, json=body(report), headers=headers)
                record["status"] = response.status_code
            except httpx.HTTPError as exc:
                record["error"] = f"{type(exc).__name__}: {exc}"[:300]
                attempts.append(record)
                continue
            attempts.append(record)
            if response.status_code < 300:
                report.status, report.sent_at = "sent", utcnow()
                break
            if response.status_code < 500 and response.status_code not in RETRYABLE:
                report.status = "failed"  # the licensor refused it: finance must look
                break
    finally:
        if own:
            client.close()
    report.attempts = attempts
    return report.status
