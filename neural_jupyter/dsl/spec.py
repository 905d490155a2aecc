"""The analyzed network: concrete, validated, with shapes. What code generation consumes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neural_jupyter.dsl import ir
from neural_jupyter.dsl.layers import LAYERS, LayerType, Shape, prod

BYTES_PER_VALUE = 4  # float32


@dataclass(frozen=True)
class LayerSpec:
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

    @property
    def type(self) -> LayerType:
        return LAYERS[self.kind]

    @property
    def values(self) -> dict[str, Any]:
        return dict(self.params)

    def trainable_params(self, backend: str = "pytorch") -> int:
        own = dict(self.param_counts).get(backend, 0)
        return own + sum(child.trainable_params(backend) for child in self.children)

    def total_flops(self) -> int:
        return self.flops + sum(child.total_flops() for child in self.children)

    def walk(self):
        """This layer and every layer nested in it, in order."""
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass(frozen=True)
class LossSpec:
    name: str
    params: tuple[tuple[str, Any], ...]
    kind: str  # multiclass | binary | regression
    span: ir.Span | None


@dataclass(frozen=True)
class ScheduleSpec:
    name: str
    params: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    params: tuple[tuple[str, Any], ...]
    schedule: ScheduleSpec | None = None

    @property
    def values(self) -> dict[str, Any]:
        return dict(self.params)


@dataclass(frozen=True)
class EarlyStoppingSpec:
    patience: int
    monitor: str
    min_delta: float
    restore_best_weights: bool


@dataclass(frozen=True)
class TrainSpec:
    epochs: int
    batch_size: int
    validation_split: float
    seed: int
    shuffle: bool
    early_stopping: EarlyStoppingSpec | None = None


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

    @property
    def output_shape(self) -> Shape:
        return self.layers[-1].output_shape if self.layers else self.input_shape

    @property
    def output_layer(self) -> LayerSpec:
        return self.layers[-1]

    def trainable_params(self, backend: str = "pytorch") -> int:
        return sum(layer.trainable_params(backend) for layer in self.layers)

    def flops_per_sample(self) -> int:
        return sum(layer.total_flops() for layer in self.layers)

    def activation_bytes_per_sample(self) -> int:
        """Forward activations kept for one sample (input included), float32."""
        values = prod(self.input_shape)
        for layer in self.layers:
            for node in layer.walk():
                values += prod(node.output_shape)
        return values * BYTES_PER_VALUE

    def all_layers(self):
        for layer in self.layers:
            yield from layer.walk()

    @property
    def search_space(self) -> dict[str, ir.HPO]:
        return {hp.name: hp.node for hp in self.hyperparameters}

    @property
    def hparams(self) -> dict[str, Any]:
        return {hp.name: hp.value for hp in self.hyperparameters}

    @property
    def fused_output_activation(self) -> str | None:
        """The output activation a cross-entropy loss applies itself (PyTorch trains on logits)."""
        activation = self.output_layer.values.get("activation") if self.layers else None
        if self.loss.kind == "multiclass" and activation == "softmax":
            return "softmax"
        if self.loss.kind == "binary" and activation == "sigmoid":
            return "sigmoid"
        return None
