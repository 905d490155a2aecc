"""Which launches are under way: a row not yet handed to its platform is judged abandoned
(and marked FAILED by ``Job.refresh``) only once the process launching it is gone."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

from neural_jupyter.jobs.store import JobRecord

_launching: set[str] = set()  # idempotency keys of the jobs this process is starting now
_launching_lock = threading.Lock()


@contextlib.contextmanager
def launching(key: str) -> Iterator[None]:
    """While the job with idempotency ``key`` is being started by this process."""
    with _launching_lock:
        _launching.add(key)
    try:
        yield
    finally:
        with _launching_lock:
            _launching.discard(key)


def launcher() -> dict[str, Any]:
    """Who is starting the job (to tell later whether that launch is still going on)."""
    from neural_jupyter.runtime.processes import process_start_time

    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "start_time": process_start_time(pid)}


def abandoned_launch(record: JobRecord) -> str | None:
    """Why a row that was never handed to its platform will never be (its launch is over), or
    None while that launch may still be going on (or cannot be judged from this machine)."""
    from neural_jupyter.runtime.processes import pid_alive, process_start_time

    if record.remote_id is not None or record.status.is_terminal:
        return None
    with _launching_lock:
        if record.idempotency_key in _launching:
            return None
    info = record.config.get("launcher")
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
        return None  # written by another tool or an older version: cancel or remove it by hand
    if info.get("host") != socket.gethostname():
        return None
    pid = info["pid"]
    if pid == os.getpid():
        return "not started: its launch in this kernel stopped before the job started"
    same_process = pid_alive(pid) and process_start_time(pid) in (None, info.get("start_time"))
    if same_process:
        return None
    return "not started: the kernel that was starting it exited first"
