"""Partner earnings: the portal's earnings page and `GET /v1/partner/earnings`.

Billing owns the money, the partners portal owns the layout and the sign-in; this module
joins the two. `router` is the whole portal (the partners' pages, earnings, then the HTML
404 for any other portal path) and is what the app mounts.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from billing import service as billing
from billing.reports import service as reports_service
from kit.db import get_session, utcnow
from kit.errors import InvalidInput
from kit.web import router as api_router
from partners import portal
from partners.auth import current_partner
from partners.models import Partner
from partners.portal.charts import WIDE, Series, bar_chart, decimals_for
from partners.portal.web import PortalRoute, PortalUser, portal_user, templates

MONTHS = 6
SUMS = ("requests", "gross_micros", "refunds_micros", "platform_micros", "royalty_micros", "partner_micros")


def _months_back(now: dt.datetime, count: int) -> list[str]:
    """The current period and the `count - 1` before it, oldest first."""
    year, month = now.year, now.month
    out = []
    for _ in range(count):
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return out[::-1]


def partner_earnings(session: Session, partner: Partner, period: str) -> list[dict[str, Any]]:
    """The partner's own rows of the period's revenue-share report (never another partner's)."""
    return [dict(row, refunds_micros=row.get("refunds_micros", 0))
            for row in billing.revenue_share_report(session, period) if row["partner"] == partner.slug]


def _totals(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Sums per currency (a partner may price models in more than one)."""
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        t = out.setdefault(row["currency"], dict.fromkeys(SUMS, 0))
        for key in SUMS:
            t[key] += int(row.get(key) or 0)
    return out


# -- the API -----------------------------------------------------------------------------------

class EarningsRow(BaseModel):
    model: str
    license_tier: str
    licensor: str
    currency: str
    requests: int
    gross_micros: int = Field(description="What customers were charged for the model")
    refunds_micros: int = 0
    platform_micros: int = Field(description="The platform's fee")
    royalty_micros: int = Field(description="Royalties to the model's licensor")
    partner_micros: int = Field(description="Your earnings")


class Earnings(BaseModel):
    period: str
    rows: list[EarningsRow]
    totals: dict[str, dict[str, int]] = Field(description="Per currency: the same sums over all models")


api = api_router(prefix="/v1/partner", tags=["partner"])


@api.get("/earnings", response_model=Earnings)
def earnings_api(period: str | None = Query(default=None, description="2026-11; the current month if omitted"),
                 partner: Partner = Depends(current_partner), session: Session = Depends(get_session)) -> Earnings:
    """Your models' charges and your share for a billing period (calendar month, UTC)."""
    period = period or utcnow().strftime("%Y-%m")
    rows = partner_earnings(session, partner, period)
    return Earnings(period=period, rows=[EarningsRow(**{k: v for k, v in r.items() if k != "partner"}) for r in rows],
                    totals=_totals(rows))


# -- the page ------------------------------------------------------------------------------

pages = APIRouter(prefix="/portal", route_class=PortalRoute, include_in_schema=False)

EARNINGS = templates.from_string("""\
{% extends "base.html" %}
{% block title %}Earnings{% endblock %}
{% block content %}
<div class="page-head">
  <h1>Earnings</h1>
  <form method="get" action="/portal/earnings" class="filters">
    <select name="period" aria-label="Period">{% for p in periods[::-1] %}<option value="{{ p }}" {{ 'selected' if p == period }}>{{ p }}</option>{% endfor %}</select>
    <button type="submit">Show</button>
  </form>
</div>
<section class="stats">
  <div class="stat"><span class="n" id="earned">{{ total.partner_micros | money(currency) }}</span><span class="l">your earnings, {{ period }}</span></div>
  <div class="stat"><span class="n">{{ total.gross_micros | money(currency) }}</span><span class="l">charged to customers</span></div>
  <div class="stat"><span class="n">{{ total.requests }}</span><span class="l">billed requests</span></div>
  <div class="stat"><span class="n">{{ six_months | money(currency) }}</span><span class="l">last {{ periods | length }} months</span></div>
</section>
<section class="card">{{ chart }}</section>
<section class="card">
  <h2>By model, {{ period }}</h2>
  {% if rows %}
  <table id="earnings">
    <thead><tr><th>Model</th><th>License</th><th class="num">Requests</th><th class="num">Charged</th><th class="num">Refunds</th>
      <th class="num">Platform fee</th><th class="num">Royalty</th><th class="num">Your share</th></tr></thead>
    <tbody>{% for r in rows %}
      <tr><td>{{ r.partner }}/{{ r.model }}</td><td>{{ r.license_tier | replace('_', ' ') }}{% if r.license_tier == 'revenue_share' %} <span class="muted">({{ r.licensor }})</span>{% endif %}</td>
        <td class="num">{{ r.requests }}</td><td class="num">{{ r.gross_micros | money(r.currency) }}</td>
        <td class="num">{{ r.refunds_micros | money(r.currency) }}</td><td class="num">{{ r.platform_micros | money(r.currency) }}</td>
        <td class="num">{{ r.royalty_micros | money(r.currency) }}</td><td class="num"><strong>{{ r.partner_micros | money(r.currency) }}</strong></td></tr>
    {% endfor %}</tbody>
  </table>
  {% else %}<p class="empty">No billed requests in {{ period }}.</p>{% endif %}
  <p class="muted">Amounts are exact to the micro-unit as metered; payouts round to cents when a period closes, carrying remainders forward.
    Open-license models earn the platform only; revenue-share models pay the licensor a royalty; partner-priced models pay you the price less the platform fee.</p>
</section>
<section class="card">
  <h2>Statements</h2>
  {% if statements %}
  <table id="statements">
    <thead><tr><th>Period</th><th class="num">Requests</th><th class="num">Gross</th><th class="num">Fees</th><th class="num">Royalties</th>
      <th class="num">Credits</th><th class="num">Refunds</th><th class="num">Net</th><th class="num">Paid out</th><th class="num">Carried</th><th>Payout</th></tr></thead>
    <tbody>{% for st in statements %}
      <tr><td>{{ st.period }}</td><td class="num">{{ st.requests }}</td><td class="num">{{ st.gross_micros | money(st.currency) }}</td>
        <td class="num">{{ st.fees_micros | money(st.currency) }}</td><td class="num">{{ st.royalties_micros | money(st.currency) }}</td>
        <td class="num">{{ st.credits_micros | money(st.currency) }}</td><td class="num">{{ st.refunds_micros | money(st.currency) }}</td>
        <td class="num"><strong>{{ st.net_micros | money(st.currency) }}</strong></td><td class="num">{{ (st.payout_cents * 10000) | money(st.currency) }}</td>
        <td class="num">{{ st.carried_out_micros | money(st.currency) }}</td><td>{{ st.payout_status | replace('_', ' ') }}</td></tr>
    {% endfor %}</tbody>
  </table>
  {% else %}<p class="empty">No statements yet: one is written for each month when it closes.</p>{% endif %}
</section>
{% endblock %}
""")


@pages.get("/earnings")
def earnings_page(request: Request, period: str | None = Query(None), user: PortalUser = Depends(portal_user),
                  session: Session = Depends(get_session)) -> HTMLResponse:
    """Earnings by model for a period, and the last six months as a chart."""
    now = utcnow()
    periods = _months_back(now, MONTHS)
    period = period or periods[-1]
    if period not in periods:
        raise InvalidInput(f"choose one of the last {MONTHS} months")
    by_period = {p: partner_earnings(session, user.partner, p) for p in periods}
    rows = by_period[period]
    totals = _totals(rows)
    currency = next(iter(totals), "usd")
    total = totals.get(currency, dict.fromkeys(SUMS, 0))
    monthly = [_totals(by_period[p]).get(currency, {}).get("partner_micros", 0) / 1_000_000 for p in periods]
    xs = [dt.datetime.strptime(p, "%Y-%m").replace(tzinfo=dt.UTC) for p in periods]
    symbol = {"usd": "$", "eur": "€", "gbp": "£"}.get(currency, "")
    chart = bar_chart(f"Your earnings per month ({currency.upper()})", xs,
                      [Series("earned", monthly, "s-ok")], "month",
                      value_fmt=lambda v: f"{symbol}{v:,.4f}", floor=0.01, width=WIDE,
                      tick_fmt=lambda v, top: f"{symbol}{v:,.{max(2, decimals_for(top))}f}",
                      empty="no earnings in these months")
    html = EARNINGS.render(request=request, user=user, csrf=user.csrf, path=request.url.path, period=period,
                           periods=periods, rows=rows, total=total, currency=currency, chart=chart,
                           six_months=int(sum(monthly) * 1_000_000),
                           statements=reports_service.partner_statements(session, user.partner))
    return HTMLResponse(html)


router = APIRouter()
router.include_router(portal.router)
router.include_router(pages)
router.include_router(api)
router.include_router(portal.fallback)
