"""Neural DSL forms: how programs written for the ``neural-dsl`` package are read.

Each function takes what the source wrote and returns what this compiler applies, following
what neural-dsl's own parser and generated code do with it (see docs/language.md, "Coming
from Neural DSL"). Where a form cannot carry over, the caller records a note.
"""

from __future__ import annotations

from typing import Any

from neural_jupyter.dsl import ir

# layer names neural-dsl accepts for one of ours
LAYER_ALIASES = {"Transformer": "TransformerEncoder", "ResidualConnection": "Residual"}

CONVOLUTIONS = ("Conv1D", "Conv2D", "Conv3D")

# `search_method:` values → sweep strategies (grid, random, optuna)
SEARCH_METHODS = {
    "grid": "grid",
    "random": "random",
    "bayesian": "optuna",
    "bayes": "optuna",
    "tpe": "optuna",
    "optuna": "optuna",
}

# device names → the job's device setting; None: not a device this compiler can use
_DEVICES = {"cpu": "cpu", "gpu": "cuda", "cuda": "cuda", "mps": "mps", "auto": None}
UNUSABLE_DEVICES = ("tpu", "xla", "npu")

# losses neural-dsl writes whose meaning is "cross-entropy over classes, whatever the
# label format" (its PyTorch code uses nn.CrossEntropyLoss, which takes both)
AUTO_LABEL_LOSSES = ("cross_entropy", "crossentropy", "categorical_cross_entropy_loss")


def canonical_layer(kind: str) -> str:
    return LAYER_ALIASES.get(kind, kind)


def layer_args(kind: str, args: tuple[ir.Arg, ...]) -> tuple[ir.Arg, ...]:
    """Arguments as neural-dsl reads them: for convolutions a third positional argument that
    is an activation name is the activation (``Conv2D(32, (3,3), "relu")``) and ``kernel=``
    is ``kernel_size=``."""
    if kind not in CONVOLUTIONS:
        return args
    positional = 0
    renamed = False
    for arg in args:
        if arg.name is None:
            positional += 1
        elif arg.name == "kernel":
            renamed = True
    if positional < 3 and not renamed:  # the usual case: nothing to read differently
        return args
    out = list(args)
    positional = [index for index, arg in enumerate(out) if arg.name is None]
    if len(positional) >= 3 and _is_activation(out[positional[2]].value):
        arg = out[positional[2]]
        out[positional[2]] = ir.Arg("activation", arg.value, arg.span)
    for index, arg in enumerate(out):
        if arg.name == "kernel":
            out[index] = ir.Arg("kernel_size", arg.value, arg.span)
    return tuple(out)


def _is_activation(value: Any) -> bool:
    if isinstance(value, (str, ir.Ident)):
        return True
    if isinstance(value, ir.HPO) and value.kind == "choice":
        return all(isinstance(v, str) for v in value.candidates())
    return False


def device_name(value: Any) -> tuple[str | None, str]:
    """(the job's device, the name as written) for a device value; the device is None when
    it cannot be used (a TPU, an unknown name)."""
    text = value.name if isinstance(value, ir.Ident) else value
    if not isinstance(text, str):
        return None, ir.written(value)
    written = text
    text = text.strip().lower()
    base, _, index = text.partition(":")
    if base in ("cuda", "gpu") and (not index or index.isdigit()):
        # cuda:0 is what "cuda" selects: one name for one device
        return ("cuda:" + index if index and int(index) else "cuda"), written
    if not index and base in _DEVICES:
        return _DEVICES[base], written
    return None, written


def infer_loss(kind: str, activation: str | None, units: int | None) -> tuple[str, str] | None:
    """(loss name, why) from the last layer when the source has no ``loss:`` section, or
    None when the output does not say which task it is.

    softmax → categorical cross-entropy (class indices or one-hot rows, decided from the
    labels at run time); sigmoid → binary cross-entropy; linear → mean squared error.
    neural-dsl's ``Output`` applies softmax when it names no activation, so a bare
    ``Output(10)`` is a classifier too (with 2 or more units). A last ``Dense(1)`` without an
    activation is a regression value (mean squared error); a wider one without an activation
    could be logits or several regression values, so it is left to the user (an error).
    """
    if activation == "softmax":
        return "categorical_crossentropy", "the output applies softmax"
    if activation == "sigmoid":
        return "binary_crossentropy", "the output applies sigmoid"
    if activation == "linear":
        return "mse", "the output is linear"
    if activation is None and kind != "Output" and units == 1:
        return "mse", "the output is one unit without an activation (a regression value)"
    if activation is None and kind == "Output" and units is not None and units >= 2:
        return (
            "categorical_crossentropy",
            "Output without an activation applies softmax in Neural DSL",
        )
    return None
