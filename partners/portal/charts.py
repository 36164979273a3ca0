"""Server-rendered SVG charts: request counts (stacked bars) and latency (lines).

Plain SVG with presentation attributes only (no inline styles, no script), so the portal's
Content-Security-Policy holds and the charts render without JavaScript.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

WIDTH, WIDE, HEIGHT = 560, 1100, 220
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 14, 30


@dataclass(frozen=True)
class Series:
    """One named series of values, one per bucket (None where there is no value)."""

    label: str
    values: Sequence[float | None]
    css: str  # a class the stylesheet colours: s-ok, s-fail, s-p50, s-p95


def buckets(since: dt.datetime, until: dt.datetime, step: str) -> list[dt.datetime]:
    """Every bucket start in [since, until), so empty hours or days still show."""
    delta = dt.timedelta(hours=1) if step == "hour" else dt.timedelta(days=1)
    out, at = [], since
    while at < until:
        out.append(at)
        at += delta
    return out


def _nice_max(value: float, floor: float = 1.0, *, integer: bool = False) -> float:
    """A round axis top at or above `value` whose quarter steps are round too (never below
    `floor`, so empty charts read well); counts get whole-number steps."""
    raw = max(value, floor) / 4
    exp = 10 ** math.floor(math.log10(raw))
    steps = (1, 2, 5, 10) if integer and exp < 10 else (1, 2, 2.5, 5, 10)
    for m in steps:
        if raw <= m * exp * (1 + 1e-9):
            return max(4 * m * exp, 4.0 if integer else 0.0)
    return 40 * exp


LABELS = {"hour": "%H:%M", "day": "%b %d", "month": "%b %Y"}


def _label(at: dt.datetime, step: str) -> str:
    return at.strftime(LABELS.get(step, "%b %d"))


def _axes(ymax: float, fmt: Callable[[float], str], xs: list[dt.datetime], step: str, x_of,  # type: ignore[no-untyped-def]
          width: int) -> list[str]:
    parts = []
    plot_h = HEIGHT - TOP - BOTTOM
    for i in range(5):
        value = ymax * i / 4
        y = TOP + plot_h - plot_h * i / 4
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{width - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        text = fmt(value)
        parts.append(f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(text)}</text>')
    every = max(1, math.ceil(len(xs) / (8 if width <= WIDTH else 14)))
    for i, at in enumerate(xs):
        if i % every == 0:
            parts.append(f'<text class="tick" x="{x_of(i):.1f}" y="{HEIGHT - 10}" text-anchor="middle">'
                         f'{escape(_label(at, step))}</text>')
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{width - RIGHT}" y1="{HEIGHT - BOTTOM}" y2="{HEIGHT - BOTTOM}"/>')
    return parts


def decimals_for(ymax: float) -> int:
    """Enough decimals that the axis' quarter steps read differently."""
    step = ymax / 4
    return 0 if step >= 1 else min(6, 1 - math.floor(math.log10(step)))


def _svg(title: str, body: list[str], legend: Sequence[Series], width: int) -> Markup:
    keys = "".join(f'<span class="key {escape(s.css)}">{escape(s.label)}</span>' for s in legend)
    svg = (f'<svg class="chart" viewBox="0 0 {width} {HEIGHT}" role="img" aria-label="{escape(title)}" '
           f'preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
           + "".join(body) + "</svg>")
    return Markup(f'<figure class="chart-box"><figcaption>{escape(title)}<span class="legend">{keys}</span>'
                  f"</figcaption>{svg}</figure>")


def bar_chart(title: str, xs: list[dt.datetime], series: Sequence[Series], step: str, *,
              value_fmt: Callable[[float], str] = "{:.0f}".format,
              tick_fmt: Callable[[float, float], str] | None = None, floor: float = 4,
              empty: str = "no requests in this period", width: int = WIDTH) -> Markup:
    """Stacked bars per bucket; each segment has a tooltip with its value."""
    n = max(len(xs), 1)
    totals = [sum((s.values[i] or 0) for s in series) for i in range(len(xs))]
    ymax = _nice_max(max(totals, default=0), floor, integer=floor >= 4)
    plot_w, plot_h = width - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / n
    bar = max(slot * 0.7, 1.0)

    def x_of(i: int) -> float:
        return LEFT + slot * i + slot / 2

    ticks = tick_fmt or (lambda v, top: f"{v:.{decimals_for(top)}f}")
    body = _axes(ymax, lambda v: ticks(v, ymax), xs, step, x_of, width)
    for i, at in enumerate(xs):
        base = TOP + plot_h
        for s in series:
            value = s.values[i] or 0
            if value <= 0:
                continue
            h = plot_h * value / ymax
            base -= h
            body.append(f'<rect class="{escape(s.css)}" x="{x_of(i) - bar / 2:.1f}" y="{base:.1f}" '
                        f'width="{bar:.1f}" height="{h:.1f}"><title>{escape(_label(at, step))}: '
                        f'{escape(value_fmt(value))} {escape(s.label)}</title></rect>')
    if not any(totals):
        body.append(f'<text class="empty" x="{width / 2}" y="{HEIGHT / 2}" text-anchor="middle">'
                    f"{escape(empty)}</text>")
    return _svg(title, body, series, width)


