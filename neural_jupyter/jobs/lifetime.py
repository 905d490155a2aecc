"""Knowing that a job has ended without anyone having to ask for its status.

Things that live as long as a job (an ngrok tunnel, the dashboard's event stream) follow the
job's own event log: a ``done`` or ``error`` event in it ends them at once, and between
events the job is reconciled now and then with where it runs (``Job.refresh``: for a local
job its process and its event log, for a remote one its platform), so a job killed without a
last event, or one whose kernel died, is noticed within seconds too.
"""

from __future__ import annotations

import time
from pathlib import Path

from neural_jupyter.errors import NeuralError
from neural_jupyter.jobs.job import Job
from neural_jupyter.jobs.store import JobStatus, JobStore
from neural_jupyter.runtime.tail import LineTail

LOCAL_CHECK_SECONDS = 1.0  # a process check and a file read: cheap
REMOTE_CHECK_SECONDS = 10.0  # a platform API call
_FINAL_EVENTS = {'{"event": "done"': JobStatus.SUCCEEDED, '{"event": "error"': JobStatus.FAILED}


class EndWatch:
    """``ended()`` says whether (and how) a job has ended; call it as often as you like."""

    def __init__(self, job_id: str, store: JobStore | None = None) -> None:
        self.store = store or JobStore()
        record = self.store.get(job_id)
        self.job_id = record.id
        self.local = record.platform == "local"
        self._tail = LineTail(Path(record.job_dir) / "stdout.log") if record.job_dir else None
        self._seen: JobStatus | None = None
        self._next_check = 0.0

    def ended(self) -> JobStatus | None:
        """The job's final status once it has ended (from the store, its event log or its
        process/platform), else None."""
        record = self.store.get(self.job_id)
        if record.status.is_terminal:
            return record.status
        if self._seen is None and self._tail is None and record.job_dir:
            self._tail = LineTail(Path(record.job_dir) / "stdout.log")
        if self._tail is not None:
            for line in self._tail.read():
                for prefix, status in _FINAL_EVENTS.items():
                    if line.startswith(prefix):
                        self._seen = status
        now = time.monotonic()
        if now >= self._next_check:
            interval = LOCAL_CHECK_SECONDS if self.local else REMOTE_CHECK_SECONDS
            self._next_check = now + interval
            try:
                record = Job(record, self.store).refresh()
            except NeuralError:  # no answer from the platform now: ask again later
                return self._seen
            if record.status.is_terminal:
                return record.status
        return self._seen

    def settle(self, timeout: float = 30.0, step: float = 0.5) -> JobStatus | None:
        """After a final event: reconcile until the store records the end (the process exits
        a moment after its last event), for at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                record = Job(self.store.get(self.job_id), self.store).refresh()
            except NeuralError:
                return None
            if record.status.is_terminal:
                return record.status
            time.sleep(step)
        return None
