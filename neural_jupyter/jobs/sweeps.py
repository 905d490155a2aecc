"""Sweeps: many trainings of one model over a search space × seeds, on any platform.

Every trial is an ordinary job, keyed by a hash of its full configuration (model source,
hyper-parameters, seed, run settings, data). Running the same sweep again therefore resumes:
finished trials are reused, running ones are re-attached, failed or lost ones are queued
again as a new attempt. A failing trial never stops the sweep; concurrency is bounded by
``parallel`` and by the platform's own limit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from neural_jupyter import validation
from neural_jupyter.backends import get_backend
from neural_jupyter.backends.base import ResourceSpec
from neural_jupyter.deprecation import alias_property, renamed_parameters
from neural_jupyter.errors import ConfigurationError, NeuralError
from neural_jupyter.jobs.job import Job
from neural_jupyter.jobs.launch import TrainableModel, start
from neural_jupyter.jobs.space import SETTING_KEYS, SearchSpace, parse_grid
from neural_jupyter.jobs.storage import Storage, storage_for
from neural_jupyter.jobs.store import JobStatus, JobStore
from neural_jupyter.jobs.trial import Trial
from neural_jupyter.runtime import data as data_module
from neural_jupyter.runtime.bundle import RunSettings

STRATEGIES = ("grid", "random", "optuna")
REUSABLE = (JobStatus.SUCCEEDED,)
ATTACHABLE = (JobStatus.PENDING, JobStatus.RUNNING)


def _hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def best_of(history: Sequence[Mapping[str, Any]], metric: str, mode: str) -> float | None:
    values = [
        h[metric]
        for h in history
        if isinstance(h.get(metric), (int, float)) and math.isfinite(h[metric])
    ]
    if not values:
        return None
    return max(values) if mode == "max" else min(values)


class SweepModel(TrainableModel, Protocol):
    """What a sweep needs of a model (a ``CompiledModel`` is one)."""

    @property
    def source(self) -> str: ...

    @property
    def search_space(self) -> dict[str, Any]: ...

    def with_hparams(self, **values: Any) -> SweepModel: ...


class Sweep:
    """A sweep over ``model``'s search space; ``run()`` returns a ``SweepResult``.

    ``model`` is a compiled model; ``neural_jupyter.Sweep`` takes model source too.
    """

    @renamed_parameters(backend="platform")
    def __init__(
        self,
        model: SweepModel,
        data: Any,
        *,
        strategy: str | None = None,
        trials: int | None = None,
        seeds: int | Sequence[int] = 1,
        parallel: int | None = None,
        platform: str = "local",
        metric: str = "val_loss",
        mode: str | None = None,
        timeout_per_trial: float | None = None,
        name: str | None = None,
        grid: Mapping[str, Sequence[Any]] | Sequence[str] | None = None,
        val: Any = None,
        target: str | None = None,
        namespace: Mapping[str, Any] | None = None,
        resources: ResourceSpec | None = None,
        storage: str | Storage | None = None,
        store: JobStore | None = None,
        sampler_seed: int = 0,
        on_update: Callable[[Sweep, Trial], None] | None = None,
    ) -> None:
        if isinstance(model, str):
            raise ConfigurationError(
                "jobs.sweeps.Sweep takes a compiled model",
                hint="compile it first, or use neural_jupyter.Sweep, which takes model source",
            )
        self.model = model
        from_source = strategy is None and self.model.spec.train.strategy is not None
        # default: the model's own search_method (Neural DSL), else every combination
        strategy = strategy or self.model.spec.train.strategy or "grid"
        if strategy not in STRATEGIES:
            raise ConfigurationError(
                f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}"
            )
        if strategy in ("random", "optuna") and not trials:
            origin = " (the model's search_method)" if from_source else ""
            raise ConfigurationError(
                f"the {strategy} strategy{origin} needs --trials N",
                hint="or --strategy grid to try every combination" if from_source else None,
            )
        trials = validation.optional_integer("--trials", trials, 1, validation.MAX_TRIALS)
        if parallel is not None:
            parallel = validation.integer("--parallel", parallel, 1, validation.MAX_PARALLEL)
        timeout_per_trial = validation.seconds("--timeout-per-trial", timeout_per_trial)
        self.strategy = strategy
        self.trials_wanted = trials
        if isinstance(seeds, (list, tuple, range)):
            self.seeds = [validation.integer("--seeds", s, 0, validation.MAX_SEED) for s in seeds]
        else:
            self.seeds = list(range(validation.integer("--seeds", seeds, 1, validation.MAX_SEEDS)))
        if not self.seeds:
            raise ConfigurationError("--seeds must be at least 1")
        self.platform = platform
        self.metric = metric
        self.mode = mode or ("max" if "accuracy" in metric else "min")
        if self.mode not in ("min", "max"):
            raise ConfigurationError(f"--mode must be min or max, got {self.mode!r}")
        self.timeout = timeout_per_trial
        grid_map = parse_grid(grid) if isinstance(grid, (list, tuple)) else dict(grid or {})
        self.space = SearchSpace(self.model.search_space, grid_map)
        self.sampler_seed = sampler_seed
        self.dataset = data_module.resolve(
            self.model.spec, data, val=val, target=target, namespace=namespace
        )
        self.resources = resources or ResourceSpec(timeout_seconds=timeout_per_trial)
        # at most what the platform runs at once (a Ray cluster: what its resources hold);
        # without --parallel, that many (1 where the platform knows no limit)
        limit = get_backend(platform).capacity(self.resources)
        wanted = parallel if parallel is not None else (limit or 1)
        self.parallel = max(1, min(wanted, limit)) if limit else wanted
        self.store = store or JobStore()
        self.storage = storage_for(storage)
        check = getattr(self.storage, "check", None)
        if callable(check):
            check()  # e.g. S3 credentials, before any trial starts
        self.on_update = on_update
        fingerprint = {
            "source": self.model.source,
            "network": self.model.name,
            "data": self.dataset.fingerprint()[:16],
            "backend": platform,  # the key's first name, kept: a sweep's id must not change
            "strategy": strategy,
            "space": sorted(self.space.dimensions),
            "metric": metric,
            "timeout": timeout_per_trial,
        }
        self.id = name or f"sweep-{_hash(fingerprint)}"
        self.trials: list[Trial] = []
        self._lock = threading.Lock()

    # --- configurations -----------------------------------------------------------------------
    def configurations(self) -> Iterator[dict[str, Any]]:
        if self.strategy == "grid":
            yield from self.space.grid()
        else:
            yield from self.space.random(self.trials_wanted or 1, self.sampler_seed)

    def planned(self) -> list[Trial]:
        trials = []
        for params in self.configurations():
            for seed in self.seeds:
                trials.append(Trial(len(trials), params, seed))
        return trials

    # --- one trial ----------------------------------------------------------------------------
    backend = alias_property("backend", "platform")  # the old word for the platform

    def trial_key(self, trial: Trial, attempt: int) -> str:
        base = _hash({"sweep": self.id, "params": trial.params, "seed": trial.seed})
        return f"{self.id}-{base}" + (f"-r{attempt}" if attempt else "")

    def _compiled(self, trial: Trial) -> tuple[SweepModel, RunSettings]:
        hparams = {k: v for k, v in trial.params.items() if k not in SETTING_KEYS}
        overrides = {k: v for k, v in trial.params.items() if k in SETTING_KEYS}
        model = self.model.with_hparams(**hparams) if hparams else self.model
        settings = RunSettings.from_spec(
            model.spec, seed=trial.seed, max_seconds=self.timeout, **overrides
        )
        return model, settings

    def existing_job(self, trial: Trial) -> Job | None:
        """The latest attempt's job for this trial, re-queuing failed or lost attempts."""
        attempt = 0
        while True:
            record = self.store.find(self.trial_key(trial, attempt))
            if record is None:
                trial.attempt = attempt
                return None
            job = Job(record, self.store)
            if record.remote_id is None and not record.status.is_terminal:
                # created but never handed to the backend: the coordinator stopped in between
                self.store.set_status(
                    record.id, JobStatus.FAILED, error="never started (the sweep was interrupted)"
                )
                attempt += 1
                continue
            status = job.refresh().status
            if status in REUSABLE or status in ATTACHABLE:
                trial.attempt = attempt
                return job
            attempt += 1

    def run_trial(self, trial: Trial, report: Callable[[Job, dict], bool] | None = None) -> Trial:
        started = time.monotonic()
        try:
            job = self.existing_job(trial)
            if job is not None and job.record.status in REUSABLE:
                trial.reused = True
            elif job is None:
                model, settings = self._compiled(trial)
                job = start(
                    model,
                    self.dataset,
                    settings,
                    platform=self.platform,
                    resources=self.resources,
                    name=f"{self.model.name}#{trial.index}",
                    idempotency_key=self.trial_key(trial, trial.attempt),
                    store=self.store,
                    sweep_id=self.id,
                )
            trial.job_id, trial.key = job.id, job.record.idempotency_key or ""
            self._update(trial, "RUNNING")
            if not trial.reused:
                self._follow(job, report)
            record = job.refresh()
            trial.status = record.status.value
            trial.error = record.error
            history = self._history(job)
            trial.metric = best_of(history, self.metric, self.mode)
            if trial.status == "SUCCEEDED" and not trial.reused:
                self._store_artifacts(trial, job)
        except Pruned:
            trial.status = "PRUNED"
        except NeuralError as exc:  # a failing trial never stops the sweep
            trial.status, trial.error = "FAILED", str(exc).splitlines()[0]
        trial.duration = round(time.monotonic() - started, 3)
        self._update(trial, trial.status)
        return trial

    def _follow(self, job: Job, report: Callable[[Job, dict], bool] | None) -> None:
        seen = 0
        for _item in job.follow():
            history = job.progress.history
            if report is not None and len(history) > seen:
                seen = len(history)
                if report(job, history[-1]):
                    job.cancel()
                    raise Pruned()

    @staticmethod
    def _history(job: Job) -> list[dict[str, Any]]:
        path = job.files.history
        if path.exists():
            return json.loads(path.read_text())
        return list(job.progress.history)

    def _store_artifacts(self, trial: Trial, job: Job) -> None:
        for path in (job.files.weights(), job.files.history):
            if path.exists():
                self.storage.put_file(f"{self.id}/{trial.key}/{path.name}", path)

    def _update(self, trial: Trial, status: str) -> None:
        with self._lock:
            trial.status = status
            if self.on_update is not None:
                self.on_update(self, trial)

    # --- the whole sweep ----------------------------------------------------------------------
    def run(self) -> SweepResult:
        if self.strategy == "optuna":
            from neural_jupyter.jobs.optuna_strategy import run_optuna

            run_optuna(self)
        else:
            self.trials = self.planned()
            for trial in self.trials:
                self._update(trial, "QUEUED")
            with ThreadPoolExecutor(
                max_workers=self.parallel, thread_name_prefix=f"{self.id}-trial"
            ) as pool:
                list(pool.map(self.run_trial, self.trials))
        result = SweepResult(self.id, self.metric, self.mode, list(self.trials), self.store)
        self.storage.put_json(f"{self.id}/results.json", result.to_json())
        return result


