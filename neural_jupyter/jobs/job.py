"""``Job``: one training job as the Python API sees it, wherever it runs.

The job store is the index; the backend is the truth. ``Job`` asks the backend, folds its
event stream into the store, and turns a failure into ``JobFailed``/``JobTimeout``/
``JobCancelled`` with the last lines of output and the model-source line involved.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from neural_jupyter.backends import get_backend
from neural_jupyter.backends.base import Backend, RemoteJob, RemoteStatus, State, StreamItem
from neural_jupyter.errors import JobCancelled, JobError, JobFailed, JobTimeout
from neural_jupyter.jobs import code_result
from neural_jupyter.jobs.result import TrainingRun
from neural_jupyter.jobs.store import JobRecord, JobStatus, JobStore
from neural_jupyter.jobs.tracker import Tracker
from neural_jupyter.runtime.events import Event, LogLine, redacted
from neural_jupyter.runtime.jobdir import JobDir
from neural_jupyter.runtime.tail import read_log_lines


class Job:
    """A handle on a job in the store: status, live events, wait, result, cancel, logs."""

    def __init__(self, record: JobRecord, store: JobStore | None = None) -> None:
        self.store = store or JobStore()
        self.record = record
        self.tracker = Tracker(self.store, record.id)

    @classmethod
    def load(cls, job_id: str, store: JobStore | None = None) -> Job:
        store = store or JobStore()
        return cls(store.get(job_id), store)

    # --- identity ---------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self.record.id

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def directory(self) -> Path:
        return Path(self.record.job_dir or ".")

    @property
    def files(self) -> JobDir:
        """The names of the job's files."""
        return JobDir(self.directory)

    @property
    def backend(self) -> Backend:
        return get_backend(self.record.platform)

    def remote(self) -> RemoteJob:
        details = {
            **self.record.config.get("remote", {}),
            "idempotency_key": self.record.idempotency_key,
            "resources": self.record.config.get("resources", {}),
        }
        return RemoteJob(
            self.id,
            self.directory,
            self.record.remote_id,
            details,
            StoreLedger(self.store, self.id),
        )

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.name} on {self.record.platform}: {self.record.status.value}>"

    # --- state ------------------------------------------------------------------------------
    @property
    def status(self) -> JobStatus:
        return self.refresh().status

    def refresh(self) -> JobRecord:
        """Ask the backend (unless the store already has a final state) and update the store.

        A job that was never handed to its platform and whose launch is over (the kernel that
        started it exited, or the launch failed without recording it) is marked FAILED.
        """
        self.record = self.store.get(self.id)
        if self.record.status.is_terminal or self.record.damage:
            return self.record
        if self.record.remote_id is None:
            from neural_jupyter.jobs.launching import abandoned_launch

            reason = abandoned_launch(self.record)
            if reason:
                self.record = self.store.set_status(self.id, JobStatus.FAILED, error=reason)
            return self.record
        remote = self.backend.status(self.remote())
        if remote.is_terminal:
            self._replay_and_finish(remote)
        elif remote.state == "RUNNING" and self.record.status is not JobStatus.RUNNING:
            self.record = self.store.set_status(self.id, JobStatus.RUNNING)
        return self.record

    def _replay_and_finish(self, remote: RemoteStatus) -> None:
        """Read the whole (finished) stream once so the store gets the final metrics."""
        self.tracker = Tracker(self.store, self.id)
        for item in self.backend.events(self.remote(), follow=False):
            self.tracker.apply(redacted(item))
        self.tracker.finish(remote)
        self.record = self.store.get(self.id)

    def follow(self) -> Iterator[StreamItem]:
        """The job's events as they happen (from the start), ending when the job does.

        Yields ``None`` heartbeats while waiting. The store is updated along the way. Every
        item is redacted here, so no consumer (monitor, store, sweep) sees a secret.
        """
        self.tracker = Tracker(self.store, self.id)
        if self.record.remote_id is None:
            record = self.refresh()
            if record.status.is_terminal:
                return
            raise JobError(
                f"job {self.id} was never started ({record.status.value})",
                job_id=self.id,
                hint=f"%neural_cancel {self.id} or %neural_rm {self.id} clears it",
            )
        for raw in self.backend.events(self.remote(), follow=True):
            item = redacted(raw)
            self.tracker.apply(item)
            yield item
        remote = self.backend.status(self.remote())
        if not remote.is_terminal:  # the stream ended early (e.g. a lost connection)
            remote = self._await_terminal()
        if not remote.is_terminal:
            self.record = self.store.set_status(self.id, "UNKNOWN", error=remote.message)
            raise JobError(
                f"lost track of job {self.id}: {remote.message or 'no answer'}",
                job_id=self.id,
                hint=f"it may still be running: %neural_attach {self.id} later",
            )
        self.tracker.finish(remote)
        self._bring_back_outputs(remote)
        self.record = self.store.get(self.id)

    def _bring_back_outputs(self, remote: RemoteStatus) -> None:
        """A finished job's outputs next to its bundle, once (``Backend.bring_back_outputs``:
        a no-op when the platform's stream brought them already); also after a failure, for
        its checkpoint or the exception a user-code job raised."""
        if remote.state not in State.WITH_OUTPUTS:
            return
        for item in self.backend.bring_back_outputs(self.remote()):
            message = str(item.get("message", "")) if isinstance(item, Event) else ""
            if message.startswith("could not"):
                self.tracker.stderr_tail.append(message)

    def _await_terminal(self, poll: float = 0.5, patience: float = 600.0) -> RemoteStatus:
        """Poll until the job ends; give up (UNKNOWN) after ``patience`` s of no answer."""
        unknown_since: float | None = None
        while True:
            remote = self.backend.status(self.remote())
            if remote.is_terminal:
                return remote
            if remote.state == "UNKNOWN":
                unknown_since = unknown_since or time.monotonic()
                if time.monotonic() - unknown_since > patience:
                    return remote
            else:
                unknown_since = None
            time.sleep(poll)

    @property
    def progress(self):
        return self.tracker.progress

    def wait(self, timeout: float | None = None) -> JobRecord:
        """Block until the job ends (or ``timeout`` seconds pass: ``JobTimeout``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.refresh().status.is_terminal:
            return self.record
        for _ in self.follow():
            if deadline is not None and time.monotonic() > deadline:
                raise JobTimeout(
                    f"job {self.id} still running after {timeout:g} s of waiting; it keeps running",
                    job_id=self.id,
                )
        return self.record

    def result(self) -> Any:
        """The finished run; raises ``JobFailed``, ``JobTimeout`` or ``JobCancelled``.

        A model job gives its ``TrainingRun``; a user-code job its function's value, its
        cell's outputs (a dict) or its ``ScriptRun`` (an exception in the code raises
        ``RemoteError``).
        """
        self.wait()
        return self.outcome()

    def outcome(self) -> Any:
        """What ``result()`` returns, for a job that has ended (raises if it ended badly)."""
        self.raise_for_status()
        if code_result.is_code_job(self.record):
            return code_result.load_code_result(self)
        return TrainingRun.from_directory(self.record, self.bundle_dir)

    def raise_for_status(self) -> None:
        record = self.record
        if record.status is JobStatus.SUCCEEDED:
            return
        if record.status is JobStatus.FAILED and code_result.is_code_job(record):
            code_result.raise_code_error(self)
        if record.status is JobStatus.CANCELLED:
            raise JobCancelled(f"job {self.id} was cancelled", job_id=self.id)
        if record.status is JobStatus.FAILED:
            summary = record.error or "the job failed"
            if "time limit" in summary or record.exit_code == 124:
                raise JobTimeout(f"job {self.id} stopped at its time limit", job_id=self.id)
            raise JobFailed(
                f"job {self.id} ({self.name}) failed: {summary}",
                job_id=self.id,
                stderr_tail=self.logs(tail=15, stream="stderr"),
                dsl_location=self.dsl_location(),
                hint=_hint(summary),
            )
        raise JobError(f"job {self.id} is {record.status.value}", job_id=self.id)

    # --- actions ----------------------------------------------------------------------------
    def cancel(self) -> JobRecord:
        """Stop the job (its whole process tree, or the remote job) and record CANCELLED.

        Works on a job in any state: one never handed to its platform (a launch that failed or
        was interrupted) has nothing to stop and is simply marked CANCELLED; a damaged row too.
        """
        record = self.store.get(self.id)
        if record.damage or record.remote_id is None:
            self.record = self.store.set_status(
                self.id, JobStatus.CANCELLED, error="cancelled (it had not started)"
            )
            return self.record
        record = self.refresh()
        if record.status.is_terminal:
            return record
        try:
            self.backend.cancel(self.remote())
        except JobError as exc:  # nothing left to stop (no process, no remote job)
            note = f"cancelled ({exc.message})"
        else:
            note = "cancelled"
        self.record = self.store.set_status(self.id, JobStatus.CANCELLED, error=note)
        return self.record

    @property
    def bundle_dir(self) -> Path:
        return self.files.bundle

    def logs(self, tail: int | None = None, stream: str = "both") -> list[str]:
        """Plain log lines (events left out), redacted; ``tail`` keeps the last N."""
        from neural_jupyter import validation

        tail = validation.optional_integer("--tail", tail, 0, validation.MAX_LIMIT)
        streams = ("stdout", "stderr") if stream == "both" else (stream,)
        lines: list[str] = []
        for name in streams:
            lines.extend(read_log_lines(self.files.log(name), tail))
        return lines[-tail:] if tail else lines

    def dsl_location(self) -> str | None:
        """The model-source line of the layer in the deepest train.py frame of the error."""
        error = self.tracker.progress.error
        text = (error or {}).get("traceback") or "\n".join(self.logs(stream="stderr")[-60:])
        frames = re.findall(r'File ".*train\.py", line (\d+)', text)
        script = self.files.train_script
        spec_file = self.files.spec
        if not frames or not script.exists() or not spec_file.exists():
            return None
        code = script.read_text().splitlines()
        layers = _layer_lines(json.loads(spec_file.read_text()).get("layers", []))
        for number in reversed(frames):
            index = int(number) - 1
            line = code[index] if 0 <= index < len(code) else ""
            for name, dsl_line in layers.items():
                if re.search(rf"\b{re.escape(name)}\b", line):
                    return f"line {dsl_line} (layer {name})"
        return None


def _layer_lines(layers: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for layer in layers:
        out[layer["name"]] = layer["line"]
        out.update(_layer_lines(layer.get("children", [])))
    return out


def _hint(summary: str) -> str | None:
    lowered = summary.lower()
    if "out of memory" in lowered:
        return "reduce the batch size (--batch-size) or use --precision bf16"
    return None


def stream_logs(items: Iterator[StreamItem]) -> Iterator[str]:
    for item in items:
        if isinstance(item, LogLine):
            yield item.text


class StoreLedger:
    """Records a backend's paid instances in the job store's ``instances`` table."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self.store = store
        self.job_id = job_id

    def launched(self, provider: str, instance_id: str, hourly_price: float | None) -> int:
        record = self.store.add_instance(
            self.job_id, provider=provider, instance_id=instance_id, hourly_price=hourly_price
        )
        return record.id

    def addressed(self, handle: int, address: str) -> None:
        self.store.update_instance(handle, address=address, status="running")

    def terminated(self, handle: int) -> None:
        self.store.terminate_instance(handle)
