"""Source text → parse-level IR (``ir.Program``), with readable syntax errors.

Two parsers read the same language. ``fastparse`` (hand-written, no lark) reads every correct
program; when it stops, the source has a mistake and the lark grammar (``lark_parser``,
imported only then) parses it again to report the mistake with the exact line, column and
message. So a notebook that compiles correct programs never imports lark or builds its
tables, and error messages keep the grammar's precision.
"""

from __future__ import annotations

import functools

from neural_jupyter.dsl import fastparse, ir
from neural_jupyter.dsl.build import MAX_INT
from neural_jupyter.dsl.source_text import MAX_NESTING, display_source
from neural_jupyter.gc_pause import paused_gc

__all__ = ["MAX_INT", "MAX_NESTING", "clear_cache", "display_source", "parse", "parse_cached"]


@functools.lru_cache(maxsize=64)
def parse_cached(source: str, source_name: str = "<cell>") -> ir.Program:
    """``parse`` with a small cache: the IR is immutable, and notebooks and sweeps compile
    the same source over and over (re-run cells, one compile per trial)."""
    return parse(source, source_name)


def clear_cache() -> None:
    parse_cached.cache_clear()


@paused_gc
def parse(source: str, source_name: str = "<cell>") -> ir.Program:
    """Parse model-language ``source`` into an ``ir.Program``.

    Raises ``DSLSyntaxError`` (grammar) or ``DSLValidationError`` (duplicate sections,
    malformed HPO expressions) carrying line, column and a caret snippet.
    """
    program = fastparse.parse(source, source_name)
    if program is not None:
        return program
    from neural_jupyter.dsl.lark_parser import parse_with_lark

    return parse_with_lark(source, source_name)


def parse_reference(source: str, source_name: str = "<cell>") -> ir.Program:
    """``parse`` by the lark grammar alone (the definition the fast parser must match)."""
    from neural_jupyter.dsl.lark_parser import parse_with_lark

    return parse_with_lark(source, source_name)


def parse_expression(
    text: str, source: str, source_name: str, *, line: int, column: int
) -> ir.Value:
    """A value written inside a string literal of ``source`` (the string's text starts at
    ``line``, ``column``), with spans and errors in ``source``."""
    return fastparse.parse_value(text, source, source_name, line, column)
