"""``RemotePlatform``: the loop every managed platform repeats, written once.

    submit once per idempotency key → look (describe) → status event when the state changes
    → new log lines → ... → terminal state → outputs brought back once → (heartbeats between
    looks, so a waiting caller can react to Ctrl-C or a Cancel click)

A platform module then holds only its wire format: the requests it sends, its state table
(``StateTable``), how it reads new log lines (a ``LogReader``), its fault table (``faults``,
see ``retry``) and its images. ``call`` is the one way it talks to its SDK.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from neural_jupyter.backends import base
from neural_jupyter.backends.base import State
from neural_jupyter.backends.retry import FaultPolicy

T = TypeVar("T")


class StateTable(Mapping[Hashable, tuple[str, str]]):
    """A platform's own state names -> ours (``PENDING`` ... ``UNKNOWN``) and what each
    means in words; published in the platform's page under docs/platforms/."""

    def __init__(self, states: Mapping[Hashable, str | tuple[str, str]]) -> None:
        self._states = {
            name: (value, str(name).lower().replace("_", " ")) if isinstance(value, str) else value
            for name, value in states.items()
        }

    def lookup(self, *names: Hashable) -> tuple[str, str]:
        """(our state, meaning) of the first of ``names`` the table knows."""
        for name in names:
            if name in self._states:
                return self._states[name]
        return State.UNKNOWN, str(names[0]) if names and names[0] else "no status yet"

    def state(self, *names: Hashable) -> str:
        return self.lookup(*names)[0]

    def __getitem__(self, name: Hashable) -> tuple[str, str]:
        return self._states[name]

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._states)

    def __len__(self) -> int:
        return len(self._states)


@dataclass(frozen=True)
class Look:
    """One look at a remote job."""

    status: base.RemoteStatus
    state: str = ""  # the platform's words for its state: a change is announced
    announce: str | None = None  # the status line shown for that change (None: quiet)
    fields: Mapping[str, Any] = field(default_factory=dict)  # more fields of that event
    raw: Any = None  # the platform's answer, for the log reader
    gone: bool = False  # the platform has no such job (any more): stop following


class LogReader:
    """Where a job's output comes from. The loop calls ``read`` after every look, ``pause``
    between looks, ``finish`` once at the end (follow or not) and ``close`` always."""

    note: str | None = None  # said once, before the first look

    def read(self, look: Look, follow: bool) -> Iterator[base.StreamItem]:
        return iter(())

    def pause(self, look: Look, seconds: float, step: float) -> Iterator[base.StreamItem]:
        return base.heartbeats(seconds, step)

    def finish(self, look: Look) -> Iterator[base.StreamItem]:
        return iter(())

    def close(self) -> None:
        return None


class RemotePlatform(base.Backend):
    """A platform with an API to submit, describe and cancel jobs."""

    poll_seconds: ClassVar[float] = 10.0  # between looks while following a job
    heartbeat_seconds: ClassVar[float] = 0.25
    faults: ClassVar[FaultPolicy]

    def call(self, action: str, func: Callable[[], T]) -> T:
        """``func()`` with retries for transient faults; SDK errors become ours."""
        return self.faults.call(action, func)

    def submit_once(
        self,
        action: str,
        create: Callable[[], T],
        *,
        find: Callable[[], T | None] | None = None,
        exists: Callable[[BaseException], bool] | None = None,
        look_first: bool = True,
    ) -> tuple[T | None, str]:
        """Create the job of this idempotency key at most once: before every try (or, without
        ``look_first``, every try after a failed one, whose response may have been lost)
        ``find`` it; a create refused because it ``exists`` adopts it. Returns the result and
        how: ``created``, ``submitted before`` or ``after a retry``."""
        tries = 0

        def attempt() -> tuple[T | None, str]:
            nonlocal tries
            tries += 1
            adopted = "after a retry" if tries > 1 else "submitted before"
            if find is not None and (look_first or tries > 1):
                found = find()
                if found is not None:
                    return found, adopted
            try:
                return create(), "created"
            except Exception as exc:
                if exists is None or not exists(exc):
                    raise
            return (find() if find is not None else None), adopted

        return self.call(action, attempt)

    # --- what a platform says -------------------------------------------------------------
    @abc.abstractmethod
    def look(self, job: base.RemoteJob) -> Look:
        """Describe the job once."""

    def status(self, job: base.RemoteJob) -> base.RemoteStatus:
        return self.look(job).status

    def log_reader(self, job: base.RemoteJob) -> LogReader:
        return LogReader()

    def after_end(self, job: base.RemoteJob, look: Look) -> Iterator[base.StreamItem]:
        """What happens once the job ended: its outputs come home (unless it was cancelled)."""
        if look.status.state in State.WITH_OUTPUTS:
            yield from self.bring_back_outputs(job)

    # --- the loop -------------------------------------------------------------------------
    def events(self, job: base.RemoteJob, *, follow: bool = True) -> Iterator[base.StreamItem]:
        reader = self.log_reader(job)
        try:
            if reader.note:
                yield base.status_event(reader.note)
            said = None
            while True:
                look = self.look(job)
                if look.state != said:
                    said = look.state
                    if look.announce:
                        yield base.status_event(look.announce, **look.fields)
                yield from reader.read(look, follow)
                ended = look.status.is_terminal or look.gone
                if ended or not follow:
                    yield from reader.finish(look)
                    if look.status.is_terminal:
                        yield from self.after_end(job, look)
                    return
                yield from reader.pause(look, self.poll_seconds, self.heartbeat_seconds)
        finally:
            reader.close()
