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
import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterable, Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from neural_jupyter.backends import base
from neural_jupyter.backends.base import State
from neural_jupyter.backends.log_artifacts import is_artifact_line, skipped
from neural_jupyter.backends.log_mirror import LogMirror
from neural_jupyter.backends.retry import FaultPolicy
from neural_jupyter.runtime.events import parse_line

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


def remember(job: base.RemoteJob, status: base.RemoteStatus) -> None:
    """Keep a job's final status in its directory, for when the platform has forgotten it."""
    with contextlib.suppress(OSError):
        job.files.write_json(job.files.final_status, status.record())


def remembered(job: base.RemoteJob) -> base.RemoteStatus | None:
    """The final status ``remember`` kept, if any."""
    return base.RemoteStatus.from_record(job.files.read_json(job.files.final_status))


def gone_look(job: base.RemoteJob, words: str, message: str) -> Look:
    """The look at a job the platform no longer has: its end as remembered here, else
    UNKNOWN with ``message``."""
    kept = remembered(job)
    if kept is not None:
        return Look(kept, kept.state, gone=True)
    status = base.RemoteStatus(State.UNKNOWN, message=message)
    return Look(status, words, status.message, gone=True)


class CountedLog(LogReader):
    """A job's log that every read gets from its first line (a reconnect replays it): the
    lines are numbered, so nothing is yielded twice; each is kept in the job directory's log
    mirror, except the launcher's artifact lines (``log_artifacts``), which are set aside
    for the backend's ``fetch_artifacts`` (its ``_artifact_lines``)."""

    skipped_hint = "see --set log_artifacts_max_mb"  # how to bring back outputs left out
    tail: AsyncTail | None = None  # the stream being followed, if any (``close`` stops it)

    def __init__(self, backend: Any, job: base.RemoteJob) -> None:
        self.backend = backend
        self.job = job
        self.mirror = LogMirror(job.directory)
        self.position = 0  # lines of the remote log handled so far
        self.artifacts: list[str] = []
        self.read_any = False

    def _numbered(self, lines: Iterable[tuple[int, str]]) -> Iterator[base.StreamItem]:
        for number, line in lines:
            if number <= self.position:
                continue
            self.position = number
            self.read_any = True
            if is_artifact_line(line):
                self.artifacts.append(line)
                continue
            self.mirror.add(line, number)
            yield parse_line(line)

    def hand_over_artifacts(self) -> Iterator[base.StreamItem]:
        """The artifact lines to the backend, and a status event naming outputs the launcher
        left out (over its byte budget)."""
        if self.artifacts:
            self.backend._artifact_lines[self.job.id] = self.artifacts
        left_out = skipped(self.artifacts)
        if left_out:
            yield base.status_event(
                f"outputs too big for the log: {', '.join(left_out)} ({self.skipped_hint})"
            )

    def close(self) -> None:
        if self.tail is not None:
            self.tail.stop()


_TAIL_DONE = object()  # what an ``AsyncTail``'s queue holds last


class AsyncTail:
    """An SDK's async log stream (``source()``, an async iterable) read in a thread of its
    own with its own event loop; ``items`` hands them out until the stream ends or ``stop``
    cancels the read. ``error`` is what ended it otherwise (the caller decides whether a
    dropped read matters), ``ended`` whether it was read to its end."""

    def __init__(
        self, source: Callable[[], AsyncIterable[Any]], name: str, join_seconds: float = 0
    ) -> None:
        self.queue: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.ended = False
        self._join_seconds = join_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(source,), name=name, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self, source: Callable[[], AsyncIterable[Any]]) -> None:
        async def consume() -> None:
            async for item in source():
                self.queue.put(item)
            self.ended = True

        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._task = loop.create_task(consume())
            self._ready.set()
            loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()
            self.queue.put(_TAIL_DONE)
            with contextlib.suppress(Exception):
                loop.close()

    def items(self, heartbeat: float | None = None) -> Iterator[Any]:
        """The stream's items as they arrive; with ``heartbeat``, None every that many
        seconds while none does."""
        while True:
            try:
                item = self.queue.get(timeout=heartbeat)
            except queue.Empty:
                yield None
                continue
            if item is _TAIL_DONE:
                return
            yield item

    def stop(self) -> None:
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)
        if self._join_seconds:
            self._thread.join(self._join_seconds)


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
