"""A local stand-in for a Databricks workspace's REST API, for the real ``databricks-sdk``
``WorkspaceClient`` to talk to in tests:

- Jobs 2.2: ``runs/submit`` (honouring ``idempotency_token``), ``runs/get`` (a parent run
  with one task run), ``runs/get-output`` (task runs only, as the real API: ``logs``,
  ``logs_truncated``, ``error``, ``error_trace``), ``runs/cancel``.
- DBFS 2.0 (``create``/``add-block``/``close``, ``get-status``, ``read``, ``list``,
  ``mkdirs``) and the Files API (``/api/2.0/fs/files``, ``/api/2.0/fs/directories``) for
  Unity Catalog volumes, both backed by a directory on disk: ``ROOT/dbfs/...`` and
  ``ROOT/Volumes/...``, which is also what a run's driver sees at ``/dbfs/...`` and
  ``/Volumes/...``.
- ``GET /.well-known/databricks-config`` (404, as on older workspaces) and SCIM ``Me``.

A run's state follows a script (one step per ``runs/get``) or, with ``execute=True``, a real
run of its ``spark_python_task`` on this machine (parameters under ``/dbfs`` or
``/Volumes`` mapped into ROOT, like the driver's FUSE mounts; no workspace token in its
environment). Every request is recorded; ``fail()`` scripts faults, optionally after the
action took effect (a lost response). Bearer tokens are checked; the server always
answers.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .base import FakeServer, Request, Response, json_response

TOKEN = "dapi-fake-0123456789abcdef0123456789abcdef"
USER = "someone@example.com"
ERROR_CODES = {
    400: "INVALID_PARAMETER_VALUE",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "RESOURCE_DOES_NOT_EXIST",
    409: "RESOURCE_CONFLICT",
    429: "REQUEST_LIMIT_EXCEEDED",
    500: "INTERNAL_ERROR",
    502: "BAD_GATEWAY",
    503: "TEMPORARILY_UNAVAILABLE",
}
TERMINAL = {"TERMINATED", "SKIPPED", "INTERNAL_ERROR"}


def error(status: int, message: str, code: str | None = None) -> Response:
    return json_response(
        status, {"error_code": code or ERROR_CODES.get(status, "UNKNOWN"), "message": message}
    )


def millis() -> int:
    return int(time.time() * 1000)


class FakeDatabricks(FakeServer):
    """A Databricks workspace on ``http://127.0.0.1:PORT``."""

    def __init__(self, root: Path, token: str = TOKEN) -> None:
        super().__init__()
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.runs: dict[int, dict[str, Any]] = {}
        self.tokens: dict[str, int] = {}
        self.volumes: set[str] = set()
        # (life_cycle_state, result_state or None, state_message) per runs/get
        self.script: list[tuple[str, str | None, str]] = [
            ("PENDING", None, "Waiting for cluster"),
            ("RUNNING", None, "In run"),
            ("TERMINATED", "SUCCESS", ""),
        ]
        self.logs = ""  # the logs new scripted runs report once running
        self.error_trace: str | None = None  # ... and on failure
        self.log_limit: int | None = None  # keep only the last N characters (truncated)
        self.execute = False
        self.processes: dict[int, subprocess.Popen] = {}
        self._ids = itertools.count(5001)
        self._handles = itertools.count(1)
        self._open: dict[int, dict[str, Any]] = {}

    def cleanup(self) -> None:
        for process in list(self.processes.values()):
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with contextlib.suppress(Exception):
                process.wait(timeout=10)

    def error(self, status: int, message: str, error_code: str | None = None) -> Response:
        code = error_code or ERROR_CODES.get(status, "UNKNOWN")
        response = error(status, message or code, code)
        if status in (429, 503):
            response.headers["Retry-After"] = "0"
        return response

    def create_volume(self, catalog: str, schema: str, volume: str) -> str:
        path = f"/Volumes/{catalog}/{schema}/{volume}"
        self.volumes.add(path)
        (self.root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
        return path

    def file(self, path: str) -> Path:
        """Where a DBFS (``dbfs:/x``, ``/x``), FUSE (``/dbfs/x``) or volume path lives."""
        if path.startswith("dbfs:"):
            path = path[len("dbfs:") :]
        if path.startswith(("/Volumes/", "/dbfs/")):
            return self.root / path.lstrip("/")
        return self.root / "dbfs" / path.lstrip("/")

    def run(self, run_id: int | None = None) -> dict[str, Any]:
        if run_id is None:
            (run_id,) = self.runs
        return self.runs[run_id]

    # --- dispatch ---------------------------------------------------------------------------
    def refuse(self, request: Request) -> Response | None:
        if request.path == "/.well-known/databricks-config":
            return error(404, "Not Found", "NOT_FOUND")
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return error(401, "Invalid access token.", "UNAUTHENTICATED")
        return None

    def route(self, request: Request) -> Response:
        path, method, query = request.path, request.method, request.query
        body = request.json if method in ("POST",) and request.body else {}
        path = re.sub(r"^/api/2\.[12]/jobs/", "/api/2.2/jobs/", path)  # older SDKs say 2.1
        if path == "/api/2.0/preview/scim/v2/Me":
            return json_response(200, {"id": "1001", "userName": USER, "active": True})
        if path == "/api/2.2/jobs/runs/submit" and method == "POST":
            return self._submit(body)
        if path == "/api/2.2/jobs/runs/get":
            return self._get_run(int(query["run_id"]))
        if path == "/api/2.2/jobs/runs/get-output":
            return self._get_output(int(query["run_id"]))
        if path == "/api/2.2/jobs/runs/cancel" and method == "POST":
            return self._cancel(int(body["run_id"]))
        if path.startswith("/api/2.0/dbfs/"):
            return self._dbfs(path.rsplit("/", 1)[1], {**query, **(body or {})})
        if path.startswith("/api/2.0/fs/files/"):
            return self._files(method, path[len("/api/2.0/fs/files") :], request)
        if path.startswith("/api/2.0/fs/directories/"):
            return self._directories(method, path[len("/api/2.0/fs/directories") :])
        return error(404, f"the fake does not serve {method} {path}", "ENDPOINT_NOT_FOUND")

    # --- jobs -------------------------------------------------------------------------------
    def _submit(self, body: dict[str, Any]) -> Response:
        token = body.get("idempotency_token")
        with self.lock:
            if token and token in self.tokens:
                return json_response(200, {"run_id": self.tokens[token]})
            tasks = body.get("tasks") or []
            if len(tasks) != 1 or "task_key" not in tasks[0]:
                return error(400, "A run needs exactly one task with a task_key in this fake.")
            task = tasks[0]
            if not (task.get("new_cluster") or task.get("existing_cluster_id")):
                return error(400, "One of new_cluster or existing_cluster_id must be given.")
            run_id, task_id = next(self._ids), next(self._ids)
            run = {
                "body": body,
                "run_id": run_id,
                "task_run_id": task_id,
                "state": ("PENDING", None, "Waiting for cluster"),
                "script": list(self.script),
                "logs": "",
                "planned_logs": self.logs,
                "error": None,
                "error_trace": None,
                "start_time": millis(),
                "end_time": 0,
            }
            self.runs[run_id] = run
            if token:
                self.tokens[token] = run_id
        if self.execute:
            threading.Thread(target=self._execute, args=(run_id,), daemon=True).start()
        return json_response(200, {"run_id": run_id})

    def _advance(self, run: dict[str, Any]) -> None:
        if self.execute or run["state"][0] in TERMINAL or not run["script"]:
            return
        run["state"] = run["script"].pop(0)
        life, result, _ = run["state"]
        if life in ("RUNNING", "TERMINATING", "TERMINATED"):
            run["logs"] = run["planned_logs"]
        if result and result not in ("SUCCESS",) and self.error_trace:
            run["error"] = self.error_trace.strip().splitlines()[-1]
            run["error_trace"] = self.error_trace
        if life in TERMINAL:
            run["end_time"] = millis()

    def _state(self, run: dict[str, Any]) -> dict[str, Any]:
        life, result, message = run["state"]
        state = {
            "life_cycle_state": life,
            "state_message": message,
            "user_cancelled_or_timedout": result in ("CANCELED", "TIMEDOUT"),
        }
        if result:
            state["result_state"] = result
        return state

    def _get_run(self, run_id: int) -> Response:
        with self.lock:
            run = self.runs.get(run_id)
            if run is None:
                return error(400, f"Run {run_id} does not exist.", "INVALID_PARAMETER_VALUE")
            self._advance(run)
            task = dict(run["body"]["tasks"][0])
            task.update(run_id=run["task_run_id"], state=self._state(run), attempt_number=0)
            payload = {
                "run_id": run_id,
                "number_in_job": run_id,
                "run_name": run["body"].get("run_name"),
                "run_type": "SUBMIT_RUN",
                "creator_user_name": USER,
                "state": self._state(run),
                "tasks": [task],
                "start_time": run["start_time"],
                "end_time": run["end_time"],
                "run_page_url": f"{self.url}/#job/runs/{run_id}",
            }
            return json_response(200, payload)

    def _get_output(self, run_id: int) -> Response:
        with self.lock:
            if run_id in self.runs:
                return error(
                    400,
                    "Retrieving the output of runs with multiple tasks is not supported. "
                    "Please retrieve the output of each individual task run instead.",
                )
            run = next((r for r in self.runs.values() if r["task_run_id"] == run_id), None)
            if run is None:
                return error(400, f"Run {run_id} does not exist.", "INVALID_PARAMETER_VALUE")
            logs = run["logs"]
            truncated = self.log_limit is not None and len(logs) > self.log_limit
            if truncated:
                logs = logs[-self.log_limit :]
            payload: dict[str, Any] = {
                "metadata": {"run_id": run_id, "state": self._state(run)},
                "logs": logs,
                "logs_truncated": truncated,
            }
            if run["error"]:
                payload["error"] = run["error"]
            if run["error_trace"]:
                payload["error_trace"] = run["error_trace"]
            return json_response(200, payload)

    def _cancel(self, run_id: int) -> Response:
        with self.lock:
            run = self.runs.get(run_id)
            if run is None:
                return error(400, f"Run {run_id} does not exist.", "INVALID_PARAMETER_VALUE")
            if run["state"][0] not in TERMINAL:
                run["state"] = ("TERMINATING", None, "Run cancellation requested.")
                run["script"] = [("TERMINATED", "CANCELED", "Run cancelled.")]
                run["cancelled"] = True
            process = self.processes.get(run_id)
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        return json_response(200, {})

    def _execute(self, run_id: int) -> None:
        """Run the spark_python_task here, as the driver of its cluster would."""
        run = self.runs[run_id]
        task = run["body"]["tasks"][0]["spark_python_task"]
        script = self.file(task["python_file"])
        arguments = [
            p if p.startswith("--") else str(self.file(p)) for p in task.get("parameters", [])
        ]
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DATABRICKS_", "NEURAL_JUPYTER_", "GOOGLE_"))
        }
        env.update(DATABRICKS_RUNTIME_VERSION="15.4", OMP_NUM_THREADS="1")
        workdir = self.root / f"driver-{run_id}"
        workdir.mkdir(parents=True, exist_ok=True)
        with self.lock:
            if run.get("cancelled"):
                run["state"] = ("TERMINATED", "CANCELED", "Run cancelled.")
                return
            run["state"] = ("RUNNING", None, "In run")
            process = subprocess.Popen(
                [sys.executable, str(script), *arguments],
                cwd=workdir,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            self.processes[run_id] = process
        for raw in iter(process.stdout.readline, b""):
            with self.lock:
                run["logs"] += raw.decode("utf-8", "replace")
        code = process.wait()
        with self.lock:
            run["end_time"] = millis()
            if run.get("cancelled"):
                run["state"] = ("TERMINATED", "CANCELED", "Run cancelled.")
            elif code == 0:
                run["state"] = ("TERMINATED", "SUCCESS", "")
            else:
                run["state"] = (
                    "TERMINATED",
                    "FAILED",
                    "Workload failed, see run output for details",
                )
                run["error"] = f"SystemExit: {code}"

    # --- DBFS -------------------------------------------------------------------------------
    def _dbfs(self, operation: str, args: dict[str, Any]) -> Response:
        if operation == "create":
            target = self.file(args["path"])
            if target.exists() and not args.get("overwrite"):
                return error(
                    400,
                    f"A file or directory already exists at {args['path']}.",
                    "RESOURCE_ALREADY_EXISTS",
                )
            handle = next(self._handles)
            self._open[handle] = {"path": target, "data": b""}
            return json_response(200, {"handle": handle})
        if operation == "add-block":
            self._open[int(args["handle"])]["data"] += base64.b64decode(args["data"])
            return json_response(200, {})
        if operation == "close":
            upload = self._open.pop(int(args["handle"]))
            upload["path"].parent.mkdir(parents=True, exist_ok=True)
            upload["path"].write_bytes(upload["data"])
            return json_response(200, {})
        if operation == "mkdirs":
            self.file(args["path"]).mkdir(parents=True, exist_ok=True)
            return json_response(200, {})
        target = self.file(args["path"])
        if not target.exists():
            return error(404, f"No file or directory exists on path {args['path']}.")
        if operation == "get-status":
            return json_response(200, self._info(args["path"], target))
        if operation == "read":
            offset, length = int(args.get("offset", 0)), int(args.get("length", 1 << 20))
            data = target.read_bytes()[offset : offset + length]
            return json_response(
                200, {"bytes_read": len(data), "data": base64.b64encode(data).decode()}
            )
        if operation == "list":
            if target.is_file():
                return json_response(200, {"files": [self._info(args["path"], target)]})
            base = args["path"].removeprefix("dbfs:").rstrip("/")
            files = [
                self._info(f"{base}/{child.name}", child) for child in sorted(target.iterdir())
            ]
            return json_response(200, {"files": files})
        return error(404, f"no DBFS operation {operation}", "ENDPOINT_NOT_FOUND")

    @staticmethod
    def _info(path: str, target: Path) -> dict[str, Any]:
        stat = target.stat()
        return {
            "path": path.removeprefix("dbfs:"),
            "is_dir": target.is_dir(),
            "file_size": 0 if target.is_dir() else stat.st_size,
            "modification_time": int(stat.st_mtime * 1000),
        }

    # --- Files API (volumes) ------------------------------------------------------------------
    def _volume_of(self, path: str) -> str | None:
        parts = path.split("/")
        volume = "/".join(parts[:5])
        return volume if volume in self.volumes else None

    def _files(self, method: str, path: str, request: Request) -> Response:
        path = unquote(path)
        if self._volume_of(path) is None:
            return error(404, f"Volume for path {path} does not exist.", "NOT_FOUND")
        target = self.file(path)
        if method == "PUT":
            if target.exists() and request.query.get("overwrite") != "true":
                return error(409, f"The file {path} already exists.", "ALREADY_EXISTS")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(request.body)
            return Response(204)
        if not target.is_file():
            return error(404, f"The file {path} does not exist.", "NOT_FOUND")
        headers = {
            "Content-Type": "application/octet-stream",
            "Last-Modified": formatdate(target.stat().st_mtime, usegmt=True),
        }
        if method == "HEAD":
            headers["Content-Length"] = str(target.stat().st_size)
            return Response(200, b"", headers)
        return Response(200, target.read_bytes(), headers)

    def _directories(self, method: str, path: str) -> Response:
        path = unquote(path).rstrip("/")
        if self._volume_of(path) is None:
            return error(404, f"Volume for path {path} does not exist.", "NOT_FOUND")
        target = self.file(path)
        if method == "PUT":
            target.mkdir(parents=True, exist_ok=True)
            return Response(204)
        if not target.is_dir():
            return error(404, f"The directory {path} does not exist.", "NOT_FOUND")
        if method == "HEAD":
            return Response(200)
        contents = [
            {
                "path": f"{path}/{child.name}" + ("/" if child.is_dir() else ""),
                "name": child.name,
                "is_directory": child.is_dir(),
                "file_size": 0 if child.is_dir() else child.stat().st_size,
                "last_modified": int(child.stat().st_mtime * 1000),
            }
            for child in sorted(target.iterdir())
        ]
        return json_response(200, {"contents": contents})
