"""Custom layers: ``register_layer`` adds a user's own module to the language.

A custom layer is a ``LayerType`` like the built-in ones (typed parameters, a shape rule, a
parameter count), plus the factories that build it: a PyTorch one (required) and a Keras one
(optional). The language, the summary and the code generators then treat it like any layer;
``codegen/shipped.py`` writes the factory's source into generated code and bundles.

Parameters are counted from the built module unless a count is declared, so compiling a
model that uses a custom layer calls its factory (once per distinct argument set and input
shape). Nothing here imports a framework: the factories do, in the user's kernel.
"""

from __future__ import annotations

import inspect
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from neural_jupyter.dsl import parser
from neural_jupyter.dsl.layers import (
    BUILTIN_LAYERS,
    LAYERS,
    LayerType,
    Params,
    Shape,
    ShapeError,
    on_registry_change,
    set_layer,
)
from neural_jupyter.dsl.params import REQUIRED, Param, ParamError
from neural_jupyter.dsl.suggest import did_you_mean
from neural_jupyter.errors import ConfigurationError, DSLValidationError

KINDS = ("int", "float", "bool", "choice", "ints", "shape")
# names the language itself reads as something else
_TAKEN_WORDS = frozenset({"None", "True", "False", "HPO"})
_NAME = re.compile(r"[A-Z][A-Za-z0-9_]*")
_LOCK = threading.Lock()


@dataclass(frozen=True)
class CustomLayerType(LayerType):
    """A layer registered with ``register_layer``."""

    custom: bool = True
    factory: Callable[..., Any] | None = None
    keras_factory: Callable[..., Any] | None = None
    factory_takes_shape: bool = False
    keras_factory_takes_shape: bool = False
    fingerprint: str = ""  # the registration as written: equal text, same definition
    # {"pytorch": params, "keras": params, "flops": n} by (arguments, input, output shape)
    measured: dict[tuple, dict[str, int]] = field(default_factory=dict, compare=False, repr=False)

    def factory_kwargs(self, params: Params, inp: Shape, framework: str) -> dict[str, Any]:
        """The keyword arguments the framework's factory gets for one layer."""
        takes_shape = (
            self.factory_takes_shape if framework == "pytorch" else self.keras_factory_takes_shape
        )
        return ({"input_shape": inp} if takes_shape else {}) | dict(params)


