"""Starting a job: record it, write its bundle (any kind), hand it to its platform (no display).

A launch that fails before the job starts leaves the row FAILED with the real cause (``no
space left on device writing .../data.npz``), never PENDING; its half-written bundle is
removed first (on a full disk that is what lets the store record the failure). A row whose
launch was cut short (the kernel was killed meanwhile) is recognised later by
``abandoned_launch`` and marked FAILED by ``Job.refresh``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from neural_jupyter.backends import get_backend
from neural_jupyter.backends.base import RemoteJob, ResourceSpec
from neural_jupyter.deprecation import renamed_parameters
from neural_jupyter.dsl.spec import NetworkSpec
from neural_jupyter.errors import JobStoreError, NeuralError
from neural_jupyter.jobs.job import Job, StoreLedger
from neural_jupyter.jobs.launching import launcher, launching
from neural_jupyter.jobs.store import JobRecord, JobStatus, JobStore
from neural_jupyter.paths import jobs_dir
from neural_jupyter.runtime import data as data_module
from neural_jupyter.runtime.bundle import Bundle, RunSettings, build_bundle
from neural_jupyter.runtime.frameworks import require_framework
from neural_jupyter.runtime.jobdir import JobDir


class TrainableModel(Protocol):
    """What starting a training job needs of a model (a ``CompiledModel`` is one): the
    jobs layer takes the network's data, never the compiler."""

    @property
    def spec(self) -> NetworkSpec: ...

    @property
    def name(self) -> str: ...

    @property
    def framework(self) -> str: ...

    @property
    def hparams(self) -> Mapping[str, Any]: ...


@renamed_parameters(backend="platform")
def start(
    model: TrainableModel,
    dataset: data_module.Dataset,
    settings: RunSettings,
    *,
    platform: str = "local",
    resources: ResourceSpec | None = None,
    name: str | None = None,
    idempotency_key: str | None = None,
    store: JobStore | None = None,
    sweep_id: str | None = None,
) -> Job:
    """Record a job, write its bundle and hand it to ``platform``'s backend. Returns at once.

    With an ``idempotency_key`` seen before, returns that job instead of starting another.
    """
    if platform == "local":  # the job trains with this interpreter's framework
        require_framework(model.framework)
    settings.for_model(model.spec, model.framework)
    resources = resources or ResourceSpec()
    get_backend(platform).check_layout(resources, model.framework)
    config = {
        "hparams": model.hparams,
        "framework": model.framework,
        "data": dataset.description,
        "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k != "extra"},
        "resources": resources.public(),
    }

    def build(directory: Path, job_id: str) -> Bundle:
        return build_bundle(
            model.spec, dataset, directory, settings, job_id=job_id, framework=model.framework
        )

    return start_bundle(
        build,
        platform=platform,
        resources=resources,
        name=name or model.name,
        model_name=model.name,
        config=config,
        idempotency_key=idempotency_key,
        store=store,
        sweep_id=sweep_id,
    )


@renamed_parameters(backend="platform")
def start_bundle(
    build: Callable[[Path, str], Bundle],
    *,
    platform: str,
    resources: ResourceSpec,
    name: str,
    model_name: str,
    config: dict[str, Any],
    idempotency_key: str | None = None,
    store: JobStore | None = None,
    sweep_id: str | None = None,
) -> Job:
    """Record a job, let ``build(directory, job_id)`` write its bundle, hand it to the
    platform's backend; any kind of bundle. With an ``idempotency_key`` seen before, returns
    that job."""
    store = store or JobStore()
    runner = get_backend(platform)
    runner.check_layout(resources)
    config = {**config, "launcher": launcher()}
    key = idempotency_key or f"{platform}-{uuid.uuid4().hex}"
    with launching(key):  # from before the row exists: a listing never judges it abandoned
        record, created = store.create_or_get(
            idempotency_key=key,
            name=name,
            platform=platform,
            model_name=model_name,
            config=config,
            sweep_id=sweep_id,
        )
        if not created:
            return Job(record, store)
        return _launch(record, store, runner, build, resources, config)


def _launch(
    record: JobRecord,
    store: JobStore,
    runner: Any,
    build: Callable[[Path, str], Bundle],
    resources: ResourceSpec,
    config: dict[str, Any],
) -> Job:
    directory = jobs_dir() / record.id
    try:
        record = store.update(record.id, job_dir=str(directory))
        bundle = build(JobDir(directory).bundle, record.id)
        details = {"idempotency_key": record.idempotency_key}
        if bundle.kind != "model":  # which image suits it (``Backend.image_row``)
            details.update(kind=bundle.kind, python=bundle.job.get("python"))
        remote = RemoteJob(record.id, directory, None, details, StoreLedger(store, record.id))
        submission = runner.submit(bundle, remote, resources)
    except BaseException as exc:
        _record_failed_launch(store, record.id, directory, exc)
        raise
    config["remote"] = dict(submission.details)
    record = store.update(record.id, remote_id=submission.remote_id, config=config)
    job = Job(record, store)
    if store.get(record.id).status is JobStatus.CANCELLED:
        # cancelled (from another kernel) while it was being launched: stop what started
        with contextlib.suppress(NeuralError):
            runner.cancel(job.remote())
    return job


def _record_failed_launch(
    store: JobStore, job_id: str, directory: os.PathLike[str], exc: BaseException
) -> None:
    """Mark the row FAILED with the real cause; never let a store error hide ``exc``."""
    reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else _cause(exc)
    # a bundle that was never handed over is of no use; on a full disk removing it is what
    # gives the job store room to record the failure
    files = JobDir(Path(directory))
    if not files.process.exists():  # nothing was started
        shutil.rmtree(files.bundle, ignore_errors=True)
    try:
        store.set_status(job_id, JobStatus.FAILED, error=f"not started: {reason}"[:1000])
    except JobStoreError as store_error:
        note = f"the job store could not record the failure either ({store_error.message})"
        if isinstance(exc, NeuralError):
            exc.hint = f"{exc.hint}; {note}" if exc.hint else note
        else:
            exc.add_note(note)


def _cause(exc: BaseException) -> str:
    if isinstance(exc, NeuralError):
        return exc.message
    if isinstance(exc, OSError) and exc.strerror:
        where = f" writing {exc.filename}" if exc.filename else ""
        return f"{exc.strerror.lower()}{where}"
    return f"{type(exc).__name__}: {exc}"
