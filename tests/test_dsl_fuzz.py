"""Mutated programs never crash the compiler: each gives a CompiledModel whose code generates
(and is valid Python) for both frameworks, or a DSLError / ConfigurationError - nothing else."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neural_jupyter.compiler import compile_model
from neural_jupyter.dsl.layers import LAYERS
from neural_jupyter.errors import ConfigurationError, DSLError

SEEDS = [
    """
define ConvBlock {
  Conv2D(filters=8, kernel_size=3, padding="same", activation="relu")
  BatchNormalization()
}
network Digits {
  input: (12, 12, 1)
  layers:
    ConvBlock() * 2
    Residual { Conv2D(8, 3, padding="same") BatchNormalization(momentum=0.9) }
    MaxPooling2D(pool_size=2, strides=2, padding="same")
    Dropout(0.25)
    Flatten()
    Dense(HPO(choice(32, 64)), "relu")
    Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  optimizer: Adam(learning_rate=HPO(log_range(0.0001, 0.01)))
  metrics: ["accuracy"]
  train { epochs: 3  batch_size: 16  validation_split: 0.2  early_stopping(patience=2) }
}
""",
    """
// text classifier
network Text {
  input: (20,)
  layers:
    Embedding(input_dim=100, output_dim=16)
    Bidirectional(LSTM(8, return_sequences=true), merge_mode="sum")
    TransformerEncoder(num_heads=2, ff_dim=32, dropout=0.1)
    GRU(4)
    Output(1, "sigmoid")
  loss: "binary_crossentropy"
  optimizer: SGD(learning_rate=StepDecay(0.1, step_size=2), momentum=0.9, nesterov=true)
  train { epochs: 2; seed: 7; shuffle: false }
}
""",
    """
network Signal {
  input: (32, 2)
  layers:
    Conv1D(4, 5, strides=2, padding="same", dilation_rate=1)
    AveragePooling1D(2, padding="same")
    SimpleRNN(6, return_sequences=True, activation="relu")
    GlobalMaxPooling1D()
    Reshape((3, 2))
    LayerNormalization(epsilon=0.001)
    Flatten()
    Dense(3, use_bias=False)
  loss: huber(delta=2.0)
  optimizer: RMSprop(learning_rate=ExponentialDecay(0.01, 100, 0.9))
  metrics: [mae]
}
""",
    """
define Features {
  Conv2D(8, (3,3), "relu")
  MaxPooling2D((2,2))
}
network MNISTClassifier {
  input: (None, 12, 12, 1)
  layers:
    Features
    ResidualConnection() { Conv2D(8, kernel=(3,3), padding="same") }
    Flatten()
    Dense(HPO(choice(HPO(range(16, 64, step=16)), 128)), "relu") @ "cuda:0"
    Dropout(0.5) { Dense(3) }
    Output(10, "softmax")
  optimizer: "Adam(learning_rate=HPO(log_range(1e-4, 1e-2)))"
  batch_size: 32
  train {
    epochs: 2
    search_method: "bayesian"
  }
  execute { device: "cuda" }
}
""",
    """
network MathTransformer {
  input: (NONE, 16)
  layers:
    Transformer(num_heads=2, ff_dim=32) * 2
    TransformerEncoder()
    GlobalAveragePooling1D()
    Dense(8, activation="relu") @ "cpu"
    Output(units=3, activation="softmax")
  loss: "cross_entropy"
  optimizer: SGD(learning_rate="ExponentialDecay(0.1, 1000, 0.96)", momentum=0.9)
  epochs: 3
  execution { device: "gpu" platform: "colab" }
}
""",
    """