def register_layer(
    name: str,
    module_factory: Callable[..., Any],
    shape_rule: Callable[..., Sequence[int]] | None = None,
    params: Mapping[str, Any] | Sequence[Param] = (),
    *,
    param_count: Callable[..., int] | int | None = None,
    flops: Callable[..., int] | None = None,
    keras_factory: Callable[..., Any] | None = None,
    doc: str = "",
) -> None:
    """Make ``name`` a layer of the model language, built by ``module_factory``.

    ``module_factory(**params)`` returns a ``torch.nn.Module`` that maps a tensor shaped
    ``(batch, *input_shape)`` (channels last, as the language writes shapes) to
    ``(batch, *output_shape)``; it also gets ``input_shape=`` when it has a parameter of
    that name. ``shape_rule(input_shape, **params)`` returns the output shape (batch axis
    excluded) and raises ``ValueError("message")`` for an input the layer cannot take; without
    a rule the output shape is the input shape. ``params`` declares the layer's parameters:
    ``{"units": int, "scale": 1.0, "mode": ("sum", "mean")}`` (a type: required; a value:
    the default; a tuple of strings: a choice, the first by default) or ``Param`` objects for
    ranges and docs. ``param_count`` (``(input_shape, output_shape, **params) -> int``, or an
    int) replaces counting the built module's trainable parameters; ``flops`` likewise
    (default: not counted). ``keras_factory`` builds the Keras layer (without it the layer
    compiles for PyTorch only). Registering a name again replaces it (a re-run cell).
    """
    _check_name(name)
    if not callable(module_factory):
        raise ConfigurationError(
            f"register_layer('{name}'): module_factory must be callable, got "
            f"{type(module_factory).__name__}",
            hint="pass a function or an nn.Module subclass that builds the layer's module",
        )
    declared = declare_params(params, name)
    takes_shape = _check_callable(module_factory, declared, name, "module_factory")
    keras_takes_shape = (
        _check_callable(keras_factory, declared, name, "keras_factory")
        if keras_factory is not None
        else False
    )
    if shape_rule is not None:
        _check_rule(shape_rule, declared, name, "shape_rule", leading=1)
    if callable(param_count):
        _check_rule(param_count, declared, name, "param_count", leading=2)
    elif param_count is not None and (
        isinstance(param_count, bool) or not isinstance(param_count, int) or param_count < 0
    ):
        raise ConfigurationError(
            f"register_layer('{name}'): param_count must be a function or a whole number >= 0, "
            f"got {param_count!r}"
        )
    if flops is not None:
        _check_rule(flops, declared, name, "flops", leading=2)
    owner = _Rules(name, module_factory, shape_rule, param_count, flops, keras_factory)
    layer = CustomLayerType(
        name=name,
        params=declared,
        doc=doc or _first_line(module_factory.__doc__) or f"Built by {_name_of(module_factory)}.",
        category="custom",
        infer=owner.infer,
        count=owner.count,
        flops=owner.flops,
        notes=owner.notes,
        factory=module_factory,
        keras_factory=keras_factory,
        factory_takes_shape=takes_shape,
        keras_factory_takes_shape=keras_takes_shape,
        fingerprint=_fingerprint(
            module_factory, shape_rule, declared, param_count, flops, keras_factory, doc
        ),
    )
    owner.layer = layer
    with _LOCK:
        set_layer(layer, name)


def unregister_layer(name: str) -> None:
    """Remove a layer added with ``register_layer`` (built-in layers stay)."""
    if name in BUILTIN_LAYERS:
        raise ConfigurationError(f"{name} is a built-in layer and cannot be removed")
    if name not in LAYERS:
        custom = registered_layers()
        raise ConfigurationError(
            f"no custom layer named '{name}' is registered",
            hint=did_you_mean(name, custom)
            or ("registered: " + ", ".join(custom) if custom else "none is registered"),
        )
    with _LOCK:
        set_layer(None, name)


def registered_layers() -> list[str]:
    """Names of the layers added with ``register_layer``, in registration order."""
    return [name for name, layer in LAYERS.items() if isinstance(layer, CustomLayerType)]


def check_framework(spec: Any, framework: str) -> None:
    """Raise at the layer's line if a custom layer in ``spec`` cannot be built for
    ``framework``, or was compiled with a registration that has since changed."""
    for layer in spec.custom_layers:
        custom: CustomLayerType = layer.type
        current = LAYERS.get(layer.kind)
        if not isinstance(current, CustomLayerType) or current.fingerprint != custom.fingerprint:
            change = "removed" if current is None else "registered again with another definition"
            raise _at(
                spec,
                layer,
                f"{spec.name} was compiled with custom layer {layer.kind} as it was registered "
                f"then; {layer.kind} has since been {change}",
                f"compile {spec.name} again (re-run its %%neural_compile cell)",
            )
        if framework == "keras" and custom.keras_factory is None:
            raise _at(
                spec,
                layer,
                f"custom layer {layer.kind} has no Keras implementation",
                f"register it with keras_factory=... too, or compile {spec.name} for pytorch",
            )


def _at(spec: Any, layer: Any, message: str, hint: str) -> DSLValidationError:
    span = layer.span
    return DSLValidationError(
        message,
        line=span.line,
        column=span.column,
        end_column=span.end_column if span.end_line == span.line else None,
        source=parser.display_source(spec.source),
        source_name=spec.source_name,
        hint=hint,
    )


