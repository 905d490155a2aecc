"""Shared by the deploy tests: the digits model trained for real (2 epochs) once per session,
in its own neural-jupyter home, and a sample of its inputs."""

from __future__ import annotations

import os

import pytest

DIGITS = """
network DigitNet {
  input: (8, 8, 1)
  layers:
    Conv2D(filters=8, kernel_size=3, padding="same", activation="relu")
    Flatten()
    Dense(32, "relu")
    Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  optimizer: Adam(learning_rate=0.003)
  metrics: ["accuracy"]
  train { epochs: 2 batch_size: 64 validation_split: 0.2 seed: 1 }
}
"""


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A successful ``TrainingRun`` of ``DIGITS`` (its job store is its own home's)."""
    pytest.importorskip("torch")
    from neural_jupyter import api

    home = tmp_path_factory.mktemp("trained-home")
    before = os.environ.get("NEURAL_JUPYTER_HOME")
    os.environ["NEURAL_JUPYTER_HOME"] = str(home)
    try:
        return api.run(DIGITS, "digits", monitor="none")
    finally:
        if before is None:
            os.environ.pop("NEURAL_JUPYTER_HOME", None)
        else:
            os.environ["NEURAL_JUPYTER_HOME"] = before


@pytest.fixture(scope="session")
def sample(trained):
    from neural_jupyter.runtime.data import digits

    return digits(trained.spec()).x_train[:24]
