"""The model builder widget: registry-driven forms, live validation, writing a cell."""

from __future__ import annotations

from neural_jupyter.compiler import compile_model
from neural_jupyter.dsl.layers import LAYERS
from neural_jupyter.ui.builder import BUILDER_KINDS, ModelBuilder


class FakeShell:
    def __init__(self):
        self.next_inputs = []

    def set_next_input(self, text, replace=False):
        self.next_inputs.append(text)


def test_every_flat_layer_kind_gets_a_form():
    builder = ModelBuilder(input_shape="8, 8, 1")
    for kind in BUILDER_KINDS:
        row = builder.add(kind)
        assert set(row.controls) == {p.name for p in LAYERS[kind].params}
    assert set(BUILDER_KINDS) == {k for k, t in LAYERS.items() if not t.block}


def test_live_validation_and_writing_a_cell():
    shell = FakeShell()
    builder = ModelBuilder(shell, name="Built", input_shape="8, 8, 1")
    assert "add layers" in builder.status.value
    conv = builder.add("Conv2D")
    conv.controls["filters"].value = 8
    conv.controls["padding"].value = "same"
    builder.add("Flatten")
    out = builder.add("Output")
    out.controls["units"].value = 10
    out.controls["activation"].value = "softmax"
    assert builder.validate(), builder.status.value
    assert "Model Built" in builder.status.value and "output_1" in builder.status.value
    model = compile_model(builder.source())
    assert model.spec.output_shape == (10,)
    assert model.spec.layers[0].values["padding"] == "same"
    # a kernel larger than its input is caught live, with the compiler's message
    conv.controls["padding"].value = "valid"
    conv.controls["kernel_size"].value = "9"
    assert not builder.validate()
    assert "larger than its input" in builder.status.value
    conv.controls["kernel_size"].value = "3"
    builder.move_down(conv)  # Flatten first: Conv2D on a flat tensor is an error
    assert [row.kind for row in builder.rows] == ["Flatten", "Conv2D", "Output"]
    assert not builder.validate() and "Conv2D expects input" in builder.status.value
    builder.move_up(conv)
    assert builder.validate()
    builder.remove(out)
    builder.add("Output").controls["units"].value = 10
    text = builder.write_cell()
    assert shell.next_inputs == [text] and text.startswith("%%neural_compile\n")
    assert compile_model(text.split("\n", 1)[1]).name == "Built"


def test_builder_magic_displays(ip):
    ip.run("%neural_builder --name Quick --input 64")
