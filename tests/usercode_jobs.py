"""What the platform tests run as user code: functions (a value, an exception, a long sleep),
a script project with data and nested outputs, and a requirement the job must install
(``njtoy``, a wheel built here, served from a local folder: pip never reaches an index).

The functions live in this module of the tests' own, which no installed distribution
provides, so they travel by value, as a notebook's functions do.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import sysconfig
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np

TOY = "njtoy"
TOY_VERSION = "1.0"
TOY_VALUE = 4242


# --- functions -------------------------------------------------------------------------------
def scaled(values, factor=2.0):
    return {"pid": os.getpid(), "values": np.asarray(values) * factor}


def inner_failure(x):
    raise KeyError(f"no row {x}")


def outer(x):
    return inner_failure(x + 1)


def sleeper(path):
    Path(path).write_text(str(os.getpid()))
    time.sleep(300)


def uses_toy():
    import njtoy

    return njtoy.VALUE, njtoy.__file__


def check_raised(error) -> None:
    """``error`` is ``outer(41)``'s KeyError, raised here with the job's frames."""
    assert error.exc_type == "KeyError"
    assert "KeyError: 'no row 42'" in str(error)
    text = error.remote_traceback
    assert "in outer\n    return inner_failure(x + 1)" in text
    assert 'in inner_failure\n    raise KeyError(f"no row {x}")' in text
    assert "runner.py" not in text and "train.py" not in text  # only the user's frames


# --- a script project ------------------------------------------------------------------------
def make_project(root: Path) -> tuple[Path, Path]:
    """A project folder (entry ``train.py`` and a package of its own) and a data folder; the
    script reads the data, prints epochs and writes ``outputs/weights/best.txt`` and
    ``outputs/report card.txt`` (a space in the name)."""
    project, data = root / "project", root / "dataset"
    (project / "lib").mkdir(parents=True)
    (project / "lib" / "__init__.py").write_text("")
    (project / "lib" / "stats.py").write_text("def total(xs):\n    return sum(xs)\n")
    (project / "train.py").write_text(
        textwrap.dedent(
            """
            import argparse, os, pathlib
            from lib.stats import total
            parser = argparse.ArgumentParser()
            parser.add_argument("--epochs", type=int)
            epochs = parser.parse_args().epochs
            numbers = (pathlib.Path(os.environ["NEURAL_DATA_DIR"]) / "n.txt").read_text()
            for epoch in range(1, epochs + 1):
                print(f"Epoch {epoch}/{epochs} - loss: {1 / epoch:.3f}")
            out = pathlib.Path("outputs")
            (out / "weights").mkdir(parents=True, exist_ok=True)
            (out / "weights" / "best.txt").write_text(str(total(map(float, numbers.split()))))
            (out / "report card.txt").write_text(f"{epochs} epochs")
            """
        )
    )
    data.mkdir()
    (data / "n.txt").write_text("1 2 3.5")
    return project, data


def check_script_run(run) -> None:
    """``run`` is the ``ScriptRun`` of ``make_project``'s script with ``--epochs 2``."""
    assert run.status == "SUCCEEDED", run
    files = sorted(p.relative_to(run.outputs).as_posix() for p in run.files())
    assert files == ["report card.txt", "weights/best.txt"]
    assert (run.outputs / "weights" / "best.txt").read_text() == "6.5"
    assert (run.outputs / "report card.txt").read_text() == "2 epochs"
    assert [h["epoch"] for h in run.history] == [1, 2]


# --- a requirement to install ----------------------------------------------------------------
def toy_wheel(folder: Path) -> Path:
    """``njtoy-1.0-py3-none-any.whl`` in ``folder`` (a valid wheel with its RECORD)."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"{TOY}-{TOY_VERSION}.dist-info"
    files = {
        f"{TOY}/__init__.py": f"VALUE = {TOY_VALUE}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {TOY}\nVersion: {TOY_VERSION}\n",
        f"{info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: neural-jupyter-tests\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        ),
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    path = folder / f"{TOY}-{TOY_VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return path


def offline_pip(wheels: Path) -> dict[str, str]:
    """Environment variables that make pip install from ``wheels`` only."""
    return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels)}


def toy_python(folder: Path, wheels: Path) -> Path:
    """A throw-away virtual environment that sees this interpreter's packages (a ``.pth``
    file) and installs from ``wheels`` only: a platform image where ``njtoy`` is missing and
    installing it changes nothing else. Its ``python``: a wrapper that sets pip's options
    (they win over any ``PIP_*`` of the calling environment) and runs the venv's."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "host-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wrapper = folder / "python"
    settings = " ".join(f"{key}={value}" for key, value in offline_pip(wheels).items())
    wrapper.write_text(f'#!/bin/sh\nexport {settings}\nexec {python} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper
