"""Mistakes in model source give a DSL error at the right line and column, with the source
line, a caret under the mistake, a did-you-mean where a name is misspelt, and no traceback."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from neural_jupyter.compiler import compile_model
from neural_jupyter.errors import DSLError, DSLSyntaxError, DSLValidationError


def net(*layers: str, input: str = "(8,)", loss: str = '"mse"', extra: str = "") -> str:
    """A network whose first layer is on line 4 (column 5)."""
    body = "".join(f"    {layer}\n" for layer in layers)
    return f"network Net {{\n  input: {input}\n  layers:\n{body}  loss: {loss}\n{extra}}}\n"


@dataclass(frozen=True)
class Bad:
    id: str
    source: str
    error: type[DSLError]
    line: int
    column: int
    at: str  # the source text the caret must point at (the start of it)
    message: str  # a part of the message
    hint: str | None = None  # a part of the hint (None: not checked)


BAD: list[Bad] = [
    Bad(
        "unknown_layer",
        net("Dens(4)"),
        DSLValidationError,
        4,
        5,
        "Dens(4)",
        "unknown layer 'Dens'",
        "did you mean 'Dense'?",
    ),
    Bad(
        "unknown_layer_lowercase",
        net("conv2d(4, 3)", input="(8, 8, 1)"),
        DSLValidationError,
        4,
        5,
        "conv2d",
        "unknown layer 'conv2d'",
        "did you mean 'Conv2D'?",
    ),
    Bad(
        "unknown_parameter",
        net("Dense(unit=4)"),
        DSLValidationError,
        4,
        11,
        "unit=4",
        "Dense has no parameter 'unit'",
        "did you mean 'units'?",
    ),
    Bad(
        "unknown_parameter_conv",
        net("Conv2D(4, 3, stride=2)", input="(8, 8, 1)"),
        DSLValidationError,
        4,
        18,
        "stride=2",
        "Conv2D has no parameter 'stride'",
        "did you mean 'strides'?",
    ),
    Bad(
        "wrong_type_name",
        net("Dense(units=abc)"),
        DSLValidationError,
        4,
        11,
        "units=abc",
        "parameter 'units' expects an integer, got the name abc",
    ),
    Bad(
        "wrong_type_string",
        net('Dense("64")'),
        DSLValidationError,
        4,
        11,
        '"64"',
        "parameter 'units' expects an integer",
    ),
    Bad(
        "wrong_type_float",
        net("Dense(6.5)"),
        DSLValidationError,
        4,
        11,
        "6.5",
        "expects an integer, got 6.5",
    ),
    Bad(
        "wrong_type_bool",
        net("Dense(4, use_bias=1)"),
        DSLValidationError,
        4,
        14,
        "use_bias=1",
        "parameter 'use_bias' expects true or false",
    ),
    Bad(
        "bad_activation",
        net('Dense(4, "rleu")'),
        DSLValidationError,
        4,
        14,
        '"rleu"',
        "parameter 'activation' expects one of",
        "did you mean 'relu'?",
    ),
    Bad("zero_units", net("Dense(0)"), DSLValidationError, 4, 11, "0", "must be >= 1, got 0"),
    Bad(
        "negative_units",
        net("Dense(units=-3)"),
        DSLValidationError,
        4,
        11,
        "units=-3",
        "must be >= 1, got -3",
    ),
    Bad(
        "dropout_rate_one",
        net("Dropout(1.0)"),
        DSLValidationError,
        4,
        13,
        "1.0",
        "parameter 'rate' must be >= 0 and < 1, got 1.0",
    ),
    Bad(
        "kernel_larger_than_input",
        net("Conv2D(4, 5)", input="(3, 3, 1)"),
        DSLValidationError,
        4,
        15,
        "5",
        "kernel 5×5 is larger than its input 3×3",
        'padding="same"',
    ),
    Bad(
        "kernel_larger_after_pooling",
        net("MaxPooling2D(2)", "Conv2D(4, kernel_size=(3, 2))", input="(4, 4, 1)"),
        DSLValidationError,
        5,
        15,
        "kernel_size=(3, 2)",
        "kernel 3×2 is larger than its input 2×2",
    ),
    Bad(
        "dilated_kernel_larger_than_input",
        net("Conv1D(2, 3, dilation_rate=3)", input="(6, 1)"),
        DSLValidationError,
        4,
        15,
        "3, dilation_rate",
        "kernel 7 is larger than its input 6",
    ),
    Bad(
        "pool_larger_than_input",
        net("MaxPooling2D(4)", input="(3, 3, 1)"),
        DSLValidationError,
        4,
        18,
        "4",
        "pool window 4×4 is larger than its input 3×3",
    ),
    Bad(
        "flatten_missing_before_output",
        net(
            'Conv2D(4, 3, activation="relu")',
            'Output(10, "softmax")',
            input="(8, 8, 1)",
            loss='"sparse_categorical_crossentropy"',
        ),
        DSLValidationError,
        5,
        5,
        'Output(10, "softmax")',
        "output has shape (6, 6, 10), but sparse_categorical_crossentropy needs one score "
        "per class",
        "add Flatten()",
    ),
    Bad(
        "flatten_missing_on_sequence",
        net('Dense(4, "relu")', 'Output(3, "softmax")', input="(5, 6)", loss='"cce"'),
        DSLValidationError,
        5,
        5,
        "Output(3",
        "output has shape (5, 3)",
        "Flatten()",
    ),
    Bad(
        "residual_changes_shape",
        net("Dense(8)", "Residual { Dense(8) Dense(3) }"),
        DSLValidationError,
        5,
        5,
        "Residual {",
        "Residual block changes the shape from (8,) to (3,)",
    ),
    Bad(
        "residual_conv_valid_padding",
        net("Residual { Conv2D(2, 3) BatchNormalization() }", input="(6, 6, 2)"),
        DSLValidationError,
        4,
        5,
        "Residual",
        "from (6, 6, 2) to (4, 4, 2)",
        'padding="same"',
    ),
    Bad(
        "missing_input",
        'network Net {\n  layers:\n    Dense(2)\n  loss: "mse"\n}\n',
        DSLValidationError,
        1,
        9,
        "Net",
        "network 'Net' has no 'input:' section",
        "input: (28, 28, 1)",
    ),
    Bad(
        "bad_input",
        net("Dense(2)", input="(8, 0)"),
        DSLValidationError,
        2,
        3,
        "input: (8, 0)",
        "input must be a tuple of positive integers",
    ),
    Bad(
        "missing_loss",
        "network Net {\n  input: (8,)\n  layers:\n    Dense(2)\n}\n",
        DSLValidationError,
        1,
        9,
        "Net",
        "has no 'loss:' section",
    ),
    Bad(
        "unclosed_brace",
        'network Net {\n  input: (8,)\n  layers:\n    Residual { Dense(8)\n  loss: "mse"\n}\n',
        DSLSyntaxError,
        4,
        14,
        "{ Dense(8)",
        "'{' is never closed",
        "before line 5, column 3",
    ),
    Bad(
        "unclosed_network_brace",
        'network Net {\n  input: (8,)\n  layers:\n    Dense(8)\n  loss: "mse"\n',
        DSLSyntaxError,
        1,
        13,
        "{",
        "'{' is never closed",
        "the end of the input",
    ),
    Bad(
        "unclosed_train_brace",
        net("Dense(2)", extra="  train { epochs: 3\n  metrics: []\n"),
        DSLSyntaxError,
        6,
        9,
        "{ epochs",
        "'{' is never closed",
    ),
    Bad(
        "stray_brace",
        'network Net {\n  input: (8,)\n  layers:\n    Dense(8) }\n  loss: "mse"\n}\n',
        DSLSyntaxError,
        4,
        14,
        "}",
        "unmatched '}'",
        "block opened at line 1, column 13",
    ),
    Bad(
        "stray_brace_at_end",
        net("Dense(8)") + "}\n",
        DSLSyntaxError,
        7,
        1,
        "}",
        "unmatched '}'",
        "remove it",
    ),
    Bad(
        "unclosed_parenthesis",
        'network Net {\n  input: (8,)\n  layers:\n    Dense(2\n  loss: "mse"\n}\n',
        DSLSyntaxError,
        4,
        10,
        "(2",
        "'(' is never closed",
        "add the matching ')'",
    ),
    Bad(
        "unclosed_tuple",
        'network Net {\n  input: (8,\n  layers:\n    Dense(2)\n  loss: "mse"\n}\n',
        DSLSyntaxError,
        2,
        10,
        "(8,",
        "'(' is never closed",
    ),
    Bad(
        "stray_parenthesis",
        net("Dense(2))"),
        DSLSyntaxError,
        4,
        13,
        ")",
        "unmatched ')'",
    ),
    Bad(
        "unclosed_list",
        net("Dense(2)", extra='  metrics: ["mae"\n'),
        DSLSyntaxError,
        6,
        12,
        '["mae"',
        "'[' is never closed",
        "add the matching ']'",
    ),
    Bad(
        "empty_layers",
        'network Net {\n  input: (8,)\n  layers:\n  loss: "mse"\n}\n',
        DSLValidationError,
        3,
        3,
        "layers:",
        "network 'Net' has no layers",
    ),
    Bad(
        "empty_macro_as_only_layers",
        "define Nothing { }\n" + net("Nothing()"),
        DSLValidationError,
        4,
        3,
        "layers:",
        "has no layers",
    ),
    Bad(
        "empty_residual",
        net("Residual { }"),
        DSLValidationError,
        4,
        5,
        "Residual",
        "Residual block is empty",
    ),
    Bad(
        "binary_crossentropy_with_10_units",
        net('Output(10, "sigmoid")', loss='"binary_crossentropy"'),
        DSLValidationError,
        4,
        5,
        "Output(10",
        "binary_crossentropy needs 1 output unit, but the output has 10",
        "sparse_categorical_crossentropy",
    ),
    Bad(
        "softmax_with_binary_crossentropy",
        net('Output(1, "softmax")', loss='"bce"'),
        DSLValidationError,
        4,
        5,
        "Output(1",
        "needs a sigmoid output",
    ),
    Bad(
        "categorical_with_one_unit",
        net('Output(1, "softmax")', loss='"categorical_crossentropy"'),
        DSLValidationError,
        4,
        5,
        "Output(1",
        "needs at least 2 output units",
        "binary_crossentropy",
    ),
    Bad(
        "unknown_optimizer",
        net("Dense(2)", extra="  optimizer: Adamm(learning_rate=0.1)\n"),
        DSLValidationError,
        6,
        14,
        "Adamm(",
        "unknown optimizer 'Adamm'",
        "did you mean 'Adam'?",
    ),
    Bad(
        "unknown_optimizer_parameter",
        net("Dense(2)", extra="  optimizer: SGD(learning_rate=0.1, momentun=0.9)\n"),
        DSLValidationError,
        6,
        37,
        "momentun=0.9",
        "SGD has no parameter 'momentun'",
        "did you mean 'momentum'?",
    ),
    Bad(
        "unknown_schedule",
        net("Dense(2)", extra="  optimizer: Adam(learning_rate=StepDecy(0.1, 2))\n"),
        DSLValidationError,
        6,
        33,
        "StepDecy(",
        "unknown learning-rate schedule 'StepDecy'",
        "did you mean 'StepDecay'?",
    ),
    Bad(
        "unknown_loss",
        net("Dense(2)", loss='"mean_squared_eror"'),
        DSLValidationError,
        5,
        3,
        "loss:",
        'unknown loss "mean_squared_eror"',
        "did you mean 'mean_squared_error'?",
    ),
    Bad(
        "unknown_loss_canonical",
        net('Output(3, "softmax")', loss='"categorical_crossentropyy"'),
        DSLValidationError,
        5,
        3,
        "loss:",
        "unknown loss",
        "did you mean 'categorical_crossentropy'?",
    ),
    Bad(
        "unknown_metric",
        net(
            'Output(3, "softmax")',
            loss='"cce"',
            extra='  metrics: ["accuracyy"]\n',
        ),
        DSLValidationError,
        6,
        3,
        "metrics:",
        'unknown metric "accuracyy"',
        "did you mean 'accuracy'?",
    ),
    Bad(
        "accuracy_on_regression",
        net("Dense(2)", extra='  metrics: ["accuracy"]\n'),
        DSLValidationError,
        6,
        3,
        "metrics:",
        "accuracy needs a classification loss",
    ),
    Bad(
        "macro_uses_itself",
        "define Loop { Dense(3) Loop() }\n" + net("Loop()"),
        DSLValidationError,
        1,
        24,
        "Loop()",
        "macro 'Loop' uses itself",
    ),
    Bad(
        "macros_use_each_other",
        "define A { B() }\ndefine B { Dense(2) A() }\n" + net("A()"),
        DSLValidationError,
        2,
        21,
        "A()",
        "macro 'A' uses itself",
    ),
    Bad(
        "macro_with_arguments",
        "define Block { Dense(2) }\n" + net("Block(3)"),
        DSLValidationError,
        5,
        5,
        "Block(3)",
        "macro 'Block' takes no arguments",
    ),
    Bad(
        "unknown_train_setting",
        net("Dense(2)", extra="  train { epochs: 3  batchsize: 4 }\n"),
        DSLValidationError,
        6,
        22,
        "batchsize: 4",
        "unknown train setting 'batchsize'",
        "did you mean 'batch_size'?",
    ),
    Bad(
        "unknown_train_call",
        net("Dense(2)", extra="  train { early_stoping(patience=2) }\n"),
        DSLValidationError,
        6,
        11,
        "early_stoping(",
        "unknown train entry 'early_stoping(...)'",
    ),
    Bad(
        "bad_train_value",
        net("Dense(2)", extra="  train { epochs: 0 }\n"),
        DSLValidationError,
        6,
        11,
        "epochs: 0",
        "'epochs' must be >= 1 and <= 1000000, got 0",
    ),
    Bad(
        "hpo_range_reversed",
        net("Dense(HPO(range(64, 8)))"),
        DSLValidationError,
        4,
        15,
        "range(64, 8)",
        "range() needs low < high, got 64, 8",
    ),
    Bad(
        "hpo_log_range_from_zero",
        net("Dense(2)", extra="  optimizer: SGD(learning_rate=HPO(log_range(0, 1)))\n"),
        DSLValidationError,
        6,
        36,
        "log_range(0, 1)",
        "log_range() needs a positive lower bound",
    ),
    Bad(
        "hpo_range_float_bounds_for_integer",
        net("Dense(HPO(range(1.5, 8)))"),
        DSLValidationError,
        4,
        11,
        "HPO(range(1.5, 8))",
        "is an integer, so its range needs integer bounds",
    ),
    Bad(
        "hpo_choice_wrong_type",
        net('Dense(HPO(choice(32, "big")))'),
        DSLValidationError,
        4,
        11,
        "HPO(choice",
        "parameter 'units' expects an integer, got the string \"big\"",
    ),
    Bad(
        "hpo_choice_bad_activation",
        net('Dense(4, HPO(choice("relu", "tanhh")))'),
        DSLValidationError,
        4,
        14,
        "HPO(choice",
        "parameter 'activation' expects one of",
        "did you mean 'tanh'?",
    ),
    Bad(
        "hpo_choice_out_of_range",
        net("Dense(2)", extra="  train { epochs: HPO(choice(1, -2)) }\n"),
        DSLValidationError,
        6,
        19,
        "HPO(choice(1, -2))",
        "'epochs' must be >= 1 and <= 1000000, got -2",
    ),
    Bad(
        "hpo_malformed",
        net("Dense(HPO(32))"),
        DSLValidationError,
        4,
        11,
        "HPO(32)",
        "malformed hyper-parameter expression",
        "HPO(choice(",
    ),
    Bad(
        "hpo_unknown_space",
        net("Dense(HPO(choise(16, 32)))"),
        DSLValidationError,
        4,
        15,
        "choise(",
        "unknown search space 'choise'",
    ),
    Bad(
        "hpo_range_bound_twice",
        net("Dense(HPO(range(4, 16, low=2)))"),
        DSLValidationError,
        4,
        28,
        "low=2",
        "range() gets 'low' both by position and by name",
    ),
    Bad(
        "hpo_duplicate_choice",
        net("Dense(HPO(choice(16, 16)))"),
        DSLValidationError,
        4,
        15,
        "choice(16, 16)",
        "choice() lists a value twice",
    ),
    Bad(
        "network_named_class",
        net("Dense(2)").replace("network Net", "network class"),
        DSLValidationError,
        1,
        9,
        "class",
        "'class' cannot be a network name",
    ),
    Bad(
        "network_named_builtin",
        net("Dense(2)").replace("network Net", "network print"),
        DSLValidationError,
        1,
        9,
        "print",
        "'print' cannot be a network name",
    ),
    Bad(
        "network_named_like_generated_code",
        net("Dense(2)").replace("network Net", "network nn"),
        DSLValidationError,
        1,
        9,
        "nn",
        "'nn' cannot be a network name",
    ),
    Bad(
        "network_name_with_odd_character",
        net("Dense(2)").replace("network Net", "network Net$2"),
        DSLSyntaxError,
        1,
        12,
        "$2",
        "unexpected character '$'",
    ),
    Bad(
        "output_not_last",
        net('Output(3, "softmax")', "Dense(2)"),
        DSLValidationError,
        4,
        5,
        "Output(3",
        "Output must be the last layer",
    ),
    Bad(
        "embedding_not_first",
        net("Dense(4)", "Embedding(10, 4)"),
        DSLValidationError,
        5,
        5,
        "Embedding",
        "Embedding must be the first layer",
    ),
    Bad(
        "lstm_on_flat_input",
        net("LSTM(4)"),
        DSLValidationError,
        4,
        5,
        "LSTM(4)",
        "LSTM expects input shaped (timesteps, features), but gets (8,)",
        "Embedding",
    ),
    Bad(
        "bidirectional_wraps_dense",
        net("Bidirectional(Densee(4))", input="(5, 3)"),
        DSLValidationError,
        4,
        19,
        "Densee(4)",
        "Bidirectional wraps a recurrent layer",
    ),
    Bad(
        "transformer_heads_do_not_divide",
        net("TransformerEncoder(3, 16)", input="(5, 8)"),
        DSLValidationError,
        4,
        24,
        "3, 16",
        "model width 8 is not divisible by num_heads=3",
    ),
    Bad(
        "reshape_wrong_size",
        net("Reshape((3, 3))"),
        DSLValidationError,
        4,
        13,
        "(3, 3)",
        "cannot reshape (8,) (8 values) into (3, 3) (9 values)",
    ),
    Bad(
        "argument_twice",
        net("Dense(2, units=3)"),
        DSLValidationError,
        4,
        14,
        "units=3",
        "gets 'units' both by position and by name",
    ),
    Bad(
        "too_many_positional",
        net("Dense(2, 'relu', true, 5)"),
        DSLValidationError,
        4,
        28,
        "5)",
        "takes at most 3 positional arguments, got 4",
    ),
    Bad(
        "section_twice",
        net("Dense(2)", extra='  loss: "mae"\n'),
        DSLValidationError,
        6,
        3,
        'loss: "mae"',
        "section 'loss' appears twice",
        "line 5, column 3",
    ),
    Bad(
        "missing_comma",
        net('Dense(2 "relu")'),
        DSLSyntaxError,
        4,
        13,
        '"relu"',
        "unexpected string \"relu\"; expected ')' or ','",
        "separate arguments with commas",
    ),
    Bad(
        "unterminated_string",
        net('Dense(2, "relu)'),
        DSLSyntaxError,
        4,
        14,
        '"relu)',
        "unexpected character '\"'",
        "strings must be closed on the same line",
    ),
    Bad(
        "equals_in_section",
        net("Dense(2)").replace("input:", "input ="),
        DSLSyntaxError,
        2,
        9,
        "= (8,)",
        "unexpected '='; expected ':'",
        "use ':' inside sections",
    ),
    Bad(
        "layer_without_parentheses",
        net("Flatten", "Dense(2)"),
        DSLSyntaxError,
        5,
        5,
        "Dense(2)",
        "unexpected name Dense; expected '(' or '{'",
        "parentheses",
    ),
    Bad(
        "repeat_zero",
        net("Dense(2) * 0"),
        DSLValidationError,
        4,
        14,
        "* 0",
        "repetition count must be at least 1",
    ),
    Bad(
        "no_network",
        "define Block { Dense(2) }\n",
        DSLValidationError,
        1,
        1,
        "define",
        "no network is defined",
    ),
]


@pytest.mark.parametrize("bad", BAD, ids=[b.id for b in BAD])
def test_error_points_at_the_mistake(bad):
    with pytest.raises(DSLError) as info:
        compile_model(bad.source)
    err = info.value
    assert type(err) is bad.error, f"{type(err).__name__}: {err}"
    assert (err.line, err.column) == (bad.line, bad.column), str(err)
    assert bad.message in err.message, str(err)
    source_line = bad.source.splitlines()[bad.line - 1]
    assert source_line[bad.column - 1 :].startswith(bad.at), str(err)
    text = str(err)
    lines = text.splitlines()
    assert lines[0].startswith(f"<source>, line {bad.line}, column {bad.column}: ")
    # the source line, then a caret under the column
    assert lines[1] == "    " + source_line
    assert lines[2].startswith("    " + " " * (bad.column - 1) + "^")
    assert set(lines[2].strip()) == {"^"}
    if bad.hint is not None:
        assert err.hint is not None and bad.hint in err.hint, text
        assert lines[-1].startswith("hint: ")
    rendered = "\n".join(err._render_traceback_())
    assert rendered.startswith(f"{bad.error.__name__}: <source>, line {bad.line}")
    assert source_line in rendered and lines[2] in rendered
    for text_form in (text, rendered):
        assert "Traceback" not in text_form
        assert 'File "' not in text_form
        assert ".py" not in text_form


def test_caret_spans_the_whole_argument():
    with pytest.raises(DSLValidationError) as info:
        compile_model(net("Dense(units=abc)"))
    assert info.value.details()[1] == "    " + " " * 10 + "^" * len("units=abc")


def test_error_names_the_source():
    with pytest.raises(DSLValidationError) as info:
        compile_model(net("Dens(2)"), source_name="<cell In[3]>")
    assert str(info.value).startswith("<cell In[3]>, line 4, column 5: unknown layer")


def test_error_position_counts_comments_and_macros_above():
    source = "# a comment\n// another one\ndefine Block {\n  Dense(4)\n  Dense(unit=2)\n}\n" + net(
        "Block()"
    )
    with pytest.raises(DSLValidationError) as info:
        compile_model(source)
    assert (info.value.line, info.value.column) == (5, 9)
    assert "did you mean 'units'?" in str(info.value)


def test_error_in_the_second_network_of_a_source():
    source = net("Dense(2)") + net("Dense(2)", "Dens(3)").replace("Net", "Other")
    with pytest.raises(DSLValidationError) as info:
        compile_model(source, network="Other")
    assert (info.value.line, info.value.column) == (11, 5)


# --- the same rules where they must NOT fire -----------------------------------------------------
@pytest.mark.parametrize(
    "source",
    [
        net('Dense(4, "relu")', "Flatten()", 'Output(3, "softmax")', input="(5, 6)", loss='"cce"'),
        net("Dense(4)", input="(5, 6)", loss='"mse"'),
        net("Conv2D(2, 3)", input="(6, 6, 1)", loss='"mae"'),
        net(
            'Conv2D(2, 3, padding="same")',
            "GlobalAveragePooling2D()",
            'Output(3, "softmax")',
            input="(6, 6, 1)",
            loss='"sparse_categorical_crossentropy"',
        ),
        net('Output(1, "sigmoid")', loss='"binary_crossentropy"'),
        net("Output(1)", loss='"bce"'),
        net("Output(4)", loss='"scce"'),
        net("Conv2D(4, 3)", input="(3, 3, 1)"),
        net('Residual { Conv2D(1, 3, padding="same") }', input="(4, 4, 1)"),
    ],
    ids=[
        "dense_on_3d_middle",
        "mse_on_3d_output",
        "mae_on_4d_output",
        "global_pooling_before_output",
        "binary_sigmoid",
        "binary_logits",
        "sparse_logits",
        "kernel_equals_input",
        "residual_same_padding",
    ],
)
def test_valid_networks_compile(source):
    model = compile_model(source)
    assert model.code


# --- in a notebook ------------------------------------------------------------------------------
GOOD_CELL = "%%neural_compile --show none\n" + net("Dense(2)")


def test_notebook_cell_error_is_a_dsl_error_without_traceback(ip, capsys):
    cell = (
        '%%neural_compile\nnetwork Net {\n  input: (8,)\n  layers:\n    Dens(2)\n  loss: "mse"\n}\n'
    )
    err = ip.run_error(cell)
    assert isinstance(err, DSLValidationError)
    # lines count from the cell body (the magic line is not part of the source)
    assert (err.line, err.column) == (4, 5)
    assert err.source_name.startswith("<cell")
    shown = capsys.readouterr()
    text = shown.out + shown.err
    assert "unknown layer 'Dens'" in text
    assert "    Dens(2)" in text and "^^^^^^^" in text
    assert "did you mean 'Dense'?" in text
    assert "Traceback" not in text
    assert "neural_jupyter" not in text  # none of our internals
    assert "File " not in text


def test_notebook_syntax_error_is_a_dsl_error(ip, capsys):
    err = ip.run_error(
        "%%neural_compile\nnetwork Net {\n  input: (8,)\n  layers:\n    Dense(2\n}\n"
    )
    assert isinstance(err, DSLSyntaxError)
    text = capsys.readouterr().out
    assert "DSLSyntaxError" in text and "Traceback" not in text


def test_failed_compile_leaves_the_namespace_untouched(ip):
    ip.run(GOOD_CELL)
    before = ip.ns["Net"]
    names = set(ip.ns)
    err = ip.run_error(GOOD_CELL.replace("Dense(2)", "Dense(0)"))
    assert isinstance(err, DSLValidationError)
    assert ip.ns["Net"] is before
    assert set(ip.ns) - names <= {"_", "__", "___"} | {n for n in ip.ns if n.startswith("_")}


def test_failed_compile_of_two_networks_stores_neither(ip):
    ip.run(GOOD_CELL)
    before = ip.ns["Net"]
    cell = (
        GOOD_CELL
        + 'network Second {\n  input: (8,)\n  layers:\n    Dense(2)\n  loss: "mse"\n}\n'
        + 'network Third {\n  input: (8,)\n  layers:\n    Dense(-1)\n  loss: "mse"\n}\n'
    )
    err = ip.run_error(cell)
    assert isinstance(err, DSLValidationError)
    assert ip.ns["Net"] is before
    assert "Second" not in ip.ns and "Third" not in ip.ns


@pytest.mark.parametrize(
    "source,shown",
    [
        (net("Dense(2)", loss='HPO(choice("mse", "mae"))'), 'got HPO(choice("mse", "mae"))'),
        (net("Dense(2)", input="(a, b)"), "got (a, b)"),
        (net("Dense((1, x))"), "got (1, x)"),
        (net("Dense((true,))"), "got (true,)"),
        (net('Dense(HPO(choice(1, "a")))'), '(in choice(1, "a"))'),
        (net("Dense(2)", extra="  optimizer: 0.1\n"), "got 0.1"),
    ],
)
def test_messages_show_values_as_the_language_writes_them(source, shown):
    with pytest.raises(DSLValidationError) as info:
        compile_model(source)
    assert shown in info.value.message
    value_text = info.value.message.split(" got ", 1)[1]
    for python_only in ("Ident(", "Span(", "HPO(kind", "True", "'"):
        assert python_only not in value_text
