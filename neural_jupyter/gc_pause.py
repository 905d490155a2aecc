"""``paused_gc``: compile with Python's cyclic garbage collector off."""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def paused_gc(function: Callable[P, R]) -> Callable[P, R]:
    """``function`` run with the cyclic garbage collector off, switched back on when it
    returns or raises.

    Parsing, analysis and code generation allocate many small objects (tokens, IR nodes,
    layer specs, lines of code) that all stay alive until the call returns, so the
    collector's passes during it free nothing; but as the objects pile up, its full
    collections scan them all again and again (about a third of compile + train.py at
    10,000 layers). Off during the call, the objects are seen once, by the first
    collection after it. Nested calls leave the switch to the outermost one, and a
    collector that was already off (by the user) stays off.
    """

    @functools.wraps(function)
    def paused(*args: P.args, **kwargs: P.kwargs) -> R:
        if not gc.isenabled():
            return function(*args, **kwargs)
        gc.disable()
        try:
            return function(*args, **kwargs)
        finally:
            gc.enable()

    return paused
