"""NetworkSpec → PyTorch source: one ``nn.Module`` subclass plus ``build_model()``.

Inputs are channels-last like the language; the module permutes to channels-first only where a
convolution, pooling or batch-norm layer needs it (once, for the usual CNN) and back where a
layer works on the last axis. With softmax/sigmoid outputs and a cross-entropy loss, ``forward``
returns logits and ``predict`` applies the activation, so training never double-applies it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from neural_jupyter.codegen.shipped import Shipment, import_block
from neural_jupyter.codegen.source import LINE_LENGTH, CodeWriter, header_docstring, literal
from neural_jupyter.dsl.analyzer import RESERVED_NAMES
from neural_jupyter.dsl.custom import check_framework
from neural_jupyter.dsl.spec import LayerSpec, NetworkSpec
from neural_jupyter.errors import CompilationError
from neural_jupyter.gc_pause import paused_gc

# what generated PyTorch modules import (F only when used; numpy only in train.py, or when
# code shipped with a custom layer uses it)
IMPORTS = {
    "torch": "import torch",
    "F": "import torch.nn.functional as F",
    "nn": "from torch import nn",
    "np": "import numpy as np",
}

_ACTIVATIONS = {
    "relu": "torch.relu({x})",
    "sigmoid": "torch.sigmoid({x})",
    "tanh": "torch.tanh({x})",
    "softmax": "torch.softmax({x}, dim={dim})",
    "log_softmax": "torch.log_softmax({x}, dim={dim})",
    "elu": "F.elu({x})",
    "selu": "F.selu({x})",
    "gelu": "F.gelu({x})",
    "silu": "F.silu({x})",
    "swish": "F.silu({x})",
    "leaky_relu": "F.leaky_relu({x}, 0.2)",
    "softplus": "F.softplus({x})",
    "softsign": "F.softsign({x})",
    "hard_sigmoid": "F.hardsigmoid({x})",
    "mish": "F.mish({x})",
}

# each activation's forward() line, for both channel axes (made once)
_ACTIVATION_STEPS = {
    (name, dim): "x = " + template.format(x="x", dim=dim)
    for name, template in _ACTIVATIONS.items()
    for dim in (1, -1)
}

_SAME_AVG_POOL = '''
class KerasSameAvgPool(nn.Module):
    """Average pooling with Keras "same" padding: padded cells do not count."""

    def __init__(self, pool: nn.Module, padding: tuple[int, ...]) -> None:
        super().__init__()
        self.pool = pool
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        counts = self.pool(F.pad(torch.ones_like(x[:1, :1]), self.padding))
        return self.pool(F.pad(x, self.padding)) / counts
'''


def same_padding(
    size: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
) -> list[tuple[int, int]]:
    """(before, after) padding per spatial axis that reproduces Keras/TF "same"."""
    pads = []
    for n, k, s, d in zip(size, kernel, stride, dilation, strict=True):
        out = -(-n // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def _torch_pad_order(pads: list[tuple[int, int]]) -> tuple[int, ...]:
    """F.pad wants the last axis first: (left, right, top, bottom, front, back)."""
    flat: list[int] = []
    for before, after in reversed(pads):
        flat += [before, after]
    return tuple(flat)


class _Generator:
    def __init__(self, spec: NetworkSpec) -> None:
        self.spec = spec
        self.init: list[tuple[str, str, list[str]]] = []
        self.forward: list[tuple[str, str, list[str], str] | str] = []
        self.helpers: list[str] = []
        self.uses_functional = False
        self.layout = "cl"  # the tensor's current memory layout: channels last / first
        self.rank = len(spec.input_shape)
        # custom layers' factories and what they need (codegen/shipped.py)
        self.shipment = Shipment(IMPORTS, (RESERVED_NAMES | {spec.name}) - IMPORTS.keys())

    # --- building blocks ----------------------------------------------------------------
    def module(self, layer: LayerSpec, func: str, args: list[str]) -> str:
        self.init.append((f"self.{layer.name} = ", func, args))
        return f"self.{layer.name}"

    def step(self, text: str) -> None:
        self.forward.append(text)
        if "F." in text:
            self.uses_functional = True

    def helper(self, source: str) -> None:
        if source not in self.helpers:
            self.helpers.append(source)
        self.uses_functional = True

    def to_layout(self, want: str) -> None:
        if want == "any" or self.rank < 2 or self.layout == want:
            return
        r = self.rank
        if want == "cf":
            order = (0, r, *range(1, r))
            comment = "  # channels last -> channels first"
        else:
            order = (0, *range(2, r + 1), 1)
            comment = "  # channels first -> channels last"
        self.step(f"x = x.permute{literal(order)}{comment}")
        self.layout = want

    def activate(self, activation: str | None) -> None:
        if activation in (None, "linear"):
            return
        dim = 1 if (self.layout == "cf" and self.rank >= 2) else -1
        self.step(_ACTIVATION_STEPS[activation, dim])

    def channel_axis_dims(self) -> tuple[int, ...]:
        """The spatial dimensions of the current tensor (batch axis = 0)."""
        if self.layout == "cf":
            return tuple(range(2, self.rank + 1))
        return tuple(range(1, self.rank))

    # --- layers ---------------------------------------------------------------------------
    def emit(self, layer: LayerSpec, is_output: bool = False) -> None:
        # a built-in kind has an emitter; a custom layer cannot take a built-in name
        emitter = EMITTERS.get(layer.kind) or (_custom if layer.is_custom else None)
        if emitter is None:  # pragma: no cover - guarded by a registry test
            raise CompilationError(f"no PyTorch code generator for layer {layer.kind}")
        emitter(self, layer, is_output)
        self.rank = len(layer.output_shape)
        if self.rank < 2:
            self.layout = "cl"

    def generate(self) -> ModuleParts:
        check_framework(self.spec, "pytorch")
        for index, layer in enumerate(self.spec.layers):
            self.emit(layer, is_output=index == len(self.spec.layers) - 1)
        self.to_layout("cl")
        if "F" in self.shipment.used_provided:
            self.uses_functional = True
        imports = [IMPORTS["torch"], *([IMPORTS["F"]] if self.uses_functional else [])]
        imports += [IMPORTS["nn"], *self.shipment.import_lines()]
        if "np" in self.shipment.used_provided:
            imports.append(IMPORTS["np"])
        return ModuleParts(imports, self.render_body(), self.shipment)

    def render_body(self) -> str:
        """Everything after the imports: helpers, shipped user code, the class, build_model."""
        spec = self.spec
        w = CodeWriter()
        fused = spec.fused_output_activation
        for block in self.helpers + self.shipment.definition_blocks():
            w.lines.extend(block.strip("\n").split("\n"))
            w.blank(2)
        if len(f"class {spec.name}(nn.Module):") <= LINE_LENGTH:
            w.line(f"class {spec.name}(nn.Module):")
        else:  # as ruff format splits it
            w.lines += [f"class {spec.name}(", "    nn.Module", "):"]
        with w.indent():
            w.expression("input_shape = ", literal(spec.input_shape))
            w.line(f"output_activation = {literal(fused)}")
            w.blank()
            w.line("def __init__(self) -> None:")
            with w.indent():
                w.line("super().__init__()")
                for prefix, func, args in self.init:
                    w.statement(prefix, func, args)
            w.blank()
            w.line("def forward(self, x: torch.Tensor) -> torch.Tensor:")
            with w.indent():
                for entry in self.forward:
                    if isinstance(entry, str):
                        w.assignment(entry)
                    else:
                        w.statement(*entry)
                w.line("return x")
            if fused:
                w.blank()
                w.line("@torch.no_grad()")
                w.line("def predict(self, x: torch.Tensor) -> torch.Tensor:")
                with w.indent():
                    w.line(f'"""Probabilities: {fused} applied to forward()\'s logits."""')
                    expr = (
                        "torch.softmax(logits, dim=-1)"
                        if fused == "softmax"
                        else ("torch.sigmoid(logits)")
                    )
                    w.line("logits = self.forward(x)")
                    w.line(f"return {expr}")
        w.blank(2)
        if len(f"def build_model() -> {spec.name}:") <= LINE_LENGTH:
            w.line(f"def build_model() -> {spec.name}:")
        else:  # as ruff format splits it
            w.lines += ["def build_model() -> (", f"    {spec.name}", "):"]
        with w.indent():
            w.line(f"return {spec.name}()")
        return w.text()


