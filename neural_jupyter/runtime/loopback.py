"""A tornado application served on 127.0.0.1, on a thread and event loop of its own: what the
debug dashboard and the local prediction endpoint both run in the kernel; and the keep-alive
of a server-sent event stream (the dashboard's, and the Jupyter server extension's)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from neural_jupyter.errors import ConfigurationError, MissingDependencyError

PING_SECONDS = 15.0  # of quiet in an event stream before a ping comment


async def quiet_poll(handler: Any, idle: float, poll: float) -> float:
    """Wait ``poll`` seconds in a server-sent event stream that has nothing to send, after a
    ``: ping`` comment once ``PING_SECONDS`` passed quietly (proxies close silent streams);
    returns the quiet time so far, ``idle`` the time before."""
    idle += poll
    if idle >= PING_SECONDS:
        handler.write(": ping\n\n")
        await handler.flush()
        idle = 0.0
    await asyncio.sleep(poll)
    return idle


def require_tornado(what: str) -> None:
    """Raise ``MissingDependencyError`` (the ``dashboard`` extra) unless tornado imports."""
    try:
        import tornado  # noqa: F401
    except ImportError:
        raise MissingDependencyError("tornado", "dashboard", what) from None


class LoopbackServer:
    """Serves the application ``make_app`` returns; ``listen()`` returns once it listens."""

    def __init__(self, port: int = 0) -> None:
        self.requested_port = port
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None

    @property
    def running(self) -> bool:
        return self._loop is not None

    def listen(
        self,
        make_app: Callable[[], Any],
        *,
        what: str,
        thread_name: str,
        on_failure: Callable[[], None] | None = None,
        **options: Any,
    ) -> None:
        """Start serving; raise ``ConfigurationError`` naming ``what`` when the port cannot be
        listened on (after ``on_failure``)."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                self._server = make_app().listen(
                    self.requested_port, address="127.0.0.1", **options
                )
                sockets = list(self._server._sockets.values())
                self.port = sockets[0].getsockname()[1]
            except BaseException as exc:  # reported to the caller below
                failure.append(exc)
                ready.set()
                return
            self._loop = loop
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=serve, name=thread_name, daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            if on_failure is not None:
                on_failure()
            raise ConfigurationError(
                f"the {what} could not listen on port {self.requested_port}: {failure[0]}"
            )

    def stop(self) -> None:
        self._shut_down()

    def _shut_down(self, cancel_tasks: bool = False) -> bool:
        """Stop listening (the port is free again) and end the thread; with ``cancel_tasks``,
        the requests still open too. False when it was not running."""
        loop = self._loop
        if loop is None:
            return False

        def shutdown() -> None:
            if self._server is not None:
                self._server.stop()  # closes the listening socket: the port is free again
            if cancel_tasks:
                for task in asyncio.all_tasks(loop):
                    task.cancel()
            loop.stop()

        loop.call_soon_threadsafe(shutdown)
        if self._thread is not None:
            self._thread.join(5)
        self._loop = None
        return True
