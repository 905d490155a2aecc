"""The training API the magics wrap: ``run``, ``watch``, ``attach``, ``cancel``, ``submit``,
and the sweeps that take model source (``Sweep``, ``ExperimentCoordinator``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from neural_jupyter import deprecation, validation
from neural_jupyter.backends import get_backend, is_paid, require_platform
from neural_jupyter.backends.base import CostEstimate, RemoteJob, ResourceSpec
from neural_jupyter.compiler import CompiledModel, compile_model
from neural_jupyter.deprecation import renamed_parameters
from neural_jupyter.errors import ConfigurationError, JobDetached, NeuralError
from neural_jupyter.jobs import sweeps
from neural_jupyter.jobs.job import Job
from neural_jupyter.jobs.launch import start
from neural_jupyter.jobs.result import TrainingRun
from neural_jupyter.jobs.store import JobStore
from neural_jupyter.paths import jobs_dir
from neural_jupyter.redaction import harvest, redact, redact_value
from neural_jupyter.runtime import data as data_module
from neural_jupyter.runtime.bundle import RunSettings
from neural_jupyter.ui.monitor import MonitorBase, WidgetMonitor, make_monitor
from neural_jupyter.ui.pump import open_pump
from neural_jupyter.ui.views import install_legacy_methods

# CompiledModel.summary(), TrainingRun.plot() & co., deprecated (drawing is ui/'s)
install_legacy_methods(CompiledModel, TrainingRun)

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


@renamed_parameters(backend="platform")
def run(
    model: CompiledModel | str,
    data: Any = None,
    *,
    val: Any = None,
    target: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    platform: str = "local",
    timeout: float | None = None,
    gpus: int | None = None,
    gpu_ids: str | None = None,
    procs_per_node: int = 1,
    precision: str | None = None,
    compile: bool = False,
    channels_last: bool = False,
    data_on_device: str | bool = "auto",
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
    ``"X_train,y_train"`` names looked up in ``namespace``. ``procs_per_node`` above 1 trains
    data-parallel on that many processes of this machine (torchrun; pytorch models).
    ``gpus`` is a number of GPUs (locally the first ``gpus`` this kernel sees; 0: the CPU);
    ``gpu_ids`` chooses this machine's GPUs instead (``"0,1"``, ``CUDA_VISIBLE_DEVICES``).
    ``precision`` ("bf16", "fp16"), ``compile`` (torch.compile), ``channels_last`` (2-D
    convolution models) and ``data_on_device`` ("auto", "on", "off") tune the generated
    PyTorch loop (docs/warm-start.md). Everything is validated before anything starts.
    Ctrl-C while waiting detaches (``JobDetached``); the job keeps running.
    """
    compiled = as_compiled(model)
    gpus, gpu_ids = gpu_request(gpus, gpu_ids, platform)
    resources = ResourceSpec(
        gpus=gpus or 0, gpu_ids=gpu_ids, timeout_seconds=timeout, procs_per_node=procs_per_node
    ).validated()
    get_backend(platform).check_layout(resources, compiled.framework)
    settings = RunSettings.from_spec(
        compiled.spec,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        precision=precision,
        compile=compile,
        channels_last=channels_last,
        data_on_device=data_on_device,
        max_seconds=timeout,
        debug_every=(debug_every or DEFAULT_DEBUG_EVERY) if debug else None,
        resume=resume or None,
    ).for_model(compiled.spec, compiled.framework)
    dataset = data_module.resolve(compiled.spec, data, val=val, target=target, namespace=namespace)
    job = start(
        compiled, dataset, settings, platform=platform, resources=resources, name=name, store=store
    )
    if not wait:
        if monitor != "none":
            watch_in_background(job, monitor)
        return job
    return watch(job, monitor)


