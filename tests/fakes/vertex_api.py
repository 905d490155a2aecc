"""A local stand-in for the Google Cloud services the Vertex AI backend uses, speaking their
REST wire formats to the real SDKs (``google-cloud-aiplatform``, ``google-cloud-storage``,
``google-auth``):

- Vertex AI custom jobs (``/v1/projects/P/locations/L/customJobs``: create, get, list with a
  label filter, ``:cancel``), answering with ``enum-encoding=int`` as the SDK asks. A job's
  state either follows a script (one step per GET) or, with ``execute=True``, a real run of
  the job's container command on this machine, as Vertex AI would run it: without the
  user's credentials, ``STORAGE_EMULATOR_HOST`` pointing at this fake's Cloud Storage, one
  process per replica of every worker pool, each with its ``CLUSTER_SPEC`` (replicas at
  127.0.0.1, each on a port of its own); a failed replica fails the job and stops the rest,
  ``:cancel`` stops them all.
- Cloud Storage JSON API: multipart and resumable uploads, media downloads (ranges,
  ``x-goog-hash``), object metadata, listing.
- Cloud Logging ``entries:list`` (the container's lines, INFO for stdout, ERROR for stderr).
- The OAuth token endpoint that service-account credentials refresh against.

Every request is recorded; ``fail()`` scripts faults, optionally after the action took
effect (a lost response). The server always answers, with a JSON error if need be.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from .base import FakeServer, Request, Response, json_response

ACCESS_TOKEN = "ya29.fake-access-token-0123456789abcdefghij"
PROJECT_NUMBER = "123456789012"

STATE_NUMBERS = {
    "JOB_STATE_UNSPECIFIED": 0,
    "JOB_STATE_QUEUED": 1,
    "JOB_STATE_PENDING": 2,
    "JOB_STATE_RUNNING": 3,
    "JOB_STATE_SUCCEEDED": 4,
    "JOB_STATE_FAILED": 5,
    "JOB_STATE_CANCELLING": 6,
    "JOB_STATE_CANCELLED": 7,
    "JOB_STATE_PAUSED": 8,
    "JOB_STATE_EXPIRED": 9,
    "JOB_STATE_UPDATING": 10,
    "JOB_STATE_PARTIALLY_SUCCEEDED": 11,
}
TERMINAL = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}

JOBS = re.compile(r"^/v1/projects/([^/]+)/locations/([^/]+)/customJobs$")
JOB = re.compile(r"^/v1/projects/([^/]+)/locations/([^/]+)/customJobs/(\d+)(:cancel)?$")
UPLOAD = re.compile(r"^/upload/storage/v1/b/([^/]+)/o$")
MEDIA = re.compile(r"^/download/storage/v1/b/([^/]+)/o/(.+)$")
OBJECT = re.compile(r"^/storage/v1/b/([^/]+)/o/(.+)$")
OBJECTS = re.compile(r"^/storage/v1/b/([^/]+)/o$")
BUCKET = re.compile(r"^/storage/v1/b/([^/]+)$")


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def error(status: int, message: str) -> Response:
    payload = {
        "error": {"code": status, "message": message, "status": STATUS_NAMES.get(status, "")}
    }
    return json_response(status, payload)


class FakeGoogleCloud(FakeServer):
    """Vertex AI + Cloud Storage + Cloud Logging on ``http://127.0.0.1:PORT``."""

    def __init__(self, workdir: Path) -> None:
        super().__init__()
        self.workdir = Path(workdir)
        self.jobs: dict[str, dict[str, Any]] = {}
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.entries: list[dict[str, Any]] = []
        self.script: list[Any] = ["JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]
        self.execute = False
        self.processes: dict[str, subprocess.Popen] = {}
        self._ids = itertools.count(4000000000000000001)
        self._uploads: dict[str, dict[str, Any]] = {}
        self._generations = itertools.count(1700000000000001)

    def cleanup(self) -> None:
        for process in list(self.processes.values()):
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        for process in list(self.processes.values()):
            with contextlib.suppress(Exception):
                process.wait(timeout=10)

    def error(self, status: int, message: str) -> Response:
        return error(status, message or STATUS_NAMES.get(status, "error"))

    # --- test helpers -----------------------------------------------------------------------
    def put_object(self, bucket: str, name: str, data: bytes) -> None:
        with self.lock:
            self._store(bucket, name, data, "application/octet-stream")

    def object_data(self, bucket: str, name: str) -> bytes | None:
        found = self.objects.get((bucket, name))
        return found["data"] if found else None

    def job(self, job_id: str | None = None) -> dict[str, Any]:
        if job_id is None:
            (job_id,) = self.jobs
        return self.jobs[job_id]

    def wait_for_process(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(p.poll() is not None for p in self.processes.values()):
                return
            time.sleep(0.05)
        raise AssertionError("the fake's job processes did not end")

    # --- dispatch ---------------------------------------------------------------------------
    def route(self, request: Request) -> Response:
        path, method = request.path, request.method
        if path == "/token" and method == "POST":
            return json_response(
                200, {"access_token": ACCESS_TOKEN, "expires_in": 3600, "token_type": "Bearer"}
            )
        if path.startswith("/v1/"):
            if not request.headers.get("authorization", "").startswith("Bearer "):
                return error(401, "Request is missing required authentication credential.")
            if match := JOBS.match(path):
                if method == "POST":
                    return self._create_job(match[1], match[2], request.json)
                return self._list_jobs(request.query.get("filter", ""))
            if match := JOB.match(path):
                if match[4] and method == "POST":
                    return self._cancel_job(match[3])
                return self._get_job(match[3])
        if (match := UPLOAD.match(path)) and method == "POST":
            return self._upload(unquote(match[1]), request)
        if (match := UPLOAD.match(path)) and method == "PUT":
            return self._resume_upload(request)
        if match := MEDIA.match(path):
            return self._download(unquote(match[1]), unquote(match[2]), request)
        if match := OBJECT.match(path):
            if request.query.get("alt") == "media":
                return self._download(unquote(match[1]), unquote(match[2]), request)
            return self._metadata(unquote(match[1]), unquote(match[2]))
        if match := OBJECTS.match(path):
            return self._list_objects(unquote(match[1]), request.query.get("prefix", ""))
        if match := BUCKET.match(path):
            return json_response(
                200,
                {
                    "kind": "storage#bucket",
                    "name": unquote(match[1]),
                    "projectNumber": PROJECT_NUMBER,
                    "location": "US-CENTRAL1",
                    "locationType": "region",
                },
            )
        if path == "/v2/entries:list" and method == "POST":
            return self._list_entries(request.json or {})
        return error(404, f"the fake does not serve {method} {path}")

    # --- Vertex AI --------------------------------------------------------------------------
    def _create_job(self, project: str, location: str, body: dict[str, Any]) -> Response:
        spec = (body or {}).get("jobSpec", {})
        if not spec.get("workerPoolSpecs"):
            return error(400, "CustomJobSpec must have at least one worker pool spec.")
        job_id = str(next(self._ids))
        job = {
            **body,
            "name": f"projects/{PROJECT_NUMBER}/locations/{location}/customJobs/{job_id}",
            "state": "JOB_STATE_QUEUED",
            "createTime": now(),
            "updateTime": now(),
            "_script": list(self.script),
            "_project": project,
        }
        with self.lock:
            self.jobs[job_id] = job
        if self.execute:
            threading.Thread(target=self._run, args=(job_id,), daemon=True).start()
        return json_response(200, self._public(job))

    def _public(self, job: dict[str, Any]) -> dict[str, Any]:
        public = {k: v for k, v in job.items() if not k.startswith("_")}
        public["state"] = STATE_NUMBERS[job["state"]]
        return public

    def _set_state(self, job: dict[str, Any], state: str, error_: dict | None = None) -> None:
        job["state"] = state
        job["updateTime"] = now()
        if state == "JOB_STATE_RUNNING":
            job.setdefault("startTime", now())
        if state in TERMINAL:
            job["endTime"] = now()
        if error_:
            job["error"] = error_

    def _get_job(self, job_id: str) -> Response:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                return error(404, f"The CustomJob {job_id} does not exist.")
            if not self.execute and job["_script"] and job["state"] not in TERMINAL:
                step = job["_script"].pop(0)
                state, problem = (step, None) if isinstance(step, str) else step
                self._set_state(job, state, problem)
            return json_response(200, self._public(job))

    def _list_jobs(self, query: str) -> Response:
        labels = dict(re.findall(r'labels\.([\w-]+)\s*=\s*"([^"]*)"', query))
        with self.lock:
            found = [
                self._public(job)
                for job in self.jobs.values()
                if all(job.get("labels", {}).get(k) == v for k, v in labels.items())
            ]
        return json_response(200, {"customJobs": found} if found else {})

    def _cancel_job(self, job_id: str) -> Response:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                return error(404, f"The CustomJob {job_id} does not exist.")
            if job["state"] in TERMINAL:
                return error(400, f"Cannot cancel a job in state {job['state']}.")
            self._set_state(job, "JOB_STATE_CANCELLING")
            job["_script"] = ["JOB_STATE_CANCELLED"]
            job["_cancelled"] = True
            replicas = [
                process
                for key, process in self.processes.items()
                if key == job_id or key.startswith(f"{job_id}:")
            ]
        for process in replicas:  # every replica of every pool
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        return json_response(200, {})

    def _run(self, job_id: str) -> None:
        """Run every replica of every worker pool here, as Vertex AI would: the container
        command with ``CLUSTER_SPEC`` (each replica at 127.0.0.1 on a port of its own, the
        replica's own ``task``). The job fails when a replica fails (the others are
        stopped) and succeeds when all of them succeed."""
        job = self.jobs[job_id]
        pools = job["jobSpec"]["workerPoolSpecs"]
        tasks = [
            (f"workerpool{p}", i, pool["containerSpec"])
            for p, pool in enumerate(pools)
            if pool
            for i in range(int(pool.get("replicaCount") or 1))
        ]
        cluster: dict[str, list[str]] = {}
        for kind, _, _ in tasks:
            cluster.setdefault(kind, []).append(f"127.0.0.1:{free_port()}")
        base = job["jobSpec"].get("baseOutputDirectory", {}).get("outputUriPrefix", "")
        with self.lock:
            self._set_state(job, "JOB_STATE_PENDING")
            if job.get("_cancelled"):
                self._set_state(job, "JOB_STATE_CANCELLED")
                return
            started = []
            for kind, index, container in tasks:
                command = [*container.get("command", []), *container.get("args", [])]
                if command and command[0] in ("python", "python3"):
                    command[0] = sys.executable
                env = {
                    k: v
                    for k, v in os.environ.items()
                    if not k.startswith(("GOOGLE_", "CLOUDSDK_", "NEURAL_JUPYTER_", "CLOUD_ML_"))
                }
                spec = {
                    "cluster": cluster,
                    "environment": "cloud",
                    "task": {"type": kind, "index": index},
                    "job": json.dumps({"worker_pool_specs": pools}),
                }
                env.update(
                    STORAGE_EMULATOR_HOST=self.url,
                    CLOUD_ML_PROJECT_ID=job["_project"],
                    CLOUD_ML_JOB_ID=job_id,
                    CLUSTER_SPEC=json.dumps(spec),
                    AIP_MODEL_DIR=base.rstrip("/") + "/model/",
                    AIP_CHECKPOINT_DIR=base.rstrip("/") + "/checkpoints/",
                    OMP_NUM_THREADS="1",
                )
                env.update({item["name"]: item["value"] for item in container.get("env", [])})
                task = f"{kind}-{index}"
                root = self.workdir / f"container-{job_id}" / task
                root.mkdir(parents=True, exist_ok=True)
                process = subprocess.Popen(
                    command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
                )
                # the primary replica under the job's id, the others beside it
                key = job_id if task == "workerpool0-0" else f"{job_id}:{task}"
                self.processes[key] = process
                started.append((task, process))
            self._set_state(job, "JOB_STATE_RUNNING")
        readers = [
            threading.Thread(target=self._log, args=(job_id, out, severity, task))
            for task, process in started
            for out, severity in ((process.stdout, "INFO"), (process.stderr, "ERROR"))
        ]
        for reader in readers:
            reader.start()
        failed: tuple[str, int] | None = None
        remaining = dict(started)
        while remaining:
            for task, process in list(remaining.items()):
                code = process.poll()
                if code is None:
                    continue
                del remaining[task]
                if code and failed is None:
                    failed = (task, code)
                    for other in remaining.values():  # a failed replica ends the job
                        with contextlib.suppress(ProcessLookupError):
                            other.send_signal(signal.SIGTERM)
            time.sleep(0.05)
        for reader in readers:
            reader.join()
        with self.lock:
            if job.get("_cancelled"):
                self._set_state(job, "JOB_STATE_CANCELLED")
            elif failed is None:
                self._set_state(job, "JOB_STATE_SUCCEEDED")
            else:
                task, code = failed
                status = code if code >= 0 else 128 - code
                message = (
                    f"The replica {task} exited with a non-zero status of {status}. "
                    "To find out more about why your job exited please check the logs: "
                    f"https://console.cloud.google.com/logs/viewer?project={job['_project']}"
                )
                self._set_state(job, "JOB_STATE_FAILED", {"code": 3, "message": message})

    def _log(self, job_id: str, stream: Any, severity: str, task: str = "workerpool0-0") -> None:
        for raw in iter(stream.readline, b""):
            entry = {
                "insertId": hashlib.sha1(
                    f"{job_id}{len(self.entries)}{raw!r}".encode()
                ).hexdigest(),
                "timestamp": now(),
                "severity": severity,
                "textPayload": raw.decode("utf-8", "replace").rstrip("\n"),
                "resource": {
                    "type": "ml_job",
                    "labels": {"job_id": job_id, "task_name": task},
                },
                "logName": f"projects/{PROJECT_NUMBER}/logs/{task}",
            }
            with self.lock:
                self.entries.append(entry)

    # --- Cloud Logging ----------------------------------------------------------------------
    def add_entry(self, job_id: str, text: str, severity: str = "INFO") -> None:
        with self.lock:
            self.entries.append(
                {
                    "insertId": f"e{len(self.entries):06d}",
                    "timestamp": now(),
                    "severity": severity,
                    "textPayload": text,
                    "resource": {"type": "ml_job", "labels": {"job_id": job_id}},
                }
            )

    def _list_entries(self, body: dict[str, Any]) -> Response:
        query = body.get("filter", "")
        job = re.search(r'resource\.labels\.job_id="(\d+)"', query)
        since = re.search(r'timestamp>="([^"]+)"', query)
        with self.lock:
            found = [
                e
                for e in self.entries
                if (not job or e["resource"]["labels"].get("job_id") == job[1])
                and (not since or e["timestamp"] >= since[1])
            ]
        start = int(body.get("pageToken") or 0)
        size = int(body.get("pageSize") or 50)
        page = {"entries": found[start : start + size]}
        if start + size < len(found):
            page["nextPageToken"] = str(start + size)
        return json_response(200, page)

    # --- Cloud Storage ----------------------------------------------------------------------
    def _store(self, bucket: str, name: str, data: bytes, content_type: str) -> dict[str, Any]:
        crc = _crc32c(data)
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        generation = str(next(self._generations))
        meta = {
            "kind": "storage#object",
            "id": f"{bucket}/{name}/{generation}",
            "name": name,
            "bucket": bucket,
            "generation": generation,
            "metageneration": "1",
            "contentType": content_type,
            "size": str(len(data)),
            "md5Hash": md5,
            "crc32c": crc,
            "timeCreated": now(),
            "updated": now(),
            "mediaLink": f"{self.url}/download/storage/v1/b/{bucket}/o/{quote(name, safe='')}"
            f"?generation={generation}&alt=media",
        }
        self.objects[(bucket, name)] = {"meta": meta, "data": data}
        return meta

    def _upload(self, bucket: str, request: Request) -> Response:
        kind = request.query.get("uploadType")
        if kind == "multipart":
            boundary = re.search(r'boundary="?([^";]+)"?', request.headers["content-type"])
            parts = request.body.split(b"--" + boundary[1].encode())
            meta_part, data_part = _part(parts[1]), _part(parts[2])
            meta = json.loads(meta_part[1])
            name = request.query.get("name") or meta["name"]
            content_type = data_part[0].get("content-type", "application/octet-stream")
            with self.lock:
                return json_response(200, self._store(bucket, name, data_part[1], content_type))
        if kind == "resumable":
            meta = request.json or {}
            upload_id = hashlib.sha1(
                f"{bucket}{time.time()}{len(self._uploads)}".encode()
            ).hexdigest()
            self._uploads[upload_id] = {
                "bucket": bucket,
                "name": request.query.get("name") or meta.get("name"),
                "type": request.headers.get("x-upload-content-type", "application/octet-stream"),
                "data": b"",
            }
            location = (
                f"{self.url}/upload/storage/v1/b/{bucket}/o"
                f"?uploadType=resumable&upload_id={upload_id}"
            )
            return Response(200, b"", {"Location": location})
        return error(400, f"unsupported uploadType {kind!r}")

    def _resume_upload(self, request: Request) -> Response:
        upload = self._uploads.get(request.query.get("upload_id", ""))
        if upload is None:
            return error(404, "No such upload session.")
        upload["data"] += request.body
        total = re.search(r"/(\d+|\*)$", request.headers.get("content-range", ""))
        if total and total[1] != "*" and len(upload["data"]) >= int(total[1]):
            with self.lock:
                meta = self._store(upload["bucket"], upload["name"], upload["data"], upload["type"])
            return json_response(200, meta)
        headers = {"Range": f"bytes=0-{len(upload['data']) - 1}"} if upload["data"] else {}
        return Response(308, b"", headers)

    def _metadata(self, bucket: str, name: str) -> Response:
        found = self.objects.get((bucket, name))
        if found is None:
            return error(404, f"No such object: {bucket}/{name}")
        return json_response(200, found["meta"])

    def _download(self, bucket: str, name: str, request: Request) -> Response:
        found = self.objects.get((bucket, name))
        if found is None:
            return error(404, f"No such object: {bucket}/{name}")
        data, meta = found["data"], found["meta"]
        headers = {
            "Content-Type": meta["contentType"],
            "x-goog-generation": meta["generation"],
            "x-goog-stored-content-length": str(len(data)),
        }
        wanted = re.match(r"bytes=(\d+)-(\d*)", request.headers.get("range", ""))
        if wanted:
            start = int(wanted[1])
            end = int(wanted[2]) if wanted[2] else len(data) - 1
            if start >= len(data):
                return error(416, "The requested range cannot be satisfied.")
            end = min(end, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return Response(206, data[start : end + 1], headers)
        headers["x-goog-hash"] = f"crc32c={meta['crc32c']},md5={meta['md5Hash']}"
        return Response(200, data, headers)

    def _list_objects(self, bucket: str, prefix: str) -> Response:
        items = [
            meta["meta"]
            for (b, name), meta in sorted(self.objects.items())
            if b == bucket and name.startswith(prefix)
        ]
        return json_response(200, {"kind": "storage#objects", "items": items})


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _part(chunk: bytes) -> tuple[dict[str, str], bytes]:
    head, _, data = chunk.lstrip(b"\r\n").partition(b"\r\n\r\n")
    headers = {}
    for line in head.decode().splitlines():
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return headers, data.removesuffix(b"\r\n")


def _crc32c(data: bytes) -> str:
    import google_crc32c

    return base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()
