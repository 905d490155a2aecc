"""PyTorch Lightning's progress bars. With ``rich`` installed Lightning draws
``Epoch 2/9 ━━━━━━╺━━━ 12/40 0:00:03 • 0:00:07 4.1it/s train_loss: 0.41 val_loss: 0.52``
(epochs from 0, out of ``max_epochs - 1``; long metric lists wrap onto indented lines), else
a tqdm bar ``Epoch 2:  30%|███  | 12/40 [00:03<00:07, 4.1it/s, v_num=0, train_loss=0.41]``.
Validation and sanity-check bars are recognized and left out. Validation metrics appear
after an epoch's last batch, so an epoch ends when the next one's bar moves."""

from __future__ import annotations

import re

from .common import NUMBER, EpochsByBar, Event, Recognizer, pairs
from .tqdm import EPOCH_DESC, parse_bar

RICH_EPOCH = re.compile(
    r"^Epoch (\d+)/(\d+|\?)\s+[━╸╺╾╼─\s]*?(\d+)/(\d+|\?)\s+\S+\s+•\s+\S+\s+\S+\s*(.*)$"
)
RICH_OTHER = re.compile(r"^(Validation|Sanity Checking|Testing|Predicting)\s+[━╸╺╾╼─]")
TQDM_OTHER = re.compile(r"^(Validation|Sanity Checking|Testing|Predicting)( DataLoader \d+)?$")
RICH_METRIC = re.compile(r"([A-Za-z_][\w./]*):\s(" + NUMBER + r")(?=\s|$)")
WRAPPED = re.compile(r"^\s{8,}(?:[A-Za-z_][\w./]*:\s\S+\s*)+$")
BANNER = ("GPU available:", "TPU available:", "`Trainer.fit` stopped", "LOCAL_RANK:")
HIDDEN = ("v_num",)


class LightningRecognizer(Recognizer):
    source = "lightning"

    def __init__(self) -> None:
        self.bars = EpochsByBar(self, late_metrics=True)
        self.seen = False  # a Lightning banner or bar was seen: its tqdm epochs count from 0
        self.rich = False

    def feed(self, line: str) -> list[Event] | None:
        if line.startswith(BANNER):
            self.seen = True
            return None
        rich = RICH_EPOCH.match(line)
        if rich:
            self.seen = self.rich = True
            epoch, last, done, total = rich.groups()[:4]
            epochs = int(last) + 1 if last != "?" else None
            return self.update(
                int(epoch), int(done), _count(total), pairs(RICH_METRIC, rich[5]), epochs
            )
        if RICH_OTHER.match(line):
            return []
        if self.rich and WRAPPED.match(line):
            self.bars.add_metrics(pairs(RICH_METRIC, line))
            return []
        bar = parse_bar(line)
        if bar is None:
            return None
        desc, done, total, metrics = bar
        if TQDM_OTHER.match(desc):
            self.seen = True
            return []
        named = EPOCH_DESC.fullmatch(desc)
        if named and (self.seen or "v_num" in line):
            self.seen = True
            return self.update(int(named.group(1)), done, total, metrics, None)
        return None

    def update(
        self,
        epoch: int,
        done: int,
        total: int | None,
        metrics: dict[str, float],
        epochs: int | None,
    ) -> list[Event]:
        shown = {name: value for name, value in metrics.items() if name not in HIDDEN}
        return self.bars.update(epoch + 1, done, total, shown, epochs)

    def flush(self) -> list[Event]:
        return self.bars.flush()


def _count(text: str) -> int | None:
    return None if text == "?" else int(text)
