"""``%%neural_remote``: a cell's code as a job, its inputs shipped, its outputs brought back."""

from __future__ import annotations

import ast
import builtins
from collections.abc import Mapping, Sequence
from typing import Any

from neural_jupyter.errors import ConfigurationError
from neural_jupyter.runtime.code_bundle import CodeSpec
from neural_jupyter.usercode import requirements as reqs
from neural_jupyter.usercode.function import RequirementsArg, resolve_requirements
from neural_jupyter.usercode.launch import JobOptions, launch, plan
from neural_jupyter.usercode.payload import pickle_inputs


def run_cell(
    code: str,
    *,
    inputs: Sequence[str] | Mapping[str, Any] = (),
    outputs: Sequence[str] = (),
    namespace: Mapping[str, Any] | None = None,
    requirements: RequirementsArg = "auto",
    dry_run: bool = False,
    wait: bool = True,
    name: str = "cell",
    **options: Any,
) -> Any:
    """Run Python ``code`` as a job and return its ``outputs`` as a dict.

    ``inputs`` are names looked up in ``namespace`` (or a name -> value mapping); they are
    the only notebook values the code sees. Every name in ``outputs`` must be defined by the
    code (else ``RemoteError`` naming it). ``options`` are those of ``@remote``
    (``platform``, ``instance``, ``max_hours``...). With ``wait=False`` returns the ``Job``
    (``job.result()`` gives the dict), with ``dry_run`` the ``CodePlan``.
    """
    tree = _parse(code, name)
    values = _inputs(inputs, namespace)
    wanted = _identifiers(outputs, "outputs")
    found = resolve_requirements(
        requirements,
        lambda: reqs.modules_of_source(code) | reqs.modules_of_values(values.values()),
    )
    notes = _notes(tree, values, wanted, namespace)
    spec = CodeSpec(
        kind="cell",
        name=name,
        payload=pickle_inputs(values),
        source=code,
        outputs=tuple(wanted),
        requirements=found.lines,
    )
    job_options = JobOptions(**options)
    if dry_run:
        return plan(spec, found, job_options, notes)
    return launch(spec, found, job_options, wait=wait, notes=notes)


def _parse(code: str, name: str) -> ast.Module:
    try:
        return ast.parse(code, filename=f"<{name}>")
    except SyntaxError as exc:
        raise ConfigurationError(
            f"the cell is not plain Python (line {exc.lineno}, column {exc.offset}): {exc.msg}",
            hint="%magics and !shell lines run only in the notebook, not in a job",
        ) from None


def _identifiers(names: Sequence[str], what: str) -> list[str]:
    if isinstance(names, str):
        names = [part.strip() for part in names.split(",") if part.strip()]
    bad = [name for name in names if not str(name).isidentifier()]
    if bad:
        raise ConfigurationError(f"--{what}: not Python names: {', '.join(map(repr, bad))}")
    return list(dict.fromkeys(names))


def _inputs(
    inputs: Sequence[str] | Mapping[str, Any], namespace: Mapping[str, Any] | None
) -> dict[str, Any]:
    if isinstance(inputs, Mapping):
        _identifiers(list(inputs), "inputs")
        return dict(inputs)
    names = _identifiers(inputs, "inputs")
    namespace = namespace or {}
    missing = [name for name in names if name not in namespace]
    if missing:
        raise ConfigurationError(
            f"--inputs: {', '.join(map(repr, missing))} not defined in the notebook",
            hint="run the cell that defines it first",
        )
    return {name: namespace[name] for name in names}


def _notes(
    tree: ast.Module,
    values: Mapping[str, Any],
    outputs: Sequence[str],
    namespace: Mapping[str, Any] | None,
) -> list[str]:
    """Names the code reads but neither defines nor gets as an input, which the notebook
    has (likely a forgotten --inputs), and outputs the code never assigns."""
    loaded, stored = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else stored).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            stored.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            stored.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.arg):
            stored.add(node.arg)
    free = loaded - stored - set(values) - set(dir(builtins))
    notes = []
    forgotten = sorted(name for name in free if namespace and name in namespace)
    if forgotten:
        notes.append(
            f"the code reads {', '.join(forgotten)} from the notebook without --inputs; "
            "the job will not have it"
        )
    unassigned = [name for name in outputs if name not in stored]
    if unassigned:
        notes.append(f"outputs never assigned in the code: {', '.join(unassigned)}")
    return notes
