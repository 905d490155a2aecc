"""Typed parameters and binding call arguments to them.

A ``Signature`` (layer, optimizer, schedule, loss...) lists ``Param``s with a type, a default and
a range. ``bind`` checks positional/keyword arguments against it and returns concrete values;
``ParamError`` carries the argument's span so the analyzer can point at it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from neural_jupyter.dsl import ir
from neural_jupyter.dsl.suggest import did_you_mean

REQUIRED: Any = type("Required", (), {"__repr__": lambda self: "REQUIRED"})()

ACTIVATIONS: tuple[str, ...] = (
    "linear",
    "relu",
    "sigmoid",
    "tanh",
    "softmax",
    "log_softmax",
    "elu",
    "selu",
    "gelu",
    "silu",
    "swish",
    "leaky_relu",
    "softplus",
    "softsign",
    "hard_sigmoid",
    "mish",
)


class ParamError(Exception):
    """A bad argument; ``span`` is where it is written (None: the whole call)."""

    def __init__(self, message: str, span: ir.Span | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint


@dataclass(frozen=True)
class Param:
    """One parameter: ``kind`` is int, float, bool, choice, ints, shape or layer."""

    name: str
    kind: str
    default: Any = REQUIRED
    doc: str = ""
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    max_exclusive: bool = False
    choices: tuple[Any, ...] = ()
    optional: bool = False  # None is accepted

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def type_text(self, rank: int = 1) -> str:
        """Human description of the accepted values (used in errors and the docs)."""
        words = {
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
            "shape": "a tuple of integers",
            "layer": "a recurrent layer such as LSTM(64)",
            "ints": "an integer" if rank == 1 else f"an integer or a tuple of {rank} integers",
        }
        if self.kind == "choice":
            text = "one of " + ", ".join(f'"{c}"' for c in self.choices)
        else:
            text = words[self.kind]
        return text + (" or None" if self.optional else "")

    def range_text(self) -> str:
        parts = []
        if self.min is not None:
            parts.append(f"{'>' if self.min_exclusive else '>='} {_bound(self.min)}")
        if self.max is not None:
            parts.append(f"{'<' if self.max_exclusive else '<='} {_bound(self.max)}")
        return " and ".join(parts)

    @functools.cached_property
    def choice_names(self) -> dict[str, str]:
        """Each string choice by its lower-case spelling (choices match case-insensitively)."""
        names: dict[str, str] = {}
        for choice in self.choices:
            if isinstance(choice, str):
                names.setdefault(choice.lower(), choice)
        return names

    def coerce(self, value: Any, rank: int = 1) -> Any:
        """Check ``value`` and return its canonical form; raise ParamError if it is wrong."""
        if value is None:
            if self.optional:
                return None
            raise ParamError(f"expects {self.type_text(rank)}, got None")
        converted = _CONVERTERS[self.kind](self, value, rank)
        low, high = self.min, self.max
        if low is None and high is None:
            return converted
        for number in converted if isinstance(converted, tuple) else (converted,):
            if isinstance(number, (int, float)) and not isinstance(number, bool):
                # a number strictly inside both bounds is in range, whether they are
                # inclusive or not; only others need the exact check
                inside = (low is None or number > low) and (high is None or number < high)
                if not inside:
                    self._check_range(number)
        return converted

    def _check_range(self, number: float) -> None:
        low_bad = self.min is not None and (
            number <= self.min if self.min_exclusive else number < self.min
        )
        high_bad = self.max is not None and (
            number >= self.max if self.max_exclusive else number > self.max
        )
        if low_bad or high_bad:
            raise ParamError(f"must be {self.range_text()}, got {number!r}")


def describe_value(value: Any) -> str:
    if isinstance(value, ir.Ident):
        return f"the name {value.name}"
    if isinstance(value, str):
        return f'the string "{value}"'
    return ir.written(value)


def _wrong(param: Param, value: Any, rank: int) -> ParamError:
    return ParamError(f"expects {param.type_text(rank)}, got {describe_value(value)}")


def _to_int(param: Param, value: Any, rank: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong(param, value, rank)
    return value


def _to_float(param: Param, value: Any, rank: int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _wrong(param, value, rank)
    if not math.isfinite(value):
        raise ParamError(f"must be a finite number, got {value!r}")
    return float(value)


def _to_bool(param: Param, value: Any, rank: int) -> bool:
    if not isinstance(value, bool):
        raise _wrong(param, value, rank)
    return value


def _to_choice(param: Param, value: Any, rank: int) -> str:
    text = value.name if isinstance(value, ir.Ident) else value
    if not isinstance(text, str):
        raise _wrong(param, value, rank)
    found = param.choice_names.get(text.lower())
    if found is not None:
        return found
    raise ParamError(
        f'expects {param.type_text(rank)}, got "{text}"',
        hint=did_you_mean(text, [c for c in param.choices if isinstance(c, str)]),
    )


def _to_ints(param: Param, value: Any, rank: int) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * rank
    if (
        isinstance(value, tuple)
        and len(value) == rank
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return value
    raise _wrong(param, value, rank)


def _to_shape(param: Param, value: Any, rank: int) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if (
        isinstance(value, tuple)
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        if any(v == 0 or v < -1 for v in value) or list(value).count(-1) > 1:
            raise ParamError(f"must hold positive sizes (and at most one -1), got {value!r}")
        return value
    raise _wrong(param, value, rank)


def _to_layer(param: Param, value: Any, rank: int) -> ir.Call:
    if not isinstance(value, ir.Call):
        raise _wrong(param, value, rank)
    return value


_CONVERTERS: dict[str, Callable[[Param, Any, int], Any]] = {
    "int": _to_int,
    "float": _to_float,
    "bool": _to_bool,
    "choice": _to_choice,
    "ints": _to_ints,
    "shape": _to_shape,
    "layer": _to_layer,
}


@dataclass(frozen=True)
class Signature:
    """Something called with arguments in the language: a layer, optimizer, schedule..."""

    name: str
    params: tuple[Param, ...]
    doc: str = ""
    rank: int = 1  # how many values an 'ints' parameter expands to

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    @functools.cached_property
    def defaults(self) -> dict[str, Any]:
        """Each optional parameter's default, checked and expanded once (defaults are
        immutable values, so every bind can share them)."""
        return {p.name: p.coerce(p.default, self.rank) for p in self.params if not p.required}

    @functools.cached_property
    def positions(self) -> dict[str, int]:
        """Each parameter's index in ``params``."""
        return {p.name: index for index, p in enumerate(self.params)}

    @functools.cached_property
    def required_names(self) -> frozenset[str]:
        return frozenset(p.name for p in self.params if p.required)

    @functools.cached_property
    def all_defaults(self) -> dict[str, Any]:
        """Every parameter in order, with its default (REQUIRED for a required one): what
        a bind starts from."""
        defaults = self.defaults
        return {p.name: defaults.get(p.name, REQUIRED) for p in self.params}


