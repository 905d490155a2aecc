"""Docs cannot rot: generated references match the code, code blocks run, links resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from neural_jupyter import docgen
from tests.conftest import Shell

DOCS = Path(__file__).resolve().parent.parent / "docs"
# Pages whose blocks run offline. Per-platform pages hold copy-paste examples for real
# clouds; they are checked for links only.
EXECUTED = [
    "getting-started.md",
    "training.md",
    "sweeps.md",
    "dashboard.md",
    "platforms/index.md",
    "remote.md",
    "language.md",
    "custom-layers.md",
    "deploy.md",
    "warm-start.md",
]
BLOCK = re.compile(r"^```(python|ipython)\n(.*?)^```", re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("name", sorted(docgen.GENERATED))
def test_generated_reference_is_current(name):
    committed = (DOCS / name).read_text(encoding="utf-8")
    assert committed == docgen.GENERATED[name](), (
        f"docs/{name} is out of date: run `python -m neural_jupyter docs docs`"
    )


def test_language_reference_lists_every_layer():
    from neural_jupyter.dsl.layers import LAYERS

    text = (DOCS / "language.md").read_text()
    assert all(f"### {name}\n" in text for name in LAYERS)


@pytest.mark.slow
@pytest.mark.parametrize("page", EXECUTED)
def test_code_blocks_run(page, neural_home):
    blocks = BLOCK.findall((DOCS / page).read_text(encoding="utf-8"))
    assert blocks, f"{page} has no executable blocks"
    shell = Shell()
    for _kind, code in blocks:
        shell.run(code)


def test_links_resolve():
    for page in DOCS.rglob("*.md"):
        for target in re.findall(r"\]\(([^)#]+?\.md)\)", page.read_text(encoding="utf-8")):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


# --- every magic line in README and docs runs -------------------------------------------------
ROOT = DOCS.parent
ANY_BLOCK = re.compile(r"^```([\w-]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
# docs/magics.md shows each magic's usage syntax ("%neural_jobs [--status ...]"), not examples
MAGIC_PAGES = [
    "README.md",
    *sorted(str(p.relative_to(ROOT)) for p in DOCS.rglob("*.md") if p.name != "magics.md"),
]
PLACEHOLDER_COMPILE = "%neural_compile ..."  # "defines DigitNet" in the platform pages
DIGITNET = """%%neural_compile --show none
network DigitNet {
  input: (8, 8, 1)
  layers:
    Conv2D(filters=8, kernel_size=3, padding="same", activation="relu")
    Flatten()
    Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  train { epochs: 2  batch_size: 64  validation_split: 0.2 }
}"""
# what a user of each platform page has in their environment; a dry run sends nothing
DRY_RUN_ENVIRONMENT = {
    "AWS_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "NEURAL_JUPYTER_SAGEMAKER_ROLE": "arn:aws:iam::123456789012:role/SageMakerExecution",
    "NEURAL_JUPYTER_SAGEMAKER_BUCKET": "my-training-bucket",
    "GOOGLE_CLOUD_PROJECT": "my-project",
}


def magic_cells(text: str, executed_elsewhere: bool = False) -> list[str]:
    """The magics in a page's code blocks, as the cells a user would run: a block that
    starts with ``%%`` is one cell, every other line starting with ``%`` is one.
    ``executed_elsewhere``: leave out python/ipython blocks (``test_code_blocks_run`` runs
    those of the EXECUTED pages)."""
    cells = []
    for lang, body in ANY_BLOCK.findall(text):
        if executed_elsewhere and lang in ("python", "ipython"):
            continue
        if body.lstrip().startswith("%%"):
            cells.append(body.strip())
            continue
        cells.extend(line.strip() for line in body.splitlines() if line.lstrip().startswith("%"))
    return cells


def as_dry_run(cell: str) -> str:
    """A submit that would send a job becomes its dry run (everything else is checked)."""
    if cell.startswith("%neural_submit") and "--dry-run" not in cell:
        code, _, _comment = cell.partition("  #")
        return code.rstrip() + " --dry-run"
    return cell


def test_every_page_with_magics_is_covered():
    for page in [ROOT / "README.md", *DOCS.rglob("*.md")]:
        name = str(page.relative_to(ROOT))
        if magic_cells(page.read_text(encoding="utf-8")) and name != "docs/magics.md":
            assert name in MAGIC_PAGES, name


@pytest.mark.slow
@pytest.mark.parametrize("page", MAGIC_PAGES)
def test_every_magic_line_runs(page, neural_home, monkeypatch):
    for key, value in DRY_RUN_ENVIRONMENT.items():
        monkeypatch.setenv(key, value)
    executed = page.removeprefix("docs/") in EXECUTED
    cells = magic_cells((ROOT / page).read_text(encoding="utf-8"), executed_elsewhere=executed)
    if not cells:
        pytest.skip(f"{page} has no magic lines")
    shell = Shell()
    shell.run(DIGITNET)  # the pages build on getting started's DigitNet
    for cell in cells:
        if not cell.startswith(PLACEHOLDER_COMPILE):
            shell.run(as_dry_run(cell))


def test_the_set_example_in_the_magic_help_is_accepted(neural_home, monkeypatch):
    """docs/magics.md's --set example (from the help text) is a valid SageMaker option."""
    from neural_jupyter.magics.submit import SubmitMagics

    monkeypatch.setenv("AWS_REGION", "us-east-1")
    help_text = next(
        a.help for a in SubmitMagics.neural_submit.parser._actions if "--set" in a.option_strings
    )
    examples = re.findall(r"--set (\S+?)[;.,]?(?:\s|$)", help_text)
    assert "role=arn:aws:iam::123456789012:role/SM" in examples
    shell = Shell()
    shell.run(DIGITNET)
    plan = shell.run(
        "%neural_submit DigitNet --platform sagemaker --data digits --instance ml.g5.xlarge "
        f"--max-hours 1 --set {examples[0]} --set bucket=my-bucket --dry-run"
    )
    assert "arn:aws:iam::123456789012:role/SM" in str(plan)
