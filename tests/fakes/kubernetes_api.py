"""A local fake of the Kubernetes API server, spoken to by the real ``kubernetes`` client.

It keeps ConfigMaps, batch/v1 Jobs and their pods, checks the bearer token (401 with a
``Status`` body otherwise), answers 409 ``AlreadyExists`` for a second create, deletes with
``propagationPolicy`` (``deletionTimestamp`` first, gone a moment later) and streams pod logs
with ``follow=true`` (chunked, until the container ends).

A pod runs one of two ways:

* ``Script`` (the default): scripted waiting reasons, log lines and an exit code, in
  milliseconds;
* ``execute=True``: like a kubelet whose image is this machine's Python. The ConfigMap's
  files are written where the pod would mount them and the container's command really runs
  (``bootstrap.py`` unpacks the bundle and runs ``train.py``), its output is the pod log.

Every request is recorded (``requests``) for assertions; ``fail()`` injects errors.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Script:
    """What a scripted pod does: wait, print ``lines``, exit with ``exit_code``."""

    lines: list[str] = field(default_factory=list)
    exit_code: int = 0
    waiting: list[str] = field(default_factory=lambda: ["ContainerCreating"])
    step_seconds: float = 0.02  # each waiting reason lasts this long and until it was seen
    line_seconds: float = 0.005
    hold: threading.Event | None = None  # while set/unset: keep running after the lines


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    status: int = 0


@dataclass
class Failure:
    method: str
    pattern: str
    status: int
    message: str
    reason: str
    times: int = 1
    after: bool = False  # do the request first, then answer with the error (a lost reply)


class Pod:
    def __init__(self, name: str, job: dict[str, Any]) -> None:
        self.name = name
        self.job = job
        self.phase = "Pending"
        self.waiting: str | None = "ContainerCreating"
        self.waiting_message: str | None = None
        self.started = False
        self.exit_code: int | None = None
        self.reason: str | None = None
        self.log = bytearray()
        self.changed = threading.Condition()
        self.created = now()
        self.process: subprocess.Popen | None = None
        self.deleted = False
        self.observed = 0  # how often a client has listed this pod

    def write(self, data: bytes) -> None:
        with self.changed:
            self.log.extend(data)
            self.changed.notify_all()

    def finish(self, code: int, reason: str | None = None) -> None:
        with self.changed:
            self.exit_code = code
            self.reason = reason or ("Completed" if code == 0 else "Error")
            self.phase = "Succeeded" if code == 0 else "Failed"
            self.waiting = None
            self.changed.notify_all()

    @property
    def ended(self) -> bool:
        return self.exit_code is not None

    def to_json(self) -> dict[str, Any]:
        self.observed += 1
        name = self.job["metadata"]["name"]
        container = self.job["spec"]["template"]["spec"]["containers"][0]
        if self.ended:
            state = {
                "terminated": {
                    "exitCode": self.exit_code,
                    "reason": self.reason,
                    "startedAt": self.created,
                    "finishedAt": now(),
                }
            }
        elif self.started:
            state = {"running": {"startedAt": self.created}}
        else:
            waiting = {"reason": self.waiting or "ContainerCreating"}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            state = {"waiting": waiting}
        scheduled = self.waiting != "Unschedulable"
        conditions = [
            {
                "type": "PodScheduled",
                "status": "True" if scheduled else "False",
                **({} if scheduled else {"reason": "Unschedulable"}),
                **({"message": self.waiting_message} if not scheduled else {}),
            }
        ]
        labels = dict(self.job["spec"]["template"]["metadata"].get("labels", {}))
        labels.update({"job-name": name, "batch.kubernetes.io/job-name": name})
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.name,
                "namespace": self.job["metadata"]["namespace"],
                "labels": labels,
                "creationTimestamp": self.created,
                "uid": str(uuid.uuid4()),
            },
            "spec": self.job["spec"]["template"]["spec"],
            "status": {
                "phase": self.phase,
                "conditions": conditions,
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container["image"],
                        "imageID": "",
                        "ready": self.started and not self.ended,
                        "restartCount": 0,
                        "state": state,
                    }
                ],
            },
        }


class FakeKubernetes:
    """``with FakeKubernetes() as kube:`` ... ``kube.kubeconfig(path)`` ... ``kube.requests``."""

    def __init__(self, token: str = "fake-k8s-token-0123456789", execute: bool = False) -> None:
        self.token = token
        self.execute = execute
        self.script = Script(lines=['{"event": "start", "epochs": 1}'])
        self.requests: list[Recorded] = []
        self.failures: list[Failure] = []
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.configmaps: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], Pod] = {}
        self.lock = threading.RLock()
        self.workdir = Path(tempfile.mkdtemp(prefix="fake-k8s-"))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # --- lifecycle --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeKubernetes:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        with self.lock:
            for pod in self.pods.values():
                self._kill(pod)
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def kubeconfig(self, path: Path, namespace: str = "ml", token: str | None = None) -> Path:
        """A kubeconfig (JSON is YAML) for this server with a bearer-token user."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": token or self.token}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "tester", "namespace": namespace},
                }
            ],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config))
        return path

    def fail(
        self,
        method: str,
        pattern: str,
        status: int,
        message: str = "",
        *,
        reason: str = "",
        times: int = 1,
        after: bool = False,
    ) -> None:
        self.failures.append(Failure(method, pattern, status, message, reason, times, after))

    def calls(self, method: str, pattern: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    def pod_of(self, namespace: str, job: str) -> Pod | None:
        with self.lock:
            for pod in self.pods.values():
                if (
                    pod.job["metadata"]["name"] == job
                    and pod.job["metadata"]["namespace"] == namespace
                ):
                    return pod
        return None

    # --- object logic -------------------------------------------------------------------------
    def _job_status(self, job: dict[str, Any]) -> dict[str, Any]:
        if "_final" in job:  # a finished Job keeps its conditions after its pods are gone
            return job["_final"]
        pod = self.pod_of(job["metadata"]["namespace"], job["metadata"]["name"])
        status: dict[str, Any] = {"startTime": job["metadata"]["creationTimestamp"]}
        if pod is None:
            return status
        if not pod.ended:
            status["active"] = 1
            status["ready"] = 1 if pod.started else 0
            return status
        if pod.reason == "DeadlineExceeded":
            status["failed"] = 1
            status["conditions"] = [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "DeadlineExceeded",
                    "message": "Job was active longer than specified deadline",
                }
            ]
        elif pod.exit_code == 0:
            status["succeeded"] = 1
            status["conditions"] = [{"type": "Complete", "status": "True"}]
        else:
            status["failed"] = 1
            status["conditions"] = [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                }
            ]
        job["_final"] = status
        return status

    def _start_pod(self, job: dict[str, Any]) -> None:
        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        pod = Pod(f"{name}-{uuid.uuid4().hex[:5]}", job)
        with self.lock:
            self.pods[(namespace, pod.name)] = pod
        target = self._execute if self.execute else self._run_script
        threading.Thread(target=target, args=(pod,), daemon=True).start()

    def _deadline(self, pod: Pod) -> float | None:
        seconds = pod.job["spec"].get("activeDeadlineSeconds")
        return time.monotonic() + seconds if seconds else None

    def _run_script(self, pod: Pod) -> None:
        script = self.script
        deadline = self._deadline(pod)
        for reason in script.waiting:
            pod.waiting, pod.waiting_message = reason, None
            if reason == "Unschedulable":
                pod.waiting_message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
            seen = pod.observed
            time.sleep(script.step_seconds)
            while pod.observed == seen and not pod.deleted:
                time.sleep(0.005)
            if pod.deleted:
                return
        pod.waiting, pod.started, pod.phase = None, True, "Running"
        for line in script.lines:
            if pod.deleted:
                return
            pod.write(line.encode() + b"\n")
            time.sleep(script.line_seconds)
        while script.hold is not None and not script.hold.is_set() and not pod.deleted:
            if deadline and time.monotonic() > deadline:
                pod.finish(137, "DeadlineExceeded")
                return
            time.sleep(0.01)
        if not pod.deleted:
            pod.finish(script.exit_code)

    def _execute(self, pod: Pod) -> None:
        """Run the container's command on this machine with the pod's volumes as folders."""
        namespace = pod.job["metadata"]["namespace"]
        spec = pod.job["spec"]["template"]["spec"]
        container = spec["containers"][0]
        root = self.workdir / pod.name
        mounts: dict[str, Path] = {}
        while True:  # like a kubelet: the pod waits for its ConfigMap volume
            with self.lock:
                missing = [
                    v["configMap"]["name"]
                    for v in spec["volumes"]
                    if "configMap" in v
                    and (namespace, v["configMap"]["name"]) not in self.configmaps
                ]
            if not missing or pod.deleted:
                break
            time.sleep(0.01)
        if pod.deleted:
            return
        for volume in spec["volumes"]:
            folder = root / volume["name"]
            folder.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                configmap = self.configmaps[(namespace, volume["configMap"]["name"])]
                for key, text in (configmap.get("data") or {}).items():
                    (folder / key).write_text(text)
                for key, data in (configmap.get("binaryData") or {}).items():
                    (folder / key).write_bytes(base64.b64decode(data))
            mounts[volume["name"]] = folder
        paths = {m["mountPath"]: mounts[m["name"]] for m in container["volumeMounts"]}

        def local(path: str) -> str:
            for mount, folder in sorted(paths.items(), key=lambda item: -len(item[0])):
                if path == mount or path.startswith(mount + "/"):
                    return str(folder / path[len(mount) :].lstrip("/"))
            return path

        env = {e["name"]: local(e["value"]) for e in container.get("env", [])}
        command = [sys.executable if c == "python" else local(c) for c in container["command"]]
        import os

        pod.waiting, pod.started, pod.phase = None, True, "Running"
        process = subprocess.Popen(
            command,
            cwd=local(container.get("workingDir", "/")),
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        pod.process = process
        deadline = self._deadline(pod)
        assert process.stdout is not None
        timer = None
        if deadline:
            timer = threading.Timer(deadline - time.monotonic(), self._expire, args=(pod,))
            timer.daemon = True
            timer.start()
        for line in iter(process.stdout.readline, b""):
            pod.write(line)
        code = process.wait()
        if timer:
            timer.cancel()
        if not pod.deleted and not pod.ended:
            pod.finish(code)

    def _expire(self, pod: Pod) -> None:
        if not pod.ended:
            pod.finish(137, "DeadlineExceeded")
            self._kill(pod)

    @staticmethod
    def _kill(pod: Pod) -> None:
        import os
        import signal

        if pod.process is not None and pod.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pod.process.pid, signal.SIGKILL)

    def _delete_job(self, namespace: str, name: str, policy: str | None) -> dict[str, Any] | None:
        with self.lock:
            job = self.jobs.get((namespace, name))
            if job is None:
                return None
            job["metadata"]["deletionTimestamp"] = now()
            job["metadata"]["finalizers"] = ["foregroundDeletion"] if policy == "Foreground" else []
            job["_policy"] = policy
        pod = self.pod_of(namespace, name)
        if pod is not None:
            pod.deleted = True
            self._kill(pod)
            if not pod.ended:
                pod.finish(143, "Error")

        def collect() -> None:
            time.sleep(0.2)
            with self.lock:
                self.jobs.pop((namespace, name), None)
                uid = job["metadata"]["uid"]
                for key, pod_ in list(self.pods.items()):
                    if pod_.job is job:
                        self.pods.pop(key)
                for key, configmap in list(self.configmaps.items()):
                    owners = configmap["metadata"].get("ownerReferences") or []
                    if any(o.get("uid") == uid for o in owners):
                        self.configmaps.pop(key)

        threading.Thread(target=collect, daemon=True).start()
        return job

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
                if fake.requests:
                    fake.requests[-1].status = status

            def _status(self, code: int, message: str, reason: str, **details: Any) -> None:
                self._json(
                    code,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Failure",
                        "message": message,
                        "reason": reason,
                        "details": details,
                        "code": code,
                    },
                )

            def _dispatch(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                record = Recorded(self.command, url.path, parse_qs(url.query), body)
                fake.requests.append(record)
                if self.headers.get("Authorization") != f"Bearer {fake.token}":
                    self._status(401, "Unauthorized", "Unauthorized")
                    return
                failure = next(
                    (
                        f
                        for f in fake.failures
                        if f.times > 0
                        and f.method == self.command
                        and re.search(f.pattern, url.path)
                    ),
                    None,
                )
                if failure is not None:
                    failure.times -= 1
                    if failure.after:
                        self._route(url, body, record, reply=False)
                    self._status(
                        failure.status,
                        failure.message or f"injected {failure.status}",
                        failure.reason or "InternalError",
                    )
                    return
                self._route(url, body, record)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

            def _route(self, url: Any, body: Any, record: Recorded, reply: bool = True) -> None:
                path = url.path
                query = parse_qs(url.query)
                respond = self._json if reply else (lambda *a: None)
                status = self._status if reply else (lambda *a, **k: None)
                m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/configmaps(?:/([^/]+))?", path)
                if m:
                    namespace, name = m.groups()
                    if self.command == "POST":
                        key = (namespace, body["metadata"]["name"])
                        with fake.lock:
                            if key in fake.configmaps:
                                return status(
                                    409,
                                    f'configmaps "{key[1]}" already exists',
                                    "AlreadyExists",
                                    name=key[1],
                                    kind="configmaps",
                                )
                            body["metadata"].update(
                                namespace=namespace,
                                uid=str(uuid.uuid4()),
                                creationTimestamp=now(),
                            )
                            fake.configmaps[key] = body
                        return respond(201, body)
                    item = fake.configmaps.get((namespace, name or ""))
                    if item is None:
                        return status(404, f'configmaps "{name}" not found', "NotFound")
                    return respond(200, item)
                m = re.fullmatch(r"/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?", path)
                if m:
                    namespace, name = m.groups()
                    if self.command == "POST":
                        key = (namespace, body["metadata"]["name"])
                        with fake.lock:
                            if key in fake.jobs:
                                return status(
                                    409,
                                    f'jobs.batch "{key[1]}" already exists',
                                    "AlreadyExists",
                                    name=key[1],
                                    group="batch",
                                    kind="jobs",
                                )
                            body["metadata"].update(
                                namespace=namespace,
                                uid=str(uuid.uuid4()),
                                creationTimestamp=now(),
                            )
                            fake.jobs[key] = body
                        fake._start_pod(body)
                        return respond(201, {**body, "status": {}})
                    key = (namespace, name or "")
                    if self.command == "DELETE":
                        policy = (body or {}).get("propagationPolicy") or (
                            query.get("propagationPolicy") or [None]
                        )[0]
                        job = fake._delete_job(*key, policy)
                        if job is None:
                            return status(404, f'jobs.batch "{name}" not found', "NotFound")
                        return respond(200, {k: v for k, v in job.items() if not k.startswith("_")})
                    job = fake.jobs.get(key)
                    if job is None:
                        return status(404, f'jobs.batch "{name}" not found', "NotFound")
                    shown = {k: v for k, v in job.items() if not k.startswith("_")}
                    return respond(200, {**shown, "status": fake._job_status(job)})
                m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods", path)
                if m:
                    (namespace,) = m.groups()
                    selector = (query.get("labelSelector") or [""])[0]
                    wanted = dict(p.split("=", 1) for p in selector.split(",") if "=" in p)
                    with fake.lock:
                        items = [
                            pod.to_json() for (ns, _), pod in fake.pods.items() if ns == namespace
                        ]
                    items = [
                        i
                        for i in items
                        if all(i["metadata"]["labels"].get(k) == v for k, v in wanted.items())
                    ]
                    return respond(200, {"apiVersion": "v1", "kind": "PodList", "items": items})
                m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)/log", path)
                if m:
                    pod = fake.pods.get(m.groups())
                    if pod is None:
                        return status(404, f'pods "{m.group(2)}" not found', "NotFound")
                    if not pod.started:
                        return status(
                            400,
                            f'container "train" in pod "{pod.name}" is waiting to start: '
                            f"{pod.waiting}",
                            "BadRequest",
                        )
                    if (query.get("follow") or ["false"])[0] == "true":
                        return self._follow(pod)
                    data = bytes(pod.log)
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    record.status = 200
                    return None
                return status(404, f"the server could not find {path}", "NotFound")

            def _follow(self, pod: Pod) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                sent = 0
                try:
                    while True:
                        with pod.changed:
                            if sent >= len(pod.log) and not pod.ended:
                                pod.changed.wait(0.05)
                            chunk = bytes(pod.log[sent:])
                            ended = pod.ended
                        if chunk:
                            sent += len(chunk)
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                            self.wfile.flush()
                        elif ended:
                            break
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

        return Handler
