"""The analyzed network: concrete, validated, with shapes. What code generation consumes."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from neural_jupyter.dsl import ir
from neural_jupyter.dsl.layers import LAYERS, LayerType, Shape, prod

BYTES_PER_VALUE = 4  # float32


def fixed(shape: Shape) -> tuple[int, ...]:
    """``shape`` with a variable length (None) counted as one step."""
    return tuple(1 if size is None else size for size in shape)


@dataclass(frozen=True)
class LayerSpec:
    """One analyzed layer: bound parameters, shapes, parameter counts, FLOPs."""

    kind: str
    name: str  # unique in the network, e.g. "conv2d_1"; used by both code generators
    params: tuple[tuple[str, Any], ...]
    input_shape: Shape
    output_shape: Shape
    param_counts: tuple[tuple[str, int], ...]  # own parameters, per framework
    flops: int
    span: ir.Span
    children: tuple[LayerSpec, ...] = ()  # the block of a Residual
    notes: tuple[str, ...] = ()
    macro: str | None = None
    # the definition this layer was compiled with: a custom layer may be registered again
    # later, and generated code must not pair the new factory with the old shapes
    layer_type: LayerType | None = field(default=None, init=False, compare=False, repr=False)

    def __init__(
        self,
        kind: str,
        name: str,
        params: tuple[tuple[str, Any], ...],
        input_shape: Shape,
        output_shape: Shape,
        param_counts: tuple[tuple[str, int], ...],
        flops: int,
        span: ir.Span,
        children: tuple[LayerSpec, ...] = (),
        notes: tuple[str, ...] = (),
        macro: str | None = None,
    ) -> None:
        # one per layer: see "Fast ``__init__``" at the top of ``dsl/ir.py``
        self.__dict__.update(
            kind=kind,
            name=name,
            params=params,
            input_shape=input_shape,
            output_shape=output_shape,
            param_counts=param_counts,
            flops=flops,
            span=span,
            children=children,
            notes=notes,
            macro=macro,
            layer_type=LAYERS.get(kind),
        )

    @property
    def type(self) -> LayerType:
        return self.layer_type or LAYERS[self.kind]

    @property
    def is_custom(self) -> bool:
        """Registered with ``register_layer`` rather than built in."""
        return self.type.custom

    @property
    def values(self) -> dict[str, Any]:
        return dict(self.params)

    def trainable_params(self, framework: str = "pytorch") -> int:
        own = dict(self.param_counts).get(framework, 0)
        return own + sum(child.trainable_params(framework) for child in self.children)

    def total_flops(self) -> int:
        return self.flops + sum(child.total_flops() for child in self.children)

    def walk(self):
        """This layer and every layer nested in it, in order."""
        yield self
        for child in self.children:
            yield from child.walk()


_LABEL_FORMATS = {
    "sparse_categorical_crossentropy": "sparse",
    "categorical_crossentropy": "onehot",
    "binary_crossentropy": "binary",
}


@dataclass(frozen=True)
class LossSpec:
    """The loss: canonical name, parameters, task kind and where it is written."""

    name: str
    params: tuple[tuple[str, Any], ...]
    kind: str  # multiclass | binary | regression
    span: ir.Span | None
    inferred: bool = False  # no `loss:` section: chosen from the output layer's activation
    auto_labels: bool = False  # class indices or one-hot rows: decided from the labels

    @property
    def labels(self) -> str:
        """The label format the training script expects: sparse (class indices), onehot,
        binary, values (regression), or auto (sparse or onehot, decided at run time)."""
        if self.auto_labels:
            return "auto"
        return _LABEL_FORMATS.get(self.name, "values")

    def describe(self) -> str:
        """The loss as the summary shows it."""
        text = self.name + (
            "(" + ", ".join(f"{k}={v!r}" for k, v in self.params) + ")" if self.params else ""
        )
        if self.auto_labels:
            text += " (class indices or one-hot labels, decided from the data at run time)"
        return text


@dataclass(frozen=True)
class ScheduleSpec:
    """A learning-rate schedule given as the optimizer's learning rate."""

    name: str
    params: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class OptimizerSpec:
    """The optimizer: canonical name, parameters and an optional schedule."""

    name: str
    params: tuple[tuple[str, Any], ...]
    schedule: ScheduleSpec | None = None

    @property
    def values(self) -> dict[str, Any]:
        return dict(self.params)