# --- the rules of one registration --------------------------------------------------------
class _Rules:
    """Shape, count and FLOP rules of one custom layer, turned into the registry's form."""

    def __init__(
        self,
        name: str,
        factory: Callable[..., Any],
        shape_rule: Callable[..., Any] | None,
        param_count: Callable[..., int] | int | None,
        flops: Callable[..., int] | None,
        keras_factory: Callable[..., Any] | None,
    ) -> None:
        self.name = name
        self.factory = factory
        self.shape_rule = shape_rule
        self.param_count = param_count
        self.flops_rule = flops
        self.keras_factory = keras_factory
        self.layer: CustomLayerType | None = None

    def infer(self, params: Params, inp: Shape) -> Shape:
        """The output shape; also measures the layer now (counts, FLOPs), since only errors
        raised here reach the user as errors at the layer's line."""
        out = inp
        if self.shape_rule is not None:
            result = self._call(self.shape_rule, "shape_rule", inp, **params)
            out = _as_shape(result, self.shape_rule, self.name)
        self._measure(params, inp, out)
        return out

    def count(self, params: Params, inp: Shape, out: Shape, framework: str) -> int:
        return self._measure(params, inp, out)[framework]

    def flops(self, params: Params, inp: Shape, out: Shape) -> int:
        return self._measure(params, inp, out)["flops"]

    def notes(self, params: Params, inp: Shape) -> tuple[str, ...]:
        parts = [f"custom: {_name_of(self.factory)}"]
        if self.param_count is not None:
            parts.append("params declared")
        if self.flops_rule is None:
            parts.append("FLOPs not counted")
        return (", ".join(parts),)

    def _measure(self, params: Params, inp: Shape, out: Shape) -> dict[str, int]:
        """Parameter counts per framework and FLOPs, once per arguments and input shape."""
        assert self.layer is not None
        key = (tuple(params.items()), inp, out)
        known = self.layer.measured.get(key)
        if known is not None:
            return known
        counts = {}
        for framework in ("pytorch", "keras"):
            if self.param_count is None:
                counts[framework] = self._built_count(params, inp, framework)
            elif isinstance(self.param_count, int):
                counts[framework] = self.param_count
            else:
                value = self._call(self.param_count, "param_count", inp, out, **params)
                counts[framework] = _as_count(value, "param_count", self.param_count)
        flops = 0
        if self.flops_rule is not None:
            value = self._call(self.flops_rule, "flops", inp, out, **params)
            flops = _as_count(value, "flops", self.flops_rule)
        measured = {**counts, "flops": flops}
        self.layer.measured[key] = measured
        return measured

    def _built_count(self, params: Params, inp: Shape, framework: str) -> int:
        """Trainable parameters of the module the factory builds for these arguments."""
        assert self.layer is not None
        if framework == "keras" and self.keras_factory is None:
            return 0  # never shown: compiling for Keras stops at check_framework
        kwargs = self.layer.factory_kwargs(params, inp, framework)
        if framework == "pytorch":
            module = self._call(self.factory, "module_factory", **kwargs)
            parameters = getattr(module, "parameters", None)
            if not callable(parameters):
                raise ShapeError(
                    f"module_factory {_name_of(self.factory)} returned a "
                    f"{type(module).__name__}, not a torch.nn.Module",
                    hint="the factory given to register_layer must return an nn.Module",
                )
            return sum(p.numel() for p in parameters() if p.requires_grad)
        layer = self._call(self.keras_factory, "keras_factory", **kwargs)
        try:
            layer.build((None, *inp))
            return int(layer.count_params())
        except Exception as exc:  # any failure of user code is reported
            raise ShapeError(
                f"could not count the parameters of its Keras layer ({type(exc).__name__}: {exc})",
                hint="declare them: register_layer(..., param_count=...)",
            ) from None

    def _call(self, function: Callable[..., Any], role: str, *args: Any, **kwargs: Any) -> Any:
        """Call user code; its failures become errors at the layer's line."""
        try:
            return function(*args, **kwargs)
        except ShapeError:
            raise
        except ValueError as exc:
            if role == "shape_rule":
                raise ShapeError(str(exc)) from None
            raise ShapeError(
                f"{role} {_name_of(function)} raised ValueError: {exc}",
                hint=f"check the {role} given to register_layer('{self.name}', ...)",
            ) from None
        except Exception as exc:  # any failure of user code is reported
            raise ShapeError(
                f"{role} {_name_of(function)} failed: {type(exc).__name__}: {exc}",
                hint=f"fix the {role} given to register_layer('{self.name}', ...)",
            ) from None


