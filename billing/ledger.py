"""Ledger account names and the split of a charge by license tier."""

from __future__ import annotations

from dataclasses import dataclass

from kit.money import share_bps

PLATFORM_REVENUE = "platform:revenue"


def customer_receivable(account_id: str) -> str:
    return f"customer:{account_id}:receivable"


def licensor_royalty_payable(licensor: str) -> str:
    return f"licensor:{licensor}:royalty_payable"


def partner_payable(partner_id: str) -> str:
    return f"partner:{partner_id}:payable"


@dataclass(frozen=True)
class Split:
    """Where a charge goes: every micro-unit lands in exactly one place."""

    platform: int
    royalty: int
    partner: int

    @property
    def total(self) -> int:
        return self.platform + self.royalty + self.partner


def split_charge(amount: int, *, tier: str, royalty_bps: int, platform_fee_bps: int) -> Split:
    """Split `amount` by license tier; rounding remainders stay with the platform."""
    if tier == "open":
        return Split(platform=amount, royalty=0, partner=0)
    if tier == "revenue_share":
        royalty = share_bps(amount, royalty_bps)
        return Split(platform=amount - royalty, royalty=royalty, partner=0)
    if tier == "partner_priced":
        fee = share_bps(amount, platform_fee_bps)
        return Split(platform=fee, royalty=0, partner=amount - fee)
    raise ValueError(f"unknown license tier {tier!r}")


def postings(
    split: Split, *, account_id: str, licensor: str, partner_id: str
) -> list[tuple[str, int]]:
    """The balanced legs for one charge (zero legs left out)."""
    legs = [
        (customer_receivable(account_id), split.total),
        (PLATFORM_REVENUE, -split.platform),
        (licensor_royalty_payable(licensor), -split.royalty),
        (partner_payable(partner_id), -split.partner),
    ]
    return [(name, amount) for name, amount in legs if amount != 0 or name.startswith("customer:")]
