"""Keras ``fit``: ``Epoch 3/10`` headers, then ``12/40 ━━━━ 1s 8ms/step - loss: 0.41`` bars
(verbose=1; Keras 2 draws ``[=====>....]``) or one ``40/40 - 1s - 8ms/step - loss: ...``
line per epoch (verbose=2). The last step of an epoch carries its validation metrics."""

from __future__ import annotations

import re

from .common import NUMBER, Event, Recognizer, pairs

HEADER = re.compile(r"^Epoch (\d+)/(\d+)$")
STEP = re.compile(r"^\s*(\d+)/(\d+|Unknown)(?=\s+(?:[━─\[]|-\s|\d+m?s\b))(.*)$")
METRIC = re.compile(r"\s-\s([A-Za-z_][\w./]*):\s(" + NUMBER + ")")


class KerasRecognizer(Recognizer):
    source = "keras"

    def __init__(self) -> None:
        self.current: int | None = None  # the epoch under way (1-based), after its header
        self.epochs: int | None = None

    def feed(self, line: str) -> list[Event] | None:
        header = HEADER.match(line.strip())
        if header:
            self.current, self.epochs = int(header.group(1)), int(header.group(2))
            return [self.batch(self.current, 0, None, None, self.epochs)]
        if self.current is None:
            return None
        step = STEP.match(line)
        if not step:
            return None
        done = int(step.group(1))
        total = None if step.group(2) == "Unknown" else int(step.group(2))
        metrics = pairs(METRIC, step.group(3))
        if total is not None and done >= total:
            epoch, self.current = self.current, None  # evaluate()/predict() bars follow fit
            return [self.epoch(epoch, metrics, self.epochs)]
        return [self.batch(self.current, done, total, metrics, self.epochs)]
