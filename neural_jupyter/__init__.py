"""neural-jupyter: define, compile, train and watch neural networks from notebook cells.

``%load_ext neural_jupyter`` registers the magics. Every magic is a thin layer over the Python
API exposed here (``compile_model``, ``run``, ``jobs``...). Importing this package imports no
deep-learning framework, cloud SDK or widget library; the API is loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from neural_jupyter.errors import (
    CompilationError,
    DSLError,
    DSLSyntaxError,
    DSLValidationError,
    JobCancelled,
    JobError,
    JobFailed,
    JobTimeout,
    NeuralError,
    PlatformAuthError,
    PlatformConnectionError,
    PlatformError,
    QuotaError,
)

__version__ = "0.1.0"

# public name -> module that defines it (imported on first attribute access)
_LAZY = {
    "compile_model": "neural_jupyter.compiler",
    "compile_file": "neural_jupyter.compiler",
    "CompiledModel": "neural_jupyter.compiler",
    "run": "neural_jupyter.api",
    "submit": "neural_jupyter.api",
    "attach": "neural_jupyter.api",
    "cancel": "neural_jupyter.api",
    "jobs": "neural_jupyter.jobs",
    "Sweep": "neural_jupyter.jobs.sweeps",
    "ExperimentCoordinator": "neural_jupyter.jobs.sweeps",
    "Stage": "neural_jupyter.jobs.sweeps",
    "estimate_cost": "neural_jupyter.pricing",
    "compare_platforms": "neural_jupyter.pricing",
    "environment_report": "neural_jupyter.runtime.env_report",
}

if TYPE_CHECKING:  # pragma: no cover
    from neural_jupyter.compiler import CompiledModel, compile_file, compile_model

__all__ = [
    "CompilationError",
    "CompiledModel",
    "DSLError",
    "DSLSyntaxError",
    "DSLValidationError",
    "ExperimentCoordinator",
    "JobCancelled",
    "JobError",
    "JobFailed",
    "JobTimeout",
    "NeuralError",
    "PlatformAuthError",
    "PlatformConnectionError",
    "PlatformError",
    "QuotaError",
    "Stage",
    "Sweep",
    "__version__",
    "attach",
    "cancel",
    "compare_platforms",
    "compile_file",
    "compile_model",
    "environment_report",
    "estimate_cost",
    "jobs",
    "load_ipython_extension",
    "run",
    "submit",
    "unload_ipython_extension",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'neural_jupyter' has no attribute '{name}'")
    loaded = importlib.import_module(module)
    value = loaded if module.endswith(f".{name}") else getattr(loaded, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def load_ipython_extension(ipython: Any) -> None:
    """Called by ``%load_ext neural_jupyter``."""
    from neural_jupyter.magics import NeuralMagics

    ipython.register_magics(NeuralMagics(shell=ipython))


def unload_ipython_extension(ipython: Any) -> None:
    """Called by ``%unload_ext neural_jupyter``; removes our magics."""
    from neural_jupyter.magics import NeuralMagics

    manager = ipython.magics_manager
    for kind in ("line", "cell"):
        table = manager.magics[kind]
        for name in [
            n for n, fn in table.items() if isinstance(getattr(fn, "__self__", None), NeuralMagics)
        ]:
            del table[name]
    ipython.configurables = [c for c in ipython.configurables if not isinstance(c, NeuralMagics)]
