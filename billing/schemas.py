"""Request and response bodies of the billing endpoints."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

Unit = Literal["requests", "images", "megapixels", "video_seconds", "gpu_seconds"]
# Far above any real price or fee ($10,000,000), far below what a BIGINT column holds.
MAX_MICROS = 10**13


class Tier(BaseModel):
    up_to: float | None = Field(description="Monthly units this tier runs to; null for the last tier")
    unit_price_micros: int = Field(ge=0, le=MAX_MICROS)


class PricingIn(BaseModel):
    tier: Literal["open", "revenue_share", "partner_priced"]
    unit: Unit
    unit_price_micros: int = Field(ge=0, le=MAX_MICROS, description="Price of one unit in micro-units of the currency")
    currency: str = Field(default="usd", pattern=r"^[a-z]{3}$")
    licensor: str | None = Field(default=None, max_length=64)
    royalty_bps: int = Field(default=0, ge=0, le=10_000)
    platform_fee_bps: int = Field(default=0, ge=0, le=10_000)
    tiers: list[Tier] | None = Field(default=None, description="Graduated monthly volume tiers")
    minimum_micros: int = Field(default=0, ge=0, le=MAX_MICROS, description="The least one request costs")
    royalty_per_unit_micros: int = Field(default=0, ge=0, le=MAX_MICROS, description="revenue_share: royalty per unit")
    included_units: float = Field(default=0, ge=0, le=1e12, description="revenue_share: monthly units without per-unit royalty")
    minimum_fee_micros: int = Field(default=0, ge=0, le=MAX_MICROS, description="revenue_share: monthly minimum royalty")
    hosting_fee_per_gpu_second_micros: int = Field(default=0, ge=0, le=MAX_MICROS, description="partner_priced: hosting fee")
    version: int | None = Field(default=None, ge=1, le=2**31 - 1,
                                description="Price only this version (default: every version)")


class PricingOut(PricingIn):
    model: str
    effective_from: dt.datetime


class PriceCardOut(BaseModel):
    unit: str
    unit_price_micros: int
    currency: str
    license: str


class AccountPriceIn(BaseModel):
    model: str = Field(description="owner/model")
    unit: Unit
    unit_price_micros: int = Field(ge=0, le=MAX_MICROS)
    tiers: list[Tier] | None = None
    minimum_micros: int = Field(default=0, ge=0, le=MAX_MICROS)
    effective_from: dt.datetime | None = None
    ends_at: dt.datetime | None = None


class PoolContractIn(BaseModel):
    pool: str = Field(min_length=1, max_length=64)
    monthly_fee_micros: int = Field(ge=0, le=MAX_MICROS)
    latency_target_ms: int = Field(gt=0, le=86_400_000)
    effective_from: dt.datetime | None = None


class FinanceKeyIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class FinanceKeyOut(BaseModel):
    name: str
    key: str = Field(description="Shown once")


class LicensorIn(BaseModel):
    name: str | None = Field(default=None, max_length=200)
    report_url: str | None = Field(default=None, max_length=2000, pattern=r"^https?://")
    report_token: str | None = Field(default=None, max_length=400)


class PayeeConnectIn(BaseModel):
    email: str | None = Field(default=None, max_length=320)
    country: str = Field(default="US", pattern=r"^[A-Z]{2}$")


class RefundIn(BaseModel):
    usage_id: str | None = None
    request_id: str | None = None
    amount_micros: int | None = Field(default=None, gt=0, le=MAX_MICROS, description="Default: what is left of the charge")
    reason: str = Field(default="", max_length=500)

    @model_validator(mode="after")
    def _one_target(self) -> RefundIn:
        if (self.usage_id is None) == (self.request_id is None):
            raise ValueError("give exactly one of usage_id and request_id")
        return self


class RefundOut(BaseModel):
    id: str
    usage_id: str
    amount_micros: int
    period: str
    platform_micros: int
    royalty_micros: int
    partner_micros: int


class TopupIn(BaseModel):
    amount_cents: int = Field(ge=50, le=10_000_000)
    payment_method: str | None = Field(default=None, max_length=100,
                                       description="A saved card to charge now; otherwise confirm client-side")


class TopupOut(BaseModel):
    id: str
    status: str
    amount_cents: int
    currency: str
    payment_intent: str | None
    client_secret: str | None


class BalanceOut(BaseModel):
    billing_mode: str
    currency: str
    credit_micros: int = Field(description="Prepaid credit left (postpaid accounts: 0)")


class StatementOut(BaseModel):
    period: str
    currency: str
    requests: int
    gross_micros: int
    fees_micros: int
    royalties_micros: int
    credits_micros: int
    refunds_micros: int
    net_micros: int
    carried_in_micros: int
    payable_micros: int
    payout_cents: int
    carried_out_micros: int
    payout_status: str
    transfer: str | None = None
    lines: list[dict[str, Any]] = []
