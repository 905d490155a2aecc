"""Places a job can run. Built-ins are listed here; third parties register theirs under the
``neural_jupyter.backends`` entry-point group (``name = "package.module:BackendClass"``).

Modules are imported only when a backend is used, so no cloud SDK loads with the package.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from neural_jupyter.backends.base import Backend
from neural_jupyter.dsl.suggest import did_you_mean
from neural_jupyter.errors import ConfigurationError

ENTRY_POINT_GROUP = "neural_jupyter.backends"

BUILTIN: dict[str, str] = {
    "local": "neural_jupyter.backends.local:LocalBackend",
    "ssh": "neural_jupyter.backends.ssh:SSHBackend",
    "sagemaker": "neural_jupyter.backends.sagemaker:SageMakerBackend",
    "vertex": "neural_jupyter.backends.vertex:VertexBackend",
    "azureml": "neural_jupyter.backends.azureml:AzureMLBackend",
    "databricks": "neural_jupyter.backends.databricks:DatabricksBackend",
    "kaggle": "neural_jupyter.backends.kaggle:KaggleBackend",
    "kubernetes": "neural_jupyter.backends.kubernetes:KubernetesBackend",
}

_instances: dict[str, Backend] = {}


def available() -> dict[str, str]:
    """Backend name -> "module:Class" for built-ins and installed plug-ins."""
    found = dict(BUILTIN)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry.value)
    return found


def get_backend(name: str) -> Backend:
    """The backend registered as ``name`` (one shared instance per name)."""
    if name in _instances:
        return _instances[name]
    targets = available()
    if name not in targets:
        raise ConfigurationError(
            f"unknown backend '{name}'",
            hint=did_you_mean(name, targets) or "available: " + ", ".join(sorted(targets)),
        )
    module_name, _, class_name = targets[name].partition(":")
    backend_class = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(backend_class, type) and issubclass(backend_class, Backend)):
        raise ConfigurationError(f"backend '{name}' ({targets[name]}) is not a Backend class")
    instance = backend_class()
    _instances[name] = instance
    return instance