class Pruned(Exception):
    """A trial stopped early by the search strategy (Optuna's pruner)."""


class SweepResult:
    """Trials with their metric; best configuration; mean ± std over seeds per config."""

    def __init__(
        self,
        sweep_id: str,
        metric: str,
        mode: str,
        trials: list[Trial],
        store: JobStore | None = None,
    ) -> None:
        self.id = sweep_id
        self.metric = metric
        self.mode = mode
        self.trials = trials
        self.store = store

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [t.row(self.metric) for t in self.trials]

    def to_dataframe(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows)

    def _scored(self) -> list[Trial]:
        return [t for t in self.trials if t.status == "SUCCEEDED" and t.metric is not None]

    @property
    def best(self) -> Trial | None:
        scored = self._scored()
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda t: t.metric)

    @property
    def best_config(self) -> dict[str, Any] | None:
        best = self.best
        return dict(best.params) if best else None

    def summary(self) -> list[dict[str, Any]]:
        """One row per configuration: mean and std of the metric over its seeds."""
        groups: dict[str, list[Trial]] = {}
        for trial in self._scored():
            groups.setdefault(json.dumps(trial.params, sort_keys=True, default=str), []).append(
                trial
            )
        rows = []
        for key, trials in groups.items():
            values = [t.metric for t in trials]
            rows.append(
                {
                    **json.loads(key),
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "seeds": len(values),
                }
            )
        rows.sort(key=lambda r: r["mean"], reverse=self.mode == "max")
        return rows

    def best_model(self) -> Any:
        best = self.best
        if best is None:
            raise ConfigurationError("no trial of this sweep succeeded")
        return Job.load(best.job_id, self.store).result().model()

    def to_json(self) -> dict[str, Any]:
        return {
            "sweep": self.id,
            "metric": self.metric,
            "mode": self.mode,
            "trials": self.rows,
            "summary": self.summary(),
            "best": self.best.row(self.metric) if self.best else None,
        }

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for trial in self.trials:
            counts[trial.status] = counts.get(trial.status, 0) + 1
        best = self.best
        shown = f", best {self.metric}={best.metric:.4g} with {best.params}" if best else ""
        return f"<SweepResult {self.id}: {counts}{shown}>"


