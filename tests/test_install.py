"""Install lines and the command line work from this repository today (issue 13, point 9).

Every ``pip install`` of neural-jupyter in README, docs, notebooks, binder and the package's
own hints uses a form that works while the package is not on the package index (straight
from the repository, or from a clone), names extras that exist, and pip really resolves the
repository form (a ``git+file://`` clone of this checkout stands in for GitHub: no network).
``python -m neural_jupyter`` describes the project, runs the quick start from any directory,
and writes docs only where asked."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

from neural_jupyter.install import REPOSITORY, install_hint, pip_command

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = set(PYPROJECT["project"]["optional-dependencies"])
LOCAL = re.compile(r'pip install (?:-[\w-]+ )*(?:-e )?"\.\[([\w,]+)\]"')
REMOTE = re.compile(r'pip install (?:-[\w-]+ )*"neural-jupyter\[([\w,]+)\] @ git\+(\S+?)"')
ANY = re.compile(r"pip\s+install[^\n`]*?(neural-jupyter|\"\.\[|'\.\[|\s\.\s|\s\.$)", re.M)


def install_texts() -> dict[str, str]:
    """Every file a user copies install commands from, as plain text."""
    texts = {"README.md": (ROOT / "README.md").read_text()}
    for page in sorted((ROOT / "docs").rglob("*.md")):
        texts[str(page.relative_to(ROOT))] = page.read_text()
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        text = "\n".join("".join(c["source"]) for c in cells)
        # get_ipython().run_line_magic("pip", 'install ...') is %pip install ...
        text = re.sub(r"run_line_magic\(\s*\"pip\",\s*'", "pip ", text)
        texts[str(notebook.relative_to(ROOT))] = text
    texts["binder/postBuild"] = (ROOT / "binder" / "postBuild").read_text()
    texts["hints"] = install_hint("kaggle") + "\n" + pip_command("torch", "widgets")
    # a command wrapped onto the next line of a paragraph is still one command
    return {name: re.sub(r"pip\s+install\s+", "pip install ", t) for name, t in texts.items()}


def test_the_repository_is_the_homepage():
    assert PYPROJECT["project"]["urls"]["Homepage"] == REPOSITORY


def test_every_install_line_uses_a_form_that_works_today():
    found = 0
    for name, text in install_texts().items():
        for match in ANY.finditer(text):
            end = text.find("\n", match.start())
            line = text[match.start() : end if end >= 0 else len(text)]
            local, remote = LOCAL.search(line), REMOTE.search(line)
            plain_local = re.search(r"pip install [^\n]*?\"\.\[", line) is None and (
                " . " in line or line.rstrip().endswith(" .")
            )
            assert local or remote or plain_local, f"{name}: {line.strip()}"
            if remote:
                assert remote.group(2) == REPOSITORY, f"{name}: {line.strip()}"
            for extras in (m.group(1) for m in (local, remote) if m):
                unknown = set(extras.split(",")) - EXTRAS
                assert not unknown, f"{name}: unknown extra {unknown} in {line.strip()}"
            found += 1
    assert found >= 14  # README, getting started, every platform page, the notebooks


def test_no_install_line_asks_the_package_index_for_it():
    for name, text in install_texts().items():
        assert not re.search(r'pip install [^\n]*"neural-jupyter\[[\w,]+\]"(?! @)', text), name
        assert not re.search(r"pip install (-U )?neural-jupyter\b", text), name


def test_a_lab_extra_brings_jupyterlab():
    assert any(
        r.startswith("jupyterlab") for r in PYPROJECT["project"]["optional-dependencies"]["lab"]
    )


def _pip(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )


@pytest.mark.slow
def test_pip_resolves_the_repository_form_with_its_extras(tmp_path):
    pytest.importorskip("hatchling")
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout")
    report = tmp_path / "report.json"
    # file://localhost/...: the packaging version inside older pips rejects file:///...
    target = f"neural-jupyter[torch,widgets,lab,dashboard] @ git+file://localhost{ROOT}"
    done = _pip(
        "install", "--dry-run", "--no-deps", "--no-index", "--no-build-isolation",
        "--report", str(report), target,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "does not provide the extra" not in done.stderr
    (item,) = json.loads(report.read_text())["install"]
    assert item["metadata"]["name"] == "neural-jupyter"
    assert {"torch", "widgets", "lab", "dashboard"} <= set(item["metadata"]["provides_extra"])


@pytest.mark.slow
def test_the_wheel_ships_the_quick_start_notebook(tmp_path):
    pytest.importorskip("hatchling")
    done = _pip(
        "wheel", "--no-deps", "--no-index", "--no-build-isolation", "-w", str(tmp_path), "."
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("neural_jupyter-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "neural_jupyter/notebooks/quick_start.ipynb" in names


def _cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 60):
    return subprocess.run(
        [sys.executable, "-m", "neural_jupyter", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def test_help_says_what_the_project_is(tmp_path):
    done = _cli("--help", cwd=tmp_path)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "define a neural network" in text and "Jupyter notebook cells" in text
    assert "quickstart" in text and "docs" in text


def test_docs_writes_only_where_asked(tmp_path):
    done = _cli("docs", cwd=tmp_path)
    assert done.returncode == 2 and "DIRECTORY" in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written without a directory
    done = _cli("docs", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["language.md", "magics.md"]


@pytest.mark.slow
def test_quickstart_runs_from_any_directory(tmp_path):
    """README's first command, from a directory that is not the repository."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = _cli(
        "quickstart",
        cwd=elsewhere,
        env={"NEURAL_JUPYTER_HOME": str(tmp_path / "home")},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "final validation accuracy" in done.stdout
    assert list(elsewhere.iterdir()) == []  # it ran in a scratch directory
    # the job table lists the run with a duration shown to the tenth of a second
    assert re.search(
        r"SUCCEEDED\s+\S+ \S+\s+\d+(\.\d+)? s|SUCCEEDED\s+\S+ \S+\s+\d+:\d\d", done.stdout
    )
