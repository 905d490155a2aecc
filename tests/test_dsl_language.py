"""What the model language accepts and what it means: literals, macros, repetition,
hyper-parameters, losses, optimizers, schedules, the train block; and what the compiler
promises around it (deterministic output, silence, no code injection)."""

from __future__ import annotations

import ast
import io
import logging
import os
import re
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from neural_jupyter.compiler import compile_all, compile_model
from neural_jupyter.dsl import ir, parse
from neural_jupyter.dsl.analyzer import RESERVED_NAMES
from neural_jupyter.dsl.lark_parser import parser as _parser
from neural_jupyter.dsl.layers import LAYERS
from neural_jupyter.dsl.training import LOSSES
from neural_jupyter.errors import ConfigurationError, DSLError, DSLSyntaxError, DSLValidationError

ROOT = Path(__file__).resolve().parents[1]


def net(*layers: str, input: str = "(8,)", loss: str = '"mse"', extra: str = "") -> str:
    body = "".join(f"    {layer}\n" for layer in layers)
    return f"network Net {{\n  input: {input}\n  layers:\n{body}  loss: {loss}\n{extra}}}\n"


def layer_values(source: str) -> list[tuple[str, dict]]:
    return [(layer.kind, layer.values) for layer in compile_model(source).spec.layers]


# --- literals and syntax -------------------------------------------------------------------------
def test_comments_both_styles_anywhere():
    source = (
        "# leading comment\n"
        "// another leading comment\n"
        "network Net {  # after the brace\n"
        "  input: (8,)  // after a value\n"
        "  layers:\n"
        "    # between layers\n"
        "    Dense(4)  # after a layer, with 'quotes' and { braces }\n"
        "    // Dense(99) is commented out\n"
        '  loss: "mse"  # "not a string"\n'
        "}\n"
        "// trailing\n"
    )
    assert layer_values(source) == [("Dense", {"units": 4, "activation": None, "use_bias": True})]


def test_comment_markers_inside_strings_are_text():
    with pytest.raises(DSLValidationError) as info:
        compile_model(net('Dense(4, "relu # not a comment")'))
    assert 'got "relu # not a comment"' in info.value.message


def test_tuples_and_ints():
    (conv, params), *_ = layer_values(
        net("Conv2D(4, (3, 2), strides=(2, 1,), padding='same')", input="(8, 8, 1)")
    )
    assert conv == "Conv2D"
    assert params["kernel_size"] == (3, 2)
    assert params["strides"] == (2, 1)
    assert params["dilation_rate"] == (1, 1)  # an int default expands to the rank


def test_single_int_input_is_a_one_tuple():
    assert compile_model(net("Dense(2)", input="8")).spec.input_shape == (8,)
    assert compile_model(net("Dense(2)", input="(8,)")).spec.input_shape == (8,)


@pytest.mark.parametrize("quote", ['"', "'"])
def test_strings_with_either_quote(quote):
    values = layer_values(
        net(
            f"Dense(4, {quote}relu{quote})",
            f"Conv1D(2, 3, padding={quote}same{quote})",
            input="(5, 3)",
        )
    )
    assert values[0][1]["activation"] == "relu"
    assert values[1][1]["padding"] == "same"


def test_names_and_case_insensitive_choices():
    values = layer_values(net("Dense(4, relu)", 'Dense(4, activation="ReLU")'))
    assert values[0][1]["activation"] == values[1][1]["activation"] == "relu"


@pytest.mark.parametrize(
    "text,expected",
    [("true", True), ("True", True), ("false", False), ("False", False)],
)
def test_booleans(text, expected):
    (_, params), *_ = layer_values(net(f"Dense(4, use_bias={text})"))
    assert params["use_bias"] is expected


@pytest.mark.parametrize("text", ["None", "null"])
def test_none_for_optional_parameters(text):
    values = layer_values(
        net(f"Dense(4, activation={text})", "Reshape((2, 2))", f"MaxPooling1D(2, strides={text})")
    )
    assert values[0][1]["activation"] is None
    assert values[2][1]["strides"] is None


