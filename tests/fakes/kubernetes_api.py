"""A local fake of the Kubernetes API server, spoken to by the real ``kubernetes`` client.

It keeps ConfigMaps, Services, batch/v1 Jobs and their pods, checks the bearer token (401
with a ``Status`` body otherwise), answers 409 ``AlreadyExists`` for a second create, deletes
Jobs with ``propagationPolicy`` (``deletionTimestamp`` first, gone a moment later, with the
ConfigMaps and Services it owns) and streams pod logs with ``follow=true`` (chunked, until
the container ends). An Indexed Job (``completionMode: Indexed``) gets ``completions`` pods,
each with its index (label, annotation, ``JOB_COMPLETION_INDEX``, hostname ``NAME-i``); it
completes when every index succeeded and fails when pods failed beyond ``backoffLimit``, the
other pods then stopped, as the Job controller does.

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
from pathlib import Path
from typing import Any

from .base import FakeServer, Request, Response, json_response

INDEX_LABEL = "batch.kubernetes.io/job-completion-index"


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
    # an Indexed Job's pods: index -> its exit code (default exit_code); only index 0 prints
    # the lines (rank 0 speaks), the others ``worker_lines``
    exit_codes: dict[int, int] = field(default_factory=dict)
    worker_lines: list[str] = field(default_factory=list)


class Pod:
    def __init__(self, name: str, job: dict[str, Any], index: int | None = None) -> None:
        self.name = name
        self.job = job
        self.index = index  # an Indexed Job's completion index
        self.phase = "Pending"
        self.waiting: str | None = "ContainerCreating"
        self.waiting_message: str | None = None
        self.started = False
        self.exit_code: int | None = None
        self.finished: str | None = None
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
            self.finished = now()
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
                    "finishedAt": self.finished,
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
        annotations = {}
        spec = self.job["spec"]["template"]["spec"]
        if self.index is not None:
            labels[INDEX_LABEL] = annotations[INDEX_LABEL] = str(self.index)
            spec = {**spec, "hostname": f"{name}-{self.index}"}
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.name,
                "namespace": self.job["metadata"]["namespace"],
                "labels": labels,
                "annotations": annotations,
                "creationTimestamp": self.created,
                "uid": str(uuid.uuid4()),
            },
            "spec": spec,
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


class FakeKubernetes(FakeServer):
    """``with FakeKubernetes() as kube:`` ... ``kube.kubeconfig(path)`` ... ``kube.requests``."""

    def __init__(self, token: str = "fake-k8s-token-0123456789", execute: bool = False) -> None:
        super().__init__()
        self.token = token
        self.execute = execute
        self.script = Script(lines=['{"event": "start", "epochs": 1}'])
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.configmaps: dict[tuple[str, str], dict[str, Any]] = {}
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], Pod] = {}
        self.workdir = Path(tempfile.mkdtemp(prefix="fake-k8s-"))

    def cleanup(self) -> None:
        with self.lock:
            for pod in self.pods.values():
                self._kill(pod)
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

    def pod_of(self, namespace: str, job: str) -> Pod | None:
        found = self.pods_of(namespace, job)
        return found[0] if found else None

    def pods_of(self, namespace: str, job: str) -> list[Pod]:
        """The Job's pods, by index."""
        with self.lock:
            found = [
                pod
                for pod in self.pods.values()
                if pod.job["metadata"]["name"] == job
                and pod.job["metadata"]["namespace"] == namespace
            ]
        return sorted(found, key=lambda pod: pod.index or 0)

    # --- object logic -------------------------------------------------------------------------
    def _job_status(self, job: dict[str, Any]) -> dict[str, Any]:
        if "_final" in job:  # a finished Job keeps its conditions after its pods are gone
            return job["_final"]
        pods = self.pods_of(job["metadata"]["namespace"], job["metadata"]["name"])
        status: dict[str, Any] = {"startTime": job["metadata"]["creationTimestamp"]}
        if not pods:
            return status
        completions = int(job["spec"].get("completions") or 1)
        limit = int(job["spec"].get("backoffLimit", 6))
        succeeded = sum(1 for pod in pods if pod.ended and pod.exit_code == 0)
        failed = [pod for pod in pods if pod.ended and pod.exit_code != 0]
        active = [pod for pod in pods if not pod.ended]
        for key, value in (("succeeded", succeeded), ("failed", len(failed))):
            if value:
                status[key] = value
        if failed and any(pod.reason == "DeadlineExceeded" for pod in failed):
            condition = ("DeadlineExceeded", "Job was active longer than specified deadline")
        elif len(failed) > limit:
            condition = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
        elif succeeded >= completions:
            status["conditions"] = [{"type": "Complete", "status": "True"}]
            job["_final"] = status
            return status
        else:
            if active:
                status["active"] = len(active)
                status["ready"] = sum(1 for pod in active if pod.started)
            return status
        # a failed Job: the controller stops its other pods
        for pod in active:
            pod.deleted = True
            self._kill(pod)
            pod.finish(143, "Error")
        status.pop("active", None)
        reason, message = condition
        status["conditions"] = [
            {"type": "Failed", "status": "True", "reason": reason, "message": message}
        ]
        job["_final"] = status
        return status

    def _start_pod(self, job: dict[str, Any]) -> None:
        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        indexed = job["spec"].get("completionMode") == "Indexed"
        indexes = range(int(job["spec"].get("completions") or 1)) if indexed else [None]
        for index in indexes:
            middle = f"{index}-" if index is not None else ""
            pod = Pod(f"{name}-{middle}{uuid.uuid4().hex[:5]}", job, index)
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
        for line in script.lines if not pod.index else script.worker_lines:
            if pod.deleted:
                return
            pod.write(line.encode() + b"\n")
            time.sleep(script.line_seconds)
        code = script.exit_codes.get(pod.index or 0, script.exit_code)
        while (
            script.hold is not None
            and not script.hold.is_set()
            and not pod.deleted
            and pod.index not in script.exit_codes  # a pod told to fail does not wait
        ):
            if deadline and time.monotonic() > deadline:
                pod.finish(137, "DeadlineExceeded")
                return
            time.sleep(0.01)
        if not pod.deleted:
            pod.finish(code)

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
        if pod.index is not None:  # the Job controller's, in every pod of an Indexed Job
            env["JOB_COMPLETION_INDEX"] = str(pod.index)
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
        for pod in self.pods_of(namespace, name):  # every pod of the Job
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
                for objects in (self.configmaps, self.services):
                    for key, item in list(objects.items()):
                        owners = item["metadata"].get("ownerReferences") or []
                        if any(o.get("uid") == uid for o in owners):
                            objects.pop(key)

        threading.Thread(target=collect, daemon=True).start()
        return job

    # --- HTTP ---------------------------------------------------------------------------------
    def error(self, status: int, message: str, reason: str = "", **details: Any) -> Response:
        """A ``Status`` body, as the API server answers."""
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message or f"injected {status}",
            "reason": reason or "InternalError",
            "details": details,
            "code": status,
        }
        return json_response(status, body)

    def refuse(self, request: Request) -> Response | None:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return self.error(401, "Unauthorized", "Unauthorized")
        return None

    def route(self, request: Request) -> Response:
        path, method, query = request.path, request.method, request.query
        body = request.json
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/(configmaps|services)(?:/([^/]+))?", path)
        if m:
            namespace, kind, name = m.groups()
            objects = self.configmaps if kind == "configmaps" else self.services
            if method == "POST":
                key = (namespace, body["metadata"]["name"])
                with self.lock:
                    if key in objects:
                        return self.error(
                            409,
                            f'{kind} "{key[1]}" already exists',
                            "AlreadyExists",
                            name=key[1],
                            kind=kind,
                        )
                    body["metadata"].update(
                        namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=now()
                    )
                    objects[key] = body
                return json_response(201, body)
            item = objects.get((namespace, name or ""))
            if item is None:
                return self.error(404, f'{kind} "{name}" not found', "NotFound")
            if method == "PATCH":  # a merge patch of the metadata
                with self.lock:
                    item["metadata"].update((body or {}).get("metadata") or {})
            if method == "DELETE":
                with self.lock:
                    objects.pop((namespace, name), None)
                status = {"kind": "Status", "apiVersion": "v1", "status": "Success"}
                return json_response(200, item if kind == "services" else status)
            return json_response(200, item)
        m = re.fullmatch(r"/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?", path)
        if m:
            namespace, name = m.groups()
            if method == "POST":
                key = (namespace, body["metadata"]["name"])
                with self.lock:
                    if key in self.jobs:
                        return self.error(
                            409,
                            f'jobs.batch "{key[1]}" already exists',
                            "AlreadyExists",
                            name=key[1],
                            group="batch",
                            kind="jobs",
                        )
                    body["metadata"].update(
                        namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=now()
                    )
                    self.jobs[key] = body
                self._start_pod(body)
                return json_response(201, {**body, "status": {}})
            key = (namespace, name or "")
            if method == "DELETE":
                policy = (body or {}).get("propagationPolicy") or query.get("propagationPolicy")
                job = self._delete_job(*key, policy)
                if job is None:
                    return self.error(404, f'jobs.batch "{name}" not found', "NotFound")
                return json_response(200, {k: v for k, v in job.items() if not k.startswith("_")})
            job = self.jobs.get(key)
            if job is None:
                return self.error(404, f'jobs.batch "{name}" not found', "NotFound")
            shown = {k: v for k, v in job.items() if not k.startswith("_")}
            return json_response(200, {**shown, "status": self._job_status(job)})
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods", path)
        if m:
            (namespace,) = m.groups()
            selector = query.get("labelSelector") or ""
            wanted = dict(p.split("=", 1) for p in selector.split(",") if "=" in p)
            with self.lock:
                items = [pod.to_json() for (ns, _), pod in self.pods.items() if ns == namespace]
            items = [
                i
                for i in items
                if all(i["metadata"]["labels"].get(k) == v for k, v in wanted.items())
            ]
            return json_response(200, {"apiVersion": "v1", "kind": "PodList", "items": items})
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)/log", path)
        if m:
            pod = self.pods.get(m.groups())
            if pod is None:
                return self.error(404, f'pods "{m.group(2)}" not found', "NotFound")
            if not pod.started:
                return self.error(
                    400,
                    f'container "train" in pod "{pod.name}" is waiting to start: {pod.waiting}',
                    "BadRequest",
                )
            plain = {"Content-Type": "text/plain"}
            if query.get("follow") == "true":
                return Response(200, headers=plain, stream=_follow(pod))
            return Response(200, bytes(pod.log), plain)
        return self.error(404, f"the server could not find {path}", "NotFound")


def _follow(pod: Pod):
    """The pod's log as it grows, until the container ends."""
    sent = 0
    while True:
        with pod.changed:
            if sent >= len(pod.log) and not pod.ended:
                pod.changed.wait(0.05)
            chunk = bytes(pod.log[sent:])
            ended = pod.ended
        if chunk:
            sent += len(chunk)
            yield chunk
        elif ended:
            return
