"""Folding a job's event stream into job-store state (status, metrics, artifacts, errors)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from neural_jupyter.backends.base import RemoteStatus
from neural_jupyter.jobs.store import JobStatus, JobStore
from neural_jupyter.redaction import redact
from neural_jupyter.runtime.events import Event, LogLine

STORE_INTERVAL = 1.0  # seconds between metric writes while epochs stream in
FAILED_NODE_CHARS = 2000  # a failed node's error: what failed, and its stderr's last lines


@dataclass
class Progress:
    """What the stream has said so far; also what monitors render."""

    start: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    epochs: int | None = None
    batch: int = 0
    batches: int | None = None
    batch_loss: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)
    done: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    status_message: str | None = None

    @property
    def metrics(self) -> dict[str, Any]:
        if self.done and self.done.get("metrics"):
            return dict(self.done["metrics"])
        return {k: v for k, v in (self.history[-1] if self.history else {}).items() if k != "epoch"}

    def apply(self, event: Event) -> None:
        data = event.data
        kind = event.kind
        if kind == "start":
            self.start = data
            self.epochs = data.get("epochs", self.epochs)
            self.batches = data.get("steps_per_epoch", self.batches)
        elif kind == "batch":
            self.batch = data.get("batch", self.batch)
            self.batches = data.get("batches", self.batches)
            self.epochs = data.get("epochs", self.epochs)
            self.batch_loss = data.get("loss")
            self.epoch = max(self.epoch, int(data.get("epoch") or 0) - 1)
        elif kind == "epoch":
            self.epoch = int(data.get("epoch", self.epoch))
            self.epochs = data.get("epochs", self.epochs)
            self.history.append({"epoch": self.epoch, **(data.get("metrics") or {})})
            self.batch = 0
        elif kind == "artifact":
            self.artifacts[str(data.get("name"))] = str(data.get("path"))
        elif kind == "done":
            self.done = data
        elif kind == "error":
            self.error = data
        elif kind == "status":
            self.status_message = data.get("message")


class Tracker:
    """Applies stream items to a ``Progress`` and writes what matters to the store."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self.store = store
        self.job_id = job_id
        self.progress = Progress()
        self._last_store = 0.0
        self.stderr_tail: list[str] = []

    def apply(self, item: Event | LogLine | None) -> None:
        if item is None:
            return
        if isinstance(item, LogLine):
            if item.stream == "stderr":
                self.stderr_tail.append(redact(item.text))
                del self.stderr_tail[:-40]
            return
        self.progress.apply(item)
        if item.kind == "start":
            self.store.set_status(self.job_id, JobStatus.RUNNING, at=event_time(item.data))
        elif item.kind == "epoch" and time.monotonic() - self._last_store > STORE_INTERVAL:
            self._last_store = time.monotonic()
            self.store.update(self.job_id, metrics=self.progress.metrics)
        elif item.kind == "artifact":
            self.store.update(self.job_id, artifacts=self.progress.artifacts)

    def finish(self, status: RemoteStatus) -> None:
        """Record the terminal state the backend reported."""
        progress = self.progress
        error = None
        if status.state != "SUCCEEDED":
            error = self.error_summary(status)
        if status.state == "SUCCEEDED" and progress.done is None:
            status = RemoteStatus(
                "FAILED", status.exit_code, "the job exited without its final 'done' event"
            )
            error = status.message
        self.store.update(self.job_id, metrics=progress.metrics, artifacts=progress.artifacts)
        # the job's own clock: a stream read long after the job ended (a kernel restarted,
        # nobody watching) still gives the real start, end and so duration
        end = event_time(progress.done or progress.error or {})
        self.store.set_status(
            self.job_id,
            status.state,
            exit_code=status.exit_code,
            error=error,
            at=end,
            started_at=event_time(progress.start) if end else None,
        )

    def error_summary(self, status: RemoteStatus) -> str | None:
        from neural_jupyter.runtime.torchrun import first_failure

        if status.failed_node and status.message:  # another machine's error: node 0's
            return redact(status.message)[:FAILED_NODE_CHARS]  # stream only saw it go
        err = self.progress.error
        failed = first_failure(self.stderr_tail)
        # under torchrun: the first rank that failed, in its own words where it reported
        # them (the other ranks' errors are only the connections it closed)
        if failed is not None and (not err or err.get("rank", 0) != failed.rank):
            return redact(failed.describe())[:500]
        if err:
            rank = f"rank {err['rank']}: " if err.get("rank") else ""
            return redact(f"{rank}{err.get('type', 'Error')}: {err.get('message', '')}")[:500]
        if status.message:
            return redact(status.message)
        return self.stderr_tail[-1] if self.stderr_tail else None


def event_time(data: dict[str, Any]) -> str | None:
    """An event's own ``time`` (seconds since the epoch, as the training script writes it) as
    the store's ISO-8601 UTC text; None when it has none."""
    value = data.get("time") if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        moment = datetime.fromtimestamp(float(value), timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat(timespec="microseconds")