def _as_shape(value: Any, rule: Callable[..., Any], owner: str) -> Shape:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if isinstance(value, (list, tuple)):
        shape = tuple(value)
        if shape and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
            return shape
    raise ShapeError(
        f"shape_rule {_name_of(rule)} returned {value!r}; it must return the output shape "
        "as a tuple of positive integers, batch axis excluded",
        hint=f"fix the shape_rule given to register_layer('{owner}', ...); for an input the "
        "layer cannot take, raise ValueError('...') from it",
    )


def _as_count(value: Any, role: str, rule: Callable[..., Any]) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ShapeError(f"{role} {_name_of(rule)} returned {value!r}, not a whole number >= 0")


# --- declaring parameters -------------------------------------------------------------------
def declare_params(params: Mapping[str, Any] | Sequence[Param], owner: str) -> tuple[Param, ...]:
    """``params=`` as given to ``register_layer`` → typed ``Param``s, defaults checked."""
    if isinstance(params, Mapping):
        declared = [_param_from(key, spec, owner) for key, spec in params.items()]
    elif isinstance(params, (list, tuple)):
        declared = list(params)
        for item in declared:
            if not isinstance(item, Param):
                raise ConfigurationError(
                    f"register_layer('{owner}'): params holds {item!r}, not a Param",
                    hint='give a dict such as {"units": int, "rate": 0.1} or a list of Param(...)',
                )
    else:
        raise ConfigurationError(
            f"register_layer('{owner}'): params must be a dict or a list of Param, got "
            f"{type(params).__name__}"
        )
    seen: set[str] = set()
    for param in declared:
        _check_param(param, owner)
        if param.name in seen:
            raise ConfigurationError(f"register_layer('{owner}'): '{param.name}' is declared twice")
        seen.add(param.name)
    return tuple(declared)


def _param_from(name: str, spec: Any, owner: str) -> Param:
    if isinstance(spec, Param):
        if spec.name != name:
            raise ConfigurationError(
                f"register_layer('{owner}'): params['{name}'] is a Param named '{spec.name}'",
                hint="use the same name as the key",
            )
        return spec
    types = {int: "int", float: "float", bool: "bool"}
    if spec in types:
        return Param(name, types[spec])
    if isinstance(spec, bool):
        return Param(name, "bool", spec)
    if isinstance(spec, int):
        return Param(name, "int", spec)
    if isinstance(spec, float):
        return Param(name, "float", spec)
    if isinstance(spec, tuple) and spec and all(isinstance(v, str) for v in spec):
        return Param(name, "choice", spec[0], choices=spec)
    if isinstance(spec, tuple) and spec and all(isinstance(v, int) for v in spec):
        return Param(name, "shape", spec)
    raise ConfigurationError(
        f"register_layer('{owner}'): cannot tell the type of parameter '{name}' from {spec!r}",
        hint="use int, float or bool (required), a default value (0.1, 3, True), a tuple of "
        'strings (a choice: ("sum", "mean")) or Param(...) for ranges',
    )


