"""Request and response bodies of the billing endpoints."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field


class PricingIn(BaseModel):
    tier: Literal["open", "revenue_share", "partner_priced"]
    unit: Literal["requests", "images", "megapixels", "video_seconds", "gpu_seconds"]
    unit_price_micros: int = Field(ge=0, description="Price of one unit in micro-units of the currency")
    currency: str = Field(default="usd", pattern=r"^[a-z]{3}$")
    licensor: str | None = Field(default=None, max_length=64)
    royalty_bps: int = Field(default=0, ge=0, le=10_000)
    platform_fee_bps: int = Field(default=0, ge=0, le=10_000)


class PricingOut(PricingIn):
    model: str
    effective_from: dt.datetime


class PriceCardOut(BaseModel):
    unit: str
    unit_price_micros: int
    currency: str
    license: str
