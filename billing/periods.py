"""Billing periods: calendar months in UTC, named like `2026-11`."""

from __future__ import annotations

import datetime as dt
import re

from kit.errors import InvalidInput

_PERIOD = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def check(period: str) -> str:
    """The period if it looks like `2026-11`; 422 otherwise."""
    if not isinstance(period, str) or not _PERIOD.match(period):
        raise InvalidInput(f"period must look like 2026-11, got {period!r}")
    return period


def period_of(when: dt.datetime) -> str:
    """The billing period (calendar month, UTC) a time falls in."""
    return when.astimezone(dt.UTC).strftime("%Y-%m")


def bounds(period: str) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of a period in UTC."""
    year, month = (int(x) for x in check(period).split("-"))
    start = dt.datetime(year, month, 1, tzinfo=dt.UTC)
    end = dt.datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=dt.UTC)
    return start, end


def next_period(period: str) -> str:
    """The month after."""
    return period_of(bounds(period)[1])


def previous_period(period: str) -> str:
    """The month before."""
    return period_of(bounds(period)[0] - dt.timedelta(days=1))


def span(first: str, last: str) -> list[str]:
    """Every period from `first` to `last`, inclusive."""
    out, p = [], check(first)
    while p <= check(last):
        out.append(p)
        p = next_period(p)
    return out
