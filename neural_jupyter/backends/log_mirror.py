"""A remote job's log kept in its local directory, like the local backend's own files.

``remote.log`` holds every line with its stream (JSON, in order), ``stdout.log`` the event
lines and ``stderr.log`` the plain lines (redacted), so ``Job.logs``, failure tails and the
final ``done`` event stay readable after the platform dropped its copy. Platforms that replay
their log from line 1 on every read pass the line's number: lines already kept are skipped.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

from neural_jupyter.redaction import redact


class LogMirror:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        try:
            with (directory / "remote.log").open("rb") as handle:
                self.count = sum(1 for _ in handle)
        except OSError:
            self.count = 0

    def add(self, line: str, number: int, stream: str = "stdout") -> None:
        """Keep line ``number`` (1-based) unless it is kept already."""
        with self._lock:
            if number <= self.count or not self.directory.is_dir():
                return
            event = stream == "stdout" and line.startswith('{"event"')
            kept = line if event else redact(line)
            record = json.dumps({"stream": stream, "line": kept})
            for name, text in (
                ("remote.log", record),
                ("stdout.log" if event else "stderr.log", kept),
            ):
                with (self.directory / name).open("a", encoding="utf-8") as handle:
                    handle.write(text + "\n")
            self.count = number

    def lines(self) -> Iterator[tuple[str, str]]:
        """Every kept line as ``(line, stream)``, in order."""
        try:
            text = (self.directory / "remote.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return
        for raw in text.splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                record = json.loads(raw)
                yield str(record["line"]), str(record["stream"])