def test_none_for_a_required_parameter_is_an_error():
    with pytest.raises(DSLValidationError, match="expects an integer, got None"):
        compile_model(net("Dense(None)"))


def test_positional_and_keyword_arguments_mix():
    a = layer_values(net('Conv2D(8, 3, activation="relu", padding="same")', input="(6, 6, 1)"))
    b = layer_values(
        net(
            'Conv2D(filters=8, kernel_size=3, padding="same", activation="relu")', input="(6, 6, 1)"
        )
    )
    c = layer_values(
        net('Conv2D(8, kernel_size=3, padding="same", activation="relu",)', input="(6, 6, 1)")
    )
    assert a == b == c


def test_separators_between_layers_and_settings():
    source = (
        "network Net { input: (8,) layers: Dense(4), Dense(3); Dense(2) "
        'loss: "mse" train { epochs: 2, batch_size: 4; seed: 1 } }'
    )
    model = compile_model(source)
    assert [layer.output_shape for layer in model.spec.layers] == [(4,), (3,), (2,)]
    assert (model.spec.train.epochs, model.spec.train.batch_size, model.spec.train.seed) == (
        2,
        4,
        1,
    )


def test_numbers():
    model = compile_model(net("Dropout(5e-1)", "Dense(+3)"))
    assert model.spec.layers[0].values["rate"] == 0.5
    assert model.spec.layers[1].values["units"] == 3


def test_positions_are_kept_in_the_ir():
    program = parse(net("Dense(4)", "Dense(2)"))
    (network,) = program.networks
    assert network.span.line == 1 and network.span.column == 9
    assert [(n.span.line, n.span.column) for n in network.layers] == [(4, 5), (5, 5)]


# --- repetition and macros -----------------------------------------------------------------------
def test_repetition():
    model = compile_model(net('Dense(4, "relu") * 3', "Dense(2)"))
    assert [layer.name for layer in model.spec.layers] == [
        "dense_1",
        "dense_2",
        "dense_3",
        "dense_4",
    ]
    assert model.spec.trainable_params() == (8 * 4 + 4) + 2 * (4 * 4 + 4) + (4 * 2 + 2)


def test_top_level_macro():
    source = 'define Block {\n  Dense(4, "relu")\n  Dropout(0.1)\n}\n' + net("Block()", "Dense(2)")
    model = compile_model(source)
    assert [(layer.kind, layer.macro) for layer in model.spec.layers] == [
        ("Dense", "Block"),
        ("Dropout", "Block"),
        ("Dense", None),
    ]


def test_macro_inside_the_network():
    source = (
        "network Net {\n  define Twice { Dense(4) Dense(4) }\n  input: (8,)\n"
        '  layers:\n    Twice()\n  loss: "mse"\n}\n'
    )
    assert [layer.kind for layer in compile_model(source).spec.layers] == ["Dense", "Dense"]


def test_nested_macros_and_repeated_macro():
    source = "define Inner { Dense(4) }\ndefine Outer { Inner() Dropout(0.2) }\n" + net(
        "Outer() * 2", "Dense(2)"
    )
    layers = compile_model(source).spec.layers
    assert [layer.kind for layer in layers] == ["Dense", "Dropout", "Dense", "Dropout", "Dense"]
    assert [layer.name for layer in layers][:4] == ["dense_1", "dropout_1", "dense_2", "dropout_2"]
    assert layers[0].macro == "Inner"  # the innermost macro that produced it
    assert layers[1].macro == "Outer"


def test_macro_inside_residual():
    source = 'define Body { Dense(8, "relu") Dense(8) }\n' + net("Residual { Body() }")
    (residual,) = compile_model(source).spec.layers
    assert [child.kind for child in residual.children] == ["Dense", "Dense"]
    assert residual.output_shape == (8,)


