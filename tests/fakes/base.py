"""The plumbing every HTTP test double shares: a ``ThreadingHTTPServer`` on 127.0.0.1 in a
background thread, a log of every request, scripted faults, and one way to ask for both:

    fake.fail(method, path_regex, status, message="", *, times=1, after=False, **fields)
    fake.calls(method, path_regex="") -> [Request, ...]

A fault answers the next ``times`` matching requests with ``status`` (with ``after``: the
fake acts first and only the answer is lost). ``fields`` are the platform's own error fields
(an error code, a reason) that its ``error`` puts into the body. A subclass routes requests
(``route``) and says how its platform words an error (``error``); the server always answers,
with a 500 naming the bug if the fake itself fails.
"""

from __future__ import annotations

import contextlib
import json
import re
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Request:
    method: str
    path: str  # without the query string
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    body: bytes
    raw_query: str = ""
    time: float = field(default_factory=time.monotonic)

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    stream: Iterable[bytes] | None = None  # sent chunk by chunk as it comes (a followed log)


def json_response(status: int, payload: Any, **headers: str) -> Response:
    return Response(
        status, json.dumps(payload).encode(), {"Content-Type": "application/json", **headers}
    )


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    message: str
    times: int
    after: bool  # act first, then answer with the error (only the response is lost)
    fields: dict[str, Any] = field(default_factory=dict)


class FakeServer:
    """An HTTP server of a platform, on ``http://127.0.0.1:PORT`` (``https`` with a
    ``tls`` context)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.lock = threading.RLock()
        self.scheme = "https" if tls else "http"
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.server.daemon_threads = True
        self.server.fake = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    # --- lifecycle --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}"

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self.cleanup()
        self.server.shutdown()
        self.server.server_close()

    close = stop

    def cleanup(self) -> None:
        """What a subclass ends before the server stops (processes it started...)."""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what tests ask ---------------------------------------------------------------------
    def fail(
        self,
        method: str,
        path: str,
        status: int,
        message: str = "",
        *,
        times: int = 1,
        after: bool = False,
        **fields: Any,
    ) -> None:
        """Answer the next ``times`` requests matching ``method`` and the ``path`` regex with
        ``status`` (after acting on them if ``after``)."""
        with self.lock:
            self.faults.append(
                Fault(method, re.compile(path), status, message, times, after, fields)
            )

    def calls(self, method: str, path: str = "") -> list[Request]:
        """The requests of ``method`` whose path matches the ``path`` regex, in order."""
        pattern = re.compile(path)
        with self.lock:
            return [r for r in self.requests if r.method == method and pattern.search(r.path)]

    # --- what a platform's fake says ------------------------------------------------------
    def route(self, request: Request) -> Response:
        raise NotImplementedError

    def error(self, status: int, message: str, **fields: Any) -> Response:
        """The platform's error body."""
        return json_response(status, {"error": {"code": status, "message": message, **fields}})

    def refuse(self, request: Request) -> Response | None:
        """An answer given before faults and routing (authentication), or None."""
        return None

    def record(self, request: Request) -> None:
        self.requests.append(request)

    # --- dispatch ---------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        with self.lock:
            self.record(request)
        refused = self.refuse(request)
        if refused is not None:
            return refused
        with self.lock:
            fault = self._fault(request)
        if fault is not None and not fault.after:
            return self.error(fault.status, fault.message, **fault.fields)
        try:
            response = self.route(request)
        except Exception as exc:  # a bug in the fake: answer, never drop the connection
            response = self.error(500, f"fake error: {type(exc).__name__}: {exc}")
        if fault is not None:
            return self.error(fault.status, fault.message, **fault.fields)
        return response

    def _fault(self, request: Request) -> Fault | None:
        for fault in self.faults:
            if (
                fault.times > 0
                and fault.method == request.method
                and fault.pattern.search(request.path)
            ):
                fault.times -= 1
                return fault
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self._chunked()
        request = Request(
            self.command,
            parts.path,
            dict(parse_qsl(parts.query, keep_blank_values=True)),
            {k.lower(): v for k, v in self.headers.items()},
            body,
            parts.query,
        )
        response = self.server.fake.handle(request)  # type: ignore[attr-defined]
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(response.status)
            for key, value in response.headers.items():
                self.send_header(key, value)
            if response.stream is not None:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for chunk in response.stream:
                    if chunk:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.close_connection = True
                return
            if self.command != "HEAD" or "Content-Length" not in response.headers:
                self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)

    def _chunked(self) -> bytes:
        data = b""
        while True:
            size = int(self.rfile.readline().strip() or b"0", 16)
            if not size:
                self.rfile.readline()
                return data
            data += self.rfile.read(size)
            self.rfile.readline()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

    def log_message(self, format: str, *args: Any) -> None:
        return None
