"""The public compile API: model source → ``CompiledModel`` (spec and generated code).

A ``CompiledModel`` is data; its pictures (summary table, block diagram) are drawn by ``ui/``
(``neural_jupyter.summary(model)``, ``neural_jupyter.plot(model)``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from neural_jupyter.deprecation import alias_method, alias_property, renamed_parameters
from neural_jupyter.dsl import analyze
from neural_jupyter.dsl.custom import check_framework
from neural_jupyter.dsl.parser import parse_cached
from neural_jupyter.dsl.spec import NetworkSpec
from neural_jupyter.errors import ConfigurationError
from neural_jupyter.gc_pause import paused_gc
from neural_jupyter.runtime.frameworks import (
    FRAMEWORK_PACKAGES,
    FRAMEWORKS,
    build_model,
    framework_name,
    generate,
    load_generated_module,
    require_framework,
)

__all__ = [
    "FRAMEWORK_PACKAGES",
    "GENERATORS",
    "CompiledModel",
    "compile_all",
    "compile_file",
    "compile_model",
    "framework_name",
    "load_generated_module",
    "require_framework",
]

# the code generator of each framework, imported on first use (a PyTorch-only notebook never
# imports the Keras generator)
GENERATORS: dict[str, Callable[[NetworkSpec], str]] = {
    name: functools.partial(generate, framework=name) for name in FRAMEWORKS
}


@renamed_parameters(backend="framework")
@paused_gc
def compile_model(
    source: str,
    framework: str = "pytorch",
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
    framework = framework_name(framework)
    if framework == "keras":
        require_framework(framework)
    program = parse_cached(source, source_name)
    spec = analyze(program, network, hparams)
    return CompiledModel(spec, framework)


@renamed_parameters(backend="framework")
@paused_gc
def compile_all(
    source: str, framework: str = "pytorch", *, source_name: str = "<source>"
) -> list[CompiledModel]:
    """Compile every network defined in ``source`` (in order)."""
    framework = framework_name(framework)
    if framework == "keras":
        require_framework(framework)
    program = parse_cached(source, source_name)
    if not program.networks:
        analyze(program)  # raises the "no network is defined" error with its place
    return [CompiledModel(analyze(program, node.name), framework) for node in program.networks]


@renamed_parameters(backend="framework")
def compile_file(
    path: str | os.PathLike,
    framework: str = "pytorch",
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
        framework,
        network=network,
        hparams=hparams,
        source_name=str(file),
    )


class CompiledModel:
    """A validated network and its generated code for one framework."""

    @renamed_parameters(backend="framework")
    def __init__(self, spec: NetworkSpec, framework: str = "pytorch") -> None:
        self.spec = spec
        self.framework = framework_name(framework)
        check_framework(spec, self.framework)  # custom layers: built for it, still current
        self._code: str | None = None

    backend = alias_property("backend", "framework")  # the old word for the framework

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
            self._code = GENERATORS[self.framework](self.spec)
        return self._code

    @property
    def notes(self) -> tuple[str, ...]:
        """What the compiler applied differently from the source, or ignored, and why
        (Neural DSL forms such as an ``execution`` block or an inferred loss); the summary
        lists them."""
        return self.spec.notes

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
            self.framework,
            network=self.name,
            hparams=merged,
            source_name=self.spec.source_name,
        )

    def for_framework(self, framework: str) -> CompiledModel:
        """The same network with code generated for ``framework``."""
        return CompiledModel(self.spec, framework)

    for_backend = alias_method("for_backend", "for_framework")

    def build(self) -> Any:
        """Import the framework and return a fresh, untrained model."""
        return build_model(self.code, self.name, self.framework)

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
            f"<CompiledModel {self.name} ({self.framework}): "
            f"{self.spec.trainable_params(self.framework):,} params, "
            f"{len(self.spec.layers)} layers>"
        )

    def __getattr__(self, name: str) -> Any:
        # drawing moved to ui/ (the extension and neural_jupyter.api put these back, deprecated)
        if name in _DRAWN:
            raise AttributeError(
                f"CompiledModel.{name}() is now {_DRAWN[name]} (a compiled model is data; "
                "ui/ draws it)",
                name=name,
                obj=self,
            )
        raise AttributeError(
            f"'CompiledModel' object has no attribute '{name}'", name=name, obj=self
        )


_DRAWN = {"summary": "neural_jupyter.summary(model)", "plot": "neural_jupyter.plot(model)"}
