"""Period close: freeze a month, then write its invoices, statements, payouts and reports.

Everything is computed by set-based SQL from the period's usage, refunds and ledger legs,
inside one transaction that ends with the period `closed`; running it again finds the
period closed and changes nothing. Delivery to Stripe and licensors happens afterwards,
from the rows written here (see `billing.payments.service` and `billing.close.reports`).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from billing import ledger, periods
from billing import repository as core_repo
from billing.close import repository as repo
from billing.close.models import SlaCredit
from billing.models import Account, Payee
from billing.service import post_transaction, pricing_at
from billing.settings import get_billing_settings
from kit.db import utcnow
from kit.errors import Conflict, InvalidInput
from kit.ids import new_id
from kit.money import MICROS_PER_CENT, share_bps
from partners.models import Model

# Customer legs that are money moving, not charges: they never appear on an invoice.
NOT_CHARGES = ("topup", "invoice_payment")


class BooksDoNotReconcile(RuntimeError):
    """The period's usage and refunds disagree with its ledger legs: a bug, so close stops."""


@dataclass
class CloseResult:
    period: str
    already_closed: bool
    totals: dict[str, Any] = field(default_factory=dict)


def _check_closable(session: Session, period: str, now: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    start, end = periods.bounds(period)
    if end > (now or utcnow()):
        raise InvalidInput(f"period {period} has not ended yet; it can be closed from {end.isoformat()}")
    earlier = core_repo.unclosed_periods_before(session, period)
    if earlier:
        raise Conflict(f"close {earlier[0]} first: periods close in order")
    return start, end


def freeze_period(session: Session, period: str, *, now: dt.datetime | None = None) -> str:
    """Stop booking into a period (usage arriving later goes to the next one); its status."""
    _check_closable(session, period, now)
    row = core_repo.lock_period(session, period)
    if row.status == "open":
        row.status = "closing"
        session.flush()
    return row.status


def close_period(session: Session, period: str, *, now: dt.datetime | None = None) -> CloseResult:
    """Close a period: fees, SLA credits, minimums, invoices, statements, payouts, reports."""
    start, end = _check_closable(session, period, now)
    row = core_repo.lock_period(session, period)
    if row.status == "closed":
        return CloseResult(period, True, dict(row.totals or {}))
    row.status = "closing"
    session.flush()
    totals: dict[str, Any] = {}
    totals.update(_pool_fees_and_sla_credits(session, period, start, end))
    totals.update(_royalty_minimums(session, period, end))
    totals.update(_invoices(session, period))
    totals.update(_statements(session, period))
    totals.update(_licensor_reports(session, period))
    row.status, row.closed_at, row.totals = "closed", now or utcnow(), totals
    session.flush()
    return CloseResult(period, False, totals)


def next_period_to_close(session: Session, *, now: dt.datetime | None = None) -> str | None:
    """The oldest period that has ended and is not closed (what the beat schedule closes)."""
    now = now or utcnow()
    current = periods.period_of(now)
    for p in core_repo.periods(session):
        if p.status != "closed" and p.period < current:
            return p.period
    return None


# -- pool fees and SLA credits -----------------------------------------------------------

def credit_band_bps(compliance_bps: int) -> int:
    """The credit a period's compliance earns: the first band it falls below, most severe first."""
    for threshold, credit in get_billing_settings().sla_bands:
        if compliance_bps < round(threshold * 100):
            return credit
    return 0


def _pool_fees_and_sla_credits(session: Session, period: str, start: dt.datetime,
                               end: dt.datetime) -> dict[str, int]:
    fees = credits = 0
    period_s = int((end - start).total_seconds())
    for contract in repo.contracts_in_force(session, start, end):
        since, until = max(start, contract.effective_from), min(end, contract.ended_at or end)
        # A contract that starts or ends mid-month pays for the share of the month it ran.
        fee = contract.monthly_fee_micros * int((until - since).total_seconds()) // period_s
        if fee <= 0:
            continue
        account = session.get(Account, contract.account_id)
        assert account is not None
        customer = ledger.customer_account(account.id, account.billing_mode)
        post_transaction(session, [(customer, fee), (ledger.PLATFORM_REVENUE, -fee)],
                         currency=contract.currency, kind="pool_fee", period=period, ref=contract.id,
                         memo=f"dedicated pool {contract.pool}, {period}")
        total, within = repo.pool_compliance(session, account_id=account.id, pool=contract.pool,
                                             start=since, end=until, target_ms=contract.latency_target_ms)
        compliance = 10_000 if total == 0 else within * 10_000 // total
        credit_bps = credit_band_bps(compliance)
        credit = SlaCredit(id=new_id("sla"), contract_id=contract.id, account_id=account.id, period=period,
                           pool=contract.pool, requests=total, within_target=within, compliance_bps=compliance,
                           credit_bps=credit_bps, fee_micros=fee, credit_micros=share_bps(fee, credit_bps),
                           currency=contract.currency)
        repo.add_sla_credit(session, credit)
        if credit.credit_micros:
            post_transaction(session, [(ledger.PLATFORM_SLA_CREDITS, credit.credit_micros),
                                       (customer, -credit.credit_micros)],
                             currency=contract.currency, kind="sla_credit", period=period, ref=credit.id,
                             memo=f"SLA credit, pool {contract.pool}: {compliance / 100:.2f}% within target")
        fees += fee
        credits += credit.credit_micros
    session.flush()
    return {"pool_fee_micros": fees, "sla_credit_micros": credits}


def _royalty_minimums(session: Session, period: str, end: dt.datetime) -> dict[str, int]:
    topped = 0
    for lic in repo.minimum_fee_licenses(session, end):
        short = lic.minimum_fee_micros - repo.royalties_of_model(session, lic.model_id, period)
        if short <= 0:
            continue
        pricing = pricing_at(session, lic.model_id, end - dt.timedelta(microseconds=1))
        model = session.get(Model, lic.model_id)
        licensor = lic.licensor or (model.partner_id if model else lic.model_id)
        post_transaction(session, [(ledger.PLATFORM_ROYALTY_MINIMUMS, short),
                                   (ledger.licensor_royalty_payable(licensor), -short)],
                         currency=pricing.price_card.currency, kind="royalty_minimum", period=period,
                         ref=lic.id, memo=f"monthly minimum royalty, {period}")
        topped += short
    return {"royalty_minimum_micros": topped}


# -- customer invoices and prepaid statements ------------------------------------------------

def _parse_customer(ledger_account: str) -> tuple[str, str]:
    _, account_id, tail = ledger_account.split(":", 2)
    return account_id, "prepaid" if tail == "credit" else "postpaid"


LINE_TITLES = {"pool_fee": "Dedicated pool fee", "sla_credit": "SLA credit",
               "correction": "Correction", "refund": "Refund"}


def _invoices(session: Session, period: str) -> dict[str, int]:
    usage = repo.usage_lines(session, period)
    refunds = repo.refund_lines(session, period)
    names = repo.model_names(session, {r[3] for r in usage} | {r[3] for r in refunds})
    docs: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    from_tables: dict[tuple[str, str, str, str], int] = defaultdict(int)
    for account_id, mode, currency, model_id, meter, count, quantity, amount in usage:
        docs[(account_id, mode, currency)].append({
            "kind": "usage", "model_id": model_id, "requests": int(count), "quantity": Decimal(quantity or 0),
            "amount_micros": int(amount),
            "description": f"{names.get(model_id, model_id)}: {int(count)} requests, "
                           f"{Decimal(quantity or 0).normalize():f} {meter}"})
        from_tables[(account_id, mode, currency, "usage")] += int(amount)
    for account_id, mode, currency, model_id, count, amount in refunds:
        docs[(account_id, mode, currency)].append({
            "kind": "refund", "model_id": model_id, "requests": int(count), "quantity": Decimal(0),
            "amount_micros": -int(amount), "description": f"Refunds, {names.get(model_id, model_id)}"})
        from_tables[(account_id, mode, currency, "refund")] -= int(amount)
    from_ledger: dict[tuple[str, str, str, str], int] = defaultdict(int)
    for ledger_account, kind, currency, total in core_repo.period_sums(session, period, "customer:"):
        account_id, mode = _parse_customer(ledger_account)
        if kind in NOT_CHARGES:
            continue
        if kind in ("usage", "refund"):
            from_ledger[(account_id, mode, currency, kind)] += total
        elif total:
            docs[(account_id, mode, currency)].append({
                "kind": kind, "model_id": None, "requests": 0, "quantity": Decimal(0), "amount_micros": total,
                "description": LINE_TITLES.get(kind, kind.replace("_", " ").capitalize())})
    mismatched = {k for k in set(from_tables) | set(from_ledger) if from_tables.get(k, 0) != from_ledger.get(k, 0)}
    if mismatched:
        raise BooksDoNotReconcile(f"usage/refund records disagree with the ledger for {sorted(mismatched)[:5]}")

    carries = repo.previous_invoice_carries(session, period)
    for (account_id, currency), carry in carries.items():
        if carry:
            docs.setdefault((account_id, "postpaid", currency), [])
    invoices, lines = [], []
    due_cents = invoiced = drawn = 0
    for (account_id, mode, currency), doc_lines in sorted(docs.items()):
        total = sum(line["amount_micros"] for line in doc_lines)
        invoice_id = new_id("inv")
        if mode == "postpaid":
            carried_in = carries.get((account_id, currency), 0)
            due = max(0, (total + carried_in) // MICROS_PER_CENT)
            invoices.append({"id": invoice_id, "account_id": account_id, "period": period, "currency": currency,
                             "kind": "invoice", "total_micros": total, "carried_in_micros": carried_in,
                             "amount_due_cents": due, "carried_out_micros": total + carried_in - due * MICROS_PER_CENT,
                             "status": "draft" if due > 0 else "nothing_due", "created_at": utcnow()})
            due_cents += due
            invoiced += total
        else:
            invoices.append({"id": invoice_id, "account_id": account_id, "period": period, "currency": currency,
                             "kind": "statement", "total_micros": total, "carried_in_micros": 0,
                             "amount_due_cents": 0, "carried_out_micros": 0, "status": "settled",
                             "created_at": utcnow()})
            drawn += total
        order = {"usage": 0, "refund": 1, "pool_fee": 2, "sla_credit": 3}
        for position, line in enumerate(sorted(doc_lines, key=lambda x: (order.get(x["kind"], 9), x["description"]))):
            lines.append({"id": new_id("inl"), "invoice_id": invoice_id, "position": position, **line})
    repo.insert_invoices(session, invoices, lines)
    return {"invoices": sum(1 for i in invoices if i["kind"] == "invoice"),
            "invoice_total_micros": invoiced, "amount_due_cents": due_cents,
            "prepaid_statements": sum(1 for i in invoices if i["kind"] == "statement"),
            "credit_drawdown_micros": drawn}


# -- payee statements and payouts -------------------------------------------------------------

def _parse_payee(ledger_account: str) -> tuple[str, str]:
    head, ref, _ = ledger_account.split(":", 2)
    return head, ref


def _ensure_payees(session: Session, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], Payee]:
    known = repo.payees(session)
    missing = wanted - set(known)
    if missing:
        names = repo.partner_names(session, {ref for kind, ref in missing if kind == "partner"})
        for kind, ref in sorted(missing):
            payee = Payee(id=new_id("pye"), kind=kind, ref=ref, name=names.get(ref, ref))
            session.add(payee)
            known[(kind, ref)] = payee
        session.flush()
    return known


@dataclass
class PayeeRow:
    """One payee's statement figures for a period, before (or without) being written."""

    payee: Payee
    currency: str
    requests: int
    gross: int
    fees: int
    royalties: int
    credits: int
    refunds: int
    net: int
    carried_in: int
    payable: int
    payout_cents: int
    lines: list[dict[str, Any]]

    @property
    def carried_out(self) -> int:
        return self.payable - self.payout_cents * MICROS_PER_CENT


def statement_rows(session: Session, period: str, *, create_payees: bool = True) -> list[PayeeRow]:
    """Each payee's figures for a period, from its payable legs and its models' usage.

    net = share of usage − refunds + credits (minimum-fee top-ups, returned payouts,
    corrections); payable = carried in + net; whole cents of it are paid out when the payee
    has a Connect account and it reaches the minimum payout, the rest is carried.
    """
    kinds: dict[tuple[str, str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for prefix in ("partner:", "licensor:"):
        for ledger_account, kind, currency, total in core_repo.period_sums(session, period, prefix):
            kinds[(*_parse_payee(ledger_account), currency)][kind] += total
    info: dict[tuple[str, str, str], dict[str, Any]] = defaultdict(
        lambda: {"requests": 0, "gross": 0, "fees": 0, "royalties": 0, "lines": []})
    partner_rows = repo.partner_usage(session, period)
    licensor_rows = repo.licensor_usage(session, period)
    names = repo.model_names(session, {r[2] for r in partner_rows} | {r[2] for r in licensor_rows})
    for partner_id, currency, model_id, count, gross, platform, royalty, share in partner_rows:
        i = info[("partner", partner_id, currency)]
        i["requests"] += int(count)
        i["gross"] += int(gross)
        i["fees"] += int(platform)
        i["royalties"] += int(royalty)
        i["lines"].append({"model": names.get(model_id, model_id), "requests": int(count),
                           "gross_micros": int(gross), "fees_micros": int(platform),
                           "royalties_micros": int(royalty), "share_micros": int(share)})
    for licensor, currency, model_id, count, generations, gross, royalty in licensor_rows:
        i = info[("licensor", licensor, currency)]
        i["requests"] += int(count)
        i["gross"] += int(gross)
        i["royalties"] += int(royalty)
        i["fees"] += int(gross) - int(royalty)
        i["lines"].append({"model": names.get(model_id, model_id), "requests": int(count),
                           "generations": int(generations or 0), "gross_micros": int(gross),
                           "share_micros": int(royalty)})

    wanted = {(k, r) for k, r, _ in set(kinds) | set(info)}
    if create_payees:
        payees = _ensure_payees(session, wanted)
    else:
        payees = repo.payees(session)
        for kind, ref in wanted - set(payees):
            payees[(kind, ref)] = Payee(id=None, kind=kind, ref=ref, name=ref)
    carries = repo.previous_statement_carries(session, period)
    by_id = {p.id: p for p in payees.values() if p.id}
    keys = set(kinds) | set(info)
    keys |= {(by_id[pid].kind, by_id[pid].ref, cur) for (pid, cur), carry in carries.items() if carry and pid in by_id}
    settings = get_billing_settings()
    rows = []
    for kind, ref, currency in sorted(keys):
        payee = payees[(kind, ref)]
        legs = kinds.get((kind, ref, currency), {})
        if legs.get("payout"):
            raise BooksDoNotReconcile(f"a payout was booked into open period {period} for {kind} {ref}")
        refunds = legs.get("refund", 0)
        credits = -sum(v for k, v in legs.items() if k not in ("usage", "refund", "payout"))
        net = -legs.get("usage", 0) - refunds + credits
        carried_in = carries.get((payee.id, currency), 0) if payee.id else 0
        payable = carried_in + net
        cents = 0
        if payee.stripe_account_id and payable >= max(settings.min_payout_micros, MICROS_PER_CENT):
            cents = payable // MICROS_PER_CENT
        i = info.get((kind, ref, currency), {"requests": 0, "gross": 0, "fees": 0, "royalties": 0, "lines": []})
        rows.append(PayeeRow(payee, currency, i["requests"], i["gross"], i["fees"], i["royalties"], credits,
                             refunds, net, carried_in, payable, cents, sorted(i["lines"], key=lambda x: x["model"])))
    return rows


def _statements(session: Session, period: str) -> dict[str, int]:
    statements, payouts = [], []
    paid_cents = 0
    for row in statement_rows(session, period):
        statement_id = new_id("stm")
        statements.append({
            "id": statement_id, "payee_id": row.payee.id, "period": period, "currency": row.currency,
            "requests": row.requests, "gross_micros": row.gross, "fees_micros": row.fees,
            "royalties_micros": row.royalties, "credits_micros": row.credits, "refunds_micros": row.refunds,
            "net_micros": row.net, "carried_in_micros": row.carried_in, "payable_micros": row.payable,
            "payout_cents": row.payout_cents, "carried_out_micros": row.carried_out, "lines": row.lines,
            "created_at": utcnow()})
        if row.payout_cents:
            payout_id = new_id("pyo")
            payouts.append({"id": payout_id, "statement_id": statement_id, "payee_id": row.payee.id,
                            "period": period, "amount_cents": row.payout_cents, "currency": row.currency,
                            "destination": row.payee.stripe_account_id, "status": "pending",
                            "created_at": utcnow()})
            amount = row.payout_cents * MICROS_PER_CENT
            post_transaction(session, [(ledger.payee_account(row.payee.kind, row.payee.ref), amount),
                                       (ledger.PAYOUTS_IN_TRANSIT, -amount)],
                             currency=row.currency, kind="payout", period=period, ref=payout_id,
                             memo=f"payout of {period} to {row.payee.kind} {row.payee.ref}")
            paid_cents += row.payout_cents
    repo.insert_statements(session, statements, payouts)
    return {"statements": len(statements), "payouts": len(payouts), "payout_cents": paid_cents}


def _licensor_reports(session: Session, period: str) -> dict[str, int]:
    rows = repo.licensor_usage(session, period)
    names = repo.model_names(session, {r[2] for r in rows})
    per: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for licensor, _currency, model_id, count, generations, _gross, _royalty in rows:
        name = names.get(model_id, model_id)
        per[licensor].append({"model": name, "model_slug": name.split("/", 1)[-1],
                              "number_of_generations": int(generations or 0), "requests": int(count)})
    payees = _ensure_payees(session, {("licensor", slug) for slug in per})
    reports = []
    for slug, models in sorted(per.items()):
        payee = payees[("licensor", slug)]
        merged: dict[str, dict[str, Any]] = {}
        for m in models:  # one line per model even when it was billed in two currencies
            line = merged.setdefault(m["model"], {**m, "number_of_generations": 0, "requests": 0})
            line["number_of_generations"] += m["number_of_generations"]
            line["requests"] += m["requests"]
        reports.append({"id": new_id("lrp"), "payee_id": payee.id, "period": period,
                        "payload": {"licensor": slug, "period": period,
                                    "models": sorted(merged.values(), key=lambda x: x["model"])},
                        "status": "pending" if payee.report_url else "unconfigured", "attempts": [],
                        "created_at": utcnow()})
    repo.insert_reports(session, reports)
    return {"licensor_reports": len(reports)}
