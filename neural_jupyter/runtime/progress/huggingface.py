"""Hugging Face ``Trainer`` log dicts: ``{'loss': '0.6926', 'learning_rate': '4.583e-05',
'epoch': '0.5'}`` and ``{'eval_loss': '0.6932', ..., 'epoch': '1'}`` (transformers 5 prints
the values as strings; older versions as numbers). Training logs at a fractional epoch are
batch progress; logs at a whole epoch (and the evaluation after it, as ``val_*``) make that
epoch's point. An epoch is reported when a later log shows it is complete (or at the end)."""

from __future__ import annotations

import ast
import math

from .common import Event, Recognizer, number

SKIP = ("_runtime", "_per_second", "total_flos")


class HuggingFaceRecognizer(Recognizer):
    source = "transformers"

    def __init__(self) -> None:
        self.pending: tuple[int, dict[str, float]] | None = None

    def feed(self, line: str) -> list[Event] | None:
        text = line.strip()
        if not (text.startswith("{'") and text.endswith("}") and "'epoch'" in text):
            return None
        try:
            record = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return None
        if not isinstance(record, dict):
            return None
        values = {str(k): number(str(v)) for k, v in record.items()}
        epoch = values.pop("epoch", None)
        if epoch is None:
            return None
        if "train_runtime" in values:  # the summary at the end of train()
            return self.flush()
        metrics = {
            _name(name): value
            for name, value in values.items()
            if value is not None and not name.endswith(SKIP)
        }
        whole = abs(epoch - round(epoch)) < 1e-6 and round(epoch) >= 1
        events: list[Event] = []
        if self.pending and (not whole or round(epoch) != self.pending[0]):
            events += self.flush()
        if whole:
            if self.pending is None:
                self.pending = (round(epoch), {})
            self.pending[1].update(metrics)
        elif "loss" in metrics:
            events.append(self.batch(max(1, math.ceil(epoch)), 0, None, metrics))
        return events

    def flush(self) -> list[Event]:
        if self.pending is None:
            return []
        epoch, metrics = self.pending
        self.pending = None
        return [self.epoch(epoch, metrics)]


def _name(name: str) -> str:
    return "val_" + name[len("eval_") :] if name.startswith("eval_") else name
