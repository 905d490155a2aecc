"""The reference parser: the lark LALR(1) grammar in ``grammar.lark`` and its tree → IR
transformer, plus the syntax-error messages.

``parser.parse`` reads programs with the hand-written ``fastparse`` and comes here only when
that parser stops (a mistake in the source): the grammar then names what went wrong, exactly
where. The grammar is also the definition of the language: a test checks that both parsers
give the same IR or the same error for many programs. Imported lazily, so a kernel that only
compiles correct programs never imports lark.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from typing import Any

import lark
from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, VisitError

from neural_jupyter.dsl import ir
from neural_jupyter.dsl.build import IRBuilder, bare_names
from neural_jupyter.dsl.source_text import brackets, check_nesting, display_source
from neural_jupyter.errors import DSLError, DSLSyntaxError

_TERMINAL_WORDS = {
    "NAME": "a name",
    "SIGNED_NUMBER": "a number",
    "INT": "a whole number",
    "STRING": "a string",
    "$END": "the end of the input",
}


def grammar_text() -> str:
    return resources.files("neural_jupyter.dsl").joinpath("grammar.lark").read_text("utf-8")


@functools.cache
def parser() -> Lark:
    """The lark parser (built once per process; its tables may come from a cache file)."""
    return build_parser()


def build_parser() -> Lark:
    """The LALR parser; its tables come from a cache file when one matches this grammar.

    The cache lives in the user cache directory (``paths.cache_dir()``), named after a hash
    of the grammar; lark also checks a hash of grammar, options, lark and Python versions
    stored inside, so a changed grammar or upgraded lark never loads stale tables. Where the
    directory cannot be written, the tables are built in memory as before.
    """
    grammar = grammar_text()
    options: dict[str, Any] = {
        "parser": "lalr",
        "propagate_positions": True,
        "maybe_placeholders": False,
    }
    cache = _cache_file(grammar)
    if cache is not None:
        options["cache"] = cache
    return Lark(grammar, **options)


def _cache_file(grammar: str) -> str | None:
    from neural_jupyter import paths

    try:
        folder = paths.cache_dir()
    except OSError:
        return None
    digest = hashlib.sha256(grammar.encode("utf-8")).hexdigest()[:16]
    return str(folder / f"grammar-{digest}-lark{lark.__version__}.cache")


def parse_with_lark(source: str, source_name: str) -> ir.Program:
    """Parse ``source`` with the grammar; raise the DSL error for the first mistake."""
    check_nesting(source, source_name)
    try:
        tree = parser().parse(source)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, source, source_name) from None
    try:
        networks, macros = _ToIR(source, source_name).transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, DSLError):
            raise exc.orig_exc from None
        raise
    bare = bare_names(networks, macros)
    if bare:
        first = min(bare, key=lambda node: (node.span.line, node.span.column))
        raise bare_name_error(first, source, source_name)
    return ir.Program(tuple(networks), tuple(macros), source, source_name)


def _span(meta: Any) -> ir.Span:
    return ir.Span(meta.line, meta.column, meta.end_line, meta.end_column)


def _token_span(token: Token) -> ir.Span:
    return ir.Span(token.line, token.column, token.end_line, token.end_column)


@v_args(meta=True)
class _ToIR(Transformer):
    """Tree → IR; every rule hands its parts to the shared ``IRBuilder``."""

    def __init__(self, source: str, source_name: str) -> None:
        super().__init__()
        self.build = IRBuilder(source, source_name)

    # --- values ------------------------------------------------------------------------
    def number(self, meta, children):
        return self.build.number(str(children[0]), _span(meta))

    def string(self, meta, children):
        return self.build.string(str(children[0]), _span(meta))

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
        return self.build.call(str(name), args, _span(meta))

    # --- layers ------------------------------------------------------------------------
    def repeat(self, meta, children):
        return self.build.repeat(str(children[0]), _span(meta))

    def placement(self, meta, children):
        token = children[0]
        value = (
            self.build.string(str(token), _token_span(token))
            if token.type == "STRING"
            else ir.Ident(str(token))
        )
        return ir.Setting("device", value, _span(meta))

    def sublayers(self, meta, children):
        return (tuple(children[0]), _span(meta))

    def call_item(self, meta, children):
        head, *rest = children
        device = body = None
        repeat = 1
        for part in rest:
            if isinstance(part, ir.Setting):
                device = part
            elif isinstance(part, tuple):
                body = part[0]
            else:
                repeat = part
        return self.build.call_item(head, device, body, repeat)

    def block_item(self, meta, children):
        name, (body, body_span), *rest = children
        span = ir.Span(name.line, name.column, body_span.end_line, body_span.end_column)
        return self.build.block_item(str(name), span, body, rest[0] if rest else 1)

    def bare_item(self, meta, children):
        name, *rest = children
        return self.build.bare_item(str(name), _token_span(name), rest[0] if rest else 1)

    def layer_list(self, meta, children):
        return list(children)

    def define(self, meta, children):
        name, body = children
        return self.build.define(str(name), _token_span(name), body)

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

    def setting_key(self, meta, children):
        return str(children[0])

    def network_setting(self, meta, children):
        key, value = children
        return ("setting", ir.Setting(key, value, _span(meta)))

    def execution_entry(self, meta, children):
        key, value = children
        return ir.Setting(str(key), value, _span(meta))

    def execution_section(self, meta, children):
        return self.build.execution_section(children, _span(meta))

    def train_setting(self, meta, children):
        key, value = children
        return ir.Setting(str(key), value, _span(meta))

    def train_call(self, meta, children):
        return self.build.train_call(children[0])

    def train_section(self, meta, children):
        return self.build.train_section(children, _span(meta))

    def network(self, meta, children):
        name, *sections = children
        return self.build.network(str(name), _token_span(name), sections)

    def start(self, meta, children):
        return self.build.start(children)


def bare_name_error(node: ir.LayerNode, source: str, source_name: str) -> DSLSyntaxError:
    """A layer written as a bare name that is no macro: the error the grammar gave before
    bare macro names were allowed ("unexpected ...; expected '(' or '{'"), at the token
    after the name."""
    from neural_jupyter.dsl.fastparse import token_after

    found = token_after(source, node.span)
    if found is None:
        lines = source.split("\n")
        token = Token("$END", "", len(source), len(lines), len(lines[-1]) + 1)
        exc: UnexpectedInput = lark.exceptions.UnexpectedToken(token, {"LPAR", "LBRACE"})
    else:
        kind, text, offset, line, column = found
        token = Token(
            kind, text, offset, line, column, line, column + len(text), offset + len(text)
        )
        exc = lark.exceptions.UnexpectedToken(token, {"LPAR", "LBRACE"})
    return _syntax_error(exc, source, source_name)


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
        pattern = parser().get_terminal(name).pattern
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
        marks = brackets(source, opener, closer)
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
