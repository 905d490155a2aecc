"""The layer registry: every layer's parameters, shape rule, parameter count and FLOPs.

Shapes exclude the batch dimension and are channels-last, as in Keras. Parameter counts are
per framework where they differ (PyTorch recurrent layers keep two bias vectors, Keras one),
so the summary always matches the model that is actually built. Code generation for each
framework lives in ``codegen/`` keyed by the same names; a test checks that every layer here
has an emitter there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from neural_jupyter.dsl.params import ACTIVATIONS, Param, Signature

Shape = tuple[int, ...]
Params = Mapping[str, Any]
FRAMEWORKS = ("pytorch", "keras")


class ShapeError(ValueError):
    """The layer cannot take this input; ``param`` names the argument to point at."""

    def __init__(self, message: str, param: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.hint = hint


def no_params(params: Params, inp: Shape, out: Shape, framework: str) -> int:
    return 0


def no_flops(params: Params, inp: Shape, out: Shape) -> int:
    return 0


def _same_shape(params: Params, inp: Shape) -> Shape:
    return inp


def no_notes(params: Params, inp: Shape) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True)
class LayerType(Signature):
    """A layer kind: its signature plus its shape, parameter-count and FLOP rules."""

    category: str = "core"
    infer: Callable[[Params, Shape], Shape] = _same_shape
    count: Callable[[Params, Shape, Shape, str], int] = no_params
    flops: Callable[[Params, Shape, Shape], int] = no_flops
    ranks: tuple[int, ...] | None = None  # accepted input ranks (batch excluded)
    expects: str = ""  # the input layout in words, for errors
    block: bool = False  # written as ``Name { ... }`` (Residual)
    first_only: bool = False  # must take the network input directly (Embedding)
    wraps: bool = False  # takes another layer as its first argument (Bidirectional)
    notes: Callable[[Params, Shape], tuple[str, ...]] = no_notes
    custom: bool = False  # added with register_layer (dsl/custom.py), not built in


prod = math.prod  # of a shape; 1 for () as for a scalar


# --- shared parameter definitions ----------------------------------------------------------
def _activation(default: str | None = None) -> Param:
    return Param(
        "activation",
        "choice",
        default,
        "activation applied to the output",
        choices=ACTIVATIONS,
        optional=True,
    )


_USE_BIAS = Param("use_bias", "bool", True, "add a learned bias")
_PADDING = Param(
    "padding",
    "choice",
    "valid",
    '"valid" (no padding) or "same" (output size = ceil(input / strides))',
    choices=("valid", "same"),
)


def _spatial_out(size: int, kernel: int, stride: int, dilation: int, padding: str) -> int:
    if padding == "same":
        return -(-size // stride)
    effective = dilation * (kernel - 1) + 1
    return (size - effective) // stride + 1 if size >= effective else 0


def _dims(values: tuple[int, ...]) -> str:
    return "×".join(str(v) for v in values)


# --- convolution and pooling ---------------------------------------------------------------
def _conv_infer(params: Params, inp: Shape) -> Shape:
    kernel, strides, dilation = params["kernel_size"], params["strides"], params["dilation_rate"]
    if max(strides) > 1 and max(dilation) > 1:
        raise ShapeError("strides > 1 cannot be combined with dilation_rate > 1", "dilation_rate")
    spatial = inp[:-1]
    padding = params["padding"]
    out = tuple(
        [
            _spatial_out(n, k, s, d, padding)
            for n, k, s, d in zip(spatial, kernel, strides, dilation, strict=True)
        ]
    )
    if min(out) < 1:
        effective = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True))
        raise ShapeError(
            f"kernel {_dims(effective)} is larger than its input {_dims(spatial)}",
            "kernel_size",
            hint='use padding="same", a smaller kernel, or remove a pooling layer before it',
        )
    return (*out, params["filters"])


def _conv_count(params: Params, inp: Shape, out: Shape, framework: str) -> int:
    weights = prod(params["kernel_size"]) * inp[-1] * params["filters"]
    return weights + (params["filters"] if params["use_bias"] else 0)


def _conv_flops(params: Params, inp: Shape, out: Shape) -> int:
    return 2 * prod(params["kernel_size"]) * inp[-1] * prod(out)


def _conv(rank: int, names: str) -> LayerType:
    return LayerType(
        name=f"Conv{rank}D",
        rank=rank,
        category="convolution",
        doc=f"{rank}-D convolution over ({names}, channels) inputs.",
        params=(
            Param("filters", "int", doc="number of output channels", min=1),
            Param("kernel_size", "ints", doc="size of the convolution window", min=1),
            Param("strides", "ints", 1, "step of the window", min=1),
            _PADDING,
            Param("dilation_rate", "ints", 1, "spacing of the kernel taps", min=1),
            _activation(),
            _USE_BIAS,
        ),
        infer=_conv_infer,
        count=_conv_count,
        flops=_conv_flops,
        ranks=(rank + 1,),
        expects=f"({names}, channels)",
    )


def _pool_infer(params: Params, inp: Shape) -> Shape:
    pool = params["pool_size"]
    strides = params["strides"] or pool
    spatial = inp[:-1]
    padding = params["padding"]
    out = tuple(
        [_spatial_out(n, k, s, 1, padding) for n, k, s in zip(spatial, pool, strides, strict=True)]
    )
    if min(out) < 1:
        raise ShapeError(
            f"pool window {_dims(pool)} is larger than its input {_dims(spatial)}",
            "pool_size",
            hint='use padding="same" or a smaller pool_size',
        )
    return (*out, inp[-1])


def _pool_flops(params: Params, inp: Shape, out: Shape) -> int:
    return prod(params["pool_size"]) * prod(out)


def _pool(kind: str, rank: int, names: str) -> LayerType:
    verb = "maximum" if kind == "Max" else "average"
    return LayerType(
        name=f"{kind}Pooling{rank}D",
        rank=rank,
        category="pooling",
        doc=f"{rank}-D {verb} pooling over ({names}, channels) inputs.",
        params=(
            Param("pool_size", "ints", 2, "size of the pooling window", min=1),
            Param(
                "strides",
                "ints",
                None,
                "step of the window (default: pool_size)",
                min=1,
                optional=True,
            ),
            _PADDING,
        ),
        infer=_pool_infer,
        flops=_pool_flops,
        ranks=(rank + 1,),
        expects=f"({names}, channels)",
    )


def _global_pool(kind: str, rank: int, names: str) -> LayerType:
    verb = "maximum" if kind == "Max" else "average"
    return LayerType(
        name=f"Global{kind}Pooling{rank}D",
        rank=rank,
        category="pooling",
        doc=f"{verb.capitalize()} over all {names} positions: ({names}, channels) → (channels,).",
        params=(),
        infer=lambda params, inp: (inp[-1],),
        flops=lambda params, inp, out: prod(inp),
        ranks=(rank + 1,),
        expects=f"({names}, channels)",
    )


# --- core layers ----------------------------------------------------------------------------
def _dense_infer(params: Params, inp: Shape) -> Shape:
    return (*inp[:-1], params["units"])


def _dense_count(params: Params, inp: Shape, out: Shape, framework: str) -> int:
    return inp[-1] * params["units"] + (params["units"] if params["use_bias"] else 0)


def _dense_flops(params: Params, inp: Shape, out: Shape) -> int:
    return 2 * prod(inp) * params["units"]


def _dense_notes(params: Params, inp: Shape) -> tuple[str, ...]:
    if len(inp) > 1:
        return (f"applied to the last axis of {inp}",)
    return ()


def _dense(name: str, doc: str, activation: str | None) -> LayerType:
    return LayerType(
        name=name,
        doc=doc,
        params=(
            Param("units", "int", doc="number of output units", min=1),
            _activation(activation),
            _USE_BIAS,
        ),
        infer=_dense_infer,
        count=_dense_count,
        flops=_dense_flops,
        notes=_dense_notes,
    )


def _flatten_infer(params: Params, inp: Shape) -> Shape:
    return (prod(inp),)


def _reshape_infer(params: Params, inp: Shape) -> Shape:
    target = params["target_shape"]
    total = prod(inp)
    if -1 in target:
        known = prod(tuple(v for v in target if v != -1))
        if total % known:
            raise ShapeError(f"cannot reshape {inp} ({total} values) into {target}", "target_shape")
        return tuple(total // known if v == -1 else v for v in target)
    if prod(target) != total:
        raise ShapeError(
            f"cannot reshape {inp} ({total} values) into {target} ({prod(target)} values)",
            "target_shape",
        )
    return target


def _norm_count(params: Params, inp: Shape, out: Shape, framework: str) -> int:
    return 2 * inp[-1]


def _elementwise_flops(factor: int) -> Callable[[Params, Shape, Shape], int]:
    return lambda params, inp, out: factor * prod(out)


# --- recurrent and attention ----------------------------------------------------------------
_RECURRENT_GATES = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3}


def _rnn_infer(params: Params, inp: Shape) -> Shape:
    units = params["units"]
    return (inp[0], units) if params["return_sequences"] else (units,)


def _rnn_count_for(kind: str) -> Callable[[Params, Shape, Shape, str], int]:
    gates = _RECURRENT_GATES[kind]

    def count(params: Params, inp: Shape, out: Shape, framework: str) -> int:
        units = params["units"]
        # PyTorch keeps separate input and recurrent biases; Keras one (GRU: two in both,
        # since Keras 3 defaults to reset_after=True).
        biases = 2 if (framework == "pytorch" or kind == "GRU") else 1
        return gates * (units * (inp[-1] + units) + biases * units)

    return count


def _rnn_flops_for(kind: str) -> Callable[[Params, Shape, Shape], int]:
    gates = _RECURRENT_GATES[kind]
    return lambda params, inp, out: (
        inp[0] * gates * 2 * params["units"] * (inp[-1] + params["units"])
    )


def _rnn(kind: str, doc: str) -> LayerType:
    params: tuple[Param, ...] = (
        Param("units", "int", doc="size of the hidden state", min=1),
        Param("return_sequences", "bool", False, "return the whole sequence, not the last state"),
    )
    if kind == "SimpleRNN":
        params += (
            Param(
                "activation", "choice", "tanh", "recurrent non-linearity", choices=("tanh", "relu")
            ),
        )
    return LayerType(
        name=kind,
        doc=doc,
        category="recurrent",
        params=params,
        infer=_rnn_infer,
        count=_rnn_count_for(kind),
        flops=_rnn_flops_for(kind),
        ranks=(2,),
        expects="(timesteps, features)",
    )


@dataclass(frozen=True)
class InnerLayer:
    """The recurrent layer a Bidirectional wraps, already bound."""

    kind: str
    params: tuple[tuple[str, Any], ...]

    @property
    def type(self) -> LayerType:
        return LAYERS[self.kind]

    @property
    def values(self) -> dict[str, Any]:
        return dict(self.params)


def _bidirectional_infer(params: Params, inp: Shape) -> Shape:
    inner: InnerLayer = params["layer"]
    out = inner.type.infer(inner.values, inp)
    if params["merge_mode"] == "concat":
        return (*out[:-1], out[-1] * 2)
    return out


def _bidirectional_count(params: Params, inp: Shape, out: Shape, framework: str) -> int:
    inner: InnerLayer = params["layer"]
    single = inner.type.infer(inner.values, inp)
    return 2 * inner.type.count(inner.values, inp, single, framework)


def _bidirectional_flops(params: Params, inp: Shape, out: Shape) -> int:
    inner: InnerLayer = params["layer"]
    single = inner.type.infer(inner.values, inp)
    return 2 * inner.type.flops(inner.values, inp, single)


def _transformer_infer(params: Params, inp: Shape) -> Shape:
    if inp[-1] % params["num_heads"]:
        raise ShapeError(
            f"model width {inp[-1]} is not divisible by num_heads={params['num_heads']}",
            "num_heads",
        )
    return inp


def _transformer_count(params: Params, inp: Shape, out: Shape, framework: str) -> int:
    width, ff = inp[-1], params["ff_dim"]
    attention = 4 * width * width + 4 * width
    feed_forward = 2 * width * ff + ff + width
    norms = 4 * width
    return attention + feed_forward + norms


def _transformer_flops(params: Params, inp: Shape, out: Shape) -> int:
    steps, width, ff = inp[0], inp[-1], params["ff_dim"]
    projections = 2 * steps * width * 4 * width
    attention = 2 * 2 * steps * steps * width
    return projections + attention + 2 * 2 * steps * width * ff


def _embedding_infer(params: Params, inp: Shape) -> Shape:
    return (*inp, params["output_dim"])


def _residual_infer(params: Params, inp: Shape) -> Shape:
    return inp


# --- the registry ---------------------------------------------------------------------------
def _build_registry() -> dict[str, LayerType]:
    layers = [
        _dense("Dense", "Fully connected layer (applied to the last axis).", None),
        _dense(
            "Output",
            "The final fully connected layer. With a softmax/sigmoid activation and a "
            "cross-entropy loss, the generated PyTorch model returns logits and the loss "
            "applies the activation (numerically stable, no double softmax).",
            "linear",
        ),
        _conv(1, "steps"),
        _conv(2, "height, width"),
        _conv(3, "depth, height, width"),
        _pool("Max", 1, "steps"),
        _pool("Max", 2, "height, width"),
        _pool("Max", 3, "depth, height, width"),
        _pool("Average", 1, "steps"),
        _pool("Average", 2, "height, width"),
        _global_pool("Average", 1, "steps"),
        _global_pool("Average", 2, "height, width"),
        _global_pool("Max", 1, "steps"),
        _global_pool("Max", 2, "height, width"),
        LayerType(
            name="Flatten",
            doc="Flattens everything but the batch axis.",
            params=(),
            infer=_flatten_infer,
        ),
        LayerType(
            name="Reshape",
            doc="Reshapes to target_shape (batch axis excluded; one -1 is inferred).",
            params=(Param("target_shape", "shape", doc="the new shape"),),
            infer=_reshape_infer,
        ),
        LayerType(
            name="Dropout",
            category="regularization",
            doc="Randomly zeroes a fraction `rate` of the inputs during training.",
            params=(
                Param(
                    "rate",
                    "float",
                    doc="fraction of inputs to drop",
                    min=0.0,
                    max=1.0,
                    max_exclusive=True,
                ),
            ),
        ),
        LayerType(
            name="BatchNormalization",
            category="normalization",
            doc="Batch normalization over the channel (last) axis; Keras semantics "
            "(momentum is the moving-average decay).",
            params=(
                Param(
                    "momentum", "float", 0.99, "decay of the moving statistics", min=0.0, max=1.0
                ),
                Param(
                    "epsilon", "float", 0.001, "added to the variance", min=0.0, min_exclusive=True
                ),
            ),
            count=_norm_count,
            flops=_elementwise_flops(4),
            ranks=(1, 2, 3, 4),
            expects="(features,) up to (depth, height, width, channels)",
            notes=lambda params, inp: (f"+{2 * inp[-1]} running statistics (not trained)",),
        ),
        LayerType(
            name="LayerNormalization",
            category="normalization",
            doc="Layer normalization over the last axis.",
            params=(
                Param(
                    "epsilon", "float", 0.001, "added to the variance", min=0.0, min_exclusive=True
                ),
            ),
            count=_norm_count,
            flops=_elementwise_flops(5),
        ),
        LayerType(
            name="Activation",
            doc="Applies an activation function.",
            params=(Param("activation", "choice", doc="the function", choices=ACTIVATIONS),),
            flops=_elementwise_flops(1),
        ),
        LayerType(
            name="Embedding",
            category="recurrent",
            doc="Maps integer ids in [0, input_dim) to vectors; must be the first layer "
            "(the network input is then integer ids of shape (timesteps,)).",
            params=(
                Param("input_dim", "int", doc="vocabulary size", min=1),
                Param("output_dim", "int", doc="vector size", min=1),
            ),
            infer=_embedding_infer,
            count=lambda p, i, o, b: p["input_dim"] * p["output_dim"],
            ranks=(1,),
            expects="(timesteps,) of integer ids",
            first_only=True,
        ),
        _rnn("SimpleRNN", "Fully connected recurrent layer."),
        _rnn("LSTM", "Long short-term memory layer."),
        _rnn("GRU", "Gated recurrent unit layer (reset gate after the matrix product)."),
        LayerType(
            name="Bidirectional",
            category="recurrent",
            doc="Runs a recurrent layer forwards and backwards and merges the results.",
            params=(
                Param("layer", "layer", doc="a SimpleRNN, LSTM or GRU call"),
                Param(
                    "merge_mode",
                    "choice",
                    "concat",
                    "how the two directions are combined",
                    choices=("concat", "sum", "mul", "ave"),
                ),
            ),
            infer=_bidirectional_infer,
            count=_bidirectional_count,
            flops=_bidirectional_flops,
            ranks=(2,),
            expects="(timesteps, features)",
            wraps=True,
        ),
        LayerType(
            name="TransformerEncoder",
            category="attention",
            doc="One post-norm Transformer encoder block: multi-head self-attention and a "
            "feed-forward network, each with a residual connection and layer normalization.",
            params=(
                # defaults as in Neural DSL (neural-dsl), which also accepts the name Transformer
                Param("num_heads", "int", 8, "attention heads (must divide the width)", min=1),
                Param("ff_dim", "int", 512, "hidden size of the feed-forward network", min=1),
                Param(
                    "dropout", "float", 0.1, "dropout rate", min=0.0, max=1.0, max_exclusive=True
                ),
                Param(
                    "activation",
                    "choice",
                    "relu",
                    "feed-forward activation",
                    choices=("relu", "gelu"),
                ),
            ),
            infer=_transformer_infer,
            count=_transformer_count,
            flops=_transformer_flops,
            ranks=(2,),
            expects="(timesteps, width)",
        ),
        LayerType(
            name="Residual",
            category="structure",
            doc="`Residual { ... }`: adds the block's input to its output (a skip "
            "connection); the block must keep the shape.",
            params=(),
            infer=_residual_infer,
            flops=_elementwise_flops(1),
            block=True,
        ),
    ]
    return {layer.name: layer for layer in layers}


LAYERS: dict[str, LayerType] = _build_registry()
BUILTIN_LAYERS = frozenset(LAYERS)
RECURRENT = tuple(_RECURRENT_GATES)
_LISTENERS: list[Callable[[str], None]] = []


def on_registry_change(listener: Callable[[str], None]) -> None:
    """Call ``listener(name)`` whenever a layer is added, replaced or removed (custom layers):
    caches of anything derived from the registry (compiled programs) drop what used it."""
    if listener not in _LISTENERS:
        _LISTENERS.append(listener)


def set_layer(layer: LayerType | None, name: str) -> None:
    """Add or replace (``layer``) or remove (None) a non-built-in layer, then tell listeners."""
    if name in BUILTIN_LAYERS:
        raise ValueError(f"{name} is a built-in layer")
    if layer is None:
        LAYERS.pop(name, None)
    else:
        LAYERS[name] = layer
    for listener in _LISTENERS:
        listener(name)
