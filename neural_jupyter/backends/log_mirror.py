"""A remote job's log kept in its local directory, like the local backend's own files, so
``Job.logs``, failure tails and the final ``done`` event stay readable after the platform
dropped its copy. Every remote platform writes through it, in one of two ways:

- by line (platforms that hand out lines, often replaying from line 1 on every read): each
  line comes with its number and is kept once. ``remote.log`` holds every line with its
  stream (JSON, in order); ``stdout.log`` and ``stderr.log`` the lines of each stream
  (plain lines redacted). With ``merged`` (a platform that mixes both streams into one log)
  event lines go to ``stdout.log`` and every other line to ``stderr.log``.
- by bytes (platforms that serve the job's own log files): ``copy_bytes`` appends the whole
  lines the remote files gained, redacted, and keeps the remote offset reached beside each
  copy, so a reader resumes at ``source_offset(stream)`` after a dropped connection.

``exclusive()`` serialises writers: threads of this process and other kernels.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

from neural_jupyter.redaction import redact
from neural_jupyter.runtime.events import Event, LogLine, parse_line
from neural_jupyter.runtime.jobdir import JobDir

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


class LogMirror:
    def __init__(self, directory: Path, *, merged: bool = True) -> None:
        self.files = JobDir(directory)
        self.merged = merged
        self._lock = threading.Lock()
        try:
            with self.files.remote_log.open("rb") as handle:
                self.count = sum(1 for _ in handle)
        except OSError:
            self.count = 0

    # --- by line ----------------------------------------------------------------------------
    def add(self, line: str, number: int, stream: str = "stdout") -> bool:
        """Keep line ``number`` (1-based) unless it is kept already; True if it was new."""
        with self._lock:
            if number <= self.count or not self.files.root.is_dir():
                return False
            event = stream == "stdout" and line.startswith('{"event"')
            kept = redact(line)  # never breaks an event line's JSON (see redaction)
            target = ("stdout" if event else "stderr") if self.merged else stream
            record = json.dumps({"stream": stream, "line": kept})
            for path, text in ((self.files.remote_log, record), (self.files.log(target), kept)):
                with path.open("a", encoding="utf-8") as handle:
                    handle.write(text + "\n")
            self.count = number
            return True

    def extend(self, lines: list[tuple[str, str]]) -> Iterator[tuple[str, str]]:
        """Keep lines that follow the ``count`` kept so far; the new ones, as given."""
        for line, stream in lines:
            if self.add(line, self.count + 1, stream):
                yield line, stream

    def lines(self) -> Iterator[tuple[str, str]]:
        """Every kept line as ``(line, stream)``, in order."""
        try:
            text = self.files.remote_log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return
        for raw in text.splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                record = json.loads(raw)
                yield str(record["line"]), str(record["stream"])

    def events(self) -> Iterator[Event | LogLine]:
        """Every kept line, parsed: what this machine kept of a log the platform dropped."""
        for line, stream in self.lines():
            yield parse_line(line, stream)

    # --- by bytes ---------------------------------------------------------------------------
    def source_offset(self, stream: str) -> int:
        """How many bytes of the remote ``stream`` file the mirror holds. The copy is redacted,
        so its own size is not that offset: it is kept beside it (``JobDir.log_offset``)."""
        try:
            return int(self.files.log_offset(stream).read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def copy_bytes(self, stream: str, offset: int, data: bytes, *, whole: bool = False) -> None:
        """Add ``data``, read at byte ``offset`` of the remote file: the part not copied yet,
        whole lines only, each redacted; a last line without its newline waits for a later
        call unless ``whole`` (the job is over, or a chunk that is all one line)."""
        done = self.source_offset(stream)
        if offset > done or offset + len(data) <= done:
            return  # a gap (cannot be filled from here) or nothing new
        data = data[done - offset :]
        cut = len(data) if whole else data.rfind(b"\n") + 1
        if cut == 0:
            return
        lines = data[:cut].decode("utf-8", errors="replace").split("\n")
        if lines[-1] == "":
            lines.pop()
        self.files.root.mkdir(parents=True, exist_ok=True)
        with self.files.log(stream).open("a", encoding="utf-8") as handle:
            handle.write("".join(redact(line) + "\n" for line in lines))
        self.files.write_text_atomic(self.files.log_offset(stream), str(done + cut))

    def total_size(self) -> int:
        return sum(self.source_offset(stream) for stream in ("stdout", "stderr"))

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """The right to extend the mirror (threads here, kernels elsewhere)."""
        key = str(self.files.root.resolve())
        with _locks_guard:
            lock = _locks.setdefault(key, threading.Lock())
        with lock:
            try:
                import fcntl
            except ImportError:  # Windows: the thread lock is all there is
                yield
                return
            self.files.root.mkdir(parents=True, exist_ok=True)
            with self.files.mirror_lock.open("a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
