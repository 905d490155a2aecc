"""tqdm bars: ``Epoch 3:  40%|████      | 4/10 [00:01<00:02, 3.9it/s, loss=0.41]``.

A bar whose description names an epoch (``Epoch 3``, ``epoch 3/10``) counts the batches of
that epoch, and the epoch ends when the next one's bar moves; epochs count from 1 unless the
first one seen is 0. A bar described as epochs (``epochs: 3/10``) counts epochs. Any other
bar is shown as batch progress.
"""

from __future__ import annotations

import re

from .common import NUMBER, EpochsByBar, Event, Recognizer, pairs

BAR = re.compile(
    r"^(?P<desc>.*?):?\s*(?P<percent>\d{1,3})%\|[^|]*\|\s*(?P<done>\d+)/(?P<total>\d+|\?)"
    r"\s*\[(?P<info>[^\]]*)\]\s*$"
)
EPOCH_DESC = re.compile(r"\bepoch\s*[:#]?\s*(\d+)(?:\s*(?:/|of)\s*(\d+))?", re.IGNORECASE)
EPOCHS_DESC = re.compile(r"^\s*epochs?\s*$", re.IGNORECASE)
POSTFIX = re.compile(r"([A-Za-z_][\w./]*)=\s*(" + NUMBER + ")")


def parse_bar(line: str) -> tuple[str, int, int | None, dict[str, float]] | None:
    """(description, done, total, postfix metrics) of a tqdm bar line, or None."""
    match = BAR.match(line)
    if not match:
        return None
    total = None if match.group("total") == "?" else int(match.group("total"))
    info = match.group("info")
    postfix = info.split(",", 2)[2] if info.count(",") >= 2 else ""
    return match.group("desc").strip(), int(match.group("done")), total, pairs(POSTFIX, postfix)


class TqdmRecognizer(Recognizer):
    source = "tqdm"

    def __init__(self) -> None:
        self.bars = EpochsByBar(self)
        self.base: int | None = None  # 0 when the first epoch seen is 0
        self.epochs_done = 0

    def feed(self, line: str) -> list[Event] | None:
        parsed = parse_bar(line)
        if parsed is None:
            return None
        desc, done, total, metrics = parsed
        named = EPOCH_DESC.search(desc)
        if named:
            number = int(named.group(1))
            if self.base is None:
                self.base = 0 if number == 0 else 1
            epochs = int(named.group(2)) if named.group(2) else None
            return self.bars.update(number + 1 - self.base, done, total, metrics, epochs)
        if EPOCHS_DESC.match(desc):
            events = [
                self.epoch(epoch, metrics if epoch == done else {}, total)
                for epoch in range(self.epochs_done + 1, done + 1)
            ]
            self.epochs_done = max(self.epochs_done, done)
            return events
        if not done:
            return []
        return [self.batch(None, done, total, metrics)]

    def flush(self) -> list[Event]:
        return self.bars.flush()