def gpu_request(
    gpus: int | str | None, gpu_ids: str | None, platform: str
) -> tuple[int | None, str | None]:
    """``(count, ids)`` for a run: ``gpus`` is a count, ``gpu_ids`` this machine's devices.

    A string ``gpus`` (``"0,1"``: device ids, as ``gpus`` meant before it became a count)
    still works as ``gpu_ids``, with a warning. Locally a count becomes ids (the first
    ``gpus`` visible GPUs); ids are validated here, before anything starts."""
    from neural_jupyter.runtime.gpu_settings import ids_for_count, job_environment

    if isinstance(gpus, str):
        if gpu_ids is not None:
            raise ConfigurationError("give gpus= (a count) or gpu_ids=, not both")
        deprecation.warn(
            f"gpus={gpus!r} (GPU ids)",
            f"gpu_ids={gpus!r}",
            "gpus= is now a number of GPUs: gpus=1 means one GPU, not GPU 1",
            stacklevel=3,
        )
        gpus, gpu_ids = None, gpus
    if gpus is not None:
        validation.integer("--gpus", gpus, 0, validation.MAX_GPUS)
        if gpu_ids is not None:
            raise ConfigurationError(
                "give --gpus (how many GPUs) or --gpu-ids (which ones), not both"
            )
    if gpu_ids is not None:
        if platform != "local":
            raise ConfigurationError(
                f"--gpu-ids chooses GPUs of this machine; on {platform} ask for a number of "
                "GPUs with --gpus N"
            )
        job_environment(gpu_ids)  # validates the ids
    elif gpus is not None and platform == "local":
        gpu_ids = ids_for_count(gpus)
    return gpus, gpu_ids


class Sweep(sweeps.Sweep):
    __doc__ = (
        f"{sweeps.Sweep.__doc__}\n    Here ``model`` may also be model source (compiled first)."
    )

    def __init__(self, model: CompiledModel | str, data: Any, **options: Any) -> None:
        super().__init__(as_compiled(model), data, **options)


class ExperimentCoordinator(sweeps.ExperimentCoordinator):
    __doc__ = (
        f"{sweeps.ExperimentCoordinator.__doc__}\n    Here a stage's models may also be model "
        "source (compiled first)."
    )

    def __init__(self, stages: Sequence[sweeps.Stage], **options: Any) -> None:
        compiled = [
            dataclasses.replace(stage, models=[as_compiled(m) for m in stage.models])
            for stage in stages
        ]
        super().__init__(compiled, **options)


def sweep(
    model: CompiledModel | str,
    data: Any = None,
    *,
    monitor: str = "auto",
    show_result: bool = True,
    **options: Any,
) -> sweeps.SweepResult:
    """Run a ``Sweep`` (``options`` are its arguments) with a live view of its trials, as
    ``%neural_sweep`` does: a widget where a Jupyter front-end is likely, text otherwise
    (``monitor``: auto, widget, text or none); then, with ``show_result``, the table of
    results (the best configuration first)."""
    from IPython.display import display

    from neural_jupyter.ui.monitor import widget_frontend
    from neural_jupyter.ui.sweep_monitor import (
        SweepResultView,
        TextSweepMonitor,
        WidgetSweepMonitor,
    )

    use_widget = monitor == "widget" or (monitor == "auto" and widget_frontend())
    view = (
        WidgetSweepMonitor() if use_widget else (TextSweepMonitor() if monitor != "none" else None)
    )
    runner = Sweep(model, data, on_update=view, **options)
    if use_widget:
        display(view)
    result = runner.run()
    if show_result:
        display(SweepResultView(result, include_trials=not use_widget))
    return result


