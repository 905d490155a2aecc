"""Ultralytics YOLO training: under an ``Epoch GPU_mem box_loss cls_loss dfl_loss Instances
Size`` header, rows ``  3/100  1.2G  1.234  2.345  1.456  22  640: 45% ━━━━── 12/27 ...``
(tqdm bars in older versions) are batches; the validation row ``all  4  10  0.5  0.4  0.45
0.3`` under ``Class Images Instances Box(P R mAP50 mAP50-95)`` ends the epoch. The validation
of the best weights after training is not an epoch."""

from __future__ import annotations

import re

from .common import NUMBER, Event, Recognizer, number

ROW = re.compile(
    r"^\s*(\d+)/(\d+)\s+(\S+)\s+((?:(?:" + NUMBER + r")\s+)+)\d+:\s+\d+%\D*?(\d+)/(\d+)"
)
ALL = re.compile(r"^\s*all\s+\d+\s+\d+((?:\s+(?:" + NUMBER + "))+)\\s*$")
NAMES = {"P": "precision", "R": "recall"}


class UltralyticsRecognizer(Recognizer):
    source = "ultralytics"

    def __init__(self) -> None:
        self.losses: list[str] = []
        self.scores: list[str] = []
        self.current: int | None = None
        self.epochs: int | None = None
        self.metrics: dict[str, float] = {}

    def feed(self, line: str) -> list[Event] | None:
        words = line.split()
        if words[:2] == ["Epoch", "GPU_mem"]:
            self.losses = [w for w in words[2:] if w not in ("Instances", "Size")]
            return []
        if words[:3] == ["Class", "Images", "Instances"]:
            self.scores = _score_names(line)
            return []
        if not self.losses:
            return None
        row = ROW.match(line)
        if row:
            self.current, self.epochs = int(row.group(1)), int(row.group(2))
            values = [number(v) for v in row.group(4).split()]
            # the columns are the losses, then the instance count of the batch
            self.metrics = {
                name: value
                for name, value in zip(self.losses, values, strict=False)
                if value is not None
            }
            done, total = int(row.group(5)), int(row.group(6))
            if not done:
                return []
            return [self.batch(self.current, done, total, self.metrics, self.epochs)]
        final = ALL.match(line)
        if final and self.current is not None:
            scores = [number(v) for v in final.group(1).split()]
            metrics = dict(self.metrics)
            metrics.update(
                (name, value)
                for name, value in zip(self.scores, scores, strict=False)
                if value is not None
            )
            epoch, self.current = self.current, None
            return [self.epoch(epoch, metrics, self.epochs)]
        return [] if final else None


def _score_names(header: str) -> list[str]:
    """``Box(P R mAP50 mAP50-95)`` -> precision, recall, mAP50, mAP50-95 (``mask_`` for a
    second ``Mask(...)`` group)."""
    names: list[str] = []
    for group, columns in re.findall(r"(\w+)\(([^)]*)\)", header.split(":")[0]):
        prefix = "" if group == "Box" else group.lower() + "_"
        names += [prefix + NAMES.get(column, column) for column in columns.split()]
    return names
