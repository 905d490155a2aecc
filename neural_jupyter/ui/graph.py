"""The network as an SVG block diagram: one box per layer with its output shape and
parameter count; a Residual block is framed, with its skip connection drawn beside it."""

from __future__ import annotations

import html
from typing import Any

BOX_W, BOX_H, GAP, INDENT = 260, 38, 14, 26


def _shape(shape: list[int]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _box(x: int, y: int, title: str, detail: str, fill: str) -> str:
    return (
        f"<g class='layer'><rect x='{x}' y='{y}' width='{BOX_W}' height='{BOX_H}' rx='6' "
        f"fill='{fill}' stroke='#4a6fa5'/>"
        f"<text x='{x + 10}' y='{y + 16}' font-size='12' font-weight='bold'>"
        f"{html.escape(title)}</text>"
        f"<text x='{x + 10}' y='{y + 31}' font-size='11' fill='#333'>{html.escape(detail)}"
        "</text></g>"
    )


def _arrow(x: int, y1: int, y2: int) -> str:
    return (
        f"<line x1='{x}' y1='{y1}' x2='{x}' y2='{y2 - 4}' stroke='#777' marker-end='url(#arrow)'/>"
    )


def _layers(layers: list[dict[str, Any]], x: int, y: int, parts: list[str]) -> int:
    for layer in layers:
        if parts and parts[-1] != "":
            parts.append(_arrow(x + BOX_W // 2, y - GAP, y))
        detail = f"{layer['kind']} → {_shape(layer['output_shape'])}"
        if layer.get("params"):
            detail += f" · {layer['params']:,} params"
        if layer.get("children"):
            top = y
            parts.append(_box(x, y, layer["name"], detail, "#fff4e0"))
            y += BOX_H + GAP
            parts.append("")
            y = _layers(layer["children"], x + INDENT, y, parts)
            parts.append(
                f"<path d='M{x + 4},{top + BOX_H} L{x - 8},{top + BOX_H} L{x - 8},{y - GAP} "
                f"L{x + INDENT - 2},{y - GAP}' fill='none' stroke='#e67e22' "
                "stroke-dasharray='4 3' marker-end='url(#arrow)'/>"
            )
            parts.append(
                f"<text x='{x - 6}' y='{y - GAP - 4}' font-size='10' fill='#e67e22' "
                "text-anchor='end'>+</text>"
            )
            continue
        parts.append(_box(x, y, layer["name"], detail, "#eef3fb"))
        y += BOX_H + GAP
    return y


def graph_svg(summary: dict[str, Any]) -> str:
    """SVG markup for a ``spec_summary`` dictionary (see ``runtime.bundle.spec_summary``)."""
    parts: list[str] = []
    x, y = 30, 10
    parts.append(_box(x, y, "input", _shape(summary["input_shape"]), "#e8f6ea"))
    y += BOX_H + GAP
    y = _layers(summary["layers"], x, y, parts)
    height = y + 4
    width = BOX_W + 80
    title = html.escape(f"{summary['name']}: {summary.get('params', 0):,} trainable params")
    return (
        f"<svg class='neural-graph' xmlns='http://www.w3.org/2000/svg' width='{width}' "
        f"height='{height}' viewBox='0 0 {width} {height}' font-family='sans-serif'>"
        f"<title>{title}</title><defs><marker id='arrow' viewBox='0 0 10 10' refX='9' "
        "refY='5' markerWidth='6' markerHeight='6' orient='auto-start-reverse'>"
        "<path d='M 0 0 L 10 5 L 0 10 z' fill='#777'/></marker></defs>" + "".join(parts) + "</svg>"
    )
