"""``%neural_builder``: build a network in a form — add, reorder and remove layers and set
their parameters — with live shape and parameter validation by the compiler, then write the
model source into a new cell.

The form is generated from the layer registry, so every layer and parameter the language
knows appears here with its type, default and range. (Residual blocks and macros are written
in the source; the builder makes flat networks.)
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from neural_jupyter.dsl.layers import LAYERS
from neural_jupyter.dsl.params import REQUIRED, Param
from neural_jupyter.dsl.training import LOSSES, OPTIMIZERS
from neural_jupyter.errors import NeuralError

# Starting values for required parameters (the registry has no default for them).
STARTING_VALUES = {
    "units": 64,
    "filters": 32,
    "kernel_size": 3,
    "rate": 0.2,
    "num_heads": 2,
    "ff_dim": 64,
    "input_dim": 1000,
    "output_dim": 64,
    "target_shape": "(-1,)",
    "layer": "LSTM(32)",
    "activation": "relu",
}
BUILDER_KINDS = sorted(kind for kind, layer in LAYERS.items() if not layer.block)


def _render(param: Param, value: Any) -> str | None:
    """The value as model-language text; None when it equals the default (left out)."""
    if param.kind in ("ints", "shape", "layer"):
        text = str(value).strip()
        default = "" if param.default in (REQUIRED, None) else str(param.default)
        return None if not text or text == default else text
    if value == param.default:
        return None
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace('"', "") + '"'
    return repr(value)


class LayerRow:
    """One layer: its kind and a widget per parameter."""

    def __init__(self, kind: str, on_change: Callable[[], None], actions: dict[str, Callable]):
        import ipywidgets as w

        self.kind = kind
        self.type = LAYERS[kind]
        self.controls: dict[str, Any] = {}
        for param in self.type.params:
            control = self._control(param, w)
            control.observe(lambda _change: on_change(), names="value")
            self.controls[param.name] = control
        buttons = []
        for label, icon in (("up", "arrow-up"), ("down", "arrow-down"), ("remove", "trash")):
            button = w.Button(icon=icon, tooltip=label, layout=w.Layout(width="34px"))
            button.on_click(lambda _b, action=actions[label]: action(self))
            buttons.append(button)
        # Three columns, so a layer with many parameters wraps them inside the middle one and
        # its kind and buttons stay where every other row has them.
        self.widget = w.HBox(
            [
                w.HTML(f"<b>{html.escape(kind)}</b>", layout=w.Layout(width="150px")),
                w.HBox(
                    list(self.controls.values()),
                    layout=w.Layout(flex="1 1 auto", flex_flow="row wrap", align_items="center"),
                ),
                w.HBox(buttons, layout=w.Layout(flex="0 0 auto", align_items="flex-start")),
            ],
            layout=w.Layout(align_items="flex-start", width="100%"),
        )

    @staticmethod
    def _control(param: Param, w: Any) -> Any:
        start = STARTING_VALUES.get(param.name) if param.required else param.default
        style = {"description_width": "initial"}
        layout = w.Layout(width="170px")
        common = {"description": param.name, "style": style, "layout": layout, "tooltip": param.doc}
        if param.kind == "int":
            return w.IntText(value=start if isinstance(start, int) else 1, **common)
        if param.kind == "float":
            return w.FloatText(value=float(start or 0.0), **common)
        if param.kind == "bool":
            return w.Checkbox(value=bool(start), description=param.name, indent=False)
        if param.kind == "choice":
            options = list(param.choices) + ([None] if param.optional else [])
            value = start if start in options else options[0]
            return w.Dropdown(options=options, value=value, **common)
        text = (
            ""
            if start in (REQUIRED, None)
            else (", ".join(map(str, start)) if isinstance(start, tuple) else str(start))
        )
        if param.kind == "ints" and text and "," in text:
            text = f"({text})"
        return w.Text(value=text, placeholder=param.type_text(), **common)

    def source(self) -> str:
        args = []
        for param in self.type.params:
            rendered = _render(param, self.controls[param.name].value)
            if rendered is not None:
                args.append(f"{param.name}={rendered}")
        return f"{self.kind}({', '.join(args)})"


class ModelBuilder:
    """The builder form; ``source()`` is the model text it currently describes."""

    def __init__(
        self, shell: Any = None, name: str = "MyNet", input_shape: str = "28, 28, 1"
    ) -> None:
        import ipywidgets as w

        self.shell = shell
        self.rows: list[LayerRow] = []

        def label() -> dict[str, Any]:
            """Labels in full (never 'learning r…'); each control its own layout."""
            return {"style": {"description_width": "initial"}, "layout": w.Layout(width="auto")}

        self.name = w.Text(value=name, description="network", **label())
        self.input_shape = w.Text(value=input_shape, description="input shape", **label())
        self.new_kind = w.Dropdown(
            options=BUILDER_KINDS, value="Dense", description="layer", **label()
        )
        add = w.Button(description="Add layer", icon="plus", layout=w.Layout(width="auto"))
        add.on_click(lambda _b: self.add(self.new_kind.value))
        self.loss = w.Dropdown(
            options=list(LOSSES),
            value="sparse_categorical_crossentropy",
            description="loss",
            style={"description_width": "initial"},
            layout=w.Layout(width="auto", min_width="330px"),  # the longest loss in full
        )
        self.optimizer = w.Dropdown(
            options=list(OPTIMIZERS), value="Adam", description="optimizer", **label()
        )
        self.learning_rate = w.FloatText(value=0.001, description="learning rate", **label())
        self.epochs = w.BoundedIntText(value=10, min=1, max=100000, description="epochs", **label())
        self.batch_size = w.BoundedIntText(
            value=32, min=1, max=65536, description="batch size", **label()
        )
        self.status = w.HTML()
        write = w.Button(
            description="Write to a new cell",
            button_style="primary",
            icon="pencil",
            layout=w.Layout(width="auto"),
        )
        write.on_click(lambda _b: self.write_cell())
        for control in (
            self.name,
            self.input_shape,
            self.loss,
            self.optimizer,
            self.learning_rate,
            self.epochs,
            self.batch_size,
        ):
            control.observe(lambda _change: self.validate(), names="value")
        self.layer_box = w.VBox()
        self.widget = w.VBox(
            [
                w.HBox([self.name, self.input_shape]),
                self.layer_box,
                w.HBox([self.new_kind, add]),
                w.HBox([self.loss, self.optimizer, self.learning_rate]),
                w.HBox([self.epochs, self.batch_size]),
                write,
                self.status,
            ]
        )
        self.widget.add_class("neural-builder")
        self.validate()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # --- layer list -------------------------------------------------------------------------
    def add(self, kind: str) -> LayerRow:
        row = LayerRow(
            kind, self.validate, {"up": self.move_up, "down": self.move_down, "remove": self.remove}
        )
        self.rows.append(row)
        self._relayout()
        return row

    def remove(self, row: LayerRow) -> None:
        self.rows.remove(row)
        self._relayout()

    def move_up(self, row: LayerRow) -> None:
        index = self.rows.index(row)
        if index > 0:
            self.rows[index - 1], self.rows[index] = row, self.rows[index - 1]
            self._relayout()

    def move_down(self, row: LayerRow) -> None:
        index = self.rows.index(row)
        if index < len(self.rows) - 1:
            self.rows[index + 1], self.rows[index] = row, self.rows[index + 1]
            self._relayout()

    def _relayout(self) -> None:
        self.layer_box.children = [row.widget for row in self.rows]
        self.validate()

    # --- source and validation ----------------------------------------------------------------
    def source(self) -> str:
        layers = "\n".join(f"    {row.source()}" for row in self.rows)
        metrics = '  metrics: ["accuracy"]\n' if "crossentropy" in self.loss.value else ""
        shape = self.input_shape.value.strip().strip("()")
        if shape and "," not in shape:
            shape += ","
        return (
            f"network {self.name.value.strip()} {{\n"
            f"  input: ({shape})\n"
            f"  layers:\n{layers}\n"
            f'  loss: "{self.loss.value}"\n'
            f"  optimizer: {self.optimizer.value}(learning_rate={self.learning_rate.value!r})\n"
            f"{metrics}"
            f"  train {{ epochs: {self.epochs.value}  batch_size: {self.batch_size.value} }}\n"
            "}\n"
        )

    def validate(self) -> bool:
        """Compile the current source and show its summary or its error."""
        from neural_jupyter.compiler import compile_model
        from neural_jupyter.ui.views import summary

        if not self.rows:
            self.status.value = "<i>add layers to start</i>"
            return False
        try:
            model = compile_model(self.source(), source_name="<builder>")
        except NeuralError as exc:
            self.status.value = (
                f"<pre style='color:#b03a2e;white-space:pre-wrap'>{html.escape(str(exc))}</pre>"
            )
            return False
        self.status.value = summary(model)._repr_html_()
        return True

    def write_cell(self) -> str:
        """Put ``%%neural_compile`` and the source into the next cell."""
        text = "%%neural_compile\n" + self.source()
        if self.shell is not None:
            self.shell.set_next_input(text, replace=False)
        return text
