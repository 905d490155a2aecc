"""``requirements="auto"``: what the code imports, pinned to the notebook's versions.

Modules are found in a function's code (its global names, imports inside it, its closure,
and the same for functions and classes of the notebook it uses), in a cell's or a script's
``import`` statements, and in the types of the values sent along (a DataFrame argument needs
pandas to be unpickled). ``importlib.metadata.packages_distributions()`` maps each module to
the installed distribution that provides it; the standard library and modules no
distribution provides (the notebook's own, shipped by value) need nothing.
"""

from __future__ import annotations

import ast
import dis
import functools
import importlib.metadata
import sys
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neural_jupyter.errors import ConfigurationError

# Never pinned: the job runs without neural-jupyter (report() is shipped in the bundle).
NOT_NEEDED = frozenset({"neural_jupyter", "neural_jupyter_report", "__main__", "builtins"})
RUNNER_NEEDS = ("cloudpickle",)  # the runner loads functions and cell inputs with it


@dataclass
class Requirements:
    """The requirement lines of a job and where each came from (for the dry run)."""

    lines: list[str] = field(default_factory=list)
    origin: str = "auto"  # auto, list, file
    sources: dict[str, list[str]] = field(default_factory=dict)  # line -> modules
    local: list[str] = field(default_factory=list)  # imported, but no distribution has them

    def describe(self) -> list[str]:
        shown = []
        for line in self.lines:
            modules = self.sources.get(line)
            shown.append(f"{line}  ({', '.join(modules)})" if modules else line)
        return shown


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def top_level(module: str | None) -> str | None:
    if not module or not isinstance(module, str):
        return None
    return module.split(".", 1)[0]


def is_standard(module: str) -> bool:
    return module in sys.stdlib_module_names or module in sys.builtin_module_names


def is_local(module: str) -> bool:
    """The notebook's own code: ``__main__`` or a module no distribution provides."""
    if module == "__main__":
        return True
    return module not in NOT_NEEDED and not is_standard(module) and module not in _distributions()


def needs_distribution(module: str) -> bool:
    """True for a module some installed distribution provides (not stdlib, not ours)."""
    return module not in NOT_NEEDED and not is_standard(module) and module in _distributions()


def pinned(modules: Iterable[str], extra: Sequence[str] = ()) -> Requirements:
    """``dist==version`` for each module's distribution (local version labels dropped:
    ``torch==2.13.0`` rather than ``2.13.0+cpu``), plus ``extra`` distributions."""
    by_line: dict[str, list[str]] = {}
    local: list[str] = []
    for module in sorted(set(modules)):
        if module in NOT_NEEDED or is_standard(module):
            continue
        distributions = _distributions().get(module)
        if not distributions:
            local.append(module)
            continue
        for dist in sorted(set(distributions)):
            by_line.setdefault(_pin(dist), []).append(module)
    for dist in extra:
        by_line.setdefault(_pin(dist), [])
    lines = sorted(by_line, key=str.lower)
    return Requirements(lines, "auto", {k: v for k, v in by_line.items() if v}, local)


def _pin(dist: str) -> str:
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return dist
    return f"{dist}=={version.split('+', 1)[0]}"


def explicit(value: str | Path | Sequence[str], extra: Sequence[str] = ()) -> Requirements:
    """A list of requirement lines, or a requirements file, as given (``extra`` added)."""
    if isinstance(value, (str, Path)):
        path = Path(value).expanduser()
        if not path.is_file():
            raise ConfigurationError(
                f"requirements={str(value)!r} is neither 'auto' nor a requirements file"
            )
        lines = [
            line.strip()
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        origin = "file"
    else:
        lines = [str(line).strip() for line in value if str(line).strip()]
        origin = "list"
    names = {_name(line) for line in lines}
    for dist in extra:
        if _name(dist) not in names:
            lines.append(_pin(dist))
    return Requirements(lines, origin)


def _name(line: str) -> str:
    for stop in "=<>!~[; @":
        line = line.split(stop, 1)[0]
    return line.strip().lower().replace("_", "-")


# --- finding modules ---------------------------------------------------------------------
def modules_of_function(function: Any) -> set[str]:
    """Top-level modules a function needs (see the module docstring)."""
    found: set[str] = set()
    _visit(function, found, set())
    return found


def modules_of_values(values: Iterable[Any], depth: int = 3) -> set[str]:
    """Modules of the types of ``values`` (containers looked into ``depth`` levels deep)."""
    found: set[str] = set()
    for value in values:
        _value_modules(value, found, depth)
    return found


def modules_of_source(source: str) -> set[str]:
    """Top-level modules of the absolute ``import`` statements in Python source."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(top_level(alias.name) or "" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(top_level(node.module) or "")
    found.discard("")
    return found


def _value_modules(value: Any, found: set[str], depth: int) -> None:
    module = top_level(getattr(type(value), "__module__", None))
    if module:
        found.add(module)
    if depth <= 0:
        return
    if isinstance(value, dict):
        items: Iterable[Any] = list(value.keys())[:50] + list(value.values())[:50]
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)[:50]
    else:
        return
    for item in items:
        _value_modules(item, found, depth - 1)


def _visit(obj: Any, found: set[str], seen: set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, types.ModuleType):
        found.add(top_level(obj.__name__) or "")
        return
    module = top_level(getattr(obj, "__module__", None))
    if isinstance(obj, (types.FunctionType, type)):
        if module:
            found.add(module)
        if not module or not is_local(module):
            return  # a library's function or class: its distribution is enough
    if isinstance(obj, types.FunctionType):
        _visit_function(obj, found, seen)
    elif isinstance(obj, type):
        for member in vars(obj).values():
            if isinstance(member, (types.FunctionType, staticmethod, classmethod, property)):
                _visit(getattr(member, "__func__", getattr(member, "fget", member)), found, seen)
        for base in obj.__bases__:
            _visit(base, found, seen)
    else:
        _value_modules(obj, found, 1)
        kind = type(obj)
        if is_local(top_level(kind.__module__) or ""):
            _visit(kind, found, seen)


def _visit_function(function: types.FunctionType, found: set[str], seen: set[int]) -> None:
    globals_ = function.__globals__
    for code in _codes(function.__code__):
        for instruction in dis.get_instructions(code):
            if instruction.opname == "IMPORT_NAME":
                found.add(top_level(str(instruction.argval)) or "")
        for name in code.co_names:
            if name in globals_:
                _visit(globals_[name], found, seen)
    for cell in function.__closure__ or ():
        try:
            _visit(cell.cell_contents, found, seen)
        except ValueError:  # an empty cell
            continue
    for default in (function.__defaults__ or ()) + tuple((function.__kwdefaults__ or {}).values()):
        _visit(default, found, seen)
    found.discard("")


def _codes(code: types.CodeType) -> Iterable[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)
