"""Programs written the way Neural DSL (the neural-dsl package) writes them compile with the
meaning neural-dsl gives them: each form of its dialect is in one small program below, which
compiles for PyTorch and Keras, builds, and runs forward on a batch of 2 to the declared
output shape. Where a form cannot carry over, the compiled model says so in a note.

The programs are written for this test from neural-dsl's grammar and documentation.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import numpy as np
import pytest

import neural_jupyter
from neural_jupyter.compiler import CompiledModel, compile_model
from neural_jupyter.errors import (
    ConfigurationError,
    DSLSyntaxError,
    DSLValidationError,
    SeveralNetworksError,
)

try:
    import torch
except ImportError:  # pragma: no cover - the test extra installs torch
    torch = None
try:
    import keras
except ImportError:  # pragma: no cover - the test extra installs keras
    keras = None

needs_frameworks = pytest.mark.skipif(
    torch is None or keras is None, reason="needs torch and keras (pip install '.[test]')"
)


@dataclass(frozen=True)
class Program:
    id: str
    source: str
    output: tuple[int, ...]  # declared output shape (batch axis excluded)
    notes: tuple[str, ...] = ()  # parts of notes the compiled model must carry
    steps: int = 7  # the sequence length fed to a variable-length input
    checks: dict = field(default_factory=dict)  # spec attribute paths -> expected values


def _net(body: str, name: str = "Net") -> str:
    return f"network {name} {{\n{body}\n}}\n"


PROGRAMS: list[Program] = [
    Program(
        "no_loss_softmax",
        _net(
            '  input: (12,)\n  layers:\n    Dense(16, "relu")\n    Dense(4, "softmax")\n'
            "  optimizer: Adam(learning_rate=0.01)"
        ),
        (4,),
        ("categorical_crossentropy inferred",),
        checks={"loss.name": "categorical_crossentropy", "loss.labels": "auto"},
    ),
    Program(
        "no_loss_sigmoid",
        _net('  input: (6,)\n  layers:\n    Dense(8, "relu")\n    Output(1, "sigmoid")'),
        (1,),
        ("binary_crossentropy inferred",),
        checks={"loss.name": "binary_crossentropy", "loss.inferred": True},
    ),
    Program(
        "no_loss_linear",
        _net('  input: (6,)\n  layers:\n    Dense(8, "tanh")\n    Dense(2, "linear")'),
        (2,),
        ("mse inferred",),
        checks={"loss.name": "mse", "loss.kind": "regression"},
    ),
    Program(
        "no_loss_single_unit_without_activation",
        _net('  input: (6,)\n  layers:\n    Dense(8, "relu")\n    Dense(1)'),
        (1,),
        ("mse inferred", "a regression value"),
        checks={"loss.name": "mse", "loss.inferred": True},
    ),
    Program(
        "no_loss_output_without_activation",
        _net("  input: (6,)\n  layers:\n    Output(units=3)"),
        (3,),
        ("applies softmax in Neural DSL",),
        checks={"loss.name": "categorical_crossentropy"},
    ),
    Program(
        "search_method_in_train",
        _net(
            '  input: (8,)\n  layers:\n    Dense(HPO(choice(4, 8)))\n    Output(3, "softmax")\n'
            '  loss: "sparse_categorical_crossentropy"\n'
            '  train {\n    epochs: 2\n    search_method: "random"\n  }'
        ),
        (3,),
        ('search_method "random"',),
        checks={"train.strategy": "random", "train.epochs": 2},
    ),
    Program(
        "bayesian_search_method",
        _net(
            '  input: (8,)\n  layers:\n    Output(3, "softmax")\n'
            '  train { search_method: "bayesian" }'
        ),
        (3,),
        checks={"train.strategy": "optuna"},
    ),
    Program(
        "leading_batch_axis",
        _net(
            "  input: (None, 8, 8, 1)\n  layers:\n"
            '    Conv2D(filters=4, kernel_size=(3,3), activation="relu")\n'
            "    MaxPooling2D(pool_size=(2,2))\n    Flatten()\n"
            '    Output(units=10, activation="softmax")\n'
            '  loss: "sparse_categorical_crossentropy"'
        ),
        (10,),
        ("is the batch axis",),
        checks={"input_shape": (8, 8, 1)},
    ),
    Program(
        "uppercase_none_batch_axis",
        _net('  input: (NONE, 32)\n  layers:\n    Dense(64, "relu") * 2\n    Dense(10, "softmax")'),
        (10,),
        checks={"input_shape": (32,)},
    ),
    Program(
        "variable_length_sequence",
        _net(
            "  input: (None, 16)\n  layers:\n"
            "    TransformerEncoder(num_heads=2, ff_dim=32, dropout=0.0)\n"
            "    GlobalAveragePooling1D()\n"
            '    Output(3, "softmax")'
        ),
        (3,),
        ("sequences of any length",),
        checks={"input_shape": (None, 16)},
    ),
    Program(
        "variable_length_token_ids",
        _net(
            "  input: (None,)\n  layers:\n    Embedding(input_dim=50, output_dim=8)\n"
            '    Conv1D(8, 3, activation="relu")\n    LSTM(6)\n    Output(2, "softmax")'
        ),
        (2,),
        checks={"input_shape": (None,), "input_dtype": "int64"},
    ),
    Program(
        "variable_length_after_batch_axis",
        _net(
            "  input: (None, None, 4)\n  layers:\n    GRU(5, return_sequences=true)\n"
            '    Dense(3, "relu")\n    GlobalMaxPooling1D()\n    Output(2, "softmax")'
        ),
        (2,),
        checks={"input_shape": (None, 4)},
        steps=3,
    ),
    Program(
        "execution_device",
        _net(
            '  input: (4,)\n  layers:\n    Output(2, "softmax")\n'
            '  execution {\n    device: "cpu"\n  }'
        ),
        (2,),
        ("execution device 'cpu' becomes the job's device",),
        checks={"device": "cpu"},
    ),
    Program(
        "execute_block_gpu",
        _net('  input: (4,)\n  layers:\n    Output(2, "softmax")\n  execute { device: "gpu" }'),
        (2,),
        checks={"device": "cuda"},
    ),
    Program(
        "execution_tpu_and_platform",
        _net(
            '  input: (4,)\n  layers:\n    Output(2, "softmax")\n'
            '  execution { device: "tpu"  platform: "colab" }'
        ),
        (2,),
        ("device 'tpu' is ignored", "execution setting 'platform' is ignored"),
        checks={"device": None},
    ),
    Program(
        "conv_third_positional_activation",
        _net('  input: (10, 10, 3)\n  layers:\n    Conv2D(8, (3,3), "relu")\n  loss: "mse"'),
        (8, 8, 8),
        checks={"layers.0.values.activation": "relu", "layers.0.values.strides": (1, 1)},
    ),
    Program(
        "device_placement",
        _net(
            '  input: (6,)\n  layers:\n    Dense(8, "relu") @ "cuda:0"\n'
            '    Dense(8, "relu") @ "cuda:1"\n    Output(2, "softmax") @ "cuda:0"'
        ),
        (2,),
        ("splitting a model across devices is not generated",),
        checks={"device": "cuda"},
    ),
    Program(
        "single_device_placement",
        _net('  input: (5, 3)\n  layers:\n    LSTM(4) @ "cpu"\n    Output(2, "softmax")'),
        (2,),
        ("@ 'cpu' placements",),
        checks={"device": "cpu"},
    ),
    Program(
        "sub_layer_block",
        _net(
            "  input: (5, 16)\n  layers:\n"
            "    TransformerEncoder(num_heads=4, ff_dim=32) {\n"
            "      Conv2D(32, (3,3))\n      Dense(128)\n    } * 2\n"
            '    Flatten()\n    Output(2, "softmax")'
        ),
        (2,),
        ("the block of 2 layers after TransformerEncoder(...) is ignored",),
        checks={"layers.0.kind": "TransformerEncoder", "layers.1.kind": "TransformerEncoder"},
    ),
    Program(
        "optimizer_quoted_call",
        _net(
            '  input: (4,)\n  layers:\n    Output(2, "softmax")\n'
            '  optimizer: "Adam(learning_rate=0.005)"'
        ),
        (2,),
        checks={"optimizer.name": "Adam", "optimizer.values.learning_rate": 0.005},
    ),
    Program(
        "optimizer_quoted_name",
        _net('  input: (4,)\n  layers:\n    Output(2, "softmax")\n  optimizer: "adam"'),
        (2,),
        checks={"optimizer.name": "Adam"},
    ),
    Program(
        "schedule_quoted",
        _net(
            '  input: (4,)\n  layers:\n    Output(2, "softmax")\n'
            '  optimizer: SGD(learning_rate="ExponentialDecay(0.1, 1000, 0.96)", momentum=0.9)'
        ),
        (2,),
        checks={
            "optimizer.schedule.name": "ExponentialDecay",
            "optimizer.values.learning_rate": 0.1,
            "optimizer.values.momentum": 0.9,
        },
    ),
    Program(
        "transformer_name_and_defaults",
        _net(
            "  input: (6, 16)\n  layers:\n    Transformer(num_heads=2, ff_dim=8)\n"
            "    TransformerEncoder()\n    GlobalAveragePooling1D()\n"
            '    Output(2, "softmax")'
        ),
        (2,),
        checks={
            "layers.0.kind": "TransformerEncoder",
            "layers.1.values.num_heads": 8,
            "layers.1.values.ff_dim": 512,
        },
    ),
    Program(
        "nested_hpo",
        _net(
            "  input: (8,)\n  layers:\n"
            "    Dense(HPO(choice(HPO(range(8, 32, step=8)), HPO(choice(64, 128)))))\n"
            '    Output(2, "softmax")\n  loss: "sparse_categorical_crossentropy"'
        ),
        (2,),
        checks={"layers.0.values.units": 8},
    ),
    Program(
        "residual_connection_block",
        _net(
            "  input: (6, 6, 4)\n  layers:\n    ResidualConnection() {\n"
            '      Conv2D(4, (3,3), padding="same", activation="relu")\n'
            "      BatchNormalization()\n    }\n    ResidualConnection {\n"
            '      Conv2D(4, (3,3), padding="same")\n    }\n'
            '    GlobalAveragePooling2D()\n    Output(3, "softmax")'
        ),
        (3,),
        checks={"layers.0.kind": "Residual", "layers.1.kind": "Residual"},
    ),
    Program(
        "cross_entropy_loss",
        _net('  input: (4,)\n  layers:\n    Output(3, "softmax")\n  loss: "cross_entropy"'),
        (3,),
        ('loss "cross_entropy" is categorical cross-entropy',),
        checks={"loss.name": "categorical_crossentropy", "loss.labels": "auto"},
    ),
    Program(
        "batch_size_outside_train",
        _net(
            '  input: (4,)\n  layers:\n    Output(3, "softmax")\n  batch_size: 16\n'
            "  epochs: 3\n  train { validation_split: 0.25 }"
        ),
        (3,),
        checks={"train.batch_size": 16, "train.epochs": 3, "train.validation_split": 0.25},
    ),
    Program(
        "kernel_keyword",
        _net('  input: (9, 9, 1)\n  layers:\n    Conv2D(filters=2, kernel=(3,3))\n  loss: "mse"'),
        (7, 7, 2),
        checks={"layers.0.values.kernel_size": (3, 3)},
    ),
    Program(
        "macro_without_parentheses",
        'define ConvBlock {\n  Conv2D(4, 3, activation="relu")\n  BatchNormalization()\n}\n'
        + _net(
            "  input: (12, 12, 1)\n  layers:\n    ConvBlock\n    ConvBlock\n    Flatten()\n"
            '    Output(5, "softmax")'
        ),
        (5,),
        checks={"layers.2.kind": "Conv2D", "layers.2.macro": "ConvBlock"},
    ),
    Program(
        "everything_together",
        'define Features {\n  Conv2D(8, (3,3), "relu")\n  MaxPooling2D((2,2))\n}\n'
        + _net(
            "  input: (None, 16, 16, 1)\n  layers:\n    Features\n"
            '    ResidualConnection() { Conv2D(8, kernel=(3,3), padding="same") }\n'
            "    Flatten()\n"
            '    Dense(HPO(choice(HPO(range(16, 64, step=16)), 128)), "relu") @ "cuda:0"\n'
            '    Output(10, "softmax")\n'
            '  optimizer: "Adam(learning_rate=HPO(log_range(1e-4, 1e-2)))"\n'
            "  batch_size: 32\n"
            '  train {\n    epochs: 2\n    search_method: "bayesian"\n  }\n'
            '  execute {\n    device: "cuda"\n  }',
            name="MNISTClassifier",
        ),
        (10,),
        ("is the batch axis", "inferred", "search_method"),
        checks={"device": "cuda", "train.strategy": "optuna", "train.batch_size": 32},
    ),
]


def _get(obj, path: str):
    for part in path.split("."):
        if part.isdigit():
            obj = obj[int(part)]
        elif isinstance(obj, dict):
            obj = obj[part]
        else:
            obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("program", PROGRAMS, ids=[p.id for p in PROGRAMS])
def test_program_compiles_with_neural_dsl_meaning(program):
    model = compile_model(program.source)
    assert model.spec.output_shape == program.output
    for path, expected in program.checks.items():
        assert _get(model.spec, path) == expected, path
    for part in program.notes:
        assert any(part in note for note in model.notes), (part, model.notes)
    text = str(neural_jupyter.summary(model))
    for note in model.notes:
        assert note in text  # the summary shows every note
    page = neural_jupyter.summary(model)._repr_html_()
    assert all(html.escape(note) in page for note in model.notes)


def _batch(model: CompiledModel, program: Program) -> np.ndarray:
    shape = tuple(program.steps if size is None else size for size in model.spec.input_shape)
    rng = np.random.default_rng(0)
    if model.spec.input_dtype == "int64":
        vocabulary = model.spec.layers[0].values["input_dim"]
        return rng.integers(0, vocabulary, size=(2, *shape))
    return rng.standard_normal((2, *shape)).astype("float32")


@needs_frameworks
@pytest.mark.parametrize("program", PROGRAMS, ids=[p.id for p in PROGRAMS])
def test_program_builds_and_runs_in_both_frameworks(program):
    model = compile_model(program.source)
    batch = _batch(model, program)
    net = model.build()
    net.eval()
    with torch.no_grad():
        out = net(torch.as_tensor(batch))
    assert tuple(out.shape) == (2, *program.output)
    assert torch.isfinite(out).all()
    keras_model = model.for_framework("keras").build()
    out = keras.ops.convert_to_numpy(keras_model(batch, training=False))
    assert out.shape == (2, *program.output)
    assert np.isfinite(out).all()


# --- errors that teach ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Wrong:
    id: str
    source: str
    line: int
    column: int
    message: str  # part of the message
    hint: str  # part of the hint: the fix, at the right line
    error: type = DSLValidationError


WRONG: list[Wrong] = [
    Wrong(
        "classification_head_on_feature_map",
        _net(
            "  input: (28, 28, 1)\n  layers:\n"
            '    Conv2D(filters=8, kernel_size=(3,3), activation="relu")\n'
            "    MaxPooling2D(pool_size=(2,2))\n"
            '    Dense(32, "relu")\n'
            "    Dropout(0.5)\n"
            '    Output(10, "softmax")\n'
            '  loss: "categorical_crossentropy"'
        ),
        8,
        5,
        "the network's output has shape (13, 13, 10)",
        "add Flatten() before line 6",
    ),
    Wrong(
        "classification_head_on_rows_without_loss",
        _net(
            "  input: (None, 28, 28)\n  layers:\n"
            '    Dense(128, activation="relu")\n    Dropout(rate=0.2)\n'
            '    Output(units=10, activation="softmax")'
        ),
        6,
        5,
        "output has shape (28, 10)",
        "add Flatten() before line 4",
    ),
    Wrong(
        "conv_on_a_1x1_input",
        _net('  input: (1,1)\n  layers:\n    Conv2D(32, (3,3))\n    Dense(10, "softmax")'),
        4,
        5,
        "Conv2D needs an image-like input",
        "input: (height, width, channels)",
    ),
    Wrong(
        "conv_after_pooling_to_1x1",
        _net(
            "  input: (4, 4, 3)\n  layers:\n    MaxPooling2D(2)\n    MaxPooling2D(2)\n"
            '    Conv2D(8, (3,3))\n    Flatten()\n    Output(2, "softmax")'
        ),
        6,
        15,
        "kernel 3×3 is larger than its input 1×1",
        "remove MaxPooling2D at line 5",
    ),
    Wrong(
        "image_without_channels_axis",
        _net(
            "  input: (28, 28)\n  layers:\n    Conv2D(4, 3)\n    Flatten()\n"
            '    Output(2, "softmax")'
        ),
        4,
        5,
        "Conv2D expects input shaped (height, width, channels), but gets (28, 28)",
        "input: (28, 28, 1)",
    ),
    Wrong(
        "attention_on_width_1",
        _net(
            "  input: (100, 1)\n  layers:\n    TransformerEncoder()\n"
            '    GlobalAveragePooling1D()\n    Output(2, "softmax")'
        ),
        4,
        5,
        "input (100, 1) has width 1",
        "add Dense(64) before line 4",
    ),
    Wrong(
        "attention_on_scalars",
        _net('  input: (50,)\n  layers:\n    Transformer(num_heads=2)\n    Output(2, "softmax")'),
        4,
        5,
        "expects input shaped (timesteps, width), but gets (50,)",
        "Dense(64) before line 4",
    ),
    Wrong(
        "embedding_on_embedded_input",
        _net(
            "  input: (100, 300)  # sequence length, embedding dim\n  layers:\n"
            "    Embedding(input_dim=10000, output_dim=300)\n    LSTM(units=64)\n"
            '    Output(units=2, activation="softmax")\n  loss: "sparse_categorical_crossentropy"'
        ),
        4,
        5,
        "already holds a 300-wide vector per step",
        "write input: (100,) to feed token ids",
    ),
    Wrong(
        "residual_changes_channels",
        _net(
            "  input: (8, 8, 16)\n  layers:\n    ResidualConnection() {\n"
            '      Conv2D(32, (3,3), padding="same", activation="relu")\n'
            '      BatchNormalization()\n    }\n    Flatten()\n    Output(2, "softmax")'
        ),
        4,
        5,
        "changes the shape from (8, 8, 16) to (8, 8, 32)",
        "Conv2D at line 5 makes 32; write Conv2D(16, ...) there",
    ),
    Wrong(
        "residual_shrinks",
        _net(
            "  input: (8, 8, 16)\n  layers:\n    Residual {\n      Conv2D(16, (3,3))\n    }\n"
            '    Flatten()\n    Output(2, "softmax")'
        ),
        4,
        5,
        "changes the shape from (8, 8, 16) to (6, 6, 16)",
        'use padding="same" (and strides 1) in Conv2D at line 5',
    ),
    Wrong(
        "flatten_of_a_sequence_of_any_length",
        _net(
            "  input: (None, 16)\n  layers:\n    LSTM(8, return_sequences=true)\n    Flatten()\n"
            '    Output(2, "softmax")'
        ),
        5,
        5,
        "Flatten cannot take a sequence of any length",
        "GlobalAveragePooling1D() or GlobalMaxPooling1D() before line 5",
    ),
    Wrong(
        "head_on_a_sequence_of_any_length",
        _net(
            "  input: (NONE, 32)\n  layers:\n    TransformerEncoder(num_heads=4, ff_dim=64)\n"
            '    Dense(32, "relu")\n    Output(units=10, activation="softmax")'
        ),
        6,
        5,
        "output has shape (None, 10)",
        "GlobalAveragePooling1D() or GlobalMaxPooling1D() before line 5",
    ),
    Wrong(
        "several_networks",
        _net('  input: (4,)\n  layers:\n    Output(2, "softmax")', name="First")
        + _net('  input: (4,)\n  layers:\n    Output(2, "softmax")', name="Second"),
        6,
        9,
        "several networks: First (line 1), Second (line 6)",
        'network="First"',
        SeveralNetworksError,
    ),
    Wrong(
        "quoted_optimizer_with_a_typo",
        _net(
            '  input: (4,)\n  layers:\n    Output(2, "softmax")\n'
            '  optimizer: "Adam(learing_rate=0.001)"'
        ),
        5,
        20,
        "Adam has no parameter 'learing_rate'",
        "did you mean 'learning_rate'?",
    ),
    Wrong(
        "quoted_optimizer_unclosed",
        _net('  input: (4,)\n  layers:\n    Output(2, "softmax")\n  optimizer: "Adam(0.1"'),
        5,
        23,
        'cannot read the string "Adam(0.1" as a call',
        "without quotes",
        DSLSyntaxError,
    ),
    Wrong(
        "no_loss_and_no_activation",
        _net("  input: (4,)\n  layers:\n    Dense(2)"),
        1,
        9,
        "has no 'loss:' section",
        "the loss cannot be told from an output without an activation (line 4)",
    ),
    Wrong(
        "unknown_search_method",
        _net(
            '  input: (4,)\n  layers:\n    Output(2, "softmax")\n'
            '  train { search_method: "bayes_opt" }'
        ),
        5,
        11,
        "search_method must be one of",
        "did you mean 'bayes'?",
    ),
    Wrong(
        "batch_size_in_both_places",
        _net(
            '  input: (4,)\n  layers:\n    Output(2, "softmax")\n  batch_size: 8\n'
            "  train { batch_size: 16 }"
        ),
        6,
        11,
        "train setting 'batch_size' is given twice",
        "also at line 5, column 3",
    ),
]


@pytest.mark.parametrize("wrong", WRONG, ids=[w.id for w in WRONG])
def test_wrong_program_gets_an_error_that_teaches(wrong):
    with pytest.raises(wrong.error) as info:
        compile_model(wrong.source)
    err = info.value
    assert (err.line, err.column) == (wrong.line, wrong.column), str(err)
    assert wrong.message in err.message, str(err)
    assert err.hint and wrong.hint in err.hint, str(err)


def test_several_networks_error_is_also_a_configuration_error():
    source = WRONG[[w.id for w in WRONG].index("several_networks")].source
    with pytest.raises(ConfigurationError) as info:
        compile_model(source)
    assert isinstance(info.value, DSLValidationError)
    assert compile_model(source, network="Second").name == "Second"
