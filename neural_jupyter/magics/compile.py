"""``%%neural_compile`` (model source → ``CompiledModel``, summary shown) and
``%neural_builder`` (a form that writes model source)."""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from neural_jupyter.magics.arguments import (
    FRAMEWORK_CHOICES,
    SHOW_CHOICES,
    parse_arguments,
    renamed_flag,
)
from neural_jupyter.magics.base import NeuralMagicsBase


@magics_class
class CompileMagics(NeuralMagicsBase):
    """``%%neural_compile`` and ``%neural_builder``."""

    @magic_arguments()
    @argument(
        "path",
        nargs="?",
        help="Line-magic form: a .neural file to compile (the cell form compiles the cell).",
    )
    @argument(
        "-f",
        "--framework",
        choices=FRAMEWORK_CHOICES,
        help="Framework to generate code for (default: NeuralMagics.default_framework).",
    )
    @argument(
        "-b",
        "--backend",
        choices=FRAMEWORK_CHOICES,
        help="Deprecated: the old name of --framework.",
    )
    @argument(
        "--as",
        dest="as_name",
        metavar="NAME",
        help="Variable to store the CompiledModel in (default: the network's name).",
    )
    @argument(
        "--show",
        choices=SHOW_CHOICES,
        help="Display the summary table, the generated code, both, or nothing.",
    )
    @line_cell_magic
    def neural_compile(self, line: str, cell: str | None = None) -> None:
        """Compile a model: parse, validate, infer shapes, generate code, show a summary.

        The CompiledModel is stored in the namespace under the network's name (or --as).
        """
        from neural_jupyter.compiler import compile_all, compile_file

        args = parse_arguments(self.neural_compile, line)
        framework = renamed_flag(args, "backend", "framework") or self.options.default_framework
        if cell is None:
            if not args.path:
                raise UsageError("give a .neural file, or use %%neural_compile with a cell")
            models = [compile_file(args.path, framework)]
        else:
            if args.path:
                raise UsageError(f"unexpected argument {args.path!r} in the cell form")
            models = compile_all(cell, framework, source_name=self.cell_name())
        if args.as_name and len(models) != 1:
            raise UsageError("--as needs exactly one network in the cell")
        show = args.show or self.options.show
        for model in models:
            self.store(args.as_name or model.name, model)
            self._show_model(model, show)

    def _show_model(self, model: Any, show: str) -> None:
        from IPython.display import Code

        from neural_jupyter.ui.views import summary

        if show in ("summary", "both"):
            self.display(summary(model))
        if show in ("code", "both"):
            self.display(Code(model.code, language="python"))

    @magic_arguments()
    @argument("--name", default="MyNet", help="Network name to start with.")
    @argument("--input", dest="input_shape", default="28, 28, 1", help="Input shape to start with.")
    @line_magic
    def neural_builder(self, line: str) -> Any:
        """A form to build a network layer by layer with live validation; writes the model
        source into a new cell."""
        from neural_jupyter.ui.builder import ModelBuilder

        args = parse_arguments(self.neural_builder, line)
        self.display(ModelBuilder(self.shell, args.name, args.input_shape))
        return None
