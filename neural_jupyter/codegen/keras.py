"""NetworkSpec → Keras 3 source (functional API): ``build_model()`` returning a ``keras.Model``.

Keras 3 runs on TensorFlow, JAX or PyTorch; nothing here is backend-specific. The Transformer
encoder block, which Keras lacks, is emitted as a small layer class matching PyTorch's
``nn.TransformerEncoderLayer`` (post-norm, same parameter count).
"""

from __future__ import annotations

from collections.abc import Callable

from neural_jupyter.codegen.shipped import Shipment, import_block
from neural_jupyter.codegen.source import LINE_LENGTH, CodeWriter, header_docstring, literal
from neural_jupyter.dsl.analyzer import RESERVED_NAMES
from neural_jupyter.dsl.custom import check_framework
from neural_jupyter.dsl.spec import LayerSpec, NetworkSpec
from neural_jupyter.errors import CompilationError
from neural_jupyter.gc_pause import paused_gc

# what generated Keras modules import (numpy and ops only when shipped code uses them)
IMPORTS = {
    "keras": "import keras",
    "layers": "from keras import layers",
    "np": "import numpy as np",
    "ops": "from keras import ops",
}

_TRANSFORMER = '''
class TransformerEncoder(layers.Layer):
    """Post-norm Transformer encoder block (self-attention + feed-forward)."""

    def __init__(
        self, width, num_heads, ff_dim, dropout=0.1, activation="relu", **kwargs
    ):
        super().__init__(**kwargs)
        self.attention = layers.MultiHeadAttention(num_heads, width // num_heads)
        self.feed_forward_in = layers.Dense(ff_dim, activation=activation)
        self.feed_forward_out = layers.Dense(width)
        self.norm_1 = layers.LayerNormalization(epsilon=1e-5)
        self.norm_2 = layers.LayerNormalization(epsilon=1e-5)
        self.dropout_1 = layers.Dropout(dropout)
        self.dropout_2 = layers.Dropout(dropout)
        self.dropout_3 = layers.Dropout(dropout)

    def call(self, x, training=None):
        attended = self.attention(x, x, training=training)
        x = self.norm_1(x + self.dropout_1(attended, training=training))
        hidden = self.dropout_2(self.feed_forward_in(x), training=training)
        y = self.dropout_3(self.feed_forward_out(hidden), training=training)
        return self.norm_2(x + y)
'''


class _Generator:
    def __init__(self, spec: NetworkSpec) -> None:
        self.spec = spec
        self.body: list[tuple[str, str, list[str], str] | str] = []
        self.helpers: list[str] = []
        # custom layers' factories and what they need (codegen/shipped.py)
        self.shipment = Shipment(IMPORTS, (RESERVED_NAMES | {spec.name}) - IMPORTS.keys())

    def apply(self, layer: LayerSpec, func: str, args: list[str], source: str = "x") -> None:
        """``x = layers.Kind(args)(x)``; as two statements when that line would be too long."""
        args = [*args, f"name={literal(layer.name)}"]
        one_line = f"x = {func}({', '.join(args)})({source})"
        if len(one_line) + 4 <= LINE_LENGTH:
            self.body.append(one_line)
            return
        self.body.append((f"{layer.name} = ", func, args, ""))
        self.body.append(f"x = {layer.name}({source})")

    def emit(self, layer: LayerSpec) -> None:
        # a built-in kind has an emitter; a custom layer cannot take a built-in name
        emitter = EMITTERS.get(layer.kind) or (_custom if layer.is_custom else None)
        if emitter is None:  # pragma: no cover - guarded by a registry test
            raise CompilationError(f"no Keras code generator for layer {layer.kind}")
        emitter(self, layer)

    def generate(self) -> tuple[list[str], str, Shipment]:
        """(import lines shipped user code needs, the module after its imports, what was
        shipped)."""
        spec = self.spec
        check_framework(spec, "keras")
        dtype = ', dtype="int32"' if spec.input_dtype == "int64" else ""
        self.body.append(
            f'inputs = keras.Input(shape={literal(spec.input_shape)}{dtype}, name="input")'
        )
        self.body.append("x = inputs")
        for layer in spec.layers:
            self.emit(layer)
        shipped = self.shipment.import_lines() + [
            IMPORTS[name] for name in ("np", "ops") if name in self.shipment.used_provided
        ]
        w = CodeWriter()
        for helper in self.helpers + self.shipment.definition_blocks():
            w.lines.extend(helper.strip("\n").split("\n"))
            w.blank(2)
        w.line("def build_model() -> keras.Model:")
        with w.indent():
            for entry in self.body:
                if isinstance(entry, str):
                    w.assignment(entry)
                else:
                    w.statement(*entry)
            w.statement("return ", "keras.Model", ["inputs", "x", f"name={literal(spec.name)}"])
        return shipped, w.text(), self.shipment


