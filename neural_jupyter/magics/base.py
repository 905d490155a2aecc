"""The options every ``%neural_*`` magic reads (``NeuralMagics``, validated traitlets) and the
base class of the magics classes (the shell, the options, storing and displaying results)."""

from __future__ import annotations

import math
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics
from traitlets import Enum, Float, TraitError, observe, validate
from traitlets.config import Configurable

from neural_jupyter import deprecation
from neural_jupyter.magics.arguments import FRAMEWORK_CHOICES, MONITOR_CHOICES, SHOW_CHOICES


def non_negative(owner: str, proposal: Any) -> float:
    """A traitlets ``@validate`` body: a finite number of at least 0."""
    value = proposal["value"]
    if not math.isfinite(value) or value < 0:
        name = proposal["trait"].name
        raise TraitError(f"{owner}.{name} must be a number of at least 0, got {value!r}")
    return value


class ConfigurableMagics(Magics, Configurable):
    """A magics class with ``%config`` options: configured from the shell's config and
    listed in ``shell.configurables`` (so ``%config Class.option = value`` reaches it)."""

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        Configurable.__init__(self, config=shell.config if shell is not None else None)
        Magics.__init__(self, shell=shell, **kwargs)
        if shell is not None:
            shell.configurables.append(self)


class NeuralMagics(Configurable):
    """Options of the ``%neural_*`` magics: ``%config NeuralMagics.<option> = value``."""

    default_framework = Enum(
        FRAMEWORK_CHOICES,
        default_value="pytorch",
        config=True,
        help="Framework that %%neural_compile generates code for when --framework is not given.",
    )
    default_backend = Enum(
        FRAMEWORK_CHOICES,
        default_value=None,
        allow_none=True,
        config=True,
        help="Deprecated: the old name of default_framework (setting it sets that, with a "
        "warning).",
    )
    show = Enum(
        SHOW_CHOICES,
        default_value="summary",
        config=True,
        help="What %%neural_compile displays when --show is not given.",
    )
    monitor = Enum(
        MONITOR_CHOICES,
        default_value="auto",
        config=True,
        help="How %%neural_run and %neural_attach show progress: a widget where a Jupyter "
        "front-end is likely, text otherwise (auto), or always one of them.",
    )
    confirm_cost_above = Float(
        5.0,
        config=True,
        help="%neural_submit asks for --yes (or a click in the panel) when a job's budget "
        "(--max-hours × hourly price) is above this many US dollars.",
    )

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(config=shell.config if shell is not None else None, **kwargs)
        if shell is not None:
            shell.configurables.append(self)

    @validate("confirm_cost_above")
    def _valid_cost(self, proposal: Any) -> float:
        return non_negative("NeuralMagics", proposal)

    @observe("default_backend")
    def _default_backend_renamed(self, change: Any) -> None:
        if change["new"] is not None:
            deprecation.warn("NeuralMagics.default_backend", "NeuralMagics.default_framework")
            self.default_framework = change["new"]

    @classmethod
    def of(cls, shell: Any) -> NeuralMagics:
        """The shell's instance (made and registered on first use)."""
        for configurable in getattr(shell, "configurables", []):
            if isinstance(configurable, cls):
                return configurable
        return cls(shell=shell)


class NeuralMagicsBase(Magics):
    """What the ``%neural_*`` magics classes share: their options, storing and displaying."""

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self.options = NeuralMagics.of(shell) if shell is not None else NeuralMagics()

    def cell_name(self) -> str:
        count = current_cell_number(self.shell)
        return f"<cell In[{count}]>" if count else "<cell>"

    def store(self, name: str | None, value: Any) -> None:
        """``--as NAME``: keep ``value`` in the notebook under ``name`` (if given)."""
        if name is None:
            return
        if not name.isidentifier():
            raise UsageError(f"--as needs a Python identifier, got {name!r}")
        self.shell.user_ns[name] = value

    def data_options(self, args: Any) -> dict[str, Any]:
        """``--val`` and ``--target`` as API keywords, names looked up in the notebook."""
        return {"val": args.val, "target": args.target, "namespace": self.shell.user_ns}

    def monitor(self, args: Any) -> str:
        """``--monitor``, else ``NeuralMagics.monitor``."""
        return args.monitor or self.options.monitor

    def display(self, *objects: Any) -> None:
        from IPython.display import display

        display(*objects)

    def resolve_model(self, model_name: str | None, cell: str | None) -> Any:
        """The compiled model named ``model_name`` (or in ``cell``: a name or model source).

        ``cell`` is None for line magics, which have no cell to put model source in.
        """
        from neural_jupyter.compiler import CompiledModel, compile_model

        text = (cell or "").strip()
        name = model_name or (text if text.isidentifier() else None)
        if name is not None:
            value = self.shell.user_ns.get(name)
            if not isinstance(value, CompiledModel):
                raise UsageError(not_a_model(name, self.shell.user_ns, cell is not None))
            return value
        if not text:
            raise UsageError(
                "put the model source (or a compiled model's name) in the cell, or use --model NAME"
            )
        return compile_model(text, self.options.default_framework, source_name=self.cell_name())


def current_cell_number(shell: Any) -> int | None:
    """The prompt number of the cell being executed (``In [2]``), as the user sees it.

    IPython counts the next cell up before running the current one, so ``execution_count``
    is one ahead while a cell runs; the running cell's own number is on its result.
    """
    result = getattr(getattr(shell, "displayhook", None), "exec_result", None)
    count = getattr(result, "execution_count", None)
    if isinstance(count, int) and count > 0:
        return count
    count = getattr(shell, "execution_count", None)
    return count - 1 if isinstance(count, int) and count > 1 else None


def not_a_model(name: str, namespace: dict[str, Any], has_cell: bool) -> str:
    from neural_jupyter.compiler import CompiledModel
    from neural_jupyter.dsl.suggest import did_you_mean

    models = sorted(k for k, v in namespace.items() if isinstance(v, CompiledModel))
    where = "run %%neural_compile first" + (
        " or put the model source in the cell" if has_cell else ""
    )
    known = f" (compiled models here: {', '.join(models)})" if models else ""
    suggestion = did_you_mean(name, models) if models else None
    return f"'{name}' is not a compiled model in this notebook{known}; {where}" + (
        f"; {suggestion}" if suggestion else ""
    )
