"""The training API the magics wrap: ``run``, ``watch``, ``attach``, ``cancel``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from neural_jupyter.backends import get_backend
from neural_jupyter.backends.base import CostEstimate, RemoteJob, ResourceSpec
from neural_jupyter.compiler import CompiledModel, compile_model
from neural_jupyter.errors import ConfigurationError, JobDetached
from neural_jupyter.jobs.job import Job
from neural_jupyter.jobs.launch import start
from neural_jupyter.jobs.result import TrainingRun
from neural_jupyter.jobs.store import JobStore
from neural_jupyter.paths import jobs_dir
from neural_jupyter.redaction import redact
from neural_jupyter.runtime import data as data_module
from neural_jupyter.runtime.bundle import RunSettings
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


def watch_in_background(job: Job, monitor: str = "auto", show: bool = True) -> MonitorBase | None:
    """A live widget fed from a thread while the kernel stays free (``--no-wait``)."""
    view = make_monitor(job, monitor)
    if not isinstance(view, WidgetMonitor):
        return None
    view._external_cancel = job.cancel
    if show:
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


# --- remote submission -------------------------------------------------------------------------
COST_CONFIRM_THRESHOLD = 5.0  # USD; above it a submit needs yes=True (--yes) or a click
PAID_PLATFORMS = frozenset({"sagemaker", "vertex", "azureml", "databricks"})


def idempotency_key(
    platform: str,
    model: CompiledModel,
    dataset: data_module.Dataset,
    settings: RunSettings,
    resources: ResourceSpec,
) -> str:
    """Same model, data, settings and resources on the same platform → the same key, so a
    re-run cell finds the job it already submitted instead of paying for a second one."""
    payload = json.dumps(
        {
            "platform": platform,
            "source": model.source,
            "network": model.name,
            "framework": model.backend,
            "hparams": model.hparams,
            "settings": dataclasses.asdict(settings),
            "resources": resources.public(),
            "data": dataset.fingerprint(),
        },
        sort_keys=True,
        default=str,
    )
    return f"{platform}-{hashlib.sha256(payload.encode()).hexdigest()[:20]}"


@dataclasses.dataclass
class SubmitPlan:
    """What a submit would do: the exact request (redacted), the bundle, the cost."""

    platform: str
    model: str
    request: dict[str, Any]
    cost: CostEstimate | None
    idempotency_key: str
    data: str
    existing_job: str | None = None

    def __str__(self) -> str:
        lines = [
            f"Dry run: {self.model} on {self.platform} (nothing was sent)",
            f"  data: {self.data}",
            f"  idempotency key: {self.idempotency_key}",
        ]
        if self.existing_job:
            lines.append(f"  already submitted as job {self.existing_job}")
        lines.append(f"  cost: {self.cost if self.cost else 'no platform charge'}")
        lines.append("  request:")
        lines.extend(
            "    " + line for line in json.dumps(self.request, indent=2, default=str).splitlines()
        )
        return redact("\n".join(lines))

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))


def plan_submission(
    model: CompiledModel | str,
    data: Any = None,
    *,
    platform: str,
    resources: ResourceSpec | None = None,
    val: Any = None,
    target: str | None = None,
    namespace: Mapping[str, Any] | None = None,
    new: bool = False,
    store: JobStore | None = None,
    **overrides: Any,
) -> tuple[SubmitPlan, CompiledModel, data_module.Dataset, RunSettings, ResourceSpec]:
    """Everything about a submission short of sending it (validated)."""
    compiled = as_compiled(model)
    resources = (resources or ResourceSpec()).validated()
    runner = get_backend(platform)
    dataset = data_module.resolve(compiled.spec, data, val=val, target=target, namespace=namespace)
    settings = RunSettings.from_spec(compiled.spec, max_seconds=resources.max_seconds, **overrides)
    key = idempotency_key(platform, compiled, dataset, settings, resources)
    if new:
        key += "-" + uuid.uuid4().hex[:8]
    existing = (store or JobStore()).find(key)
    remote = RemoteJob("(new job)", jobs_dir() / "(new job)", None, {"idempotency_key": key})
    request = redact_mapping(runner.plan(remote, resources))
    plan = SubmitPlan(
        platform,
        compiled.name,
        request,
        runner.estimate_cost(resources),
        key,
        dataset.description,
        existing.id if existing else None,
    )
    return plan, compiled, dataset, settings, resources


def submit(
    model: CompiledModel | str,
    data: Any = None,
    *,
    platform: str,
    instance: str | None = None,
    gpus: int | None = None,
    gpu_type: str | None = None,
    max_hours: float | None = None,
    spot: bool = False,
    region: str | None = None,
    extra: Mapping[str, Any] | None = None,
    val: Any = None,
    target: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    precision: str | None = None,
    debug: bool = False,
    dry_run: bool = False,
    yes: bool = False,
    new: bool = False,
    wait: bool = True,
    monitor: str = "auto",
    name: str | None = None,
    namespace: Mapping[str, Any] | None = None,
    store: JobStore | None = None,
    confirm_above: float = COST_CONFIRM_THRESHOLD,
) -> SubmitPlan | Job | TrainingRun:
    """Send a training job to ``platform`` (``ssh``, ``sagemaker``...).

    ``dry_run`` returns the ``SubmitPlan`` (exact request, redacted, and cost) and sends
    nothing. A job whose budget (``max_hours`` × price) is above ``confirm_above`` dollars
    needs ``yes=True``. Submitting the same thing again returns the job already submitted
    (``new=True`` submits another).
    """
    store = store or JobStore()
    resources = ResourceSpec(
        instance_type=instance,
        gpus=gpus or 0,
        gpu_type=gpu_type,
        max_runtime_hours=max_hours,
        spot=spot,
        region=region,
        extra=dict(extra or {}),
    )
    plan, compiled, dataset, settings, resources = plan_submission(
        model,
        data,
        platform=platform,
        resources=resources,
        val=val,
        target=target,
        namespace=namespace,
        new=new,
        store=store,
        epochs=epochs,
        batch_size=batch_size,
        precision=precision,
        debug_every=DEFAULT_DEBUG_EVERY if debug else None,
    )
    if dry_run:
        return plan
    if (
        plan.existing_job is None
        and plan.cost is None
        and platform in PAID_PLATFORMS
        and instance
        and not yes
    ):
        raise ConfigurationError(
            f"no list price is known for {instance} on {platform}, so the cost cannot be "
            "checked against the confirmation threshold",
            hint="add --yes (yes=True) to submit anyway",
        )
    if plan.existing_job is None and plan.cost and plan.cost.total_usd > confirm_above and not yes:
        raise ConfigurationError(
            f"this job may cost up to ${plan.cost.total_usd:.2f} ({plan.cost}), above the "
            f"${confirm_above:.2f} confirmation threshold",
            hint="add --yes (yes=True) to submit, or lower --max-hours; "
            "%config NeuralMagics.confirm_cost_above sets the threshold",
        )
    get_backend(platform).check_credentials()
    job = start(
        compiled,
        dataset,
        settings,
        backend=platform,
        resources=resources,
        name=name,
        idempotency_key=plan.idempotency_key,
        store=store,
    )
    if plan.existing_job:
        print(
            f"{compiled.name} was already submitted as job {job.id} "
            f"({job.refresh().status.value}); showing it (new=True / --new submits again)"
        )
    if not wait:
        if monitor != "none":
            watch_in_background(job, monitor)
        return job
    return watch(job, monitor)


def redact_mapping(value: Any) -> Any:
    """A copy of a request with secret-looking values masked (keys hinting at secrets too)."""
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if any(
                word in str(key).lower()
                for word in ("secret", "token", "password", "credential", "authorization")
            ):
                out[key] = "****"
            else:
                out[key] = redact_mapping(item)
        return out
    if isinstance(value, (list, tuple)):
        return [redact_mapping(item) for item in value]
    if isinstance(value, str):
        return redact(value)
    return value
