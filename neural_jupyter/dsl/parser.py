"""Source text → parse-level IR (``ir.Program``), with readable syntax errors."""

from __future__ import annotations

import ast
import functools
import re
import warnings
from importlib import resources
from typing import Any

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, VisitError

from neural_jupyter.dsl import ir
from neural_jupyter.errors import DSLError, DSLSyntaxError, DSLValidationError

_TERMINAL_WORDS = {
    "NAME": "a name",
    "SIGNED_NUMBER": "a number",
    "INT": "a whole number",
    "STRING": "a string",
    "$END": "the end of the input",
}


@functools.cache
def _parser() -> Lark:
    grammar = resources.files("neural_jupyter.dsl").joinpath("grammar.lark").read_text("utf-8")
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=False)


@functools.lru_cache(maxsize=64)
def parse_cached(source: str, source_name: str = "<cell>") -> ir.Program:
    """``parse`` with a small cache: the IR is immutable, and notebooks and sweeps compile
    the same source over and over (re-run cells, one compile per trial)."""
    return parse(source, source_name)


def clear_cache() -> None:
    parse_cached.cache_clear()


def parse(source: str, source_name: str = "<cell>") -> ir.Program:
    """Parse model-language ``source`` into an ``ir.Program``.

    Raises ``DSLSyntaxError`` (grammar) or ``DSLValidationError`` (duplicate sections,
    malformed HPO expressions) carrying line, column and a caret snippet.
    """
    _check_nesting(source, source_name)
    try:
        tree = _parser().parse(source)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, source, source_name) from None
    try:
        networks, macros = _ToIR(source, source_name).transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, DSLError):
            raise exc.orig_exc from None
        raise
    return ir.Program(tuple(networks), tuple(macros), source, source_name)


MAX_INT = 2**63 - 1  # the largest integer a framework can take (int64)
MAX_NESTING = 64  # brackets and blocks inside each other; deeper input is surely a mistake


def display_source(source: str) -> str:
    """``source`` as error snippets show it: only '\\n' ends a line, as it does for the parser.

    Other characters that ``str.splitlines`` treats as line breaks (form feed, '\\r', '\\x85',
    '\\u2028'...) become spaces, so the line shown is the line the error is on.
    """
    return _LINE_BREAKS.sub(" ", source.replace("\r\n", "\n"))


