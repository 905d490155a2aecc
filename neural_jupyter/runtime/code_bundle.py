"""Bundles that run the user's own code: a function, a cell or a script folder.

Layout (``train.py`` is what every platform starts, here the runner)::

    train.py                    runtime/runner.py
    launcher.py                 runtime/launcher.py: what remote platforms run; it installs
                                the requirements job.json lists, then runs train.py
    neural_jupyter_report.py    report(), importable in the job with nothing installed
    neural_jupyter_progress/    runtime/progress/: progress lines -> events
    job.json                    kind, name, Python version, outputs, script and arguments,
                                install_requirements (for the launcher)
    payload.pkl                 function: the function and its arguments; cell: its inputs
    cell.py                     cell: the code
    project/                    script: the script, or the project folder it belongs to
    data/                       script: the data folder (``NEURAL_DATA_DIR`` in the job)
    requirements.txt            what the code imports, at the notebook's versions
    output/                     written by the job: result.pkl, the script's outputs

No credential or environment value is written into it.
"""

from __future__ import annotations

import json
import platform
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import neural_jupyter_report
from neural_jupyter.errors import ConfigurationError
from neural_jupyter.runtime import progress, runner
from neural_jupyter.runtime.bundle import LAUNCHER, Bundle, launcher_source

CODE_KINDS = ("function", "cell", "script")
ENTRY_POINT = "train.py"
REPORT_MODULE = "neural_jupyter_report.py"
PROGRESS_PACKAGE = "neural_jupyter_progress"
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".git", ".ipynb_checkpoints")


@dataclass(frozen=True)
class CodeSpec:
    """What a user-code job runs (everything but where and on what)."""

    kind: str
    name: str
    payload: bytes = b""  # pickled: function + arguments, or a cell's inputs
    source: str = ""  # the cell's code
    outputs: Sequence[str] | str = ()  # cell: names to bring back; script: its outputs folder
    script: str = ""  # script: its path inside the project folder
    project: Path | None = None  # script: the folder shipped as project/
    args: Sequence[str] = ()
    data: Path | None = None
    requirements: Sequence[str] = ()
    max_seconds: float | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in CODE_KINDS:
            raise ConfigurationError(
                f"unknown user-code kind {self.kind!r}; expected one of {', '.join(CODE_KINDS)}"
            )


def build_code_bundle(spec: CodeSpec, directory: Path, *, job_id: str) -> Bundle:
    """Write a complete user-code bundle into ``directory`` (created) and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    job = {
        "job_id": job_id,
        "kind": spec.kind,
        "name": spec.name,
        "python": platform.python_version(),
        "output_dir": runner.OUTPUT,
        "max_seconds": spec.max_seconds,
        "install_requirements": list(spec.requirements),
        **spec.extra,
    }
    if spec.kind == "cell":
        job["outputs"] = list(spec.outputs)
        job["cell_name"] = f"<{spec.name}>"
        (directory / runner.CELL).write_text(spec.source, encoding="utf-8")
    if spec.kind == "script":
        job.update(script=spec.script, args=list(spec.args), outputs=str(spec.outputs))
        _copy_project(spec, directory / runner.PROJECT)
        if spec.data is not None:
            data = directory / runner.DATA
            _copy(spec.data, data if spec.data.is_dir() else data / spec.data.name)
    if spec.kind in ("function", "cell"):
        (directory / runner.PAYLOAD).write_bytes(spec.payload)
    _copy_module(Path(runner.__file__), directory / ENTRY_POINT)
    (directory / LAUNCHER).write_text(launcher_source(), encoding="utf-8")
    _copy_module(Path(neural_jupyter_report.__file__), directory / REPORT_MODULE)
    shutil.copytree(
        Path(progress.__file__).parent,
        directory / PROGRESS_PACKAGE,
        ignore=IGNORED,
        dirs_exist_ok=True,
    )
    (directory / "job.json").write_text(json.dumps(job, indent=2), encoding="utf-8")
    (directory / "requirements.txt").write_text(
        "".join(f"{line}\n" for line in spec.requirements), encoding="utf-8"
    )
    return Bundle(directory, job)


def bundle_listing(spec: CodeSpec) -> list[str]:
    """The top-level entries ``build_code_bundle`` writes for ``spec`` (folders end in
    ``/``): what a dry run says will be uploaded."""
    files = [ENTRY_POINT, LAUNCHER, REPORT_MODULE, f"{PROGRESS_PACKAGE}/", "job.json"]
    if spec.kind == "cell":
        files.append(runner.CELL)
    if spec.kind in ("function", "cell"):
        files.append(runner.PAYLOAD)
    if spec.kind == "script":
        files.append(f"{runner.PROJECT}/")
        if spec.data is not None:
            files.append(f"{runner.DATA}/")
    return [*files, "requirements.txt"]


def _copy_module(source: Path, destination: Path) -> None:
    destination.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")


def _copy_project(spec: CodeSpec, destination: Path) -> None:
    if spec.project is None:
        raise ConfigurationError("a script bundle needs the script or its project folder")
    _copy(spec.project, destination if spec.project.is_dir() else destination / spec.script)


def _copy(source: Path, destination: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, destination, ignore=IGNORED, dirs_exist_ok=True)
    else:
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
