"""TorchServe handler shipped in the ``model.mar`` that neural-jupyter builds for Vertex AI's
prebuilt PyTorch prediction containers (torch, numpy and the standard library only).

Vertex AI sends ``{"instances": [...]}``; TorchServe's JSON envelope hands this module-level
``handle`` the flat list of instances and wraps what it returns as ``{"predictions": [...]}``
(one prediction per instance). Without the envelope each request's body arrives instead
(``{"body": {"instances": [...]}}``); both are accepted. Each instance is one sample shaped
like the network's input, channels last.
"""

import json
import os

import numpy as np
import torch

_model = None


def _load(context):
    global _model
    properties = context.system_properties
    model_dir = properties.get("model_dir") or "."
    serialized = context.manifest["model"].get("serializedFile", "model.pt")
    _model = torch.jit.load(os.path.join(model_dir, serialized), map_location="cpu")
    _model.eval()


def _instances(data):
    """The instances of a batch: the envelope's flat list, or request bodies."""
    rows = []
    for item in data:
        if isinstance(item, dict) and ("body" in item or "data" in item):
            body = item.get("body") if item.get("body") is not None else item.get("data")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            rows.extend(body["instances"] if isinstance(body, dict) else body)
        else:
            rows.append(item)
    return rows


def handle(data, context):
    if _model is None:
        _load(context)
    if data is None:  # TorchServe's initialisation call
        return None
    batch = torch.from_numpy(np.asarray(_instances(data), dtype=np.float32))
    with torch.no_grad():
        return _model(batch).numpy().tolist()
