"""Places a job can run. Built-ins are listed here; third parties register theirs under the
``neural_jupyter.backends`` entry-point group (``name = "package.module:BackendClass"``).

Modules are imported only when a backend is used, and a backend module imports its SDK only
when it talks to its platform, so no cloud SDK loads with the package. A platform's facts are
class attributes of its backend (``backend_class(name).paid``, ``.max_parallel``, ``.extra``,
``.sdk_modules``, ``.price_table``), readable without an SDK or an instance.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib.metadata import entry_points

from neural_jupyter.backends import base
from neural_jupyter.backends.base import Backend, ResourceSpec
from neural_jupyter.dsl.suggest import did_you_mean
from neural_jupyter.errors import ConfigurationError, MissingDependencyError

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
    "ray": "neural_jupyter.backends.ray:RayBackend",
    "modal": "neural_jupyter.backends.modal:ModalBackend",
}

_instances: dict[str, Backend] = {}

# platform -> (the extra that installs its SDK, (module to find, pip package) pairs).
# require_platform checks these before anything else, so a missing SDK is the first thing
# a submit, a plan or a dry run reports.
PLATFORM_REQUIREMENTS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "ssh": ("ssh", (("paramiko", "paramiko"), ("tenacity", "tenacity"))),
    "sagemaker": ("sagemaker", (("boto3", "boto3"), ("tenacity", "tenacity"))),
    "vertex": (
        "vertex",
        (
            ("google.cloud.aiplatform_v1", "google-cloud-aiplatform"),
            ("google.cloud.storage", "google-cloud-storage"),
            ("tenacity", "tenacity"),
        ),
    ),
    "azureml": (
        "azureml",
        (
            ("azure.ai.ml", "azure-ai-ml"),
            ("azure.identity", "azure-identity"),
            ("tenacity", "tenacity"),
        ),
    ),
    "databricks": ("databricks", (("databricks.sdk", "databricks-sdk"), ("tenacity", "tenacity"))),
    "kaggle": (
        "kaggle",
        (("kagglesdk", "kaggle"), ("requests", "requests"), ("tenacity", "tenacity")),
    ),
    "kubernetes": ("kubernetes", (("kubernetes", "kubernetes"), ("tenacity", "tenacity"))),
    "ray": (
        "ray",
        (
            ("ray.job_submission", "ray[default]"),
            ("aiohttp", "ray[default]"),
            ("tenacity", "tenacity"),
        ),
    ),
    "modal": ("modal", (("modal", "modal"), ("tenacity", "tenacity"))),
}


def require_platform(platform: str) -> None:
    """Raise ``MissingDependencyError`` naming the extra when ``platform``'s SDK is not
    installed (platforms without a table entry, such as ``local`` and plug-ins, need none).

    Looks modules up without importing them (a cloud SDK can take seconds to import).
    """
    extra, modules = PLATFORM_REQUIREMENTS.get(platform, ("", ()))
    for module, package in modules:
        if not _installed(module):
            raise MissingDependencyError(package, extra, f"The {platform} platform")


def _installed(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None  # None: an import that is blocked
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing or blocked
        return False


def available() -> dict[str, str]:
    """Backend name -> "module:Class" for built-ins and installed plug-ins."""
    found = dict(BUILTIN)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry.value)
    return found


def data_parallel_platforms(min_nodes: int = 1) -> list[str]:
    """The built-in platforms that launch torchrun on at least ``min_nodes`` machines (1:
    several processes on one machine; 2: several machines), as a refusal's hint names them."""
    found = []
    for name in BUILTIN:
        try:
            if backend_class(name).max_nodes >= min_nodes:
                found.append(name)
        except Exception:  # a module that cannot load here is no suggestion
            continue
    return found


base.data_parallel_platforms = data_parallel_platforms  # refusals name these platforms


def backend_class(name: str) -> type[Backend]:
    """The class serving platform ``name`` (its facts, no instance, no SDK imported)."""
    targets = available()
    if name not in targets:
        raise ConfigurationError(
            f"unknown backend '{name}'",
            hint=did_you_mean(name, targets) or "available: " + ", ".join(sorted(targets)),
        )
    module_name, _, class_name = targets[name].partition(":")
    found = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(found, type) and issubclass(found, Backend)):
        raise ConfigurationError(f"backend '{name}' ({targets[name]}) is not a Backend class")
    return found


def get_backend(name: str) -> Backend:
    """The backend registered as ``name`` (one shared instance per name)."""
    if name not in _instances:
        _instances[name] = backend_class(name)()
    return _instances[name]


def is_paid(platform: str, resources: ResourceSpec | None = None) -> bool:
    """Whether a job with ``resources`` on ``platform`` is billed per job, so a submit must
    know its price (or be confirmed with ``--yes``): a cloud platform, a rented instance."""
    return backend_class(platform).is_paid(resources or ResourceSpec())
