"""Jobs: the SQLite job store (``neural_jupyter.jobs.store``), job handles, reattaching.

This layer keeps job state and never renders anything; the ``ui`` layer reads from it.

    import neural_jupyter
    for job in neural_jupyter.jobs.list(status="RUNNING"):
        print(job.id, job.status)
    run = neural_jupyter.jobs.get("nj-1a2b").result()   # waits, then the TrainingRun
"""

from __future__ import annotations

import builtins

from neural_jupyter.jobs.job import Job
from neural_jupyter.jobs.result import TrainingRun
from neural_jupyter.jobs.store import JobRecord, JobStatus, JobStore

__all__ = ["Job", "JobRecord", "JobStatus", "JobStore", "TrainingRun", "get", "list"]


def list(
    status: str | JobStatus | None = None,
    backend: str | None = None,
    limit: int | None = None,
    store: JobStore | None = None,
) -> builtins.list[Job]:
    """Jobs in the store, newest first (all kernels, all backends)."""
    store = store or JobStore()
    return [
        Job(record, store) for record in store.list(status=status, backend=backend, limit=limit)
    ]


def get(job_id: str, store: JobStore | None = None) -> Job:
    """The job with this id (a unique prefix is enough)."""
    return Job.load(job_id, store)