# --- emitters, one per layer kind ------------------------------------------------------------
def _dense(g: _Generator, layer: LayerSpec, is_output: bool) -> None:
    p = layer.values
    g.to_layout("cl")
    args = [literal(layer.input_shape[-1]), literal(p["units"])]
    if not p["use_bias"]:
        args.append("bias=False")
    ref = g.module(layer, "nn.Linear", args)
    g.step(f"x = {ref}(x)")
    if not (is_output and g.spec.fused_output_activation):
        g.activate(p["activation"])


def _conv(g: _Generator, layer: LayerSpec, is_output: bool) -> None:
    p = layer.values
    n = layer.type.rank
    g.to_layout("cf")
    kernel, strides, dilation = p["kernel_size"], p["strides"], p["dilation_rate"]
    args = [literal(layer.input_shape[-1]), literal(p["filters"]), literal(kernel)]
    unit_strides = max(strides) == 1 == min(strides)
    if not unit_strides:
        args.append(f"stride={literal(strides)}")
    pad_module = None
    if p["padding"] == "same":
        if unit_strides:
            args.append('padding="same"')
        else:
            pads = same_padding(layer.input_shape[:-1], kernel, strides, dilation)
            if all(before == after for before, after in pads):
                args.append(f"padding={literal(tuple(b for b, _ in pads))}")
            else:
                pad_module = f"nn.ZeroPad{n}d({literal(_torch_pad_order(pads))})"
    if not max(dilation) == 1 == min(dilation):
        args.append(f"dilation={literal(dilation)}")
    if not p["use_bias"]:
        args.append("bias=False")
    if pad_module:
        conv = f"nn.Conv{n}d({', '.join(args)})"
        ref = g.module(layer, "nn.Sequential", [pad_module, conv])
    else:
        ref = g.module(layer, f"nn.Conv{n}d", args)
    g.step(f"x = {ref}(x)")
    g.activate(p["activation"])


