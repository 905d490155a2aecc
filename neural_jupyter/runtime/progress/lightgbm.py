"""LightGBM evaluation lines: ``[5]\\ttrain's binary_logloss: 0.58\\tvalid's auc: 0.99``
(iterations count from 1). After ``Early stopping, best iteration is:`` LightGBM repeats
the best iteration's line; that repeat is not a new epoch."""

from __future__ import annotations

import re

from .common import NUMBER, Event, Recognizer, pairs

LINE = re.compile(r"^\[(\d+)\]((?:\t[^\t']+'s [^\t:]+: (?:" + NUMBER + r"))+)\s*$")
METRIC = re.compile(r"\t([^\t']+'s [^\t:]+): (" + NUMBER + ")")
BEST = ("Early stopping, best iteration is:", "Did not meet early stopping. Best iteration is:")


class LightGBMRecognizer(Recognizer):
    source = "lightgbm"

    def __init__(self) -> None:
        self.repeat_next = False

    def feed(self, line: str) -> list[Event] | None:
        if line.strip() in BEST:
            self.repeat_next = True
            return []
        match = LINE.match(line)
        if not match:
            return None
        if self.repeat_next:
            self.repeat_next = False
            return []
        metrics = {
            name.replace("'s ", "_"): value for name, value in pairs(METRIC, match[2]).items()
        }
        return [self.epoch(int(match.group(1)), metrics)]
