"""Generated code, train.py, spec and summary stay byte-identical to what the compiler wrote
when these fixtures were made (commit 24e0f834, before the compile-speed work of issue 11).

Optimizations of the parser, the analyzer and the code generators must not change a byte of
output. Two kinds of fixture, in ``tests/fixtures/golden_codegen/``:

* full text (a failure shows a diff) for the benchmark programs: PyTorch and Keras modules,
  both train.py scripts for two of them, the spec's repr and the summary;
* ``digests.json``: SHA-256 of the same outputs for every program of the layer, style and
  Neural DSL dialect corpora, plus a 300-layer model.

Regenerate only when an output is meant to change: ``python tests/test_codegen_golden.py
--write`` (then review the diff of the fixtures).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "golden_codegen"
DIGESTS = FIXTURES / "digests.json"

if __package__ in (None, ""):  # run as a script (--write)
    sys.path.insert(0, str(Path(__file__).parent))
    sys.path.insert(0, str(Path(__file__).parent.parent))

from test_codegen_source import many_layers  # noqa: E402
from test_generated_code_style import ALL_CASES  # noqa: E402
from test_neural_dsl_dialect import PROGRAMS  # noqa: E402

from neural_jupyter.codegen import keras_training, pytorch_training  # noqa: E402
from neural_jupyter.compiler import compile_model  # noqa: E402
from neural_jupyter.ui.summary import ModelSummary  # noqa: E402

# programs kept as full text: (name, train.py kept as full text too)
FULL_TEXT = {
    "cnn10": True,
    "mnist_dsl": False,
    "transformer_dsl": True,
    "signal_dsl": False,
    "residual_macro_hpo": False,
}


def activation_cycle(layers: int) -> str:
    """Every layer with an activation (train.py's LAYER_ACTIVATIONS gets one entry each)."""
    cycle = (
        'Dense(32, "relu")',
        'Activation("tanh")',
        'Dense(32, "gelu")',
        'Activation("sigmoid")',
    )
    body = "".join(f"    {cycle[i % 4]}\n" for i in range(layers - 1))
    return (
        "network Scale {\n  input: (16,)\n  layers:\n"
        + body
        + '    Output(10, "softmax")\n  loss: "categorical_crossentropy"\n'
        "  optimizer: Adam(learning_rate=0.001)\n}\n"
    )


def outputs(source: str, hparams: dict | None = None) -> dict[str, Callable[[], str]]:
    """Each output of one program, by name (computed when called)."""
    torch_model = compile_model(source, hparams=hparams)
    keras_model = compile_model(source, "keras", hparams=hparams)
    spec = torch_model.spec
    return {
        "pytorch.py.txt": lambda: torch_model.code,
        "keras.py.txt": lambda: keras_model.code,
        "train_pytorch.py.txt": lambda: pytorch_training.generate_training_script(spec),
        "train_keras.py.txt": lambda: keras_training.generate_training_script(spec),
        "spec.txt": lambda: repr(spec) + "\n",
        "summary.txt": lambda: str(ModelSummary(spec, "pytorch")) + "\n",
        "summary_keras.txt": lambda: str(ModelSummary(keras_model.spec, "keras")) + "\n",
        "summary.html": lambda: ModelSummary(spec, "pytorch")._repr_html_() + "\n",
    }


def corpus() -> dict[str, tuple[str, dict | None]]:
    """Every program whose outputs are digested: id -> (source, hparams)."""
    programs: dict[str, tuple[str, dict | None]] = {}
    for case in ALL_CASES:
        programs[f"layers/{case.id}"] = (case.source, None)
    for program in PROGRAMS:
        programs[f"dialect/{program.id}"] = (program.source, None)
    for path in sorted(FIXTURES.glob("*.neural")):
        programs[f"full/{path.stem}"] = (path.read_text(encoding="utf-8"), None)
    programs["hparams/transformer_dsl"] = (
        (FIXTURES / "transformer_dsl.neural").read_text(encoding="utf-8"),
        {"train.batch_size": 64},
    )
    programs["hparams/residual_macro_hpo"] = (
        (FIXTURES / "residual_macro_hpo.neural").read_text(encoding="utf-8"),
        {"dense_1.units": 128, "dropout_1.rate": 0.3},
    )
    programs["scale/activation_cycle_300"] = (activation_cycle(300), None)
    programs["scale/many_layers_300"] = (many_layers(300), None)
    return programs


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def compute_digests() -> dict[str, dict[str, str]]:
    return {
        key: {name: digest(make()) for name, make in outputs(source, hparams).items()}
        for key, (source, hparams) in corpus().items()
    }


def full_text_files(name: str) -> dict[str, str]:
    source = (FIXTURES / f"{name}.neural").read_text(encoding="utf-8")
    found = {}
    for output, make in outputs(source).items():
        if output.startswith("train_") and not FULL_TEXT[name]:
            continue
        found[f"{name}.{output}"] = make()
    return found


def write() -> None:
    for name in FULL_TEXT:
        for file, text in full_text_files(name).items():
            (FIXTURES / file).write_text(text, encoding="utf-8")
    DIGESTS.write_text(json.dumps(compute_digests(), indent=1, sort_keys=True) + "\n")


@pytest.mark.parametrize("name", list(FULL_TEXT))
def test_full_text_outputs_are_unchanged(name):
    for file, text in full_text_files(name).items():
        expected = (FIXTURES / file).read_text(encoding="utf-8")
        assert text == expected, f"{file} differs from the golden fixture"


def test_every_corpus_output_is_unchanged():
    expected = json.loads(DIGESTS.read_text())
    actual = compute_digests()
    assert sorted(actual) == sorted(expected)
    changed = [
        f"{key}: {name}"
        for key, names in expected.items()
        for name, value in names.items()
        if actual[key][name] != value
    ]
    assert not changed, "outputs differ from the golden digests:\n" + "\n".join(changed)


def test_the_golden_comparison_can_fail():
    """A one-character change in the source changes the digests (the check is not vacuous)."""
    source = (FIXTURES / "cnn10.neural").read_text(encoding="utf-8")
    expected = json.loads(DIGESTS.read_text())["full/cnn10"]
    changed = {
        name: digest(make()) for name, make in outputs(source.replace("0.25", "0.3")).items()
    }
    assert changed["pytorch.py.txt"] != expected["pytorch.py.txt"]
    assert changed["spec.txt"] != expected["spec.txt"]


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_codegen_golden.py --write")
    write()
