"""Finance pages under /finance (role-protected), charts, CSV/JSON exports and finance actions."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Depends, Form, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.orm import Session

from billing import periods
from billing import repository as core_repo
from billing import service as billing
from billing.reports import charts
from billing.reports import service as reports
from billing.reports.auth import (
    COOKIE,
    SESSION_TTL_S,
    FinanceUser,
    admin_only,
    check_key,
    finance_api,
    finance_page,
    issue_finance_key,
    session_cookie,
)
from billing.schemas import (
    AccountPriceIn,
    FinanceKeyIn,
    FinanceKeyOut,
    LicensorIn,
    PayeeConnectIn,
    PoolContractIn,
    RefundIn,
    RefundOut,
)
from kit.db import get_session, utcnow
from kit.errors import InvalidInput, NotFound
from kit.money import MICROS
from kit.tasks import enqueue
from kit.web import router as make_router
from partners import repository as partners_repo

router = make_router(prefix="/finance", tags=["finance"])
_env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                          autoescape=True, trim_blocks=True, lstrip_blocks=True)
_env.filters["money"] = lambda m: f"{'-' if m < 0 else ''}${abs(m) / MICROS:,.2f}"
_env.filters["micros"] = lambda m: f"{m:,}"
_env.filters["cents"] = lambda c: f"{'-' if c < 0 else ''}${abs(c) / 100:,.2f}"


def _period(session: Session, period: str | None) -> str:
    return periods.check(period) if period else reports.default_period(session)


def _page(name: str, **context: Any) -> HTMLResponse:
    return HTMLResponse(_env.get_template(name).render(**context),
                        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})


def _totals(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {k: sum(r[k] for r in rows) for k in reports.SUMS}


# -- sign in ------------------------------------------------------------------------------

@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login_form(next: str = "/finance") -> HTMLResponse:
    """The finance sign-in page."""
    return _page("login.html", error=None, next=next)


@router.post("/login", include_in_schema=False)
def login(request: Request, key: str = Form(...), next: str = Form("/finance"),
          session: Session = Depends(get_session)) -> Response:
    """Sign in with a finance key: a signed session cookie, never the key itself."""
    user = check_key(session, key.strip())
    if user is None:
        return HTMLResponse(_env.get_template("login.html").render(error="That key is not a finance key.", next=next),
                            status_code=401)
    target = next if next.startswith("/finance") and "//" not in next else "/finance"
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, session_cookie(user), max_age=SESSION_TTL_S, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/finance")
    return response


@router.post("/logout", include_in_schema=False)
def logout() -> Response:
    """End the finance session."""
    response = RedirectResponse("/finance/login", status_code=303)
    response.delete_cookie(COOKIE, path="/finance")
    return response


# -- pages --------------------------------------------------------------------------------

@router.get("", response_class=HTMLResponse, include_in_schema=False)
def overview(period: str | None = None, user: FinanceUser = Depends(finance_page),
             session: Session = Depends(get_session)) -> HTMLResponse:
    """Revenue by model, license tier and partner, with revenue over time and the share split."""
    p = _period(session, period)
    revenue = reports.revenue(session, p)
    totals = _totals(revenue["model"])
    return _page("overview.html", page="overview", period=p, status=reports.period_status(session, p), user=user,
                 revenue=revenue, totals=totals, revenue_svg=_revenue_svg(session, p), split_svg=_split_svg(totals, p))


@router.get("/revenue-share", response_class=HTMLResponse, include_in_schema=False)
def revenue_share_page(period: str | None = None, user: FinanceUser = Depends(finance_page),
                       session: Session = Depends(get_session)) -> HTMLResponse:
    """Revenue share per partner and licensor for a period."""
    p = _period(session, period)
    return _page("revenue_share.html", page="share", period=p, status=reports.period_status(session, p),
                 user=user, rows=reports.payee_report(session, p))


@router.get("/reconciliation", response_class=HTMLResponse, include_in_schema=False)
def reconciliation_page(period: str | None = None, user: FinanceUser = Depends(finance_page),
                        session: Session = Depends(get_session)) -> HTMLResponse:
    """The period's reconciliation: usage to invoices, payables to payouts."""
    p = _period(session, period)
    return _page("reconciliation.html", page="recon", period=p, status=reports.period_status(session, p),
                 user=user, recon=reports.reconciliation(session, p))


