"""What a job printed, as a person reads it (``%neural_logs``).

A training script reports through the event protocol, so its stdout is mostly JSON lines and
``Job.logs()`` (plain lines only) is often empty. The transcript renders the events a person
cares about (start, each epoch, saved files, the end, errors) in their place among the plain
stdout lines, then the job's stderr. Every line is redacted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neural_jupyter.redaction import redact
from neural_jupyter.runtime.events import Event, parse_line
from neural_jupyter.runtime.jobdir import JobDir
from neural_jupyter.runtime.tail import last_lines
from neural_jupyter.ui.text import event_text

WHOLE_FILE_BYTES = 8 * 2**20  # larger logs are read from their end only
LINES_PER_SHOWN_LINE = 64  # most stdout lines are batch events that are not shown


def transcript(job: Any, tail: int | None = None) -> list[str]:
    """The job's readable output (``job``: a ``Job`` or a job id); ``tail`` keeps the last N
    lines (``InvalidArgumentError`` names ``--tail`` when it is not a whole number >= 0)."""
    from neural_jupyter import validation

    tail = validation.optional_integer("--tail", tail, 0, validation.MAX_LIMIT)
    if isinstance(job, str):
        from neural_jupyter import jobs

        job = jobs.get(job)
    files = JobDir(Path(job.directory))
    lines = [*_rendered(files.stdout, "stdout", tail)]
    errors = _rendered(files.stderr, "stderr", tail)
    if errors:
        lines += ["--- stderr ---", *errors]
    return lines[-tail:] if tail else lines


def _rendered(path: Path, stream: str, tail: int | None) -> list[str]:
    out = []
    for raw in _read(path, tail):
        item = parse_line(raw, stream)
        text = event_text(item) if isinstance(item, Event) else item.text
        if text is not None:
            out.append(redact(text))
    return out


def _read(path: Path, tail: int | None) -> list[str]:
    try:
        size = path.stat().st_size
    except OSError:
        return []
    if tail and size > WHOLE_FILE_BYTES:
        return last_lines(path, tail * LINES_PER_SHOWN_LINE) or []
    return path.read_text(encoding="utf-8", errors="replace").splitlines()
