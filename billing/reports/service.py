"""Finance reports: revenue by model, tier and partner; revenue share per payee; reconciliation."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy.orm import Session

from billing import ledger, periods
from billing import repository as core_repo
from billing.close import repository as close_repo
from billing.close import service as close
from billing.models import BillingPeriod
from billing.reports import repository as repo
from billing.schemas import StatementOut
from billing.service import revenue_share_report
from kit.db import utcnow
from kit.money import MICROS_PER_CENT
from partners.models import Partner

SUMS = ("requests", "gross_micros", "refunds_micros", "platform_micros", "royalty_micros", "partner_micros")
NOT_CHARGES = close.NOT_CHARGES


def period_status(session: Session, period: str) -> str:
    """open, closing or closed."""
    row = session.get(BillingPeriod, periods.check(period))
    return row.status if row else "open"


def default_period(session: Session) -> str:
    """The latest closed period, or the current one when none is closed."""
    return core_repo.latest_closed_period(session) or periods.period_of(utcnow())


def revenue(session: Session, period: str) -> dict[str, list[dict[str, Any]]]:
    """Revenue by model, by license tier and by partner (net shares after refunds)."""
    rows = revenue_share_report(session, period)
    out: dict[str, list[dict[str, Any]]] = {}
    for dim, key in (("model", lambda r: f"{r['partner']}/{r['model']}"), ("tier", lambda r: r["license_tier"]),
                     ("partner", lambda r: r["partner"])):
        acc: dict[tuple[str, str], dict[str, Any]] = {}
        for r in rows:
            k = (key(r), r["currency"])
            line = acc.setdefault(k, {dim: k[0], "currency": k[1], **dict.fromkeys(SUMS, 0)})
            for s in SUMS:
                line[s] += r[s]
        out[dim] = sorted(acc.values(), key=lambda x: -x["gross_micros"])
    return out


def revenue_series(session: Session, *, last: str, months: int = 12) -> list[dict[str, Any]]:
    """Revenue per period for the `months` up to `last` (gaps filled with zeros)."""
    first = last
    for _ in range(months - 1):
        first = periods.previous_period(first)
    found = {(p, c): (n, g, rf, pl, ro, pa) for p, c, n, g, rf, pl, ro, pa in repo.revenue_by_period(session, first, last)}
    currencies = sorted({c for _, c in found}) or ["usd"]
    return [{"period": p, "currency": c, **dict(zip(SUMS, (int(v or 0) for v in found.get((p, c), (0,) * 6)),
                                                    strict=True))}
            for p in periods.span(first, last) for c in currencies]


def payout_status(stm: Any, payee: Any, payout: Any) -> str:
    """A statement's payout in words: the transfer's status, or why the balance is carried."""
    if payout is not None:
        return str(payout.status)
    if stm.carried_out_micros > 0 and not payee.stripe_account_id:
        return "carried (no payout account)"
    return "carried" if stm.carried_out_micros else "nothing due"


def payee_report(session: Session, period: str) -> list[dict[str, Any]]:
    """Per partner and licensor: gross, fees, royalties, credits, refunds, net, payout status.

    A closed period reads its statements; an open one is previewed from the ledger as the
    close would compute it (payouts are decided only at close).
    """
    if period_status(session, period) == "closed":
        out = []
        for stm, payee, payout in repo.statements(session, period):
            status = payout_status(stm, payee, payout)
            out.append({
                "payee": payee.name, "kind": payee.kind, "ref": payee.ref, "currency": stm.currency,
                "requests": stm.requests, "gross_micros": stm.gross_micros, "fees_micros": stm.fees_micros,
                "royalties_micros": stm.royalties_micros, "credits_micros": stm.credits_micros,
                "refunds_micros": stm.refunds_micros, "net_micros": stm.net_micros,
                "carried_in_micros": stm.carried_in_micros, "payable_micros": stm.payable_micros,
                "payout_cents": stm.payout_cents, "carried_out_micros": stm.carried_out_micros,
                "payout_status": status, "statement": stm.id})
        return out
    return [{
        "payee": row.payee.name, "kind": row.payee.kind, "ref": row.payee.ref, "currency": row.currency,
        "requests": row.requests, "gross_micros": row.gross, "fees_micros": row.fees,
        "royalties_micros": row.royalties, "credits_micros": row.credits, "refunds_micros": row.refunds,
        "net_micros": row.net, "carried_in_micros": row.carried_in, "payable_micros": row.payable,
        "payout_cents": 0, "carried_out_micros": row.payable, "payout_status": "accruing (period open)",
        "statement": None} for row in close.statement_rows(session, period, create_payees=False)]


REPORT_COLUMNS = ("payee", "kind", "ref", "currency", "requests", "gross_micros", "fees_micros",
                  "royalties_micros", "credits_micros", "refunds_micros", "net_micros", "carried_in_micros",
                  "payable_micros", "payout_cents", "carried_out_micros", "payout_status")


def reconciliation(session: Session, period: str) -> dict[str, Any]:
    """Proof for a period: usage = invoices + credit draw-down; payables = payouts + carried."""
    status = period_status(session, period)
    closed = status == "closed"
    charges: dict[tuple[str, str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for account_id, mode, currency, _model, _meter, _n, _q, amount in close_repo.usage_lines(session, period):
        charges[(account_id, mode, currency)]["usage"] += int(amount)
    for account_id, mode, currency, _model, _n, amount in close_repo.refund_lines(session, period):
        charges[(account_id, mode, currency)]["refunds"] += int(amount)
    for ledger_account, kind, currency, total in repo.customer_ledger(session, period):
        _, account_id, tail = ledger_account.split(":", 2)
        key = (account_id, "prepaid" if tail == "credit" else "postpaid", currency)
        if kind in NOT_CHARGES:
            charges[key]["paid" if kind == "invoice_payment" else "topups"] += -total
            continue
        charges[key]["ledger"] += total
        if kind not in ("usage", "refund"):
            charges[key]["other"] += total
    documents = {(inv.account_id, "prepaid" if inv.kind == "statement" else "postpaid", inv.currency): (inv, name)
                 for inv, name in repo.invoices(session, period)}
    names = repo.account_names(session, {k[0] for k in charges} | {k[0] for k in documents})
    customers, checks = [], []
    for key in sorted(set(charges) | set(documents)):
        c = charges.get(key, {})
        inv = documents.get(key, (None, ""))[0]
        total_charges = c.get("usage", 0) - c.get("refunds", 0) + c.get("other", 0)
        row = {"account": names.get(key[0], key[0]), "account_id": key[0], "mode": key[1], "currency": key[2],
               "usage_micros": c.get("usage", 0), "refunds_micros": c.get("refunds", 0),
               "other_micros": c.get("other", 0), "charges_micros": total_charges,
               "ledger_micros": c.get("ledger", 0),
               "invoiced_micros": inv.total_micros if inv is not None and inv.kind == "invoice" else 0,
               "drawdown_micros": inv.total_micros if inv is not None and inv.kind == "statement" else 0,
               "carried_in_micros": inv.carried_in_micros if inv is not None else 0,
               "amount_due_cents": inv.amount_due_cents if inv is not None else 0,
               "carried_out_micros": inv.carried_out_micros if inv is not None else 0,
               "invoice_status": inv.status if inv is not None else ("not closed" if not closed else "none"),
               "topups_micros": c.get("topups", 0), "paid_micros": c.get("paid", 0)}
        row["ok"] = (total_charges == row["ledger_micros"]
                     and (not closed or total_charges == row["invoiced_micros"] + row["drawdown_micros"])
                     and (inv is None or inv.kind == "statement" or inv.total_micros + inv.carried_in_micros
                          == inv.amount_due_cents * MICROS_PER_CENT + inv.carried_out_micros))
        customers.append(row)
    customer_totals = {k: sum(r[k] for r in customers) for k in (
        "usage_micros", "refunds_micros", "other_micros", "charges_micros", "ledger_micros", "invoiced_micros",
        "drawdown_micros", "amount_due_cents", "carried_in_micros", "carried_out_micros")}
    checks.append({"check": "usage − refunds + fees − credits = invoices + credit draw-down",
                   "ok": not closed or customer_totals["charges_micros"]
                   == customer_totals["invoiced_micros"] + customer_totals["drawdown_micros"],
                   "detail": f"{customer_totals['charges_micros']} = {customer_totals['invoiced_micros']} + "
                             f"{customer_totals['drawdown_micros']}" if closed else "period not closed yet"})
    checks.append({"check": "every customer's charges match its ledger legs",
                   "ok": all(r["ledger_micros"] == r["charges_micros"] for r in customers), "detail": ""})

    balances = {**core_repo.balances(session, "partner:", through=period),
                **core_repo.balances(session, "licensor:", through=period)}
    payees = []
    for r in payee_report(session, period):
        owed = -balances.get(ledger.payee_account(r["kind"], r["ref"]), 0)
        row = {**r, "ledger_owed_micros": owed,
               "ok": r["payable_micros"] == r["payout_cents"] * MICROS_PER_CENT + r["carried_out_micros"]
               and (not closed or owed == r["carried_out_micros"])}
        payees.append(row)
    payee_totals = {k: sum(r[k] for r in payees) for k in (
        "carried_in_micros", "net_micros", "payable_micros", "payout_cents", "carried_out_micros",
        "ledger_owed_micros")}
    checks.append({"check": "payables = payouts + carried balance",
                   "ok": payee_totals["payable_micros"]
                   == payee_totals["payout_cents"] * MICROS_PER_CENT + payee_totals["carried_out_micros"],
                   "detail": f"{payee_totals['payable_micros']} = {payee_totals['payout_cents']}¢ + "
                             f"{payee_totals['carried_out_micros']}"})
    checks.append({"check": "carried balances equal what the ledger owes each payee",
                   "ok": not closed or all(r["ok"] for r in payees), "detail": ""})
    total, unbalanced = repo.ledger_totals(session)
    checks.append({"check": "every ledger transaction balances", "ok": total == 0 and unbalanced == 0,
                   "detail": f"{unbalanced} unbalanced, sum {total}"})
    credit_ledger = core_repo.balances(session, "customer:")
    stored = repo.credit_balances(session)
    drift = {a: b for a, b in stored.items() if b != -credit_ledger.get(ledger.customer_credit(a), 0)}
    checks.append({"check": "prepaid balances equal the ledger", "ok": not drift,
                   "detail": f"{len(drift)} differ" if drift else f"{len(stored)} accounts"})
    return {"period": period, "status": status, "customers": customers, "customer_totals": customer_totals,
            "payees": payees, "payee_totals": payee_totals, "checks": checks,
            "ok": all(c["ok"] for c in checks)}


def _statement_out(stm: Any, payee: Any, payout: Any) -> StatementOut:
    status = payout_status(stm, payee, payout)
    return StatementOut(
        period=stm.period, currency=stm.currency, requests=stm.requests, gross_micros=stm.gross_micros,
        fees_micros=stm.fees_micros, royalties_micros=stm.royalties_micros, credits_micros=stm.credits_micros,
        refunds_micros=stm.refunds_micros, net_micros=stm.net_micros, carried_in_micros=stm.carried_in_micros,
        payable_micros=stm.payable_micros, payout_cents=stm.payout_cents, carried_out_micros=stm.carried_out_micros,
        payout_status=status, transfer=payout.stripe_transfer_id if payout is not None else None, lines=stm.lines)


def partner_statements(session: Session, partner: Partner) -> list[StatementOut]:
    """The partner's closed-period statements, newest first (as payee and as licensor)."""
    out = []
    # A partner's own earnings, and royalties owed to it when its models' licenses name it.
    for kind, ref in (("partner", partner.id), ("licensor", partner.slug)):
        payee = core_repo.payee(session, kind, ref)
        if payee is not None:
            out += [_statement_out(s, payee, p) for s, p in repo.statements_of_payee(session, payee.id)]
    return sorted(out, key=lambda s: s.period, reverse=True)
