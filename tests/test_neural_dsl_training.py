"""What Neural DSL forms mean at training time: an inferred cross-entropy takes class indices
or one-hot labels (decided from the data in the generated script, PyTorch and Keras), a
variable-length input trains, the source's device becomes the job's preferred device,
``search_method`` picks the sweep strategy, and nested search spaces sample and grid."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neural_jupyter import Sweep
from neural_jupyter.compiler import compile_model
from neural_jupyter.errors import ConfigurationError, DataError
from neural_jupyter.jobs.space import SearchSpace
from neural_jupyter.runtime.bundle import RunSettings, build_bundle
from neural_jupyter.runtime.data import Dataset, resolve

NO_LOSS = """network Blobs {
  input: (None, 6)
  layers:
    Dense(16, "relu")
    Output(units=3, activation="softmax")
  metrics: ["accuracy"]
  optimizer: "Adam(learning_rate=0.05)"
  train { epochs: 3  batch_size: 16 }
  execution { device: "cpu" }
}
"""

SEQUENCES = """network Tokens {
  input: (None,)
  layers:
    Embedding(input_dim=20, output_dim=8)
    GRU(8)
    Output(2, "softmax")
  train { epochs: 2  batch_size: 8 }
}
"""

ENV = {**os.environ, "KERAS_BACKEND": "torch", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def blobs(onehot: bool, samples: int = 96) -> Dataset:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=samples)
    centres = np.eye(3, 6) * 4.0
    x = (centres[labels] + rng.standard_normal((samples, 6))).astype("float32")
    y = np.eye(3, dtype="float32")[labels] if onehot else labels
    return Dataset(x, y)


def run_bundle(directory: Path, source: str, data: Dataset, framework: str) -> list[dict]:
    spec = compile_model(source, framework).spec
    settings = RunSettings.from_spec(spec)
    bundle = build_bundle(
        spec, data, directory, settings, job_id=directory.name, framework=framework
    )
    done = subprocess.run(
        [sys.executable, "train.py"],
        cwd=bundle.path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0, done.stderr[-3000:]
    return events


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["pytorch", "keras"])
@pytest.mark.parametrize("onehot", [False, True], ids=["class_indices", "one_hot"])
def test_inferred_cross_entropy_trains_on_either_label_format(tmp_path, framework, onehot):
    events = run_bundle(tmp_path / "job", NO_LOSS, blobs(onehot), framework)
    epochs = [e for e in events if e["event"] == "epoch"]
    assert len(epochs) == 3
    first, last = epochs[0]["metrics"], epochs[-1]["metrics"]
    assert last["loss"] < first["loss"]
    assert last["accuracy"] > 0.8  # separable blobs: really learning, not label noise
    start = next(e for e in events if e["event"] == "start")
    assert start["device"].startswith("cpu")  # the execution block's device


@pytest.mark.slow
def test_variable_length_model_trains(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 20, size=(40, 9))
    y = (x[:, 0] > 9).astype("int64")
    events = run_bundle(tmp_path / "job", SEQUENCES, Dataset(x, y), "pytorch")
    assert [e["event"] for e in events if e["event"] == "epoch"] == ["epoch", "epoch"]


def test_label_checks_follow_the_label_format_in_the_data():
    spec = compile_model(NO_LOSS).spec
    assert spec.loss.labels == "auto"
    resolve(spec, (blobs(False).x_train, blobs(False).y_train))
    resolve(spec, (blobs(True).x_train, blobs(True).y_train))
    with pytest.raises(DataError, match="labels from 0 to 7"):
        resolve(spec, (blobs(False).x_train, np.arange(96) % 8))


def test_variable_length_input_accepts_any_length_but_not_other_widths():
    source = NO_LOSS.replace("(None, 6)", "(None, None, 6)").replace('Dense(16, "relu")', "GRU(16)")
    spec = compile_model(source).spec
    assert spec.input_shape == (None, 6)
    x = np.zeros((4, 11, 6), "float32")
    resolve(spec, (x, np.zeros(4, "int64")))
    with pytest.raises(DataError, match="expects"):
        resolve(spec, (np.zeros((4, 11, 5), "float32"), np.zeros(4, "int64")))


def test_source_device_is_the_jobs_preferred_device():
    spec = compile_model(NO_LOSS).spec
    assert spec.device == "cpu"
    settings = RunSettings.from_spec(spec)
    assert (settings.device, settings.preferred_device) == ("auto", "cpu")
    assert RunSettings.from_spec(spec, device="cuda").device == "cuda"


NESTED = """network Nested {
  input: (4,)
  layers:
    Dense(HPO(choice(HPO(range(8, 32, step=8)), HPO(choice(64, 128)), 256)))
    Dropout(HPO(choice(HPO(range(0.1, 0.3)), 0.5)))
    Output(2, "softmax")
  loss: "sparse_categorical_crossentropy"
}
"""


def test_nested_search_spaces_are_the_union_of_their_options():
    model = compile_model(NESTED)
    space = SearchSpace({"units": model.search_space["dense_1.units"]})
    assert [c["units"] for c in space.grid()] == [256, 8, 16, 24, 32, 64, 128]
    samples = {space.dimensions["units"].sample(random.Random(seed)) for seed in range(200)}
    assert samples == {256, 8, 16, 24, 32, 64, 128}
    drop = SearchSpace({"drop": model.search_space["dropout_1.rate"]}).dimensions["drop"]
    values = [drop.sample(random.Random(seed)) for seed in range(100)]
    assert 0.5 in values and all(v == 0.5 or 0.1 <= v <= 0.3 for v in values)
    with pytest.raises(ConfigurationError, match="grid search needs discrete values"):
        list(SearchSpace(model.search_space).grid())
    assert model.with_hparams(**{"dense_1.units": 24}).spec.layers[0].values["units"] == 24
    assert model.with_hparams(**{"dropout_1.rate": 0.25}).spec.layers[1].values["rate"] == 0.25
    with pytest.raises(ConfigurationError, match="must lie in choice"):
        model.with_hparams(**{"dense_1.units": 40})


def test_nested_search_space_in_optuna(neural_home):
    optuna = pytest.importorskip("optuna")
    from neural_jupyter.jobs.optuna_strategy import _suggest

    model = compile_model(NESTED)
    space = SearchSpace(model.search_space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        values = {name: _suggest(trial, dim) for name, dim in space.dimensions.items()}
        seen.add(values["dense_1.units"])
        assert values["dense_1.units"] in (8, 16, 24, 32, 64, 128, 256)
        study.tell(trial, 0.0)
    assert len(seen) >= 4


def test_search_method_picks_the_sweep_strategy(neural_home):
    source = NESTED.replace(
        '"sparse_categorical_crossentropy"',
        '"sparse_categorical_crossentropy"\n  train { search_method: "random" }',
    )
    sweep = Sweep(source, "synthetic", trials=3)
    assert sweep.strategy == "random"
    assert len(sweep.planned()) == 3
    assert Sweep(source, "synthetic", strategy="random", trials=2).strategy == "random"
    with pytest.raises(ConfigurationError, match="the model's search_method") as info:
        Sweep(source, "synthetic")
    assert "--strategy grid" in info.value.hint
    assert Sweep(NESTED, "synthetic", trials=2, strategy="random").strategy == "random"
