"""Server-rendered SVG charts for the finance pages: no JavaScript, no image library."""

from __future__ import annotations

import math
from html import escape

from kit.money import MICROS

COLORS = {"platform": "#3559e0", "royalty": "#e0a235", "partner": "#2f9e6e", "refunds": "#c94f4f"}


def money(micros: float) -> str:
    """Compact dollars for axis labels: $1.2k, $3.4M."""
    dollars = micros / MICROS
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(dollars) >= div:
            return f"${dollars / div:.1f}{suffix}"
    return f"${dollars:.2f}" if abs(dollars) < 10 else f"${dollars:.0f}"


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exp:
            return step * exp
    return 10 * exp


def stacked_bars(labels: list[str], series: list[tuple[str, list[int]]], *, title: str,
                 width: int = 760, height: int = 300) -> str:
    """Stacked bars per label (e.g. each period's revenue split), with axis, legend and tooltips."""
    left, right, top, bottom = 64, 16, 36, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(max(values[i], 0) for _, values in series) for i in range(len(labels))]
    top_value = _nice_max(max(totals, default=0))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" aria-label="{escape(title)}" font-family="system-ui, sans-serif" '
             f'font-size="11">', f'<text x="{left}" y="20" font-size="14" font-weight="600">{escape(title)}</text>']
    for i in range(5):
        value = top_value * i / 4
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e6ec"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{money(value)}</text>')
    slot = plot_w / max(len(labels), 1)
    bar_w = max(4.0, slot * 0.6)
    for i, label in enumerate(labels):
        x = left + slot * i + (slot - bar_w) / 2
        y = top + plot_h
        for name, values in series:
            v = max(values[i], 0)
            h = plot_h * v / top_value
            y -= h
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                         f'fill="{COLORS.get(name, "#888")}"><title>{escape(label)} {escape(name)}: '
                         f'{money(v)}</title></rect>')
        parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
                     f'fill="#333">{escape(label)}</text>')
    x = left
    for name, _ in series:
        parts.append(f'<rect x="{x}" y="{height - 16}" width="10" height="10" fill="{COLORS.get(name, "#888")}"/>'
                     f'<text x="{x + 14}" y="{height - 7}">{escape(name)}</text>')
        x += 20 + 7 * len(name) + 16
    parts.append("</svg>")
    return "".join(parts)


def donut(parts_in: list[tuple[str, int]], *, title: str, size: int = 300) -> str:
    """A donut of how a period's revenue was shared (each part's share of the whole)."""
    parts_in = [(n, v) for n, v in parts_in if v > 0]
    total = sum(v for _, v in parts_in)
    cx = cy = size / 2
    r_out, r_in = size * 0.36, size * 0.22
    width = size + 220
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {size}" width="{width}" height="{size}" '
           f'role="img" aria-label="{escape(title)}" font-family="system-ui, sans-serif" font-size="12">',
           f'<text x="12" y="20" font-size="14" font-weight="600">{escape(title)}</text>']
    if total <= 0:
        out.append(f'<circle cx="{cx}" cy="{cy}" r="{r_out}" fill="none" stroke="#e3e6ec" stroke-width="{r_out - r_in}"/>'
                   f'<text x="{cx}" y="{cy + 4}" text-anchor="middle" fill="#777">no revenue</text></svg>')
        return "".join(out)
    angle = -math.pi / 2
    for name, value in parts_in:
        sweep = 2 * math.pi * value / total
        color = COLORS.get(name, "#888")
        if sweep >= 2 * math.pi - 1e-9:
            out.append(f'<circle class="slice" cx="{cx}" cy="{cy}" r="{(r_out + r_in) / 2}" fill="none" '
                       f'stroke="{color}" stroke-width="{r_out - r_in}"><title>{escape(name)}: 100%</title></circle>')
            break
        a2 = angle + sweep
        large = 1 if sweep > math.pi else 0
        p = [(cx + r_out * math.cos(angle), cy + r_out * math.sin(angle)),
             (cx + r_out * math.cos(a2), cy + r_out * math.sin(a2)),
             (cx + r_in * math.cos(a2), cy + r_in * math.sin(a2)),
             (cx + r_in * math.cos(angle), cy + r_in * math.sin(angle))]
        out.append(f'<path class="slice" d="M{p[0][0]:.2f},{p[0][1]:.2f} A{r_out},{r_out} 0 {large} 1 '
                   f'{p[1][0]:.2f},{p[1][1]:.2f} L{p[2][0]:.2f},{p[2][1]:.2f} A{r_in},{r_in} 0 {large} 0 '
                   f'{p[3][0]:.2f},{p[3][1]:.2f} Z" fill="{color}"><title>{escape(name)}: '
                   f'{100 * value / total:.1f}%</title></path>')
        angle = a2
    out.append(f'<text x="{cx}" y="{cy + 5}" text-anchor="middle" font-size="15" font-weight="600">'
               f'{money(total)}</text>')
    y = 56
    for name, value in parts_in:
        out.append(f'<rect x="{size + 10}" y="{y - 10}" width="12" height="12" fill="{COLORS.get(name, "#888")}"/>'
                   f'<text x="{size + 28}" y="{y}">{escape(name)} {money(value)} ({100 * value / total:.1f}%)</text>')
        y += 22
    out.append("</svg>")
    return "".join(out)
