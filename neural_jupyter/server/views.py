"""What the REST API says about a job: a JSON view of its record, progress and cost.

Every string that leaves the server goes through ``redact`` (``redact_tree``): job names,
errors, metrics, log lines, status messages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from neural_jupyter.redaction import redact
from neural_jupyter.server.live import LiveState


def redact_tree(value: Any) -> Any:
    """A JSON-ready copy of ``value`` with every string (keys too) redacted; NaN and the
    infinities become the strings JavaScript prints for them (JSON has no such numbers)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {redact(str(key)): redact_tree(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_tree(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def elapsed_hours(start: str | None, end: str | None, now: datetime) -> float:
    began = parse_time(start)
    if began is None:
        return 0.0
    ended = parse_time(end) or now
    return max(0.0, (ended - began).total_seconds() / 3600)


def progress_view(record: Any, live: LiveState | None) -> dict[str, Any] | None:
    """Epoch and batch counts and the fraction done, from the live event stream when the
    server can read it, else from what the store knows (the planned number of epochs)."""
    settings = record.config.get("settings") or {}
    epochs = (live.epochs if live else None) or settings.get("epochs")
    epoch = live.epoch if live else None
    batch = live.batch if live else None
    batches = live.batches if live else None
    fraction: float | None = None
    if record.status.value == "SUCCEEDED":
        fraction = 1.0
    elif epochs and epoch is not None:
        within = (batch / batches) if batch and batches else 0.0
        fraction = min(1.0, (epoch + within) / epochs)
    if epoch is None and fraction is None and not epochs:
        return None
    return {
        "epoch": epoch,
        "epochs": epochs,
        "batch": batch,
        "batches": batches,
        "fraction": fraction,
    }


def job_view(
    record: Any,
    live: LiveState | None = None,
    cost: dict[str, Any] | None = None,
    paid: bool = False,
    note: str | None = None,
) -> dict[str, Any]:
    """The sidebar's row for one job (``redact_tree`` it before sending)."""
    metrics = dict(record.metrics)
    if live is not None and live.metrics:
        metrics = dict(live.metrics)
    resources = record.config.get("resources") or {}
    return {
        "id": record.id,
        "name": record.name,
        "model": record.model_name,
        "platform": record.platform,
        "status": record.status.value,
        "terminal": record.status.is_terminal,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "updated_at": record.updated_at,
        "progress": progress_view(record, live),
        "metrics": metrics,
        "message": live.message if live else None,
        "error": record.error,
        "exit_code": record.exit_code,
        "instance_type": resources.get("instance_type"),
        "paid": paid,
        "cost": cost,
        "sweep_id": record.sweep_id,
        "host": record.host,
        "attach": f"%neural_attach {record.id}",
        "live": live is not None,
        "note": note,
    }
