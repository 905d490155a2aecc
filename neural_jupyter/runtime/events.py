"""The event protocol: JSON lines on a job's stdout; anything else is a plain log line.

``{"event": "epoch", "epoch": 3, "epochs": 10, "metrics": {...}}``; kinds are listed in
``EVENT_KINDS``. Parsing is cheap for the common case (a log line costs one ``startswith``),
because a monitor may see millions of lines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

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
