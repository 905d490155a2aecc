"""Line charts of training metrics as plain SVG (no JavaScript, no plotting library).

Used by the live monitor (inside an ``ipywidgets.HTML``) and by ``TrainingRun.plot()``. SVG
renders in JupyterLab, Notebook, Colab, VS Code and in saved notebooks alike.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
WIDTH, HEIGHT, PAD = 320, 180, 34


def _groups(history: Sequence[dict[str, Any]], metrics: Sequence[str] | None) -> list[list[str]]:
    names: list[str] = []
    for row in history:
        for key, value in row.items():
            if key not in ("epoch", "lr") and isinstance(value, (int, float)) and key not in names:
                names.append(key)
    if metrics:
        names = [n for n in names if n in metrics or n.removeprefix("val_") in metrics]
    bases = list(dict.fromkeys(n.removeprefix("val_") for n in names))
    return [[n for n in (base, f"val_{base}") if n in names] for base in bases]


def _panel(history: Sequence[dict[str, Any]], series: list[str], x0: int) -> str:
    points = {
        name: [
            (row["epoch"], row[name])
            for row in history
            if isinstance(row.get(name), (int, float)) and math.isfinite(row[name])
        ]
        for name in series
    }
    values = [v for pts in points.values() for _, v in pts]
    epochs = [e for pts in points.values() for e, _ in pts]
    if not values:
        return ""
    low, high = min(values), max(values)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    first, last = min(epochs), max(epochs)
    span = max(last - first, 1)

    def xy(epoch: float, value: float) -> tuple[float, float]:
        x = x0 + PAD + (epoch - first) / span * (WIDTH - PAD - 10)
        y = 10 + (high - value) / (high - low) * (HEIGHT - PAD - 10)
        return round(x, 1), round(y, 1)

    parts = [
        f"<rect x='{x0 + PAD}' y='10' width='{WIDTH - PAD - 10}' "
        f"height='{HEIGHT - PAD - 10}' fill='none' stroke='#ccc'/>",
        f"<text x='{x0 + PAD - 3}' y='16' font-size='9' text-anchor='end'>{high:.3g}</text>",
        f"<text x='{x0 + PAD - 3}' y='{HEIGHT - PAD}' font-size='9' "
        f"text-anchor='end'>{low:.3g}</text>",
        f"<text x='{x0 + WIDTH // 2}' y='{HEIGHT - 8}' font-size='9' text-anchor='middle'>"
        f"epoch {first}–{last}</text>",
    ]
    for index, name in enumerate(series):
        pts = [xy(e, v) for e, v in points[name]]
        color = PALETTE[index % len(PALETTE)]
        dash = " stroke-dasharray='4 2'" if name.startswith("val_") else ""
        if len(pts) > 1:
            path = " ".join(f"{x},{y}" for x, y in pts)
            parts.append(
                f"<polyline class='series' data-name='{html.escape(name)}' "
                f"points='{path}' fill='none' stroke='{color}' stroke-width='1.5'{dash}/>"
            )
        parts.extend(
            f"<circle class='point' cx='{x}' cy='{y}' r='2' fill='{color}'/>" for x, y in pts[-200:]
        )
        parts.append(
            f"<text x='{x0 + PAD + 4 + 90 * index}' y='{HEIGHT - 20}' font-size='10' "
            f"fill='{color}'>{html.escape(name)} {points[name][-1][1]:.4g}</text>"
            if points[name]
            else ""
        )
    return "".join(parts)


def history_svg(
    history: Sequence[dict[str, Any]], metrics: Sequence[str] | None = None, title: str = ""
) -> str:
    """An SVG with one panel per metric family (loss, accuracy...), train and validation."""
    groups = _groups(history, metrics)
    if not history or not groups:
        return (
            "<svg class='neural-chart' width='320' height='30'><text x='4' y='18' "
            "font-size='11' fill='#888'>waiting for the first epoch…</text></svg>"
        )
    width = WIDTH * len(groups)
    heading = f"<title>{html.escape(title)}</title>" if title else ""
    panels = "".join(_panel(history, group, WIDTH * i) for i, group in enumerate(groups))
    return (
        f"<svg class='neural-chart' xmlns='http://www.w3.org/2000/svg' width='{width}' "
        f"height='{HEIGHT}' viewBox='0 0 {width} {HEIGHT}' font-family='sans-serif'>"
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
    series = ", ".join(name for group in _groups(history, metrics) for name in group)
    return Chart(
        history_svg(history, metrics, title), f"{series or 'no metrics'} over {len(history)} epochs"
    )
