"""The training API the magics wrap: ``run``, ``watch``, ``attach``, ``cancel``."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from neural_jupyter.backends import get_backend
from neural_jupyter.backends.base import RemoteJob, ResourceSpec
from neural_jupyter.compiler import CompiledModel, compile_model
from neural_jupyter.errors import ConfigurationError, JobDetached
from neural_jupyter.jobs.job import Job
from neural_jupyter.jobs.result import TrainingRun
from neural_jupyter.jobs.store import JobStatus, JobStore
from neural_jupyter.paths import jobs_dir
from neural_jupyter.runtime import data as data_module
from neural_jupyter.runtime.bundle import RunSettings, build_bundle
from neural_jupyter.ui.monitor import MonitorBase, WidgetMonitor, make_monitor
from neural_jupyter.ui.pump import ui_event_pump

DEFAULT_DEBUG_EVERY = 10
GRACE_SECONDS = 0.5


def as_compiled(model: CompiledModel | str) -> CompiledModel:
    if isinstance(model, CompiledModel):
        return model
    if isinstance(model, str):
        return compile_model(model)
    raise ConfigurationError(
        f"expected a CompiledModel or model source, got {type(model).__name__}"
    )


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
        "resources": {k: v for k, v in dataclasses.asdict(resources).items() if k != "extra"},
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
        submission = runner.submit(bundle, RemoteJob(record.id, directory), resources)
    except BaseException as exc:
        store.set_status(record.id, JobStatus.FAILED, error=f"not started: {exc}"[:500])
        raise
    config["remote"] = dict(submission.details)
    record = store.update(record.id, remote_id=submission.remote_id, config=config)
    return Job(record, store)


def run(
    model: CompiledModel | str,
    data: Any = None,
    *,
    val: Any = None,
    target: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    backend: str = "local",
    timeout: float | None = None,
    gpus: str | None = None,
    precision: str | None = None,
    debug: bool = False,
    debug_every: int | None = None,
    resume: bool = False,
    wait: bool = True,
    monitor: str = "auto",
    name: str | None = None,
    namespace: Mapping[str, Any] | None = None,
    store: JobStore | None = None,
) -> TrainingRun | Job:
    """Train ``model`` and return its ``TrainingRun`` (or, with ``wait=False``, its ``Job``).

    ``data`` is an ``(x, y)`` pair, ``"digits"``, ``"synthetic"``, a file path or
    ``"X_train,y_train"`` names looked up in ``namespace``. Everything is validated before
    anything starts. Ctrl-C while waiting detaches (``JobDetached``); the job keeps running.
    """
    compiled = as_compiled(model)
    if gpus is not None:
        from neural_jupyter.runtime.gpu_settings import job_environment

        job_environment(gpus)  # validates the --gpus value before anything starts
    dataset = data_module.resolve(compiled.spec, data, val=val, target=target, namespace=namespace)
    settings = RunSettings.from_spec(
        compiled.spec,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        precision=precision,
        max_seconds=timeout,
        debug_every=(debug_every or DEFAULT_DEBUG_EVERY) if debug else None,
        resume=resume or None,
    )
    resources = ResourceSpec(gpu_ids=gpus, timeout_seconds=timeout)
    job = start(
        compiled, dataset, settings, backend=backend, resources=resources, name=name, store=store
    )
    if not wait:
        if monitor != "none":
            watch_in_background(job, monitor)
        return job
    return watch(job, monitor)


def watch(job: Job, monitor: str = "auto", grace: float = GRACE_SECONDS) -> TrainingRun:
    """Follow ``job`` to its end with a live monitor; return its result or raise.

    Raises ``JobDetached`` on Ctrl-C or the Detach button (the job keeps running), and
    ``JobFailed``/``JobTimeout``/``JobCancelled`` when it ends badly.
    """
    view = make_monitor(job, monitor) if monitor != "none" else None
    shown = False
    began = time.monotonic()
    try:
        with ui_event_pump(isinstance(view, WidgetMonitor)) as pump:
            for item in job.follow():
                if view is None:
                    continue
                if not shown and (item is not None or time.monotonic() - began > grace):
                    shown = _show(view)
                view.feed(item)
                pump()
                if view.cancel_requested and not job.store.get(job.id).status.is_terminal:
                    job.backend.cancel(job.remote())
                    view.cancel_requested = False
                if view.detach_requested:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        if view is not None:
            view.finish("DETACHED", "the job keeps running")
        raise JobDetached(job.id) from None
    if view is not None:
        if not shown:
            _show(view)
        view.finish(job.record.status.value, job.record.error or "")
    job.raise_for_status()
    return TrainingRun.from_directory(job.record, job.bundle_dir)


def _show(view: MonitorBase) -> bool:
    if isinstance(view, WidgetMonitor):
        from IPython.display import display

        display(view)
    return True


def watch_in_background(job: Job, monitor: str = "auto") -> MonitorBase | None:
    """Show a live widget fed from a thread while the kernel stays free (``--no-wait``)."""
    view = make_monitor(job, monitor)
    if not isinstance(view, WidgetMonitor):
        return None
    view._external_cancel = job.cancel
    _show(view)

    def pump() -> None:
        for item in job.follow():
            view.feed(item)
            if view.detach_requested:
                view.finish("DETACHED", "the job keeps running")
                return
        view.finish(job.record.status.value, job.record.error or "")

    threading.Thread(target=pump, name=f"neural-monitor-{job.id}", daemon=True).start()
    return view


def attach(job_id: str, monitor: str = "auto", store: JobStore | None = None) -> TrainingRun:
    """Watch an existing job again (also from a new kernel) until it ends."""
    return watch(Job.load(job_id, store), monitor)


def cancel(job_id: str, store: JobStore | None = None) -> Job:
    job = Job.load(job_id, store)
    job.cancel()
    return job
