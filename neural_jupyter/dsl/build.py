"""Parse-level IR construction shared by both parsers (the hand-written fast one and lark's).

Each method takes what one grammar rule matched (values already built, plus spans) and
returns the IR node, or raises ``DSLValidationError`` for problems a grammar cannot express
(numbers beyond int64, broken escapes, malformed ``HPO(...)``, duplicate sections...). Both
parsers call these in the same order (children before their parent, left to right), so they
raise the same first error.
"""

from __future__ import annotations

import ast
import warnings
from typing import Any

from neural_jupyter.dsl import ir
from neural_jupyter.errors import DSLValidationError

MAX_INT = 2**63 - 1  # the largest integer a framework can take (int64)
_MAX_DIGITS = len(str(MAX_INT))


class IRBuilder:
    """Builds IR nodes for one source text; errors carry that text's positions."""

    def __init__(self, source: str, source_name: str) -> None:
        self.source = source
        self.source_name = source_name

    def error(self, message: str, span: ir.Span, hint: str | None = None) -> DSLValidationError:
        from neural_jupyter.dsl.source_text import display_source

        return DSLValidationError(
            message,
            line=span.line,
            column=span.column,
            end_column=span.end_column if span.end_line == span.line else None,
            source=display_source(self.source),
            source_name=self.source_name,
            hint=hint,
        )

    # --- values ------------------------------------------------------------------------------
    def number(self, text: str, span: ir.Span) -> int | float:
        if len(text) < _MAX_DIGITS and text.isdigit():  # the usual case, surely in range
            return int(text)
        if "." in text or "e" in text or "E" in text:
            return float(text)
        if len(text.lstrip("+-").lstrip("0")) > _MAX_DIGITS or not -MAX_INT <= int(text) <= MAX_INT:
            raise self.error(f"this number is too large (the largest is {MAX_INT:,})", span)
        return int(text)

    def string(self, text: str, span: ir.Span) -> str:
        if "\\" not in text and "\r" not in text and "\x00" not in text:
            return text[1:-1]  # what literal_eval gives, faster
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # an unknown escape like "\d" stays as written
                return ast.literal_eval(text)
        except (SyntaxError, ValueError):
            raise self.error(
                "this string has a broken escape sequence (such as \\N, \\u or \\x)",
                span,
                hint="write \\\\ for a backslash",
            ) from None

    def call(self, name: str, args: list[ir.Arg], span: ir.Span) -> ir.Call | ir.HPO:
        seen: set[str] = set()
        for arg in args if len(args) > 1 else ():  # one argument is always in order
            if arg.name is None:
                if seen:
                    raise self.error(
                        "a positional argument cannot follow a keyword argument",
                        arg.span,
                        hint="put positional arguments first, or name this one too",
                    )
            elif arg.name in seen:
                raise self.error(f"argument '{arg.name}' is given twice", arg.span)
            else:
                seen.add(arg.name)
        if name == "HPO":
            return self.hpo(tuple(args), span)
        return ir.Call(name, tuple(args), span)

    def hpo(self, args: tuple[ir.Arg, ...], span: ir.Span) -> ir.HPO:
        usage = (
            "write HPO(choice(a, b, ...)), HPO(range(low, high, step=s)) "
            "or HPO(log_range(low, high))"
        )
        positional = [a for a in args if a.name is None]
        names = {a.name: a for a in args if a.name is not None}
        unknown = set(names) - {"name"}
        if len(positional) != 1 or unknown or not isinstance(positional[0].value, ir.Call):
            raise self.error("malformed hyper-parameter expression", span, hint=usage)
        name = names["name"].value if "name" in names else None
        if name is not None and not isinstance(name, str):
            raise self.error("HPO name must be a string", names["name"].span)
        inner: ir.Call = positional[0].value
        values = [a.value for a in inner.positional]
        for arg in inner.args:
            nested = inner.name == "choice" and arg.name is None and isinstance(arg.value, ir.HPO)
            if isinstance(arg.value, (ir.Call, ir.HPO, ir.Ident)) and not nested:
                raise self.error("HPO values must be literals", arg.span, hint=usage)
        if inner.name == "choice":
            if inner.keywords or not values:
                raise self.error("choice() takes one or more values", inner.span, hint=usage)
            literals = [v for v in values if not isinstance(v, ir.HPO)]
            if len(set(map(repr, literals))) != len(literals):
                raise self.error("choice() lists a value twice", inner.span)
            if any(isinstance(v, ir.HPO) and v.name is not None for v in values):
                raise self.error(
                    "a search space nested in choice() cannot have its own name",
                    inner.span,
                    hint='name the outer HPO(...): HPO(choice(...), name="...")',
                )
            return ir.HPO("choice", options=tuple(values), name=name, span=span)
        if inner.name in ("range", "log_range"):
            return self._hpo_range(inner, values, name, span, usage)
        raise self.error(
            f"unknown search space '{inner.name}'", inner.span, hint=usage + " (did you mean one?)"
        )

    def _hpo_range(
        self, inner: ir.Call, values: list[Any], name: Any, span: ir.Span, usage: str
    ) -> ir.HPO:
        kwargs = {a.name: a for a in inner.keywords}
        extra = set(kwargs) - {"step", "low", "high"}
        if extra:
            raise self.error(f"{inner.name}() has no argument '{sorted(extra)[0]}'", inner.span)
        for position, key in enumerate(("low", "high", "step")):
            if key in kwargs and len(values) > position:
                raise self.error(
                    f"{inner.name}() gets '{key}' both by position and by name", kwargs[key].span
                )
        low = kwargs["low"].value if "low" in kwargs else (values[0] if values else None)
        high = (
            kwargs["high"].value if "high" in kwargs else (values[1] if len(values) > 1 else None)
        )
        step = (
            kwargs["step"].value if "step" in kwargs else (values[2] if len(values) > 2 else None)
        )
        numbers = [v for v in (low, high, step) if v is not None]
        if low is None or high is None or len(values) > 3:
            raise self.error(f"{inner.name}() needs a low and a high bound", inner.span, hint=usage)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
            raise self.error(f"{inner.name}() bounds must be numbers", inner.span)
        if not low < high:
            raise self.error(f"{inner.name}() needs low < high, got {low!r}, {high!r}", inner.span)
        if step is not None and step <= 0:
            raise self.error("step must be positive", inner.span)
        if inner.name == "log_range" and low <= 0:
            raise self.error("log_range() needs a positive lower bound", inner.span)
        return ir.HPO(inner.name, low=low, high=high, step=step, name=name, span=span)

    # --- layers ------------------------------------------------------------------------------
    def repeat(self, text: str, span: ir.Span) -> int:
        count = int(text)
        if count < 1:
            raise self.error("repetition count must be at least 1", span)
        return count

    def call_item(
        self,
        head: ir.Call | ir.HPO,
        device: ir.Setting | None,
        body: tuple[ir.LayerNode, ...] | None,
        repeat: int,
    ) -> ir.LayerNode:
        if isinstance(head, ir.HPO):
            raise self.error("a layer cannot be a hyper-parameter expression", head.span)
        form = "call" if body is None else "call_block"
        return ir.LayerNode(head.name, head.args, head.span, body, repeat, None, form, device)

    def block_item(
        self, name: str, span: ir.Span, body: tuple[ir.LayerNode, ...], repeat: int
    ) -> ir.LayerNode:
        return ir.LayerNode(name, (), span, body=body, repeat=repeat, form="block")

    def bare_item(self, name: str, span: ir.Span, repeat: int) -> ir.LayerNode:
        return ir.LayerNode(name, (), span, repeat=repeat, form="bare")

    def define(self, name: str, span: ir.Span, body: list[ir.LayerNode]) -> ir.Macro:
        return ir.Macro(name, tuple(body), span)

    # --- network -----------------------------------------------------------------------------
    def train_call(self, value: Any) -> Any:
        if isinstance(value, ir.HPO):
            raise self.error(
                "a train entry cannot be a hyper-parameter expression",
                value.span,
                hint="write 'name: HPO(...)', e.g. 'epochs: HPO(choice(5, 10))'",
            )
        return value

    def train_section(self, entries: list[Any], span: ir.Span) -> tuple[str, Any]:
        seen: dict[str, ir.Span] = {}
        for entry in entries:
            key = entry.key if isinstance(entry, ir.Setting) else getattr(entry, "name", "HPO")
            if key in seen:
                raise self.error(f"train setting '{key}' is given twice", entry.span)
            seen[key] = entry.span
        return ("train", (tuple(entries), span))

    def execution_section(self, entries: list[ir.Setting], span: ir.Span) -> tuple[str, Any]:
        seen: set[str] = set()
        for entry in entries:
            if entry.key in seen:
                raise self.error(f"execution setting '{entry.key}' is given twice", entry.span)
            seen.add(entry.key)
        return ("execution", (tuple(entries), span))

    def network(self, name: str, span: ir.Span, sections: list[Any]) -> ir.NetworkNode:
        found: dict[str, Any] = {}
        spans: dict[str, ir.Span] = {}
        macros: list[ir.Macro] = []
        settings: list[ir.Setting] = []
        for section in sections:
            if isinstance(section, ir.Macro):
                macros.append(section)
                continue
            key, value = section
            if key == "setting":
                settings.append(value)
                key = value.key
            span_of = value.span if isinstance(value, ir.Setting) else value[1]
            if key in found:
                raise self.error(
                    f"section '{key}' appears twice in network '{name}'",
                    span_of,
                    hint=f"the first one is at {spans[key].where}",
                )
            found[key] = value
            spans[key] = span_of
        layers = found.get("layers")
        train = found.get("train")
        execution = found.get("execution")
        return ir.NetworkNode(
            name=name,
            span=span,
            input=found.get("input"),
            layers=layers[0] if layers else None,
            layers_span=layers[1] if layers else None,
            loss=found.get("loss"),
            optimizer=found.get("optimizer"),
            metrics=found.get("metrics"),
            train=train[0] if train else (),
            macros=tuple(macros),
            execution=execution[0] if execution else (),
            execution_span=execution[1] if execution else None,
            settings=tuple(settings),
        )

    def start(
        self, items: list[ir.NetworkNode | ir.Macro]
    ) -> tuple[list[ir.NetworkNode], list[ir.Macro]]:
        networks = [c for c in items if isinstance(c, ir.NetworkNode)]
        macros = [c for c in items if isinstance(c, ir.Macro)]
        names: dict[str, ir.Span] = {}
        for item in [*networks, *macros]:
            if item.name in names:
                raise self.error(
                    f"'{item.name}' is defined twice",
                    item.span,
                    hint=f"the first definition is at {names[item.name].where}",
                )
            names[item.name] = item.span
        return networks, macros


def bare_names(networks: list[ir.NetworkNode], macros: list[ir.Macro]) -> list[ir.LayerNode]:
    """Layers written as a bare name that is not a macro: these need parentheses."""
    known = {m.name for m in macros}
    for network in networks:
        known.update(m.name for m in network.macros)
    found: list[ir.LayerNode] = []

    def visit(nodes: tuple[ir.LayerNode, ...] | None) -> None:
        for node in nodes or ():
            if node.form == "bare" and node.kind not in known:
                found.append(node)
            visit(node.body)

    for macro in macros:
        visit(macro.body)
    for network in networks:
        for macro in network.macros:
            visit(macro.body)
        visit(network.layers)
    return found
