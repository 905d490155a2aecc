"""The dated image tables (``backends/image_tables/*.json``): well formed, sourced, and kept
current: a platform's default must still be served today by the platform's own published
dates. When this fails, the table needs its platform's newer image (see its ``source``)."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from neural_jupyter.backends.images import PLATFORMS_WITH_TABLES, Image, ImageTable, table

TODAY = datetime.date.today()
# Tables whose rows could not be dated from the platform's own pages when they were written.
UNDATED = {
    "vertex": "Vertex AI's end dates for its PyTorch 2.4 training containers were not reachable "
    "offline; check https://cloud.google.com/vertex-ai/docs/training/pre-built-containers, "
    "add the dates (or a newer row) and remove this entry",
}
# Platforms that publish no end date for a pinned image: their rows must be pinned instead.
PINNED = {"azureml"}


@pytest.mark.parametrize("platform", PLATFORMS_WITH_TABLES)
def test_every_row_is_sourced_and_dated_consistently(platform):
    images = table(platform)
    assert images.rows and datetime.date.fromisoformat(images.checked) <= TODAY
    for row in images.rows:
        assert row.source.startswith("https://"), row
        assert row.ref and all(isinstance(v, str) and v for v in row.ref.values()), row
        released = datetime.date.fromisoformat(row.released)
        for end in (row.end_of_support, row.end_of_availability):
            if end is not None:
                assert datetime.date.fromisoformat(end) > released, row
        assert row.version_key >= (2, 0) and row.python.startswith("3."), row


@pytest.mark.parametrize(
    "platform",
    [
        pytest.param(p, marks=pytest.mark.xfail(strict=True, reason=UNDATED[p]))
        if p in UNDATED
        else p
        for p in PLATFORMS_WITH_TABLES
    ],
)
def test_the_default_image_is_still_served_today(platform):
    default = table(platform).default(TODAY)
    if platform in PINNED:  # no published end: the reference must never move under users
        for reference in default.ref.values():
            _, _, version = reference.partition(":")
            assert version.isdigit() and "@" not in reference, reference
        return
    assert default.ends is not None, f"{platform}: the default's end date is unknown"
    assert default.ends >= TODAY, (
        f"{platform}'s default image ({default.framework_version}) is past its published end "
        f"({default.ends}); add the platform's newer image to image_tables/{platform}.json "
        f"(source: {default.source})"
    )


def row(version: str, ends: str | None) -> Image:
    return Image(version, "3.12", "12.4", {"gpu": f"img:{version}"}, "2025-01-01", ends, None, "")


def test_the_default_is_the_newest_row_still_served():
    images = ImageTable("x", (row("2.8", "2026-08-06"), row("2.9", "2026-10-15")), "2026-01-01")
    assert images.default(datetime.date(2026, 7, 1)).framework_version == "2.9"
    assert images.default(datetime.date(2026, 9, 1)).framework_version == "2.9"
    expired = ImageTable("x", (row("2.9", "2026-10-15"), row("2.10", "2026-01-01")), "2026-01-01")
    assert expired.default(datetime.date(2026, 7, 1)).framework_version == "2.9"  # 2.10 ended
    assert expired.oldest().framework_version == "2.9"  # by version, not by row order
    # none served: the newest known (its test above fails, so it does not stay that way)
    assert expired.default(datetime.date(2030, 1, 1)).framework_version == "2.10"


def oldest_framework_version() -> str:
    rows = [table(platform).oldest() for platform in PLATFORMS_WITH_TABLES]
    return min(rows, key=lambda r: r.version_key).framework_version


@pytest.mark.slow
def test_train_py_runs_on_the_oldest_framework_version_any_table_offers(tmp_path):
    """A bundle trained with the oldest PyTorch an image table can select, in a separate
    environment (``NEURAL_JUPYTER_OLDEST_TORCH_PYTHON``: its interpreter, else a venv made
    here with ``pip install torch==<oldest>`` when the package index is reachable)."""
    version = oldest_framework_version()
    python = os.environ.get("NEURAL_JUPYTER_OLDEST_TORCH_PYTHON") or str(
        _venv_with_torch(version, tmp_path)
    )
    found = subprocess.run(
        [python, "-c", "import torch; print(torch.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert found.startswith(version + "."), (found, version)
    from neural_jupyter.compiler import compile_model
    from neural_jupyter.runtime.bundle import RunSettings, build_bundle
    from neural_jupyter.runtime.data import digits

    model = compile_model(
        """
network Tiny {
  input: (8, 8, 1)
  layers: Conv2D(filters=4, kernel_size=3, activation="relu") Flatten() Dense(16, "relu")
          Dropout(0.1) Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  optimizer: Adam(learning_rate=0.01)
  metrics: ["accuracy"]
  train { epochs: 2 batch_size: 64 validation_split: 0.2 }
}
"""
    )
    settings = RunSettings.from_spec(model.spec)
    data = digits(model.spec)
    bundle = build_bundle(model.spec, data, tmp_path / "bundle", settings, job_id="old")
    done = subprocess.run(
        [python, "-u", "launcher.py"],  # the launcher too: it runs in the platform's Python
        cwd=bundle.path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    events = [json.loads(x) for x in done.stdout.splitlines() if x.startswith('{"event"')]
    assert [e["event"] for e in events if e["event"] == "epoch"] == ["epoch", "epoch"]
    assert (bundle.path / "output" / "model.pt").exists()


def _venv_with_torch(version: str, tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"torch=={version}.*", "numpy<2"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if install.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        pytest.skip(f"torch {version} could not be installed here: {install.stderr[-300:]}")
    return python
