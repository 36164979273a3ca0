"""Customer API settings, read from `MEDIAGATE_GATEWAY_*` environment variables."""

from __future__ import annotations

import functools

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    """Limits, webhook delivery and housekeeping; defaults suit a production gateway."""

    model_config = SettingsConfigDict(env_prefix="MEDIAGATE_GATEWAY_", env_file=".env", extra="ignore")

    # Request bodies of the customer API larger than this answer 413 before they are read.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)

    # Defaults for accounts without settings of their own: per-key token bucket
    # (sustained requests per second, burst) and requests running at once per account.
    rate_per_s: float = Field(default=50.0, gt=0)
    rate_burst: int = Field(default=100, ge=1)
    max_concurrency: int = Field(default=16, ge=1)
    # Output files are deleted this many days after the request finished (0: kept).
    retention_days: int = Field(default=30, ge=0)

    # Webhooks: private, loopback and link-local targets are refused unless allowed (tests).
    webhook_allow_private: bool = False
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    # Multiplies the retry schedule (tests shrink hours to milliseconds).
    webhook_backoff_scale: float = Field(default=1.0, gt=0)

    # How often the housekeeping tick runs (deadlines, due webhook retries, retention).
    sweep_interval_s: float = Field(default=1.0, gt=0)
    # How long a request's event stream is kept in Redis after its last event.
    events_ttl_s: int = Field(default=24 * 3600, ge=60)
    # A queued request over its account's concurrency limit is looked at again after this.
    requeue_delay_s: float = Field(default=0.25, gt=0)
    # API keys, models and prices are cached in each API process this long.
    cache_ttl_s: float = Field(default=2.0, ge=0)

    # Durable execution. A worker holds a lease on each request it runs and renews it every
    # `lease_renew_s`; a running request whose lease lapsed (its worker died or lost the
    # database) is queued again by the housekeeping tick, up to `max_attempts` runs in all,
    # the same bound as for a model process that dies mid-request. A queued request nobody
    # picked up for `requeue_stale_s` (its message was held by a worker that died) is sent
    # again; a duplicate message finds the request taken and does nothing.
    lease_s: float = Field(default=60.0, gt=0)
    lease_renew_s: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    retry_delay_s: float = Field(default=1.0, ge=0)
    requeue_stale_s: float = Field(default=300.0, gt=0)

    @model_validator(mode="after")
    def _renew_within_lease(self) -> GatewaySettings:
        if self.lease_renew_s >= self.lease_s:
            raise ValueError("lease_renew_s must be shorter than lease_s, or leases lapse between renewals")
        return self

    @model_validator(mode="after")
    def _no_cache_in_tests(self) -> GatewaySettings:
        # Tests rebuild the same model names between cases; a cached deployment would be stale.
        from kit.settings import get_settings

        if "cache_ttl_s" not in self.model_fields_set and get_settings().env == "test":
            self.cache_ttl_s = 0.0
        return self


@functools.cache
def get_gateway_settings() -> GatewaySettings:
    """The process-wide gateway settings, read once."""
    return GatewaySettings()