network Volume {
  input: (6, 6, 6, 1)
  layers:
    Conv3D(2, (3, 3, 3), padding='same')
    MaxPooling3D(2)
    Reshape((27, 2))
    GlobalAveragePooling1D()
    Activation("softmax")
  loss: "mse"
  optimizer: AdamW(weight_decay=0.01)
}
""",
]

NAMES = [
    *LAYERS,
    "Dens",
    "HPO",
    "choice",
    "range",
    "log_range",
    "units",
    "filters",
    "kernel_size",
    "padding",
    "strides",
    "activation",
    "network",
    "define",
    "input",
    "layers",
    "loss",
    "train",
    "optimizer",
    "metrics",
    "early_stopping",
    "epochs",
    "true",
    "None",
    "NONE",
    "none",
    "null",
    "execution",
    "execute",
    "device",
    "batch_size",
    "search_method",
    "validation_split",
    "Transformer",
    "ResidualConnection",
    "kernel",
    "Features",
    "ConvBlock",
    "Digits",
    "class",
    "import",
    "self",
    "x",
]
PIECES = [
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    ",",
    ";",
    ":",
    "=",
    "*",
    '"',
    "'",
    "#",
    "//",
    "\n",
    " ",
    "-",
    ".",
    "1e9",
    "-1",
    "0",
    '"same"',
    "'relu'",
    "HPO(choice(1, 2))",
    "HPO(range(1, 4))",
    "Residual { Dense(2) }",
    "@",
    '@ "cuda:0"',
    '@ "tpu"',
    "None",
    "(None, ",
    "{ Dense(2) }",
    "HPO(choice(HPO(range(1, 4)), 8))",
    '"Adam(learning_rate=0.1)"',
    "execution { device: 'cpu' }",
    'search_method: "random"',
    "Flatten()",
    "* 2",
    "é",
    "\t",
    "\\",
    "\\N",
    "\\u12",
    "\\x",
    "\x0c",
    "\u2028",
    "\r",
]
TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|-?\d+(?:\.\d+)?(?:e-?\d+)?|\"[^\"\n]*\"|'[^'\n]*'|\S")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")


def _tokens(source: str) -> list[re.Match]:
    return list(TOKEN.finditer(source))


@st.composite
def mutation(draw, source: str) -> str:
    kind = draw(
        st.sampled_from(
            [
                "delete_chars",
                "insert",
                "duplicate",
                "replace_char",
                "delete_token",
                "duplicate_token",
                "swap_tokens",
                "number",
                "rename",
                "swap_lines",
                "nest",
                "repeat",
            ]
        )
    )
    if not source:
        return draw(st.sampled_from(PIECES))
    if kind in ("delete_chars", "duplicate", "insert", "replace_char"):
        start = draw(st.integers(0, len(source) - 1))
        end = draw(st.integers(start, min(len(source), start + 12)))
        if kind == "delete_chars":
            return source[:start] + source[end:]
        if kind == "duplicate":
            return source[:end] + source[start:end] + source[end:]
        piece = draw(st.sampled_from(PIECES) | st.text(min_size=1, max_size=3))
        if kind == "insert":
            return source[:start] + piece + source[start:]
        return source[:start] + piece + source[start + 1 :]
    if kind == "repeat":
        at = draw(st.integers(0, len(source)))
        count = draw(st.sampled_from([0, 1, 3, 10**4, 10**9, 2**63]))
        return f"{source[:at]} * {count}{source[at:]}"
    if kind == "swap_lines":
        lines = source.split("\n")
        i = draw(st.integers(0, len(lines) - 1))
        j = draw(st.integers(0, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines)
    tokens = _tokens(source)
    if kind == "number":
        tokens = [t for t in tokens if NUMBER.fullmatch(t.group())] or tokens
    elif kind == "rename":
        tokens = [t for t in tokens if t.group()[0].isalpha() or t.group()[0] == "_"] or tokens
    if not tokens:
        return source
    token = tokens[draw(st.integers(0, len(tokens) - 1))]
    start, end = token.span()
    if kind == "nest":
        depth = draw(st.sampled_from([2, 70, 1200]))
        opening, closing = draw(st.sampled_from(["()", "[]", ("Residual { ", " }")]))
        return source[:start] + opening * depth + token.group() + closing * depth + source[end:]
    if kind == "delete_token":
        return source[:start] + source[end:]
    if kind == "duplicate_token":
        return source[:end] + " " + token.group() + source[end:]
    if kind == "swap_tokens":
        other = tokens[draw(st.integers(0, len(tokens) - 1))]
        if other.start() < start:
            token, other = other, token
            start, end = token.span()
        if other.start() < end:
            return source
        return (
            source[:start]
            + other.group()
            + source[end : other.start()]
            + token.group()
            + source[other.end() :]
        )
    if kind == "number":
        text = draw(
            st.one_of(
                st.integers(-3, 70).map(str),
                st.sampled_from(["0", "-1", "1000000000", str(2**63), "1" + "0" * 30, "9" * 5000]),
                st.floats(-10, 10, allow_nan=False, allow_infinity=False).map(
                    lambda f: repr(round(f, 3))
                ),
                st.sampled_from(["1e-9", "1e308", "1e999", "-0.0", "+5", "5."]),
            )
        )
        return source[:start] + text + source[end:]
    name = draw(
        st.sampled_from(NAMES) | st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
    )
    return source[:start] + name + source[end:]


@st.composite
def mutated_program(draw) -> str:
    source = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        source = draw(mutation(source))
    return source


def check_never_crashes(source: str) -> None:
    try:
        model = compile_model(source)
    except (DSLError, ConfigurationError) as err:
        assert str(err)
        assert err._render_traceback_()
        if isinstance(err, DSLError) and err.line is not None:
            assert err.line >= 1
        return
    for backend in ("pytorch", "keras"):
        code = model.for_framework(backend).code
        compile(code, f"<{backend}>", "exec")  # valid Python
    assert model.spec.trainable_params("pytorch") >= 0
    assert model.spec.trainable_params("keras") >= 0


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutated_program())
def test_mutated_programs_compile_or_raise_dsl_errors(source):
    check_never_crashes(source)


def test_seeds_compile():
    for seed in SEEDS:
        model = compile_model(seed)
        assert model.code and model.for_framework("keras").code


@given(st.text(max_size=200))
@settings(max_examples=100, deadline=None)
def test_arbitrary_text_compiles_or_raises_dsl_errors(source):
    check_never_crashes(source)


def _net(*layers: str, input: str = "(8,)", extra: str = "", name: str = "Net") -> str:
    body = "".join(f"    {layer}\n" for layer in layers)
    return f'network {name} {{\n  input: {input}\n  layers:\n{body}  loss: "mse"\n{extra}}}\n'


# Inputs that once crashed the compiler (found by the fuzzer or while writing it).
CRASHERS = {
    "broken_escape_N": (_net('Dense(2, "\\N")'), "broken escape sequence"),
    "broken_escape_u": (_net('Dense(2, "rel\\u12")'), "broken escape sequence"),
    "broken_escape_x": (_net('Dense(2, "\\x0")'), "broken escape sequence"),
    "number_with_5000_digits": (_net("Dense(" + "9" * 5000 + ")"), "number is too large"),
    "number_beyond_int64": (_net("Dense(9223372036854775808)"), "number is too large"),
    "input_with_huge_size": (
        _net("Flatten()", "Dense(2)", input="(" + ", ".join(["4611686018427387904"] * 300) + ")"),
        "input has more than 9,223,372,036,854,775,807 values",
    ),
    "deeply_nested_list": (
        _net("Dense(2)", extra="  metrics: " + "[" * 3000 + "]" * 3000 + "\n"),
        "nested more than 64 levels",
    ),
    "deeply_nested_tuple": (
        _net("Dense(2)", input="(" * 1500 + "8," + ")," * 1499 + ")"),
        "nested more than 64 levels",
    ),
    "deeply_nested_residual": (
        _net("Residual { " * 400 + "Dense(8)" + " }" * 400),
        "nested more than 64 levels",
    ),
    "long_macro_chain": (
        "".join(f"define M{i} {{ M{i + 1}() }}\n" for i in range(1500))
        + "define M1500 { Dense(8) }\n"
        + _net("M0()"),
        "macros are nested more than 32 levels",
    ),
    "huge_repetition": (_net("Dense(2) * 9223372036854775807"), "more than 10,000 layers"),
    "repetition_of_a_macro": (
        "define B { Dense(8) * 100 }\ndefine C { B() * 100 }\n" + _net("C() * 100"),
        "more than 10,000 layers",
    ),
    "hpo_as_train_entry": (
        _net("Dense(2)", extra="  train { HPO(choice(1, 2)) HPO(choice(3, 4)) }\n"),
        "a train entry cannot be a hyper-parameter expression",
    ),
    "network_named_like_a_helper_class": (
        _net('AveragePooling2D(2, padding="same")', input="(5, 5, 1)", name="KerasSameAvgPool"),
        "cannot be a network name",
    ),
    "positional_after_keyword": (
        _net('Dense(units=2, "relu")'),
        "a positional argument cannot follow a keyword argument",
    ),
    "schedule_and_learning_rate": (
        _net("Dense(2)", extra="  optimizer: Adam(StepDecay(0.1, 2), learning_rate=0.5)\n"),
        "the learning rate is given twice",
    ),
}


@pytest.mark.parametrize("name", CRASHERS)
def test_former_crashers_raise_dsl_errors(name):
    source, message = CRASHERS[name]
    with pytest.raises(DSLError) as info:
        compile_model(source)
    assert message in info.value.message
    assert info.value.line is not None and info.value.column is not None
    check_never_crashes(source)


@pytest.mark.parametrize("line_break", ["\f", "\r", "\x85", "\u2028", "\x0b"])
def test_error_snippet_is_the_line_the_parser_counts(line_break):
    """Only '\\n' ends a line for the parser; the snippet must agree even with other breaks."""
    source = f"# comment{line_break}with a break\n" + _net("Dens(2)")
    with pytest.raises(DSLError) as info:
        compile_model(source)
    assert (info.value.line, info.value.column) == (5, 5)
    assert info.value.details()[0] == "    " + "    Dens(2)"
