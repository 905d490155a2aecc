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
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from .base import FakeServer, Request, Response, json_response

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


class FakeKaggle(FakeServer):
    def __init__(self, username: str = "tester", key: str = "0123456789abcdef-fake-key") -> None:
        super().__init__()
        self.username = username
        self.key = key
        self.execute = False
        self.script = Script(lines=[("stdout", '{"event": "start", "epochs": 1}')])
        self.kernels: dict[str, dict[str, Any]] = {}  # "owner/slug" -> kernel
        self.sessions: dict[str, Session] = {}
        self.datasets: dict[str, dict[str, bytes]] = {}  # "owner/slug" -> files
        self.workdir = Path(tempfile.mkdtemp(prefix="fake-kaggle-"))

    def cleanup(self) -> None:
        for session in self.sessions.values():
            process = getattr(session, "process", None)
            if process is not None and process.poll() is None:
                process.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

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
    def error(self, status: int, message: str) -> Response:
        return json_response(status, {"code": status, "message": message})

    def refuse(self, request: Request) -> Response | None:
        if request.path.startswith("/files/"):  # signed download URLs need no auth
            return self._file(unquote(request.path[len("/files/") :]))
        expected = base64.b64encode(f"{self.username}:{self.key}".encode()).decode()
        if request.headers.get("authorization") != f"Basic {expected}":
            return self.error(401, "Unauthenticated: the API key is invalid or revoked")
        return None

    def route(self, request: Request) -> Response:
        path, body = request.path, request.json
        if path == SERVICE + "SaveKernel":
            ref = body["slug"]
            owner = ref.split("/")[0]
            if owner != self.username:
                return self.error(403, f"Permission 'kernels.create' was denied for {ref}")
            if body.get("kernelType") != "script" or not body.get("text"):
                return json_response(200, {"error": "Invalid kernel: a script is required"})
            with self.lock:
                kernel = self.kernels.get(ref)
                version = (kernel["version"] + 1) if kernel else 1
                kernel = {**body, "version": version, "id": 4242}
                self.kernels[ref] = kernel
            self._start(ref, kernel)
            return json_response(
                200,
                {
                    "ref": f"/code/{ref}",
                    "url": f"https://www.kaggle.com/code/{ref}",
                    "versionNumber": version,
                    "kernelId": 4242,
                },
            )
        if path in (SERVICE + "GetKernelSessionStatus", SERVICE + "ListKernelSessionOutput"):
            ref = f"{body.get('userName')}/{body.get('kernelSlug')}"
            session = self.sessions.get(ref)
            if session is None:
                return self.error(403, "Permission 'kernels.get' was denied")
            if path.endswith("Status"):
                session.observed += 1
                answer = {"status": session.status}
                if session.failure:
                    answer["failureMessage"] = session.failure
                return json_response(200, answer)
            files = [
                {"fileName": name, "url": f"{self.url}/files/{ref}/{quote(name)}"}
                for name in sorted(session.outputs)
            ]
            log = json.dumps(session.entries) if session.over else None
            return json_response(200, {"files": files, **({"log": log} if log else {})})
        m = re.fullmatch(r"/v1/kernels/logs/stream/([^/]+)/([^/]+)", path)
        if m:
            session = self.sessions.get(f"{m.group(1)}/{m.group(2)}")
            if session is None:
                return self.error(404, "no such kernel session")
            if session.over:  # the persisted log, as Kaggle serves it after the session
                return json_response(200, session.entries)
            return Response(
                200, headers={"Content-Type": "text/event-stream"}, stream=_sse(session)
            )
        return self.error(404, f"unknown method {path}")

    def _file(self, name: str) -> Response:
        owner, slug, rest = name.split("/", 2)
        session = self.sessions.get(f"{owner}/{slug}")
        data = session.outputs.get(rest) if session else None
        if data is None:
            return self.error(404, "no such file")
        return Response(200, data, {"Content-Type": "application/octet-stream"})


def _sse(session: Session):
    """The live log as server-sent events, until the session is over."""
    sent = 0
    while True:
        with session.changed:
            if sent >= len(session.entries) and not session.over:
                session.changed.wait(0.05)
            fresh = session.entries[sent:]
            over = session.over
        for entry in fresh:
            yield f"data: {json.dumps(entry)}\n\n".encode()
        sent += len(fresh)
        if over and not fresh:
            break
    yield b"data: END_OF_LOG\n\n"
