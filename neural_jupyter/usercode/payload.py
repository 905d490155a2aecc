"""Pickling what a job runs: a function with its arguments, or a cell's inputs.

cloudpickle pickles functions and classes defined in the notebook (``__main__``) by value.
Modules of the notebook's own (a ``helpers.py`` beside it, which no installed distribution
provides) are registered for pickling by value too while pickling, so the job needs only the
installed libraries. The source lines of code defined in notebook cells travel along, so the
job's tracebacks show them.
"""

from __future__ import annotations

import contextlib
import linecache
import sys
import types
from collections.abc import Iterator, Mapping
from typing import Any

from neural_jupyter.errors import ConfigurationError, MissingDependencyError
from neural_jupyter.usercode.requirements import _codes, is_local, top_level


def cloudpickle_module() -> Any:
    try:
        import cloudpickle
    except ImportError as exc:  # pragma: no cover - a dependency
        raise MissingDependencyError("cloudpickle", "remote", "Running code as a job") from exc
    return cloudpickle


def pickle_function(function: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bytes:
    """The payload of a function job."""
    files, sources = notebook_sources(function)
    payload = {
        "function": function,
        "args": tuple(args),
        "kwargs": dict(kwargs),
        "code_files": files,
        "sources": sources,
    }
    return dumps(payload, by_value=local_modules(function), what=f"{_name(function)}()")


def pickle_inputs(inputs: Mapping[str, Any]) -> bytes:
    """The payload of a cell job: its inputs by name."""
    return dumps({"inputs": dict(inputs)}, by_value=set(), what="the cell's inputs")


def dumps(payload: Any, *, by_value: set[str], what: str) -> bytes:
    cloudpickle = cloudpickle_module()
    with _by_value(cloudpickle, by_value):
        try:
            return cloudpickle.dumps(payload)
        except Exception as exc:
            raise ConfigurationError(
                f"{what} cannot be sent to the job: {type(exc).__name__}: {exc}",
                hint="arguments, inputs and everything the function uses must be picklable "
                "(open files, locks, sockets and live connections are not)",
            ) from exc


@contextlib.contextmanager
def _by_value(cloudpickle: Any, modules: set[str]) -> Iterator[None]:
    registered = []
    try:
        for name in sorted(modules):
            module = sys.modules.get(name)
            if module is None:
                continue
            with contextlib.suppress(ValueError):  # registered already
                cloudpickle.register_pickle_by_value(module)
                registered.append(module)
        yield
    finally:
        for module in registered:
            cloudpickle.unregister_pickle_by_value(module)


def local_modules(function: Any) -> set[str]:
    """Imported top-level modules of the notebook's own that ``function`` reaches."""
    found: set[str] = set()
    _walk(function, found, set())
    return found


def _walk(obj: Any, found: set[str], seen: set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    module = top_level(getattr(obj, "__module__", None) or getattr(obj, "__name__", None))
    if isinstance(obj, types.ModuleType):
        if module and module != "__main__" and is_local(module) and module in sys.modules:
            found.add(module)
        return
    if not isinstance(obj, (types.FunctionType, type)) or not module or not is_local(module):
        return
    if module != "__main__" and module in sys.modules:
        found.add(module)
    if isinstance(obj, type):
        for member in vars(obj).values():
            _walk(getattr(member, "__func__", member), found, seen)
        return
    for code in _codes(obj.__code__):
        for name in code.co_names:
            if name in obj.__globals__:
                _walk(obj.__globals__[name], found, seen)
    for cell in obj.__closure__ or ():
        with contextlib.suppress(ValueError):
            _walk(cell.cell_contents, found, seen)


def notebook_sources(function: Any) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Where the code sent by value was written, for the job's tracebacks.

    cloudpickle replaces the file name of code it sends by value with ``<dynamic-code>``;
    the runner puts the names back (``name:first line`` -> file name) and fills its
    ``linecache`` with the lines of files that exist only here (notebook cells, the
    notebook's own modules).
    """
    files: dict[str, str] = {}
    sources: dict[str, list[str]] = {}
    for item in _local_functions(function):
        for code in _codes(item.__code__):
            files[f"{code.co_name}:{code.co_firstlineno}"] = code.co_filename
            if code.co_filename not in sources:
                lines = linecache.getlines(code.co_filename)
                if lines:
                    sources[code.co_filename] = lines
    return files, sources


def _local_functions(function: Any) -> list[types.FunctionType]:
    """``function`` and the notebook's functions (and methods) it reaches."""
    found: list[types.FunctionType] = []
    seen: set[int] = set()

    def visit(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        module = top_level(getattr(obj, "__module__", None))
        if not module or not is_local(module):
            return
        if isinstance(obj, type):
            for member in vars(obj).values():
                visit(getattr(member, "__func__", member))
        elif isinstance(obj, types.FunctionType):
            found.append(obj)
            for code in _codes(obj.__code__):
                for name in code.co_names:
                    if name in obj.__globals__:
                        visit(obj.__globals__[name])
            for cell in obj.__closure__ or ():
                with contextlib.suppress(ValueError):
                    visit(cell.cell_contents)

    visit(function)
    return found


def _name(function: Any) -> str:
    return getattr(function, "__qualname__", None) or getattr(function, "__name__", "function")
