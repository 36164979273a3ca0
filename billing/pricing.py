"""Pure pricing arithmetic: reported units, billable quantities, tiers, minimums, royalties."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from engine.manifest import BILLABLE_UNITS
from kit.errors import InvalidInput

MICRO_QUANTUM = Decimal("0.000001")
# A single request reporting more than this on any meter is a model bug, not usage.
MAX_UNITS = Decimal(10) ** 12


def _number(meter: str, raw: Any) -> Decimal:
    if isinstance(raw, bool):
        raise InvalidInput(f"{meter} units must be a finite, non-negative number, got {raw!r}")
    try:
        value = Decimal(str(raw))
    except (InvalidOperation, ValueError) as exc:
        raise InvalidInput(f"{meter} units must be a finite, non-negative number, got {raw!r}") from exc
    if not value.is_finite() or value < 0 or value > MAX_UNITS:
        raise InvalidInput(f"{meter} units must be a finite, non-negative number, got {raw!r}")
    return value


def check_units(units: dict[str, Any]) -> dict[str, Decimal]:
    """The reported units as Decimals; unknown meters and bad numbers are refused (422).

    `megapixels` may also be a list, one value per image, so each is rounded up on its own.
    """
    if not isinstance(units, dict):
        raise InvalidInput("units must be an object of meter → number")
    out: dict[str, Decimal] = {}
    for meter, raw in units.items():
        if meter not in BILLABLE_UNITS:
            raise InvalidInput(f"unknown meter {meter!r}; meters are {', '.join(BILLABLE_UNITS)}")
        if meter == "megapixels" and isinstance(raw, list):
            if not raw:
                raise InvalidInput("megapixels per image must not be an empty list")
            values = [_number(meter, v) for v in raw]
            out["megapixels"] = sum(values, Decimal(0))
            out["_megapixels_per_image"] = sum((v.to_integral_value("ROUND_CEILING") for v in values),
                                               Decimal(0))
        else:
            out[meter] = _number(meter, raw)
    return out


def billable_quantity(meter: str, units: dict[str, Decimal]) -> Decimal:
    """The quantity a price applies to.

    Megapixels are rounded up per image, as fal does: two 1.05 MP images bill as 4 MP. When
    only a total is reported, the images are taken to be the same size.
    """
    quantity = units[meter]
    if meter == "megapixels":
        if "_megapixels_per_image" in units:
            return units["_megapixels_per_image"]
        images = int(units.get("images") or 0) or 1
        if quantity != quantity.to_integral_value():
            per_image = (quantity / images).to_integral_value("ROUND_CEILING")
            return per_image * images
    return quantity.quantize(MICRO_QUANTUM)


@dataclass(frozen=True)
class Tier:
    up_to: Decimal | None
    unit_price_micros: int


def parse_tiers(raw: list[dict[str, Any]] | None) -> list[Tier]:
    """Volume tiers from a price card: ascending `up_to`, the last one open-ended (null)."""
    if not raw:
        return []
    tiers: list[Tier] = []
    previous = Decimal(0)
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) - {"up_to", "unit_price_micros"}:
            raise InvalidInput(f"tiers[{i}] must be {{up_to, unit_price_micros}}")
        price = item.get("unit_price_micros")
        if not isinstance(price, int) or isinstance(price, bool) or price < 0:
            raise InvalidInput(f"tiers[{i}].unit_price_micros must be a non-negative integer")
        up_to = item.get("up_to")
        last = i == len(raw) - 1
        if up_to is None:
            if not last:
                raise InvalidInput("only the last tier may be open-ended (up_to: null)")
            tiers.append(Tier(None, price))
            continue
        bound = _number("tiers.up_to", up_to)
        if bound <= previous:
            raise InvalidInput("tiers must have strictly increasing up_to")
        if last:
            raise InvalidInput("the last tier must be open-ended (up_to: null)")
        tiers.append(Tier(bound, price))
        previous = bound
    return tiers


def charge_micros(
    quantity: Decimal, *, unit_price_micros: int, tiers: list[Tier], already: Decimal = Decimal(0),
    minimum_micros: int = 0,
) -> int:
    """The charge for `quantity` units, rounded up to the micro, at least the minimum.

    With tiers the price is graduated over the period's running total: units from
    `already` to `already + quantity` are priced at the tier each falls in.
    """
    if not tiers:
        exact = quantity * unit_price_micros
    else:
        exact, lo, start, end = Decimal(0), Decimal(0), already, already + quantity
        for tier in tiers:
            hi = tier.up_to
            seg_lo, seg_hi = max(start, lo), end if hi is None else min(end, hi)
            if seg_hi > seg_lo:
                exact += (seg_hi - seg_lo) * tier.unit_price_micros
            if hi is None or hi >= end:
                break
            lo = hi
    return max(math.ceil(exact), minimum_micros)


def unit_royalty(quantity: Decimal, *, per_unit_micros: int, included: Decimal, already: Decimal) -> int:
    """A licensor's per-unit royalty on the units past the period's included volume."""
    if per_unit_micros <= 0:
        return 0
    beyond = max(Decimal(0), already + quantity - max(included, already))
    return math.ceil(beyond * per_unit_micros)


def hosting_fee(gpu_seconds: Decimal, per_second_micros: int) -> int:
    """The platform's hosting fee for a partner-priced request's GPU time."""
    return math.ceil(gpu_seconds * per_second_micros) if per_second_micros > 0 else 0
