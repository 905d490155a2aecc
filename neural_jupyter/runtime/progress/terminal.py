"""Turning what a program writes for a terminal into plain lines.

Progress bars redraw one line: tqdm writes ``\\r`` before each state, Keras backs up with
``\\b`` and Rich (Lightning's bar) moves the cursor with escape sequences. In a log file that
becomes one endless line full of control codes. ``TerminalLines`` keeps what a person would
see at each redraw: every ``\\r``-separated state becomes a line of its own, backspaces are
applied and colour and cursor codes are dropped.
"""

from __future__ import annotations

import re

ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_BREAK = re.compile(r"(\r\n|\n|\r)")


def plain(text: str) -> str:
    """``text`` without escape codes, with backspaces applied (one line, no breaks)."""
    text = ESCAPE.sub("", text)
    if "\b" not in text:
        return text
    cells: list[str] = []
    position = 0
    for char in text:
        if char == "\b":
            position = max(0, position - 1)
        elif position < len(cells):
            cells[position] = char
            position += 1
        else:
            cells.append(char)
            position += 1
    return "".join(cells)


class TerminalLines:
    """Feed text as it arrives; get back complete plain lines.

    A redraw (text after a ``\\r``) that stays unfinished can be taken early with
    ``idle()``, so a progress bar that updates in place is seen while it runs.
    """

    def __init__(self) -> None:
        self._pending = ""
        self._redraw = False  # the pending text came after a carriage return

    def feed(self, text: str) -> list[str]:
        parts = _BREAK.split(self._pending + text)
        self._pending = parts.pop()
        lines: list[str] = []
        redraw = self._redraw
        for index in range(0, len(parts), 2):
            line = plain(parts[index])
            separator = parts[index + 1]
            if line.strip() or not (redraw or separator == "\r"):
                lines.append(line.rstrip())
            redraw = separator == "\r"
        if parts:
            self._redraw = parts[-1] == "\r"
        return lines

    def idle(self) -> list[str]:
        """The redraw in progress, if any (nothing more arrived for a while)."""
        if not self._redraw or not self._pending.strip():
            return []
        line, self._pending = plain(self._pending).rstrip(), ""
        return [line] if line.strip() else []

    def close(self) -> list[str]:
        """Whatever is left when the writer is gone."""
        line, self._pending = plain(self._pending).rstrip(), ""
        return [line] if line.strip() else []
