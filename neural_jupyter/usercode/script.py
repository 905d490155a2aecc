"""``run_script``: a script, or a project folder and its entry script, as a job; its own
requirements; a data folder shipped along; its outputs folder brought back."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from neural_jupyter.errors import ConfigurationError
from neural_jupyter.runtime.code_bundle import CodeSpec
from neural_jupyter.usercode import requirements as reqs
from neural_jupyter.usercode.function import RequirementsArg
from neural_jupyter.usercode.launch import JobOptions, launch, plan

ENTRY_NAMES = ("train.py", "main.py", "__main__.py")


def run_script(
    path: str | Path,
    args: Sequence[Any] = (),
    *,
    script: str | None = None,
    data: str | Path | None = None,
    outputs: str = "outputs",
    requirements: RequirementsArg = "auto",
    dry_run: bool = False,
    wait: bool = True,
    **options: Any,
) -> Any:
    """Run a Python script as a job and bring its outputs folder back.

    ``path`` is a script (shipped alone) or a project folder (shipped whole, run from its
    root; ``script`` names the entry script inside it, default ``train.py`` or ``main.py``).
    ``args`` are its command-line arguments. ``data`` (a folder or a file) is shipped as
    ``data/`` beside the project; the job finds it through ``NEURAL_DATA_DIR``. Whatever the
    script writes under ``outputs`` (relative to its working directory; also
    ``NEURAL_OUTPUT_DIR``) comes back: the result's ``.outputs``. ``requirements="auto"``
    uses the project's ``requirements.txt`` if it has one, else the notebook's versions of
    what its files import. ``options`` are those of ``@remote``. Returns a ``ScriptRun``
    (``wait=False``: the ``Job``; ``dry_run``: the ``CodePlan``).
    """
    source = Path(path).expanduser()
    if not source.exists():
        raise ConfigurationError(f"run_script: {str(path)!r} does not exist")
    project, entry = _entry(source, script)
    folder = _outputs_folder(outputs)
    data_path = None
    if data is not None:
        data_path = Path(data).expanduser()
        if not data_path.exists():
            raise ConfigurationError(f"data={str(data)!r} does not exist")
    found = _requirements(requirements, project)
    spec = CodeSpec(
        kind="script",
        name=Path(entry).stem,
        script=entry,
        project=project,
        args=tuple(str(arg) for arg in args),
        data=data_path,
        outputs=folder,
        requirements=found.lines,
    )
    notes = [_size_note(project, "project")] + (
        [_size_note(data_path, "data")] if data_path else []
    )
    job_options = JobOptions(**options)
    if dry_run:
        return plan(spec, found, job_options, notes)
    return launch(spec, found, job_options, wait=wait, notes=notes)


def _entry(source: Path, script: str | None) -> tuple[Path, str]:
    if source.is_file():
        if source.suffix != ".py":
            raise ConfigurationError(f"run_script: {source} is not a Python script (.py)")
        if script is not None:
            raise ConfigurationError("script= is for a project folder; path is a script already")
        return source, source.name
    if script is None:
        script = next((name for name in ENTRY_NAMES if (source / name).is_file()), None)
        if script is None:
            raise ConfigurationError(
                f"run_script: which script in {source} runs? none of "
                f"{', '.join(ENTRY_NAMES)} is there",
                hint="pass script='path/inside/the/folder.py'",
            )
    relative = PurePosixPath(script)
    if relative.is_absolute() or ".." in relative.parts or not (source / relative).is_file():
        raise ConfigurationError(f"script={script!r} is not a file inside {source}")
    return source, str(relative)


def _outputs_folder(outputs: str) -> str:
    relative = PurePosixPath(str(outputs).rstrip("/"))
    if not str(relative) or relative.is_absolute() or ".." in relative.parts:
        raise ConfigurationError(
            f"outputs={outputs!r} must be a folder relative to the script's working directory"
        )
    return str(relative)


def _requirements(value: RequirementsArg, project: Path) -> reqs.Requirements:
    if value is None:
        return reqs.explicit([])
    if not (isinstance(value, str) and value == "auto"):
        return reqs.explicit(value)
    own = project / "requirements.txt" if project.is_dir() else None
    if own is not None and own.is_file():
        return reqs.explicit(own)
    files = sorted(project.rglob("*.py")) if project.is_dir() else [project]
    modules: set[str] = set()
    for file in files:
        try:
            modules |= reqs.modules_of_source(file.read_text(encoding="utf-8", errors="replace"))
        except SyntaxError:
            continue
    own_modules = {file.stem for file in files} | (
        {p.name for p in project.iterdir() if p.is_dir()} if project.is_dir() else set()
    )
    return reqs.pinned(modules - own_modules)


def _size_note(path: Path, what: str) -> str:
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    size = sum(p.stat().st_size for p in files)
    return f"{what}: {len(files)} file(s), {size / 2**20:.1f} MiB from {path}"