def watch(job: Job, monitor: str = "auto", grace: float = GRACE_SECONDS) -> Any:
    """Follow ``job`` to its end with a live monitor; return its result (``Job.result()``)
    or raise.

    Raises ``JobDetached`` on Ctrl-C or the Detach button (the job keeps running), and
    ``JobFailed``/``JobTimeout``/``JobCancelled`` when it ends badly (the Cancel button
    included). While the cell waits, the widget monitor's own clicks are let through
    (``ui/pump.py``); where the kernel cannot do that, the monitor says so instead of showing
    buttons that would not act.
    """
    view = make_monitor(job, monitor) if monitor != "none" else None
    pump = open_pump() if isinstance(view, WidgetMonitor) else None
    if isinstance(view, WidgetMonitor):
        view.set_buttons_live(pump is not None)
        if pump is not None:
            pump.watch(view.widget)
    shown = False
    began = time.monotonic()
    cancelled = False
    try:
        for item in job.follow():
            if view is None:
                continue
            if not shown and (item is not None or time.monotonic() - began > grace):
                shown = _show(view)
            view.feed(item)
            if pump is not None:
                pump.poll()
            if view.cancel_requested and not cancelled:
                cancelled = True
                job.cancel()  # stops the process tree / remote job and records CANCELLED
            if view.detach_requested:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        _stop_watching(job, view, cancel=cancelled or bool(view and view.cancel_requested))
    finally:
        if pump is not None:
            pump.close()
    if view is not None:
        if not shown:
            _show(view)
        view.finish(job.record.status.value, job.record.error or "")
    return job.outcome()


def _stop_watching(job: Job, view: MonitorBase | None, cancel: bool) -> None:
    """After Ctrl-C / an interrupt / Detach: leave the store and the monitor telling the truth.

    A cancel that was asked for is carried through (its process gone, CANCELLED recorded)
    before the monitor shows the final state; otherwise the job keeps running and the
    monitor says DETACHED. Raises ``JobCancelled`` or ``JobDetached``.
    """
    if cancel:
        try:
            record = job.cancel()
        except (NeuralError, KeyboardInterrupt):
            record = job.store.get(job.id)
        if record.status.is_terminal:
            if view is not None:
                view.finish(record.status.value, record.error or "")
            job.record = record
            job.raise_for_status()
    if view is not None:
        view.finish("DETACHED", "the job keeps running")
    raise JobDetached(job.id) from None


def _show(view: MonitorBase) -> bool:
    if isinstance(view, WidgetMonitor):
        from IPython.display import display

        display(view)
    return True


def watch_in_background(job: Job, monitor: str = "auto", show: bool = True) -> MonitorBase | None:
    """A live widget fed from a thread while the kernel stays free (``--no-wait``)."""
    view = make_monitor(job, monitor, on_cancel=job.cancel)
    if not isinstance(view, WidgetMonitor):
        return None
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


def attach(job_id: str, monitor: str = "auto", store: JobStore | None = None) -> Any:
    """Watch an existing job again (also from a new kernel) until it ends."""
    return watch(Job.load(job_id, store), monitor)


def cancel(job_id: str, store: JobStore | None = None) -> Job:
    """Stop a job for good; works in any state (a launch that never completed included)."""
    job = Job.load(job_id, store)
    job.cancel()
    return job


def remove(
    job_id: str, *, force: bool = False, keep_files: bool = False, store: JobStore | None = None
) -> None:
    """Remove a job from the store (``neural_jupyter.jobs.remove``); ``%neural_rm``."""
    from neural_jupyter import jobs

    jobs.remove(job_id, force=force, keep_files=keep_files, store=store)


def cancel_report(job_id: str, store: JobStore | None = None) -> str:
    """Cancel a job and say what happened, in words (``%neural_cancel``)."""
    job = Job.load(job_id, store)
    # a row never handed to its platform has nothing to reconcile: cancel it as it stands
    before = job.refresh().status if job.record.remote_id else job.record.status
    if before.is_terminal:
        return (
            f"job {job.id} already ended ({before.value}); there is nothing to cancel. "
            "%neural_jobs --status running lists the jobs still running"
        )
    record = job.cancel()
    return f"job {job.id} cancelled: {record.status.value}"


# --- remote submission -------------------------------------------------------------------------
COST_CONFIRM_THRESHOLD = 5.0  # USD; above it a submit needs yes=True (--yes) or a click


