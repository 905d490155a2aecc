"""Whether a process (or process group) on this machine still runs, from ``kill(pid, 0)`` and
``/proc``: shared by the local platform, the log relay, the launch records and local
endpoints. Standard library only (the relay runs it outside the kernel)."""

from __future__ import annotations

import os
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (which may hold spaces and parentheses)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (guards against a recycled pid); None if unknown."""
    fields = _stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else None


def pid_exists(pid: int) -> bool:
    """True while ``pid`` exists, a zombie included (its parent has not reaped it yet);
    a process of another user counts as existing."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a finished but unreaped (zombie) process counts as gone."""
    if not pid_exists(pid):
        return False
    fields = _stat_fields(pid)
    return fields is None or fields[0] != "Z"


def group_alive(pgid: int) -> bool:
    """True while any process of the group ``pgid`` exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
