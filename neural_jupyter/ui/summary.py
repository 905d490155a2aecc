"""The model summary: a table of layers with shapes, parameters and notes, as HTML and text."""

from __future__ import annotations

import html
from dataclasses import dataclass

from neural_jupyter.dsl.spec import LayerSpec, NetworkSpec


def human_count(value: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.2f}{unit}"
    return f"{value:g}"


def human_bytes(value: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(v) for v in shape) + ("," if len(shape) == 1 else "") + ")"


@dataclass(frozen=True)
class Row:
    """One line of the summary table."""

    depth: int
    name: str
    kind: str
    shape: str
    params: int
    notes: str


class ModelSummary:
    """What ``%%neural_compile`` shows; ``str()`` is the plain-text form."""

    def __init__(self, spec: NetworkSpec, framework: str) -> None:
        self.spec = spec
        self.framework = framework

    def rows(self) -> list[Row]:
        rows = [Row(0, "input", "Input", _shape(self.spec.input_shape), 0, self.spec.input_dtype)]

        def add(layer: LayerSpec, depth: int) -> None:
            own = dict(layer.param_counts)[self.framework]
            notes = list(layer.notes)
            if layer.macro:
                notes.insert(0, f"from {layer.macro}")
            if layer is self.spec.output_layer and self.spec.fused_output_activation:
                notes.append(
                    f"{self.spec.fused_output_activation} fused into the loss"
                    if self.framework == "pytorch"
                    else ""
                )
            rows.append(
                Row(
                    depth,
                    layer.name,
                    layer.kind,
                    _shape(layer.output_shape),
                    own,
                    "; ".join(n for n in notes if n),
                )
            )
            for child in layer.children:
                add(child, depth + 1)

        for layer in self.spec.layers:
            add(layer, 0)
        return rows

    def facts(self) -> list[tuple[str, str]]:
        spec = self.spec
        optimizer = spec.optimizer
        opt_text = optimizer.name + "(" + ", ".join(f"{k}={v!r}" for k, v in optimizer.params) + ")"
        if optimizer.schedule:
            opt_text += (
                " with "
                + optimizer.schedule.name
                + "("
                + ", ".join(f"{k}={v!r}" for k, v in optimizer.schedule.params)
                + ")"
            )
        train = spec.train
        train_text = (
            f"epochs={train.epochs}, batch_size={train.batch_size}, "
            f"validation_split={train.validation_split}, seed={train.seed}"
        )
        if train.early_stopping:
            es = train.early_stopping
            train_text += f", early stopping on {es.monitor} (patience {es.patience})"
        loss = spec.loss.describe()
        if spec.loss.inferred:
            loss += " - inferred from the output layer (no loss: section)"
        if train.strategy:
            train_text += f"; sweeps: {train.strategy} strategy"
        per = ", per time step" if spec.variable_length else ""
        facts = [
            (f"Trainable params ({self.framework})", f"{spec.trainable_params(self.framework):,}"),
            (f"FLOPs / sample (forward, approx.{per})", human_count(spec.flops_per_sample())),
            (f"Activations / sample (fp32{per})", human_bytes(spec.activation_bytes_per_sample())),
            ("Loss", loss),
            ("Optimizer", opt_text),
            ("Metrics", ", ".join(spec.metrics) or "none"),
            ("Training", train_text),
        ]
        if spec.hyperparameters:
            facts.append(
                (
                    "Hyper-parameters",
                    "; ".join(
                        f"{hp.name}={hp.value!r} from {hp.node.describe()}"
                        for hp in spec.hyperparameters
                    ),
                )
            )
        if spec.device:
            facts.append(("Device", f"{spec.device} (from the source; --device overrides)"))
        return facts

    def notes(self) -> list[str]:
        """What the compiler applied differently from the source, or ignored, and why."""
        return list(self.spec.notes)

    def __str__(self) -> str:
        rows = self.rows()
        table = [("Layer", "Output shape", "Params", "Notes")]
        for row in rows:
            label = "  " * row.depth + ("└ " if row.depth else "") + f"{row.name} ({row.kind})"
            table.append((label, row.shape, f"{row.params:,}", row.notes))
        widths = [max(len(r[i]) for r in table) for i in range(3)]
        lines = [f'Model "{self.spec.name}"']
        for index, (a, b, c, d) in enumerate(table):
            lines.append(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d}".rstrip())
            if index == 0:
                lines.append("-" * (sum(widths) + 6 + max(len(r[3]) for r in table)))
        lines.append("")
        lines.extend(f"{key}: {value}" for key, value in self.facts())
        if self.notes():
            lines += ["", "Notes:", *(f"- {note}" for note in self.notes())]
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        esc = html.escape
        body = []
        for row in self.rows():
            pad = f"padding-left:{0.4 + 1.4 * row.depth:.1f}em"
            marker = "└ " if row.depth else ""
            body.append(
                f"<tr><td style='text-align:left;{pad}'>{marker}<b>{esc(row.name)}</b> "
                f"<span style='opacity:.7'>{esc(row.kind)}</span></td>"
                f"<td style='text-align:left'><code>{esc(row.shape)}</code></td>"
                f"<td style='text-align:right'>{row.params:,}</td>"
                f"<td style='text-align:left'>{esc(row.notes)}</td></tr>"
            )
        facts = "".join(
            f"<tr><th style='text-align:left'>{esc(k)}</th>"
            f"<td style='text-align:left'>{esc(v)}</td></tr>"
            for k, v in self.facts()
        )
        notes = ""
        if self.notes():
            items = "".join(f"<li>{esc(note)}</li>" for note in self.notes())
            notes = f"<div><b>Notes</b><ul>{items}</ul></div>"
        return (
            f"<div class='neural-summary'><b>Model {esc(self.spec.name)}</b>"
            "<table><thead><tr><th style='text-align:left'>Layer</th>"
            "<th style='text-align:left'>Output shape</th><th>Params</th>"
            "<th style='text-align:left'>Notes</th></tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>"
            f"<table>{facts}</table>{notes}</div>"
        )