# settings added after jobs were first submitted: at their default they stay out of the key,
# so a cell submitted before they existed still finds its job
_KEY_NEUTRAL_AT_DEFAULT = {"compile": False, "channels_last": False, "data_on_device": "auto"}


def _key_settings(settings: RunSettings) -> dict[str, Any]:
    values = dataclasses.asdict(settings)
    for name, default in _KEY_NEUTRAL_AT_DEFAULT.items():
        if values.get(name) == default:
            values.pop(name, None)
    return values


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
            "framework": model.framework,
            "hparams": model.hparams,
            "settings": _key_settings(settings),
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
    """Everything about a submission short of sending it (validated).

    A missing SDK for ``platform`` is reported first (``MissingDependencyError``)."""
    require_platform(platform)
    compiled = as_compiled(model)
    resources = (resources or ResourceSpec()).validated()
    runner = get_backend(platform)
    runner.check_layout(resources, compiled.framework)
    settings = RunSettings.from_spec(
        compiled.spec, max_seconds=resources.max_seconds, **overrides
    ).for_model(compiled.spec, compiled.framework)
    dataset = data_module.resolve(compiled.spec, data, val=val, target=target, namespace=namespace)
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
    nodes: int = 1,
    procs_per_node: int = 1,
    extra: Mapping[str, Any] | None = None,
    val: Any = None,
    target: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    precision: str | None = None,
    compile: bool = False,
    channels_last: bool = False,
    data_on_device: str | bool = "auto",
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
    (``new=True`` submits another). ``nodes × procs_per_node`` above 1 trains data-parallel
    under torchrun on the platforms that launch it (docs/distributed.md). ``precision``,
    ``compile``, ``channels_last`` and ``data_on_device`` tune the generated PyTorch loop, as
    for ``run``.
    """
    require_platform(platform)
    extra = validation.platform_options(extra)
    for value in extra.values():
        harvest(value)  # a token inside a setup command or URL is masked on its own too
    validation.number("confirm_above", confirm_above, 0.0, 1e9)
    store = store or JobStore()
    resources = ResourceSpec(
        instance_type=instance,
        gpus=gpus or 0,
        gpu_type=gpu_type,
        max_runtime_hours=max_hours,
        spot=spot,
        region=region,
        nodes=nodes,
        procs_per_node=procs_per_node,
        extra=extra,
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
        compile=compile,
        channels_last=channels_last,
        data_on_device=data_on_device,
        debug_every=DEFAULT_DEBUG_EVERY if debug else None,
    )
    if dry_run:
        return plan
    check_cost(plan.cost, plan.existing_job, platform, instance, yes, confirm_above, resources)
    get_backend(platform).check_credentials()
    job = start(
        compiled,
        dataset,
        settings,
        platform=platform,
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


def check_cost(
    cost: CostEstimate | None,
    existing_job: str | None,
    platform: str,
    instance: str | None,
    yes: bool,
    confirm_above: float,
    resources: ResourceSpec | None = None,
) -> None:
    """Refuse (``ConfigurationError``) a new job whose budget is above ``confirm_above``
    dollars, or whose price is unknown on a paid platform, unless ``yes``."""
    if existing_job is not None or yes:
        return
    if cost is None and is_paid(platform, resources) and instance:
        raise ConfigurationError(
            f"no list price is known for {instance} on {platform}, so the cost cannot be "
            "checked against the confirmation threshold",
            hint="add --yes (yes=True) to submit anyway",
        )
    if cost and cost.total_usd > confirm_above:
        raise ConfigurationError(
            f"this job may cost up to ${cost.total_usd:.2f} ({cost}), above the "
            f"${confirm_above:.2f} confirmation threshold",
            hint="add --yes (yes=True) to submit, or lower --max-hours; "
            "%config NeuralMagics.confirm_cost_above sets the threshold",
        )


def redact_mapping(value: Any) -> Any:
    """A copy of a request with secret-looking values masked (keys hinting at secrets too)."""
    return redact_value(value)
