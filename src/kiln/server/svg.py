"""Line charts as SVG text, drawn on the server (no JavaScript): one line per series (a release),
time on x, a value on y with its unit. Pure."""

from __future__ import annotations

from html import escape

COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563")


def _nice(top: float) -> float:
    """A round upper bound at or above `top` (1, 2, 5 × 10^n)."""
    if top <= 0:
        return 1.0
    scale = 1.0
    while scale * 10 <= top:
        scale *= 10
    while scale > top:
        scale /= 10
    for step in (1, 2, 5, 10):
        if step * scale >= top:
            return step * scale
    return 10 * scale


def _ago(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def line_chart(title: str, unit: str, series: dict[str, list[tuple[float, float]]], start: float, end: float,
               width: int = 360, height: int = 140) -> str:
    """`series`: label -> [(t, value)] with t in seconds (same clock as start/end)."""
    left, right, top, bottom = 44, 8, 18, 18
    w, h = width - left - right, height - top - bottom
    ymax = _nice(max((v for points in series.values() for _, v in points), default=0.0))
    span = max(end - start, 1e-9)

    def x(t: float) -> float:
        return left + (min(max(t, start), end) - start) / span * w

    def y(v: float) -> float:
        return top + h - (v / ymax) * h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
             f'<text x="{left}" y="12" class="t">{escape(title)} ({escape(unit)})</text>',
             f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" class="axis"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + h}" class="axis"/>',
             f'<text x="{left - 4}" y="{top + 4}" class="l" text-anchor="end">{ymax:g}</text>',
             f'<text x="{left - 4}" y="{top + h}" class="l" text-anchor="end">0</text>',
             f'<text x="{left}" y="{height - 4}" class="l">-{_ago(end - start)}</text>',
             f'<text x="{left + w}" y="{height - 4}" class="l" text-anchor="end">now</text>']
    for i, (label, points) in enumerate(sorted(series.items())):
        colour = COLOURS[i % len(COLOURS)]
        if points:
            path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in sorted(points))
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>')
            if len(points) <= 60:  # few samples: each one seen
                parts += [f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="2" fill="{colour}"/>' for t, v in points]
        parts.append(f'<text x="{left + 6 + 52 * i}" y="{top + 10}" fill="{colour}" class="l">{escape(label)}</text>')
    if not series:
        parts.append(f'<text x="{left + w / 2}" y="{top + h / 2}" class="l" text-anchor="middle">no samples yet</text>')
    parts.append("</svg>")
    return "".join(parts)
