"""One place that asks each recognizer in turn about each line of a job's output."""

from __future__ import annotations

import json

from .common import Event, Recognizer
from .generic import GenericRecognizer
from .huggingface import HuggingFaceRecognizer
from .keras import KerasRecognizer
from .lightgbm import LightGBMRecognizer
from .lightning import LightningRecognizer
from .tqdm import TqdmRecognizer
from .ultralytics import UltralyticsRecognizer
from .xgboost import XGBoostRecognizer

# Most specific first: Lightning's bars are tqdm or Rich bars with its own epoch numbering,
# Keras's headers look like the generic "Epoch 3/10", Ultralytics rows end in a tqdm bar.
RECOGNIZERS: tuple[type[Recognizer], ...] = (
    LightningRecognizer,
    KerasRecognizer,
    HuggingFaceRecognizer,
    XGBoostRecognizer,
    LightGBMRecognizer,
    UltralyticsRecognizer,
    TqdmRecognizer,
    GenericRecognizer,
)
_EVENT = '{"event"'


class ProgressDispatcher:
    """Feed every output line; get the progress events it means.

    Once the code reports epochs (or batches) itself with ``report()``, recognized ones of
    that kind are dropped, so the chart never shows an epoch twice.
    """

    def __init__(self, recognizers: tuple[type[Recognizer], ...] = RECOGNIZERS) -> None:
        self.recognizers = [make() for make in recognizers]
        self.reported: set[str] = set()

    def feed(self, line: str) -> list[Event]:
        if line.startswith(_EVENT):
            try:
                kind = json.loads(line).get("event")
            except (ValueError, AttributeError):
                kind = None
            if kind in ("epoch", "batch"):
                self.reported.add(kind)
            return []
        for recognizer in self.recognizers:
            events = recognizer.feed(line)
            if events is not None:
                return self._kept(events)
        return []

    def flush(self) -> list[Event]:
        events: list[Event] = []
        for recognizer in self.recognizers:
            events += recognizer.flush()
        return self._kept(events)

    def _kept(self, events: list[Event]) -> list[Event]:
        return [event for event in events if event["event"] not in self.reported]


def recognize(lines: list[str]) -> list[Event]:
    """Every event recognized in ``lines`` (a whole output), for tests and replays."""
    dispatcher = ProgressDispatcher()
    events: list[Event] = []
    for line in lines:
        events += dispatcher.feed(line)
    return events + dispatcher.flush()
