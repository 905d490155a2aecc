"""The generated Keras 3 ``train.py``: real training runs (Keras on its torch backend, CPU).

Every run is a real ``python train.py`` subprocess on a bundle from ``build_bundle(...,
framework="keras")``. The independent runs start together (module fixture) so the module
takes about as long as its slowest run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from neural_jupyter.codegen.keras_training import from_logits, generate_training_script
from neural_jupyter.compiler import compile_model
from neural_jupyter.runtime.bundle import RunSettings, build_bundle
from neural_jupyter.runtime.data import Dataset, digits, synthetic

pytestmark = pytest.mark.slow

DIGITS = """
network DigitCNN {
  input: (8, 8, 1)
  layers:
    Conv2D(filters=8, kernel_size=3, padding="same", activation="relu")
    MaxPooling2D(2)
    Flatten()
    Dense(32, "relu")
    Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  optimizer: Adam(learning_rate=0.005)
  metrics: ["accuracy"]
  train { epochs: 8 batch_size: 64 validation_split: 0.2 seed: 1 }
}
"""

BINARY = """
network Binary {
  input: (4,)
  layers:
    Dense(16, "relu")
    Output(1, "sigmoid")
  loss: "binary_crossentropy"
  optimizer: SGD(learning_rate=StepDecay(0.2, step_size=1, gamma=0.5), momentum=0.9)
  metrics: ["accuracy"]
  train { epochs: 4 batch_size: 32 validation_split: 0.25 seed: 3 }
}
"""

REGRESSION = """
network Regression {
  input: (3,)
  layers:
    Dense(16, "relu")
    Output(1)
  loss: "mse"
  optimizer: Adam(learning_rate=ExponentialDecay(0.02, 1, 0.99))
  metrics: ["mae"]
  train { epochs: 5 batch_size: 32 validation_split: 0.25 seed: 4 }
}
"""

# linear output + categorical cross-entropy (from_logits=True, one-hot labels); min_delta
# so large that nothing counts as an improvement: a plateau after epoch 1.
PLATEAU = """
network Plateau {
  input: (6,)
  layers:
    Dense(8, "relu")
    Output(3)
  loss: "categorical_crossentropy"
  optimizer: RMSprop(learning_rate=0.001)
  metrics: ["accuracy"]
  train {
    epochs: 20 batch_size: 64 validation_split: 0.25
    early_stopping(patience=1, monitor="val_loss", min_delta=100.0)
  }
}
"""

SMALL = """
network Small {
  input: (5,)
  layers:
    Dense(8, "relu")
    Dropout(0.1)
    Output(2, "softmax")
  loss: "sparse_categorical_crossentropy"
  optimizer: AdamW(learning_rate=0.01)
  metrics: ["accuracy"]
  train { epochs: 2 batch_size: 16 validation_split: 0.2 }
}
"""

SLOW = """
network Slow {
  input: (32,)
  layers:
    Dense(64, "relu") * 2
    Output(1)
  loss: "mse"
  train { epochs: 100000 batch_size: 4 }
}
"""

ENV = {
    **os.environ,
    "KERAS_BACKEND": "torch",
    "OMP_NUM_THREADS": "1",  # runs go in parallel; tiny models gain nothing from threads
    "PYTHONUNBUFFERED": "1",
}


@dataclass
class Result:
    code: int
    events: list[dict]
    stderr: str
    bundle: Path
    seconds: float

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event"] == kind]

    @property
    def sequence(self) -> list[str]:
        """Event kinds in order, consecutive repeats collapsed."""
        kinds: list[str] = []
        for event in self.events:
            if not kinds or kinds[-1] != event["event"]:
                kinds.append(event["event"])
        return kinds

    def status(self) -> dict:
        return json.loads((self.bundle / "output" / "status.json").read_text())


def make_bundle(directory: Path, source: str, dataset=None, **overrides) -> tuple[Path, object]:
    spec = compile_model(source, "keras").spec
    data = dataset(spec) if callable(dataset) else dataset or synthetic(spec)
    settings = RunSettings.from_spec(spec, **overrides)
    bundle = build_bundle(spec, data, directory, settings, job_id=directory.name, framework="keras")
    return bundle.path, spec


def parse(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith('{"event"')]


def train(bundle: Path, *args: str, env: dict | None = None, timeout: float = 120) -> Result:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=bundle,
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(
        done.returncode, parse(done.stdout), done.stderr, bundle, time.monotonic() - started
    )


def train_then_signal(bundle: Path) -> Result:
    """Start a long run, SIGTERM it after its first batch event."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "train.py"],
        cwd=bundle,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith('{"event": "batch"'):
                process.send_signal(signal.SIGTERM)
                break
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return Result(
        process.returncode, parse("".join(lines) + out), err, bundle, time.monotonic() - started
    )