_LINE_BREAKS = re.compile("[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def _check_nesting(source: str, source_name: str) -> None:
    depth = 0
    for _, char, line, column in _brackets(source, "([{", ")]}"):
        depth = depth + 1 if char in "([{" else max(depth - 1, 0)
        if depth > MAX_NESTING:
            raise DSLSyntaxError(
                f"brackets and blocks are nested more than {MAX_NESTING} levels deep",
                line=line,
                column=column,
                source=display_source(source),
                source_name=source_name,
            )


def _span(meta: Any) -> ir.Span:
    return ir.Span(meta.line, meta.column, meta.end_line, meta.end_column)


def _token_span(token: Token) -> ir.Span:
    return ir.Span(token.line, token.column, token.end_line, token.end_column)


@v_args(meta=True)
class _ToIR(Transformer):
    def __init__(self, source: str, source_name: str) -> None:
        super().__init__()
        self.source = source
        self.source_name = source_name

    def _error(self, message: str, span: ir.Span, hint: str | None = None) -> DSLValidationError:
        return DSLValidationError(
            message,
            line=span.line,
            column=span.column,
            end_column=span.end_column if span.end_line == span.line else None,
            source=display_source(self.source),
            source_name=self.source_name,
            hint=hint,
        )

    # --- values ------------------------------------------------------------------------
    def number(self, meta, children):
        text = str(children[0])
        if any(c in text for c in ".eE"):
            return float(text)
        digits = text.lstrip("+-").lstrip("0")
        if len(digits) > len(str(MAX_INT)) or int(text) > MAX_INT or int(text) < -MAX_INT:
            raise self._error(f"this number is too large (the largest is {MAX_INT:,})", _span(meta))
        return int(text)

    def string(self, meta, children):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # an unknown escape like "\\d" stays as written
                return ast.literal_eval(str(children[0]))
        except (SyntaxError, ValueError):
            raise self._error(
                "this string has a broken escape sequence (such as \\N, \\u or \\x)",
                _span(meta),
                hint="write \\\\ for a backslash",
            ) from None

    def true(self, meta, children):
        return True

    def false(self, meta, children):
        return False

    def none(self, meta, children):
        return None

    def ident(self, meta, children):
        return ir.Ident(str(children[0]))

    def tuple(self, meta, children):
        return tuple(children)

    def list(self, meta, children):
        return tuple(children)

    def posarg(self, meta, children):
        return ir.Arg(None, children[0], _span(meta))

    def kwarg(self, meta, children):
        name, value = children
        return ir.Arg(str(name), value, _span(meta))

    def call(self, meta, children):
        name, *args = children
        span = _span(meta)
        seen: set[str] = set()
        for arg in args:
            if arg.name is None and seen:
                raise self._error(
                    "a positional argument cannot follow a keyword argument",
                    arg.span,
                    hint="put positional arguments first, or name this one too",
                )
            if arg.name is not None:
                if arg.name in seen:
                    raise self._error(f"argument '{arg.name}' is given twice", arg.span)
                seen.add(arg.name)
        if str(name) == "HPO":
            return self._hpo(tuple(args), span)
        return ir.Call(str(name), tuple(args), span)

    def _hpo(self, args: tuple[ir.Arg, ...], span: ir.Span) -> ir.HPO:
        usage = (
            "write HPO(choice(a, b, ...)), HPO(range(low, high, step=s)) "
            "or HPO(log_range(low, high))"
        )
        positional = [a for a in args if a.name is None]
        names = {a.name: a for a in args if a.name is not None}
        unknown = set(names) - {"name"}
        if len(positional) != 1 or unknown or not isinstance(positional[0].value, ir.Call):
            raise self._error("malformed hyper-parameter expression", span, hint=usage)
        name = names["name"].value if "name" in names else None
        if name is not None and not isinstance(name, str):
            raise self._error("HPO name must be a string", names["name"].span)
        inner: ir.Call = positional[0].value
        values = [a.value for a in inner.positional]
        for arg in inner.args:
            if isinstance(arg.value, (ir.Call, ir.HPO, ir.Ident)):
                raise self._error("HPO values must be literals", arg.span, hint=usage)
        if inner.name == "choice":
            if inner.keywords or not values:
                raise self._error("choice() takes one or more values", inner.span, hint=usage)
            if len(set(map(repr, values))) != len(values):
                raise self._error("choice() lists a value twice", inner.span)
            return ir.HPO("choice", options=tuple(values), name=name, span=span)
        if inner.name in ("range", "log_range"):
            return self._hpo_range(inner, values, name, span, usage)
        raise self._error(
            f"unknown search space '{inner.name}'", inner.span, hint=usage + " (did you mean one?)"
        )

    def _hpo_range(self, inner, values, name, span, usage) -> ir.HPO:
        kwargs = {a.name: a for a in inner.keywords}
        extra = set(kwargs) - {"step", "low", "high"}
        if extra:
            raise self._error(f"{inner.name}() has no argument '{sorted(extra)[0]}'", inner.span)
        for position, key in enumerate(("low", "high", "step")):
            if key in kwargs and len(values) > position:
                raise self._error(
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
            raise self._error(
                f"{inner.name}() needs a low and a high bound", inner.span, hint=usage
            )
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
            raise self._error(f"{inner.name}() bounds must be numbers", inner.span)
        if not low < high:
            raise self._error(f"{inner.name}() needs low < high, got {low!r}, {high!r}", inner.span)
        if step is not None and step <= 0:
            raise self._error("step must be positive", inner.span)
        if inner.name == "log_range" and low <= 0:
            raise self._error("log_range() needs a positive lower bound", inner.span)
        return ir.HPO(inner.name, low=low, high=high, step=step, name=name, span=span)

    # --- layers ------------------------------------------------------------------------
    def repeat(self, meta, children):
        count = int(children[0])
        if count < 1:
            raise self._error("repetition count must be at least 1", _span(meta))
        return count

    def block(self, meta, children):
        name, body = children
        return ir.LayerNode(str(name), (), _span(meta), body=tuple(body))

    def layer_item(self, meta, children):
        head, *rest = children
        repeat = rest[0] if rest else 1
        if isinstance(head, ir.HPO):
            raise self._error("a layer cannot be a hyper-parameter expression", head.span)
        if isinstance(head, ir.Call):
            return ir.LayerNode(head.name, head.args, head.span, repeat=repeat)
        return ir.LayerNode(head.kind, head.args, head.span, body=head.body, repeat=repeat)

    def layer_list(self, meta, children):
        return list(children)

    def define(self, meta, children):
        name, body = children
        return ir.Macro(str(name), tuple(body), _token_span(name))

    # --- network -----------------------------------------------------------------------
    def input_section(self, meta, children):
        return ("input", ir.Setting("input", children[0], _span(meta)))

    def layers_section(self, meta, children):
        return ("layers", (tuple(children[0]), _span(meta)))

    def loss_section(self, meta, children):
        return ("loss", ir.Setting("loss", children[0], _span(meta)))

    def optimizer_section(self, meta, children):
        return ("optimizer", ir.Setting("optimizer", children[0], _span(meta)))

    def metrics_section(self, meta, children):
        return ("metrics", ir.Setting("metrics", children[0], _span(meta)))

    def train_setting(self, meta, children):
        key, value = children
        return ir.Setting(str(key), value, _span(meta))

    def train_call(self, meta, children):
        if isinstance(children[0], ir.HPO):
            raise self._error(
                "a train entry cannot be a hyper-parameter expression",
                children[0].span,
                hint="write 'name: HPO(...)', e.g. 'epochs: HPO(choice(5, 10))'",
            )
        return children[0]

    def train_section(self, meta, children):
        seen: dict[str, ir.Span] = {}
        for entry in children:
            key = entry.key if isinstance(entry, ir.Setting) else getattr(entry, "name", "HPO")
            span = entry.span
            if key in seen:
                raise self._error(f"train setting '{key}' is given twice", span)
            seen[key] = span
        return ("train", (tuple(children), _span(meta)))

    def network(self, meta, children):
        name, *sections = children
        found: dict[str, Any] = {}
        spans: dict[str, ir.Span] = {}
        macros: list[ir.Macro] = []
        for section in sections:
            if isinstance(section, ir.Macro):
                macros.append(section)
                continue
            key, value = section
            span = value.span if isinstance(value, ir.Setting) else value[1]
            if key in found:
                raise self._error(
                    f"section '{key}' appears twice in network '{name}'",
                    span,
                    hint=f"the first one is at {spans[key].where}",
                )
            found[key] = value
            spans[key] = span
        layers = found.get("layers")
        train = found.get("train")
        return ir.NetworkNode(
            name=str(name),
            span=_token_span(name),
            input=found.get("input"),
            layers=layers[0] if layers else None,
            layers_span=layers[1] if layers else None,
            loss=found.get("loss"),
            optimizer=found.get("optimizer"),
            metrics=found.get("metrics"),
            train=train[0] if train else (),
            macros=tuple(macros),
        )

    def start(self, meta, children):
        networks = [c for c in children if isinstance(c, ir.NetworkNode)]
        macros = [c for c in children if isinstance(c, ir.Macro)]
        names: dict[str, ir.Span] = {}
        for item in [*networks, *macros]:
            if item.name in names:
                raise self._error(
                    f"'{item.name}' is defined twice",
                    item.span,
                    hint=f"the first definition is at {names[item.name].where}",
                )
            names[item.name] = item.span
        return networks, macros


# --- syntax errors ---------------------------------------------------------------------


def _syntax_error(exc: UnexpectedInput, source: str, source_name: str) -> DSLSyntaxError:
    """Turn a lark error into a message a notebook user can act on."""
    brace = _bracket_problem(exc, source)
    if brace is not None:
        message, line, column, hint = brace
        return DSLSyntaxError(
            message,
            line=line,
            column=column,
            source=display_source(source),
            source_name=source_name,
            hint=hint,
        )
    line, column = getattr(exc, "line", None), getattr(exc, "column", None)
    if line in (None, -1):
        line, column = _end_position(source)
    hint = None
    if isinstance(exc, UnexpectedCharacters):
        char = source[exc.pos_in_stream] if exc.pos_in_stream < len(source) else ""
        message = f"unexpected character {char!r}"
        if char in "\"'":
            hint = "strings must be closed on the same line"
    else:
        token = getattr(exc, "token", None)
        found = _describe_token(token)
        accepted = _accepted_terminals(exc)
        expected = _describe_expected(accepted)
        message = f"unexpected {found}"
        if expected:
            message += "; expected " + _join_or(expected)
        hint = _hint_for(token, accepted)
    width = len(str(getattr(exc, "token", "") or "")) or 1
    return DSLSyntaxError(
        message,
        line=line,
        column=column,
        end_column=(column + width) if column else None,
        source=display_source(source),
        source_name=source_name,
        hint=hint,
    )


def _accepted_terminals(exc: UnexpectedInput) -> set[str]:
    """Terminals the parser would really accept here (LALR's own list can be too wide)."""
    interactive = getattr(exc, "interactive_parser", None)
    if interactive is not None:
        try:
            return set(interactive.accepts()) - {"$END"} or {"$END"}
        except Exception:  # pragma: no cover - fall back to lark's estimate
            pass
    return set(getattr(exc, "expected", ()) or ())


def _describe_token(token: Token | None) -> str:
    if token is None or token.type == "$END":
        return "end of input"
    kinds = {"NAME": "name", "SIGNED_NUMBER": "number", "INT": "number", "STRING": "string"}
    if token.type in kinds:
        return f"{kinds[token.type]} {token!s}"
    return f"'{token!s}'"


def _describe_terminal(name: str) -> str:
    if name in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[name]
    try:
        pattern = _parser().get_terminal(name).pattern
        return f"'{pattern.value}'"
    except KeyError:
        return name.lower()


_VALUE_STARTS = {"SIGNED_NUMBER", "STRING", "NAME", "LPAR", "LSQB"}


def _describe_expected(accepted: set[str]) -> list[str]:
    """Name what may come next; the many ways a value can start read as 'a value'."""
    if not accepted >= _VALUE_STARTS:
        return sorted({_describe_terminal(t) for t in accepted})
    rest = {_describe_terminal(t) for t in accepted - _VALUE_STARTS}
    punctuation = sorted(word for word in rest if not word.strip("'").isalpha())
    return ["a value", *punctuation]


def _join_or(items: list[str]) -> str:
    unique = list(dict.fromkeys(items))
    if len(unique) > 6:
        unique = [*unique[:6], "..."]
    return unique[0] if len(unique) == 1 else ", ".join(unique[:-1]) + " or " + unique[-1]


def _hint_for(token: Token | None, expected: set[str]) -> str | None:
    if token is None:
        return None
    if token.type in ("NAME", "STRING", "SIGNED_NUMBER") and "RPAR" in expected:
        return "separate arguments with commas"
    if token.type == "NAME" and "COLON" in expected:
        return "sections are written 'name: value' (e.g. 'input: (28, 28, 1)')"
    if expected == {"LPAR", "LBRACE"}:
        return "a layer is written with parentheses, e.g. 'Dense(64)' or 'Flatten()'"
    if token.type == "EQUAL":
        return "use ':' inside sections and '=' only for keyword arguments"
    return None


def _end_position(source: str) -> tuple[int, int]:
    lines = display_source(source).splitlines() or [""]
    return len(lines), len(lines[-1]) + 1


_TOP_LEVEL = {"DEFINE", "NETWORK"}


def _brackets(
    source: str, opening: str = "{", closing: str = "}"
) -> list[tuple[int, str, int, int]]:
    """Brackets outside strings and comments: (offset, char, line, column)."""
    wanted = opening + closing
    found: list[tuple[int, str, int, int]] = []
    line, line_start = 1, 0
    quote: str | None = None
    i = 0
    while i < len(source):
        ch = source[i]
        if ch == "\n":
            line, line_start, quote = line + 1, i + 1, None
        elif quote:
            if ch == "\\" and source[i + 1 : i + 2] != "\n":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#" or source.startswith("//", i):
            end = source.find("\n", i)
            if end < 0:
                break
            i = end
            continue
        elif ch in wanted:
            found.append((i, ch, line, i - line_start + 1))
        i += 1
    return found


_CLOSERS = {"{": ("}", "RBRACE"), "(": (")", "RPAR"), "[": ("]", "RSQB")}


def _bracket_problem(exc: UnexpectedInput, source: str) -> tuple[str, int, int, str] | None:
    """Explain a parse error that comes from a missing or extra bracket or brace.

    Only when that kind of bracket does not balance in the whole source and the parser
    stopped where it matters: it wanted the closing bracket, met a closing bracket with
    nothing open, reached the end of the input, or (braces) was back outside every network.
    """
    if isinstance(exc, UnexpectedCharacters):
        return None
    token = getattr(exc, "token", None)
    at_end = token is None or token.type == "$END" or isinstance(exc, UnexpectedEOF)
    stop = len(source) if at_end else token.start_pos
    where = "the end of the input" if at_end else f"line {token.line}, column {token.column}"
    accepted = _accepted_terminals(exc)
    top_level = bool(accepted) and accepted <= _TOP_LEVEL | {"$END"}
    unclosed: list[tuple[int, str, int, int]] = []  # innermost open bracket of each kind
    for opener, (closer, terminal) in _CLOSERS.items():
        marks = _brackets(source, opener, closer)
        opened = sum(1 for _, ch, _, _ in marks if ch == opener)
        closed = len(marks) - opened
        if opened == closed:
            continue
        stack: list[tuple[int, int, int]] = []
        last_close: tuple[int, int, tuple[int, int, int]] | None = None
        for offset, ch, line, column in marks:
            if offset >= stop:
                break
            if ch == opener:
                stack.append((offset, line, column))
            elif stack:
                last_close = (line, column, stack.pop())
        if opened > closed:
            if stack and (at_end or terminal in accepted or (opener == "{" and top_level)):
                unclosed.append((stack[-1][0], opener, stack[-1][1], stack[-1][2]))
            continue
        if token is not None and token.type == terminal and not stack:
            return (
                f"unmatched '{closer}'",
                token.line,
                token.column,
                f"remove it or add the matching '{opener}'",
            )
        if opener == "{" and top_level and last_close is not None:
            line, column, (_, open_line, open_column) = last_close
            return (
                "unmatched '}'",
                line,
                column,
                f"it ends the block opened at line {open_line}, column {open_column} too "
                f"early, leaving {where} outside it; remove it or add the matching '{{'",
            )
    if not unclosed:
        return None
    _, opener, line, column = max(unclosed)  # the innermost: opened last
    closer = _CLOSERS[opener][0]
    what = "this block" if opener == "{" else "it"
    return (
        f"'{opener}' is never closed",
        line,
        column,
        f"add the matching '{closer}' to end {what} (before {where})",
    )
