"""Reading a job's log files: following them as they grow (``LineTail``, which backends turn
into events; ``Job.follow`` redacts those) and reading them for people (``read_log_lines``,
the one function behind ``Job.logs``, ``%neural_logs`` and failure tails), which redacts
every line it returns.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from neural_jupyter.redaction import redact

EVENT_PREFIX = '{"event"'


class LineTail:
    """Reads complete lines appended to a file since the last call (partial lines wait)."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset
        self._partial = b""

    def read(self, max_bytes: int = 256 * 2**10) -> list[str]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read(max_bytes)
        except FileNotFoundError:
            return []
        if not chunk:
            return []
        self.offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return [line.decode("utf-8", errors="replace").rstrip("\r") for line in lines]

    def flush(self) -> list[str]:
        """Whatever is left after the writer is gone (a last line without newline)."""
        lines = self.read()
        if self._partial:
            lines.append(self._partial.decode("utf-8", errors="replace"))
            self._partial = b""
        return lines


def last_lines(path: Path, count: int, chunk: int = 65536) -> list[str]:
    """The last ``count`` lines of a file without reading all of it."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            end = handle.tell()
            data = b""
            while end > 0 and data.count(b"\n") <= count:
                start = max(0, end - chunk)
                handle.seek(start)
                data = handle.read(end - start) + data
                end = start
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-count:] if count else []


def iter_lines(path: Path) -> Iterator[str]:
    """Every line of a log file, redacted."""
    try:
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                yield redact(line.rstrip("\n"))
    except FileNotFoundError:
        return


def read_log_lines(path: Path, tail: int | None = None, *, events: bool = False) -> list[str]:
    """The lines of a log file as people read them: redacted, protocol events left out unless
    ``events``; ``tail`` keeps the last N (read from the end of the file, not all of it; 0 or None:
    all)."""
    if tail:
        source = last_lines(path, tail * 4 + 200)
    else:
        source = list(_raw_lines(path))
    lines = [line for line in source if events or not line.startswith(EVENT_PREFIX)]
    lines = lines[-tail:] if tail else lines
    return [redact(line) for line in lines]


def _raw_lines(path: Path) -> Iterator[str]:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                yield line.rstrip("\n")
    except FileNotFoundError:
        return
