"""Starting a job: record it, write its bundle, hand it to the backend (no display)."""

from __future__ import annotations

import dataclasses
import uuid

from neural_jupyter.backends import get_backend
from neural_jupyter.backends.base import RemoteJob, ResourceSpec
from neural_jupyter.compiler import CompiledModel
from neural_jupyter.jobs.job import Job, StoreLedger
from neural_jupyter.jobs.store import JobStatus, JobStore
from neural_jupyter.paths import jobs_dir
from neural_jupyter.runtime import data as data_module
from neural_jupyter.runtime.bundle import RunSettings, build_bundle


def start(
    model: CompiledModel,
    dataset: data_module.Dataset,
    settings: RunSettings,
    *,
    backend: str = "local",
    resources: ResourceSpec | None = None,
    name: str | None = None,
    idempotency_key: str | None = None,
    store: JobStore | None = None,
    sweep_id: str | None = None,
) -> Job:
    """Record a job, write its bundle and hand it to the backend. Returns at once.

    With an ``idempotency_key`` seen before, returns that job instead of starting another.
    """
    store = store or JobStore()
    runner = get_backend(backend)
    resources = resources or ResourceSpec()
    config = {
        "hparams": model.hparams,
        "framework": model.backend,
        "data": dataset.description,
        "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k != "extra"},
        "resources": resources.public(),
    }
    record, created = store.create_or_get(
        idempotency_key=idempotency_key or f"{backend}-{uuid.uuid4().hex}",
        name=name or model.name,
        backend=backend,
        model_name=model.name,
        config=config,
        sweep_id=sweep_id,
    )
    if not created:
        return Job(record, store)
    directory = jobs_dir() / record.id
    record = store.update(record.id, job_dir=str(directory))
    try:
        bundle = build_bundle(
            model.spec,
            dataset,
            directory / "bundle",
            settings,
            job_id=record.id,
            backend=model.backend,
        )
        remote = RemoteJob(
            record.id,
            directory,
            None,
            {"idempotency_key": record.idempotency_key},
            StoreLedger(store, record.id),
        )
        submission = runner.submit(bundle, remote, resources)
    except BaseException as exc:
        store.set_status(record.id, JobStatus.FAILED, error=f"not started: {exc}"[:500])
        raise
    config["remote"] = dict(submission.details)
    record = store.update(record.id, remote_id=submission.remote_id, config=config)
    return Job(record, store)
