"""Live sweep display: a trials table, the best-so-far curve and params-vs-metric scatter
plots (widget), or one text line per finished trial."""

from __future__ import annotations

import html
import sys
import threading
import time
from typing import Any, TextIO

from neural_jupyter.ui.chart import PALETTE, history_svg, nice_ticks, tick_labels

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
        f"<th>{html.escape(h)}</th>"
        for h in ("trial", *params, "seed", "status", metric, "time", "job")
    )
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(_cell(v))}</td>"
            for v in (
                t.index + 1,  # counted from 1, as the best-so-far chart counts them
                *(t.params.get(p) for p in params),
                t.seed,
                t.status + (" (reused)" if t.reused else ""),
                t.metric,
                None if t.duration is None else f"{t.duration:.1f} s",
                t.job_id,
            )
        )
        + "</tr>"
        for t in trials
    )
    return f"<table class='neural-trials'><tr>{head}</tr>{body}</table>"


def best_so_far(trials: list[Any], mode: str, metric: str = "metric") -> list[dict[str, Any]]:
    """The best ``metric`` after each finished trial, counted 1, 2, 3... (``trial``)."""
    rows, best = [], None
    done = [t for t in trials if t.metric is not None and t.status == "SUCCEEDED"]
    for number, trial in enumerate(sorted(done, key=lambda t: t.index), start=1):
        if best is None or (trial.metric > best if mode == "max" else trial.metric < best):
            best = trial.metric
        rows.append({"trial": number, f"best {metric}": best})
    return rows


def best_so_far_svg(trials: list[Any], mode: str, metric: str) -> str:
    return history_svg(
        best_so_far(trials, mode, metric), title=f"best {metric}", x="trial", x_title="trial"
    )


def scatter_svg(trials: list[Any], metric: str) -> str:
    """One small scatter per numeric parameter: parameter value (x) against the metric (y),
    with tick values and axis titles."""
    done = [t for t in trials if t.metric is not None]
    numeric = [
        p
        for p in (done[0].params if done else {})
        if all(isinstance(t.params.get(p), (int, float)) for t in done)
    ]
    if not done or not numeric:
        return ""
    width, height = 260, 220
    left, right, top, bottom = 54, 22, 10, 40  # room for the last x label ("0.010")
    plot_w, plot_h = width - left - right, height - top - bottom
    ys = [float(t.metric) for t in done]
    y_ticks = _axis_ticks(ys)
    parts = []
    for index, param in enumerate(numeric):
        xs = [float(t.params[param]) for t in done]
        x_ticks = _axis_ticks(xs)
        x0 = index * width

        def sx(v: float, ticks: list[float] = x_ticks, x0: int = x0) -> float:
            return x0 + left + (v - ticks[0]) / ((ticks[-1] - ticks[0]) or 1) * plot_w

        def sy(v: float) -> float:
            return top + (y_ticks[-1] - v) / ((y_ticks[-1] - y_ticks[0]) or 1) * plot_h

        parts.append(
            f"<rect x='{x0 + left}' y='{top}' width='{plot_w}' height='{plot_h}' fill='white' "
            "stroke='#bbb'/>"
        )
        for tick, label in zip(y_ticks, tick_labels(y_ticks), strict=True):
            parts.append(
                f"<line x1='{x0 + left}' x2='{x0 + left + plot_w}' y1='{sy(tick):.1f}' "
                f"y2='{sy(tick):.1f}' stroke='#eee'/><text class='ytick' x='{x0 + left - 4}' "
                f"y='{sy(tick) + 3.5:.1f}' font-size='11' text-anchor='end'>{label}</text>"
            )
        for tick, label in zip(x_ticks, tick_labels(x_ticks), strict=True):
            parts.append(
                f"<line x1='{sx(tick):.1f}' x2='{sx(tick):.1f}' y1='{top}' y2='{top + plot_h}' "
                f"stroke='#eee'/><text class='xtick' x='{sx(tick):.1f}' y='{top + plot_h + 13}' "
                f"font-size='11' text-anchor='middle'>{label}</text>"
            )
        for x, y in zip(xs, ys, strict=True):
            parts.append(
                f"<circle class='point' cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='3.5' "
                f"fill='{PALETTE[index % len(PALETTE)]}' fill-opacity='0.75'/>"
            )
        parts.append(
            f"<text class='xtitle' x='{x0 + left + plot_w / 2}' y='{height - 6}' font-size='12' "
            f"text-anchor='middle'>{html.escape(param)}</text>"
            f"<text class='ytitle' transform='translate({x0 + 12},{top + plot_h / 2}) "
            f"rotate(-90)' font-size='12' text-anchor='middle'>{html.escape(metric)}</text>"
        )
    total = len(numeric) * width
    return (
        f"<svg class='neural-scatter' xmlns='http://www.w3.org/2000/svg' width='{total}' "
        f"height='{height}' viewBox='0 0 {total} {height}' font-family='sans-serif'>"
        f"<title>{html.escape(metric)} against each parameter</title>" + "".join(parts) + "</svg>"
    )


def _axis_ticks(values: list[float]) -> list[float]:
    low, high = min(values), max(values)
    if high - low < 1e-12:
        spread = abs(low) * 0.1 or 1.0
        low, high = low - spread, high + spread
    ticks = nice_ticks(low, high, 4)
    return ticks if len(ticks) > 1 else [low, high]


def results_html(result: Any, include_trials: bool = True) -> str:
    """The sweep's best result and summary; the trials table too unless a live sweep monitor
    above already shows it."""
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
    trials = trials_html(result.trials, result.metric) if include_trials else ""
    return f"<div class='neural-sweep-result'>{head}{summary}{trials}</div>"


class SweepResultView:
    """Displays a ``SweepResult`` (HTML in notebooks, its repr elsewhere)."""

    def __init__(self, result: Any, include_trials: bool = True) -> None:
        self.result = result
        self.include_trials = include_trials

    def _repr_html_(self) -> str:
        return results_html(self.result, self.include_trials)

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
        self.best.layout = w.Layout(flex="1 1 45%", min_width="320px")
        self.scatter.layout = w.Layout(flex="1 1 55%")
        self.widget = w.VBox(
            [
                self.header,
                w.HBox([self.best, self.scatter], layout=w.Layout(flex_flow="row wrap")),
                self.table,
            ]
        )
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
            self.best.value = best_so_far_svg(trials, sweep.mode, sweep.metric)
            self.scatter.value = scatter_svg(trials, sweep.metric)
            self.table.value = trials_html(trials, sweep.metric)
