"""Generated PyTorch and Keras code is clean Python: ``ruff check`` (E, F, W, I) and
``ruff format --check`` pass on it, long calls included.

All files are checked by one ruff run per command (fast); each case is then its own test.
"""

from __future__ import annotations

import difflib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_layers_codegen import CASES, Case

from neural_jupyter.codegen.source import LINE_LENGTH, format_expression
from neural_jupyter.compiler import compile_model

BACKENDS = ("pytorch", "keras")
# Networks whose generated lines are long: calls must be split as ruff format splits them.
# (A sample may hold at most 2**63 - 1 values, so the big sizes are spread out.)
LONG_CASES: list[Case] = [
    Case(
        "long_conv3d_stride",
        "(100000, 100000, 100, 2)",
        (
            'Conv3D(1234567, (3, 3, 3), strides=(2, 2, 2), padding="same", '
            'activation="relu", use_bias=False)',
        ),
    ),
    Case(
        "long_conv3d_same_asymmetric",
        "(90000, 90000, 900, 3)",
        (
            'Conv3D(1234567, (4, 4, 4), strides=(3, 3, 3), padding="same", use_bias=False)',
            'MaxPooling3D((3, 3, 3), strides=(2, 2, 2), padding="same")',
        ),
    ),
    Case(
        "long_conv3d_dilation",
        "(100000, 100000, 100, 2)",
        (
            'Conv3D(1234567, (3, 3, 3), padding="same", dilation_rate=(2, 2, 2), '
            'activation="hard_sigmoid", use_bias=False)',
        ),
    ),
    Case(
        "long_avgpool_batchnorm",
        "(1000000000, 1000000000, 3)",
        (
            'AveragePooling2D((3, 3), strides=(2, 2), padding="same")',
            "BatchNormalization(momentum=0.123456789, epsilon=0.000123456789)",
        ),
    ),
    Case(
        "long_recurrent",
        "(6, 8000000)",
        (
            'TransformerEncoder(2000000, 16000000, dropout=0.123456789, activation="gelu")',
            'Bidirectional(LSTM(300000000, return_sequences=True), merge_mode="ave")',
            'Bidirectional(GRU(3), merge_mode="mul")',
        ),
    ),
    Case(
        "long_embedding",
        "(6,)",
        (
            "Embedding(100000000, 512000000)",
            'Bidirectional(SimpleRNN(1000000000, activation="relu", return_sequences=True))',
        ),
    ),
    Case(
        "long_reshape",
        "(" + ", ".join(["2"] * 40) + ")",
        ("Reshape((-1, " + ", ".join(["2"] * 30) + "))", "Dense(4)"),
    ),
    Case(
        "long_residual",
        "(100000000, 100000000, 400)",
        (
            'Residual { Conv2D(400, 3, padding="same", use_bias=False) '
            "BatchNormalization(momentum=0.9, epsilon=0.0001) }",
            "GlobalMaxPooling2D()",
            'Output(10, "softmax")',
        ),
        loss="categorical_crossentropy",
    ),
]

ALL_CASES = [*CASES, *LONG_CASES]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args], capture_output=True, text=True, check=False
    )


def _ruff_available() -> bool:
    try:
        return _ruff("--version").returncode == 0
    except OSError:  # pragma: no cover
        return False


pytestmark = pytest.mark.skipif(
    not _ruff_available(),
    reason=f"ruff is not installed for {sys.executable} (pip install ruff) - cannot check style",
)


@pytest.fixture(scope="module")
def ruff_report(tmp_path_factory) -> dict[str, list[str]]:
    """Generate every case for both frameworks, run ruff once, return problems per file."""
    folder = tmp_path_factory.mktemp("generated")
    for case in ALL_CASES:
        model = compile_model(case.source)
        for backend in BACKENDS:
            (folder / f"{case.id}__{backend}.py").write_text(model.for_framework(backend).code)
    problems: dict[str, list[str]] = {path.name: [] for path in folder.iterdir()}
    check = _ruff(
        "check", "--isolated", "--select", "E,F,W,I", "--output-format", "json", str(folder)
    )
    for item in json.loads(check.stdout or "[]"):
        name = Path(item["filename"]).name
        row = item["location"]["row"]
        problems[name].append(f"ruff check: line {row}: {item['code']} {item['message']}")
    assert check.returncode in (0, 1), check.stderr
    # format a copy in place and compare: independent of how ruff words its --check report
    copy = tmp_path_factory.mktemp("formatted")
    for path in folder.iterdir():
        shutil.copy(path, copy / path.name)
    formatted = _ruff("format", "--isolated", str(copy))
    assert formatted.returncode == 0, formatted.stderr
    for path in sorted(folder.iterdir()):
        before, after = path.read_text(), (copy / path.name).read_text()
        if before != after:
            diff = difflib.unified_diff(
                before.splitlines(), after.splitlines(), "generated", "ruff format", lineterm=""
            )
            problems[path.name].append("ruff format would change:\n" + "\n".join(diff))
    return problems


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ALL_CASES, ids=[case.id for case in ALL_CASES])
def test_generated_code_passes_ruff(ruff_report, case, backend):
    problems = ruff_report[f"{case.id}__{backend}.py"]
    assert not problems, "\n".join(problems)


def test_the_ruff_check_can_fail(tmp_path):
    """The harness itself sees a badly formatted file (so a passing run means something)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nx = foo( 1,2 )\n")
    assert _ruff("check", "--isolated", "--select", "E,F,W,I", str(bad)).returncode == 1
    assert _ruff("format", "--isolated", "--check", str(bad)).returncode == 1


def test_long_lines_really_occur():
    """The long cases do exercise the split forms (one indented line, one per line)."""
    code = compile_model(LONG_CASES[0].source).code
    assert any(line.rstrip().endswith("(") for line in code.splitlines())
    assert all(len(line) <= LINE_LENGTH for line in code.splitlines())


@pytest.mark.parametrize(
    "prefix,expression,expected",
    [
        ("x = ", "f(1, 2)", ["x = f(1, 2)"]),
        (
            "self.layer = ",
            "nn.Conv2d(" + ", ".join(["1234567890"] * 7) + ")",
            [
                "self.layer = nn.Conv2d(",
                "    " + ", ".join(["1234567890"] * 7),
                ")",
            ],
        ),
        (
            "y = ",
            "f(" + ", ".join(["a_long_argument_name"] * 5) + ")",
            ["y = f(", *["    a_long_argument_name,"] * 5, ")"],
        ),
        (
            "z = ",
            "g(" + "nn.Conv3d(" + ", ".join(["123456789"] * 7) + "), k=2)",
            [
                "z = g(",
                "    nn.Conv3d(",
                "        " + ", ".join(["123456789"] * 7),
                "    ),",
                "    k=2,",
                ")",
            ],
        ),
        (
            "t = ",
            "(" + ", ".join(["1234567890"] * 8) + ")",
            ["t = (", *["    1234567890,"] * 8, ")"],
        ),
    ],
)
def test_format_expression_follows_ruff(prefix, expression, expected, tmp_path):
    lines = format_expression(expression, "", prefix)
    assert lines == expected
    source = tmp_path / "snippet.py"
    source.write_text("\n".join(lines) + "\n")
    assert _ruff("format", "--isolated", "--check", str(source)).returncode == 0
