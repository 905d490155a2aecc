"""The layers of shared/DESIGN.md, enforced on the import graph of ``neural_jupyter``.

The graph is built from the source with ``ast``: every ``import`` and ``from ... import``,
at module level and inside functions (an import that runs later is still a dependency),
except those under ``if TYPE_CHECKING:`` (never run). Each rule below is a row of the design's
layer table; the test fails on any import that breaks one, and on any import cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import neural_jupyter

PACKAGE = Path(neural_jupyter.__file__).parent
WIDGET_LIBS = ("ipywidgets", "anywidget")
SDKS = (
    "boto3",
    "botocore",
    "google",
    "azure",
    "databricks",
    "kagglesdk",
    "kaggle",
    "kubernetes",
    "ray",
    "modal",
    "grpclib",
    "paramiko",
    "requests",
    "urllib3",
    "keyring",
    "tenacity",
)
# backends/ modules every platform may use, and the modules of one platform's family
SHARED_BACKEND_MODULES = frozenset(
    {"base", "remote", "retry", "log_mirror", "log_artifacts", "images", "__init__"}
)
BACKEND_FAMILIES = {
    "sagemaker": {"sagemaker_images"},
    "ssh": {"ssh_instances", "ssh_providers", "ssh_nodes"},
    "ssh_nodes": {"ssh_providers"},
    "ssh_instances": {"ssh_providers"},
}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (a submodule where ``from x import sub`` names one)
    line: int
    top_level: bool  # at module level (runs at import time)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path, known: set[str]) -> Iterator[Import]:
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def walk(node: ast.AST, top: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                continue
            inner = top and not isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
            )
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(name, alias.name, child.lineno, top)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in child.names:
                    candidate = f"{base}.{alias.name}"
                    target = candidate if candidate in known else base
                    yield Import(name, target, child.lineno, top)
            yield from walk(child, inner)

    yield from walk(tree, True)


@pytest.fixture(scope="module")
def graph() -> list[Import]:
    found = modules()
    known = set(found)
    return [edge for name, path in found.items() for edge in imports_of(name, path, known)]


def _is(target: str, *prefixes: str) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


def _in(module: str, layer: str) -> bool:
    return _is(module, f"neural_jupyter.{layer}")


def violations(edges: list[Import]) -> list[str]:
    found = []
    for edge in edges:
        s, t = edge.source, edge.target
        reasons = []
        if _in(s, "dsl") and _is(t, "torch", "IPython", *WIDGET_LIBS):
            reasons.append("dsl/ must not import torch, IPython or widgets")
        if _in(s, "codegen") and _is(
            t, "neural_jupyter.jobs", "neural_jupyter.ui", "neural_jupyter.magics", "IPython"
        ):
            reasons.append("codegen/ must not know about jobs or notebooks")
        if s == "neural_jupyter.compiler" and _in(t, "ui"):
            reasons.append("compiler must not import ui/")
        if _in(s, "runtime") and _is(t, "neural_jupyter.ui", *WIDGET_LIBS):
            reasons.append("runtime/ must not touch widgets")
        if _in(s, "jobs") and _in(t, "ui"):
            reasons.append("jobs/ must not import ui/")
        if _in(s, "jobs") and _is(t, "neural_jupyter.compiler"):
            reasons.append("jobs/ take a model's data (a protocol), never the compiler")
        if _in(s, "ui") and _is(t, "sqlite3", "neural_jupyter.jobs.migrations"):
            reasons.append("ui/ must not own job state (read it from jobs/)")
        if _in(s, "magics") and _is(
            t, "neural_jupyter.backends", "neural_jupyter.codegen", "neural_jupyter.runtime.bundle"
        ):
            reasons.append("magics hold no logic the Python API lacks")
        if _in(s, "backends"):
            reasons.extend(_backend_rules(edge))
        if reasons:
            found.extend(f"{s}:{edge.line} imports {t}: {reason}" for reason in reasons)
    return found


def _backend_rules(edge: Import) -> Iterator[str]:
    own = edge.source.removeprefix("neural_jupyter.backends").lstrip(".") or "__init__"
    if _is(edge.target, "neural_jupyter.backends") and edge.source != "neural_jupyter.backends":
        other = edge.target.removeprefix("neural_jupyter.backends").lstrip(".") or "__init__"
        allowed = SHARED_BACKEND_MODULES | BACKEND_FAMILIES.get(own, set())
        if other != own and other not in allowed:
            yield f"backends/ platform modules must not import each other ({own} → {other})"
    if edge.top_level and _is(edge.target, *SDKS):
        yield "backends/ import their SDK when they use it, never at module import time"


def test_imports_follow_the_layer_table(graph):
    assert violations(graph) == []


def test_backends_ask_the_job_directory_object_for_file_names():
    """``job.directory / "stdout.log"`` in a backend would spell a job file name itself."""
    found = []
    for name, path in modules().items():
        if not _in(name, "backends"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.BinOp)
                and isinstance(node.op, ast.Div)
                and isinstance(node.left, ast.Attribute)
                and node.left.attr == "directory"
            ):
                found.append(f"{name}:{node.lineno}")
    assert found == []


def test_the_data_layers_load_no_drawing():
    """Importing the compiler or the jobs layer (and using them) loads nothing of ui/."""
    script = (
        "import sys\n"
        "from neural_jupyter.compiler import compile_model\n"
        "import neural_jupyter.jobs, neural_jupyter.jobs.sweeps, neural_jupyter.jobs.launch\n"
        "compile_model('network N { input: (4,) layers: Output(2) loss: \"mse\" }').code\n"
        "print([m for m in sys.modules if m.startswith('neural_jupyter.ui')])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"


def test_no_import_cycles(graph):
    edges: dict[str, set[str]] = {}
    known = set(modules())
    for edge in graph:
        if edge.target in known and edge.target != edge.source:
            edges.setdefault(edge.source, set()).add(edge.target)
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" → ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_checker_sees_what_it_must_refuse(tmp_path):
    """The rules catch a bad import (so a green run means something)."""
    bad = [
        Import("neural_jupyter.dsl.parser", "torch", 1, True),
        Import("neural_jupyter.backends.vertex", "neural_jupyter.backends.sagemaker", 2, True),
        Import("neural_jupyter.backends.vertex", "google.cloud.storage", 3, True),
        Import("neural_jupyter.jobs.job", "neural_jupyter.ui.monitor", 4, False),
        Import("neural_jupyter.compiler", "neural_jupyter.ui.summary", 5, False),
        Import("neural_jupyter.jobs.result", "neural_jupyter.compiler", 6, False),
        Import("neural_jupyter.magics.run", "neural_jupyter.backends", 7, False),
    ]
    assert len(violations(bad)) == len(bad)
    fine = [
        Import("neural_jupyter.backends.vertex", "google.cloud.storage", 5, False),
        Import("neural_jupyter.backends.ssh", "neural_jupyter.backends.ssh_instances", 6, True),
        Import("neural_jupyter.backends.vertex", "neural_jupyter.backends.remote", 7, True),
        Import("neural_jupyter.ui.views", "neural_jupyter.compiler", 8, False),
        Import("neural_jupyter.api", "neural_jupyter.compiler", 9, True),
    ]
    assert violations(fine) == []
