"""What must hold after any fault: nothing lost, nothing charged twice, books balanced.

`assert_invariants()` reads the test database (committed data, as other processes see it)
and fails with every broken rule listed:

- every accepted request is in a final status (optionally waiting for stragglers);
- usage records equal succeeded requests: exactly one per succeeded request, none for any
  other, and the request's recorded cost is that record's amount;
- the ledger balances: every transaction sums to zero per currency, so do all entries,
  and every charge's legs sum to zero with the customer leg equal to the charge;
- no webhook id is delivered as two different events: in the database a delivery's
  payload is its own event, and a request tells one URL at most one final outcome; the
  bodies a receiver got (optional) never differ under the same `webhook-id`.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from billing.models import LedgerEntry, UsageRecord
from gateway.models import FINAL_STATUSES, Request, WebhookDelivery
from gateway.webhooks import TERMINAL
from kit.db import get_engine

Received = tuple[str, bytes | str | dict[str, Any]]


def _unfinished(session: Session) -> list[tuple[str, str]]:
    return list(session.execute(
        select(Request.id, Request.status).where(Request.status.not_in(FINAL_STATUSES)).order_by(Request.id)))


def _request_problems(session: Session) -> list[str]:
    return [f"request {rid} is still {status}" for rid, status in _unfinished(session)]


def _usage_problems(session: Session) -> list[str]:
    problems: list[str] = []
    usage_by_request: dict[str, list[UsageRecord]] = defaultdict(list)
    for record in session.scalars(select(UsageRecord)):
        usage_by_request[record.request_id].append(record)
    requests = {r.id: r for r in session.scalars(select(Request))}
    for rid, req in requests.items():
        records = usage_by_request.get(rid, [])
        if req.status == "succeeded":
            if len(records) != 1:
                problems.append(f"succeeded request {rid} has {len(records)} usage records, not 1")
            elif records[0].amount_micros != req.cost_micros:
                problems.append(f"request {rid} shows cost {req.cost_micros} but was charged "
                                f"{records[0].amount_micros}")
        else:
            if records:
                problems.append(f"{req.status} request {rid} was charged ({len(records)} usage records)")
            if req.cost_micros:
                problems.append(f"{req.status} request {rid} shows a cost of {req.cost_micros}")
    # Usage is keyed by request id without a foreign key (bulk ingestion); through the
    # gateway, every charge must belong to a request it knows.
    for rid in usage_by_request.keys() - requests.keys():
        problems.append(f"usage recorded for unknown request {rid}")
    return problems


def _ledger_problems(session: Session) -> list[str]:
    problems: list[str] = []
    unbalanced = session.execute(
        select(LedgerEntry.transaction_id, LedgerEntry.currency, func.sum(LedgerEntry.amount_micros))
        .group_by(LedgerEntry.transaction_id, LedgerEntry.currency)
        .having(func.sum(LedgerEntry.amount_micros) != 0))
    problems += [f"ledger transaction {txn} ({cur}) sums to {int(total)}, not 0" for txn, cur, total in unbalanced]
    for currency, total in session.execute(
            select(LedgerEntry.currency, func.sum(LedgerEntry.amount_micros)).group_by(LedgerEntry.currency)):
        if int(total) != 0:
            problems.append(f"the {currency} ledger sums to {int(total)}, not 0")
    legs: dict[str, list[LedgerEntry]] = defaultdict(list)
    for entry in session.scalars(select(LedgerEntry).where(LedgerEntry.kind == "usage")):
        if entry.usage_id is not None:
            legs[entry.usage_id].append(entry)
    for record in session.scalars(select(UsageRecord)):
        mine = legs.get(record.id, [])
        if not mine:
            problems.append(f"usage {record.id} of request {record.request_id} has no ledger legs")
            continue
        if len({e.transaction_id for e in mine}) != 1:
            problems.append(f"usage {record.id} of request {record.request_id} was posted more than once")
        if sum(e.amount_micros for e in mine) != 0:
            problems.append(f"usage {record.id} legs do not balance")
        debit = sum(e.amount_micros for e in mine if e.amount_micros > 0)
        if debit != record.amount_micros:
            problems.append(f"usage {record.id} debits {debit}, but charged {record.amount_micros}")
    return problems


def _webhook_problems(session: Session, received: Iterable[Received]) -> list[str]:
    problems: list[str] = []
    outcomes: dict[tuple[str, str], set[str]] = defaultdict(set)
    for d in session.scalars(select(WebhookDelivery)):
        if (d.payload or {}).get("type") != d.event:
            problems.append(f"webhook {d.id} is recorded as {d.event} but carries {(d.payload or {}).get('type')}")
        if d.event in TERMINAL:
            outcomes[(d.request_id, d.url)].add(d.event)
    for (rid, url), events in outcomes.items():
        if len(events) > 1:
            problems.append(f"request {rid} told {url} {len(events)} outcomes: {sorted(events)}")
    seen: dict[str, Any] = {}
    for webhook_id, body in received:
        event = body if isinstance(body, dict) else json.loads(body)
        key = (event.get("type"), json.dumps(event.get("data"), sort_keys=True))
        if seen.setdefault(webhook_id, key) != key:
            problems.append(f"webhook id {webhook_id} was delivered as two different events: "
                            f"{seen[webhook_id][0]} and {key[0]}")
    return problems


def assert_invariants(engine: Engine | None = None, *, received_webhooks: Iterable[Received] = (),
                      settle_s: float = 0.0) -> None:
    """Fail unless the books and requests of the test database are whole (see module doc).

    `received_webhooks` are (`webhook-id`, body) pairs as a receiver got them; `settle_s`
    waits that long for requests still moving to reach a final status before judging.
    """
    engine = engine or get_engine()
    deadline = time.monotonic() + settle_s
    while True:
        with Session(engine) as session:
            if not _unfinished(session) or time.monotonic() >= deadline:
                break
        time.sleep(0.2)
    with Session(engine) as session:
        problems = (_request_problems(session) + _usage_problems(session)
                    + _ledger_problems(session) + _webhook_problems(session, received_webhooks))
    assert not problems, "invariants broken:\n" + "\n".join(f"- {p}" for p in problems)
