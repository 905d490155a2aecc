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
    RemoteError,
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
    "Sweep": "neural_jupyter.api",
    "ExperimentCoordinator": "neural_jupyter.api",
    "Stage": "neural_jupyter.jobs.sweeps",
    "summary": "neural_jupyter.ui.views",
    "plot": "neural_jupyter.ui.views",
    "estimate_cost": "neural_jupyter.pricing",
    "compare_platforms": "neural_jupyter.pricing",
    "environment_report": "neural_jupyter.runtime.env_report",
    "remote": "neural_jupyter.usercode.function",
    "run_script": "neural_jupyter.usercode.script",
    "run_cell": "neural_jupyter.usercode.cell",
    "report": "neural_jupyter_report",
    "deploy": "neural_jupyter.deploy",
    "undeploy": "neural_jupyter.deploy",
    "Endpoint": "neural_jupyter.deploy.endpoint",
    "register_layer": "neural_jupyter.dsl.custom",
    "unregister_layer": "neural_jupyter.dsl.custom",
    "registered_layers": "neural_jupyter.dsl.custom",
    "Param": "neural_jupyter.dsl.params",
    "warm": "neural_jupyter.runtime.warm",
}

if TYPE_CHECKING:  # pragma: no cover
    from neural_jupyter.compiler import CompiledModel, compile_file, compile_model
    from neural_jupyter.dsl.custom import register_layer, registered_layers, unregister_layer
    from neural_jupyter.dsl.params import Param

__all__ = [
    "CompilationError",
    "CompiledModel",
    "DSLError",
    "DSLSyntaxError",
    "DSLValidationError",
    "Endpoint",
    "ExperimentCoordinator",
    "JobCancelled",
    "JobError",
    "JobFailed",
    "JobTimeout",
    "NeuralError",
    "Param",
    "PlatformAuthError",
    "PlatformConnectionError",
    "PlatformError",
    "QuotaError",
    "RemoteError",
    "Stage",
    "Sweep",
    "__version__",
    "attach",
    "cancel",
    "compare_platforms",
    "compile_file",
    "compile_model",
    "deploy",
    "environment_report",
    "estimate_cost",
    "jobs",
    "load_ipython_extension",
    "plot",
    "register_layer",
    "registered_layers",
    "remote",
    "report",
    "run",
    "run_cell",
    "run_script",
    "submit",
    "summary",
    "undeploy",
    "unload_ipython_extension",
    "unregister_layer",
    "warm",
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


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where the prebuilt JupyterLab extension is (``jupyter labextension develop .``)."""
    return [{"src": "labextension", "dest": "neural-jupyter"}]


def load_ipython_extension(ipython: Any) -> None:
    """Called by ``%load_ext neural_jupyter``."""
    from neural_jupyter import magics

    magics.register(ipython)
    # the compiler (no framework, no widgets: ~20 ms of imports) loads with the extension,
    # so the first %%neural_compile of the session only compiles
    from neural_jupyter.compiler import CompiledModel
    from neural_jupyter.ui.views import install_legacy_methods, register_formatters

    register_formatters(ipython)  # a cell ending in a compiled model shows its summary
    install_legacy_methods(CompiledModel)  # model.summary() & co., deprecated

    _endpoint_housekeeping()


def _endpoint_housekeeping() -> None:
    """Local endpoints whose kernel ended are marked deleted, endpoints past their max_hours
    are deleted (neural_jupyter.deploy); never in the way of loading the extension."""
    import os

    from neural_jupyter import paths

    if not (paths.home() / "jobs.sqlite").exists() or os.environ.get(
        "NEURAL_JUPYTER_NO_HOUSEKEEPING"
    ):
        return
    try:
        from neural_jupyter.deploy.lifecycle import housekeeping

        housekeeping()
    except Exception as exc:  # a broken store is reported where it is used
        print(f"neural-jupyter: could not check the endpoints: {exc}")


def unload_ipython_extension(ipython: Any) -> None:
    """Called by ``%unload_ext neural_jupyter``; removes our magics and options."""
    from neural_jupyter import magics

    magics.unregister(ipython)