def binary_data(spec) -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 4)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("float32")
    return Dataset(x, y)


def regression_data(spec) -> Dataset:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((600, 3)).astype("float32")
    y = (x @ np.array([1.5, -2.0, 0.5]) + 0.5).astype("float32")
    return Dataset(x, y)


def resume_runs(directory: Path) -> tuple[Result, Result, list[np.ndarray]]:
    bundle, _ = make_bundle(directory, SMALL)
    first = train(bundle)
    with np.load(bundle / "output" / "checkpoint.npz") as checkpoint:
        saved = [checkpoint[f"weight_{i}"] for i in range(4)]
    job = json.loads((bundle / "job.json").read_text())
    job["epochs"] = 4
    (bundle / "job.json").write_text(json.dumps(job))
    second = train(bundle, "--resume")
    return first, second, saved


def check_saved_weights(bundle: Path) -> subprocess.CompletedProcess:
    """Load model.weights.h5 into a fresh build_model() and score the validation split."""
    script = (
        "import json, sys, runpy\n"
        "sys.argv = ['train.py']\n"
        "ns = runpy.run_path('train.py', run_name='check')\n"
        "model = ns['build_model']()\n"
        "model.load_weights('output/model.weights.h5')\n"
        "x, y, xv, yv = ns['load_data'](ns['Path']('.'), json.load(open('job.json')))\n"
        "xv, yv = ns['prepare'](xv, yv)\n"
        "print((model.predict(xv, verbose=0).argmax(-1) == yv).mean())\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script], cwd=bundle, env=ENV, capture_output=True, text=True
    )


def digits_runs(bundle: Path) -> tuple[Result, subprocess.CompletedProcess]:
    return train(bundle), check_saved_weights(bundle)


