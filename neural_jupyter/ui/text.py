"""Text that people read: durations, metric lists, and a job's events as log lines.

Shared by the monitors, the job table and ``%neural_logs`` so a job reads the same
everywhere (``epoch 3/10  loss 0.4100  val_accuracy 0.9100 (0.51 s)``).
"""

from __future__ import annotations

from typing import Any

from neural_jupyter.redaction import redact
from neural_jupyter.runtime.events import Event


def format_seconds(seconds: float | None) -> str:
    """A clock-style duration for ETAs: ``0:04``, ``12:30``, ``1:02:03``; ``–`` if unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "–"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_duration(seconds: float | None) -> str:
    """How long something took, precise for short runs: ``0.93 s``, ``4.2 s``, ``12 s``,
    ``1:05``."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "–"
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    return format_seconds(seconds)


def format_metrics(metrics: dict[str, Any]) -> str:
    return "  ".join(
        f"{k} {v:.4f}"
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and k not in ("epoch", "lr")
    )


def event_text(event: Event) -> str | None:
    """One readable line for the events a person cares about; None for the rest (batches,
    layer statistics), which the progress bars and the dashboard show."""
    data = event.data
    if event.kind == "start":
        resumed = (
            f", resumed after epoch {data['resumed_from']}" if data.get("resumed_from") else ""
        )
        device = data.get("device_name") or data.get("device", "?")
        return (
            f"start: {data.get('model', '?')} on {device}"
            f", {data.get('train_samples', '?')} training / {data.get('val_samples', 0)} "
            f"validation samples, {data.get('params', 0):,} params, "
            f"{data.get('epochs', '?')} epochs{resumed}"
        )
    if event.kind == "epoch":
        duration = data.get("duration")
        took = f" ({format_duration(duration)})" if isinstance(duration, (int, float)) else ""
        return (
            f"epoch {data.get('epoch', '?')}/{data.get('epochs', '?')}  "
            f"{format_metrics(data.get('metrics', {}))}{took}"
        )
    if event.kind == "done":
        best = f", best epoch {data['best_epoch']}" if data.get("best_epoch") else ""
        early = " (stopped early)" if data.get("stopped_early") else ""
        return (
            f"done in {format_duration(data.get('wall_time'))}{best}{early}: "
            f"{format_metrics(data.get('metrics', {}))}"
        )
    if event.kind == "error":
        return f"error: {redact(str(data.get('type')))}: {redact(str(data.get('message')))}"
    if event.kind == "status" and data.get("message"):
        return f"status: {redact(str(data.get('message')))}"
    if event.kind == "artifact":
        return f"saved {data.get('name', '?')}: {data.get('path', '?')}"
    return None
