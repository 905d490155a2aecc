"""Parse-level IR → a validated ``NetworkSpec``: macros, binding, hyper-parameters, shapes.

Every problem becomes a ``DSLValidationError`` pointing at the argument, layer or section that
caused it, with a did-you-mean where a name is misspelt.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import keyword
import re
from collections.abc import Mapping
from typing import Any

from neural_jupyter.dsl import dialect, hints, ir
from neural_jupyter.dsl.build import MAX_INT
from neural_jupyter.dsl.layers import (
    FRAMEWORKS,
    LAYERS,
    RECURRENT,
    InnerLayer,
    Shape,
    ShapeError,
    no_flops,
    no_notes,
    no_params,
    prod,
)
from neural_jupyter.dsl.params import Param, ParamError, Signature, bind, describe_value, frozen
from neural_jupyter.dsl.source_text import display_source
from neural_jupyter.dsl.spec import (
    EarlyStoppingSpec,
    HyperParameter,
    LayerSpec,
    LossSpec,
    NetworkSpec,
    OptimizerSpec,
    ScheduleSpec,
    TrainSpec,
    fixed,
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
from neural_jupyter.errors import ConfigurationError, DSLValidationError, SeveralNetworksError
from neural_jupyter.gc_pause import paused_gc

_DEFAULT_OPTIMIZER = ir.Call("Adam", (), ir.Span(0, 0, 0, 0))
_ALIASES = dialect.LAYER_ALIASES
_OPTIMIZER_NAMES = {name.lower(): name for name in reversed(OPTIMIZERS)}  # the first wins


@paused_gc
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
            raise _several_networks(program)
        node = program.networks[0]
    else:
        matches = [n for n in program.networks if n.name == network]
        if not matches:
            names = [n.name for n in program.networks]
            raise ConfigurationError(
                f"no network named '{network}' in the source (it defines "
                + ", ".join(f"{n.name} at line {n.span.line}" for n in program.networks)
                + ")",
                hint=did_you_mean(network, names),
            )
        node = matches[0]
    return _Analyzer(program, node, dict(hparams or {})).run()


def _several_networks(program: ir.Program) -> SeveralNetworksError:
    first, second = program.networks[0], program.networks[1]
    listed = ", ".join(f"{n.name} (line {n.span.line})" for n in program.networks)
    return SeveralNetworksError(
        f"the source defines several networks: {listed}; name the one to compile",
        line=second.span.line,
        column=second.span.column,
        end_column=second.span.end_column,
        source=display_source(program.source),
        source_name=program.source_name,
        hint=f'compile_model(source, network="{first.name}"), or compile_all(source) for '
        f"every network (%%neural_compile compiles them all)",
    )


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
        and name not in _BUILTINS
        and not name.startswith("_")
    )


_BUILTINS = frozenset(dir(builtins))


@functools.cache
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
        self.notes: dict[str, int] = {}  # note → line: what was applied differently, and why
        self.placements: list[tuple[ir.Setting, str]] = []  # `@ "device"` and the layer

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

    def note(self, span: ir.Span | None, text: str) -> None:
        line = span.line if span and span.line else 0
        self.notes.setdefault(f"line {line}: {text}" if line else text, line)

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
        for part in node.nodes():
            if part.kind != "choice" and param.kind not in ("int", "float"):
                raise ParamError(f"cannot take a numeric {part.kind}(); use choice(...)", node.span)
            if part.kind != "choice" and param.kind == "int":
                bounds = (part.low, part.high, part.step)
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
        if not node.contains(value):
            where = "be one of" if node.kind == "choice" and not node.nested else "lie in"
            raise ConfigurationError(
                f"hyper-parameter '{name}' must {where} {node.describe()}, got {value!r}"
            )

    def next_name(self, kind: str) -> str:
        base = snake_case(kind)
        count = self.counters.get(base, 0) + 1
        self.counters[base] = count
        return f"{base}_{count}"

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
        written_shape = self.input_shape()
        if node.layers is None:
            raise self.error(
                f"network '{node.name}' has no 'layers:' section",
                node.layers_span or node.span,
                hint="add e.g. 'layers: Flatten() Output(10, \"softmax\")'",
            )
        layers_nodes = self.expand(node.layers, ())
        if not layers_nodes:
            raise self.error(
                f"network '{node.name}' has no layers",
                node.layers_span or node.span,
                hint="list at least one layer after 'layers:'",
            )
        input_shape = self.batch_axis(written_shape, layers_nodes[0])
        layers = self.chain(layers_nodes, input_shape, top=True)
        input_dtype = "int64" if layers[0].kind == "Embedding" else "float32"
        loss = self.loss(layers, layers_nodes[-1])
        optimizer = self.optimizer()
        metrics = self.metrics(loss)
        train = self.train()
        device = self.device()
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
            notes=tuple(sorted(self.notes, key=self.notes.__getitem__)),
            device=device,
        )

    def input_shape(self) -> tuple[int | None, ...]:
        """The shape as written; a None (Neural DSL: batch axis or variable length) is
        resolved by ``batch_axis`` once the first layer is known."""
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
            or not all(
                v is None or (isinstance(v, int) and not isinstance(v, bool) and v > 0)
                for v in value
            )
        ):
            raise self.error(
                f"input must be a tuple of positive integers, got {describe_value(value)}",
                setting.span,
                hint="e.g. 'input: (28, 28, 1)' (channels last, no batch axis)",
            )
        if prod(fixed(value)) > MAX_INT:
            raise self.error(f"input has more than {MAX_INT:,} values per sample", setting.span)
        return value

    def batch_axis(self, shape: tuple[int | None, ...], first: ir.LayerNode) -> Shape:
        """Neural DSL writes ``input: (None, 28, 28, 1)`` with the batch axis, and ``None``
        for a sequence of any length (``(None, 512)`` before a TransformerEncoder). A leading
        None is the batch axis unless the first layer needs it as the time axis."""
        setting = self.node.input
        if shape[0] is None:
            layer_type = LAYERS.get(dialect.canonical_layer(first.kind))
            ranks = layer_type.ranks if layer_type is not None else None
            rest = shape[1:]
            is_time_axis = not rest or (
                ranks is not None and len(rest) not in ranks and len(shape) in ranks
            )
            if not is_time_axis:
                self.note(
                    setting.span,
                    f"the leading None of input {ir.written(shape)} is the batch axis: "
                    f"each sample is {ir.written(rest)}",
                )
                shape = rest
        if None in shape[1:]:
            raise self.error(
                f"only the first axis of the input (the sequence length) may be None, got "
                f"{ir.written(shape)}",
                setting.span,
                hint="give every other size, e.g. 'input: (None, 64)' for sequences of "
                "64-wide vectors of any length",
            )
        if shape[0] is None:
            self.note(
                setting.span,
                f"input {ir.written(shape)}: sequences of any length (FLOPs and activation "
                "sizes are per time step)",
            )
        return shape

    # --- layers ----------------------------------------------------------------------------
    def expand(self, nodes: tuple[ir.LayerNode, ...], stack: tuple[str, ...]) -> list[ir.LayerNode]:
        """Expand macros and repetitions; blocks keep their (expanded) body."""
        out: list[ir.LayerNode] = []
        for node in nodes:
            if node.device is not None:
                self.placements.append((node.device, node.kind))
            if node.kind in self.macros:
                if node.args or node.form == "block":
                    raise self.error(
                        f"macro '{node.kind}' takes no arguments; write {node.kind}()",
                        node.span,
                    )
                if node.body is not None:
                    self.ignored_block(node, f"{node.kind}()")
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
                kind = dialect.canonical_layer(node.kind)
                layer_type = LAYERS.get(kind)
                if node.form == "call_block" and layer_type is not None and not layer_type.block:
                    self.ignored_block(node, f"{node.kind}(...)")
                    node = dataclasses.replace(node, body=None, form="call")
                elif layer_type is None or not layer_type.block:
                    raise self.error(
                        f"'{node.kind}' is not a block layer",
                        node.span,
                        hint="the only block is 'Residual { ... }'; other layers take parentheses",
                    )
                else:
                    if node.args:
                        self.note(
                            node.span,
                            f"the arguments of {node.kind}(...) are ignored (a residual "
                            "block adds its input to its output; it has no parameters)",
                        )
                    node = dataclasses.replace(
                        node, args=(), body=tuple(self.expand(node.body, stack))
                    )
            if node.body is None:
                self.count_expanded(node, node.repeat)
            else:
                self.count_expanded(node, _size([node]) * node.repeat - _size(node.body))
            if node.repeat == 1:
                out.append(node)
            else:
                out.extend([dataclasses.replace(node, repeat=1)] * node.repeat)
        return out

    def ignored_block(self, node: ir.LayerNode, written: str) -> None:
        count = len(node.body or ())
        self.note(
            node.span,
            f"the block of {count} layer{'s' if count != 1 else ''} after {written} is "
            "ignored: Neural DSL parses such sub-layer blocks but its generated code does not "
            "use them; list those layers after it to apply them",
        )

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
                node,
                shape,
                first=top and index == 0,
                last=top and index == len(nodes) - 1,
                before=specs,
            )
            specs.append(spec)
            shape = spec.output_shape
        return specs

    def layer(
        self,
        node: ir.LayerNode,
        inp: Shape,
        first: bool,
        last: bool,
        before: list[LayerSpec] | None = None,
    ) -> LayerSpec:
        kind = _ALIASES.get(node.kind, node.kind)  # dialect.canonical_layer
        layer_type = LAYERS.get(kind)
        if layer_type is None:
            raise self.error(
                f"unknown layer '{node.kind}'",
                node.span,
                hint=did_you_mean(node.kind, [*LAYERS, *self.macros])
                or "see the language reference for the list of layers",
            )
        notes = [f"written {node.kind}"] if kind != node.kind else []
        if layer_type.block and node.body is None:
            raise self.error(f"{kind} is written as a block: {kind} {{ ... }}", node.span)
        if kind == "Output" and not last:
            raise self.error("Output must be the last layer", node.span)
        if layer_type.first_only and not first:
            raise self.error(
                f"{kind} must be the first layer (it takes integer ids as input)",
                node.span,
                hint=hints.embedding_not_first(before or []),
            )
        if layer_type.ranks and len(inp) not in layer_type.ranks:
            message, hint = hints.wrong_rank(kind, layer_type, inp, node, before or [], first)
            raise self.error(message, node.span, hint=hint)
        name = self.next_name(kind)
        args = dialect.layer_args(kind, node.args) if kind in dialect.CONVOLUTIONS else node.args
        params = self.bind(layer_type, args, node.span, name, kind)
        children: tuple[LayerSpec, ...] = ()
        if layer_type.block:
            if not node.body:
                raise self.error(f"{kind} block is empty", node.span)
            children = tuple(self.chain(list(node.body), inp, top=False))
            out = children[-1].output_shape
            if out != inp:
                raise self.error(
                    f"{kind} block changes the shape from {ir.written(inp)} to "
                    f"{ir.written(out)}; a skip connection needs the same shape",
                    node.span,
                    hint=hints.residual(inp, children),
                )
        if layer_type.wraps:
            params["layer"] = self.inner_layer(params["layer"], name)
        if kind == "TransformerEncoder" and inp[-1] == 1:
            message, hint = hints.width_one_attention(
                kind, inp, node.span.line, params["num_heads"]
            )
            raise self.error(message, node.span, hint)
        if None in inp:
            out, counts, flops = self.infer_variable(node, kind, layer_type, params, inp)
        else:
            try:
                out = layer_type.infer(params, inp)
            except ShapeError as exc:
                span = _arg_span(args, layer_type, exc.param, node.span) if exc.param else node.span
                raise self.error(
                    f"{kind} {exc.message}", span, hints.shape(kind, exc, inp, before or [])
                ) from None
            count, flops_of = layer_type.count, layer_type.flops
            counts = dict.fromkeys(FRAMEWORKS, 0)
            if count is not no_params:
                for framework in FRAMEWORKS:
                    counts[framework] = count(params, inp, out, framework)
            flops = 0 if flops_of is no_flops else flops_of(params, inp, out)
        notes_of = layer_type.notes
        extra = () if notes_of is no_notes else notes_of(params, fixed(inp) if None in inp else inp)
        return LayerSpec(
            kind=kind,
            name=name,
            params=tuple(params.items()),
            input_shape=inp,
            output_shape=out,
            param_counts=tuple(counts.items()),
            flops=flops,
            span=node.span,
            children=children,
            notes=(*notes, *extra) if notes else tuple(extra),
            macro=node.macro,
        )

    def infer_variable(
        self,
        node: ir.LayerNode,
        kind: str,
        layer_type: Any,
        params: dict[str, Any],
        inp: Shape,
    ) -> tuple[Shape, dict[str, int], int]:
        """Shape, parameter counts and FLOPs (per time step) of a layer over a sequence of
        any length: inferred at two lengths; what differs is variable, and the parameter
        counts must not differ."""
        if kind in ("Flatten", "Reshape"):
            raise self.error(
                f"{kind} cannot take a sequence of any length (input {ir.written(inp)}): its "
                "output size would depend on the length",
                node.span,
                hint=hints.pool_over_time(node.span.line),
            )
        strides = params.get("strides") or ()
        if params.get("padding") == "same" and (
            kind.startswith(("MaxPooling", "AveragePooling")) or any(s > 1 for s in strides)
        ):
            raise self.error(
                f'{kind} with padding="same" and a step over a sequence of any length cannot '
                "be generated (its padding depends on the length)",
                node.span,
                hint='use padding="valid", or give the sequence length in input:',
            )
        inp_a, inp_b = (_at_length(inp, length) for length in STAND_IN_LENGTHS)
        try:
            out_a, out_b = layer_type.infer(params, inp_a), layer_type.infer(params, inp_b)
        except ShapeError as exc:
            raise self.error(f"{kind} {exc.message}", node.span, exc.hint) from None
        out = tuple(a if a == b else None for a, b in zip(out_a, out_b, strict=True))
        counts = {}
        for framework in FRAMEWORKS:
            count = layer_type.count(params, inp_a, out_a, framework)
            if count != layer_type.count(params, inp_b, out_b, framework):
                raise self.error(
                    f"{kind} needs a fixed size for every axis it learns weights over, but its "
                    f"input {ir.written(inp)} has a sequence of any length",
                    node.span,
                    hint=hints.pool_over_time(node.span.line),
                )
            counts[framework] = count
        return out, counts, layer_type.flops(params, fixed(inp), fixed(out))

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
    def loss(self, layers: list[LayerSpec], last: ir.LayerNode) -> LossSpec:
        setting = self.node.loss
        if setting is None:
            return self.inferred_loss(layers, last)
        value = setting.value
        args: tuple[ir.Arg, ...] = ()
        if isinstance(value, ir.Call):
            value, args = value.name, value.args
        elif isinstance(value, ir.Ident):
            value = value.name
        if not isinstance(value, str):
            raise self.error(f"loss must be a name, got {describe_value(value)}", setting.span)
        auto = value.lower() in dialect.AUTO_LABEL_LOSSES
        name = "categorical_crossentropy" if auto else canonical_loss(value)
        if name is None:
            raise self.error(
                f'unknown loss "{value}"',
                setting.span,
                hint=did_you_mean(
                    value, [*LOSSES, *(a for aliases, _ in LOSSES.values() for a in aliases)]
                )
                or "known losses: " + ", ".join(LOSSES),
            )
        if auto:
            self.note(
                setting.span,
                f'loss "{value}" is categorical cross-entropy; class indices or one-hot labels '
                "are told apart from the data at run time",
            )
        signature = LOSS_PARAMS.get(name) or _parameterless(name)
        params = self.bind(signature, args, setting.span, "loss", f"loss {name}")
        kind = LOSSES[name][1]
        self.check_output(layers, name, kind)
        return LossSpec(name, frozen(params), kind, setting.span, auto_labels=auto)

    def inferred_loss(self, layers: list[LayerSpec], last: ir.LayerNode) -> LossSpec:
        """No `loss:` section (neural-dsl defaults it): choose from the output layer."""
        output = layers[-1]
        written = _written_activation(last, output)
        units = output.output_shape[-1] if output.output_shape else None
        found = dialect.infer_loss(output.kind, written, units)
        if found is None:
            activation = f"a {written} output" if written else "an output without an activation"
            raise self.error(
                f"network '{self.node.name}' has no 'loss:' section",
                self.node.span,
                hint=f"the loss cannot be told from {activation} (line {output.span.line}): "
                'e.g. loss: "sparse_categorical_crossentropy" for class labels, "mse" for '
                'regression, or give the last layer a "softmax", "sigmoid" or "linear" '
                "activation",
            )
        name, why = found
        kind = LOSSES[name][1]
        self.check_output(layers, name, kind)
        auto = name == "categorical_crossentropy"
        labels = " (class indices or one-hot labels, told apart from the data)" if auto else ""
        self.note(output.span, f"no loss: section; {name} inferred because {why}{labels}")
        return LossSpec(name, (), kind, None, inferred=True, auto_labels=auto)

    def check_output(self, layers: list[LayerSpec], loss: str, kind: str) -> None:
        output = layers[-1]
        shape = output.output_shape
        activation = output.values.get("activation")
        if kind == "regression":
            return
        if len(shape) != 1 or shape[0] is None:
            raise self.error(
                f"the network's output has shape {ir.written(shape)}, but {loss} needs one "
                "score per class, shape (classes,)",
                output.span,
                hint=hints.flatten(layers),
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
        if isinstance(value, str) and "(" in value:
            value = self.quoted_call(value, setting)
        if isinstance(value, (str, ir.Ident)):
            text = value if isinstance(value, str) else value.name
            value = ir.Call(text, (), span)
        if not isinstance(value, ir.Call):
            raise self.error(
                f"optimizer must be a call like Adam(learning_rate=0.001), got "
                f"{describe_value(value)}",
                span,
            )
        canonical = _OPTIMIZER_NAMES.get(value.name.lower())
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

    def quoted_call(self, text: str, setting: ir.Setting | None, span: ir.Span | None = None):
        """A call written inside a string (Neural DSL: ``optimizer: "Adam(learning_rate=1e-3)"``,
        ``learning_rate="ExponentialDecay(0.1, 1000, 0.96)"``), read as if unquoted; errors
        point into the string."""
        from neural_jupyter.dsl.parser import parse_expression

        at = span or (setting.span if setting else self.node.span)
        where = self.string_start(at, text)
        return parse_expression(
            text, self.program.source, self.program.source_name, line=where[0], column=where[1]
        )

    def string_start(self, span: ir.Span, text: str) -> tuple[int, int]:
        """(line, column) of the first character inside the string literal holding ``text``
        within ``span`` (the value's own position when it cannot be found)."""
        lines = self.program.source.split("\n", span.line)
        if 0 < span.line <= len(lines):
            row = lines[span.line - 1]
            for quote in ('"', "'"):
                found = row.find(quote + text, span.column - 1)
                if found >= 0:
                    return span.line, found + 2
        return span.line, span.column

    def split_schedule(
        self, call: ir.Call, signature: Signature
    ) -> tuple[tuple[ir.Arg, ...], ScheduleSpec | None]:
        """Take a schedule given as the learning rate out of the optimizer's arguments."""
        args = list(call.args)
        for index, arg in enumerate(args):
            is_rate = arg.name == "learning_rate" or (arg.name is None and index == 0)
            if is_rate and isinstance(arg.value, str) and "(" in arg.value:
                inner = self.quoted_call(arg.value, None, arg.span)
                arg = args[index] = ir.Arg(arg.name, inner, arg.span)
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
        strategy: str | None = None
        written: dict[str, ir.Setting] = {}
        for setting in self.node.settings:  # train settings written at network level
            written[setting.key] = setting
        for entry in self.node.train:
            if isinstance(entry, ir.Setting) and entry.key in written:
                raise self.error(
                    f"train setting '{entry.key}' is given twice",
                    entry.span,
                    hint=f"also at {written[entry.key].span.where}, outside train {{ }}",
                )
        for entry in (*self.node.train, *self.node.settings):
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
            if entry.key == "search_method":
                strategy = self.search_method(entry)
                continue
            param = TRAIN_SETTINGS.get(entry.key)
            if param is None:
                raise self.error(
                    f"unknown train setting '{entry.key}'",
                    entry.span,
                    hint=did_you_mean(
                        entry.key, [*TRAIN_SETTINGS, "early_stopping", "search_method"]
                    )
                    or "known settings: " + ", ".join(TRAIN_SETTINGS),
                )
            values.update(
                self.bind(
                    _TRAIN_SIGNATURES[entry.key],
                    (ir.Arg(param.name, entry.value, entry.span),),
                    entry.span,
                    "train",
                    "train setting",
                )
            )
        for name, param in TRAIN_SETTINGS.items():
            values.setdefault(name, param.default)
        return TrainSpec(**values, early_stopping=early, strategy=strategy)

    def search_method(self, entry: ir.Setting) -> str:
        value = entry.value.name if isinstance(entry.value, ir.Ident) else entry.value
        strategy = dialect.SEARCH_METHODS.get(value.lower()) if isinstance(value, str) else None
        if strategy is None:
            raise self.error(
                f"search_method must be one of {', '.join(dialect.SEARCH_METHODS)}, got "
                f"{describe_value(entry.value)}",
                entry.span,
                hint=did_you_mean(value, dialect.SEARCH_METHODS)
                if isinstance(value, str)
                else None,
            )
        self.note(
            entry.span,
            f"search_method {ir.written(value)}: %neural_sweep uses the {strategy} strategy "
            "unless --strategy says otherwise",
        )
        return strategy

    def device(self) -> str | None:
        """The job's device from `execution { device: ... }` and `@ "..."` placements."""
        chosen: str | None = None
        for entry in self.node.execution:
            if entry.key != "device":
                self.note(
                    entry.span,
                    f"execution setting '{entry.key}' is ignored: choose where a job runs with "
                    "%neural_submit --platform / --instance",
                )
                continue
            device, written = dialect.device_name(entry.value)
            if device is None:
                if written.strip().lower() != "auto":  # "auto" is what a job does anyway
                    self.note(entry.span, _unusable_device(written))
                continue
            chosen = device
            self.note(
                entry.span,
                f"execution device {written!r} becomes the job's device, used where the "
                "machine has one (%%neural_run --device overrides it)",
            )
        placed: dict[str, list[str]] = {}
        for setting, kind in self.placements:
            device, written = dialect.device_name(setting.value)
            if device is None:
                self.note(setting.span, f"{kind} @ {written!r}: " + _unusable_device(written))
                continue
            placed.setdefault(device, []).append(kind)
        if placed:
            devices = list(placed)
            chosen = chosen or devices[0]
            span = self.placements[0][0].span
            if devices == [chosen]:
                self.note(
                    span,
                    f"@ {chosen!r} placements: the whole model runs on {chosen!r} (where the "
                    "machine has one)",
                )
            else:
                listed = ", ".join(repr(d) for d in devices)
                self.note(
                    span,
                    f"layers are placed on {listed}: splitting a model across devices is not "
                    f"generated; the whole model runs on {chosen!r}",
                )
        return chosen


@functools.cache
def _parameterless(name: str) -> Signature:
    """The signature of a loss without parameters, made once (a signature caches what it
    derives from its parameters)."""
    return Signature(name, ())


# one signature per train setting, made once (a signature caches its checked defaults)
_TRAIN_SIGNATURES = {name: Signature("train", (param,)) for name, param in TRAIN_SETTINGS.items()}


def _size(nodes) -> int:
    """Layers in ``nodes``, counting the bodies of blocks."""
    return sum(1 + _size(node.body or ()) for node in nodes)


def _arg_span(args: tuple[ir.Arg, ...], layer_type: Any, param: str, span: ir.Span) -> ir.Span:
    names = [p.name for p in layer_type.params]
    for index, arg in enumerate(a for a in args if a.name is None):
        if index < len(names) and names[index] == param:
            return arg.span
    for arg in args:
        if arg.name == param:
            return arg.span
    return span


# two sequence lengths a variable-length layer is inferred at (see infer_variable)
STAND_IN_LENGTHS = (4099, 8209)


def _at_length(shape: Shape, length: int) -> tuple[int, ...]:
    return tuple(length if size is None else size for size in shape)


def _written_activation(node: ir.LayerNode, spec: LayerSpec) -> str | None:
    """The last layer's activation if the source names one (Output's default is not)."""
    if spec.kind == "Activation":
        return spec.values["activation"]
    if spec.kind in ("Dense", "Output"):
        named = any(arg.name == "activation" for arg in node.args)
        if not named and len([a for a in node.args if a.name is None]) < 2:
            return None
    return spec.values.get("activation")


def _unusable_device(written: str) -> str:
    return (
        f"device {written!r} is ignored: the generated code trains on cpu, cuda (gpu) or mps, "
        "and the job uses its default device"
    )