@router.get("/periods", response_class=HTMLResponse, include_in_schema=False)
def periods_page(user: FinanceUser = Depends(finance_page), session: Session = Depends(get_session)) -> HTMLResponse:
    """Every billing period and what its close wrote."""
    p = reports.default_period(session)
    return _page("periods.html", page="periods", period=p, status=reports.period_status(session, p), user=user,
                 rows=list(reversed(core_repo.periods(session))))


# -- charts -------------------------------------------------------------------------------

def _revenue_svg(session: Session, period: str, months: int = 12) -> str:
    series = reports.revenue_series(session, last=period, months=months)
    currency = series[0]["currency"] if series else "usd"
    series = [r for r in series if r["currency"] == currency]
    return charts.stacked_bars([r["period"] for r in series],
                               [("platform", [r["platform_micros"] for r in series]),
                                ("royalty", [r["royalty_micros"] for r in series]),
                                ("partner", [r["partner_micros"] for r in series])],
                               title=f"Revenue over time ({currency.upper()}, net of refunds)")


def _split_svg(totals: dict[str, int], period: str) -> str:
    return charts.donut([("platform", totals["platform_micros"]), ("royalty", totals["royalty_micros"]),
                         ("partner", totals["partner_micros"]), ("refunds", totals["refunds_micros"])],
                        title=f"Share split, {period}")


@router.get("/charts/revenue.svg", include_in_schema=False)
def revenue_chart(period: str | None = None, months: int = Query(12, ge=1, le=60),
                  _: FinanceUser = Depends(finance_api), session: Session = Depends(get_session)) -> Response:
    """Revenue over time as SVG."""
    return Response(_revenue_svg(session, _period(session, period), months), media_type="image/svg+xml")


@router.get("/charts/split.svg", include_in_schema=False)
def split_chart(period: str | None = None, _: FinanceUser = Depends(finance_api),
                session: Session = Depends(get_session)) -> Response:
    """A period's share split as SVG."""
    p = _period(session, period)
    return Response(_split_svg(_totals(reports.revenue(session, p)["model"]), p), media_type="image/svg+xml")


# -- exports ------------------------------------------------------------------------------

def _csv(rows: list[dict[str, Any]], columns: list[str] | tuple[str, ...] | None = None) -> str:
    buf = io.StringIO()
    columns = list(columns or (rows[0].keys() if rows else []))
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


@router.get("/export/{name}.{fmt}")
def export(name: str, fmt: str, period: str | None = None, _: FinanceUser = Depends(finance_api),
           session: Session = Depends(get_session)) -> Response:
    """A report as CSV or JSON: revenue-share, revenue-by-{model,tier,partner}, revenue-over-time,
    reconciliation, invoices."""
    if fmt not in ("csv", "json"):
        raise NotFound("exports are .csv or .json")
    p = _period(session, period)
    columns: tuple[str, ...] | None = None
    payload: Any
    if name == "revenue-share":
        rows, columns = reports.payee_report(session, p), reports.REPORT_COLUMNS
    elif name.startswith("revenue-by-") and name[11:] in ("model", "tier", "partner"):
        rows = reports.revenue(session, p)[name[11:]]
    elif name == "revenue-over-time":
        rows = reports.revenue_series(session, last=p)
    elif name == "reconciliation":
        recon = reports.reconciliation(session, p)
        if fmt == "json":
            return Response(json.dumps(recon, default=str, indent=2), media_type="application/json")
        rows = recon["customers"]
    elif name == "invoices":
        rows = [{"account": acc, "account_id": inv.account_id, "kind": inv.kind, "currency": inv.currency,
                 "total_micros": inv.total_micros, "carried_in_micros": inv.carried_in_micros,
                 "amount_due_cents": inv.amount_due_cents, "carried_out_micros": inv.carried_out_micros,
                 "status": inv.status, "stripe_invoice_id": inv.stripe_invoice_id}
                for inv, acc in reports.repo.invoices(session, p)]
    else:
        raise NotFound(f"no export named {name!r}")
    if fmt == "json":
        payload = {"period": p, "status": reports.period_status(session, p), "rows": rows}
        return Response(json.dumps(payload, default=str, indent=2), media_type="application/json")
    return Response(_csv(rows, columns), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}-{p}.csv"'})


# -- finance actions (JSON API) -------------------------------------------------------------

@router.post("/api/keys", response_model=FinanceKeyOut, status_code=201, dependencies=[Depends(admin_only)])
def create_finance_key(body: FinanceKeyIn, session: Session = Depends(get_session)) -> FinanceKeyOut:
    """Issue a finance key (operators only); shown once."""
    return FinanceKeyOut(name=body.name, key=issue_finance_key(session, name=body.name))


