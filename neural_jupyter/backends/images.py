"""The images (containers, runtimes, environments) a platform runs bundles in: one dated
table per platform, ``backends/image_tables/<platform>.json``, data rather than code.

Each row names a framework version with its Python and CUDA, the platform's own reference
to it, when it was released and until when the platform publishes that it supports it
(``end_of_support``) and serves it (``end_of_availability``), with the page that says so.
The default is the newest row still served today, so the table is all that changes when a
platform publishes a new image; ``tests/test_images.py`` fails once a default's published end
has passed, so the table is kept current.
"""

from __future__ import annotations

import datetime
import functools
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from neural_jupyter.errors import ConfigurationError


@dataclass(frozen=True)
class Image:
    """One row of a platform's image table."""

    framework_version: str
    python: str
    cuda: str | None  # None: no GPU build
    ref: dict[str, str]  # the platform's references: {"gpu": ..., "cpu": ...} or {"name": ...}
    released: str
    end_of_support: str | None
    end_of_availability: str | None
    source: str
    framework: str = "pytorch"
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ends(self) -> datetime.date | None:
        """The last day the platform serves it (availability, else support), if published."""
        text = self.end_of_availability or self.end_of_support
        return datetime.date.fromisoformat(text) if text else None

    def served_on(self, day: datetime.date) -> bool:
        return self.ends is not None and day <= self.ends

    @property
    def version_key(self) -> tuple[int, ...]:
        return tuple(int(part) for part in self.framework_version.split("."))

    @property
    def cuda_key(self) -> tuple[int, ...]:
        return tuple(int(p) for p in (self.cuda or "0").split("."))

    def __getitem__(self, kind: str) -> str:
        return self.ref[kind]


@dataclass(frozen=True)
class ImageTable:
    platform: str
    rows: tuple[Image, ...]
    checked: str  # when the table was last compared with its sources
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def default(self, today: datetime.date | None = None) -> Image:
        """The newest row still served ``today``; the newest row if none is known to be."""
        today = today or datetime.date.today()
        served = [row for row in self.rows if row.served_on(today)]
        return max(served or self.rows, key=lambda row: row.version_key)

    def for_python(self, python: str, today: datetime.date | None = None) -> Image | None:
        """The newest row whose Python is ``python`` (major.minor), preferring rows still
        served ``today``; None if no row has it."""
        today = today or datetime.date.today()
        rows = [row for row in self.rows if row.python == python]
        served = [row for row in rows if row.served_on(today)]
        return max(served or rows, key=lambda row: row.version_key) if rows else None

    @property
    def pythons(self) -> list[str]:
        """The Python versions of the table's rows."""
        return sorted(
            {row.python for row in self.rows}, key=lambda v: tuple(map(int, v.split(".")))
        )

    def version(self, framework_version: str) -> Image:
        for row in self.rows:
            if row.framework_version == framework_version:
                return row
        raise ConfigurationError(
            f"no {self.platform} image for PyTorch {framework_version}",
            hint="known: " + ", ".join(row.framework_version for row in self.rows),
        )

    def oldest(self) -> Image:
        return min(self.rows, key=lambda row: row.version_key)


@functools.cache
def table(platform: str) -> ImageTable:
    """The image table of ``platform`` (``backends/image_tables/<platform>.json``)."""
    text = resources.files("neural_jupyter.backends").joinpath(f"image_tables/{platform}.json")
    data = json.loads(text.read_text("utf-8"))
    rows = tuple(Image(**row) for row in data.pop("rows"))
    return ImageTable(platform, rows, **data)


PLATFORMS_WITH_TABLES = ("sagemaker", "vertex", "azureml", "databricks", "kubernetes", "modal")
