"""Live job monitors: a widget (status, progress with ETA, metric chart, a collapsible log,
Cancel and Detach) and a plain-text fallback with the same information.

Monitors never own job state: they read ``Job.progress`` (kept by the jobs layer) and are fed
each stream item only to keep a bounded tail of log lines. Redraws are coalesced to at most
``MAX_UPDATES_PER_SECOND``; widget changes go through traits only (safe from threads).
"""

from __future__ import annotations

import html
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO

from neural_jupyter.redaction import redact
from neural_jupyter.runtime.events import Event, LogLine
from neural_jupyter.ui.chart import history_svg
from neural_jupyter.ui.text import event_text, format_duration, format_metrics, format_seconds

__all__ = [
    "LOG_LINES",
    "MonitorBase",
    "TextMonitor",
    "WidgetMonitor",
    "format_metrics",
    "format_seconds",
    "make_monitor",
    "widget_frontend",
]

MAX_UPDATES_PER_SECOND = 10
LOG_LINES = 200
LOG_SHOWN = 40  # lines in the widget's log panel (it scrolls)
TEXT_BATCH_INTERVAL = 5.0
ETA_BLEND = 0.3  # weight of a new epoch time against the running average
ETA_SETTLE_SECONDS = 2.0  # the shown ETA follows a new estimate with this time constant

_BADGE = {
    "PENDING": "#888",
    "RUNNING": "#1f77b4",
    "SUCCEEDED": "#2ca02c",
    "FAILED": "#d62728",
    "CANCELLED": "#ff7f0e",
    "UNKNOWN": "#888",
    "DETACHED": "#9467bd",
}