def line_chart(title: str, xs: list[dt.datetime], series: Sequence[Series], step: str, *,
               width: int = WIDTH) -> Markup:
    """Lines of milliseconds per bucket, with a dot per value; gaps where there were no runs."""
    values = [v for s in series for v in s.values if v is not None]
    ymax = _nice_max(max(values, default=0), 100)
    plot_w, plot_h = width - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(len(xs), 1)

    def x_of(i: int) -> float:
        return LEFT + slot * i + slot / 2

    def y_of(v: float) -> float:
        return TOP + plot_h - plot_h * v / ymax

    def fmt(v: float) -> str:
        return f"{v / 1000:.1f} s" if ymax >= 2000 else f"{v:.0f} ms"

    body = _axes(ymax, fmt, xs, step, x_of, width)
    for k, s in reversed(list(enumerate(series))):  # the first series on top, with the smallest dots
        run: list[str] = []
        for i, v in enumerate(s.values):
            if v is None:
                if len(run) > 1:
                    body.append(f'<polyline class="{escape(s.css)}" points="{" ".join(run)}"/>')
                run = []
                continue
            run.append(f"{x_of(i):.1f},{y_of(v):.1f}")
            body.append(f'<circle class="{escape(s.css)}" cx="{x_of(i):.1f}" cy="{y_of(v):.1f}" r="{2.5 + 1.5 * k}">'
                        f"<title>{escape(_label(xs[i], step))}: {escape(s.label)} {v:.0f} ms</title></circle>")
        if len(run) > 1:
            body.append(f'<polyline class="{escape(s.css)}" points="{" ".join(run)}"/>')
    if not values:
        body.append(f'<text class="empty" x="{width / 2}" y="{HEIGHT / 2}" text-anchor="middle">'
                    "no completed runs in this period</text>")
    return _svg(title, body, series, width)


def usage_charts(stats: dict, model: str | None = None, *, width: int = WIDTH) -> tuple[Markup, Markup, list[dict]]:
    """The requests chart, the latency chart and per-model totals for a `usage_stats` result."""
    xs = buckets(stats["since"], stats["until"], stats["bucket"])
    index = {at: i for i, at in enumerate(xs)}
    ok, fail, other = [0.0] * len(xs), [0.0] * len(xs), [0.0] * len(xs)
    p50: list[float | None] = [None] * len(xs)
    p95: list[float | None] = [None] * len(xs)
    weight = [0] * len(xs)
    totals: dict[str, dict] = {}
    for row in stats["rows"]:
        if model is not None and row["model"] != model:
            continue
        i = index.get(row["bucket"])
        if i is None:
            continue
        ok[i] += row["succeeded"]
        fail[i] += row["failed"]
        other[i] += row["requests"] - row["succeeded"] - row["failed"]
        # Several models in one bucket: show the request-weighted mean of their percentiles.
        if row["p50_ms"] is not None:
            w = row["succeeded"] or 1
            p50[i] = ((p50[i] or 0) * weight[i] + float(row["p50_ms"]) * w) / (weight[i] + w)
            p95[i] = ((p95[i] or 0) * weight[i] + float(row["p95_ms"]) * w) / (weight[i] + w)
            weight[i] += w
        t = totals.setdefault(row["model"], {"model": row["model"], "requests": 0, "succeeded": 0,
                                             "failed": 0, "p95_ms": None})
        t["requests"] += row["requests"]
        t["succeeded"] += row["succeeded"]
        t["failed"] += row["failed"]
        if row["p95_ms"] is not None:
            t["p95_ms"] = max(t["p95_ms"] or 0, float(row["p95_ms"]))
    step = stats["bucket"]
    per = "hour" if step == "hour" else "day"
    requests = bar_chart(f"Requests per {per}", xs, [
        Series("succeeded", ok, "s-ok"), Series("failed", fail, "s-fail"),
        Series("other", other, "s-other")], step, width=width)
    latency = line_chart(f"Run time per {per} (p50, p95)", xs, [
        Series("p50", p50, "s-p50"), Series("p95", p95, "s-p95")], step, width=width)
    return requests, latency, sorted(totals.values(), key=lambda t: -t["requests"])
