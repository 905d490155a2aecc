"""Custom layers (``register_layer``): the language, summaries, generated code, bundles and a
real local training run with the user's module, plus every error a registration or a model
using one can raise, at the right place."""

from __future__ import annotations

import json
from math import sqrt

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import neural_jupyter as nj
from neural_jupyter.compiler import compile_model
from neural_jupyter.dsl.custom import unregister_layer
from neural_jupyter.dsl.layers import LAYERS
from neural_jupyter.dsl.parser import parse_cached
from neural_jupyter.errors import CompilationError, ConfigurationError, DSLValidationError

SCALE = 3.0


class Gate(nn.Module):
    """Scales each feature by a learned gate (one parameter per feature)."""

    def __init__(self, input_shape, init=1.0):
        super().__init__()
        self.gate = nn.Parameter(torch.full((input_shape[-1],), init * SCALE))

    def forward(self, x):
        return x * torch.sigmoid(self.gate)


def pairs_rule(shape, **params):
    if shape[-1] % 2:
        raise ValueError(f"needs an even number of features, got {shape[-1]}")
    return (*shape[:-1], shape[-1] // 2)


class PairSum(nn.Module):
    def forward(self, x):
        return x[..., 0::2] + x[..., 1::2]


def raised(error_type: type[Exception], function, *args) -> Exception:
    """The error ``function(*args)`` raises (the test fails if it raises none)."""
    with pytest.raises(error_type) as info:
        function(*args)
    return info.value


class SoftRoot(nn.Module):
    def forward(self, x):
        return F.softplus(x) * sqrt(2.0) + np.float32(0.5)


def net(*layers: str, input_shape: str = "(8,)", loss: str = '"mse"', output: str = "Output(1)"):
    body = "\n".join(f"    {layer}" for layer in (*layers, output))
    return f"network N {{\n  input: {input_shape}\n  layers:\n{body}\n  loss: {loss}\n}}\n"


def test_register_compile_summary_and_build():
    nj.register_layer("Gate", Gate, params={"init": 1.0})
    model = compile_model(net("Gate()", "Dense(4)", "Gate(init=0.5)"))
    gates = [layer for layer in model.spec.layers if layer.kind == "Gate"]
    assert [g.output_shape for g in gates] == [(8,), (4,)]
    # counted from the built module: one gate per feature
    assert [dict(g.param_counts)["pytorch"] for g in gates] == [8, 4]
    assert model.spec.trainable_params() == 8 + (8 * 4 + 4) + 4 + (4 + 1)
    text = str(nj.summary(model))
    assert "gate_1 (Gate)" in text and "custom: Gate" in text
    built = model.build()
    assert type(built.gate_1).__name__ == "Gate"
    assert built(torch.ones(2, 8)).shape == (2, 1)
    # the factory's source is in the generated code, and the constant it reads
    assert "class Gate(nn.Module):" in model.code and "SCALE = 3.0" in model.code
    assert "self.gate_1 = Gate(input_shape=(8,), init=1.0)" in model.code


def test_shape_rule_and_declared_counts():
    nj.register_layer(
        "PairSum",
        PairSum,
        pairs_rule,
        param_count=0,
        flops=lambda inp, out: out[-1],
    )
    model = compile_model(net("Dense(6)", "PairSum()"))
    layer = model.spec.layers[1]
    assert layer.output_shape == (3,) and layer.flops == 3
    assert "params declared" in layer.notes[0] and "FLOPs" not in layer.notes[0]
    assert model.build()(torch.ones(2, 8)).shape == (2, 1)


def test_modules_and_installed_names_travel_as_imports():
    nj.register_layer("SoftRoot", SoftRoot)
    model = compile_model(net("SoftRoot()"))
    head = model.code.split("class SoftRoot")[0]
    for line in ("from math import sqrt", "import numpy as np", "import torch.nn.functional as F"):
        assert f"\n{line}\n" in head
    assert model.build()(torch.ones(2, 8)).shape == (2, 1)
    from neural_jupyter.codegen.pytorch_training import generate_training_script

    script = generate_training_script(model.spec)
    assert script.count("import numpy as np\n") == 1 and "from math import sqrt\n" in script


def test_shape_rule_error_at_the_layers_line():
    nj.register_layer("PairSum", PairSum, pairs_rule)
    source = net("Dense(7)", "PairSum()")
    with pytest.raises(DSLValidationError) as info:
        compile_model(source)
    error = info.value
    assert error.line == 5 and error.column == 5
    assert "PairSum needs an even number of features, got 7" in error.message


@pytest.mark.parametrize(
    "rule,expected",
    [
        (lambda shape: [0], "returned [0]; it must return the output shape"),
        (lambda shape: "wide", "returned 'wide'"),
        (lambda shape: shape[5], "shape_rule <lambda> failed: IndexError"),
    ],
)
def test_a_broken_shape_rule_is_reported_at_the_layer(rule, expected):
    nj.register_layer("PairSum", PairSum, rule)
    with pytest.raises(DSLValidationError) as info:
        compile_model(net("PairSum()"))
    assert info.value.line == 4 and expected in info.value.message
    assert "register_layer" in (info.value.hint or "")


def test_a_failing_factory_is_reported_at_the_layer():
    def broken(units):
        raise RuntimeError("out of ideas")

    nj.register_layer("Broken", broken, params={"units": 4})
    with pytest.raises(DSLValidationError) as info:
        compile_model(net("Dense(8)", "Broken(units=3)"))
    assert info.value.line == 5
    assert "module_factory" in info.value.message and "out of ideas" in info.value.message


def test_parameters_are_typed_and_checked_at_the_argument():
    nj.register_layer(
        "Gate2",
        Gate,
        params=[nj.Param("init", "float", 1.0, "start value", min=0.0, max=10.0)],
    )
    cases = {
        "Gate2(init=11.0)": ("parameter 'init' must be >= 0 and <= 10, got 11.0", 11),
        'Gate2(init="high")': ("expects a number", 11),
        "Gate2(int=1.0)": ("has no parameter 'int'", 11),
        "Gate2(1.0, 2.0)": ("takes at most 1 positional argument", 16),
    }
    for layer, (message, column) in cases.items():
        with pytest.raises(DSLValidationError) as info:
            compile_model(net(layer))
        assert message in info.value.message, layer
        assert (info.value.line, info.value.column) == (4, column), layer
    unknown = raised(DSLValidationError, compile_model, net("Gate2(int=1.0)"))
    assert unknown.hint == "did you mean 'init'?"


def test_required_parameters_and_hyper_parameters():
    nj.register_layer(
        "Widen",
        lambda units: nn.LazyLinear(units),
        lambda s, units: (units,),
        params={"units": int},
        param_count=lambda i, o, units: i[-1] * units + units,
    )
    error = raised(DSLValidationError, compile_model, net("Widen()"))
    assert "needs the parameter 'units'" in error.message
    model = compile_model(net("Widen(HPO(choice(16, 32)))"))
    assert model.spec.layers[0].output_shape == (16,)
    assert "widen_1.units" in model.search_space
    assert model.with_hparams(**{"widen_1.units": 32}).spec.layers[0].output_shape == (32,)


def test_did_you_mean_suggests_registered_and_built_in_names():
    nj.register_layer("Gate", Gate)
    misspelt = raised(DSLValidationError, compile_model, net("Gat()"))
    assert misspelt.hint == "did you mean 'Gate'?" and misspelt.line == 4
    built_in = raised(DSLValidationError, compile_model, net("Dens(4)"))
    assert built_in.hint == "did you mean 'Dense'?"
    unregister_layer("Gate")
    gone = raised(DSLValidationError, compile_model, net("Gate()"))
    assert "unknown layer 'Gate'" in gone.message


def test_registering_again_replaces_and_invalidates_compiled_programs():
    nj.register_layer("PairSum", PairSum, pairs_rule)
    source = net("PairSum()", input_shape="(6,)")
    first = compile_model(source)  # cached by source text
    assert first.spec.layers[0].output_shape == (3,)
    assert parse_cached.cache_info().currsize >= 1
    nj.register_layer("PairSum", PairSum, lambda shape: shape)  # another definition
    assert parse_cached.cache_info().currsize == 0
    second = compile_model(source)
    assert second.spec.layers[0].output_shape == (6,)
    # the model compiled before cannot pair the new definition with its old shapes
    stale = raised(DSLValidationError, lambda: first.code)
    assert "registered again" in stale.message and stale.line == 4
    assert "compile N again" in stale.hint
    with pytest.raises(DSLValidationError, match="registered again"):
        first.for_framework("pytorch")


def test_an_unchanged_registration_keeps_compiled_models_valid():
    def register():
        nj.register_layer("PairSum", PairSum, pairs_rule)

    register()
    model = compile_model(net("PairSum()", input_shape="(6,)"))
    register()  # the same cell run again
    assert "class PairSum(nn.Module):" in model.code


def test_registration_errors():
    with pytest.raises(ConfigurationError, match="built-in layer"):
        nj.register_layer("Dense", Gate)
    with pytest.raises(ConfigurationError, match="cannot be a layer name"):
        nj.register_layer("gate", Gate)
    with pytest.raises(ConfigurationError, match="has no parameter 'units'"):
        nj.register_layer("Gate", Gate, params={"units": int})
    with pytest.raises(ConfigurationError, match=r"shape_rule .* cannot be called"):
        nj.register_layer("Gate", Gate, lambda shape, size: shape, params={"init": 1.0})
    with pytest.raises(ConfigurationError, match="cannot tell the type of parameter 'init'"):
        nj.register_layer("Gate", Gate, params={"init": None})
    with pytest.raises(ConfigurationError, match="its default must be <= 1"):
        nj.register_layer("Gate", Gate, params=[nj.Param("init", "float", 2.0, max=1.0)])
    with pytest.raises(ConfigurationError, match="built-in layer and cannot be removed"):
        unregister_layer("Dense")
    with pytest.raises(ConfigurationError, match="no custom layer named 'Gate'"):
        unregister_layer("Gate")
    assert "Gate" not in LAYERS


def test_keras_needs_its_own_factory():
    nj.register_layer("Gate", Gate)
    error = raised(DSLValidationError, compile_model, net("Gate()"), "keras")
    assert "has no Keras implementation" in error.message and error.line == 4


def test_keras_factory_builds_and_runs():
    import keras

    def keras_gate(input_shape, init=1.0):
        return keras.layers.Dense(input_shape[-1], use_bias=False)

    nj.register_layer("Gate", Gate, params={"init": 1.0}, keras_factory=keras_gate)
    model = compile_model(net("Gate()"), "keras")
    assert dict(model.spec.layers[0].param_counts) == {"pytorch": 8, "keras": 64}
    assert "def keras_gate(input_shape, init=1.0):" in model.code
    built = model.build()
    assert tuple(built(np.ones((2, 8), "float32")).shape) == (2, 1)
    from neural_jupyter.codegen.keras_training import generate_training_script

    script = generate_training_script(model.spec)
    compile(script, "train.py", "exec")
    assert "def keras_gate(input_shape, init=1.0):" in script
    assert "gate_1 = keras_gate(input_shape=(8,), init=1.0)" in script


def test_closures_and_lambdas_travel_as_source():
    def make_factory(width):
        def factory(units):
            return nn.Sequential(nn.Linear(width, units), nn.Tanh())

        return factory

    nj.register_layer("Squash", make_factory(8), lambda shape, units: (units,), params={"units": 4})
    model = compile_model(net("Squash(units=3)"))
    assert "width = 8" in model.code and "def factory(units):" in model.code
    assert model.build()(torch.ones(2, 8)).shape == (2, 1)


def test_objects_that_cannot_travel_give_a_clear_error():
    weights = torch.ones(8)

    def factory():
        return Scaled(weights)

    class Scaled(nn.Module):
        def __init__(self, w):
            super().__init__()
            self.w = nn.Parameter(w.clone())

        def forward(self, x):
            return x * self.w

    nj.register_layer("Scaled", factory)
    model = compile_model(net("Scaled()"))  # compiling and counting work in the kernel
    assert model.spec.layers[0].trainable_params() == 8
    error = raised(CompilationError, lambda: model.code)
    assert "'weights', a Tensor object" in error.message
    assert "create it inside the factory" in error.hint


def test_names_train_py_uses_cannot_be_shipped():
    def emit(units):  # clashes with train.py's emit() (the event protocol)
        return nn.Linear(8, units)

    nj.register_layer("Emit", emit, lambda shape, units: (units,), params={"units": 2})
    model = compile_model(net("Emit(3)"))
    assert "def emit(units):" in model.code  # the model module alone has no emit()
    from neural_jupyter.codegen.pytorch_training import generate_training_script

    error = raised(CompilationError, generate_training_script, model.spec)
    assert "'emit', a name train.py uses" in error.message


def test_names_the_keras_train_py_uses_cannot_be_shipped():
    import keras

    from neural_jupyter.codegen.keras_training import generate_training_script

    def log(units):  # clashes with the Keras train.py's log()
        return keras.layers.Dense(units)

    nj.register_layer("Log", Gate, lambda shape, **p: (3,), param_count=0, keras_factory=log)
    model = compile_model(net("Log()"), "keras")
    assert "def log(units):" in model.code
    error = raised(CompilationError, generate_training_script, model.spec)
    assert "'log', a name train.py uses" in error.message


# --- in a real notebook shell ---------------------------------------------------------------
REGISTER_CELL = """
import torch
from torch import nn
import neural_jupyter as nj

WIDTH = 48

class ScaledDense(nn.Module):
    def __init__(self, input_shape, units, scale=1.0):
        super().__init__()
        self.linear = nn.Linear(input_shape[-1], units)
        self.scale = scale

    def forward(self, x):
        return torch.relu(self.linear(x)) * self.scale

nj.register_layer(
    "ScaledDense",
    lambda input_shape, units=WIDTH, scale=1.0: ScaledDense(input_shape, units, scale),
    lambda shape, units, scale: (units,),
    params={"units": WIDTH, "scale": 1.0},
)
"""

DIGITS_CUSTOM = """network CustomDigits {
  input: (8, 8, 1)
  layers:
    Flatten()
    ScaledDense(scale=0.5)
    Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  optimizer: Adam(learning_rate=0.01)
  metrics: ["accuracy"]
  train { epochs: 2 batch_size: 64 validation_split: 0.2 seed: 3 }
}"""


@pytest.mark.slow
def test_notebook_cell_registers_compiles_and_trains_locally(ip, neural_home):
    ip.run(REGISTER_CELL)
    ip.run(f"%%neural_compile --show none\n{DIGITS_CUSTOM}")
    model = ip.ns["CustomDigits"]
    assert dict(model.spec.layers[1].param_counts)["pytorch"] == 64 * 48 + 48
    assert "scaled_dense_1 (ScaledDense)" in str(nj.summary(model))
    run = ip.run("%%neural_run --data digits --monitor none\nCustomDigits")
    assert run.status == "SUCCEEDED" and len(run.history) == 2
    assert run.metrics["val_accuracy"] > 0.5, run.metrics  # chance is 0.1
    script = (run.directory / "train.py").read_text()
    # the cell's class, the lambda factory and the constant it reads travel in train.py
    assert "class ScaledDense(nn.Module):" in script and "WIDTH = 48" in script
    assert "scaled_dense_factory = lambda input_shape, units=WIDTH" in script
    weights = torch.load(run.artifacts["weights"], map_location="cpu")
    state = weights.get("model", weights) if isinstance(weights, dict) else weights
    assert "scaled_dense_1.linear.weight" in json.dumps(list(state))


def test_notebook_lambda_on_a_line_with_another_lambda(ip):
    ip.run(
        "from torch import nn\nimport neural_jupyter as nj\n"
        'nj.register_layer("Twice", lambda **p: nn.Identity(), lambda shape, **p: shape)'
    )
    code = compile_model(net("Twice()")).code
    assert "twice_factory = lambda **p: nn.Identity()" in code


def test_code_typed_without_source_says_why(ip):
    ip.run(
        "from torch import nn\nimport neural_jupyter as nj\n"
        "namespace = {'nn': nn}\n"
        "exec('def hidden():\\n    return nn.Identity()', namespace)\n"
        'nj.register_layer("Hidden", namespace["hidden"])'
    )
    model = compile_model(net("Hidden()"))
    error = raised(CompilationError, lambda: model.code)
    assert "source of custom layer Hidden: factory → function hidden" in error.message
    assert "(defined in <string>)" in error.message
    assert "notebook cell or a .py file" in error.hint
