"""What a user-code job gives back, and the error its code raised.

A function job returns its value, a cell job a dict of its outputs, a script job a
``ScriptRun`` (its outputs folder, the epochs it reported). When the code raised, the runner
pickled the exception with its traceback into ``output/result.pkl``; ``raise_code_error``
raises it here as ``RemoteError`` (a ``JobFailed``), with the original exception as its
cause when it can be rebuilt in this process. Where a platform keeps no outputs of a failed
job (SageMaker uploads ``model.tar.gz`` only on success), the runner's ``error`` event in
the job's log says the same (type, message, traceback), without the exception object.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neural_jupyter.errors import JobError, RemoteError
from neural_jupyter.jobs.store import JobRecord
from neural_jupyter.runtime.code_bundle import CODE_KINDS
from neural_jupyter.runtime.tail import iter_lines

if TYPE_CHECKING:
    from neural_jupyter.jobs.job import Job

RESULT_FILE = Path("output") / "result.pkl"
HINTS = {
    "MissingOutputError": "assign the name in the cell, or leave it out of --outputs",
    "ModuleNotFoundError": "the job imports only what its requirements install: add the "
    "package to requirements=[...] (--requirements)",
    "NameError": "a cell job sees only the names passed with --inputs (inputs=[...]); a "
    "function sees its arguments, globals and closure",
}


def kind_of(record: JobRecord) -> str:
    """``model`` or the kind of user code the job runs."""
    return str(record.config.get("kind", "model"))


def is_code_job(record: JobRecord) -> bool:
    return kind_of(record) in CODE_KINDS


def read_result(bundle: Path, job_id: str) -> dict[str, Any] | None:
    """The runner's record of the outcome (None if the job wrote none)."""
    path = bundle / RESULT_FILE
    if not path.exists():
        return None
    try:
        return pickle.loads(path.read_bytes())
    except Exception as exc:
        raise JobError(
            f"job {job_id} finished, but its result cannot be loaded in this notebook: "
            f"{type(exc).__name__}: {exc}",
            job_id=job_id,
            hint="the value's package must be installed here too, at a compatible version",
        ) from exc


def last_error_event(stdout: Path) -> dict[str, Any] | None:
    """The runner's last ``error`` event in a job's stdout log (None if there is none)."""
    found = None
    for line in iter_lines(stdout):
        if line.startswith('{"event": "error"'):
            try:
                found = json.loads(line)
            except ValueError:
                continue
    return found


def raise_code_error(job: Job) -> None:
    """Raise ``RemoteError`` if the job's code raised (else return)."""
    result = read_result(job.bundle_dir, job.id)
    if result is None and kind_of(job.record) in ("function", "cell"):
        result = last_error_event(job.files.stdout)
        if result is None or result.get("type") == "TimeLimit":
            return
        result = {"ok": False, **result}
    if result is None or result.get("ok", True):
        return
    exc_type = str(result.get("type", "Exception"))
    error = RemoteError(
        f"job {job.id} ({job.name}) failed: {exc_type}: {result.get('message', '')}",
        job_id=job.id,
        exc_type=exc_type,
        remote_traceback=str(result.get("traceback", "")),
        exception=result.get("exception"),
        hint=HINTS.get(exc_type),
    )
    raise error from result.get("exception")


@dataclass
class ScriptRun:
    """A finished script job: where its outputs came back to, and what it reported."""

    job_id: str
    name: str
    status: str
    outputs: Path | None
    directory: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    def files(self) -> list[Path]:
        """Every file the script left in its outputs folder."""
        if self.outputs is None:
            return []
        return sorted(path for path in self.outputs.rglob("*") if path.is_file())

    def __repr__(self) -> str:
        where = f"outputs in {self.outputs}" if self.outputs else "no outputs"
        return f"<ScriptRun {self.job_id} {self.name} {self.status}: {where}>"


def load_code_result(job: Job) -> Any:
    """The value (function), outputs dict (cell) or ``ScriptRun`` (script) of a finished job."""
    record = job.record
    kind = kind_of(record)
    if kind == "script":
        outputs = job.bundle_dir / "output" / Path(record.config.get("outputs", "outputs")).name
        return ScriptRun(
            job_id=record.id,
            name=record.name,
            status=record.status.value,
            outputs=outputs if outputs.is_dir() else None,
            directory=job.bundle_dir,
            history=epoch_history(job.directory / "stdout.log"),
            metrics=dict(record.metrics),
        )
    result = read_result(job.bundle_dir, job.id)
    if result is None:
        raise JobError(
            f"job {job.id} succeeded but its result did not come back "
            f"(no {RESULT_FILE} in {job.bundle_dir})",
            job_id=job.id,
        )
    return result["value"] if kind == "function" else dict(result["outputs"])


def epoch_history(stdout: Path) -> list[dict[str, Any]]:
    """The epochs a job reported (``epoch`` events in its stdout), in order."""
    history = []
    for line in iter_lines(stdout):
        if line.startswith('{"event": "epoch"'):
            event = json.loads(line)
            history.append({"epoch": event.get("epoch"), **(event.get("metrics") or {})})
    return history
