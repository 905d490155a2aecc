"""Drawing what the compiler and the jobs layer produce: a compiled model's summary table and
block diagram, a training run's metric chart. ``CompiledModel`` and ``TrainingRun`` are data;
these are their pictures (``neural_jupyter.summary(model)``, ``neural_jupyter.plot(x)``).

In a notebook the extension registers ``summary`` as a compiled model's display, so a cell
ending in a model shows its table. The methods these replaced (``CompiledModel.summary()`` and
``.plot()``, ``TrainingRun.plot()`` and ``.compiled()``) are put back, deprecated, by
``install_legacy_methods`` (called when the extension or ``neural_jupyter.api`` loads);
without them an old call says where it went.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from neural_jupyter import deprecation

if TYPE_CHECKING:
    from neural_jupyter.compiler import CompiledModel
    from neural_jupyter.ui.chart import Chart
    from neural_jupyter.ui.summary import ModelSummary


def summary(model: CompiledModel) -> ModelSummary:
    """The layer table of a compiled model (HTML in a notebook, text with ``str()``)."""
    from neural_jupyter.ui.summary import ModelSummary

    return ModelSummary(model.spec, model.framework)


def plot(subject: Any, metrics: tuple[str, ...] | None = None) -> Chart:
    """A picture of ``subject``: a compiled model as an SVG block diagram (shapes and
    parameter counts), a ``TrainingRun`` as charts of its history (loss and every metric,
    train and validation; ``metrics`` picks some)."""
    from neural_jupyter.compiler import CompiledModel
    from neural_jupyter.jobs.result import TrainingRun
    from neural_jupyter.ui.chart import Chart, history_chart

    if isinstance(subject, CompiledModel):
        from neural_jupyter.runtime.bundle import spec_summary
        from neural_jupyter.ui.graph import graph_svg

        spec = subject.spec
        return Chart(
            graph_svg(spec_summary(spec, subject.framework)),
            f"{subject.name}: {len(spec.layers)} layers",
        )
    if isinstance(subject, TrainingRun):
        return history_chart(subject.history, metrics=metrics, title=subject.model_name)
    raise TypeError(f"plot() draws a CompiledModel or a TrainingRun, not {type(subject).__name__}")


def register_formatters(shell: Any) -> None:
    """Show a compiled model as its summary table in ``shell`` (HTML and plain text)."""
    formatters = shell.display_formatter.formatters
    formatters["text/html"].for_type_by_name(
        "neural_jupyter.compiler", "CompiledModel", lambda model: summary(model)._repr_html_()
    )
    formatters["text/plain"].for_type_by_name(
        "neural_jupyter.compiler",
        "CompiledModel",
        lambda model, printer, cycle: printer.text(str(summary(model))),
    )


def _legacy(owner: str, old: str, new: str, call: Callable[..., Any]) -> Callable[..., Any]:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        deprecation.warn(f"{owner}.{old}()", new, stacklevel=2)
        return call(self, *args, **kwargs)

    method.__name__ = old
    method.__doc__ = f"Deprecated: use ``{new}``."
    return method


def _compiled(run: Any) -> Any:
    from neural_jupyter.compiler import compile_model

    return compile_model(
        run.source, run.framework, network=run.model_name, hparams=run.hparams or None
    )


def install_legacy_methods(*classes: type) -> None:
    """Put back, deprecated, the display methods ``CompiledModel`` and ``TrainingRun`` (the
    ``classes`` given) had before they became data, and ``TrainingRun.compiled()``, which
    needs the compiler. The extension passes ``CompiledModel`` only (loading the jobs layer
    would slow ``%load_ext``); ``neural_jupyter.api`` passes both."""
    legacy = {
        "CompiledModel": (
            ("summary", "neural_jupyter.summary(model)", summary),
            ("plot", "neural_jupyter.plot(model)", plot),
        ),
        "TrainingRun": (
            ("plot", "neural_jupyter.plot(run)", plot),
            ("compiled", "neural_jupyter.compile_model(run.source, ...)", _compiled),
        ),
    }
    for cls in classes:
        for old, new, call in legacy[cls.__name__]:
            if old not in cls.__dict__:
                setattr(cls, old, _legacy(cls.__name__, old, new, call))