def failing_run(directory: Path) -> Result:
    bundle, _ = make_bundle(directory, SMALL)
    np.savez(bundle / "data.npz", x_train=np.zeros((8, 5), "float32"))  # no labels
    return train(bundle)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every training run of this module, started together (each is mostly Keras' import)."""
    root = tmp_path_factory.mktemp("keras-runs")
    jobs = {
        "digits": (digits_runs, make_bundle(root / "digits", DIGITS, digits)[0]),
        "binary": (train, make_bundle(root / "binary", BINARY, binary_data)[0]),
        "regression": (train, make_bundle(root / "regression", REGRESSION, regression_data)[0]),
        "plateau": (train, make_bundle(root / "plateau", PLATEAU)[0]),
        "timeout": (train, make_bundle(root / "timeout", SLOW, max_seconds=1.5)[0]),
        "signal": (train_then_signal, make_bundle(root / "signal", SLOW)[0]),
        "resume": (resume_runs, root / "resume"),
        "failure": (failing_run, root / "failure"),
    }
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(func, arg) for name, (func, arg) in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def test_digits_cnn_trains_with_the_full_event_sequence(runs):
    run = runs["digits"][0]
    assert run.code == 0, run.stderr[-3000:]
    assert run.sequence == ["start", "batch", "epoch"] + ["batch", "epoch"] * 7 + [
        "artifact",
        "done",
    ]
    start = run.of("start")[0]
    assert start["framework"] == "keras" and start["backend"] == "torch"
    assert start["keras"].startswith("3.")
    assert (start["epochs"], start["batch_size"], start["steps_per_epoch"]) == (8, 64, 23)
    assert (start["train_samples"], start["val_samples"]) == (1438, 359)
    assert start["params"] == compile_model(DIGITS, "keras").spec.trainable_params("keras")
    assert start["precision"] == "fp32" and start["resumed_from"] is None
    assert start["device"] == "cpu"
    epochs = run.of("epoch")
    assert [e["epoch"] for e in epochs] == list(range(1, 9))
    assert list(epochs[0]["metrics"]) == ["loss", "accuracy", "val_loss", "val_accuracy", "lr"]
    assert all(b["batches"] == 23 and 1 <= b["batch"] <= 23 for b in run.of("batch"))
    assert run.of("batch")[-1]["batch"] == 23  # each epoch's last batch is reported
    final = epochs[-1]["metrics"]
    assert final["val_accuracy"] >= 0.85, final
    assert final["loss"] < epochs[0]["metrics"]["loss"]
    done = run.of("done")[0]
    assert done["epochs_run"] == 8 and done["stopped_early"] is False
    assert done["metrics"] == final and done["best_epoch"] == 8
    assert {a["name"]: a["path"] for a in run.of("artifact")} == {
        "weights": "output/model.weights.h5",
        "history": "output/history.json",
        "checkpoint": "output/checkpoint.npz",
    }
    history = json.loads((run.bundle / "output" / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, 9))
    assert history[-1]["val_accuracy"] == final["val_accuracy"]
    assert run.status() == {"exit_code": 0}
    assert "keras>=3" in (run.bundle / "requirements.txt").read_text()


def test_saved_weights_load_into_the_keras_model(runs):
    """model.weights.h5 holds the trained model: it scores like the last epoch."""
    run, check = runs["digits"]
    assert check.returncode == 0, check.stderr[-3000:]
    accuracy = float(check.stdout.strip().splitlines()[-1])
    assert accuracy == pytest.approx(run.of("epoch")[-1]["metrics"]["val_accuracy"], abs=1e-6)


def test_binary_sigmoid_trains_with_per_epoch_step_decay(runs):
    run = runs["binary"]
    assert run.code == 0, run.stderr[-3000:]
    epochs = run.of("epoch")
    assert len(epochs) == 4
    assert list(epochs[0]["metrics"]) == ["loss", "accuracy", "val_loss", "val_accuracy", "lr"]
    assert epochs[-1]["metrics"]["val_accuracy"] >= 0.85, epochs[-1]
    lrs = [e["metrics"]["lr"] for e in epochs]
    assert lrs == pytest.approx([0.2, 0.1, 0.05, 0.025])


def test_regression_mse_trains_with_per_step_exponential_decay(runs):
    run = runs["regression"]
    assert run.code == 0, run.stderr[-3000:]
    epochs = run.of("epoch")
    assert list(epochs[0]["metrics"]) == ["loss", "mae", "val_loss", "val_mae", "lr"]
    first, last = epochs[0]["metrics"], epochs[-1]["metrics"]
    assert last["val_loss"] < first["val_loss"] / 2
    assert last["val_mae"] < first["val_mae"]
    steps = run.of("start")[0]["steps_per_epoch"]
    assert steps == 15
    for epoch in epochs:
        assert epoch["metrics"]["lr"] == pytest.approx(0.02 * 0.99 ** (steps * epoch["epoch"]))


def test_early_stopping_stops_on_a_plateau(runs):
    run = runs["plateau"]
    assert run.code == 0, run.stderr[-3000:]
    # epoch 1 is the best; epochs 2 and 3 do not improve by min_delta; patience 1
    assert [e["epoch"] for e in run.of("epoch")] == [1, 2, 3]
    done = run.of("done")[0]
    assert done["stopped_early"] is True and done["epochs_run"] == 3
    assert done["best_epoch"] == 1
    assert done["best_metrics"] == run.of("epoch")[0]["metrics"]
    assert "early stopping after epoch 3" in run.stderr
    assert run.status() == {"exit_code": 0}


def test_resume_continues_from_the_checkpoint(runs, tmp_path):
    first, second, saved = runs["resume"]
    assert first.code == 0 and second.code == 0, second.stderr[-3000:]
    assert [e["epoch"] for e in first.of("epoch")] == [1, 2]
    start = second.of("start")[0]
    assert start["resumed_from"] == 2 and start["epochs"] == 4
    assert [e["epoch"] for e in second.of("epoch")] == [3, 4]
    assert "optimizer state not restored" not in second.stderr
    history = json.loads((second.bundle / "output" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[:2] == [{"epoch": e["epoch"], **e["metrics"]} for e in first.of("epoch")]
    assert second.of("done")[0]["epochs_run"] == 4
    # the run went on from the saved weights (not from a fresh initialisation)
    with np.load(second.bundle / "output" / "checkpoint.npz") as checkpoint:
        meta = json.loads(str(checkpoint["meta"]))
        resumed = [checkpoint[f"weight_{i}"] for i in range(4)]
    assert meta["epoch"] == 4 and meta["global_step"] == 4 * first.of("start")[0]["steps_per_epoch"]
    drift = max(float(np.abs(a - b).max()) for a, b in zip(saved, resumed, strict=True))
    assert 0 < drift < 1.0


def test_time_budget_stops_between_batches_with_exit_124(runs):
    run = runs["timeout"]
    assert run.code == 124, run.stderr[-3000:]
    assert run.status() == {"exit_code": 124}
    assert "training stopped: time budget spent" in run.stderr
    assert run.of("start") and run.of("batch")
    assert not run.of("done") and not run.of("error")


def test_sigterm_stops_between_batches_with_exit_143(runs):
    run = runs["signal"]
    assert run.code == 143, run.stderr[-3000:]
    assert run.status() == {"exit_code": 143}
    assert "training stopped: signal SIGTERM" in run.stderr
    assert not run.of("done") and not run.of("error")


def test_missing_backend_is_an_error_event(tmp_path):
    bundle, _ = make_bundle(tmp_path / "b", SMALL)
    missing = next((name for name in ("jax", "tensorflow") if not _installed(name)), None)
    if missing is None:  # pragma: no cover - both installed
        pytest.skip("jax and tensorflow are both installed")
    run = train(bundle, env={**ENV, "KERAS_BACKEND": missing})
    assert run.code == 1
    [error] = run.events
    assert error["event"] == "error" and missing in error["message"]
    assert "pip install" in error["hint"]
    assert run.status() == {"exit_code": 1}


def test_runtime_failure_is_an_error_event(runs):
    run = runs["failure"]
    assert run.code == 1
    error = run.of("error")[0]
    assert error["type"] == "KeyError" and "y_train" in error["message"]
    assert "Traceback" in error["traceback"]
    assert run.status() == {"exit_code": 1}


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# --- generated code, no training -----------------------------------------------------------------
STYLE_CASES = {
    "digits": DIGITS,
    "binary": BINARY,
    "regression": REGRESSION,
    "plateau": PLATEAU,
    "small": SMALL,
    "huber_rmsprop_schedule": """
network Huber {
  input: (10,)
  layers:
    Dense(4)
    Output(2)
  loss: huber(delta=0.5)
  optimizer: RMSprop(learning_rate=ExponentialDecay(0.01, 100, 0.9, staircase=true), rho=0.8)
  metrics: ["mae", "mse"]
}
""",
    "sequence": """
network Seq {
  input: (12,)
  layers:
    Embedding(input_dim=50, output_dim=16)
    TransformerEncoder(num_heads=2, ff_dim=32)
    GlobalAveragePooling1D()
    Output(1)
  loss: "binary_crossentropy"
  optimizer: SGD(learning_rate=0.1, momentum=0.5, nesterov=true, weight_decay=0.0001)
  metrics: ["accuracy"]
}
""",
}


def test_generated_scripts_pass_ruff(tmp_path):
    ruff = shutil.which("ruff")
    if ruff is None:  # pragma: no cover
        pytest.skip("ruff is not installed")
    for name, source in STYLE_CASES.items():
        spec = compile_model(source, "keras").spec
        (tmp_path / f"train_{name}.py").write_text(generate_training_script(spec))
    files = sorted(str(p) for p in tmp_path.glob("train_*.py"))
    check = subprocess.run(
        [ruff, "check", "--isolated", "--select", "E,F,W,I", *files],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout
    formatted = subprocess.run(
        [ruff, "format", "--isolated", "--check", "--diff", *files],
        capture_output=True,
        text=True,
    )
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr


def test_generated_hooks_follow_the_spec():
    sequence = compile_model(STYLE_CASES["sequence"], "keras").spec
    code = generate_training_script(sequence)
    assert from_logits(sequence) is True
    assert "keras.losses.BinaryCrossentropy(from_logits=True)" in code
    assert 'keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)' in code
    assert "nesterov=True" in code and "weight_decay=0.0001" in code
    assert 'INPUT_DTYPE = "int64"' in code and "class TransformerEncoder" in code
    huber = generate_training_script(
        compile_model(STYLE_CASES["huber_rmsprop_schedule"], "keras").spec
    )
    assert "keras.losses.Huber(delta=0.5)" in huber
    assert "staircase=True" in huber and "learning_rate=schedule" in huber
    assert "rho=0.8" in huber
    digits_spec = compile_model(DIGITS, "keras").spec
    assert from_logits(digits_spec) is False
    assert "SparseCategoricalCrossentropy(from_logits=False)" in generate_training_script(
        digits_spec
    )
    plateau = generate_training_script(compile_model(PLATEAU, "keras").spec)
    assert "CategoricalCrossentropy(from_logits=True)" in plateau
    step = generate_training_script(compile_model(BINARY, "keras").spec)
    assert "LearningRateScheduler(step_decay)" in step
    assert "0.2 * 0.5 ** (epoch // 1)" in step


def test_generated_script_imports_no_backend_at_top_level():
    code = generate_training_script(compile_model(DIGITS, "keras").spec)
    top = [line for line in code.splitlines() if line.startswith(("import ", "from "))]
    modules = {line.split()[1].split(".")[0] for line in top}
    assert modules <= {
        "argparse",
        "contextlib",
        "importlib",
        "json",
        "math",
        "os",
        "signal",
        "sys",
        "time",
        "traceback",
        "pathlib",
        "numpy",
        "keras",
    }, modules
    assert code.index("KERAS_BACKEND = choose_backend()") < code.index("import keras")
