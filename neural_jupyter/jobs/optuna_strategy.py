"""The Optuna strategy: TPE sampling and median pruning on per-epoch metrics (Optuna is an
optional extra; we do not write our own optimiser). The study lives in SQLite next to the
sweep, so re-running the sweep continues it."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from neural_jupyter.errors import MissingDependencyError
from neural_jupyter.jobs.trial import Trial
from neural_jupyter.paths import home

if TYPE_CHECKING:  # pragma: no cover
    from neural_jupyter.jobs.space import Dimension
    from neural_jupyter.jobs.sweeps import Sweep


def _suggest(trial: Any, dimension: Dimension) -> Any:
    if dimension.kind == "choice" and dimension.parts:
        # a choice among search spaces: first which option, then a value inside it
        pick = trial.suggest_categorical(f"{dimension.name}:option", list(range(dimension.options)))
        if pick < len(dimension.values):
            return dimension.values[pick]
        return _suggest(trial, dimension.parts[pick - len(dimension.values)])
    if dimension.kind == "choice":
        return trial.suggest_categorical(dimension.name, list(dimension.values))
    log = dimension.kind == "log_range"
    if dimension.integer:
        return trial.suggest_int(
            dimension.name,
            int(dimension.low),
            int(dimension.high),
            step=int(dimension.step or 1),
            log=log,
        )
    step = None if log else dimension.step
    return trial.suggest_float(dimension.name, dimension.low, dimension.high, step=step, log=log)


def run_optuna(sweep: Sweep) -> None:
    try:
        import optuna
    except ImportError:
        raise MissingDependencyError("optuna", "optuna", "The optuna sweep strategy") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = home() / "sweeps" / sweep.id
    folder.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=sweep.id,
        storage=f"sqlite:///{folder / 'optuna.db'}",
        load_if_exists=True,
        direction="maximize" if sweep.mode == "max" else "minimize",
        sampler=optuna.samplers.TPESampler(seed=sweep.sampler_seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for past in study.trials:
        if past.state in finished:
            trial = Trial(
                len(sweep.trials),
                dict(past.user_attrs.get("params") or past.params),
                sweep.seeds[0],
                job_id=past.user_attrs.get("job_id"),
                reused=True,
            )
            trial.status = "SUCCEEDED" if past.state == finished[0] else "PRUNED"
            trial.metric = past.value
            sweep.trials.append(trial)
    remaining = (sweep.trials_wanted or 0) - len(sweep.trials)

    def objective(optuna_trial: Any) -> float:
        params = {name: _suggest(optuna_trial, dim) for name, dim in sweep.space.dimensions.items()}
        optuna_trial.set_user_attr("params", params)  # the values, whatever optuna drew
        trial = Trial(len(sweep.trials), params, sweep.seeds[0])
        sweep.trials.append(trial)

        def report(job: Any, row: dict[str, Any]) -> bool:
            optuna_trial.set_user_attr("job_id", job.id)
            value = row.get(sweep.metric)
            if not isinstance(value, (int, float)):
                return False
            optuna_trial.report(float(value), int(row["epoch"]))
            return optuna_trial.should_prune()

        sweep.run_trial(trial, report)
        if trial.job_id:
            optuna_trial.set_user_attr("job_id", trial.job_id)
        if trial.status == "PRUNED":
            raise optuna.TrialPruned()
        if trial.metric is None or not math.isfinite(trial.metric):
            raise RuntimeError(f"trial {trial.index} {trial.status}: {trial.error or 'no metric'}")
        return float(trial.metric)

    if remaining > 0:
        study.optimize(objective, n_trials=remaining, n_jobs=sweep.parallel, catch=(RuntimeError,))
