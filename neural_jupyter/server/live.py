"""Following a job's event stream from the server, incrementally, to show live progress.

The store holds what a kernel recorded (status, latest metrics); the epoch count, the batch
position and the metrics history live in the job's event stream. ``EventFollower`` reads that
stream through the job's own backend (``backend.events(..., follow=True)``, the public
contract every monitor uses) a piece at a time: each ``advance()`` takes what has arrived
since the last one and returns at the first heartbeat, so a poll never waits for the job.

Only platforms in ``LIVE_PLATFORMS`` are followed: reading a local job's stream reads its log
files, while a remote platform's stream is a series of calls to that platform (and may bring
outputs back), which belongs to the kernel that follows the job. Remote jobs show what the
store has.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

LIVE_PLATFORMS = frozenset({"local"})
HISTORY_LIMIT = 2000  # epochs kept per job (the newest); a view never grows without bound


@dataclass
class LiveState:
    """What a job's events have said so far (a bounded summary, not the stream)."""

    epoch: int | None = None
    epochs: int | None = None
    batch: int | None = None
    batches: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
    error: dict[str, Any] | None = None
    done: bool = False
    history: collections.deque = field(
        default_factory=lambda: collections.deque(maxlen=HISTORY_LIMIT)
    )
    epochs_seen: int = 0

    def apply(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "start":
            self.epochs = data.get("epochs", self.epochs)
            self.batches = data.get("steps_per_epoch", self.batches)
            self.epoch = self.epoch or 0
        elif kind == "batch":
            self.batch = data.get("batch", self.batch)
            self.batches = data.get("batches", self.batches)
            self.epoch = max(self.epoch or 0, int(data.get("epoch") or 0) - 1)
        elif kind == "epoch":
            self.epoch = int(data.get("epoch", self.epoch or 0))
            self.epochs = data.get("epochs", self.epochs)
            metrics = dict(data.get("metrics") or {})
            self.metrics = metrics
            self.history.append({"epoch": self.epoch, **metrics})
            self.epochs_seen += 1
            self.batch = 0
        elif kind == "done":
            self.done = True
            final = data.get("metrics")
            if isinstance(final, dict) and final:
                self.metrics = dict(final)
        elif kind == "error":
            self.error = data
        elif kind == "status":
            self.message = data.get("message")


class EventFollower:
    """One job's event stream, read piece by piece into a ``LiveState`` (thread-safe)."""

    def __init__(self, job: Any) -> None:
        self.job_id = job.id
        self.state = LiveState()
        self.finished = False
        self._lock = threading.Lock()
        self._items: Iterator[Any] = job.backend.events(job.remote(), follow=True)

    def advance(self, budget_seconds: float = 0.5, on_event: Any = None) -> LiveState:
        """Take what has arrived (up to ``budget_seconds`` of reading) and return the state.

        ``on_event(kind, data)`` sees each event as it is applied.
        """
        with self._lock:
            if self.finished:
                return self.state
            deadline = time.monotonic() + budget_seconds
            while time.monotonic() < deadline:
                try:
                    item = next(self._items)
                except StopIteration:
                    self.finished = True
                    break
                if item is None:  # a heartbeat: we are caught up
                    break
                kind = getattr(item, "kind", None)
                if kind is None:  # a plain log line
                    continue
                self.state.apply(kind, item.data)
                if on_event is not None:
                    on_event(kind, item.data)
            return self.state

    def close(self) -> None:
        with self._lock:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()
            self.finished = True


class FollowerCache:
    """Followers by job id, at most ``size`` of them (the least recently used go first)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._followers: collections.OrderedDict[str, EventFollower] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, job: Any, create: bool = True) -> EventFollower | None:
        """The follower for ``job`` (created on first use unless ``create`` is false); None
        where the server does not follow this platform."""
        if job.record.platform not in LIVE_PLATFORMS or job.record.remote_id is None:
            return None
        with self._lock:
            follower = self._followers.get(job.id)
            if follower is None and not create:
                return None
            if follower is None:
                follower = EventFollower(job)
                self._followers[job.id] = follower
            self._followers.move_to_end(job.id)
            while len(self._followers) > self.size:
                _, old = self._followers.popitem(last=False)
                old.close()
            return follower

    def clear(self) -> None:
        with self._lock:
            for follower in self._followers.values():
                follower.close()
            self._followers.clear()