def test_macro_named_like_a_layer_is_an_error():
    with pytest.raises(DSLValidationError, match="has the name of a built-in layer"):
        compile_model("define Dense { Flatten() }\n" + net("Dense(2)"))


def test_several_networks_share_top_level_macros():
    source = (
        "define B { Dense(4) }\n"
        + net("B()", "Dense(2)")
        + net("B()", "Dense(3)").replace("Net", "Other")
    )
    models = compile_all(source)
    assert [m.name for m in models] == ["Net", "Other"]
    assert compile_model(source, network="Other").spec.output_shape == (3,)
    with pytest.raises(ConfigurationError, match="several networks"):
        compile_model(source)
    with pytest.raises(ConfigurationError) as info:
        compile_model(source, network="Othr")
    assert "did you mean 'Other'?" in str(info.value)


# --- hyper-parameters ---------------------------------------------------------------------------
HPO_SOURCE = (
    "define Block {\n"
    '  Dense(HPO(choice(16, 32)), "relu")\n'
    '  Dropout(HPO(range(0.1, 0.5, step=0.1), name="drop"))\n'
    "}\n"
    "network Net {\n"
    "  input: (8,)\n"
    "  layers:\n"
    "    Block() * 2\n"
    '    Output(3, HPO(choice("softmax", "linear")))\n'
    '  loss: "cce"\n'
    "  optimizer: SGD(learning_rate=HPO(log_range(0.001, 0.1)), momentum=0.9)\n"
    "  train { epochs: HPO(range(2, 6)) }\n"
    "}\n"
)


def test_hpo_keeps_search_space_nodes():
    model = compile_model(HPO_SOURCE)
    space = model.spec.search_space
    assert list(space) == [
        "dense_1.units",
        "drop",
        "output_1.activation",
        "optimizer.learning_rate",
        "train.epochs",
    ]
    assert all(isinstance(node, ir.HPO) for node in space.values())
    assert space["dense_1.units"].kind == "choice" and space["dense_1.units"].options == (16, 32)
    assert (space["drop"].kind, space["drop"].low, space["drop"].high, space["drop"].step) == (
        "range",
        0.1,
        0.5,
        0.1,
    )
    assert space["optimizer.learning_rate"].kind == "log_range"
    assert model.search_space == space
    kinds = {hp.name: hp.kind for hp in model.spec.hyperparameters}
    assert kinds == {
        "dense_1.units": "int",
        "drop": "float",
        "output_1.activation": "choice",
        "optimizer.learning_rate": "float",
        "train.epochs": "int",
    }
    assert model.spec.hyperparameters[0].line == 2


def test_hpo_defaults_are_first_choice_and_lower_bound():
    model = compile_model(HPO_SOURCE)
    assert model.hparams == {
        "dense_1.units": 16,
        "drop": 0.1,
        "output_1.activation": "softmax",
        "optimizer.learning_rate": 0.001,
        "train.epochs": 2,
    }
    spec = model.spec
    assert spec.layers[0].values["units"] == spec.layers[2].values["units"] == 16
    assert spec.optimizer.values["learning_rate"] == 0.001
    assert spec.train.epochs == 2
    assert spec.fused_output_activation == "softmax"


def test_hpo_overrides_through_compile_model():
    model = compile_model(
        HPO_SOURCE,
        hparams={
            "dense_1.units": 32,
            "drop": 0.3,
            "output_1.activation": "linear",
            "train.epochs": 5,
        },
    )
    spec = model.spec
    # a macro's HPO is one hyper-parameter: every expansion takes the value
    assert [layer.values.get("units") for layer in spec.layers] == [32, None, 32, None, 3]
    assert [layer.values.get("rate") for layer in spec.layers][1:4:2] == [0.3, 0.3]
    assert spec.fused_output_activation is None
    assert spec.train.epochs == 5
    assert model.hparams["optimizer.learning_rate"] == 0.001  # not overridden: default


