"""Job listings as HTML and text tables."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from neural_jupyter.ui.text import format_duration

_COLUMNS = ("id", "name", "platform", "status", "created", "duration", "metrics")


def _duration(record: Any) -> str:
    from datetime import datetime

    if not record.started_at:
        return "–"
    try:
        start = datetime.fromisoformat(record.started_at)
        end = datetime.fromisoformat(record.finished_at) if record.finished_at else None
    except (TypeError, ValueError):
        return "?"
    if end is None:
        return "running"
    return format_duration((end - start).total_seconds())


def _metrics(record: Any) -> str:
    keys = [
        k
        for k in ("val_accuracy", "accuracy", "val_loss", "loss", "val_mae", "mae")
        if isinstance(record.metrics.get(k), (int, float))
    ]
    return " ".join(f"{k}={record.metrics[k]:.4g}" for k in keys[:3])


def _row(record: Any) -> tuple[str, ...]:
    damage = getattr(record, "damage", None)
    if damage:  # a row the store could not read in full: shown, never fatal to the listing
        return (
            record.id,
            record.name,
            record.platform,
            "DAMAGED",
            str(record.created_at)[:19].replace("T", " "),
            "–",
            f"{damage} (%neural_rm {record.id} removes it)",
        )
    return (
        record.id,
        record.name,
        record.platform,
        record.status.value,
        record.created_at[:19].replace("T", " "),
        _duration(record),
        _metrics(record),
    )


class JobTable:
    """Displays a list of ``JobRecord``s (HTML in notebooks, text elsewhere)."""

    def __init__(self, records: Sequence[Any]) -> None:
        self.records = list(records)

    def __str__(self) -> str:
        if not self.records:
            return "no jobs"
        rows = [_COLUMNS, *(_row(r) for r in self.records)]
        widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
        return "\n".join(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        if not self.records:
            return "<i>no jobs</i>"
        head = "".join(f"<th style='text-align:left'>{c}</th>" for c in _COLUMNS)
        body = "".join(
            "<tr>"
            + "".join(f"<td style='text-align:left'>{html.escape(cell)}</td>" for cell in _row(r))
            + "</tr>"
            for r in self.records
        )
        return f"<table class='neural-jobs'><thead><tr>{head}</tr></thead>{body}</table>"


class InstanceTable:
    """Paid instances still recorded as running (``%neural_jobs --instances``)."""

    columns = ("job", "provider", "instance", "address", "status", "since", "$/h")

    def __init__(self, records: Sequence[Any]) -> None:
        self.records = list(records)

    def rows(self) -> list[tuple[str, ...]]:
        return [
            (
                r.job_id,
                r.provider,
                r.instance_id,
                r.address or "–",
                r.status,
                r.created_at[:19].replace("T", " "),
                f"{r.hourly_price:.3f}" if r.hourly_price is not None else "?",
            )
            for r in self.records
        ]

    def __str__(self) -> str:
        if not self.records:
            return "no instances are running"
        rows = [self.columns, *self.rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self.columns))]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        if not self.records:
            return "<i>no instances are running</i>"
        head = "".join(f"<th>{c}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
            for row in self.rows()
        )
        return f"<table class='neural-instances'><tr>{head}</tr>{body}</table>"
