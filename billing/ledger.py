"""Ledger account names, the split of a charge by license tier, and balanced postings.

Debits are positive, credits negative; every transaction sums to zero. Accounts:

- `customer:{id}:receivable` (asset): postpaid usage owed, cleared by invoice payments.
- `customer:{id}:credit` (liability): prepaid credit; top-ups credit it, usage draws it down.
- `platform:revenue` (income), `platform:sla_credits` and `platform:royalty_minimums`
  (expenses), `platform:stripe` (cash held at Stripe), `platform:payouts_in_transit`
  (payouts decided at close, cleared when Stripe confirms the transfer).
- `licensor:{slug}:royalty_payable`, `partner:{id}:payable` (liabilities to payees).
"""

from __future__ import annotations

from dataclasses import dataclass

from kit.money import share_bps

PLATFORM_REVENUE = "platform:revenue"
PLATFORM_STRIPE = "platform:stripe"
PLATFORM_SLA_CREDITS = "platform:sla_credits"
PLATFORM_ROYALTY_MINIMUMS = "platform:royalty_minimums"
PAYOUTS_IN_TRANSIT = "platform:payouts_in_transit"


def customer_receivable(account_id: str) -> str:
    """What a postpaid account owes."""
    return f"customer:{account_id}:receivable"


def customer_credit(account_id: str) -> str:
    """A prepaid account's credit (a liability: negative means credit held)."""
    return f"customer:{account_id}:credit"


def customer_account(account_id: str, billing_mode: str) -> str:
    """Where an account's charges land: its prepaid credit or its receivable."""
    return customer_credit(account_id) if billing_mode == "prepaid" else customer_receivable(account_id)


def licensor_royalty_payable(licensor: str) -> str:
    """Royalties owed to a licensor."""
    return f"licensor:{licensor}:royalty_payable"


def partner_payable(partner_id: str) -> str:
    """What is owed to a partner."""
    return f"partner:{partner_id}:payable"


def payee_account(kind: str, ref: str) -> str:
    """The payable ledger account of a partner (by id) or licensor (by slug)."""
    return partner_payable(ref) if kind == "partner" else licensor_royalty_payable(ref)


def credit_account_holder(ledger_account: str) -> str | None:
    """The account id of a `customer:{id}:credit` ledger account, else None."""
    head, _, rest = ledger_account.partition(":")
    account_id, _, tail = rest.partition(":")
    return account_id if head == "customer" and tail == "credit" else None


@dataclass(frozen=True)
class Split:
    """Where a charge goes: every micro-unit lands in exactly one place."""

    platform: int
    royalty: int
    partner: int

    @property
    def total(self) -> int:
        return self.platform + self.royalty + self.partner


def split_charge(
    amount: int, *, tier: str, royalty_bps: int, platform_fee_bps: int, unit_royalty: int = 0,
    hosting_fee: int = 0,
) -> Split:
    """Split `amount` by license tier; rounding remainders stay with the platform.

    A per-unit royalty is owed whatever the price, so the platform's share may go below
    zero; a partner's hosting fee is capped at the charge, so a partner never owes for one.
    """
    if tier == "open":
        return Split(platform=amount, royalty=0, partner=0)
    if tier == "revenue_share":
        royalty = share_bps(amount, royalty_bps) + unit_royalty
        return Split(platform=amount - royalty, royalty=royalty, partner=0)
    if tier == "partner_priced":
        fee = min(amount, share_bps(amount, platform_fee_bps) + hosting_fee)
        return Split(platform=fee, royalty=0, partner=amount - fee)
    raise ValueError(f"unknown license tier {tier!r}")


def _pro_rata(part: int, whole: int, taken: int) -> int:
    # Toward zero, like share_bps, so the cumulative share never overshoots the part.
    q = abs(part) * taken // whole
    return q if part >= 0 else -q


def split_refund(original: Split, *, refunded_before: int, amount: int) -> Split:
    """The share of each party in a refund of `amount`, after `refunded_before` was refunded.

    Computed on the cumulative refund so that refunding the whole charge in any number of
    pieces gives back exactly the original split, micro for micro.
    """
    whole = original.total
    if amount <= 0 or refunded_before < 0 or refunded_before + amount > whole:
        raise ValueError("a refund must be positive and at most what is left of the charge")
    after = refunded_before + amount
    royalty = _pro_rata(original.royalty, whole, after) - _pro_rata(original.royalty, whole, refunded_before)
    partner = _pro_rata(original.partner, whole, after) - _pro_rata(original.partner, whole, refunded_before)
    return Split(platform=amount - royalty - partner, royalty=royalty, partner=partner)


def postings(
    split: Split, *, account_id: str, licensor: str, partner_id: str, prepaid: bool = False,
) -> list[tuple[str, int]]:
    """The balanced legs for one charge (zero legs left out, the customer's always kept)."""
    customer = customer_credit(account_id) if prepaid else customer_receivable(account_id)
    return legs_for(split, customer=customer, licensor=licensor, partner_id=partner_id)


def legs_for(split: Split, *, customer: str, licensor: str, partner_id: str) -> list[tuple[str, int]]:
    """Balanced legs of a charge whose customer side is the given ledger account."""
    legs = [
        (customer, split.total),
        (PLATFORM_REVENUE, -split.platform),
        (licensor_royalty_payable(licensor), -split.royalty),
        (partner_payable(partner_id), -split.partner),
    ]
    return [(name, amount) for name, amount in legs if amount != 0 or name == customer]
