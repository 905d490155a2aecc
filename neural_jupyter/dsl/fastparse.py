"""A hand-written recursive-descent parser for the model language: the fast path of
``parser.parse``.

It reads exactly the language of ``grammar.lark`` and builds the same IR, with the same
spans, through the same ``IRBuilder``; ``tests/test_dsl_parsers.py`` compares the two on
thousands of programs. It does not explain mistakes: at the first token it does not expect
(or any problem the builder reports) it gives up, and ``parser.parse`` lets the lark grammar
parse the source again to produce the error message. That keeps one definition of every
message and lets this parser stay small and fast (no lark import, no table construction, no
parse tree: tokens go straight to IR).

Lexing follows lark's: keywords are the grammar's quoted words (a NAME spelled like one is
always the keyword), whitespace is ``[ \\t\\f\\r\\n]``, comments start with ``#`` or ``//``,
and numbers and names are ASCII. A whole number after ``*`` must be plain digits (lark lexes
it as INT there); anything else sends the source to lark.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from itertools import accumulate, count
from operator import add
from typing import Any

from neural_jupyter.dsl import ir
from neural_jupyter.dsl.build import IRBuilder, bare_names
from neural_jupyter.errors import DSLError, DSLSyntaxError

MAX_NESTING = 64  # same limit as parser.MAX_NESTING: deeper input goes to the slow path

KEYWORDS = frozenset(
    {
        "define",
        "network",
        "input",
        "layers",
        "loss",
        "optimizer",
        "metrics",
        "train",
        "execution",
        "execute",
        "batch_size",
        "epochs",
        "validation_split",
        "search_method",
        "true",
        "True",
        "false",
        "False",
        "None",
        "NONE",
        "none",
        "null",
    }
)
SETTING_KEYS = frozenset({"batch_size", "epochs", "validation_split", "search_method"})
_SECTIONS = frozenset({"input", "layers", "loss", "optimizer", "metrics"})
_CONSTANTS = {
    "true": True,
    "True": True,
    "false": False,
    "False": False,
    "None": None,
    "NONE": None,
    "none": None,
    "null": None,
}

_TOKEN = re.compile(
    r"(?P<ws>[ \t\f\r\n]+|\#[^\n]*|//[^\n]*)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<num>[+-]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][+-]?[0-9]+)?)"
    r"|(?P<str>\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*')"
    r"|(?P<punct>[(){}\[\],;:=*@])"
    r"|(?P<bad>.)"
)
# the same tokens as (skipped text, token) pairs: one C-level findall for the whole source.
# Written for speed, matching the same text as _TOKEN: the skipped text as whitespace, then
# comments each followed by whitespace; the alternatives start with different characters, so
# their order only matters for speed; possessive quantifiers never give back what the
# non-possessive forms would only give back to fail anyway.
_PAIRS = re.compile(
    r"([ \t\f\r\n]*+(?:(?:\#|//)[^\n]*+[ \t\f\r\n]*+)*+)"
    r"([A-Za-z_][A-Za-z0-9_]*+"
    r"|[(){}\[\],;:=*@]"
    r"|[+-]?+(?:[0-9]++(?:\.[0-9]*+)?+|\.[0-9]++)(?:[eE][+-]?[0-9]+)?"
    r"|\"(?:[^\"\\\n]++|\\.)*+\"|'(?:[^'\\\n]++|\\.)*+'"
    r"|.|\Z)"
)
_KIND_OF_FIRST = {
    **dict.fromkeys("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_", "NAME"),
    **dict.fromkeys("0123456789+-.", "NUM"),
    '"': "STR",
    "'": "STR",
}
_END = "$END"
_STRAY = "$STRAY"  # a sign or a dot that starts no number
# the kind of a token by its whole text: keywords, punctuation, the end; else by its first
# character (_KIND_OF_FIRST: a name, a number or a string; anything else is stray)
_KIND_OF_TEXT = {
    **{word: word for word in KEYWORDS},
    **{c: c for c in "(){}[],;:=*@"},
    **dict.fromkeys("+-.", _STRAY),
    "": _END,
}
_NO_SPAN = ir.Span(0, 0, 0, 0)
_tuple_new = tuple.__new__  # Span(...) without the named tuple's Python-level __new__
_Span = ir.Span
_Arg = ir.Arg


class _Stop(Exception):
    """The source is not a correct program (or is unusual): let the grammar report it."""

    def __init__(self, offset: int | None = None) -> None:
        super().__init__(offset)
        self.offset = offset  # where a stray character is, when that is the reason


def parse(source: str, source_name: str) -> ir.Program | None:
    """The program in ``source``, or None when the source has a mistake."""
    try:
        return _Parser(source, source_name).program()
    except (_Stop, DSLError, RecursionError):
        return None


def tokenize(source: str) -> tuple[list[str], list[str], list[int]]:
    """(kinds, texts, start offsets); a kind is the keyword or punctuation itself, or
    NAME, NUM, STR; the lists end with an end marker. Raises ``_Stop`` on a stray
    character."""
    kinds: list[str] = []
    texts: list[str] = []
    starts: list[int] = []
    add_kind, add_text, add_start = kinds.append, texts.append, starts.append
    kind_of_text, kind_of_first = _KIND_OF_TEXT.get, _KIND_OF_FIRST.get
    position = 0
    for skipped, text in _PAIRS.findall(source):
        position += len(skipped)
        kind = kind_of_text(text)  # keywords and punctuation
        if kind is None:
            kind = kind_of_first(text[0])  # names, numbers, strings
            if kind is None:
                raise _Stop(position)
        elif kind is _STRAY:
            raise _Stop(position)
        elif kind is _END:
            break
        add_kind(kind)
        add_text(text)
        add_start(position)
        position += len(text)
    add_kind(_END)
    add_text("")
    add_start(len(source))
    return kinds, texts, starts


def token_after(source: str, span: ir.Span) -> tuple[str, str, int, int, int] | None:
    """The token that follows ``span`` as lark names it: (type, text, offset, line,
    column), or None at the end of the input. For error messages only."""
    lines = source.split("\n")
    offset = sum(len(line) + 1 for line in lines[: span.end_line - 1]) + span.end_column - 1
    for match in _TOKEN.finditer(source, offset):
        group = match.lastgroup
        if group == "ws":
            continue
        text = match.group()
        if group == "name":
            kind = text.upper() if text in KEYWORDS else "NAME"
        elif group == "num":
            kind = "SIGNED_NUMBER"
        elif group == "str":
            kind = "STRING"
        else:
            kind = _PUNCT_NAMES.get(text, text)
        start = match.start()
        line = source.count("\n", 0, start) + 1
        column = start - (source.rfind("\n", 0, start) + 1) + 1
        return kind, text, start, line, column
    return None


_PUNCT_NAMES = {
    "(": "LPAR",
    ")": "RPAR",
    "{": "LBRACE",
    "}": "RBRACE",
    "[": "LSQB",
    "]": "RSQB",
    ",": "COMMA",
    ";": "SEMICOLON",
    ":": "COLON",
    "=": "EQUAL",
    "*": "STAR",
    "@": "AT",
}


def parse_value(text: str, source: str, source_name: str, line: int, column: int) -> Any:
    """A value written inside a string of ``source`` that starts at ``line``, ``column``
    (Neural DSL writes ``optimizer: "Adam(learning_rate=0.001)"``). Spans and errors point
    into the string."""
    try:
        parser = _ValueParser(text, source_name, source, line, column)
    except _Stop as stop:
        offset = stop.offset if stop.offset is not None else len(text)
        return _unreadable(text, source, source_name, line, column + offset)
    try:
        value = parser.value()
        if parser.kinds[parser.i] != _END:
            raise _Stop
    except (_Stop, RecursionError):
        return _unreadable(text, source, source_name, line, column + parser.starts[parser.i])
    return value


def _unreadable(text: str, source: str, source_name: str, line: int, column: int) -> Any:
    from neural_jupyter.dsl.source_text import display_source

    raise DSLSyntaxError(
        f"cannot read the string {ir.written(text)} as a call",
        line=line,
        column=column,
        source=display_source(source),
        source_name=source_name,
        hint="write it without quotes, e.g. optimizer: Adam(learning_rate=0.001)",
    )


class _Parser:
    def __init__(self, source: str, source_name: str, report_source: str | None = None) -> None:
        self.kinds, self.texts, self.starts = tokenize(source)
        self.i = 0
        self.depth = 0
        self.build = IRBuilder(report_source or source, source_name)
        self.bare = False  # a layer written as a bare name was read (checked at the end)
        # spans used only if the builder rejects a value: the slow path reports those
        # errors itself, so they are exact only where this parser's errors are shown
        self.exact_errors = report_source is not None
        self.source = source
        self.source_name = source_name
        # where each line starts: 0, then after each "\n" (the lengths of the lines before
        # it, plus one "\n" each)
        lines = source.split("\n")
        self.line_starts = [0, *map(add, accumulate(map(len, lines[:-1])), count(1))]

    # --- positions ---------------------------------------------------------------------------
    def span(self, first: int, last: int) -> ir.Span:
        """From the start of token ``first`` to the end of token ``last``."""
        start = self.starts[first]
        end = self.starts[last] + len(self.texts[last])
        line_starts = self.line_starts
        line = bisect_right(line_starts, start)
        base = line_starts[line - 1]
        if line == len(line_starts) or end < line_starts[line]:  # on one line
            return _tuple_new(_Span, (line, start - base + 1, line, end - base + 1))
        end_line = bisect_right(line_starts, end)
        column = end - line_starts[end_line - 1] + 1
        return _tuple_new(_Span, (line, start - base + 1, end_line, column))

    def error_span(self, index: int) -> ir.Span:
        return self.span(index, index) if self.exact_errors else _NO_SPAN

    def expect(self, kind: str) -> int:
        i = self.i
        if self.kinds[i] != kind:
            raise _Stop
        self.i = i + 1
        return i

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise _Stop

    # --- program -----------------------------------------------------------------------------
    def program(self) -> ir.Program:
        items: list[Any] = []
        kinds = self.kinds
        while True:
            kind = kinds[self.i]
            if kind == "network":
                items.append(self.network())
            elif kind == "define":
                items.append(self.define())
            elif kind == _END:
                break
            else:
                raise _Stop
        networks, macros = self.build.start(items)
        if self.bare and bare_names(networks, macros):
            raise _Stop
        return ir.Program(tuple(networks), tuple(macros), self.source, self.source_name)

    def define(self) -> ir.Macro:
        self.i += 1
        name = self.expect("NAME")
        self.expect("{")
        self.enter()
        body = self.layer_list()
        self.expect("}")
        self.depth -= 1
        return self.build.define(self.texts[name], self.span(name, name), body)

    def network(self) -> ir.NetworkNode:
        self.i += 1
        name = self.expect("NAME")
        self.expect("{")
        self.enter()
        kinds = self.kinds
        sections: list[Any] = []
        while True:
            first = self.i
            kind = kinds[first]
            if kind == "}":
                break
            if kind in _SECTIONS:
                self.i += 1
                self.expect(":")
                if kind == "layers":
                    body = self.layer_list()
                    sections.append(("layers", (tuple(body), self.span(first, self.i - 1))))
                else:
                    value = self.value()
                    setting = ir.Setting(kind, value, self.span(first, self.i - 1))
                    sections.append((kind, setting))
            elif kind in SETTING_KEYS:
                self.i += 1
                self.expect(":")
                value = self.value()
                sections.append(("setting", ir.Setting(kind, value, self.span(first, self.i - 1))))
            elif kind == "train":
                sections.append(self.train())
            elif kind == "execution" or kind == "execute":
                sections.append(self.execution())
            elif kind == "define":
                sections.append(self.define())
            else:
                raise _Stop
        self.i += 1
        self.depth -= 1
        return self.build.network(self.texts[name], self.span(name, name), sections)

    def train(self) -> tuple[str, Any]:
        first = self.i
        self.i += 1
        self.expect("{")
        self.enter()
        kinds = self.kinds
        entries: list[Any] = []
        while kinds[self.i] != "}":
            start = self.i
            kind = kinds[start]
            if kind == "NAME" and kinds[start + 1] == "(":
                entries.append(self.build.train_call(self.call()))
            elif kind == "NAME" or kind in SETTING_KEYS:
                self.i += 1
                self.expect(":")
                value = self.value()
                entries.append(ir.Setting(self.texts[start], value, self.span(start, self.i - 1)))
            else:
                raise _Stop
            if kinds[self.i] == "," or kinds[self.i] == ";":
                self.i += 1
        self.i += 1
        self.depth -= 1
        return self.build.train_section(entries, self.span(first, self.i - 1))

    def execution(self) -> tuple[str, Any]:
        first = self.i
        self.i += 1
        self.expect("{")
        self.enter()
        kinds = self.kinds
        entries: list[ir.Setting] = []
        while kinds[self.i] != "}":
            start = self.expect("NAME")
            self.expect(":")
            value = self.value()
            entries.append(ir.Setting(self.texts[start], value, self.span(start, self.i - 1)))
            if kinds[self.i] == "," or kinds[self.i] == ";":
                self.i += 1
        self.i += 1
        self.depth -= 1
        return self.build.execution_section(entries, self.span(first, self.i - 1))

    # --- layers ------------------------------------------------------------------------------
    def layer_list(self) -> list[ir.LayerNode]:
        kinds = self.kinds
        items: list[ir.LayerNode] = []
        while kinds[self.i] == "NAME":
            items.append(self.layer_item())
            if kinds[self.i] == "," or kinds[self.i] == ";":
                self.i += 1
        return items

    def layer_item(self) -> ir.LayerNode:
        kinds = self.kinds
        first = self.i
        following = kinds[first + 1]
        if following == "(":
            head = self.call()
            device = None
            body = None
            if kinds[self.i] == "@":
                at = self.i
                self.i += 1
                kind = kinds[self.i]
                text = self.texts[self.i]
                if kind == "STR":
                    value: Any = self.build.string(text, self.span(self.i, self.i))
                elif kind == "NAME":
                    value = ir.Ident(text)
                else:
                    raise _Stop
                self.i += 1
                device = ir.Setting("device", value, self.span(at, self.i - 1))
            if kinds[self.i] == "{":
                body, _ = self.sublayers()
            return self.build.call_item(head, device, body, self.repeat())
        if following == "{":
            self.i += 1
            body, last = self.sublayers()
            span = self.span(first, last)
            return self.build.block_item(self.texts[first], span, body, self.repeat())
        self.i += 1
        self.bare = True
        return self.build.bare_item(self.texts[first], self.span(first, first), self.repeat())

    def sublayers(self) -> tuple[tuple[ir.LayerNode, ...], int]:
        self.i += 1  # "{"
        self.enter()
        body = self.layer_list()
        last = self.expect("}")
        self.depth -= 1
        return tuple(body), last

    def repeat(self) -> int:
        i = self.i
        if self.kinds[i] != "*":
            return 1
        text = self.texts[i + 1]
        if self.kinds[i + 1] != "NUM" or not text.isdigit():
            raise _Stop
        self.i = i + 2
        return self.build.repeat(text, self.span(i, i + 1))

    # --- values ------------------------------------------------------------------------------
    def call(self) -> ir.Call | ir.HPO:
        first = self.i
        i = first + 2  # NAME "("
        self.depth += 1
        if self.depth > MAX_NESTING:
            self.i = i
            raise _Stop
        kinds = self.kinds
        texts = self.texts
        span = self.span
        build = self.build
        exact = self.exact_errors
        args: list[ir.Arg] = []
        add = args.append
        while kinds[i] != ")":
            start = i
            name = None
            if kinds[i] == "NAME" and kinds[i + 1] == "=":
                name = texts[i]
                i += 2
            kind = kinds[i]
            if kind == "NUM":  # the usual values are read here, the others by value()
                value = build.number(texts[i], span(i, i) if exact else _NO_SPAN)
                i += 1
            elif kind == "STR":
                value = build.string(texts[i], span(i, i) if exact else _NO_SPAN)
                i += 1
            else:
                self.i = i
                value = self.value()
                i = self.i
            add(_tuple_new(_Arg, (name, value, span(start, i - 1))))
            kind = kinds[i]
            if kind == ",":
                i += 1
            elif kind != ")":
                self.i = i  # where the error is reported (a string's value: parse_value)
                raise _Stop
        self.i = i + 1
        self.depth -= 1
        return build.call(texts[first], args, span(first, i))

    def value(self) -> Any:
        i = self.i
        kind = self.kinds[i]
        if kind == "NUM":
            self.i = i + 1
            return self.build.number(
                self.texts[i], self.span(i, i) if self.exact_errors else _NO_SPAN
            )
        if kind == "STR":
            self.i = i + 1
            return self.build.string(
                self.texts[i], self.span(i, i) if self.exact_errors else _NO_SPAN
            )
        if kind == "NAME":
            if self.kinds[i + 1] == "(":
                return self.call()
            self.i = i + 1
            return ir.Ident(self.texts[i])
        if kind in _CONSTANTS:
            self.i = i + 1
            return _CONSTANTS[kind]
        if kind == "(":
            return self.parenthesized()
        if kind == "[":
            return self.bracketed()
        raise _Stop

    def parenthesized(self) -> Any:
        self.i += 1
        self.enter()
        kinds = self.kinds
        if kinds[self.i] == ")":
            self.i += 1
            self.depth -= 1
            return ()
        first = self.value()
        if kinds[self.i] == ")":
            self.i += 1
            self.depth -= 1
            return first  # a value in parentheses
        items = [first]
        self.expect(",")
        if kinds[self.i] != ")":
            items.append(self.value())
            while kinds[self.i] == ",":
                self.i += 1
                if kinds[self.i] == ")":
                    break
                items.append(self.value())
        self.expect(")")
        self.depth -= 1
        return tuple(items)

    def bracketed(self) -> tuple[Any, ...]:
        self.i += 1
        self.enter()
        kinds = self.kinds
        items: list[Any] = []
        if kinds[self.i] != "]":
            items.append(self.value())
            while kinds[self.i] == ",":
                self.i += 1
                if kinds[self.i] == "]":
                    break
                items.append(self.value())
        self.expect("]")
        self.depth -= 1
        return tuple(items)


class _ValueParser(_Parser):
    """Reads one value from a string's text (no newlines) that sits at ``line``,
    ``column`` of ``source``: spans are shifted there."""

    def __init__(self, text: str, source_name: str, source: str, line: int, column: int) -> None:
        super().__init__(text, source_name, report_source=source)
        self.line = line
        self.shift = column - 1

    def span(self, first: int, last: int) -> ir.Span:
        start = self.starts[first] + self.shift + 1
        end = self.starts[last] + len(self.texts[last]) + self.shift + 1
        return ir.Span(self.line, start, self.line, end)
