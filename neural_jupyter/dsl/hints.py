"""Errors that teach: for the usual ways a network is wrong, the hint names the fix and the
line to apply it at (``add Flatten() before line 7``).

Pure functions of the layers analyzed so far; the analyzer raises the error at the layer
that cannot work and asks here what to tell the user.
"""

from __future__ import annotations

from typing import Any

from neural_jupyter.dsl import ir
from neural_jupyter.dsl.layers import RECURRENT, Shape
from neural_jupyter.dsl.spec import LayerSpec

_DENSE = ("Dense", "Output")
_SHRINKING = ("MaxPooling", "AveragePooling", "Conv")
_GLOBAL_POOL = {2: "GlobalAveragePooling1D()", 3: "GlobalAveragePooling2D()"}


def _dims(shape: Shape) -> str:
    return "×".join(str(v) for v in shape)


def flatten(layers: list[LayerSpec]) -> str:
    """Where a Flatten belongs when a classification head got a feature map: before the
    first Dense of the trailing run of layers that never left the map."""
    output = layers[-1]
    if None in output.output_shape:
        return pool_over_time(_first_dense_on_map(layers).span.line)
    target = _first_dense_on_map(layers)
    line = target.span.line
    shape = ir.written(target.input_shape)
    rank = len(target.input_shape)
    where = (
        f"{target.kind} at line {line} is applied to each position of the {shape} feature "
        "map separately"
        if rank > 2
        else f"{target.kind} at line {line} is applied to each of the "
        f"{target.input_shape[0]} rows of its {shape} input separately"
    )
    alternative = _GLOBAL_POOL.get(rank)
    also = f"; or {alternative} to average over the positions" if alternative else ""
    return f"add Flatten() before line {line}: {where}{also}"


def _first_dense_on_map(layers: list[LayerSpec]) -> LayerSpec:
    index = len(layers) - 1
    while index > 0 and len(layers[index - 1].output_shape) > 1:
        index -= 1
    for layer in layers[index:]:
        if layer.kind in _DENSE and len(layer.input_shape) > 1:
            return layer
    return layers[-1]


def pool_over_time(line: int) -> str:
    return (
        f"reduce the time axis first: GlobalAveragePooling1D() or GlobalMaxPooling1D() "
        f"before line {line}, or an LSTM/GRU without return_sequences; or give the sequence "
        "length in input:"
    )


def residual(inp: Shape, children: tuple[LayerSpec, ...]) -> str:
    """How to make a Residual block end with the shape it starts with (there is no
    projection on the skip path)."""
    out = children[-1].output_shape
    if len(out) == len(inp) and out[:-1] != inp[:-1]:
        for child in children:
            if child.output_shape[:-1] != child.input_shape[:-1]:
                if child.kind.startswith("Conv"):
                    return (
                        f'use padding="same" (and strides 1) in {child.kind} at line '
                        f"{child.span.line}: it shrinks {_dims(child.input_shape[:-1])} to "
                        f"{_dims(child.output_shape[:-1])}, and the skip connection adds the "
                        "block's input unchanged"
                    )
                return (
                    f"move {child.kind} at line {child.span.line} out of the block: it "
                    f"changes {_dims(child.input_shape[:-1])} to "
                    f'{_dims(child.output_shape[:-1])} (inside, padding="same" keeps sizes)'
                )
    if len(out) == len(inp) and out[-1] != inp[-1]:
        width = inp[-1]
        last = next(c for c in reversed(children) if c.output_shape[-1] == out[-1])
        for child in children:
            if child.output_shape[-1] == out[-1] and child.input_shape[-1] != out[-1]:
                last = child
        what = "channels" if len(inp) > 1 else "features"
        example = (
            f"{last.kind}({width}, ...)"
            if last.kind.startswith("Conv") or last.kind in _DENSE
            else f"a layer with {width} {what}"
        )
        return (
            f"the block must end with {width} {what}, as it starts: {last.kind} at line "
            f"{last.span.line} makes {out[-1]}; write {example} there (the skip path has no "
            'projection); inside, keep padding="same"'
        )
    return 'keep the channel count and use padding="same" inside the block'


def wrong_rank(
    kind: str,
    layer_type: Any,
    inp: Shape,
    node: ir.LayerNode,
    before: list[LayerSpec],
    first: bool,
) -> tuple[str, str | None]:
    """(message, hint) for a layer given input of the wrong number of axes."""
    line = node.span.line
    message = f"{kind} expects input shaped {layer_type.expects}, but gets {inp}"
    if kind == "Embedding" and len(inp) == 2:
        return (
            f"Embedding takes integer token ids, one per time step, but its input "
            f"{ir.written(inp)} already holds a {inp[-1]}-wide vector per step",
            f"remove Embedding (line {line}) to use those vectors as they are, or write "
            f"input: ({inp[0]},) to feed token ids",
        )
    if kind.startswith(("Conv", "MaxPooling", "AveragePooling", "Global")):
        rank = layer_type.rank
        if inp and all(size == 1 for size in inp):
            return (
                f"{kind} needs an image-like input shaped {layer_type.expects}, but gets "
                f"{ir.written(inp)}: a single value, nothing to slide a window over",
                "for images write input: (height, width, channels), e.g. (28, 28, 1); for a "
                "vector of features use Dense instead",
            )
        if len(inp) == rank:
            with_channels = ir.written((*inp, 1))
            fix = (
                f"add the channels axis: input: {with_channels} for one channel"
                if first
                else f"Reshape({with_channels}) before line {line} adds a channels axis"
            )
            return message, fix
        if len(inp) < 2:
            return (
                message,
                "this layer needs spatial input; use Reshape(...) first or Dense instead",
            )
        return message, "pick the layer with the matching dimensionality (1D, 2D or 3D)"
    if kind in RECURRENT or kind in ("Bidirectional", "TransformerEncoder"):
        if len(inp) == 1:
            if kind == "TransformerEncoder":
                steps = inp[0]
                return message, (
                    f"each of the {steps} steps is a single number: add Embedding(vocabulary, "
                    f"64) first for token ids, or Reshape(({steps}, 1)) then Dense(64) before "
                    f"line {line} for numbers"
                )
            return message, "add Embedding(...) first, or Reshape((steps, features))"
        return message, "add Reshape((steps, features)) before it"
    return message, None


def width_one_attention(kind: str, inp: Shape, line: int, heads: Any) -> tuple[str, str]:
    width = 8 * heads if isinstance(heads, int) else 64
    return (
        f"{kind} attends over vectors, but its input {ir.written(inp)} has width 1 (one "
        "number per time step)",
        f"add Dense({width}) before line {line} to give each step {width} features (a "
        f"multiple of num_heads), or Embedding(vocabulary, {width}) first for token ids",
    )


def shape(kind: str, exc: Any, inp: Shape, before: list[LayerSpec]) -> str | None:
    """A better hint for a layer whose window does not fit its input."""
    spatial = inp[:-1]
    if exc.param in ("kernel_size", "pool_size") and spatial and all(s == 1 for s in spatial):
        shrunk = next(
            (b for b in reversed(before) if b.kind.startswith(_SHRINKING)),
            None,
        )
        fix = f"remove {shrunk.kind} at line {shrunk.span.line}, " if shrunk else ""
        return (
            f'its input is {_dims(spatial)}: {fix}use kernel_size=1 / padding="same", or '
            "Flatten() and Dense instead"
        )
    return exc.hint


def embedding_not_first(before: list[LayerSpec]) -> str:
    return "Embedding turns token ids into vectors, so it must come first: move it to the top"