def _kw(name: str, value: object) -> str:
    return f"{name}={literal(value)}"


def _activation_kw(value: str | None) -> list[str]:
    return [] if value in (None, "linear") else [_kw("activation", value)]


def _dense(g: _Generator, layer: LayerSpec) -> None:
    p = layer.values
    args = [literal(p["units"]), *_activation_kw(p["activation"])]
    if not p["use_bias"]:
        args.append("use_bias=False")
    g.apply(layer, "layers.Dense", args)


def _conv(g: _Generator, layer: LayerSpec) -> None:
    p = layer.values
    args = [literal(p["filters"]), literal(p["kernel_size"])]
    if any(s != 1 for s in p["strides"]):
        args.append(_kw("strides", p["strides"]))
    if p["padding"] != "valid":
        args.append(_kw("padding", p["padding"]))
    if any(d != 1 for d in p["dilation_rate"]):
        args.append(_kw("dilation_rate", p["dilation_rate"]))
    args += _activation_kw(p["activation"])
    if not p["use_bias"]:
        args.append("use_bias=False")
    g.apply(layer, f"layers.{layer.kind}", args)


def _pool(g: _Generator, layer: LayerSpec) -> None:
    p = layer.values
    args = [literal(p["pool_size"])]
    if p["strides"] is not None and p["strides"] != p["pool_size"]:
        args.append(_kw("strides", p["strides"]))
    if p["padding"] != "valid":
        args.append(_kw("padding", p["padding"]))
    g.apply(layer, f"layers.{layer.kind}", args)


def _plain(g: _Generator, layer: LayerSpec) -> None:
    g.apply(layer, f"layers.{layer.kind}", [])


def _reshape(g: _Generator, layer: LayerSpec) -> None:
    g.apply(layer, "layers.Reshape", [literal(layer.output_shape)])


def _dropout(g: _Generator, layer: LayerSpec) -> None:
    g.apply(layer, "layers.Dropout", [literal(layer.values["rate"])])


def _batch_norm(g: _Generator, layer: LayerSpec) -> None:
    p = layer.values
    g.apply(
        layer,
        "layers.BatchNormalization",
        [_kw("momentum", p["momentum"]), _kw("epsilon", p["epsilon"])],
    )


def _layer_norm(g: _Generator, layer: LayerSpec) -> None:
    g.apply(layer, "layers.LayerNormalization", [_kw("epsilon", layer.values["epsilon"])])


def _activation(g: _Generator, layer: LayerSpec) -> None:
    g.apply(layer, "layers.Activation", [literal(layer.values["activation"])])


def _embedding(g: _Generator, layer: LayerSpec) -> None:
    p = layer.values
    g.apply(layer, "layers.Embedding", [literal(p["input_dim"]), literal(p["output_dim"])])


def _recurrent_args(kind: str, params: dict) -> list[str]:
    args = [literal(params["units"])]
    if kind == "SimpleRNN" and params["activation"] != "tanh":
        args.append(_kw("activation", params["activation"]))
    if params["return_sequences"]:
        args.append("return_sequences=True")
    return args