def test_with_hparams_recompiles_and_keeps_other_values():
    model = compile_model(HPO_SOURCE, hparams={"dense_1.units": 32})
    changed = model.with_hparams(drop=0.4)
    assert changed.hparams["drop"] == 0.4
    assert changed.hparams["dense_1.units"] == 32  # kept from the first compile
    assert changed is not model and model.hparams["drop"] == 0.1
    assert changed.framework == model.framework
    assert changed.spec.layers[1].values["rate"] == 0.4


def test_with_hparams_on_a_tuple_parameter():
    model = compile_model(net('Conv2D(2, HPO(choice(3, 5)), padding="same")', input="(8, 8, 1)"))
    assert model.hparams == {"conv2d_1.kernel_size": 3}
    assert model.spec.layers[0].values["kernel_size"] == (3, 3)
    again = model.with_hparams()
    assert again.hparams == model.hparams
    assert model.with_hparams(**{"conv2d_1.kernel_size": 5}).spec.layers[0].values[
        "kernel_size"
    ] == (5, 5)


def test_bad_override_name_suggests_the_right_one():
    model = compile_model(HPO_SOURCE)
    with pytest.raises(ConfigurationError) as info:
        model.with_hparams(dorp=0.2)
    assert "no hyper-parameter named 'dorp'" in str(info.value)
    assert "did you mean 'drop'?" in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        compile_model(net("Dense(2)"), hparams={"units": 3})
    assert "it has no HPO(...) expressions" in str(info.value)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"drop": 0.9}, "must lie in range(0.1, 0.5"),
        ({"dense_1.units": 64}, "must be one of choice(16, 32)"),
        ({"dense_1.units": "big"}, "expects an integer"),
        ({"output_1.activation": "tanh"}, "must be one of"),
        ({"train.epochs": 2.5}, "expects an integer"),
    ],
)
def test_bad_override_values(overrides, message):
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        compile_model(HPO_SOURCE, hparams=overrides)


def test_hpo_names_must_be_unique():
    with pytest.raises(DSLValidationError, match="uses the hyper-parameter name 'n' twice"):
        compile_model(
            net('Dense(HPO(choice(2, 4), name="n"))', 'Dense(HPO(choice(2, 4), name="n"))')
        )


# --- losses, optimizers, schedules, metrics -----------------------------------------------------
LOSS_CASES = [
    (name, alias, kind)
    for name, (aliases, kind) in LOSSES.items()
    for alias in (name, *aliases, name.upper())
]


@pytest.mark.parametrize("name,alias,kind", LOSS_CASES, ids=[c[1] for c in LOSS_CASES])
def test_every_loss_and_alias(name, alias, kind):
    output = {"multiclass": 'Output(3, "softmax")', "binary": 'Output(1, "sigmoid")'}.get(
        kind, "Output(2)"
    )
    for written in (f'"{alias}"', alias):
        spec = compile_model(net(output, loss=written)).spec
        assert (spec.loss.name, spec.loss.kind) == (name, kind)


def test_all_six_losses_are_known():
    assert set(LOSSES) == {
        "categorical_crossentropy",
        "sparse_categorical_crossentropy",
        "binary_crossentropy",
        "mse",
        "mae",
        "huber",
    }


@pytest.mark.parametrize("written", ["huber(delta=2.5)", "huber(2.5)", "huber_loss(delta=2.5)"])
def test_huber_delta(written):
    spec = compile_model(net("Dense(2)", loss=written)).spec
    assert spec.loss.name == "huber" and dict(spec.loss.params) == {"delta": 2.5}


def test_huber_default_delta_and_bad_delta():
    assert dict(compile_model(net("Dense(2)", loss='"huber"')).spec.loss.params) == {"delta": 1.0}
    with pytest.raises(DSLValidationError, match="'delta' must be > 0"):
        compile_model(net("Dense(2)", loss="huber(delta=0)"))
    with pytest.raises(DSLValidationError, match="has no parameter 'delta'"):
        compile_model(net("Dense(2)", loss="mse(delta=1.0)"))


