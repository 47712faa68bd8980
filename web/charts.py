"""Small bar charts drawn on the server as inline SVG: no script, no front-end build."""

from __future__ import annotations

from markupsafe import Markup, escape

WIDTH, HEIGHT = 600, 110  # drawing units; the page scales the chart to its column
TOP, BOTTOM = 14, 18  # room for the maximum's label above and the time axis below


def bars(values: list[int], color: str, label: str, tips: list[str]) -> Markup:
    """One bar per value, scaled to the largest; ``tips`` are the bars' hover titles."""
    peak = max(values, default=0)
    plot = HEIGHT - TOP - BOTTOM
    step = WIDTH / max(len(values), 1)
    rects = []
    for n, (value, tip) in enumerate(zip(values, tips, strict=True)):
        height = 0 if peak == 0 else max(1.0, plot * value / peak) if value else 0
        rects.append(
            f'<rect x="{n * step + 1:.1f}" y="{TOP + plot - height:.1f}" '
            f'width="{max(step - 2, 1):.1f}" height="{height:.1f}" fill="{escape(color)}">'
            f"<title>{escape(tip)}: {value}</title></rect>"
        )
    axis = TOP + plot
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
        f'<line x1="0" y1="{axis}" x2="{WIDTH}" y2="{axis}" stroke="#999" stroke-width="1"/>'
        f'<text x="0" y="10" font-size="10" fill="#555">max {peak}/min</text>'
        f'<text x="0" y="{HEIGHT - 4}" font-size="10" fill="#555">-60 min</text>'
        f'<text x="{WIDTH}" y="{HEIGHT - 4}" font-size="10" fill="#555" '
        f'text-anchor="end">now</text>'
        f"{''.join(rects)}</svg>"
    )
