"""Small server-rendered SVG bar charts: saved set vs working copy, per category."""

from __future__ import annotations

from html import escape

SAVED_COLOUR = "#9aa5b1"
EDITED_COLOUR = "#2f6fdb"


def _fmt(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if v == int(v):
        return f"{int(v)}"
    return f"{v:,.1f}"


def paired_bars(title: str, categories: list[str], saved: list[float], edited: list[float], *,
                width: int = 560, limit: int = 20) -> str:
    """Horizontal bars, two per category (saved, working copy), largest categories first."""
    rows = sorted(zip(categories, saved, edited, strict=True), key=lambda r: -max(r[1], r[2]))[:limit]
    label_w, value_w, bar_h, gap, top = 170, 60, 9, 8, 34
    plot_w = width - label_w - value_w
    top_value = max([max(s, e) for _, s, e in rows] + [1e-9])
    height = top + len(rows) * (2 * bar_h + gap) + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
             f'<text x="0" y="14" font-size="13" font-weight="600">{escape(title)}</text>',
             f'<rect x="{label_w}" y="20" width="10" height="8" fill="{SAVED_COLOUR}"/>'
             f'<text x="{label_w + 14}" y="28" font-size="11">saved</text>'
             f'<rect x="{label_w + 60}" y="20" width="10" height="8" fill="{EDITED_COLOUR}"/>'
             f'<text x="{label_w + 74}" y="28" font-size="11">working copy</text>']
    y = top
    for name, s, e in rows:
        label = name if len(name) <= 26 else name[:25] + "…"
        parts.append(f'<text x="{label_w - 6}" y="{y + bar_h + 4}" font-size="11" text-anchor="end">'
                     f'{escape(label)}</text>')
        for value, colour, dy in ((s, SAVED_COLOUR, 0), (e, EDITED_COLOUR, bar_h)):
            w = 0 if value <= 0 else max(1, round(plot_w * value / top_value))
            parts.append(f'<rect x="{label_w}" y="{y + dy}" width="{w}" height="{bar_h - 1}" fill="{colour}">'
                         f'<title>{escape(name)}: {_fmt(value)}</title></rect>')
            parts.append(f'<text x="{label_w + w + 4}" y="{y + dy + bar_h - 1}" font-size="9">{_fmt(value)}</text>')
        y += 2 * bar_h + gap
    parts.append("</svg>")
    return "".join(parts)
