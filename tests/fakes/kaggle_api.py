"""A local fake of Kaggle's kernels API, spoken to by the real ``kagglesdk`` client (what the
``kaggle`` package and CLI use) once ``KAGGLE_API_ENDPOINT`` points at it.

Wire format as kagglesdk sends it: ``POST /v1/kernels.KernelsApiService/<Method>`` with a
camelCase JSON body, HTTP basic auth (user name, API key); errors as ``{"code", "message"}``.
``SaveKernel`` creates a kernel (a second save of the same slug is a new version: a second
run, which the backend must never cause), ``GetKernelSessionStatus`` answers with lower-case
statuses as Kaggle does (``queued``, ``running``, ``complete``, ``error``,
``cancelAcknowledged``) and 403 for a kernel that does not exist, ``ListKernelSessionOutput``
returns output file URLs (served by this fake) and the JSON-array log, and
``GET /v1/kernels/logs/stream/OWNER/SLUG`` streams the log as server-sent events while the
session runs.

A session runs a ``Script`` (lines on stdout/stderr, then complete or error), or with
``execute=True`` the pushed kernel script itself, in a scratch ``/kaggle/working``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

SERVICE = "/v1/kernels.KernelsApiService/"


@dataclass
class Script:
    """A scripted session: ``(stream, text)`` lines, then ``complete`` or ``error``."""

    lines: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None  # the failure message of an ``error`` session
    queued_seconds: float = 0.02
    line_seconds: float = 0.005
    outputs: dict[str, bytes] = field(default_factory=dict)
    hold: threading.Event | None = None


@dataclass
class Recorded:
    method: str
    path: str
    body: Any
    status: int = 0


@dataclass
class Failure:
    pattern: str
    status: int
    message: str
    times: int = 1
    after: bool = False


class Session:
    def __init__(self, kernel: dict[str, Any]) -> None:
        self.kernel = kernel
        self.status = "queued"
        self.failure: str | None = None
        self.entries: list[dict[str, Any]] = []
        self.outputs: dict[str, bytes] = {}
        self.changed = threading.Condition()
        self.observed = 0

    def add(self, stream: str, text: str) -> None:
        with self.changed:
            self.entries.append({"stream_name": stream, "time": time.time(), "data": text})
            self.changed.notify_all()

    def end(self, status: str, failure: str | None = None) -> None:
        with self.changed:
            self.status, self.failure = status, failure
            self.changed.notify_all()

    @property
    def over(self) -> bool:
        return self.status in ("complete", "error", "cancelAcknowledged")


class FakeKaggle:
    def __init__(self, username: str = "tester", key: str = "0123456789abcdef-fake-key") -> None:
        self.username = username
        self.key = key
        self.execute = False
        self.script = Script(lines=[("stdout", '{"event": "start", "epochs": 1}')])
        self.requests: list[Recorded] = []
        self.failures: list[Failure] = []
        self.kernels: dict[str, dict[str, Any]] = {}  # "owner/slug" -> kernel
        self.sessions: dict[str, Session] = {}
        self.datasets: dict[str, dict[str, bytes]] = {}  # "owner/slug" -> files
        self.lock = threading.RLock()
        self.workdir = Path(tempfile.mkdtemp(prefix="fake-kaggle-"))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeKaggle:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        for session in self.sessions.values():
            process = getattr(session, "process", None)
            if process is not None and process.poll() is None:
                process.kill()
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def fail(self, pattern: str, status: int, message: str, *, times: int = 1, after=False):
        self.failures.append(Failure(pattern, status, message, times, after))

    def calls(self, method: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == SERVICE + method]

    def cancel_from_the_website(self, ref: str) -> None:
        """What the kernel page's "Stop session" button does."""
        session = self.sessions[ref]
        session.status = "cancelRequested"
        session.end("cancelAcknowledged")
        process = getattr(session, "process", None)
        if process is not None and process.poll() is None:
            process.kill()

    # --- sessions -----------------------------------------------------------------------------
    def _start(self, ref: str, kernel: dict[str, Any]) -> Session:
        session = Session(kernel)
        with self.lock:
            self.sessions[ref] = session
        target = self._execute if self.execute else self._run_script
        threading.Thread(target=target, args=(session,), daemon=True).start()
        return session

    def _run_script(self, session: Session) -> None:
        script = self.script
        time.sleep(script.queued_seconds)
        seen = session.observed
        while session.observed == seen and not session.over:  # queued until seen once
            time.sleep(0.005)
        if session.over:
            return
        session.status = "running"
        for stream, text in script.lines:
            if session.over:
                return
            session.add(stream, text + "\n")
            time.sleep(script.line_seconds)
        while script.hold is not None and not script.hold.is_set() and not session.over:
            time.sleep(0.01)
        if session.over:
            return
        session.outputs = dict(script.outputs)
        session.end("error" if script.error else "complete", script.error)

    def _execute(self, session: Session) -> None:
        """Run the pushed script as Kaggle would, in a scratch /kaggle/working."""
        root = self.workdir / session.kernel["slug"].replace("/", "_")
        working, inputs = root / "working", root / "input"
        working.mkdir(parents=True, exist_ok=True)
        for source in session.kernel.get("datasetDataSources") or []:
            folder = inputs / source.split("/")[-1]
            folder.mkdir(parents=True, exist_ok=True)
            for name, data in self.datasets.get(source, {}).items():
                (folder / name).write_bytes(data)
        script = root / "__script__.py"
        script.write_text(session.kernel["text"])
        session.status = "running"
        process = subprocess.Popen(
            [sys.executable, "-u", str(script)],
            cwd=working,
            env={**os.environ, "KAGGLE_INPUT_DIR": str(inputs), "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        session.process = process

        def pump(pipe: Any, stream: str) -> None:
            for raw in iter(pipe.readline, b""):
                session.add(stream, raw.decode("utf-8", errors="replace"))

        readers = [
            threading.Thread(target=pump, args=(process.stdout, "stdout"), daemon=True),
            threading.Thread(target=pump, args=(process.stderr, "stderr"), daemon=True),
        ]
        for reader in readers:
            reader.start()
        code = process.wait()
        for reader in readers:
            reader.join()
        if session.over:
            return
        for path in sorted(working.rglob("*")):
            if path.is_file():
                session.outputs[str(path.relative_to(working))] = path.read_bytes()
        if code == 0:
            session.end("complete")
        else:
            session.end("error", f"Your notebook hit an unhandled error (exit code {code})")

    # --- HTTP ---------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return None

            def _json(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str) -> None:
                self._json(status, {"code": status, "message": message})

            def _authorized(self) -> bool:
                expected = base64.b64encode(f"{fake.username}:{fake.key}".encode()).decode()
                return self.headers.get("Authorization") == f"Basic {expected}"

            def _dispatch(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                record = Recorded(self.command, url.path, body)
                fake.requests.append(record)
                if url.path.startswith("/files/"):  # signed download URLs need no auth
                    return self._file(unquote(url.path[len("/files/") :]))
                if not self._authorized():
                    record.status = 401
                    return self._error(401, "Unauthenticated: the API key is invalid or revoked")
                for failure in fake.failures:
                    if failure.times > 0 and re.search(failure.pattern, url.path):
                        failure.times -= 1
                        if failure.after:
                            self._route(url.path, body, reply=False)
                        record.status = failure.status
                        return self._error(failure.status, failure.message)
                record.status = 200
                self._route(url.path, body)

            do_GET = do_POST = _dispatch

            def _route(self, path: str, body: Any, reply: bool = True) -> None:
                respond = self._json if reply else (lambda *a: None)
                error = self._error if reply else (lambda *a: None)
                if path == SERVICE + "SaveKernel":
                    ref = body["slug"]
                    owner = ref.split("/")[0]
                    if owner != fake.username:
                        return error(403, f"Permission 'kernels.create' was denied for {ref}")
                    if body.get("kernelType") != "script" or not body.get("text"):
                        return respond(200, {"error": "Invalid kernel: a script is required"})
                    with fake.lock:
                        kernel = fake.kernels.get(ref)
                        version = (kernel["version"] + 1) if kernel else 1
                        kernel = {**body, "version": version, "id": 4242}
                        fake.kernels[ref] = kernel
                    fake._start(ref, kernel)
                    return respond(
                        200,
                        {
                            "ref": f"/code/{ref}",
                            "url": f"https://www.kaggle.com/code/{ref}",
                            "versionNumber": version,
                            "kernelId": 4242,
                        },
                    )
                if path in (
                    SERVICE + "GetKernelSessionStatus",
                    SERVICE + "ListKernelSessionOutput",
                ):
                    ref = f"{body.get('userName')}/{body.get('kernelSlug')}"
                    session = fake.sessions.get(ref)
                    if session is None:
                        return error(403, "Permission 'kernels.get' was denied")
                    if path.endswith("Status"):
                        session.observed += 1
                        answer = {"status": session.status}
                        if session.failure:
                            answer["failureMessage"] = session.failure
                        return respond(200, answer)
                    files = [
                        {"fileName": name, "url": f"{fake.url}/files/{ref}/{quote(name)}"}
                        for name in sorted(session.outputs)
                    ]
                    log = json.dumps(session.entries) if session.over else None
                    return respond(200, {"files": files, **({"log": log} if log else {})})
                m = re.fullmatch(r"/v1/kernels/logs/stream/([^/]+)/([^/]+)", path)
                if m and reply:
                    session = fake.sessions.get(f"{m.group(1)}/{m.group(2)}")
                    if session is None:
                        return error(404, "no such kernel session")
                    return self._stream(session)
                return error(404, f"unknown method {path}")

            def _file(self, name: str) -> None:
                owner, slug, rest = name.split("/", 2)
                session = fake.sessions.get(f"{owner}/{slug}")
                data = session.outputs.get(rest) if session else None
                if data is None:
                    return self._error(404, "no such file")
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, session: Session) -> None:
                if session.over:  # the persisted log, as Kaggle serves it after the session
                    return self._json(200, session.entries)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                sent = 0
                try:
                    while True:
                        with session.changed:
                            if sent >= len(session.entries) and not session.over:
                                session.changed.wait(0.05)
                            fresh = session.entries[sent:]
                            over = session.over
                        for entry in fresh:
                            chunk = f"data: {json.dumps(entry)}\n\n".encode()
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        sent += len(fresh)
                        self.wfile.flush()
                        if over and not fresh:
                            break
                    chunk = b"data: END_OF_LOG\n\n"
                    self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

        return Handler