def _rnn(g: _Generator, layer: LayerSpec) -> None:
    g.apply(layer, f"layers.{layer.kind}", _recurrent_args(layer.kind, layer.values))


def _bidirectional(g: _Generator, layer: LayerSpec) -> None:
    inner = layer.values["layer"]
    wrapped = f"layers.{inner.kind}({', '.join(_recurrent_args(inner.kind, inner.values))})"
    args = [wrapped]
    if layer.values["merge_mode"] != "concat":
        args.append(_kw("merge_mode", layer.values["merge_mode"]))
    g.apply(layer, "layers.Bidirectional", args)


def _transformer(g: _Generator, layer: LayerSpec) -> None:
    p = layer.values
    if _TRANSFORMER not in g.helpers:
        g.helpers.append(_TRANSFORMER)
    args = [
        literal(layer.input_shape[-1]),
        literal(p["num_heads"]),
        literal(p["ff_dim"]),
        _kw("dropout", p["dropout"]),
        _kw("activation", p["activation"]),
    ]
    g.apply(layer, "TransformerEncoder", args)


def _residual(g: _Generator, layer: LayerSpec) -> None:
    skip = f"{layer.name}_input"
    g.body.append(f"{skip} = x")
    for child in layer.children:
        g.emit(child)
    g.apply(layer, "layers.Add", [], source=f"[{skip}, x]")


def _custom(g: _Generator, layer: LayerSpec) -> None:
    """A layer from ``register_layer``: the layer its Keras factory builds."""
    custom = layer.type
    factory = g.shipment.entry(custom.keras_factory, layer.kind, "keras_factory")
    kwargs = custom.factory_kwargs(layer.values, layer.input_shape, "keras")
    g.body.append(
        (f"{layer.name} = ", factory, [f"{k}={literal(v)}" for k, v in kwargs.items()], "")
    )
    g.body.append(f"x = {layer.name}(x)")


EMITTERS: dict[str, Callable[[_Generator, LayerSpec], None]] = {
    "Dense": _dense,
    "Output": _dense,
    "Conv1D": _conv,
    "Conv2D": _conv,
    "Conv3D": _conv,
    "MaxPooling1D": _pool,
    "MaxPooling2D": _pool,
    "MaxPooling3D": _pool,
    "AveragePooling1D": _pool,
    "AveragePooling2D": _pool,
    "GlobalAveragePooling1D": _plain,
    "GlobalAveragePooling2D": _plain,
    "GlobalMaxPooling1D": _plain,
    "GlobalMaxPooling2D": _plain,
    "Flatten": _plain,
    "Reshape": _reshape,
    "Dropout": _dropout,
    "BatchNormalization": _batch_norm,
    "LayerNormalization": _layer_norm,
    "Activation": _activation,
    "Embedding": _embedding,
    "SimpleRNN": _rnn,
    "LSTM": _rnn,
    "GRU": _rnn,
    "Bidirectional": _bidirectional,
    "TransformerEncoder": _transformer,
    "Residual": _residual,
}


@paused_gc
def generate_parts(spec: NetworkSpec) -> tuple[list[str], str, Shipment]:
    """(import lines beyond keras's own, the module after its imports, what was shipped):
    train.py imports keras itself, after choosing the Keras backend."""
    return _Generator(spec).generate()


@paused_gc
def generate(spec: NetworkSpec) -> str:
    """Keras 3 source for ``spec``: ``build_model()`` and any helper layer classes."""
    imports, body, _ = generate_parts(spec)
    block = import_block([IMPORTS["keras"], IMPORTS["layers"], *imports])
    header = header_docstring(spec, "Keras 3") + '"""\n\n'
    return header + "\n".join(block) + "\n\n\n" + body


def shipped_distributions(spec: NetworkSpec) -> set[str]:
    """Installed distributions that custom layers' shipped code imports (requirements)."""
    return generate_parts(spec)[2].distributions