def _check_param(param: Param, owner: str) -> None:
    where = f"register_layer('{owner}'): parameter '{param.name}'"
    if not param.name.isidentifier() or param.name.startswith("_") or param.name == "input_shape":
        raise ConfigurationError(
            f"{where} needs another name",
            hint="a parameter name is a Python identifier, not starting with _, not input_shape",
        )
    if param.kind not in KINDS:
        raise ConfigurationError(
            f"{where} has kind '{param.kind}'", hint="kinds: " + ", ".join(KINDS)
        )
    if param.kind == "choice" and not param.choices:
        raise ConfigurationError(f"{where} is a choice without choices")
    if param.default is not REQUIRED:
        try:
            param.coerce(param.default)
        except ParamError as exc:
            raise ConfigurationError(f"{where}: its default {exc.message}") from None


# --- checking callables at registration -------------------------------------------------------
def _check_callable(
    factory: Callable[..., Any], params: tuple[Param, ...], owner: str, role: str
) -> bool:
    """Check that ``factory`` takes every parameter by keyword; True if it takes input_shape."""
    if not callable(factory):
        raise ConfigurationError(f"register_layer('{owner}'): {role} must be callable")
    signature = _signature(factory)
    if signature is None:
        return False
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    keyword = {
        name
        for name, p in signature.parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    missing = [p.name for p in params if p.name not in keyword and not accepts_any]
    if missing:
        raise ConfigurationError(
            f"register_layer('{owner}'): {role} {_name_of(factory)} has no parameter "
            f"'{missing[0]}'",
            hint=f"it is called as {_name_of(factory)}("
            + ", ".join(f"{p.name}=..." for p in params)
            + "); add the parameter or remove it from params",
        )
    return "input_shape" in keyword


def _check_rule(
    rule: Callable[..., Any], params: tuple[Param, ...], owner: str, role: str, leading: int
) -> None:
    """``rule(shape[, shape], **params)`` must be callable that way."""
    if not callable(rule):
        raise ConfigurationError(f"register_layer('{owner}'): {role} must be callable")
    signature = _signature(rule)
    if signature is None:
        return
    try:
        signature.bind(*([()] * leading), **{p.name: None for p in params})
    except TypeError as exc:
        shapes = "input_shape" if leading == 1 else "input_shape, output_shape"
        raise ConfigurationError(
            f"register_layer('{owner}'): {role} {_name_of(rule)} cannot be called as "
            f"{role}({shapes}, " + ", ".join(f"{p.name}=..." for p in params) + f"): {exc}",
            hint="take the parameters by name, or end the signature with **params",
        ) from None


def _signature(function: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):  # some builtins have none
        return None


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in _TAKEN_WORDS:
        raise ConfigurationError(
            f"register_layer: {name!r} cannot be a layer name",
            hint="a layer name starts with a capital letter and holds only letters, digits "
            "and _ (e.g. 'ScaledDense'), and is not None, True, False or HPO",
        )
    if name in BUILTIN_LAYERS:
        raise ConfigurationError(
            f"register_layer: {name} is a built-in layer",
            hint=f"pick another name, e.g. 'My{name}'",
        )


# --- helpers ----------------------------------------------------------------------------------
def _name_of(function: Any) -> str:
    return (
        getattr(function, "__qualname__", None)
        or getattr(function, "__name__", None)
        or repr(function)
    )


def _first_line(text: str | None) -> str:
    return text.strip().splitlines()[0] if text and text.strip() else ""


def _fingerprint(*parts: Any) -> str:
    """The registration as written: the source of each callable (its identity when the
    source is unknown) and the declared values."""
    words = []
    for part in parts:
        if callable(part):
            try:
                words.append(inspect.getsource(part))
            except (OSError, TypeError):
                words.append(f"<{_name_of(part)} at {id(part):#x}>")
        else:
            words.append(repr(part))
    return "\0".join(words)


def _clear_parse_cache(name: str) -> None:
    parser.clear_cache()


# compiled programs are cached by source text; a registration changes what a name means
on_registry_change(_clear_parse_cache)
