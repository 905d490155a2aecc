"""What every recognizer shares: the recognizer contract, numbers, events, epoch tracking."""

from __future__ import annotations

import math
import re
from typing import Any

NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf"
Event = dict[str, Any]


def number(text: str) -> float | None:
    """A finite float, or None (``nan``, ``inf``, not a number)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def pairs(pattern: re.Pattern[str], text: str) -> dict[str, float]:
    """``name -> value`` for every match of ``pattern`` (groups: name, value) in ``text``."""
    found: dict[str, float] = {}
    for name, raw in pattern.findall(text):
        value = number(raw)
        if value is not None:
            found[name.strip()] = value
    return found


class Recognizer:
    """Turns the lines one library prints into protocol events.

    ``feed`` returns None for a line that is not this library's (the next recognizer gets
    it), or the events it means (often none: a line can be recognized and still say nothing
    new). ``flush`` returns what is still held back when the job ends.
    """

    source = "?"

    def feed(self, line: str) -> list[Event] | None:
        raise NotImplementedError

    def flush(self) -> list[Event]:
        return []

    def epoch(self, epoch: int, metrics: dict[str, float], epochs: int | None = None) -> Event:
        event: Event = {"event": "epoch", "epoch": epoch, "metrics": metrics}
        if epochs:
            event["epochs"] = epochs
        event["source"] = self.source
        return event

    def batch(
        self,
        epoch: int | None,
        batch: int,
        batches: int | None = None,
        metrics: dict[str, float] | None = None,
        epochs: int | None = None,
    ) -> Event:
        event: Event = {"event": "batch", "batch": batch}
        if batches:
            event["batches"] = batches
        if epoch is not None:
            event["epoch"] = epoch
        if epochs:
            event["epochs"] = epochs
        loss = _loss(metrics or {})
        if loss is not None:
            event["loss"] = loss
        event["source"] = self.source
        return event


def _loss(metrics: dict[str, float]) -> float | None:
    for name in ("loss", "train_loss", "training_loss"):
        if name in metrics:
            return metrics[name]
    for name, value in metrics.items():
        if name.endswith("loss") and not name.startswith(("val", "eval")):
            return value
    return None


class EpochsByBar:
    """For bars that restart every epoch (``Epoch 3: 40%|...``).

    An epoch is over when its bar is full, or when the next epoch's bar moves (a bar of
    unknown length). With ``late_metrics`` (Lightning) an epoch is only over when the next
    one's bar moves, because its validation metrics appear after its last batch; the next
    bar's empty state still shows them. ``flush`` ends the last epoch.
    """

    def __init__(self, recognizer: Recognizer, late_metrics: bool = False) -> None:
        self.recognizer = recognizer
        self.late_metrics = late_metrics
        self.current: int | None = None  # 1-based epoch whose bar has moved
        self.ended = False  # the current epoch was reported already
        self.metrics: dict[str, float] = {}
        self.epochs: int | None = None

    def update(
        self,
        epoch: int,
        done: int,
        total: int | None,
        metrics: dict[str, float],
        epochs: int | None = None,
    ) -> list[Event]:
        """One state of epoch ``epoch``'s bar (1-based): ``done`` of ``total`` batches."""
        self.epochs = epochs or self.epochs
        events: list[Event] = []
        if epoch != self.current:
            if self.late_metrics and done == 0 and self.current is not None:
                self.metrics.update(metrics)  # still showing the last epoch's results
                return events
            events += self.flush()
            self.current, self.ended = epoch, False
        if self.ended:
            return events
        self.metrics.update(metrics)
        if done:
            events.append(self.recognizer.batch(epoch, done, total, metrics, self.epochs))
        if not self.late_metrics and total and done >= total:
            events += self.flush()
            self.current, self.ended = epoch, True
        return events

    def add_metrics(self, metrics: dict[str, float]) -> None:
        self.metrics.update(metrics)

    def flush(self) -> list[Event]:
        if self.current is None or self.ended:
            return []
        event = self.recognizer.epoch(self.current, dict(self.metrics), self.epochs)
        self.current = None
        return [event]
