"""The frameworks models are generated for: their names, whether one is installed here, and
turning generated code into a framework model. Nothing is imported until it is used (a
PyTorch-only notebook never imports the Keras generator, and no framework loads at import).

The compiler (``CompiledModel.build``) and the jobs layer (``TrainingRun.model``) both build
models through here, so the jobs layer needs no compiler.
"""

from __future__ import annotations

import importlib
import importlib.util
import linecache
import os
import sys
import types
from pathlib import Path
from typing import Any

from neural_jupyter.dsl.spec import NetworkSpec
from neural_jupyter.errors import ConfigurationError, MissingDependencyError

FRAMEWORKS = ("pytorch", "keras")
ALIASES = {"torch": "pytorch", "tf": "keras", "tensorflow": "keras"}
FRAMEWORK_PACKAGES = {"pytorch": ("torch", "torch"), "keras": ("keras", "keras")}


def framework_name(framework: str) -> str:
    """``framework`` as one of ``FRAMEWORKS`` (``torch`` → ``pytorch``, ``tf`` → ``keras``)."""
    key = framework.lower()
    key = ALIASES.get(key, key)
    if key not in FRAMEWORKS:
        raise ConfigurationError(
            f"unknown framework '{framework}'", hint="use one of: " + ", ".join(FRAMEWORKS)
        )
    return key


def generate(spec: NetworkSpec, framework: str) -> str:
    """The model source generated for ``framework`` (its generator imported on first use)."""
    module = importlib.import_module(f"neural_jupyter.codegen.{framework_name(framework)}")
    return module.generate(spec)


def require_framework(framework: str) -> None:
    """``MissingDependencyError`` naming the extra unless ``framework`` can be imported here.

    Compiling for Keras checks it (choosing Keras is explicit; a PyTorch summary needs no
    torch); a local run checks the framework it is about to train with."""
    module, extra = FRAMEWORK_PACKAGES[framework_name(framework)]
    require_module(module, extra, f"The {framework} framework")


def require_module(module: str, extra: str, feature: str) -> None:
    """``MissingDependencyError`` (naming ``extra``) unless ``module`` can be imported."""
    if module in sys.modules:
        if sys.modules[module] is None:  # an import that is blocked
            raise MissingDependencyError(module, extra, feature)
        return
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise MissingDependencyError(module, extra, feature)


def prepare_keras() -> None:
    """Keras 3 needs a backend; pick an installed one unless the user chose already."""
    require_module("keras", "keras", "Building a Keras model")
    config = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "keras.json"
    if "keras" in sys.modules or os.environ.get("KERAS_BACKEND") or config.exists():
        return
    for backend in ("tensorflow", "jax", "torch"):
        if importlib.util.find_spec(backend) is not None:
            os.environ["KERAS_BACKEND"] = backend
            return
    raise MissingDependencyError("tensorflow, jax or torch", "keras", "Keras")


def load_generated_module(code: str, name: str) -> types.ModuleType:
    """Execute generated code as a module whose tracebacks show the generated lines."""
    filename = f"<{name}>"
    module = types.ModuleType(name)
    module.__file__ = filename
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    exec(compile(code, filename, "exec"), module.__dict__)
    return module


def build_model(code: str, name: str, framework: str) -> Any:
    """Import ``framework`` and return a fresh, untrained model from its generated ``code``."""
    if framework_name(framework) == "pytorch":
        require_module("torch", "torch", "Building a PyTorch model")
    else:
        prepare_keras()
    return load_generated_module(code, f"neural_generated_{name}").build_model()
