"""Jobs: the SQLite job store (``neural_jupyter.jobs.store``), job handles, reattaching.

This layer keeps job state and never renders anything; the ``ui`` layer reads from it.

    import neural_jupyter
    for job in neural_jupyter.jobs.list(status="RUNNING"):
        print(job.id, job.status)
    run = neural_jupyter.jobs.get("nj-1a2b").result()   # waits, then the TrainingRun
    neural_jupyter.jobs.remove("nj-1a2b")                # the row and its local files
"""

from __future__ import annotations

import builtins
import contextlib
import shutil
from pathlib import Path

from neural_jupyter.deprecation import renamed_parameters
from neural_jupyter.errors import JobError, NeuralError
from neural_jupyter.jobs.job import Job
from neural_jupyter.jobs.result import TrainingRun
from neural_jupyter.jobs.store import JobRecord, JobStatus, JobStore

__all__ = ["Job", "JobRecord", "JobStatus", "JobStore", "TrainingRun", "get", "list", "remove"]


@renamed_parameters(backend="platform")
def list(
    status: str | JobStatus | None = None,
    platform: str | None = None,
    limit: int | None = None,
    store: JobStore | None = None,
    reconcile: bool = True,
) -> builtins.list[Job]:
    """Jobs in the store, newest first (all kernels, all platforms; or those on ``platform``).

    With ``reconcile`` (the default) every unfinished job on this machine (local ones, and
    any whose launch never completed) is first checked against its process and its own
    event log, so a job that ended while nobody watched is listed as ended, with its real
    start and end times. A damaged row is listed too (``record.damage`` says what is wrong).
    """
    store = store or JobStore()
    if reconcile:
        for record in store.list(status=[s for s in JobStatus if not s.is_terminal]):
            if record.platform == "local" or record.remote_id is None:
                with contextlib.suppress(NeuralError, OSError):
                    Job(record, store).refresh()
    return [
        Job(record, store) for record in store.list(status=status, platform=platform, limit=limit)
    ]


def get(job_id: str, store: JobStore | None = None) -> Job:
    """The job with this id (a unique prefix is enough)."""
    return Job.load(job_id, store)


def remove(
    job_id: str, *, force: bool = False, keep_files: bool = False, store: JobStore | None = None
) -> JobRecord:
    """Delete a job's row from the store (and its local directory unless ``keep_files``).

    A job that may still be running is refused unless ``force``, which cancels it first. Any
    row can be removed, a damaged one or one whose launch never completed included. Returns
    the record as it was.
    """
    store = store or JobStore()
    job = Job.load(job_id, store)
    record = job.refresh() if not job.record.damage else job.record
    if not record.status.is_terminal and not record.damage:
        if not force and record.remote_id is not None:
            raise JobError(
                f"job {record.id} is {record.status.value}; it may still be running",
                job_id=record.id,
                hint=f"%neural_cancel {record.id} first, or %neural_rm {record.id} --force "
                "(cancels it, then removes it)",
            )
        record = job.cancel()
    store.delete(record.id)
    if not keep_files and record.job_dir:
        directory = Path(record.job_dir)
        from neural_jupyter.paths import jobs_dir

        # only a directory the store itself made, under the jobs directory, is deleted
        if directory.parent.resolve() == jobs_dir().resolve() and directory.name == record.id:
            shutil.rmtree(directory, ignore_errors=True)
    return record
