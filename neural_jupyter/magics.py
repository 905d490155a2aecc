"""IPython magics: thin wrappers that parse arguments, call the public API and display.

Options are traitlets (``%config NeuralMagics.default_backend = "keras"``); each magic's
``@argument`` help strings are its documentation (``%neural_compile?``) and feed the generated
magics reference.
"""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Enum
from traitlets.config import Configurable

BACKEND_CHOICES = ("pytorch", "keras")
SHOW_CHOICES = ("summary", "code", "both", "none")


@magics_class
class NeuralMagics(Magics, Configurable):
    """The ``%neural_*`` magics."""

    default_backend = Enum(
        BACKEND_CHOICES,
        default_value="pytorch",
        config=True,
        help="Framework that %%neural_compile generates code for when --backend is not given.",
    )
    show = Enum(
        SHOW_CHOICES,
        default_value="summary",
        config=True,
        help="What %%neural_compile displays when --show is not given.",
    )

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        Configurable.__init__(self, config=shell.config if shell is not None else None)
        Magics.__init__(self, shell=shell, **kwargs)
        if shell is not None:
            shell.configurables.append(self)

    # --- helpers -----------------------------------------------------------------------------
    def _cell_name(self) -> str:
        count = getattr(self.shell, "execution_count", None)
        return f"<cell In[{count}]>" if count else "<cell>"

    def _store(self, name: str, value: Any) -> None:
        if not name.isidentifier():
            raise UsageError(f"--as needs a Python identifier, got {name!r}")
        self.shell.user_ns[name] = value

    def _display(self, *objects: Any) -> None:
        from IPython.display import display

        display(*objects)

    # --- %%neural_compile ---------------------------------------------------------------------
    @magic_arguments()
    @argument(
        "path",
        nargs="?",
        help="Line-magic form: a .neural file to compile (the cell form compiles the cell).",
    )
    @argument(
        "-b",
        "--backend",
        choices=BACKEND_CHOICES,
        help="Framework to generate code for (default: NeuralMagics.default_backend).",
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

        args = parse_argstring(self.neural_compile, line)
        backend = args.backend or self.default_backend
        if cell is None:
            if not args.path:
                raise UsageError("give a .neural file, or use %%neural_compile with a cell")
            models = [compile_file(args.path, backend)]
        else:
            if args.path:
                raise UsageError(f"unexpected argument {args.path!r} in the cell form")
            models = compile_all(cell, backend, source_name=self._cell_name())
        if args.as_name and len(models) != 1:
            raise UsageError("--as needs exactly one network in the cell")
        show = args.show or self.show
        for model in models:
            self._store(args.as_name or model.name, model)
            self._show_model(model, show)

    def _show_model(self, model: Any, show: str) -> None:
        from IPython.display import Code

        if show in ("summary", "both"):
            self._display(model.summary())
        if show in ("code", "both"):
            self._display(Code(model.code, language="python"))
