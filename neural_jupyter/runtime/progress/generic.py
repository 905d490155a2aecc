"""The plain forms hand-written loops print: ``Epoch: 5/10``, ``epoch 5/10 loss=0.41
acc: 0.9``, ``Epoch 5 of 10 - loss: 0.41``. A line with metrics reports that epoch as
finished; a bare ``Epoch 5/10`` marks the start of epoch 5."""

from __future__ import annotations

import re

from .common import NUMBER, Event, Recognizer, pairs

LINE = re.compile(r"^\W*epoch\s*[:#]?\s*(\d+)\s*(?:/|of)\s*(\d+)\b(.*)$", re.IGNORECASE)
METRIC = re.compile(r"([A-Za-z_][\w./]*)\s*[:=]\s*(" + NUMBER + r")(?![\w/])")


class GenericRecognizer(Recognizer):
    source = "generic"

    def feed(self, line: str) -> list[Event] | None:
        match = LINE.match(line)
        if not match:
            return None
        epoch, epochs = int(match.group(1)), int(match.group(2))
        metrics = pairs(METRIC, match.group(3))
        if not metrics:
            return [self.batch(epoch, 0, None, None, epochs)]
        return [self.epoch(epoch, metrics, epochs)]
