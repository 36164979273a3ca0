"""Billing's Celery tasks and beat schedule, and the close run they share with the CLI.

Each step runs in its own `session_scope()`: freezing commits on its own so usage arriving
meanwhile books into the next period; the close commits once; each Stripe call or licensor
report commits what it achieved, so a crash loses no progress and a rerun repeats nothing.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from celery.schedules import crontab

from billing.close import reports
from billing.close import service as close
from billing.payments import repository as payments_repo
from billing.payments import service as payments
from billing.settings import get_billing_settings
from billing.stripe_gateway import StripeGateway, get_gateway
from billing.stripe_gateway import configured as stripe_configured
from kit.db import session_scope
from kit.tasks import get_celery

celery = get_celery()
celery.conf.beat_schedule = {
    **(celery.conf.beat_schedule or {}),
    # Daily, so a month is closed early on the 1st and anything that failed is retried.
    "billing-close-due-periods": {"task": "billing.close_due_periods",
                                  "schedule": crontab(minute=15, hour=2)},
}


def deliver(period: str | None = None, *, gateway: StripeGateway | None = None) -> dict[str, Any]:
    """Send whatever a close left pending: invoices, payouts, licensor reports."""
    with session_scope() as session:
        pending = payments_repo.outbox(session, period)
    if gateway is None and not stripe_configured():
        # Nothing is sent to Stripe until it is set up; the rows wait, pending.
        pending["invoices"], pending["payouts"] = [], []
    if pending["invoices"] or pending["payouts"]:
        gateway = gateway or get_gateway()
    outcome: dict[str, dict[str, int]] = {k: {} for k in pending}
    for invoice_id in pending["invoices"]:
        with session_scope() as session:
            status = payments.push_invoice(session, invoice_id, gateway)  # type: ignore[arg-type]
        outcome["invoices"][status] = outcome["invoices"].get(status, 0) + 1
    for payout_id in pending["payouts"]:
        with session_scope() as session:
            status = payments.send_payout(session, payout_id, gateway)  # type: ignore[arg-type]
        outcome["payouts"][status] = outcome["payouts"].get(status, 0) + 1
    for report_id in pending["reports"]:
        with session_scope() as session:
            status = reports.send_report(session, report_id)
        outcome["reports"][status] = outcome["reports"].get(status, 0) + 1
    return outcome


def run_close(period: str, *, send: bool = True, now: dt.datetime | None = None,
              gateway: StripeGateway | None = None) -> dict[str, Any]:
    """Freeze, close and (optionally) deliver one period; safe to run any number of times."""
    with session_scope() as session:
        close.freeze_period(session, period, now=now)
    with session_scope() as session:
        result = close.close_period(session, period, now=now)
    delivered = deliver(period, gateway=gateway) if send else {}
    return {"period": period, "already_closed": result.already_closed, "totals": result.totals,
            "delivered": delivered}


def still_pending(delivered: dict[str, Any]) -> bool:
    """Whether a delivery left anything to retry."""
    return any(delivered.get(k, {}).get("pending", 0) or delivered.get(k, {}).get("draft", 0)
               for k in ("invoices", "payouts", "reports"))


@celery.task(name="billing.close_period", bind=True, max_retries=24)
def close_period_task(self: Any, period: str) -> dict[str, Any]:
    """Close a period and deliver it; retried later while Stripe or a licensor is unreachable."""
    result = run_close(period)
    if still_pending(result["delivered"]):
        raise self.retry(countdown=get_billing_settings().delivery_retry_delay_s)
    return result


@celery.task(name="billing.close_due_periods")
def close_due_periods() -> list[dict[str, Any]]:
    """Close every period that has ended, oldest first, then retry anything still pending."""
    done = []
    while True:
        with session_scope() as session:
            period = close.next_period_to_close(session)
        if period is None:
            break
        done.append(run_close(period, send=False))
    done.append({"delivered": deliver()})
    return done
