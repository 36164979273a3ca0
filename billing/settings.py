"""Billing configuration, read from `MEDIAGATE_*` environment variables like the rest."""

from __future__ import annotations

import functools
import json

from pydantic import field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_STRIPE_KEY = "sk_test_mediagate_dev"
DEV_WEBHOOK_SECRET = "whsec_mediagate_dev"


class BillingSettings(BaseSettings):
    """Stripe, payouts, SLA bands and period close."""

    model_config = SettingsConfigDict(env_prefix="MEDIAGATE_", env_file=".env", extra="ignore")

    env: str = "dev"
    stripe_api_key: str = DEV_STRIPE_KEY
    # Empty means Stripe itself; tests point it at a local stand-in.
    stripe_api_base: str = ""
    stripe_webhook_secret: str = DEV_WEBHOOK_SECRET
    stripe_timeout_s: float = 20.0
    # Retries the SDK makes itself (same idempotency key) before our own outbox retries.
    stripe_max_network_retries: int = 2
    # Below this a payable is carried to the next statement instead of paid out.
    min_payout_micros: int = 10_000
    # SLA bands: (compliance below this percent, credit in basis points of the pool fee).
    sla_bands: list[tuple[float, int]] = [(99.0, 1_000), (95.0, 2_500), (90.0, 10_000)]
    licensor_report_timeout_s: float = 10.0
    licensor_report_attempts: int = 3
    # Statement delivery and licensor reports are retried by these many task attempts.
    delivery_retry_delay_s: float = 60.0

    @field_validator("sla_bands", mode="before")
    @classmethod
    def _bands_from_json(cls, value: object) -> object:
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("sla_bands")
    @classmethod
    def _bands_sorted(cls, value: list[tuple[float, int]]) -> list[tuple[float, int]]:
        if any(not 0 <= bps <= 10_000 for _, bps in value):
            raise ValueError("SLA credit bands must credit between 0 and 10000 bps")
        return sorted(value, key=lambda band: band[0])

    @model_validator(mode="after")
    def _refuse_dev_secrets_in_production(self) -> BillingSettings:
        if self.env == "production" and (
            self.stripe_api_key == DEV_STRIPE_KEY or self.stripe_webhook_secret == DEV_WEBHOOK_SECRET
        ):
            raise ValueError("MEDIAGATE_STRIPE_API_KEY and MEDIAGATE_STRIPE_WEBHOOK_SECRET must be "
                             "set in production")
        return self


@functools.cache
def get_billing_settings() -> BillingSettings:
    """The process-wide billing settings, read once."""
    return BillingSettings()
