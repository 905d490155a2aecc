"""Immutable parse-level IR: what the source says, with where it says it.

Values are plain Python literals (int, float, str, bool, None, tuple) or one of the nodes
below. Nothing here is validated against the layer registry yet; that is ``analyzer``'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Span:
    """A source range, 1-based lines and columns (end column exclusive)."""

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


@dataclass(frozen=True)
class Arg:
    """One call argument; ``name`` is None for positional arguments."""

    name: str | None
    value: Value
    span: Span


@dataclass(frozen=True)
class Call:
    """``Name(arg, key=value)`` used as a value (optimizer, schedule, nested layer, HPO)."""

    name: str
    args: tuple[Arg, ...]
    span: Span

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
        return self.options[0] if self.kind == "choice" else self.low

    def candidates(self) -> tuple[Any, ...]:
        """Values to validate: every choice, or both bounds of a range."""
        return self.options if self.kind == "choice" else (self.low, self.high)

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
    """One layer as written: a call (``Dense(64)``) or a block (``Residual { ... }``)."""

    kind: str
    args: tuple[Arg, ...]
    span: Span
    body: tuple[LayerNode, ...] | None = None
    repeat: int = 1
    macro: str | None = None  # set when the layer came from expanding a macro


@dataclass(frozen=True)
class Macro:
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


@dataclass(frozen=True)
class Program:
    """Everything in one source text."""

    networks: tuple[NetworkNode, ...]
    macros: tuple[Macro, ...]
    source: str
    source_name: str
