"""Parse-level IR → a validated ``NetworkSpec``: macros, binding, hyper-parameters, shapes.

Every problem becomes a ``DSLValidationError`` pointing at the argument, layer or section that
caused it, with a did-you-mean where a name is misspelt.
"""

from __future__ import annotations

import builtins
import dataclasses
import keyword
import re
from collections.abc import Mapping
from typing import Any

from neural_jupyter.dsl import ir
from neural_jupyter.dsl.layers import (
    BACKENDS,
    LAYERS,
    RECURRENT,
    InnerLayer,
    Shape,
    ShapeError,
    prod,
)
from neural_jupyter.dsl.params import Param, ParamError, Signature, bind, describe_value, frozen
from neural_jupyter.dsl.parser import MAX_INT, display_source
from neural_jupyter.dsl.spec import (
    EarlyStoppingSpec,
    HyperParameter,
    LayerSpec,
    LossSpec,
    NetworkSpec,
    OptimizerSpec,
    ScheduleSpec,
    TrainSpec,
)
from neural_jupyter.dsl.suggest import did_you_mean
from neural_jupyter.dsl.training import (
    EARLY_STOPPING,
    LOSS_PARAMS,
    LOSSES,
    METRICS,
    OPTIMIZERS,
    SCHEDULES,
    TRAIN_SETTINGS,
    canonical_loss,
    canonical_metric,
)
from neural_jupyter.errors import ConfigurationError, DSLValidationError

_DEFAULT_OPTIMIZER = ir.Call("Adam", (), ir.Span(0, 0, 0, 0))


def analyze(
    program: ir.Program, network: str | None = None, hparams: Mapping[str, Any] | None = None
) -> NetworkSpec:
    """Validate one network of ``program`` (the only one, or the one named ``network``)."""
    if not program.networks:
        raise DSLValidationError(
            "no network is defined",
            line=1,
            column=1,
            source=display_source(program.source),
            source_name=program.source_name,
            hint="write 'network Name { input: ... layers: ... loss: ... }'",
        )
    if network is None:
        if len(program.networks) > 1:
            names = ", ".join(n.name for n in program.networks)
            raise ConfigurationError(f"the source defines several networks ({names}); name one")
        node = program.networks[0]
    else:
        matches = [n for n in program.networks if n.name == network]
        if not matches:
            names = [n.name for n in program.networks]
            raise ConfigurationError(
                f"no network named '{network}' in the source", hint=did_you_mean(network, names)
            )
        node = matches[0]
    return _Analyzer(program, node, dict(hparams or {})).run()


# module-level names of the generated code (imports, helper classes, functions); a network
# (which becomes a class) must not take one of them
RESERVED_NAMES = frozenset(
    {
        "torch",
        "nn",
        "F",
        "np",
        "keras",
        "layers",
        "ops",
        "build_model",
        "Model",
        "main",
        "self",
        "KerasSameAvgPool",
        "TransformerEncoder",
    }
)
MAX_LAYERS = 10_000  # after macros and repetitions are expanded
MAX_MACRO_DEPTH = 32


def is_safe_identifier(name: str) -> bool:
    """A name that may become a Python class name in generated code without clashing."""
    return (
        name.isidentifier()
        and not keyword.iskeyword(name)
        and not keyword.issoftkeyword(name)
        and name not in RESERVED_NAMES
        and name not in dir(builtins)
        and not name.startswith("_")
    )


def snake_case(kind: str) -> str:
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", kind).lower()