@pytest.mark.parametrize(
    "written,name,values",
    [
        (
            "SGD(learning_rate=0.1, momentum=0.9, nesterov=true)",
            "SGD",
            {"learning_rate": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.0},
        ),
        ('"sgd"', "SGD", {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False}),
        ("Adam(0.01, beta_1=0.8)", "Adam", {"learning_rate": 0.01, "beta_1": 0.8, "beta_2": 0.999}),
        ("adam", "Adam", {"learning_rate": 0.001, "epsilon": 1e-7}),
        ("AdamW(weight_decay=0.05)", "AdamW", {"learning_rate": 0.001, "weight_decay": 0.05}),
        (
            "RMSprop(learning_rate=0.002, rho=0.8, momentum=0.1)",
            "RMSprop",
            {"rho": 0.8, "momentum": 0.1},
        ),
    ],
)
def test_optimizers(written, name, values):
    spec = compile_model(net("Dense(2)", extra=f"  optimizer: {written}\n")).spec
    assert spec.optimizer.name == name
    assert spec.optimizer.schedule is None
    assert values.items() <= spec.optimizer.values.items()


def test_default_optimizer_is_adam():
    optimizer = compile_model(net("Dense(2)")).spec.optimizer
    assert optimizer.name == "Adam" and optimizer.values["learning_rate"] == 0.001


@pytest.mark.parametrize(
    "written,schedule,params",
    [
        (
            "Adam(learning_rate=StepDecay(0.1, step_size=2, gamma=0.5))",
            "StepDecay",
            {"initial_learning_rate": 0.1, "step_size": 2, "gamma": 0.5},
        ),
        (
            "SGD(ExponentialDecay(0.05, decay_steps=100, decay_rate=0.9, staircase=true), "
            "momentum=0.9)",
            "ExponentialDecay",
            {
                "initial_learning_rate": 0.05,
                "decay_steps": 100,
                "decay_rate": 0.9,
                "staircase": True,
            },
        ),
    ],
)
def test_learning_rate_schedules(written, schedule, params):
    optimizer = compile_model(net("Dense(2)", extra=f"  optimizer: {written}\n")).spec.optimizer
    assert optimizer.schedule is not None and optimizer.schedule.name == schedule
    assert params.items() <= dict(optimizer.schedule.params).items()
    assert optimizer.values["learning_rate"] == params["initial_learning_rate"]


def test_schedule_parameters_are_checked():
    with pytest.raises(DSLValidationError, match="StepDecay needs the parameter 'step_size'"):
        compile_model(net("Dense(2)", extra="  optimizer: Adam(learning_rate=StepDecay(0.1))\n"))


@pytest.mark.parametrize(
    "written,expected",
    [
        ('["accuracy"]', ("accuracy",)),
        ('["acc", "accuracy"]', ("accuracy",)),
        ("[accuracy]", ("accuracy",)),
        ('"accuracy"', ("accuracy",)),
        ("[]", ()),
    ],
)
def test_metrics(written, expected):
    source = net('Output(3, "softmax")', loss='"cce"', extra=f"  metrics: {written}\n")
    assert compile_model(source).spec.metrics == expected


def test_regression_metrics():
    spec = compile_model(net("Dense(2)", extra='  metrics: ["mae", "mean_squared_error"]\n')).spec
    assert spec.metrics == ("mae", "mse")


# --- train block --------------------------------------------------------------------------------
def test_train_block():
    extra = (
        "  train {\n"
        "    epochs: 7\n"
        "    batch_size: 16\n"
        "    validation_split: 0.25\n"
        "    seed: 3\n"
        "    shuffle: false\n"
        '    early_stopping(patience=4, monitor="val_accuracy")\n'
        "  }\n"
    )
    train = compile_model(net('Output(3, "softmax")', loss='"cce"', extra=extra)).spec.train
    assert (train.epochs, train.batch_size, train.validation_split, train.seed, train.shuffle) == (
        7,
        16,
        0.25,
        3,
        False,
    )
    assert train.early_stopping is not None
    assert (train.early_stopping.patience, train.early_stopping.monitor) == (4, "val_accuracy")
    assert train.early_stopping.restore_best_weights is True


