"""``report(epoch=..., epochs=..., **metrics)``: progress from your own code to the notebook.

This one module is all a job needs to report progress: it uses the standard library only and
is shipped in every user-code bundle, so ``from neural_jupyter import report`` (or
``import neural_jupyter_report``) works in a job where nothing else is installed. In the
notebook, ``neural_jupyter.report`` is this same function.

Inside a job (the runner sets ``NEURAL_JUPYTER_JOB``) each call prints one event line of the
job protocol on stdout, which the notebook's monitor, the job store and the dashboard read.
Outside a job it prints nothing. Either way it returns the event it made. Under ``torchrun``
and other multi-process launchers only rank 0 reports.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

JOB_ENV = "NEURAL_JUPYTER_JOB"


def report(
    epoch: int | None = None,
    epochs: int | None = None,
    *,
    batch: int | None = None,
    batches: int | None = None,
    **metrics: Any,
) -> dict[str, Any]:
    """Report a finished epoch (``epoch=``) or a batch within one (``batch=``).

    ``report(epoch=3, epochs=10, loss=0.41, val_accuracy=0.91)`` draws epoch 3 of 10 on the
    monitor's chart; ``report(batch=120, batches=500, epoch=3, loss=0.4)`` moves the batch bar
    of epoch 3 (epochs count from 1). Metrics are numbers (NumPy and PyTorch scalars too).
    """
    values = {name: _number(name, value) for name, value in metrics.items()}
    if batch is not None:
        event: dict[str, Any] = {"event": "batch", "batch": _count("batch", batch)}
        if batches is not None:
            event["batches"] = _count("batches", batches)
        if epoch is not None:
            event["epoch"] = _count("epoch", epoch)
        if "loss" in values:
            event["loss"] = values["loss"]
        event["metrics"] = values
    elif epoch is not None:
        event = {"event": "epoch", "epoch": _count("epoch", epoch), "metrics": values}
    else:
        raise TypeError("report() needs epoch= (a finished epoch) or batch= (a batch)")
    if epochs is not None:
        event["epochs"] = _count("epochs", epochs)
    if os.environ.get(JOB_ENV) and _rank_zero():
        emit(event)
    return event


def emit(event: dict[str, Any]) -> None:
    """Write one protocol line on stdout at once (flushed, one write)."""
    sys.stdout.write(json.dumps(event, allow_nan=False) + "\n")
    sys.stdout.flush()


def _number(name: str, value: Any) -> float | int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    try:
        number = float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError):
        raise TypeError(
            f"report(): metric {name!r} must be a number, got {type(value).__name__}"
        ) from None
    return number if math.isfinite(number) else None


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            as_int = int(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError):
            raise TypeError(f"report(): {name} must be a whole number, got {value!r}") from None
        if as_int != value:
            raise TypeError(f"report(): {name} must be a whole number, got {value!r}")
        value = as_int
    if value < 0:
        raise ValueError(f"report(): {name} must be >= 0, got {value}")
    return value


def _rank_zero() -> bool:
    for variable in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        rank = os.environ.get(variable)
        if rank not in (None, "", "0"):
            return False
    return True