@router.post("/api/refunds", response_model=RefundOut, status_code=201)
def refund(body: RefundIn, _: FinanceUser = Depends(finance_api), session: Session = Depends(get_session)) -> RefundOut:
    """Refund all or part of a request's charge (a reversing transaction in the open period)."""
    usage_id = body.usage_id
    if usage_id is None:
        records = core_repo.usage_of_request(session, body.request_id or "")
        if not records:
            raise NotFound(f"no charge for request {body.request_id}")
        usage_id = records[0].id
    r = billing.refund_usage(session, usage_id, amount_micros=body.amount_micros, reason=body.reason)
    return RefundOut(id=r.id, usage_id=r.usage_id, amount_micros=r.amount_micros, period=r.period,
                     platform_micros=r.platform_micros, royalty_micros=r.royalty_micros,
                     partner_micros=r.partner_micros)


@router.put("/api/licensors/{slug}")
def set_licensor(body: LicensorIn, slug: str = PathParam(max_length=64), _: FinanceUser = Depends(finance_api),
                 session: Session = Depends(get_session)) -> dict[str, Any]:
    """Where a licensor's usage reports go (and how they authenticate us)."""
    payee = billing.ensure_payee(session, "licensor", slug, name=body.name or slug, report_url=body.report_url,
                                 report_token=body.report_token)
    return {"id": payee.id, "licensor": slug, "report_url": payee.report_url}


@router.post("/api/payees/{kind}/{ref}/connect")
def connect_payee(kind: str, body: PayeeConnectIn, ref: str = PathParam(max_length=64),
                  _: FinanceUser = Depends(finance_api), session: Session = Depends(get_session)) -> dict[str, Any]:
    """Open (once) the Stripe Connect account a partner's or licensor's payouts go to."""
    from billing.payments.service import onboard_payee
    from billing.stripe_gateway import get_gateway

    payee = billing.ensure_payee(session, kind, ref)
    return {"payee": payee.id, "stripe_account_id": onboard_payee(session, payee, get_gateway(), email=body.email,
                                                                  country=body.country)}


@router.post("/api/accounts/{account_id}/prices", status_code=201)
def account_price(account_id: str, body: AccountPriceIn, _: FinanceUser = Depends(finance_api),
                  session: Session = Depends(get_session)) -> dict[str, Any]:
    """An enterprise contract price for one account and model."""
    account = core_repo.account(session, account_id)
    owner, _, slug = body.model.partition("/")
    model = partners_repo.model_by_slug(session, owner, slug)
    if account is None or model is None:
        raise NotFound("no such account or model")
    card = billing.set_account_price(session, model, account, unit=body.unit, unit_price_micros=body.unit_price_micros,
                                     tiers=[t.model_dump() for t in body.tiers] if body.tiers else None,
                                     minimum_micros=body.minimum_micros, effective_from=body.effective_from,
                                     ends_at=body.ends_at)
    return {"id": card.id, "effective_from": card.effective_from, "ends_at": card.ends_at}


@router.post("/api/accounts/{account_id}/pool-contracts", status_code=201)
def pool_contract(account_id: str, body: PoolContractIn, _: FinanceUser = Depends(finance_api),
                  session: Session = Depends(get_session)) -> dict[str, Any]:
    """A dedicated pool with its monthly fee and latency SLA."""
    account = core_repo.account(session, account_id)
    if account is None:
        raise NotFound(f"no account {account_id}")
    c = billing.add_pool_contract(session, account, pool=body.pool, monthly_fee_micros=body.monthly_fee_micros,
                                  latency_target_ms=body.latency_target_ms, effective_from=body.effective_from)
    return {"id": c.id, "pool": c.pool, "effective_from": c.effective_from}


@router.post("/api/periods/{period}/close", status_code=202)
def close_period(period: str, _: FinanceUser = Depends(finance_api),
                 session: Session = Depends(get_session)) -> dict[str, Any]:
    """Queue the close of a period that has ended (the worker freezes, closes and delivers it)."""
    start, end = periods.bounds(period)
    if end > utcnow():
        raise InvalidInput(f"period {period} has not ended yet")
    enqueue(session, "billing.close_period", period)
    return {"period": period, "queued": True, "from": start.isoformat(), "until": end.isoformat()}