@dataclass(frozen=True)
class EarlyStoppingSpec:
    """The train block's early_stopping(...) settings."""

    patience: int
    monitor: str
    min_delta: float
    restore_best_weights: bool


@dataclass(frozen=True)
class TrainSpec:
    """The train block's settings, defaults filled in."""

    epochs: int
    batch_size: int
    validation_split: float
    seed: int
    shuffle: bool
    early_stopping: EarlyStoppingSpec | None = None
    strategy: str | None = None  # sweep strategy from Neural DSL's `search_method:`


@dataclass(frozen=True)
class HyperParameter:
    """One search-space node and the value this compile used for it."""

    name: str
    node: ir.HPO
    value: Any
    kind: str  # the parameter type: int, float, choice...

    @property
    def line(self) -> int | None:
        return self.node.span.line if self.node.span else None


@dataclass(frozen=True)
class NetworkSpec:
    """One validated network: what the code generators consume."""

    name: str
    input_shape: Shape
    input_dtype: str  # "float32" or "int64" (token ids for an Embedding first layer)
    layers: tuple[LayerSpec, ...]
    loss: LossSpec
    optimizer: OptimizerSpec
    metrics: tuple[str, ...]
    train: TrainSpec
    hyperparameters: tuple[HyperParameter, ...]
    source: str
    source_name: str
    span: ir.Span
    # what the compiler applied differently from the source, or ignored, and why (Neural
    # DSL forms); each starts with "line N: "
    notes: tuple[str, ...] = ()
    device: str | None = None  # the device the source asks for (execution block, @ "...")

    @property
    def variable_length(self) -> bool:
        """Whether the input has a variable-length (None) sequence axis."""
        return None in self.input_shape

    @property
    def output_shape(self) -> Shape:
        return self.layers[-1].output_shape if self.layers else self.input_shape

    @property
    def output_layer(self) -> LayerSpec:
        return self.layers[-1]

    def trainable_params(self, framework: str = "pytorch") -> int:
        return sum(layer.trainable_params(framework) for layer in self.layers)

    def flops_per_sample(self) -> int:
        return sum(layer.total_flops() for layer in self.layers)

    def activation_bytes_per_sample(self) -> int:
        """Forward activations kept for one sample (input included), float32; per time step
        for a variable-length input."""
        values = prod(fixed(self.input_shape))
        for layer in self.layers:
            for node in layer.walk():
                values += prod(fixed(node.output_shape))
        return values * BYTES_PER_VALUE

    def all_layers(self):
        for layer in self.layers:
            yield from layer.walk()

    @functools.cached_property
    def custom_layers(self) -> tuple[LayerSpec, ...]:
        """The layers made with ``register_layer`` (nested ones too), in order."""
        return tuple(layer for layer in self.all_layers() if layer.is_custom)

    @property
    def search_space(self) -> dict[str, ir.HPO]:
        return {hp.name: hp.node for hp in self.hyperparameters}

    @property
    def hparams(self) -> dict[str, Any]:
        return {hp.name: hp.value for hp in self.hyperparameters}

    @property
    def fused_output_activation(self) -> str | None:
        """The output activation a cross-entropy loss applies itself (PyTorch trains on logits)."""
        if not self.layers or self.output_layer.is_custom:
            return None  # a custom module's output is used as it is (logits for a loss)
        activation = self.output_layer.values.get("activation")
        if self.loss.kind == "multiclass" and activation == "softmax":
            return "softmax"
        if self.loss.kind == "binary" and activation == "sigmoid":
            return "sigmoid"
        return None
