"""The public compile API: model source → ``CompiledModel`` (spec, generated code, summary)."""

from __future__ import annotations

import importlib.util
import linecache
import os
import sys
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from neural_jupyter.codegen import keras as keras_codegen
from neural_jupyter.codegen import pytorch as pytorch_codegen
from neural_jupyter.dsl import analyze
from neural_jupyter.dsl.parser import parse_cached
from neural_jupyter.dsl.spec import NetworkSpec
from neural_jupyter.errors import ConfigurationError, MissingDependencyError
from neural_jupyter.ui.summary import ModelSummary

GENERATORS: dict[str, Callable[[NetworkSpec], str]] = {
    "pytorch": pytorch_codegen.generate,
    "keras": keras_codegen.generate,
}


def check_backend(backend: str) -> str:
    key = backend.lower()
    aliases = {"torch": "pytorch", "tf": "keras", "tensorflow": "keras"}
    key = aliases.get(key, key)
    if key not in GENERATORS:
        raise ConfigurationError(
            f"unknown backend '{backend}'", hint="use one of: " + ", ".join(GENERATORS)
        )
    return key


def compile_model(
    source: str,
    backend: str = "pytorch",
    *,
    network: str | None = None,
    hparams: Mapping[str, Any] | None = None,
    source_name: str = "<source>",
) -> CompiledModel:
    """Parse, validate, infer shapes and generate code for one network in ``source``.

    ``hparams`` overrides ``HPO(...)`` values by name (see ``CompiledModel.search_space``);
    without it each takes its first choice or lower bound. Raises ``DSLSyntaxError`` or
    ``DSLValidationError`` with line, column and a caret snippet.
    """
    backend = check_backend(backend)
    program = parse_cached(source, source_name)
    spec = analyze(program, network, hparams)
    return CompiledModel(spec, backend)


def compile_all(
    source: str, backend: str = "pytorch", *, source_name: str = "<source>"
) -> list[CompiledModel]:
    """Compile every network defined in ``source`` (in order)."""
    backend = check_backend(backend)
    program = parse_cached(source, source_name)
    if not program.networks:
        analyze(program)  # raises the "no network is defined" error with its place
    return [CompiledModel(analyze(program, node.name), backend) for node in program.networks]


def compile_file(
    path: str | os.PathLike,
    backend: str = "pytorch",
    *,
    network: str | None = None,
    hparams: Mapping[str, Any] | None = None,
) -> CompiledModel:
    """``compile_model`` for a ``.neural`` file; errors name the file."""
    file = Path(path)
    if not file.is_file():
        raise ConfigurationError(f"no model file at {file}")
    return compile_model(
        file.read_text(encoding="utf-8"),
        backend,
        network=network,
        hparams=hparams,
        source_name=str(file),
    )


class CompiledModel:
    """A validated network and its generated code for one framework."""

    def __init__(self, spec: NetworkSpec, backend: str = "pytorch") -> None:
        self.spec = spec
        self.backend = check_backend(backend)
        self._code: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def source(self) -> str:
        return self.spec.source

    @property
    def code(self) -> str:
        """The generated model source (an ``nn.Module`` or a Keras ``build_model``)."""
        if self._code is None:
            self._code = GENERATORS[self.backend](self.spec)
        return self._code

    @property
    def search_space(self) -> dict[str, Any]:
        return self.spec.search_space

    @property
    def hparams(self) -> dict[str, Any]:
        return self.spec.hparams

    def with_hparams(self, **values: Any) -> CompiledModel:
        """The same network compiled with some ``HPO(...)`` values chosen."""
        merged = {**self.hparams, **values}
        return compile_model(
            self.source,
            self.backend,
            network=self.name,
            hparams=merged,
            source_name=self.spec.source_name,
        )

    def for_backend(self, backend: str) -> CompiledModel:
        return CompiledModel(self.spec, backend)

    def summary(self) -> ModelSummary:
        return ModelSummary(self.spec, self.backend)

    def build(self) -> Any:
        """Import the framework and return a fresh, untrained model."""
        if self.backend == "pytorch":
            _require("torch", "torch", "Building a PyTorch model")
        else:
            _prepare_keras()
        module = load_generated_module(self.code, f"neural_generated_{self.name}")
        return module.build_model()

    def plot(self) -> Any:
        """The network as an SVG block diagram (shapes and parameter counts)."""
        from neural_jupyter.runtime.bundle import spec_summary
        from neural_jupyter.ui.chart import Chart
        from neural_jupyter.ui.graph import graph_svg

        return Chart(
            graph_svg(spec_summary(self.spec, self.backend)),
            f"{self.name}: {len(self.spec.layers)} layers",
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the generated code (``.py``) or the model source (``.neural``)."""
        target = Path(path)
        if target.suffix == ".py":
            target.write_text(self.code, encoding="utf-8")
        elif target.suffix == ".neural":
            target.write_text(self.source, encoding="utf-8")
        else:
            raise ConfigurationError(
                f"cannot tell what to save from the suffix of {target.name}",
                hint="use .py for the generated code or .neural for the model source",
            )
        return target

    def __repr__(self) -> str:
        return (
            f"<CompiledModel {self.name} ({self.backend}): "
            f"{self.spec.trainable_params(self.backend):,} params, "
            f"{len(self.spec.layers)} layers>"
        )

    def _repr_html_(self) -> str:
        return self.summary()._repr_html_()

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(str(self.summary()))


def load_generated_module(code: str, name: str) -> types.ModuleType:
    """Execute generated code as a module whose tracebacks show the generated lines."""
    filename = f"<{name}>"
    module = types.ModuleType(name)
    module.__file__ = filename
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    exec(compile(code, filename, "exec"), module.__dict__)
    return module


def _require(module: str, extra: str, feature: str) -> None:
    if module not in sys.modules and importlib.util.find_spec(module) is None:
        raise MissingDependencyError(module, extra, feature)


def _prepare_keras() -> None:
    """Keras 3 needs a backend; pick an installed one unless the user chose already."""
    _require("keras", "keras", "Building a Keras model")
    config = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "keras.json"
    if "keras" in sys.modules or os.environ.get("KERAS_BACKEND") or config.exists():
        return
    for backend in ("tensorflow", "jax", "torch"):
        if importlib.util.find_spec(backend) is not None:
            os.environ["KERAS_BACKEND"] = backend
            return
    raise MissingDependencyError("tensorflow, jax or torch", "keras", "Keras")
