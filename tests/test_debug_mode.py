"""Debug mode: train.py emits layer_stats events (activations, gradients, update ratios,
NaN/Inf location, step time, peak memory)."""

from __future__ import annotations

import json
import subprocess
import sys

from neural_jupyter.compiler import compile_model
from neural_jupyter.runtime.bundle import RunSettings, build_bundle
from neural_jupyter.runtime.data import digits

NET = """network Dbg {
  input: (8, 8, 1)
  layers:
    Conv2D(8, 3, padding="same", activation="relu")
    Flatten()
    Dense(32, "relu")
    Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  optimizer: SGD(learning_rate=LR)
  train { epochs: 1 batch_size: 64 }
}"""


def run_bundle(tmp_path, learning_rate: str, debug_every: int = 5) -> list[dict]:
    spec = compile_model(NET.replace("LR", learning_rate)).spec
    settings = RunSettings.from_spec(spec, debug_every=debug_every)
    bundle = build_bundle(spec, digits(spec), tmp_path, settings, job_id="dbg")
    done = subprocess.run(
        [sys.executable, "train.py"], cwd=bundle.path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_layer_stats_every_n_steps(tmp_path):
    events = run_bundle(tmp_path, "0.05", debug_every=5)
    stats = [e for e in events if e["event"] == "layer_stats"]
    steps_per_epoch = next(e for e in events if e["event"] == "start")["steps_per_epoch"]
    assert [e["step"] for e in stats] == list(range(5, steps_per_epoch + 1, 5))
    first = stats[0]
    layers = {layer["name"]: layer for layer in first["layers"]}
    assert set(layers) == {"conv2d_1", "dense_1", "output_1"}
    conv = layers["conv2d_1"]
    assert 0.0 <= conv["dead_fraction"] <= 1.0 and conv["std"] > 0
    assert conv["grad_norm"] > 0 and 0 < conv["update_ratio"] < 1
    assert "dead_fraction" not in layers["output_1"]  # not a ReLU layer
    assert first["step_time"] > 0 and first["peak_memory_bytes"] > 10 * 2**20
    assert first["anomalies"] == []


def test_non_finite_values_name_the_first_layer_and_step(tmp_path):
    events = run_bundle(tmp_path, "10000000000.0", debug_every=1000)
    anomalies = [a for e in events if e["event"] == "layer_stats" for a in e["anomalies"]]
    assert len(anomalies) == 1
    anomaly = anomalies[0]
    assert anomaly["kind"] == "non_finite"
    assert anomaly["layer"] in ("conv2d_1", "dense_1", "output_1", "the loss")
    assert anomaly["step"] >= 1 and f"at step {anomaly['step']}" in anomaly["message"]


def test_debug_script_is_lint_clean(tmp_path):
    import shutil

    if shutil.which("ruff") is None:
        import pytest

        pytest.skip("ruff not installed")
    spec = compile_model(NET.replace("LR", "0.1")).spec
    bundle = build_bundle(spec, digits(spec), tmp_path, RunSettings.from_spec(spec), job_id="lint")
    check = subprocess.run(
        ["ruff", "check", "--isolated", "--select", "E,F,W,I", str(bundle.train_script)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout
