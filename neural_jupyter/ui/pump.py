"""Letting the monitor's own buttons act while its cell blocks.

A Jupyter kernel runs one cell at a time on its main thread. While ``%%neural_run`` waits for
its job, the kernel's main loop does not run, so a click on the monitor's Cancel button (a
``comm_msg`` from the front-end) would wait in a socket until the cell ends — too late.

While ``watch()`` waits, :class:`CommPump` reads the messages that have arrived for the main
shell, handles at once the ``comm_msg`` messages addressed to the monitor's own widgets (with
the kernel's own comm handler), and holds every other message — the next cells of Run All,
other widgets' messages, completion requests — to hand back to the kernel in their original
order when the wait ends. No other cell and no other widget's callback ever runs inside ours.

Where the messages wait depends on the kernel:

- ipykernel 6 reads the shell socket on the main thread (``kernel.shell_stream``);
- ipykernel 7 reads it on a shell-channel thread, which forwards main-shell messages through
  an in-process socket pair to the main thread (``manager.get_shell_channel_to_subshell_pair
  (None).to_stream``).

Either way they wait in one ZMQ socket whose stream reads only when the main loop runs; the
pump reads that socket directly and gives held messages back through the stream's own
callback, exactly as if the stream had just read them. Only the header is unpacked to sort
messages (unpacking a whole message records its signature, and the kernel would then reject
the held message as a replay).

Why not jupyter-ui-poll: it calls ``kernel.do_one_iteration()``, which ipykernel 7 no longer
has; its wrapper swallows the ``AttributeError``, so with ipykernel 7 no click is ever read,
and it hands the kernel's main lock a ``nullcontext`` stand-in for the whole wait. It also
runs every pending message (any widget's callbacks) inside the waiting cell.

Kernels with neither structure (xeus-python, a plain IPython shell) get no pump:
:func:`open_pump` returns None and the monitor says its buttons cannot act while the cell runs.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Iterable, Iterator
from typing import Any

MAX_MESSAGES_PER_POLL = 100
_replays: set[Any] = set()


class CommPump:
    """Handles the comm messages of chosen widgets while the main thread is busy."""

    def __init__(self, kernel: Any, stream: Any) -> None:
        self.kernel = kernel
        self.stream = stream
        self.comm_ids: set[str] = set()
        self.held: list[Any] = []
        self.handled = 0
        self._closed = False

    def watch(self, widget: Any) -> None:
        """Let through messages for ``widget`` and every widget inside it."""
        self.comm_ids.update(widget_comm_ids(widget))

    def poll(self) -> int:
        """Read what has arrived: handle our widgets' messages, hold the rest. Returns the
        number of messages handled."""
        import zmq

        if self._closed:
            return 0
        socket = self.stream.socket
        copy = getattr(self.stream, "_recv_copy", False)
        handled = 0
        for _ in range(MAX_MESSAGES_PER_POLL):
            try:
                message = socket.recv_multipart(zmq.NOBLOCK, copy=copy)
            except zmq.Again:
                break
            if self._handle(message, copy):
                handled += 1
            else:
                self.held.append(message)
        self.handled += handled
        return handled

    def _handle(self, message: list[Any], copy: bool) -> bool:
        session = self.kernel.session
        try:
            idents, frames = session.feed_identities(message, copy=copy)
            peek = session.deserialize(frames, content=False, copy=copy)
            if peek["header"].get("msg_type") != "comm_msg":
                return False
            comm_id = session.unpack(_bytes(peek["content"])).get("comm_id")
            if comm_id not in self.comm_ids:
                return False
            parsed = session.deserialize(frames, content=True, copy=copy)
        except Exception:  # not ours to judge: the kernel reports bad messages itself
            return False
        handler = self.kernel.shell_handlers.get("comm_msg")
        if handler is None:
            return False
        result = handler(self.stream, idents, parsed)
        if inspect.isawaitable(result):  # never for ipykernel's comm manager; be safe
            with contextlib.suppress(Exception):
                result.close()
        return True

    def close(self) -> None:
        """Give held messages back to the kernel, in order, as if just received."""
        if self._closed:
            return
        self._closed = True
        callback = getattr(self.stream, "_recv_callback", None)
        held, self.held = self.held, []
        for message in held:
            if callback is None:
                break
            result = callback(message)
            if inspect.isawaitable(result):  # ipykernel 7: a coroutine, run on the main loop
                import asyncio

                task = asyncio.ensure_future(result)
                _replays.add(task)  # keep it alive until it has run
                task.add_done_callback(_replays.discard)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else bytes(getattr(value, "bytes", value))


def widget_comm_ids(widget: Any) -> Iterator[str]:
    """The comm ids of ``widget`` and of the widgets it contains (boxes, accordions)."""
    seen: set[int] = set()
    stack = [widget]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        comm = getattr(item, "comm", None)
        comm_id = getattr(comm, "comm_id", None)
        if comm_id:
            yield comm_id
        children = getattr(item, "children", ())
        if isinstance(children, Iterable):
            stack.extend(children)


def main_shell_stream(kernel: Any) -> Any | None:
    """The ZMQ stream on which the main shell of ``kernel`` receives its messages, or None
    when this kernel is not an ipykernel this pump understands."""
    channel_thread = getattr(kernel, "shell_channel_thread", None)
    if channel_thread:  # ipykernel 7: messages come from the shell-channel thread
        manager = getattr(channel_thread, "manager", None)
        get_pair = getattr(manager, "get_shell_channel_to_subshell_pair", None)
        if get_pair is None:
            return None
        try:
            stream = get_pair(None).to_stream
        except Exception:
            return None
    else:  # ipykernel 6: the main thread reads the shell socket itself
        stream = getattr(kernel, "shell_stream", None)
    if (
        stream is None
        or not hasattr(stream, "socket")
        or not callable(getattr(stream, "_recv_callback", None))
    ):
        return None
    if not hasattr(kernel, "session") or not hasattr(kernel, "shell_handlers"):
        return None
    return stream


def current_kernel() -> Any | None:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        return None
    shell = get_ipython()
    return getattr(shell, "kernel", None) if shell is not None else None


def open_pump(kernel: Any | None = None) -> CommPump | None:
    """A pump for the current kernel, or None where clicks cannot be let through (no
    ipykernel, an unknown kernel structure, or not on the kernel's main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    kernel = kernel if kernel is not None else current_kernel()
    if kernel is None:
        return None
    stream = main_shell_stream(kernel)
    return CommPump(kernel, stream) if stream is not None else None