def test_train_defaults():
    train = compile_model(net("Dense(2)")).spec.train
    assert (train.epochs, train.batch_size, train.validation_split, train.seed, train.shuffle) == (
        10,
        32,
        0.0,
        42,
        True,
    )
    assert train.early_stopping is None
    early = compile_model(net("Dense(2)", extra="  train { early_stopping() }\n")).spec.train
    assert early.early_stopping is not None
    assert (early.early_stopping.patience, early.early_stopping.monitor) == (3, "val_loss")


@pytest.mark.parametrize(
    "entry,message",
    [
        ("validation_split: 1.0", "'validation_split' must be >= 0 and < 1"),
        ("batch_size: 0", "'batch_size' must be >= 1"),
        ("seed: -1", "'seed' must be >= 0"),
        ("epochs: 2  epochs: 3", "train setting 'epochs' is given twice"),
        ('early_stopping(monitor="val_acc")', "did you mean 'val_accuracy'?"),
    ],
)
def test_train_block_errors(entry, message):
    with pytest.raises(DSLValidationError) as info:
        compile_model(net("Dense(2)", extra=f"  train {{ {entry} }}\n"))
    assert message in str(info.value)


# --- promises of the compiler -------------------------------------------------------------------
RICH_SOURCE = (
    "define Block { Conv2D(4, 3, padding='same', activation='relu') BatchNormalization() }\n"
    "network Rich {\n"
    "  input: (9, 9, 2)\n"
    "  layers:\n"
    "    Block() * 2\n"
    "    Residual { Conv2D(4, 3, padding='same') }\n"
    "    AveragePooling2D(2, padding='same')\n"
    "    Reshape((25, 4))\n"
    "    Bidirectional(GRU(3, return_sequences=true), merge_mode='ave')\n"
    "    TransformerEncoder(1, 8)\n"
    "    Flatten()\n"
    "    Dense(HPO(choice(8, 16)), 'gelu')\n"
    "    Output(5, 'softmax')\n"
    '  loss: "sparse_categorical_crossentropy"\n'
    "  optimizer: AdamW(learning_rate=ExponentialDecay(0.01, 10, 0.9))\n"
    "  metrics: [accuracy]\n"
    "  train { epochs: 2 early_stopping(patience=1) }\n"
    "}\n"
)


def test_code_generation_is_deterministic_in_a_process():
    for backend in ("pytorch", "keras"):
        first = compile_model(RICH_SOURCE, backend).code
        second = compile_model(RICH_SOURCE, backend).code
        assert first == second
        assert compile_model(RICH_SOURCE).for_framework(backend).code == first


