"""Line charts of training metrics as plain SVG (no JavaScript, no plotting library).

Used by the live monitor (inside an ``ipywidgets.HTML``), ``neural_jupyter.plot(run)`` and the sweep
monitor. SVG renders in JupyterLab, Notebook, Colab, VS Code and in saved notebooks alike.
Each panel has axis titles, a handful of "nice" ticks with gridlines, and labels that fit in
the margin; the SVG scales to the width of its cell.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
WIDTH, HEIGHT = 380, 230
LEFT, RIGHT, TOP, BOTTOM = 58, 12, 30, 40  # margins: tick labels + axis titles, legend on top
FONT = 10
GRID = "#e6e6e6"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round values (steps of 1, 2, 2.5 or 5 × 10^k) from a tick at or below
    ``low`` to one at or above ``high``: the axis runs from the first tick to the last."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high - low <= 0:
        return [low]
    magnitude = 10 ** math.floor(math.log10((high - low) / count))
    for step in (m * magnitude for m in (1, 2, 2.5, 5, 10, 20, 25, 50, 100)):
        first = math.floor(low / step + 1e-9)
        last = math.ceil(high / step - 1e-9)
        if last - first <= count:
            break
    return [0.0 if n == 0 else n * step for n in range(first, last + 1)]


def tick_labels(ticks: Sequence[float]) -> list[str]:
    """Labels as short as the axis allows: the decimals the step needs (``0.25``, ``0.50``),
    or exponent form for tiny or huge values (``2e-5``) so they fit the margin."""
    if not ticks:
        return []
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else abs(ticks[0]) or 1.0
    largest = max(abs(t) for t in ticks)
    if largest < 1e-3 or largest >= 1e5:
        labels = [_exponent(t) for t in ticks]
    else:
        decimals = 0
        while decimals < 8:
            scaled = step * 10**decimals
            if abs(scaled - round(scaled)) <= 1e-6 * scaled:
                break
            decimals += 1
        labels = [f"{t:.{decimals}f}" for t in ticks]
    if len(set(labels)) < len(labels):  # too few digits to tell the ticks apart
        labels = [f"{t:.3g}" for t in ticks]
    return labels


def _exponent(value: float) -> str:
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _groups(
    history: Sequence[dict[str, Any]], metrics: Sequence[str] | None, x: str
) -> list[list[str]]:
    names: list[str] = []
    for row in history:
        for key, value in row.items():
            if (
                key not in (x, "epoch", "lr")
                and isinstance(value, (int, float))
                and key not in names
            ):
                names.append(key)
    if metrics:
        names = [n for n in names if n in metrics or n.removeprefix("val_") in metrics]
    bases = list(dict.fromkeys(n.removeprefix("val_") for n in names))
    return [[n for n in (base, f"val_{base}") if n in names] for base in bases]


def _panel(
    history: Sequence[dict[str, Any]], series: list[str], x0: int, x: str, x_title: str
) -> str:
    points = {
        name: [
            (row[x], row[name])
            for row in history
            if isinstance(row.get(name), (int, float))
            and math.isfinite(row[name])
            and isinstance(row.get(x), (int, float))
        ]
        for name in series
    }
    values = [v for pts in points.values() for _, v in pts]
    xs = [e for pts in points.values() for e, _ in pts]
    if not values:
        return ""
    y_ticks = nice_ticks(min(values), max(values))
    if len(y_ticks) < 2 or max(values) - min(values) < 1e-12:
        centre = values[0]
        spread = abs(centre) * 0.05 or 0.5
        y_ticks = nice_ticks(centre - spread, centre + spread)
    low, high = y_ticks[0], y_ticks[-1]
    first, last = min(xs), max(xs)
    x_ticks = [t for t in nice_ticks(first, max(last, first + 1), 6) if t == int(t) and t >= first]
    x_ticks = [t for t in x_ticks if t <= last] or [first]
    x_high = max(last, first + 1)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(value: float) -> float:
        return round(x0 + LEFT + (value - first) / (x_high - first) * plot_w, 1)

    def sy(value: float) -> float:
        return round(TOP + (high - value) / ((high - low) or 1) * plot_h, 1)

    family = series[0].removeprefix("val_")
    parts = [
        f"<g class='panel' data-metric='{html.escape(family)}'>",
        f"<rect x='{x0 + LEFT}' y='{TOP}' width='{plot_w}' height='{plot_h}' "
        "fill='white' stroke='#bbb'/>",
    ]
    for tick, label in zip(y_ticks, tick_labels(y_ticks), strict=True):
        y = sy(tick)
        parts.append(
            f"<line class='grid' x1='{x0 + LEFT}' x2='{x0 + LEFT + plot_w}' y1='{y}' y2='{y}' "
            f"stroke='{GRID}'/>"
            f"<text class='ytick' x='{x0 + LEFT - 4}' y='{y + 3.5}' font-size='{FONT}' "
            f"text-anchor='end' fill='#444'>{label}</text>"
        )
    for tick in x_ticks:
        xp = sx(tick)
        parts.append(
            f"<line class='grid' x1='{xp}' x2='{xp}' y1='{TOP}' y2='{TOP + plot_h}' "
            f"stroke='{GRID}'/>"
            f"<text class='xtick' x='{xp}' y='{TOP + plot_h + 13}' font-size='{FONT}' "
            f"text-anchor='middle' fill='#444'>{int(tick)}</text>"
        )
    parts.append(
        f"<text class='xtitle' x='{x0 + LEFT + plot_w / 2}' y='{HEIGHT - 6}' "
        f"font-size='{FONT + 1}' text-anchor='middle'>{html.escape(x_title)}</text>"
        f"<text class='ytitle' transform='translate({x0 + 12},{TOP + plot_h / 2}) rotate(-90)' "
        f"font-size='{FONT + 1}' text-anchor='middle'>{html.escape(family)}</text>"
    )
    legend_x = x0 + LEFT
    for index, name in enumerate(series):
        pts = [(sx(e), sy(v)) for e, v in points[name]]
        color = PALETTE[index % len(PALETTE)]
        dash = " stroke-dasharray='5 3'" if name.startswith("val_") else ""
        if len(pts) > 1:
            path = " ".join(f"{px},{py}" for px, py in pts)
            parts.append(
                f"<polyline class='series' data-name='{html.escape(name)}' "
                f"points='{path}' fill='none' stroke='{color}' stroke-width='1.8'{dash}/>"
            )
        parts.extend(
            f"<circle class='point' cx='{px}' cy='{py}' r='2.2' fill='{color}'/>"
            for px, py in pts[-200:]
        )
        if points[name]:
            label = f"{name} {points[name][-1][1]:.4g}"
            parts.append(
                f"<line x1='{legend_x}' x2='{legend_x + 16}' y1='{TOP - 10}' y2='{TOP - 10}' "
                f"stroke='{color}' stroke-width='2'{dash}/>"
                f"<text class='legend' x='{legend_x + 20}' y='{TOP - 6}' font-size='{FONT}' "
                f"fill='{color}'>{html.escape(label)}</text>"
            )
            legend_x += 28 + 6 * len(label)
    parts.append("</g>")
    return "".join(parts)


def history_svg(
    history: Sequence[dict[str, Any]],
    metrics: Sequence[str] | None = None,
    title: str = "",
    x: str = "epoch",
    x_title: str | None = None,
) -> str:
    """An SVG with one panel per metric family (loss, accuracy...), train and validation,
    plotted against ``x`` (a key of each row; ``epoch`` for training histories)."""
    groups = _groups(history, metrics, x)
    if not history or not groups:
        return (
            "<svg class='neural-chart' width='320' height='30'><text x='4' y='18' "
            f"font-size='11' fill='#888'>waiting for the first {html.escape(x)}…</text></svg>"
        )
    width = WIDTH * len(groups)
    heading = f"<title>{html.escape(title)}</title>" if title else ""
    panels = "".join(
        _panel(history, group, WIDTH * i, x, x_title or x) for i, group in enumerate(groups)
    )
    return (
        f"<svg class='neural-chart' xmlns='http://www.w3.org/2000/svg' width='100%' "
        f"viewBox='0 0 {width} {HEIGHT}' preserveAspectRatio='xMinYMin meet' "
        f"style='max-width:{int(width * 1.5)}px;height:auto' font-family='sans-serif'>"
        f"{heading}{panels}</svg>"
    )


class Chart:
    """Displays as SVG in notebooks; ``.svg`` holds the markup."""

    def __init__(self, svg: str, description: str = "chart") -> None:
        self.svg = svg
        self.description = description

    def __repr__(self) -> str:
        return f"<Chart: {self.description}>"

    def _repr_svg_(self) -> str:
        return self.svg

    def _repr_html_(self) -> str:
        return self.svg

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.svg)


def history_chart(
    history: Sequence[dict[str, Any]], metrics: Sequence[str] | None = None, title: str = ""
) -> Chart:
    series = ", ".join(name for group in _groups(history, metrics, "epoch") for name in group)
    return Chart(
        history_svg(history, metrics, title), f"{series or 'no metrics'} over {len(history)} epochs"
    )