class _Analyzer:
    def __init__(self, program: ir.Program, node: ir.NetworkNode, overrides: dict[str, Any]):
        self.program = program
        self.node = node
        self.overrides = overrides
        self.macros: dict[str, ir.Macro] = {m.name: m for m in program.macros}
        for macro in node.macros:
            if macro.name in self.macros:
                raise self.error(f"macro '{macro.name}' is defined twice", macro.span)
            self.macros[macro.name] = macro
        for name, macro in self.macros.items():
            if name in LAYERS:
                raise self.error(f"macro '{name}' has the name of a built-in layer", macro.span)
        self.hyperparameters: dict[str, HyperParameter] = {}
        self.by_name: dict[str, str] = {}
        self.counters: dict[str, int] = {}
        self.expanded = 0  # layers produced by expand() so far

    # --- helpers ---------------------------------------------------------------------------
    def error(self, message: str, span: ir.Span | None, hint: str | None = None):
        span = span if span and span.line else self.node.span
        return DSLValidationError(
            message,
            line=span.line,
            column=span.column,
            end_column=span.end_column if span.end_line == span.line else None,
            source=display_source(self.program.source),
            source_name=self.program.source_name,
            hint=hint,
        )

    def bind(
        self, signature: Signature, args: tuple[ir.Arg, ...], span: ir.Span, owner: str, what: str
    ) -> dict[str, Any]:
        def resolve(node: ir.HPO, param: Param, arg_span: ir.Span) -> Any:
            return self.resolve(node, param, f"{owner}.{param.name}", signature.rank)

        try:
            return bind(signature, args, resolve, span)
        except ParamError as exc:
            raise self.error(f"{what} {exc.message}", exc.span or span, exc.hint) from None

    def resolve(self, node: ir.HPO, param: Param, default_name: str, rank: int) -> Any:
        """The value a hyper-parameter takes in this compile; validates all its candidates."""
        if node.key in self.hyperparameters:
            return self.hyperparameters[node.key].value
        name = node.name or default_name
        if name in self.by_name:
            raise ParamError(f"uses the hyper-parameter name '{name}' twice", node.span)
        if node.kind != "choice" and param.kind not in ("int", "float"):
            raise ParamError(f"cannot take a numeric {node.kind}(); use choice(...)", node.span)
        if node.kind != "choice" and param.kind == "int":
            bounds = (node.low, node.high, node.step)
            if any(isinstance(v, float) for v in bounds):
                raise ParamError("is an integer, so its range needs integer bounds", node.span)
        for candidate in node.candidates():
            try:
                param.coerce(candidate, rank)
            except ParamError as exc:
                raise ParamError(
                    f"{exc.message} (in {node.describe()})", node.span, exc.hint
                ) from None
        value = node.default()
        if name in self.overrides:
            value = self.overrides.pop(name)
            self._check_override(name, node, param, value, rank)
        param.coerce(value, rank)
        # the value as written (3, not (3, 3) for a kernel size): what an override takes
        self.hyperparameters[node.key] = HyperParameter(name, node, value, param.kind)
        self.by_name[name] = node.key
        return value

    def _check_override(self, name: str, node: ir.HPO, param: Param, value: Any, rank: int):
        if isinstance(value, int) and not -MAX_INT <= value <= MAX_INT:
            raise ConfigurationError(f"hyper-parameter '{name}' is too large")
        try:
            param.coerce(value, rank)
        except ParamError as exc:
            raise ConfigurationError(f"hyper-parameter '{name}' {exc.message}") from None
        if node.kind == "choice" and value not in node.options:
            raise ConfigurationError(
                f"hyper-parameter '{name}' must be one of {node.describe()}, got {value!r}"
            )
        if node.kind != "choice" and not node.low <= value <= node.high:
            raise ConfigurationError(
                f"hyper-parameter '{name}' must lie in {node.describe()}, got {value!r}"
            )

    def next_name(self, kind: str) -> str:
        base = snake_case(kind)
        self.counters[base] = self.counters.get(base, 0) + 1
        return f"{base}_{self.counters[base]}"

    # --- the network -----------------------------------------------------------------------
    def run(self) -> NetworkSpec:
        node = self.node
        if not is_safe_identifier(node.name):
            raise self.error(
                f"'{node.name}' cannot be a network name (it is a Python keyword or a name "
                "the generated code uses)",
                node.span,
                hint=f"pick another name, e.g. {node.name[:1].upper()}{node.name[1:]}Net",
            )
        input_shape = self.input_shape()
        if node.layers is None:
            raise self.error(
                f"network '{node.name}' has no 'layers:' section",
                node.span,
                hint="add e.g. 'layers: Flatten() Output(10, \"softmax\")'",
            )
        layers_nodes = self.expand(node.layers, ())
        if not layers_nodes:
            raise self.error(
                f"network '{node.name}' has no layers",
                node.layers_span or node.span,
                hint="list at least one layer after 'layers:'",
            )
        layers = self.chain(layers_nodes, input_shape, top=True)
        input_dtype = "int64" if layers[0].kind == "Embedding" else "float32"
        loss = self.loss(layers[-1])
        optimizer = self.optimizer()
        metrics = self.metrics(loss)
        train = self.train()
        if self.overrides:
            known = sorted(self.by_name)
            unknown = sorted(self.overrides)[0]
            raise ConfigurationError(
                f"no hyper-parameter named '{unknown}' in network '{node.name}'",
                hint=did_you_mean(unknown, known)
                or (
                    "its hyper-parameters are: " + ", ".join(known)
                    if known
                    else "it has no HPO(...) expressions"
                ),
            )
        return NetworkSpec(
            name=node.name,
            input_shape=input_shape,
            input_dtype=input_dtype,
            layers=tuple(layers),
            loss=loss,
            optimizer=optimizer,
            metrics=metrics,
            train=train,
            hyperparameters=tuple(self.hyperparameters.values()),
            source=self.program.source,
            source_name=self.program.source_name,
            span=node.span,
        )

    def input_shape(self) -> Shape:
        setting = self.node.input
        if setting is None:
            raise self.error(
                f"network '{self.node.name}' has no 'input:' section",
                self.node.span,
                hint="add the shape of one sample without the batch axis, e.g. "
                "'input: (28, 28, 1)'",
            )
        value = setting.value
        if isinstance(value, int) and not isinstance(value, bool):
            value = (value,)
        if (
            not isinstance(value, tuple)
            or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
        ):
            raise self.error(
                f"input must be a tuple of positive integers, got {describe_value(value)}",
                setting.span,
                hint="e.g. 'input: (28, 28, 1)' (channels last, no batch axis)",
            )
        if prod(value) > MAX_INT:
            raise self.error(f"input has more than {MAX_INT:,} values per sample", setting.span)
        return value

    # --- layers ----------------------------------------------------------------------------
    def expand(self, nodes: tuple[ir.LayerNode, ...], stack: tuple[str, ...]) -> list[ir.LayerNode]:
        """Expand macros and repetitions; blocks keep their (expanded) body."""
        out: list[ir.LayerNode] = []
        for node in nodes:
            if node.kind in self.macros:
                if node.args or node.body is not None:
                    raise self.error(
                        f"macro '{node.kind}' takes no arguments; write {node.kind}()",
                        node.span,
                    )
                if node.kind in stack:
                    raise self.error(f"macro '{node.kind}' uses itself", node.span)
                if len(stack) >= MAX_MACRO_DEPTH:
                    raise self.error(
                        f"macros are nested more than {MAX_MACRO_DEPTH} levels deep", node.span
                    )
                body = self.expand(self.macros[node.kind].body, (*stack, node.kind))
                body = [dataclasses.replace(n, macro=n.macro or node.kind) for n in body]
                self.count_expanded(node, _size(body) * (node.repeat - 1))
                out.extend(body * node.repeat)
                continue
            if node.body is not None:
                layer_type = LAYERS.get(node.kind)
                if layer_type is None or not layer_type.block:
                    raise self.error(
                        f"'{node.kind}' is not a block layer",
                        node.span,
                        hint="the only block is 'Residual { ... }'; other layers take parentheses",
                    )
                node = dataclasses.replace(node, body=tuple(self.expand(node.body, stack)))
            self.count_expanded(node, _size([node]) * node.repeat - _size(node.body or ()))
            out.extend([dataclasses.replace(node, repeat=1)] * node.repeat)
        return out

    def count_expanded(self, node: ir.LayerNode, added: int) -> None:
        self.expanded += added
        if self.expanded > MAX_LAYERS:
            raise self.error(
                f"the network expands to more than {MAX_LAYERS:,} layers",
                node.span,
                hint="check the repetition counts ('* n') and the macros used here",
            )

    def chain(self, nodes: list[ir.LayerNode], shape: Shape, top: bool) -> list[LayerSpec]:
        specs = []
        for index, node in enumerate(nodes):
            spec = self.layer(
                node, shape, first=top and index == 0, last=top and index == len(nodes) - 1
            )
            specs.append(spec)
            shape = spec.output_shape
        return specs

    def layer(self, node: ir.LayerNode, inp: Shape, first: bool, last: bool) -> LayerSpec:
        layer_type = LAYERS.get(node.kind)
        if layer_type is None:
            raise self.error(
                f"unknown layer '{node.kind}'",
                node.span,
                hint=did_you_mean(node.kind, [*LAYERS, *self.macros])
                or "see the language reference for the list of layers",
            )
        if layer_type.block and node.body is None:
            raise self.error(f"{node.kind} is written as a block: {node.kind} {{ ... }}", node.span)
        if node.kind == "Output" and not last:
            raise self.error("Output must be the last layer", node.span)
        if layer_type.first_only and not first:
            raise self.error(
                f"{node.kind} must be the first layer (it takes integer ids as input)",
                node.span,
            )
        if layer_type.ranks and len(inp) not in layer_type.ranks:
            raise self.error(
                f"{node.kind} expects input shaped {layer_type.expects}, but gets {inp}",
                node.span,
                hint=_rank_hint(node.kind, inp),
            )
        name = self.next_name(node.kind)
        params = self.bind(layer_type, node.args, node.span, name, node.kind)
        children: tuple[LayerSpec, ...] = ()
        if layer_type.block:
            if not node.body:
                raise self.error(f"{node.kind} block is empty", node.span)
            children = tuple(self.chain(list(node.body), inp, top=False))
            out = children[-1].output_shape
            if out != inp:
                raise self.error(
                    f"{node.kind} block changes the shape from {inp} to {out}; a skip "
                    "connection needs the same shape",
                    node.span,
                    hint='keep the channel count and use padding="same" inside the block',
                )
        if layer_type.wraps:
            params["layer"] = self.inner_layer(params["layer"], name)
        try:
            out = layer_type.infer(params, inp)
        except ShapeError as exc:
            span = _arg_span(node, layer_type, exc.param) if exc.param else node.span
            raise self.error(f"{node.kind} {exc.message}", span, exc.hint) from None
        counts = {backend: layer_type.count(params, inp, out, backend) for backend in BACKENDS}
        return LayerSpec(
            kind=node.kind,
            name=name,
            params=frozen(params),
            input_shape=inp,
            output_shape=out,
            param_counts=frozen(counts),
            flops=layer_type.flops(params, inp, out),
            span=node.span,
            children=children,
            notes=layer_type.notes(params, inp),
            macro=node.macro,
        )

    def inner_layer(self, call: ir.Call, owner: str) -> InnerLayer:
        if call.name not in RECURRENT:
            raise self.error(
                f"Bidirectional wraps a recurrent layer ({', '.join(RECURRENT)}), not {call.name}",
                call.span,
                hint=did_you_mean(call.name, RECURRENT),
            )
        params = self.bind(LAYERS[call.name], call.args, call.span, owner, call.name)
        return InnerLayer(call.name, frozen(params))

    # --- loss, optimizer, metrics, train ---------------------------------------------------
    def loss(self, output: LayerSpec) -> LossSpec:
        setting = self.node.loss
        if setting is None:
            raise self.error(
                f"network '{self.node.name}' has no 'loss:' section",
                self.node.span,
                hint='e.g. loss: "sparse_categorical_crossentropy" for class labels, '
                '"mse" for regression',
            )
        value = setting.value
        args: tuple[ir.Arg, ...] = ()
        if isinstance(value, ir.Call):
            value, args = value.name, value.args
        elif isinstance(value, ir.Ident):
            value = value.name
        if not isinstance(value, str):
            raise self.error(f"loss must be a name, got {describe_value(value)}", setting.span)
        name = canonical_loss(value)
        if name is None:
            raise self.error(
                f'unknown loss "{value}"',
                setting.span,
                hint=did_you_mean(
                    value, [*LOSSES, *(a for aliases, _ in LOSSES.values() for a in aliases)]
                )
                or "known losses: " + ", ".join(LOSSES),
            )
        signature = LOSS_PARAMS.get(name, Signature(name, ()))
        params = self.bind(signature, args, setting.span, "loss", f"loss {name}")
        kind = LOSSES[name][1]
        self.check_output(output, name, kind)
        return LossSpec(name, frozen(params), kind, setting.span)

    def check_output(self, output: LayerSpec, loss: str, kind: str) -> None:
        shape = output.output_shape
        activation = output.values.get("activation")
        if kind == "regression":
            return
        if len(shape) != 1:
            raise self.error(
                f"the network's output has shape {shape}, but {loss} needs one score per "
                "class, shape (classes,)",
                output.span,
                hint="add Flatten() or a global pooling layer before the last layer",
            )
        units = shape[0]
        if kind == "binary":
            if units != 1:
                raise self.error(
                    f"{loss} needs 1 output unit, but the output has {units}",
                    output.span,
                    hint="for one label out of several classes use "
                    f'"sparse_categorical_crossentropy" with Output({units}, "softmax")',
                )
            if activation not in ("sigmoid", "linear", None):
                raise self.error(
                    f"{loss} needs a sigmoid output (or none, for logits), not {activation}",
                    output.span,
                )
            return
        if units < 2:
            raise self.error(
                f"{loss} needs at least 2 output units (one per class), got {units}",
                output.span,
                hint='for a yes/no label use "binary_crossentropy" with Output(1, "sigmoid")',
            )
        if activation not in ("softmax", "linear", None):
            raise self.error(
                f"{loss} needs a softmax output (or none, for logits), not {activation}",
                output.span,
            )

    def optimizer(self) -> OptimizerSpec:
        setting = self.node.optimizer
        value = setting.value if setting else _DEFAULT_OPTIMIZER
        span = setting.span if setting else self.node.span
        if isinstance(value, (str, ir.Ident)):
            text = value if isinstance(value, str) else value.name
            value = ir.Call(text, (), span)
        if not isinstance(value, ir.Call):
            raise self.error(
                f"optimizer must be a call like Adam(learning_rate=0.001), got "
                f"{describe_value(value)}",
                span,
            )
        canonical = next((n for n in OPTIMIZERS if n.lower() == value.name.lower()), None)
        if canonical is None:
            raise self.error(
                f"unknown optimizer '{value.name}'",
                value.span,
                hint=did_you_mean(value.name, OPTIMIZERS)
                or "known optimizers: " + ", ".join(OPTIMIZERS),
            )
        signature = OPTIMIZERS[canonical]
        args, schedule = self.split_schedule(value, signature)
        params = self.bind(signature, args, value.span, "optimizer", canonical)
        if schedule is not None:
            params["learning_rate"] = dict(schedule.params)["initial_learning_rate"]
        return OptimizerSpec(canonical, frozen(params), schedule)

    def split_schedule(
        self, call: ir.Call, signature: Signature
    ) -> tuple[tuple[ir.Arg, ...], ScheduleSpec | None]:
        """Take a schedule given as the learning rate out of the optimizer's arguments."""
        args = list(call.args)
        for index, arg in enumerate(args):
            is_rate = arg.name == "learning_rate" or (arg.name is None and index == 0)
            if is_rate and isinstance(arg.value, ir.Call):
                inner = arg.value
                if inner.name not in SCHEDULES:
                    raise self.error(
                        f"unknown learning-rate schedule '{inner.name}'",
                        inner.span,
                        hint=did_you_mean(inner.name, SCHEDULES)
                        or "known schedules: " + ", ".join(SCHEDULES),
                    )
                params = self.bind(
                    SCHEDULES[inner.name],
                    inner.args,
                    inner.span,
                    "optimizer.schedule",
                    inner.name,
                )
                del args[index]
                for other in args:
                    if other.name == "learning_rate":
                        raise self.error(
                            "the learning rate is given twice: as a schedule and as a number",
                            other.span,
                            hint="the schedule's initial_learning_rate is the starting rate",
                        )
                return tuple(args), ScheduleSpec(inner.name, frozen(params))
        return tuple(args), None

    def metrics(self, loss: LossSpec) -> tuple[str, ...]:
        setting = self.node.metrics
        if setting is None:
            return ()
        values = setting.value if isinstance(setting.value, tuple) else (setting.value,)
        names: list[str] = []
        for value in values:
            text = value.name if isinstance(value, ir.Ident) else value
            if not isinstance(text, str):
                raise self.error(
                    f"metrics must be names, got {describe_value(value)}", setting.span
                )
            name = canonical_metric(text)
            if name is None:
                raise self.error(
                    f'unknown metric "{text}"',
                    setting.span,
                    hint=did_you_mean(
                        text, [*METRICS, *(a for aliases in METRICS.values() for a in aliases)]
                    )
                    or "known metrics: " + ", ".join(METRICS),
                )
            if name == "accuracy" and loss.kind == "regression":
                raise self.error(
                    f"accuracy needs a classification loss, not {loss.name}", setting.span
                )
            if name not in names:
                names.append(name)
        return tuple(names)

    def train(self) -> TrainSpec:
        values: dict[str, Any] = {}
        early: EarlyStoppingSpec | None = None
        for entry in self.node.train:
            if isinstance(entry, (ir.Call, ir.HPO)):
                if getattr(entry, "name", None) != "early_stopping":
                    raise self.error(
                        f"unknown train entry '{getattr(entry, 'name', 'HPO')}(...)'",
                        entry.span,
                        hint="the only call here is early_stopping(patience=..., monitor=...)",
                    )
                params = self.bind(
                    EARLY_STOPPING,
                    entry.args,
                    entry.span,
                    "train.early_stopping",
                    "early_stopping",
                )
                early = EarlyStoppingSpec(**params)
                continue
            param = TRAIN_SETTINGS.get(entry.key)
            if param is None:
                raise self.error(
                    f"unknown train setting '{entry.key}'",
                    entry.span,
                    hint=did_you_mean(entry.key, [*TRAIN_SETTINGS, "early_stopping"])
                    or "known settings: " + ", ".join(TRAIN_SETTINGS),
                )
            signature = Signature("train", (param,))
            values.update(
                self.bind(
                    signature,
                    (ir.Arg(param.name, entry.value, entry.span),),
                    entry.span,
                    "train",
                    "train setting",
                )
            )
        for name, param in TRAIN_SETTINGS.items():
            values.setdefault(name, param.default)
        return TrainSpec(**values, early_stopping=early)


def _size(nodes) -> int:
    """Layers in ``nodes``, counting the bodies of blocks."""
    return sum(1 + _size(node.body or ()) for node in nodes)


def _arg_span(node: ir.LayerNode, layer_type: Any, param: str) -> ir.Span:
    names = [p.name for p in layer_type.params]
    for index, arg in enumerate(a for a in node.args if a.name is None):
        if index < len(names) and names[index] == param:
            return arg.span
    for arg in node.args:
        if arg.name == param:
            return arg.span
    return node.span


def _rank_hint(kind: str, inp: Shape) -> str | None:
    if kind in RECURRENT or kind in ("Bidirectional", "TransformerEncoder"):
        if len(inp) == 1:
            return "add Embedding(...) first, or Reshape((steps, features))"
        return "add Reshape((steps, features)) before it"
    if kind.startswith(("Conv", "MaxPooling", "AveragePooling", "Global")):
        if len(inp) < 2:
            return "this layer needs spatial input; use Reshape(...) first or Dense instead"
        return "pick the layer with the matching dimensionality (1D, 2D or 3D)"
    return None
