"""Money in integer micro-units (1e-6 of the currency); rounding to cents only at the edges."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

MICROS = 1_000_000
MICROS_PER_CENT = 10_000
BPS = 10_000  # basis points in a whole


def to_micros(amount: str | int | Decimal) -> int:
    """Parse a decimal amount ("0.025") into micro-units, refusing sub-micro precision."""
    value = Decimal(str(amount)) * MICROS
    if value != value.to_integral_value():
        raise ValueError(f"{amount} has more precision than one micro-unit")
    return int(value)


def format_micros(micros: int, currency: str = "usd") -> str:
    """Human form, e.g. `$0.025000` style without losing micro precision."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS)
    return f"{sign}{whole}.{frac:06d} {currency.upper()}"


def share_bps(amount: int, bps: int) -> int:
    """`amount * bps / 10000`, rounded down toward zero; the remainder stays with the payer."""
    if not 0 <= bps <= BPS:
        raise ValueError(f"basis points out of range: {bps}")
    q = abs(amount) * bps // BPS
    return q if amount >= 0 else -q


def micros_to_cents(micros: int, carried: int = 0) -> tuple[int, int]:
    """Whole cents for `micros + carried`, and the sub-cent remainder to carry forward."""
    total = micros + carried
    cents, rem = divmod(total, MICROS_PER_CENT)
    return cents, rem


def round_half_up_cents(micros: int) -> int:
    """Nearest cent (half up), for display only."""
    return int((Decimal(micros) / MICROS_PER_CENT).quantize(Decimal(1), rounding=ROUND_HALF_UP))