def test_code_generation_is_deterministic_across_processes(tmp_path):
    """Different hash seeds (set and dict orders of strings) give the same code."""
    script = tmp_path / "gen.py"
    script.write_text(
        "import sys\n"
        "from neural_jupyter.compiler import compile_model\n"
        "source = sys.stdin.read()\n"
        "m = compile_model(source)\n"
        "sys.stdout.write(m.code + m.for_framework('keras').code)\n"
    )
    outputs = []
    for seed in ("1", "2", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        result = subprocess.run(
            [sys.executable, str(script)],
            input=RICH_SOURCE,
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        outputs.append(result.stdout)
    assert outputs[0] and outputs[0] == outputs[1] == outputs[2]
    assert outputs[0] == compile_model(RICH_SOURCE).code + compile_model(RICH_SOURCE, "keras").code


def test_compiler_prints_nothing_and_leaves_logging_alone(capfd):
    _parser.cache_clear()  # building the grammar is part of the first compile
    root = logging.getLogger()
    before = (list(root.handlers), root.level, logging.getLogger("lark").handlers[:])
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        for backend in ("pytorch", "keras"):
            model = compile_model(RICH_SOURCE, backend)
            assert model.code
            model.with_hparams(**{"dense_1.units": 16})
        compile_all(RICH_SOURCE)
        with pytest.raises(DSLError):
            compile_model(RICH_SOURCE.replace("Flatten()", "Flaten()"))
        with pytest.raises(DSLSyntaxError):
            compile_model(RICH_SOURCE.replace("Flatten()", "Flatten("))
    assert out.getvalue() == "" and err.getvalue() == ""
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    assert (list(root.handlers), root.level, logging.getLogger("lark").handlers[:]) == before


# --- no code injection --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "source",
    [
        net('Dense(2, activation="relu); import os")'),
        net('Dense(2, activation="relu\\nimport os")'),
        net('Conv1D(2, 3, padding="same\\")\\nimport os\\n#")', input="(5, 1)"),
        net("Dense(2, activation=__import__)"),
        net("Bidirectional(LSTM(2), merge_mode=\"concat') or __import__('os')\")", input="(4, 2)"),
        net("Dense(2)", loss='"mse\\"); import os; (\\""'),
        net("Dense(2)", extra='  optimizer: "Adam(); import os"\n'),
        net("Dense(2)", extra='  metrics: ["mae\\"); import os"]\n'),
        net("Dense(2)").replace("network Net", "network __import__"),
        net("Dense(2)").replace("network Net", "network _Net"),
        net("Dense(2)").replace("network Net", "network os.system"),
        net("Dense(2)").replace("network Net", 'network "Net"'),
        net("Dense(2)").replace("network Net", "network Net(nn.Module): pass\nclass X"),
        net("Dense(2)").replace("network Net", "network exec"),
        net("Dense(2)").replace("network Net", "network Net\u00e9"),
    ],
)
def test_injection_attempts_are_rejected(source):
    with pytest.raises(DSLError):
        compile_model(source)


def _string_constants(code: str) -> set[str]:
    """String literals in generated code, docstrings excluded."""
    tree = ast.parse(code)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(
            node
        ):
            docstrings.add(id(node.body[0].value))
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    }


def test_only_validated_strings_reach_generated_code():
    marker = "Xyzzy"
    source = (
        f"# {marker} in a comment\n"
        f"define {marker}Block {{ Dense(4, 'RELU') }}\n"
        + RICH_SOURCE.replace(
            "Dense(HPO(choice(8, 16)), 'gelu')",
            f"{marker}Block() Dense(HPO(choice(8, 16), name='{marker}hp'), gelu)",
        )
    )
    model = compile_model(source)
    choices = {c for layer in LAYERS.values() for p in layer.params for c in p.choices}
    allowed = (
        choices
        | {layer.name for layer in model.spec.all_layers()}
        | {
            model.name,
            "input",
            "int32",
            "-inf",
            "relu",
        }
    )
    for backend in ("pytorch", "keras"):
        code = model.for_framework(backend).code
        assert marker not in code
        assert _string_constants(code) <= allowed, _string_constants(code) - allowed


def test_generated_module_names_are_reserved():
    """A network becomes a class: it must not be able to shadow a name the code defines."""
    model = compile_model(RICH_SOURCE)
    for backend in ("pytorch", "keras"):
        tree = ast.parse(model.for_framework(backend).code)
        defined = set()
        for node in tree.body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                defined.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                defined |= {alias.asname or alias.name.split(".")[0] for alias in node.names}
        assert defined - {model.name} <= RESERVED_NAMES
    with pytest.raises(DSLValidationError, match="cannot be a network name"):
        compile_model(net("Dense(2)").replace("network Net", "network TransformerEncoder"))


def test_override_beyond_int64_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="is too large"):
        compile_model(HPO_SOURCE, hparams={"dense_1.units": 10**5000})