def bind(
    signature: Signature,
    args: tuple[ir.Arg, ...],
    resolve: Callable[[ir.HPO, Param, ir.Span], Any],
    call_span: ir.Span,
) -> dict[str, Any]:
    """Match ``args`` to ``signature`` and return ``{param name: concrete value}``.

    ``resolve`` turns a hyper-parameter node into the value used for this compile (and
    validates its other candidates).
    """
    params = signature.params
    names = signature.names
    given: dict[str, ir.Arg] = {}
    positional = 0
    for arg in args:
        if arg.name is None:
            if positional >= len(params):
                count = sum(1 for a in args if a.name is None)
                raise ParamError(
                    f"takes at most {len(params)} positional argument"
                    f"{'s' if len(params) != 1 else ''}, got {count}",
                    arg.span,
                )
            given[names[positional]] = arg
            positional += 1
    for arg in args:
        name = arg.name
        if name is None:
            continue
        if name not in names:
            raise ParamError(
                f"has no parameter '{name}'",
                arg.span,
                hint=did_you_mean(name, names) or _list_hint(list(names)),
            )
        if name in given:
            raise ParamError(f"gets '{name}' both by position and by name", arg.span)
        given[name] = arg
    rank = signature.rank
    if signature.required_names <= given.keys():
        # every required parameter is given: start from all defaults (in parameter order)
        # and set the given ones, in parameter order (hyper-parameters register in it)
        bound = signature.all_defaults.copy()
        positions = signature.positions
        names_given = sorted(given, key=positions.__getitem__) if len(given) > 1 else given
        for name in names_given:
            bound[name] = _coerced(given[name], params[positions[name]], rank, resolve)
        return bound
    defaults = signature.defaults
    bound = {}
    for param in params:
        name = param.name
        arg = given.get(name)
        if arg is None:
            if name not in defaults:
                raise ParamError(f"needs the parameter '{name}'", call_span)
            bound[name] = defaults[name]
            continue
        bound[name] = _coerced(arg, param, rank, resolve)
    return bound


def _coerced(
    arg: ir.Arg, param: Param, rank: int, resolve: Callable[[ir.HPO, Param, ir.Span], Any]
) -> Any:
    """``arg``'s value for ``param`` (an HPO resolved first); errors name the parameter."""
    value = arg.value
    try:
        if isinstance(value, ir.HPO):
            value = resolve(value, param, arg.span)
        return param.coerce(value, rank)
    except ParamError as exc:
        raise ParamError(
            f"parameter '{param.name}' {exc.message}", exc.span or arg.span, exc.hint
        ) from None


def _list_hint(names: list[str]) -> str | None:
    return "its parameters are: " + ", ".join(names) if names else "it takes no parameters"


def frozen(mapping: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A hashable, ordered form of a parameter mapping for frozen dataclasses."""
    return tuple(mapping.items())


def _bound(value: float) -> str:
    """A range bound as people write it: 1000000 and 4294967295 as such, 0.5 as 0.5."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:g}"
