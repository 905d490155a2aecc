"""Live sweep display: a trials table, the best-so-far curve and params-vs-metric scatter
plots (widget), or one text line per finished trial."""

from __future__ import annotations

import html
import sys
import threading
import time
from typing import Any, TextIO

from neural_jupyter.ui.chart import PALETTE, history_svg

MAX_UPDATES_PER_SECOND = 4


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "–" if value is None else str(value)


def trials_html(trials: list[Any], metric: str) -> str:
    if not trials:
        return "<i>no trials yet</i>"
    params = list(trials[0].params)
    head = "".join(
        f"<th>{html.escape(h)}</th>" for h in ("#", *params, "seed", "status", metric, "s", "job")
    )
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(_cell(v))}</td>"
            for v in (
                t.index,
                *(t.params.get(p) for p in params),
                t.seed,
                t.status + (" (reused)" if t.reused else ""),
                t.metric,
                t.duration,
                t.job_id,
            )
        )
        + "</tr>"
        for t in trials
    )
    return f"<table class='neural-trials'><tr>{head}</tr>{body}</table>"


def best_so_far(trials: list[Any], mode: str) -> list[dict[str, Any]]:
    rows, best = [], None
    done = [t for t in trials if t.metric is not None and t.status == "SUCCEEDED"]
    for number, trial in enumerate(sorted(done, key=lambda t: t.index), start=1):
        if best is None or (trial.metric > best if mode == "max" else trial.metric < best):
            best = trial.metric
        rows.append({"epoch": number, "best": best})
    return rows


def scatter_svg(trials: list[Any], metric: str) -> str:
    """One small scatter per numeric parameter: parameter value vs the metric."""
    done = [t for t in trials if t.metric is not None]
    numeric = [
        p
        for p in (done[0].params if done else {})
        if all(isinstance(t.params.get(p), (int, float)) for t in done)
    ]
    if not done or not numeric:
        return ""
    size, pad, parts = 160, 24, []
    ys = [t.metric for t in done]
    y_low, y_high = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    for index, param in enumerate(numeric):
        xs = [float(t.params[param]) for t in done]
        x_low, x_high = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        x0 = index * (size + 10)
        parts.append(
            f"<g transform='translate({x0},0)'><rect x='{pad}' y='4' "
            f"width='{size - pad - 4}' height='{size - pad - 4}' fill='none' "
            "stroke='#ccc'/>"
        )
        for x, y in zip(xs, ys, strict=True):
            cx = pad + (x - x_low) / (x_high - x_low) * (size - pad - 8) + 2
            cy = 6 + (y_high - y) / (y_high - y_low) * (size - pad - 12)
            parts.append(
                f"<circle class='point' cx='{cx:.1f}' cy='{cy:.1f}' r='3' "
                f"fill='{PALETTE[index % len(PALETTE)]}' fill-opacity='0.7'/>"
            )
        parts.append(
            f"<text x='{size // 2}' y='{size - 6}' font-size='10' "
            f"text-anchor='middle'>{html.escape(param)}</text></g>"
        )
    width = len(numeric) * (size + 10)
    return (
        f"<svg class='neural-scatter' width='{width}' height='{size}' "
        f"font-family='sans-serif'><title>{html.escape(metric)}</title>" + "".join(parts) + "</svg>"
    )


def results_html(result: Any) -> str:
    best = result.best
    head = (
        f"<b>{html.escape(result.id)}</b>: best {html.escape(result.metric)} "
        f"{_cell(best.metric)} with {html.escape(str(best.params))}"
        if best
        else f"<b>{html.escape(result.id)}</b>: no successful trial"
    )
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row.values()) + "</tr>"
        for row in result.summary()
    )
    summary = (
        (
            "<table class='neural-sweep-summary'><tr>"
            + "".join(f"<th>{html.escape(k)}</th>" for k in result.summary()[0])
            + "</tr>"
            + rows
            + "</table>"
        )
        if result.summary()
        else ""
    )
    return f"<div>{head}{summary}{trials_html(result.trials, result.metric)}</div>"


class SweepResultView:
    """Displays a ``SweepResult`` (HTML in notebooks, its repr elsewhere)."""

    def __init__(self, result: Any) -> None:
        self.result = result

    def _repr_html_(self) -> str:
        return results_html(self.result)

    def __repr__(self) -> str:
        return repr(self.result)


class TextSweepMonitor:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def __call__(self, sweep: Any, trial: Any) -> None:
        if trial.status in ("QUEUED", "RUNNING"):
            return
        metric = f"{sweep.metric}={trial.metric:.4g}" if trial.metric is not None else ""
        reused = " (reused)" if trial.reused else ""
        self.stream.write(
            f"[{sweep.id}] trial {trial.index} {trial.params} seed {trial.seed}: "
            f"{trial.status}{reused} {metric}\n"
        )
        self.stream.flush()


class WidgetSweepMonitor:
    """Updated from trial threads through widget traits, at most a few times a second."""

    def __init__(self) -> None:
        import ipywidgets as w

        self.header = w.HTML()
        self.best = w.HTML()
        self.scatter = w.HTML()
        self.table = w.HTML()
        self.widget = w.VBox([self.header, w.HBox([self.best, self.scatter]), self.table])
        self.widget.add_class("neural-sweep-monitor")
        self._last = 0.0
        self._lock = threading.Lock()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def __call__(self, sweep: Any, trial: Any) -> None:
        now = time.monotonic()
        finished = trial.status not in ("QUEUED", "RUNNING")
        if not finished and now - self._last < 1.0 / MAX_UPDATES_PER_SECOND:
            return
        with self._lock:
            self._last = now
            trials = list(sweep.trials)
            counts: dict[str, int] = {}
            for item in trials:
                counts[item.status] = counts.get(item.status, 0) + 1
            self.header.value = f"<b>{html.escape(sweep.id)}</b> " + " · ".join(
                f"{k.lower()} {v}" for k, v in counts.items()
            )
            self.best.value = history_svg(
                best_so_far(trials, sweep.mode), title=f"best {sweep.metric}"
            )
            self.scatter.value = scatter_svg(trials, sweep.metric)
            self.table.value = trials_html(trials, sweep.metric)
