"""XGBoost evaluation lines: ``[5]\\ttrain-logloss:0.24020\\teval-logloss:0.30539`` (rounds
count from 0; each printed round is reported as epoch round + 1)."""

from __future__ import annotations

import re

from .common import NUMBER, Event, Recognizer, pairs

LINE = re.compile(r"^\[(\d+)\]((?:\t[\w.@]+-[\w.@:-]+?:(?:" + NUMBER + r"))+)\s*$")
METRIC = re.compile(r"\t([\w.@]+-[\w.@:-]+?):(" + NUMBER + ")")


class XGBoostRecognizer(Recognizer):
    source = "xgboost"

    def feed(self, line: str) -> list[Event] | None:
        match = LINE.match(line)
        if not match:
            return None
        return [self.epoch(int(match.group(1)) + 1, pairs(METRIC, match.group(2)))]
