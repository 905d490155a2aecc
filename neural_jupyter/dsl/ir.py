"""Immutable parse-level IR: what the source says, with where it says it.

Values are plain Python literals (int, float, str, bool, None, tuple) or one of the nodes
below. Nothing here is validated against the layer registry yet; that is ``analyzer``'s job.

Fast ``__init__``: frozen dataclasses made once per layer or call (here ``Call`` and
``LayerNode``; ``spec.LayerSpec``) define their own ``__init__``. The one ``dataclass``
generates sets each field through ``object.__setattr__`` (about 3 us for a LayerSpec), while
filling the instance's ``__dict__`` in one call takes a third of that. The classes stay
frozen dataclasses (fields, repr, eq, hash, ``dataclasses.replace``);
``tests/test_dsl_fast_init.py`` checks that each such ``__init__`` takes exactly the
dataclass's init fields, with the same defaults, and sets every field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple


class Span(NamedTuple):
    """A source range, 1-based lines and columns (end column exclusive).

    A named tuple, not a dataclass: the parser makes one per argument and call, and tuples
    are several times cheaper to create.
    """

    line: int
    column: int
    end_line: int
    end_column: int

    @property
    def where(self) -> str:
        return f"line {self.line}, column {self.column}"


@dataclass(frozen=True)
class Ident:
    """A bare identifier used as a value (``activation=relu``)."""

    name: str


class Arg(NamedTuple):
    """One call argument; ``name`` is None for positional arguments. (A named tuple, like
    ``Span``: one per argument, cheap to make.)"""

    name: str | None
    value: Value
    span: Span


@dataclass(frozen=True)
class Call:
    """``Name(arg, key=value)`` used as a value (optimizer, schedule, nested layer, HPO)."""

    name: str
    args: tuple[Arg, ...]
    span: Span

    def __init__(self, name: str, args: tuple[Arg, ...], span: Span) -> None:
        # see "Fast ``__init__``" at the top of this module
        self.__dict__.update(name=name, args=args, span=span)

    @property
    def positional(self) -> tuple[Arg, ...]:
        return tuple(a for a in self.args if a.name is None)

    @property
    def keywords(self) -> tuple[Arg, ...]:
        return tuple(a for a in self.args if a.name is not None)


@dataclass(frozen=True)
class HPO:
    """A hyper-parameter search-space node: ``HPO(choice(...))``, ``range``, ``log_range``."""

    kind: str  # "choice" | "range" | "log_range"
    options: tuple[Any, ...] = ()
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    name: str | None = None
    span: Span | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        """Stable identity of this node in its source (its position)."""
        return f"{self.span.line}:{self.span.column}" if self.span else repr(self)

    def default(self) -> Any:
        """The value used when no override is given: first choice or lower bound."""
        if self.kind != "choice":
            return self.low
        first = self.options[0]
        return first.default() if isinstance(first, HPO) else first

    def candidates(self) -> tuple[Any, ...]:
        """Values to validate: every choice, or both bounds of a range (nested ones too)."""
        if self.kind != "choice":
            return (self.low, self.high)
        values: list[Any] = []
        for option in self.options:
            values.extend(option.candidates() if isinstance(option, HPO) else (option,))
        return tuple(values)

    def nodes(self) -> tuple[HPO, ...]:
        """This node and the search spaces nested in its choices."""
        found: list[HPO] = [self]
        for option in self.options:
            if isinstance(option, HPO):
                found.extend(option.nodes())
        return tuple(found)

    @property
    def nested(self) -> bool:
        """A choice among search spaces (Neural DSL: ``choice(HPO(range(...)), 512)``)."""
        return any(isinstance(option, HPO) for option in self.options)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in this search space."""
        if self.kind != "choice":
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            return number and self.low <= value <= self.high
        return any(
            option.contains(value) if isinstance(option, HPO) else value == option
            for option in self.options
        )

    def describe(self) -> str:
        """The search space as the model language writes it."""
        if self.kind == "choice":
            return "choice(" + ", ".join(written(o) for o in self.options) + ")"
        step = f", step={self.step!r}" if self.step is not None else ""
        return f"{self.kind}({self.low!r}, {self.high!r}{step})"


Value = int | float | str | bool | tuple | Ident | Call | HPO | None


def written(value: Any) -> str:
    """``value`` as the model language writes it (for messages)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if value is None:
        return "None"
    if isinstance(value, Ident):
        return value.name
    if isinstance(value, Call):
        return f"{value.name}(...)"
    if isinstance(value, HPO):
        return f"HPO({value.describe()})"
    if isinstance(value, tuple):
        return "(" + ", ".join(written(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


@dataclass(frozen=True)
class LayerNode:
    """One layer as written: a call (``Dense(64)``) or a block (``Residual { ... }``).

    Neural DSL forms: a call followed by a block (``ResidualConnection() { ... }``, ``form``
    "call_block"), a bare name (a macro used without ``()``, ``form`` "bare") and a device
    placement (``Dense(64) @ "cuda:0"``).
    """

    kind: str
    args: tuple[Arg, ...]
    span: Span
    body: tuple[LayerNode, ...] | None = None
    repeat: int = 1
    macro: str | None = None  # set when the layer came from expanding a macro
    form: str = "call"  # call | block | call_block | bare
    device: Setting | None = None  # `@ "cuda:0"`: key "device", the span of the placement

    def __init__(
        self,
        kind: str,
        args: tuple[Arg, ...],
        span: Span,
        body: tuple[LayerNode, ...] | None = None,
        repeat: int = 1,
        macro: str | None = None,
        form: str = "call",
        device: Setting | None = None,
    ) -> None:
        # see "Fast ``__init__``" at the top of this module
        self.__dict__.update(
            kind=kind,
            args=args,
            span=span,
            body=body,
            repeat=repeat,
            macro=macro,
            form=form,
            device=device,
        )


@dataclass(frozen=True)
class Macro:
    """A `define Name { ... }` block."""

    name: str
    body: tuple[LayerNode, ...]
    span: Span


@dataclass(frozen=True)
class Setting:
    """A ``key: value`` entry (network section or train setting)."""

    key: str
    value: Value
    span: Span


@dataclass(frozen=True)
class NetworkNode:
    """A `network Name { ... }` block, sections as written."""

    name: str
    span: Span
    input: Setting | None
    layers: tuple[LayerNode, ...] | None
    layers_span: Span | None
    loss: Setting | None
    optimizer: Setting | None
    metrics: Setting | None
    train: tuple[Setting | Call, ...]
    macros: tuple[Macro, ...]
    # Neural DSL: `execution { device: ... }` entries, and train settings written at
    # network level (`batch_size: 64` outside `train { }`)
    execution: tuple[Setting, ...] = ()
    execution_span: Span | None = None
    settings: tuple[Setting, ...] = ()


@dataclass(frozen=True)
class Program:
    """Everything in one source text."""

    networks: tuple[NetworkNode, ...]
    macros: tuple[Macro, ...]
    source: str
    source_name: str
