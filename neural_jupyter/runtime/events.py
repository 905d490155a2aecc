"""The event protocol: JSON lines on a job's stdout; anything else is a plain log line.

``{"event": "epoch", "epoch": 3, "epochs": 10, "metrics": {...}}``; kinds are listed in
``EVENT_KINDS``. Parsing is cheap for the common case (a log line costs one ``startswith``),
because a monitor may see millions of lines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from neural_jupyter.redaction import redact, redact_value

EVENT_KINDS = frozenset(
    {"start", "batch", "epoch", "layer_stats", "artifact", "done", "error", "status"}
)
_PREFIX = '{"event"'


@dataclass(frozen=True, slots=True)
class Event:
    """One protocol event; ``data`` holds every field but ``event``."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


@dataclass(frozen=True, slots=True)
class LogLine:
    text: str
    stream: str = "stdout"


def parse_line(line: str, stream: str = "stdout") -> Event | LogLine:
    """Classify one line (without its newline) as an ``Event`` or a ``LogLine``."""
    if stream == "stdout" and line.startswith(_PREFIX):
        try:
            record = json.loads(line)
        except ValueError:
            return LogLine(line, stream)
        kind = record.pop("event", None) if isinstance(record, dict) else None
        if isinstance(kind, str) and kind in EVENT_KINDS:
            return Event(kind, record)
    return LogLine(line, stream)


def encode(event: Event) -> str:
    return json.dumps({"event": event.kind, **event.data})


def redacted(item: Event | LogLine | None) -> Event | LogLine | None:
    """``item`` with secrets masked (a log line's text, an event's string fields): what every
    consumer of a job's stream (monitors, the job store, sweeps) gets from ``Job.follow``."""
    if item is None:
        return None
    if type(item) is LogLine:
        text = redact(item.text)
        return item if text is item.text else LogLine(text, item.stream)
    if _has_text(item.data):
        return Event(item.kind, redact_value(item.data))
    return item


def _has_text(value: Any) -> bool:
    if isinstance(value, str):
        return True
    if isinstance(value, dict):
        return any(isinstance(k, str) and _has_text(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_text(v) for v in value)
    return False
