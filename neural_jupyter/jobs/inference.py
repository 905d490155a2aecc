"""Predictions from a trained network, as training saw its inputs.

One input contract for ``TrainingRun.predict``, ``Endpoint.predict`` and every serving
format: a batch of samples shaped like the network's input, channels last (``(N, 8, 8, 1)``
for ``input: (8, 8, 1)``), as float32 (int64 token ids for an ``Embedding`` first layer).
Accepted as a numpy array, a nested list, a torch tensor or a pandas DataFrame/Series; a
single sample gets a batch axis, and flat rows (a DataFrame of 64 columns for an 8x8x1 input)
are reshaped in channels-last order. The output is what the network's ``predict`` gives:
probabilities when the loss fused the output activation (softmax or sigmoid applied), the
last layer's values otherwise, as a float32 numpy array.
"""

from __future__ import annotations

from math import prod
from typing import Any

import numpy as np

from neural_jupyter.dsl.spec import NetworkSpec
from neural_jupyter.errors import DataError

PREDICT_BATCH = 1024  # samples per forward pass in TrainingRun.predict


def prepare_input(
    input_shape: tuple[int, ...], input_dtype: str, x: Any, name: str = "x"
) -> np.ndarray:
    """``x`` as a batch the network takes (see the module docstring), or a ``DataError``
    naming what was expected."""
    from neural_jupyter.runtime.data import as_array

    array = as_array(x, name)
    shape = tuple(int(n) for n in input_shape)
    if array.ndim >= 1 and array.shape[1:] == shape:
        batch = array
    elif array.shape == shape:
        batch = array[None, ...]
    elif array.ndim == 2 and array.shape[1] == prod(shape):
        batch = array.reshape((len(array), *shape))
    elif array.ndim == 1 and array.shape[0] == prod(shape) and len(shape) > 1:
        batch = array.reshape((1, *shape))
    else:
        dims = ", ".join(str(n) for n in shape)
        raise DataError(
            f"{name} has shape {array.shape}; the network takes (N, {dims}) "
            f"(channels last), one sample of shape ({dims}), or flat rows of {prod(shape)} values",
            hint=f"{name}.reshape(-1, {dims})",
        )
    if input_dtype == "int64":
        if not np.issubdtype(batch.dtype, np.integer) and not np.all(np.mod(batch, 1) == 0):
            raise DataError(f"{name} must hold whole token ids for the Embedding input layer")
        return np.ascontiguousarray(batch, dtype=np.int64)
    if not np.issubdtype(batch.dtype, np.number) and batch.dtype != np.bool_:
        raise DataError(
            f"{name} has dtype {batch.dtype}; the network takes numbers",
            hint=f"{name}.astype('float32')",
        )
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    if not np.isfinite(batch).all():
        raise DataError(f"{name} contains NaN or infinite values")
    return batch


def prepare(spec: NetworkSpec, x: Any, name: str = "x") -> np.ndarray:
    return prepare_input(spec.input_shape, spec.input_dtype, x, name)


def predict_torch(network: Any, batch: np.ndarray) -> np.ndarray:
    """The network's ``predict`` (``forward`` when the output activation is not fused) over
    ``batch`` in chunks, without gradients."""
    import torch

    forward = network.predict if hasattr(network, "predict") else network
    outputs = []
    with torch.no_grad():
        for start in range(0, len(batch), PREDICT_BATCH):
            chunk = torch.from_numpy(batch[start : start + PREDICT_BATCH])
            outputs.append(forward(chunk).detach().cpu().numpy())
    return _joined(outputs, batch)


def predict_keras(model: Any, batch: np.ndarray) -> np.ndarray:
    outputs = []
    for start in range(0, len(batch), PREDICT_BATCH):
        result = model(batch[start : start + PREDICT_BATCH], training=False)
        outputs.append(np.asarray(_to_numpy(result)))
    return _joined(outputs, batch)


def _to_numpy(value: Any) -> Any:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    if hasattr(value, "numpy"):
        return value.numpy()
    return value


def _joined(outputs: list[np.ndarray], batch: np.ndarray) -> np.ndarray:
    if not outputs:
        return np.zeros((0,), dtype=np.float32)
    return np.concatenate(outputs).astype(np.float32, copy=False)