class MonitorBase:
    """Shared bookkeeping: the log ring buffer, ETA, throttled redraws, button requests."""

    def __init__(self, job: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.job = job
        self.clock = clock
        self.log: deque[str] = deque(maxlen=LOG_LINES)
        self.cancel_requested = False
        self.detach_requested = False
        self.renders = 0
        self._last_render = 0.0
        self._dirty = False
        self._started = clock()
        self._first_batch_at: float | None = None
        self._batches_seen = 0
        self._epoch_seconds: float | None = None
        self._epoch_began: float | None = None
        self._eta: float | None = None
        self._eta_at: float | None = None
        self.state = "RUNNING"
        self.final_message = ""

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
                    self._first_batch_at = self.clock()
            elif item.kind == "epoch":
                self._epoch_began = self.clock()
                seconds = item.get("duration")
                if isinstance(seconds, (int, float)) and seconds > 0:
                    previous = self._epoch_seconds
                    self._epoch_seconds = (
                        seconds if previous is None else previous + ETA_BLEND * (seconds - previous)
                    )
            self._dirty = True
            self.on_event(item)
        self.maybe_render()

    def on_event(self, event: Event) -> None:
        """Hook for monitors that react to particular events."""

    def _estimate(self) -> float | None:
        """Seconds left from the pace so far: the epoch time (validation included) once an
        epoch has finished, the batch pace before that."""
        p = self.progress
        if not p.epochs or not p.batches:
            return None
        resumed = p.start.get("resumed_from") or 0
        if self._epoch_seconds is not None and self._epoch_began is not None:
            whole = max(p.epochs - p.epoch - 1, 0)
            current = max(self._epoch_seconds - (self.clock() - self._epoch_began), 0.0)
            return whole * self._epoch_seconds + (current if p.epoch < p.epochs else 0.0)
        fraction = min(p.batch / p.batches, 1.0)
        epochs_left = max(p.epochs - p.epoch - fraction, 0.0)
        if self._first_batch_at is None:
            return None
        done = (p.epoch - resumed) * p.batches + p.batch - 1  # counted from the first batch
        if done <= 0:
            return None
        per_batch = (self.clock() - self._first_batch_at) / done
        return epochs_left * p.batches * per_batch

    def eta(self) -> float | None:
        """A smoothed ETA: it counts down with the clock and follows a changed estimate over
        a couple of seconds, so it does not jump when an epoch's validation pass pauses the
        batches."""
        estimate = self._estimate()
        now = self.clock()
        if estimate is None:
            return self._eta
        if self._eta is None or self._eta_at is None:
            self._eta = estimate
        else:
            elapsed = max(now - self._eta_at, 0.0)
            counted_down = max(self._eta - elapsed, 0.0)
            weight = 1.0 - math.exp(-elapsed / ETA_SETTLE_SECONDS)
            self._eta = counted_down + weight * (estimate - counted_down)
        self._eta_at = now
        return self._eta

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
        if event.kind == "start" and event.get("runner"):
            data = event.data
            self.write(
                f"[{self.job.id}] {data.get('name') or self.job.name} on "
                f"{self.job.record.platform}: {data.get('runner')} started "
                f"(Python {data.get('python', '?')}, host {data.get('host', '?')})"
            )
        elif event.kind == "start":
            data = event.data
            resumed = (
                f", resumed after epoch {data['resumed_from']}" if data.get("resumed_from") else ""
            )
            self.write(
                f"[{self.job.id}] {data.get('model') or self.job.name} on "
                f"{self.job.record.platform} ({data.get('device_name', '?')}): "
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
                loss = f" loss {p.batch_loss:.4f}" if p.batch_loss is not None else ""
                self.write(
                    f"  epoch {p.epoch + 1}/{p.epochs or '?'} batch {p.batch}/{p.batches or '?'}"
                    + loss
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
            metrics = format_metrics(p.metrics)
            self.write(
                f"[{self.job.id}] finished in {format_duration(wall)}"
                f"{f', best epoch {best}' if best else ''}{': ' + metrics if metrics else ''}"
            )
        else:
            self.write(f"[{self.job.id}] {state.lower()}{': ' + message if message else ''}")


BUSY_NOTE = (
    "The buttons cannot act while this cell runs in this front-end: interrupt the kernel "
    "(■) to stop watching (the job keeps running), then <code>%neural_cancel {id}</code> "
    "stops it."
)


class WidgetMonitor(MonitorBase):
    """The JobMonitor widget (ipywidgets)."""

    def __init__(self, job: Any, on_cancel: Callable[[], Any] | None = None, **kwargs) -> None:
        super().__init__(job, **kwargs)
        import ipywidgets as w

        self.header = w.HTML()
        self.epoch_bar = w.IntProgress(
            min=0, max=1, value=0, description="epochs", layout=w.Layout(flex="1 1 60%")
        )
        self.batch_bar = w.IntProgress(
            min=0, max=1, value=0, description="batches", layout=w.Layout(flex="1 1 60%")
        )
        self.progress_text = w.HTML(layout=w.Layout(flex="1 1 40%", margin="0 0 0 8px"))
        self.eta_text = w.HTML(layout=w.Layout(flex="1 1 40%", margin="0 0 0 8px"))
        self.chart = w.HTML(layout=w.Layout(width="100%"))
        self.log_view = w.HTML()
        self.log_box = w.Accordion(children=[self.log_view], selected_index=None)
        self.log_box.set_title(0, "log")
        self.log_box.add_class("neural-log-box")
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
        self.busy_note = w.HTML(layout=w.Layout(display="none"))
        self.cancel_button.on_click(self._on_cancel)
        self.detach_button.on_click(self._on_detach)
        self._external_cancel = on_cancel
        self._charted = -1
        self._logged = -1
        self.controls = w.HBox([self.cancel_button, self.detach_button, self.busy_note])
        self.controls.add_class("neural-monitor-controls")
        self.widget = w.VBox(
            [
                self.header,
                w.HBox([self.epoch_bar, self.progress_text], layout=w.Layout(width="100%")),
                w.HBox([self.batch_bar, self.eta_text], layout=w.Layout(width="100%")),
                self.chart,
                self.log_box,
                self.controls,
                self.summary,
            ],
            layout=w.Layout(border="1px solid #ddd", padding="6px", width="100%"),
        )
        self.widget.add_class("neural-job-monitor")
        self.render()

    def set_buttons_live(self, live: bool) -> None:
        """Whether clicks reach this monitor while its cell runs; if not, the buttons give
        way to a note saying what to do instead."""
        self.cancel_button.layout.display = "" if live else "none"
        self.detach_button.layout.display = "" if live else "none"
        self.busy_note.layout.display = "none" if live else ""
        self.busy_note.value = (
            ""
            if live
            else (
                f"<span class='neural-busy-note'>{BUSY_NOTE.format(id=html.escape(self.job.id))}"
                "</span>"
            )
        )

    def _on_cancel(self, _button: Any) -> None:
        self.cancel_requested = True
        self.cancel_button.disabled = True
        self.detach_button.disabled = True
        self.cancel_button.description = "Cancelling…"
        if self._external_cancel is not None:
            self._external_cancel()

    def _on_detach(self, _button: Any) -> None:
        self.detach_requested = True
        self.detach_button.disabled = True
        self.detach_button.description = "Detaching…"

    def on_event(self, event: Event) -> None:
        if event.kind in ("start", "epoch", "done", "error", "status"):
            text = event_text(event)
            if text:
                self.log.append(text)

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
            f"<code>{self.job.id}</code> on {html.escape(self.job.record.platform)}"
            f"{' · ' + html.escape(device) if device else ''}"
        )
        if p.epochs:
            self.epoch_bar.max = p.epochs
            self.epoch_bar.value = min(p.epoch, p.epochs)
        if p.batches:
            self.batch_bar.max = p.batches
            self.batch_bar.value = min(p.batch, p.batches)
        running = state == "RUNNING"
        if running:
            loss = f" · batch loss {p.batch_loss:.4f}" if p.batch_loss is not None else ""
            self.progress_text.value = (
                f"epoch {p.epoch}/{p.epochs or '?'} · batch {p.batch}/{p.batches or '?'}{loss}"
            )
            self.eta_text.value = f"ETA {format_seconds(self.eta())}"
        else:  # the numbers of the last epoch, as in the summary table below
            metrics = " · ".join(
                f"{k} {v:.4f}"
                for k, v in p.metrics.items()
                if isinstance(v, (int, float)) and k not in ("epoch", "lr")
            )
            self.progress_text.value = f"epoch {p.epoch}/{p.epochs or '?'}" + (
                f" · {metrics}" if metrics else ""
            )
            done = p.done or {}
            took = done.get("wall_time")
            self.eta_text.value = f"took {format_duration(took)}" if took is not None else ""
        if len(p.history) != self._charted:  # the chart changes only with a new epoch
            self._charted = len(p.history)
            self.chart.value = history_svg(p.history, title=self.job.name)
        self._render_log()
        if state == "SUCCEEDED":
            self.epoch_bar.value = self.epoch_bar.max
            self.batch_bar.value = self.batch_bar.max
        if not running:
            self.cancel_button.disabled = True
            self.detach_button.disabled = True
            self.controls.layout.display = "none"  # nothing left to click
            self.summary.value = self._summary_html()

    def _render_log(self) -> None:
        count = len(self.log)
        shown = list(self.log)[-LOG_SHOWN:]
        lines = "\n".join(html.escape(line) for line in shown)
        self.log_view.value = (
            "<pre class='neural-log' style='max-height:16em;overflow:auto;font-size:11px;"
            f"margin:0;white-space:pre-wrap'>{lines or 'no log lines yet'}</pre>"
        )
        if count != self._logged:
            self._logged = count
            label = f"log ({count} line{'s' if count != 1 else ''}" + (
                f", last {LOG_SHOWN} shown)" if count > LOG_SHOWN else ")"
            )
            self.log_box.set_title(0, label)

    def _summary_html(self) -> str:
        p = self.progress
        message = html.escape(self.final_message or "")
        if self.state != "SUCCEEDED":
            if message.strip().lower() == self.state.lower():
                message = ""  # a bare "cancelled" would only repeat the state
            return f"<b>{self.state.lower()}</b> {message}".rstrip()
        done = p.done or {}
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>"
            for k, v in p.metrics.items()
            if isinstance(v, (int, float)) and k != "lr"
        )
        artifacts = ", ".join(html.escape(name) for name in p.artifacts)
        return (
            f"<div class='neural-summary'><b>finished</b> in "
            f"{format_duration(done.get('wall_time'))}; best epoch {done.get('best_epoch')}"
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


def make_monitor(
    job: Any,
    mode: str = "auto",
    stream: TextIO | None = None,
    on_cancel: Callable[[], Any] | None = None,
) -> MonitorBase:
    """A widget monitor where a widget front-end is likely, a text monitor otherwise.
    ``on_cancel``: what the widget's Cancel button calls (when nothing waits on the monitor
    to see the click, as with ``--no-wait``)."""
    if mode == "widget" or (mode == "auto" and widget_frontend()):
        return WidgetMonitor(job, on_cancel=on_cancel)
    return TextMonitor(job, stream)
