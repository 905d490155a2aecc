"""User code that travels inside generated code: the source of custom layer factories.

A factory registered with ``register_layer`` is a live object in the user's kernel; a bundle
runs in another process, maybe on another machine, so ``train.py`` carries its source and
everything that source refers to, found by name:

* modules become imports (``import torch``, ``from torch import nn``); a module only on this
  machine (not from the standard library or an installed distribution) cannot travel;
* functions and classes from installed modules become imports; those defined in a notebook
  cell or a local file travel as source, with what they refer to in turn;
* plain constants (numbers, strings, tuples... that ``repr`` writes back exactly) become
  assignments;
* anything else (a tensor, an open file, a model instance) cannot travel, and the error says
  which name it is and what to do instead.

Sources come from ``inspect`` and ``linecache``: IPython registers each cell there, and a
class defined in a cell is found through its methods (Python 3.11's ``inspect`` cannot).
A lambda is cut out of its line with ``ast``. What cannot be found raises a
``CompilationError`` naming the object, its file and the fix.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import functools
import inspect
import linecache
import os
import sys
import textwrap
import types
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from neural_jupyter.dsl.analyzer import snake_case
from neural_jupyter.errors import CompilationError

# distributions a generated script already requires (requirements.txt lists them)
FRAMEWORK_DISTRIBUTIONS = frozenset({"torch", "numpy", "keras"})
_CONSTANT_TYPES = (type(None), bool, int, float, complex, str, bytes)


@dataclass
class Shipment:
    """Imports and definitions that make some user objects available in a generated module.

    ``provided`` maps names the module already imports to their import statements (a user
    binding of the same name must mean the same thing); ``taken`` holds names the module
    defines itself, which shipped code must not reuse.
    """

    provided: dict[str, str]
    taken: frozenset[str]
    imports: dict[str, str] = field(default_factory=dict)  # name -> import statement
    definitions: dict[str, str] = field(default_factory=dict)  # name -> source, in order
    distributions: set[str] = field(default_factory=set)  # third-party, for requirements
    used_provided: set[str] = field(default_factory=set)
    _bound: dict[str, Any] = field(default_factory=dict)

    def entry(self, factory: Any, layer: str, role: str) -> str:
        """Ship ``factory`` and return the name generated code calls it by."""
        name = getattr(factory, "__name__", "")
        if name == "<lambda>" or not name.isidentifier():
            name = f"{snake_case(layer)}_{role}"
        self.ship(factory, name, f"custom layer {layer}: {role}")
        return name

    def ship(self, value: Any, name: str, owner: str) -> None:
        """Make ``name`` mean ``value`` in the generated module."""
        if name in self._bound:
            if self._bound[name] is value or _same_constant(self._bound[name], value):
                return
            raise CompilationError(
                f"{owner} uses the name '{name}' for something else than another custom "
                "layer's code does",
                hint="rename one of them; both go into the same generated module",
            )
        if name in self.taken:
            raise CompilationError(
                f"{owner} uses the name '{name}', which the generated module defines itself",
                hint=f"rename '{name}' in your code (e.g. '{name}_')",
            )
        self._bound[name] = value
        if isinstance(value, types.ModuleType):
            statement = _module_import(value, name)
        else:  # a function, class or other named object of an installed module
            statement = _object_import(value, name)
        if statement is not None:
            self._add_import(name, statement, value, owner)
            return
        if name in self.provided:
            raise CompilationError(
                f"{owner} uses '{name}' for a {type(value).__name__}, but the generated module "
                f"has '{self.provided[name]}'",
                hint="use another name for it in your code",
            )
        if _is_constant(value):
            self.definitions[name] = f"{name} = {value!r}"
            return
        if isinstance(value, types.ModuleType):
            raise CompilationError(
                f"{owner} uses module '{value.__name__}' (as {name}), which exists only on "
                "this machine, so the bundle cannot import it",
                hint=f"import what you need from it by name (from {value.__name__} import ...) "
                "so its source travels, or install it as a package where the job runs",
            )
        if isinstance(value, (types.FunctionType, type)):
            self._ship_source(value, name, owner)
            return
        raise CompilationError(
            f"{owner} uses '{name}', a {type(value).__name__} object, which cannot be written "
            "into the generated code",
            hint="create it inside the factory, or make it a layer parameter; only modules, "
            "functions, classes and plain constants travel in a bundle",
        )

    def _add_import(self, name: str, statement: str, value: Any, owner: str) -> None:
        if name in self.provided:
            if self.provided[name] != statement:
                raise CompilationError(
                    f"{owner} binds '{name}' with '{statement}', but the generated module "
                    f"has '{self.provided[name]}'",
                    hint="use another name for it in your code",
                )
            self.used_provided.add(name)
            return
        self.imports[name] = statement
        distribution = _distribution_of(_module_name(value))
        if distribution and distribution not in FRAMEWORK_DISTRIBUTIONS:
            self.distributions.add(distribution)

    def _ship_source(self, value: types.FunctionType | type, name: str, owner: str) -> None:
        what = f"{'class' if isinstance(value, type) else 'function'} {value.__qualname__}"
        path = f"{owner} → {what}"
        source = _source_of(value, path)
        own = value.__name__
        if own == "<lambda>":
            block = f"{name} = {source}"
            own = name
        else:
            block = source if own == name else f"{source}\n\n\n{name} = {own}"
        scope = _scope_of(value)
        for free in sorted(_free_names(block)):
            if free in (own, name) or free == "__class__":
                continue
            if free in scope:
                self.ship(scope[free], free, path)
            elif not hasattr(builtins, free):
                raise CompilationError(
                    f"{path} uses the name '{free}', which is not defined",
                    hint=f"define '{free}' before compiling (run the cell that defines it)",
                )
        if own != name and own not in self._bound:
            self._bound[own] = value
        origin = _filename_of(value)
        self.definitions[name] = f"# {what}, copied from {origin}\n{block}" if origin else block

    @property
    def shipped(self) -> bool:
        """Whether any user code or import was added."""
        return bool(self.definitions or self.imports)

    def import_lines(self) -> list[str]:
        return list(dict.fromkeys(self.imports.values()))

    def definition_blocks(self) -> list[str]:
        return list(self.definitions.values())


# --- finding sources ------------------------------------------------------------------------
def _source_of(value: types.FunctionType | type, what: str) -> str:
    if isinstance(value, types.FunctionType) and value.__name__ == "<lambda>":
        return _lambda_source(value, what)
    try:
        return textwrap.dedent(inspect.getsource(value)).rstrip("\n")
    except (OSError, TypeError) as exc:
        if isinstance(value, type):
            found = _class_source(value)
            if found is not None:
                return found
        raise _no_source(value, what, exc) from None


def _no_source(value: Any, what: str, exc: BaseException | str) -> CompilationError:
    filename = _filename_of(value)
    where = f" (defined in {filename})" if filename else ""
    return CompilationError(
        f"cannot write the source of {what} into the generated code{where}: {exc}",
        hint="define it in a notebook cell or a .py file (code made with exec() or typed at "
        "a plain Python prompt keeps no source), or in an installed package",
    )


def _filename_of(value: Any) -> str | None:
    code = getattr(value, "__code__", None)
    if code is not None:
        return code.co_filename
    for member in _functions_in(value):
        return member.__code__.co_filename
    return None


def _functions_in(cls: Any) -> list[types.FunctionType]:
    if not isinstance(cls, type):
        return []
    found = []
    for member in vars(cls).values():
        member = getattr(member, "__func__", member)  # staticmethod, classmethod
        member = getattr(member, "fget", member)  # property
        if isinstance(member, types.FunctionType) and member.__qualname__.startswith(
            cls.__qualname__ + "."
        ):
            found.append(member)
    return found


def _parsed(filename: str) -> tuple[ast.Module, list[str]] | None:
    lines = linecache.getlines(filename)
    if not lines:
        return None
    try:
        return ast.parse("".join(lines)), lines
    except SyntaxError:
        return None


def _class_source(cls: type) -> str | None:
    """A class's source found through its methods' code (cells have no module file)."""
    first_line = getattr(cls, "__firstlineno__", None)  # Python 3.13+
    for method in _functions_in(cls):
        code = method.__code__
        parsed = _parsed(code.co_filename)
        if parsed is None:
            continue
        tree, lines = parsed
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ClassDef)
                and node.name == cls.__name__
                and node.lineno <= code.co_firstlineno <= (node.end_lineno or 0)
                and (first_line is None or node.lineno == first_line)
            ):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                text = "".join(lines[start - 1 : node.end_lineno])
                return textwrap.dedent(text).rstrip("\n")
    return None


def _lambda_source(function: types.FunctionType, what: str) -> str:
    """The text of a lambda expression, cut out of the statement that holds it."""
    code = function.__code__
    parsed = _parsed(code.co_filename)
    if parsed is None:
        raise _no_source(function, what, "its file or cell is not available")
    tree, lines = parsed
    candidates = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Lambda) and node.lineno == code.co_firstlineno
    ]
    positions = {(line, col) for line, _, col, _ in code.co_positions() if line is not None}
    if len(candidates) > 1:
        candidates = [
            node
            for node in candidates
            if any(
                (line, col) in positions
                for line, col in (
                    (child.lineno, child.col_offset)
                    for child in ast.walk(node.body)
                    if hasattr(child, "col_offset")
                )
            )
        ]
    if len(candidates) != 1:
        raise _no_source(function, what, "cannot tell which lambda on its line it is")
    node = candidates[0]
    segment = ast.get_source_segment("".join(lines), node)
    if segment is None:  # pragma: no cover - parsed from the same text
        raise _no_source(function, what, "its position in the source is unknown")
    return f"({segment})" if "\n" in segment else segment


def _scope_of(value: types.FunctionType | type) -> dict[str, Any]:
    """Names the object's code can see: its globals, then the closure's cells."""
    functions = [value] if isinstance(value, types.FunctionType) else _functions_in(value)
    scope: dict[str, Any] = {}
    if functions:
        scope.update(functions[0].__globals__)
    else:
        module = sys.modules.get(getattr(value, "__module__", ""), None)
        scope.update(vars(module) if module else {})
    for function in functions:
        cells = function.__closure__ or ()
        for name, cell in zip(function.__code__.co_freevars, cells, strict=True):
            if name == "__class__":
                continue
            try:
                scope[name] = cell.cell_contents
            except ValueError:  # an empty cell: the name was never assigned
                continue
    return scope


def _free_names(source: str) -> set[str]:
    """Names ``source`` reads from the module scope but does not define itself."""
    import symtable  # imports of this module stay light for compiles without custom layers

    table = symtable.symtable(source, "<shipped>", "exec")
    defined = {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported()}
    names: set[str] = set()
    stack = [table]
    while stack:
        current = stack.pop()
        for symbol in current.get_symbols():
            if symbol.is_referenced() and (symbol.is_global() or current is table):
                names.add(symbol.get_name())
        stack.extend(current.get_children())
    return names - defined


# --- imports --------------------------------------------------------------------------------
def _module_name(value: Any) -> str:
    if isinstance(value, types.ModuleType):
        return value.__name__
    return getattr(value, "__module__", "") or ""


def _module_import(module: types.ModuleType, name: str) -> str | None:
    """``import x`` for a module that is installed where bundles run too; else None."""
    if not _installed(module.__name__):
        return None
    full = module.__name__
    if full == name:
        return f"import {full}"
    parent, _, last = full.rpartition(".")
    if last == name and parent:
        return f"from {parent} import {name}"
    return f"import {full} as {name}"


def _object_import(value: Any, name: str) -> str | None:
    """``from module import obj`` when ``value`` comes from an installed module."""
    if _is_constant(value):
        return None
    module_name = getattr(value, "__module__", None)
    qualname = getattr(value, "__qualname__", None) or getattr(value, "__name__", "")
    if not isinstance(module_name, str) or not isinstance(qualname, str):
        return None
    if not module_name or "." in qualname or "<" in qualname or not _installed(module_name):
        return None
    module = sys.modules.get(module_name)
    if module is None or getattr(module, qualname, None) is not value:
        return None
    if qualname == name:
        return f"from {module_name} import {name}"
    return f"from {module_name} import {qualname} as {name}"


def _installed(module_name: str) -> bool:
    """From the standard library or installed into site-packages, so a bundle's Python can
    import it too (an editable install or a file next to the notebook is local: it travels
    as source)."""
    top = module_name.partition(".")[0]
    if not top or top == "__main__":
        return False
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return True
    module = sys.modules.get(module_name) or sys.modules.get(top)
    filename = getattr(module, "__file__", None)
    if not filename:
        return False
    path = os.path.realpath(filename)
    return any(path.startswith(directory + os.sep) for directory in _site_directories())


@functools.cache
def _site_directories() -> tuple[str, ...]:
    import site
    import sysconfig

    directories = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    with contextlib.suppress(AttributeError):  # old virtualenvs' site module lacks these
        directories.update(site.getsitepackages())
        directories.add(site.getusersitepackages())
    return tuple(sorted(os.path.realpath(d) for d in directories if d))


def _distribution_of(module_name: str) -> str | None:
    """The installed distribution that provides a third-party module (for requirements)."""
    top = module_name.partition(".")[0]
    if top in sys.stdlib_module_names or not _installed(module_name):
        return None
    names = _packages().get(top)
    return names[0] if names else None


@functools.cache
def _packages() -> dict[str, list[str]]:
    import importlib.metadata  # ~15 ms (email, zipfile...): only when code is shipped

    return dict(importlib.metadata.packages_distributions())


# --- values ---------------------------------------------------------------------------------
def _is_constant(value: Any) -> bool:
    """A value whose ``repr`` reads back as an equal value."""
    if not _plain(value):
        return False
    try:
        return ast.literal_eval(repr(value)) == value
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False


def _plain(value: Any, depth: int = 0) -> bool:
    if depth > 20:
        return False
    if isinstance(value, _CONSTANT_TYPES):
        return True
    if isinstance(value, (tuple, list, set, frozenset)):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in value.items())
    return False


def _same_constant(a: Any, b: Any) -> bool:
    return _is_constant(a) and _is_constant(b) and type(a) is type(b) and a == b


def import_block(statements: list[str]) -> list[str]:
    """Import lines grouped and ordered as ruff's isort does: the standard library, a blank
    line, then the rest; in each group ``import x`` lines before ``from x import y`` lines,
    each by module name."""
    groups: tuple[list[str], list[str]] = ([], [])
    for statement in dict.fromkeys(statements):
        module = statement.split()[1]
        groups[module.partition(".")[0] not in sys.stdlib_module_names].append(statement)
    lines: list[str] = []
    for group in groups:
        if group:
            if lines:
                lines.append("")
            lines += sorted(group, key=lambda s: (s.startswith("from "), s.split()[1].lower()))
    return lines


def top_level_names(source: str) -> set[str]:
    """Names a module's top level defines (functions, classes, assignments, imports)."""
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).partition(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def check_script_names(
    shipment: Shipment, script_names: Collection[str], script_imports: Collection[str]
) -> None:
    """Shipped code must not reuse a name a training script defines for itself (the same
    import statement is fine)."""
    same = {name for name, line in shipment.imports.items() if line in script_imports}
    shipped = (shipment.definitions.keys() | shipment.imports.keys()) - same
    clash = sorted(shipped & script_names)
    if clash:
        raise CompilationError(
            f"code shipped with a custom layer defines '{clash[0]}', a name train.py uses "
            "for itself",
            hint=f"rename '{clash[0]}' in your code (e.g. '{clash[0]}_')",
        )