def _pool(g: _Generator, layer: LayerSpec, is_output: bool) -> None:
    p = layer.values
    n = layer.type.rank
    is_max = layer.kind.startswith("Max")
    g.to_layout("cf")
    pool, strides = p["pool_size"], p["strides"] or p["pool_size"]
    args = [literal(pool)]
    if strides != pool:
        args.append(f"stride={literal(strides)}")
    func = f"nn.{'Max' if is_max else 'Avg'}Pool{n}d"
    pads = (
        same_padding(layer.input_shape[:-1], pool, strides, (1,) * n)
        if p["padding"] == "same"
        else []
    )
    if not any(before or after for before, after in pads):
        ref = g.module(layer, func, args)
    elif is_max:
        pad = f'nn.ConstantPad{n}d({literal(_torch_pad_order(pads))}, float("-inf"))'
        ref = g.module(layer, "nn.Sequential", [pad, f"{func}({', '.join(args)})"])
    else:
        g.helper(_SAME_AVG_POOL)
        ref = g.module(
            layer,
            "KerasSameAvgPool",
            [f"{func}({', '.join(args)})", literal(_torch_pad_order(pads))],
        )
    g.step(f"x = {ref}(x)")


def _global_pool(g: _Generator, layer: LayerSpec, is_output: bool) -> None:
    dims = g.channel_axis_dims()
    reduce = "mean" if "Average" in layer.kind else "amax"
    dim = literal(dims) if len(dims) > 1 else literal(dims[0])
    g.step(f"x = x.{reduce}(dim={dim})")


def _flatten(g: _Generator, layer: LayerSpec, is_output: bool) -> None:
    if len(layer.input_shape) > 1:
        # Flatten in channels-last order, as Keras does, so a later Reshape or Dense sees
        # the values where the language says they are.
        g.to_layout("cl")
        g.step("x = torch.flatten(x, 1)")


def _reshape(g: _Generator, layer: LayerSpec, is_output: bool) -> None:
    g.to_layout("cl")
    shape = ", ".join(str(v) for v in layer.output_shape)
    g.step(f"x = x.reshape(x.shape[0], {shape})")


def _dropout(g: _Generator, layer: LayerSpec, is_output: bool) -> None:
    ref = g.module(layer, "nn.Dropout", [literal(layer.values["rate"])])
    g.step(f"x = {ref}(x)")


def _batch_norm(g: _Generator, layer: LayerSpec, is_output: bool) -> None:
    p = layer.values
    rank = len(layer.input_shape)
    g.to_layout("cf")
    dims = {1: 1, 2: 1, 3: 2, 4: 3}[rank]
    # Keras momentum is the decay of the running average; PyTorch's is the update weight.
    momentum = float(f"{1.0 - p['momentum']:.12g}")
    args = [
        literal(layer.input_shape[-1]),
        f"eps={literal(p['epsilon'])}",
        f"momentum={literal(momentum)}",
    ]
    ref = g.module(layer, f"nn.BatchNorm{dims}d", args)
    g.step(f"x = {ref}(x)")


def _layer_norm(g: _Generator, layer: LayerSpec, is_output: bool) -> None:
    g.to_layout("cl")
    args = [literal(layer.input_shape[-1]), f"eps={literal(layer.values['epsilon'])}"]
    ref = g.module(layer, "nn.LayerNorm", args)
    g.step(f"x = {ref}(x)")


def _activation(g: _Generator, layer: LayerSpec, is_output: bool) -> None:
    activation = layer.values["activation"]
    if is_output and g.spec.fused_output_activation == activation:
        return
    g.activate(activation)


def _embedding(g: _Generator, layer: LayerSpec, is_output: bool) -> None:
    p = layer.values
    ref = g.module(layer, "nn.Embedding", [literal(p["input_dim"]), literal(p["output_dim"])])
    g.step(f"x = {ref}(x.long())")


_RNN_CLASSES = {"SimpleRNN": "nn.RNN", "LSTM": "nn.LSTM", "GRU": "nn.GRU"}


