"""MLflow ``python_function`` loader module shipped in the ``code/`` folder of the MLflow
models neural-jupyter builds (Azure ML and Databricks Model Serving load it; torch, numpy and
the standard library only). ``_load_pyfunc(path)`` receives the model's ``data`` file, the
serving TorchScript; ``predict`` takes a batch shaped like the network's input (channels last)
as an array, a list or a DataFrame of flat rows, and returns the predictions as an array.
"""

import json

import numpy as np
import torch


class _TorchScriptModel:
    def __init__(self, path):
        extra = {"neural_jupyter.json": ""}
        self.module = torch.jit.load(path, map_location="cpu", _extra_files=extra)
        self.module.eval()
        info = json.loads(extra["neural_jupyter.json"] or "{}")
        self.input_shape = tuple(info.get("input_shape") or ())

    def predict(self, model_input, params=None):
        if hasattr(model_input, "to_numpy"):
            model_input = model_input.to_numpy()
        if isinstance(model_input, dict):
            model_input = next(iter(model_input.values()))
        array = np.ascontiguousarray(model_input, dtype=np.float32)
        if self.input_shape and array.shape[1:] != self.input_shape:
            array = array.reshape((-1, *self.input_shape))  # flat rows, channels last
        batch = torch.from_numpy(array)
        with torch.no_grad():
            return self.module(batch).numpy()


def _load_pyfunc(path):
    return _TorchScriptModel(path)
