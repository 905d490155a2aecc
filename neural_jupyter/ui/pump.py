"""Letting widget clicks through while a cell waits (jupyter-ui-poll, when installed).

A cell that blocks keeps the kernel from handling button clicks; jupyter-ui-poll processes
pending UI messages from inside the wait loop. Without it the monitor's buttons act only once
the cell returns (Ctrl-C / interrupt still detaches), and nothing else changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def ui_event_pump(enabled: bool = True) -> Iterator[Callable[[], None]]:
    if not enabled:
        yield lambda: None
        return
    try:
        from jupyter_ui_poll import ui_events
    except ImportError:
        yield lambda: None
        return
    try:
        context = ui_events()
        poll = context.__enter__()
    except Exception:  # not in a kernel it supports: carry on without it
        yield lambda: None
        return
    try:
        yield lambda: poll(20)
    finally:
        context.__exit__(None, None, None)
