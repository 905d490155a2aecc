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
EXECUTED = ["getting-started.md", "training.md", "sweeps.md", "dashboard.md", "platforms/index.md"]
BLOCK = re.compile(r"^```(python|ipython)\n(.*?)^```", re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("name", sorted(docgen.GENERATED))
def test_generated_reference_is_current(name):
    committed = (DOCS / name).read_text(encoding="utf-8")
    assert committed == docgen.GENERATED[name](), (
        f"docs/{name} is out of date: run `python -m neural_jupyter docs`"
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
