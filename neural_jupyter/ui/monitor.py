"""Live job monitors: a widget (status, progress with ETA, metric chart, log tail, Cancel and
Detach) and a plain-text fallback with the same information.

Monitors never own job state: they read ``Job.progress`` (kept by the jobs layer) and are fed
each stream item only to keep a bounded tail of log lines. Redraws are coalesced to at most
``MAX_UPDATES_PER_SECOND``; widget changes go through traits only (safe from threads).
"""

from __future__ import annotations

import html
import os
import sys
import time
from collections import deque
from typing import Any, TextIO

from neural_jupyter.redaction import redact
from neural_jupyter.runtime.events import Event, LogLine
from neural_jupyter.ui.chart import history_svg

MAX_UPDATES_PER_SECOND = 10
LOG_LINES = 200
TEXT_BATCH_INTERVAL = 5.0

_BADGE = {
    "PENDING": "#888",
    "RUNNING": "#1f77b4",
    "SUCCEEDED": "#2ca02c",
    "FAILED": "#d62728",
    "CANCELLED": "#ff7f0e",
    "UNKNOWN": "#888",
    "DETACHED": "#9467bd",
}


def format_seconds(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "–"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_metrics(metrics: dict[str, Any]) -> str:
    return "  ".join(
        f"{k} {v:.4f}"
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and k not in ("epoch", "lr")
    )


class MonitorBase:
    """Shared bookkeeping: the log ring buffer, ETA, throttled redraws, button requests."""

    def __init__(self, job: Any) -> None:
        self.job = job
        self.log: deque[str] = deque(maxlen=LOG_LINES)
        self.cancel_requested = False
        self.detach_requested = False
        self.renders = 0
        self._last_render = 0.0
        self._dirty = False
        self._started = time.monotonic()
        self._first_batch_at: float | None = None
        self._batches_seen = 0
        self.state = "RUNNING"

    @property
    def progress(self):
        return self.job.progress

    def feed(self, item: Event | LogLine | None) -> None:
        if isinstance(item, LogLine):
            self.log.append(redact(item.text))
            self._dirty = True
        elif isinstance(item, Event):
            if item.kind == "batch":
                self._batches_seen += 1
                if self._first_batch_at is None:
                    self._first_batch_at = time.monotonic()
            self._dirty = True
            self.on_event(item)
        self.maybe_render()

    def on_event(self, event: Event) -> None:
        """Hook for monitors that react to particular events."""

    def eta(self) -> float | None:
        p = self.progress
        if not p.epochs or not p.batches or self._first_batch_at is None:
            return None
        done = (p.epoch * p.batches) + p.batch - (p.start.get("resumed_from") or 0) * p.batches
        total = p.epochs * p.batches - (p.start.get("resumed_from") or 0) * p.batches
        if done <= 0:
            return None
        elapsed = time.monotonic() - self._first_batch_at
        return elapsed / done * max(total - done, 0)

    def maybe_render(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or (self._dirty and now - self._last_render >= 1.0 / MAX_UPDATES_PER_SECOND):
            self._last_render = now
            self._dirty = False
            self.renders += 1
            self.render()

    def render(self) -> None:
        raise NotImplementedError

    def finish(self, state: str, message: str = "") -> None:
        self.state = state
        self.final_message = message
        self.maybe_render(force=True)


class TextMonitor(MonitorBase):
    """Concise progress lines for terminals, ``jupyter execute`` and nbconvert."""

    def __init__(self, job: Any, stream: TextIO | None = None) -> None:
        super().__init__(job)
        self.stream = stream or sys.stdout
        self._last_batch_line = 0.0
        self._announced = False

    def write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def feed(self, item: Event | LogLine | None) -> None:
        if isinstance(item, LogLine) and item.stream == "stderr" and item.text.strip():
            self.write(f"  | {redact(item.text)}")
        super().feed(item)

    def on_event(self, event: Event) -> None:
        p = self.progress
        if event.kind == "start":
            data = event.data
            resumed = (
                f", resumed after epoch {data['resumed_from']}" if data.get("resumed_from") else ""
            )
            self.write(
                f"[{self.job.id}] {data.get('model') or self.job.name} on "
                f"{self.job.record.backend} ({data.get('device_name', '?')}): "
                f"{data.get('train_samples', '?')} training / {data.get('val_samples', 0)} "
                f"validation samples, {data.get('params', 0):,} params{resumed}"
            )
        elif event.kind == "epoch":
            self.write(
                f"epoch {p.epoch}/{p.epochs}  {format_metrics(event.get('metrics', {}))}"
                f"  ({event.get('duration', 0):.2f} s, ETA {format_seconds(self.eta())})"
            )
        elif event.kind == "batch":
            now = time.monotonic()
            if now - self._last_batch_line > TEXT_BATCH_INTERVAL and now - self._started > 2:
                self._last_batch_line = now
                self.write(
                    f"  epoch {p.epoch + 1}/{p.epochs} batch {p.batch}/{p.batches} "
                    f"loss {p.batch_loss:.4f}"
                )
        elif event.kind == "status" and event.get("message"):
            self.write(f"  · {redact(str(event.get('message')))}")
        elif event.kind == "error":
            self.write(
                f"error: {redact(str(event.get('type')))}: {redact(str(event.get('message')))}"
            )

    def render(self) -> None:
        """Text output is written as events arrive; nothing to redraw."""

    def finish(self, state: str, message: str = "") -> None:
        super().finish(state, message)
        p = self.progress
        if state == "SUCCEEDED":
            best = p.done.get("best_epoch") if p.done else None
            wall = p.done.get("wall_time") if p.done else None
            self.write(
                f"[{self.job.id}] finished in {format_seconds(wall)}"
                f"{f', best epoch {best}' if best else ''}: {format_metrics(p.metrics)}"
            )
        else:
            self.write(f"[{self.job.id}] {state.lower()}{': ' + message if message else ''}")


class WidgetMonitor(MonitorBase):
    """The JobMonitor widget (ipywidgets)."""

    def __init__(self, job: Any, on_cancel=None) -> None:
        super().__init__(job)
        import ipywidgets as w

        self.header = w.HTML()
        self.epoch_bar = w.IntProgress(
            min=0, max=1, value=0, description="epochs", layout=w.Layout(width="60%")
        )
        self.batch_bar = w.IntProgress(
            min=0, max=1, value=0, description="batches", layout=w.Layout(width="60%")
        )
        self.progress_text = w.HTML()
        self.chart = w.HTML()
        self.log_view = w.HTML()
        self.summary = w.HTML()
        self.cancel_button = w.Button(
            description="Cancel",
            button_style="danger",
            icon="stop",
            tooltip="Stop the job for good",
        )
        self.detach_button = w.Button(
            description="Detach", icon="eject", tooltip="Stop watching; the job keeps running"
        )
        self.cancel_button.on_click(self._on_cancel)
        self.detach_button.on_click(self._on_detach)
        self._external_cancel = on_cancel
        self._charted = -1
        buttons = w.HBox([self.cancel_button, self.detach_button])
        self.widget = w.VBox(
            [
                self.header,
                w.HBox([self.epoch_bar, self.progress_text]),
                self.batch_bar,
                self.chart,
                self.log_view,
                buttons,
                self.summary,
            ],
            layout=w.Layout(border="1px solid #ddd", padding="6px"),
        )
        self.widget.add_class("neural-job-monitor")
        self.render()

    def _on_cancel(self, _button: Any) -> None:
        self.cancel_requested = True
        self.cancel_button.disabled = True
        self.cancel_button.description = "Cancelling…"
        if self._external_cancel is not None:
            self._external_cancel()

    def _on_detach(self, _button: Any) -> None:
        self.detach_requested = True

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def render(self) -> None:
        p = self.progress
        state = self.state
        color = _BADGE.get(state, "#888")
        device = p.start.get("device_name", "")
        self.header.value = (
            f"<span style='background:{color};color:white;border-radius:3px;padding:1px 6px'>"
            f"{state}</span> <b>{html.escape(self.job.name)}</b> "
            f"<code>{self.job.id}</code> on {html.escape(self.job.record.backend)}"
            f"{' · ' + html.escape(device) if device else ''}"
        )
        if p.epochs:
            self.epoch_bar.max = p.epochs
            self.epoch_bar.value = min(p.epoch, p.epochs)
        if p.batches:
            self.batch_bar.max = p.batches
            self.batch_bar.value = min(p.batch, p.batches)
        loss = f" · loss {p.batch_loss:.4f}" if p.batch_loss is not None else ""
        self.progress_text.value = (
            f"epoch {p.epoch}/{p.epochs or '?'} · batch {p.batch}/{p.batches or '?'}{loss}"
            f" · ETA {format_seconds(self.eta())}"
        )
        if len(p.history) != self._charted:  # the chart changes only with a new epoch
            self._charted = len(p.history)
            self.chart.value = history_svg(p.history, title=self.job.name)
        lines = "\n".join(html.escape(line) for line in list(self.log)[-12:])
        self.log_view.value = (
            "<pre class='neural-log' style='max-height:14em;overflow:auto;font-size:11px;"
            f"margin:0'>{lines}</pre>"
        )
        if state == "SUCCEEDED":
            self.epoch_bar.value = self.epoch_bar.max
            self.batch_bar.value = self.batch_bar.max
        if state != "RUNNING":
            self.cancel_button.disabled = True
            self.detach_button.disabled = True
            self.summary.value = self._summary_html()

    def _summary_html(self) -> str:
        p = self.progress
        message = html.escape(getattr(self, "final_message", "") or "")
        if self.state != "SUCCEEDED":
            return f"<b>{self.state.lower()}</b> {message}"
        done = p.done or {}
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>"
            for k, v in p.metrics.items()
            if isinstance(v, (int, float)) and k != "lr"
        )
        artifacts = ", ".join(html.escape(name) for name in p.artifacts)
        return (
            f"<div class='neural-summary'><b>finished</b> in "
            f"{format_seconds(done.get('wall_time'))}; best epoch {done.get('best_epoch')}"
            f"{' (stopped early)' if done.get('stopped_early') else ''}; artifacts: "
            f"{artifacts}<table>{rows}</table></div>"
        )


def widget_frontend() -> bool:
    """Whether to draw widgets: in a Jupyter kernel with ipywidgets installed.

    ``NEURAL_JUPYTER_MONITOR=text`` (or ``widget``) forces the choice.
    """
    forced = os.environ.get("NEURAL_JUPYTER_MONITOR", "").lower()
    if forced in ("text", "widget"):
        return forced == "widget"
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        return False
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def make_monitor(job: Any, mode: str = "auto", stream: TextIO | None = None) -> MonitorBase:
    """A widget monitor where a widget front-end is likely, a text monitor otherwise."""
    if mode == "widget" or (mode == "auto" and widget_frontend()):
        return WidgetMonitor(job)
    return TextMonitor(job, stream)