def _recurrent_call(
    g: _Generator,
    layer: LayerSpec,
    kind: str,
    params: dict,
    bidirectional: bool,
    merge_mode: str = "concat",
) -> None:
    g.to_layout("cl")
    units = params["units"]
    args = [literal(layer.input_shape[-1]), literal(units), "batch_first=True"]
    if kind == "SimpleRNN" and params["activation"] != "tanh":
        args.append(f"nonlinearity={literal(params['activation'])}")
    if bidirectional:
        args.append("bidirectional=True")
    ref = g.module(layer, _RNN_CLASSES[kind], args)
    if params["return_sequences"]:
        g.step(f"x, _ = {ref}(x)")
        if bidirectional and merge_mode != "concat":
            g.step(f"forward, backward = x[..., :{units}], x[..., {units}:]")
            g.step("x = " + _MERGE[merge_mode])
        return
    state = "(h, _)" if kind == "LSTM" else "h"
    g.step(f"_, {state} = {ref}(x)")
    if not bidirectional:
        g.step("x = h[-1]")
    elif merge_mode == "concat":
        g.step("x = torch.cat((h[-2], h[-1]), dim=-1)")
    else:
        g.step("forward, backward = h[-2], h[-1]")
        g.step("x = " + _MERGE[merge_mode])


_MERGE = {
    "sum": "forward + backward",
    "mul": "forward * backward",
    "ave": "(forward + backward) / 2",
}


def _rnn(g: _Generator, layer: LayerSpec, is_output: bool) -> None:
    _recurrent_call(g, layer, layer.kind, layer.values, bidirectional=False)


def _bidirectional(g: _Generator, layer: LayerSpec, is_output: bool) -> None:
    inner = layer.values["layer"]
    _recurrent_call(
        g,
        layer,
        inner.kind,
        inner.values,
        bidirectional=True,
        merge_mode=layer.values["merge_mode"],
    )


def _transformer(g: _Generator, layer: LayerSpec, is_output: bool) -> None:
    p = layer.values
    g.to_layout("cl")
    args = [
        f"d_model={literal(layer.input_shape[-1])}",
        f"nhead={literal(p['num_heads'])}",
        f"dim_feedforward={literal(p['ff_dim'])}",
        f"dropout={literal(p['dropout'])}",
        f"activation={literal(p['activation'])}",
        "batch_first=True",
    ]
    ref = g.module(layer, "nn.TransformerEncoderLayer", args)
    g.step(f"x = {ref}(x)")


def _residual(g: _Generator, layer: LayerSpec, is_output: bool) -> None:
    entry_layout = g.layout
    skip = f"{layer.name}_input"
    g.step(f"{skip} = x")
    for child in layer.children:
        g.emit(child)
    g.rank = len(layer.output_shape)
    g.to_layout(entry_layout)
    g.step(f"x = x + {skip}")


def _custom(g: _Generator, layer: LayerSpec, is_output: bool) -> None:
    """A layer from ``register_layer``: its factory's module, on channels-last input."""
    custom = layer.type
    g.to_layout("cl")
    factory = g.shipment.entry(custom.factory, layer.kind, "factory")
    kwargs = custom.factory_kwargs(layer.values, layer.input_shape, "pytorch")
    ref = g.module(layer, factory, [f"{key}={literal(value)}" for key, value in kwargs.items()])
    g.step(f"x = {ref}(x)")


EMITTERS: dict[str, Callable[[_Generator, LayerSpec, bool], None]] = {
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
    "GlobalAveragePooling1D": _global_pool,
    "GlobalAveragePooling2D": _global_pool,
    "GlobalMaxPooling1D": _global_pool,
    "GlobalMaxPooling2D": _global_pool,
    "Flatten": _flatten,
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


@dataclass(frozen=True)
class ModuleParts:
    """A generated module in two parts, so train.py can merge its own imports in."""

    imports: list[str]  # import statements (ours, then those shipped user code needs)
    body: str  # helpers, shipped user code, the model class and build_model()
    shipment: Shipment


@paused_gc
def generate_parts(spec: NetworkSpec) -> ModuleParts:
    return _Generator(spec).generate()


def shipped_distributions(spec: NetworkSpec) -> set[str]:
    """Installed distributions that custom layers' shipped code imports (requirements)."""
    return generate_parts(spec).shipment.distributions


@paused_gc
def generate(spec: NetworkSpec) -> str:
    """PyTorch source for ``spec``: the module class and ``build_model()``."""
    parts = generate_parts(spec)
    fused = spec.fused_output_activation
    doc = header_docstring(spec, "PyTorch")
    if fused:
        doc += f"forward() returns logits (the loss applies {fused}); predict() applies it.\n"
    return doc + '"""\n\n' + "\n".join(import_block(parts.imports)) + "\n\n\n" + parts.body
