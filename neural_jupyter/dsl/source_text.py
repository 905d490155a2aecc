"""Source text as parsers and error snippets see it: line breaks, brackets, nesting depth."""

from __future__ import annotations

import re

from neural_jupyter.errors import DSLSyntaxError

MAX_NESTING = 64  # brackets and blocks inside each other; deeper input is surely a mistake


def display_source(source: str) -> str:
    """``source`` as error snippets show it: only '\\n' ends a line, as it does for the parser.

    Other characters that ``str.splitlines`` treats as line breaks (form feed, '\\r', '\\x85',
    '\\u2028'...) become spaces, so the line shown is the line the error is on.
    """
    return _LINE_BREAKS.sub(" ", source.replace("\r\n", "\n"))


_LINE_BREAKS = re.compile("[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def check_nesting(source: str, source_name: str) -> None:
    depth = 0
    for _, char, line, column in brackets(source, "([{", ")]}"):
        depth = depth + 1 if char in "([{" else max(depth - 1, 0)
        if depth > MAX_NESTING:
            raise DSLSyntaxError(
                f"brackets and blocks are nested more than {MAX_NESTING} levels deep",
                line=line,
                column=column,
                source=display_source(source),
                source_name=source_name,
            )


def brackets(
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