@dataclasses.dataclass
class Stage:
    """One stage of an experiment: architectures × data sets × grid × seeds."""

    name: str
    models: Sequence[SweepModel]
    datasets: Sequence[Any]
    grid: Mapping[str, Sequence[Any]] = dataclasses.field(default_factory=dict)
    seeds: int | Sequence[int] = 1
    strategy: str = "grid"
    trials: int | None = None
    platform: str = "local"
    gpu_type: str | None = None
    timeout_per_trial: float | None = None
    parallel: int = 1

    backend = alias_property("backend", "platform", settable=True)


# ``Stage(..., backend=...)``: the old keyword still works, with a warning
Stage.__init__ = renamed_parameters(backend="platform")(Stage.__init__)  # type: ignore[method-assign]


class ExperimentCoordinator:
    """Runs stages in order; each (architecture, data set) pair of a stage is one sweep.

    A stage's models are compiled models (``neural_jupyter.ExperimentCoordinator`` compiles
    model source first).
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        *,
        metric: str = "val_loss",
        mode: str | None = None,
        storage: str | Storage | None = None,
        store: JobStore | None = None,
        namespace: Mapping[str, Any] | None = None,
    ) -> None:
        self.stages = list(stages)
        self.metric, self.mode = metric, mode
        self.storage, self.store, self.namespace = storage, store, namespace

    def run(self) -> dict[str, list[SweepResult]]:
        results: dict[str, list[SweepResult]] = {}
        for stage in self.stages:
            results[stage.name] = []
            for m_index, model in enumerate(stage.models):
                for d_index, data in enumerate(stage.datasets):
                    sweep = Sweep(
                        model,
                        data,
                        strategy=stage.strategy,
                        trials=stage.trials,
                        seeds=stage.seeds,
                        parallel=stage.parallel,
                        platform=stage.platform,
                        metric=self.metric,
                        mode=self.mode,
                        timeout_per_trial=stage.timeout_per_trial,
                        name=f"{stage.name}-m{m_index}-d{d_index}",
                        grid=stage.grid,
                        namespace=self.namespace,
                        resources=ResourceSpec(
                            gpu_type=stage.gpu_type, timeout_seconds=stage.timeout_per_trial
                        ),
                        storage=self.storage,
                        store=self.store,
                    )
                    results[stage.name].append(sweep.run())
        return results
