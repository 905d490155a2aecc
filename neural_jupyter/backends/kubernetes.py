"""Kubernetes (and Run:AI on Kubernetes): the bundle as a ConfigMap, a ``batch/v1`` Job that
unpacks it and runs ``python train.py``, its pod log streamed back.

- One Job per idempotency key: its name is derived from the key, so a retried or re-run submit
  gets ``409 AlreadyExists`` and adopts the Job already there instead of starting a second one.
- The bundle travels as a gzipped tar in the ConfigMap's ``binaryData``; ConfigMaps hold at most
  1 MiB, so a bigger bundle needs ``bundle_url`` (object storage, e.g. a presigned URL).
- ``backoffLimit: 0`` and ``restartPolicy: Never``: a failed run is reported, never re-run.
  ``activeDeadlineSeconds`` comes from ``--max-hours``/``--timeout``.
- Run:AI: ``scheduler=runai-scheduler`` sets ``schedulerName``; ``runai_project=P`` adds the
  project labels and defaults the namespace to ``runai-P``.
- Artifacts: after ``train.py`` ends, the bootstrap prints the output files base64-encoded into
  the pod log between marker lines (``log_artifacts_max_mb``, default 8); ``fetch_artifacts``
  decodes them while the pod exists (``ttl_seconds`` after the end, default 7 days). Bigger
  outputs: mount a PVC with ``output_pvc`` and copy from it (see docs/platforms/kubernetes.md).

Options (``--set key=value``): ``namespace``, ``context``, ``kubeconfig``, ``image``,
``scheduler``, ``runai_project``, ``bundle_url``, ``service_account``, ``image_pull_secret``,
``node_selector`` (``k=v,k2=v2``), ``output_pvc``, ``ttl_seconds``, ``log_artifacts_max_mb``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from neural_jupyter.backends.base import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    UNKNOWN,
    Backend,
    CostEstimate,
    RemoteJob,
    RemoteStatus,
    ResourceSpec,
    StreamItem,
    Submission,
)
from neural_jupyter.backends.log_mirror import LogMirror
from neural_jupyter.backends.retry import TRANSIENT_HTTP_STATUS, call_with_retries
from neural_jupyter.errors import (
    ConfigurationError,
    JobError,
    MissingDependencyError,
    PlatformAuthError,
    PlatformConnectionError,
    PlatformError,
    QuotaError,
)
from neural_jupyter.redaction import register_secret
from neural_jupyter.runtime.bundle import Bundle
from neural_jupyter.runtime.events import Event, parse_line

PLATFORM = "kubernetes"
DEFAULT_IMAGE = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"
CONFIGMAP_LIMIT = 1_000_000  # bytes; the API server refuses ConfigMaps over 1 MiB in all
DEFAULT_TTL_SECONDS = 7 * 24 * 3600
DEFAULT_LOG_ARTIFACTS_MB = 8.0
BUNDLE_MOUNT = "/neural"
WORKDIR = "/workspace/job"
ARTIFACT_MARK = "##neural-artifact"
ARTIFACT_NAMES = {"model.pt": "weights", "history.json": "history", "checkpoint.pt": "checkpoint"}
LABEL_JOB_ID = "neural-jupyter/job-id"
MANAGED_BY = {"app.kubernetes.io/managed-by": "neural-jupyter"}

# Runs in the container: unpack the bundle, run train.py, print the outputs into the log.
BOOTSTRAP = r'''"""neural-jupyter: unpack the job bundle, run train.py, print its outputs."""
import base64, hashlib, io, os, subprocess, sys, tarfile, urllib.request

MARK = "##neural-artifact"
work = os.environ.get("NJ_WORKDIR", "/workspace/job")
url = os.environ.get("NJ_BUNDLE_URL")
os.makedirs(work, exist_ok=True)
if url:
    with urllib.request.urlopen(url, timeout=600) as response:
        data = response.read()
else:
    with open(os.path.join(os.environ.get("NJ_BUNDLE_DIR", "/neural"), "bundle.tar.gz"), "rb") as f:
        data = f.read()
expected = os.environ.get("NJ_BUNDLE_SHA256")
if expected and hashlib.sha256(data).hexdigest() != expected:
    print("neural-jupyter: the bundle's checksum does not match; not running it", file=sys.stderr)
    sys.exit(2)
with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
    if hasattr(tarfile, "data_filter"):
        archive.extractall(work, filter="data")
    else:
        archive.extractall(work)
try:
    import numpy, torch  # noqa: F401
except ImportError:
    subprocess.call([sys.executable, "-m", "pip", "install", "--quiet", "-r", "requirements.txt"],
                    cwd=work)
sys.stdout.flush()
code = subprocess.call([sys.executable, "-u", "train.py"], cwd=work)
budget = int(float(os.environ.get("NJ_LOG_ARTIFACTS_MAX_BYTES", "0")))
output = os.path.join(work, "output")
names = sorted(os.listdir(output)) if os.path.isdir(output) else []
for name in names:
    path = os.path.join(output, name)
    if name == "status.json" or not os.path.isfile(path):
        continue
    size = os.path.getsize(path)
    if size > budget:
        print(f"{MARK}-skipped output/{name} {size}", flush=True)
        continue
    budget -= size
    with open(path, "rb") as f:
        blob = f.read()
    print(f"{MARK}-begin output/{name} {size} {hashlib.sha256(blob).hexdigest()}")
    for start in range(0, len(blob), 6144):
        print(f"{MARK} output/{name} " + base64.b64encode(blob[start:start + 6144]).decode())
    print(f"{MARK}-end output/{name}", flush=True)
sys.exit(code)
'''


def _require_sdk() -> Any:
    try:
        import kubernetes  # noqa: F401
        from kubernetes import client
    except ImportError:
        raise MissingDependencyError("kubernetes", "kubernetes", "The Kubernetes backend") from None
    return client


def job_name_for(key: str) -> str:
    """A DNS-1123 label derived from the idempotency key (same key, same name)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", key.lower()).strip("-")
    if len(slug) > 50:
        slug = slug[:37].rstrip("-") + "-" + hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"nj-{slug}"


def pack_bundle(bundle: Bundle) -> bytes:
    """The bundle's files as a gzipped tar (outputs of earlier runs left out)."""
    return bundle.archive()


def _number(extra: Mapping[str, Any], name: str, default: float) -> float:
    value = extra.get(name, default)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"--set {name} must be a number, got {value!r}") from None


def _node_selector(text: Any) -> dict[str, str]:
    if not text:
        return {}
    if isinstance(text, Mapping):
        return {str(k): str(v) for k, v in text.items()}
    selector = {}
    for part in str(text).split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigurationError(
                f"--set node_selector must look like key=value,key2=value2, got {text!r}"
            )
        selector[key.strip()] = value.strip()
    return selector


class KubernetesBackend(Backend):
    name = PLATFORM
    label = "Kubernetes (also Run:AI)"
    extra = "kubernetes"

    poll_seconds = 2.0  # between status checks while waiting for the pod
    heartbeat_seconds = 0.25

    def __init__(self) -> None:
        self._clients: dict[tuple[str | None, str | None], Any] = {}

    # --- connection -----------------------------------------------------------------------
    def api_client(self, kubeconfig: str | None = None, context: str | None = None) -> Any:
        """An ``ApiClient`` for the kubeconfig/context (in-cluster config inside a pod)."""
        _require_sdk()
        import os

        from kubernetes import config
        from kubernetes.config.config_exception import ConfigException

        # the client reads $KUBECONFIG once, at import: look it up now instead
        kubeconfig = kubeconfig or os.environ.get("KUBECONFIG") or None
        key = (kubeconfig, context)
        if key in self._clients:
            return self._clients[key]
        try:
            if not kubeconfig and not context and os.environ.get("KUBERNETES_SERVICE_HOST"):
                from kubernetes import client

                configuration = client.Configuration()
                config.load_incluster_config(client_configuration=configuration)
                api = client.ApiClient(configuration)
            else:
                api = config.new_client_from_config(config_file=kubeconfig, context=context)
        except (ConfigException, OSError, TypeError, ValueError) as exc:
            raise PlatformAuthError(
                f"no usable Kubernetes configuration: {exc}",
                platform=PLATFORM,
                hint="point KUBECONFIG (or --set kubeconfig=PATH) at a kubeconfig, pick a "
                "context with --set context=NAME, or run inside the cluster",
            ) from None
        _register_credentials(api)
        self._clients[key] = api
        return api

    def _namespace(self, extra: Mapping[str, Any], kubeconfig: str | None, context: str | None):
        if extra.get("namespace"):
            return str(extra["namespace"])
        if extra.get("runai_project"):
            return f"runai-{extra['runai_project']}"
        with contextlib.suppress(Exception):
            import os

            from kubernetes import config

            contexts, active = config.list_kube_config_contexts(
                config_file=kubeconfig or os.environ.get("KUBECONFIG") or None
            )
            chosen = (
                next((c for c in contexts if c["name"] == context), active) if context else active
            )
            namespace = (chosen or {}).get("context", {}).get("namespace")
            if namespace:
                return str(namespace)
        return "default"

    def _apis(self, job: RemoteJob) -> tuple[Any, Any, str, str]:
        details = job.details
        client = _require_sdk()
        api = self.api_client(details.get("kubeconfig"), details.get("context"))
        name = str(details.get("job_name") or job.remote_id or job_name_for(job.idempotency_key))
        namespace = str(details.get("namespace") or "default")
        return client.BatchV1Api(api), client.CoreV1Api(api), namespace, name

    # --- manifests ------------------------------------------------------------------------
    def manifests(
        self, name: str, namespace: str, job: RemoteJob, resources: ResourceSpec
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The Job and the ConfigMap (without the bundle bytes) ``submit`` creates."""
        extra = resources.extra
        labels = {**MANAGED_BY, LABEL_JOB_ID: re.sub(r"[^A-Za-z0-9_.-]", "-", job.id)[:63]}
        project = extra.get("runai_project")
        if project:
            labels.update({"project": str(project), "runai/queue": str(project)})
        env = [
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            {"name": "NJ_WORKDIR", "value": WORKDIR},
            {"name": "NJ_BUNDLE_DIR", "value": BUNDLE_MOUNT},
            {
                "name": "NJ_LOG_ARTIFACTS_MAX_BYTES",
                "value": str(
                    int(_number(extra, "log_artifacts_max_mb", DEFAULT_LOG_ARTIFACTS_MB) * 2**20)
                ),
            },
        ]
        if extra.get("bundle_url"):
            env.append({"name": "NJ_BUNDLE_URL", "value": str(extra["bundle_url"])})
        limits: dict[str, Any] = {}
        requests: dict[str, Any] = {}
        if resources.gpus:
            limits["nvidia.com/gpu"] = str(int(resources.gpus))
        if resources.cpus:
            requests["cpu"] = str(int(resources.cpus))
        if resources.memory_gb:
            requests["memory"] = f"{int(resources.memory_gb * 1024)}Mi"
            limits["memory"] = requests["memory"]
        container: dict[str, Any] = {
            "name": "train",
            "image": str(extra.get("image") or DEFAULT_IMAGE),
            "command": ["python", "-u", f"{BUNDLE_MOUNT}/bootstrap.py"],
            "env": env,
            "workingDir": "/workspace",
            "volumeMounts": [
                {"name": "bundle", "mountPath": BUNDLE_MOUNT, "readOnly": True},
                {"name": "work", "mountPath": "/workspace"},
            ],
        }
        if limits or requests:
            container["resources"] = {
                k: v for k, v in (("limits", limits), ("requests", requests)) if v
            }
        volumes: list[dict[str, Any]] = [
            {"name": "bundle", "configMap": {"name": name}},
            {"name": "work", "emptyDir": {}},
        ]
        if extra.get("output_pvc"):
            volumes.append(
                {"name": "output", "persistentVolumeClaim": {"claimName": str(extra["output_pvc"])}}
            )
            container["volumeMounts"].append(
                {"name": "output", "mountPath": f"{WORKDIR}/output", "subPath": name}
            )
        pod: dict[str, Any] = {
            "restartPolicy": "Never",
            "containers": [container],
            "volumes": volumes,
        }
        selector = _node_selector(extra.get("node_selector"))
        if resources.instance_type:
            selector.setdefault("node.kubernetes.io/instance-type", resources.instance_type)
        if resources.gpu_type:
            selector.setdefault("nvidia.com/gpu.product", resources.gpu_type)
        if selector:
            pod["nodeSelector"] = selector
        if resources.gpus:
            pod["tolerations"] = [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ]
        if extra.get("scheduler"):
            pod["schedulerName"] = str(extra["scheduler"])
        if extra.get("service_account"):
            pod["serviceAccountName"] = str(extra["service_account"])
        if extra.get("image_pull_secret"):
            pod["imagePullSecrets"] = [{"name": str(extra["image_pull_secret"])}]
        spec: dict[str, Any] = {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": int(_number(extra, "ttl_seconds", DEFAULT_TTL_SECONDS)),
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
        }
        if resources.max_seconds:
            spec["activeDeadlineSeconds"] = max(1, int(resources.max_seconds))
        manifest = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": labels,
                "annotations": {"neural-jupyter/idempotency-key": job.idempotency_key},
            },
            "spec": spec,
        }
        configmap = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
            "data": {"bootstrap.py": BOOTSTRAP},
        }
        return manifest, configmap

    def plan(self, job: RemoteJob, resources: ResourceSpec) -> dict[str, Any]:
        extra = resources.extra
        name = job_name_for(job.idempotency_key)
        namespace = self._namespace(extra, extra.get("kubeconfig"), extra.get("context"))
        manifest, configmap = self.manifests(name, namespace, job, resources)
        configmap["binaryData"] = {"bundle.tar.gz": "<the bundle, gzipped tar, base64>"}
        return {
            "backend": self.name,
            "job": job.id,
            "resources": resources.public(),
            "ConfigMap": configmap,
            "Job": manifest,
        }

    # --- contract -------------------------------------------------------------------------
    def submit(self, bundle: Bundle, job: RemoteJob, resources: ResourceSpec) -> Submission:
        extra = resources.extra
        kubeconfig, context = extra.get("kubeconfig"), extra.get("context")
        name = job_name_for(job.idempotency_key)
        archive = pack_bundle(bundle)
        digest = hashlib.sha256(archive).hexdigest()
        job.directory.mkdir(parents=True, exist_ok=True)
        if not extra.get("bundle_url") and len(archive) + len(BOOTSTRAP) > CONFIGMAP_LIMIT:
            path = job.directory / "bundle.tar.gz"
            path.write_bytes(archive)
            raise ConfigurationError(
                f"the bundle is {len(archive) / 2**20:.1f} MiB compressed; a Kubernetes "
                "ConfigMap holds at most 1 MiB",
                hint=f"upload {path} to object storage (S3, GCS, Azure Blob, MinIO...) and pass "
                "--set bundle_url=URL (a presigned URL the pod can download)",
            )
        client = _require_sdk()
        api = self.api_client(kubeconfig, context)
        namespace = self._namespace(extra, kubeconfig, context)
        batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
        manifest, configmap = self.manifests(name, namespace, job, resources)
        if extra.get("bundle_url"):
            manifest["spec"]["template"]["spec"]["containers"][0]["env"].append(
                {"name": "NJ_BUNDLE_SHA256", "value": digest}
            )
        else:
            configmap["binaryData"] = {"bundle.tar.gz": base64.b64encode(archive).decode()}

        created_job = self._create(lambda: batch.create_namespaced_job(namespace, manifest))
        if created_job is None:  # 409: a previous try (or run) already created it
            created_job = self._call(lambda: batch.read_namespaced_job(name, namespace))
        uid = created_job.metadata.uid
        if uid:
            configmap["metadata"]["ownerReferences"] = [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": name,
                    "uid": uid,
                    "blockOwnerDeletion": False,
                }
            ]
        self._create(lambda: core.create_namespaced_config_map(namespace, configmap))
        details = {
            "job_name": name,
            "namespace": namespace,
            "uid": uid,
            "image": manifest["spec"]["template"]["spec"]["containers"][0]["image"],
            "bundle_sha256": digest,
        }
        if kubeconfig:
            details["kubeconfig"] = str(kubeconfig)
        if context:
            details["context"] = str(context)
        if extra.get("scheduler"):
            details["scheduler"] = str(extra["scheduler"])
        return Submission(f"{namespace}/{name}", details)

    def _create(self, func: Callable[[], Any]) -> Any:
        """Create an object; None when it already exists (409), so retries never duplicate."""
        from kubernetes.client.rest import ApiException

        def attempt() -> Any:
            try:
                return func()
            except ApiException as exc:
                if exc.status == 409:
                    return None
                raise

        return self._call(attempt)

    def _call(self, func: Callable[[], Any]) -> Any:
        try:
            return call_with_retries(func, _is_transient)
        except Exception as exc:
            raise _platform_error(exc) from None

    def status(self, job: RemoteJob) -> RemoteStatus:
        from kubernetes.client.rest import ApiException

        batch, core, namespace, name = self._apis(job)
        try:
            remote = call_with_retries(
                lambda: batch.read_namespaced_job(name, namespace), _is_transient
            )
        except ApiException as exc:
            if exc.status != 404:
                raise _platform_error(exc) from None
            remembered = self._remembered(job)
            if remembered is not None:
                return remembered
            if (job.directory / "cancel_requested").exists():
                return RemoteStatus(CANCELLED, message="cancelled (the Job was deleted)")
            return RemoteStatus(
                UNKNOWN, message=f"Job {namespace}/{name} no longer exists (deleted or expired)"
            )
        except Exception as exc:
            raise _platform_error(exc) from None
        state = self._job_state(remote, core, namespace, name, job)
        if state.is_terminal:
            self._remember(job, state)
        return state

    def _job_state(self, remote: Any, core: Any, namespace: str, name: str, job: RemoteJob):
        meta, status = remote.metadata, remote.status
        if meta is not None and meta.deletion_timestamp:
            return RemoteStatus(CANCELLED, message="cancelled (the Job is being deleted)")
        conditions = {c.type: c for c in (status.conditions or []) if c.status == "True"}
        if "Complete" in conditions or (status.succeeded or 0) > 0:
            return RemoteStatus(SUCCEEDED, 0)
        failed = conditions.get("Failed") or conditions.get("FailureTarget")
        if failed is not None or (status.failed or 0) > 0:
            reason = failed.reason if failed is not None else None
            if reason == "DeadlineExceeded":
                return RemoteStatus(
                    FAILED,
                    None,
                    "stopped at its time limit (activeDeadlineSeconds)",
                    timed_out=True,
                )
            code, detail = self._container_end(core, namespace, name)
            if code is None and not detail:
                detail = (failed.message if failed is not None else None) or "the pod failed"
            return RemoteStatus(FAILED, code, detail or f"exited with code {code}")
        if "Suspended" in conditions:
            return RemoteStatus(PENDING, message="suspended (waiting in a queue)")
        pod = self._pod(core, namespace, name)
        if pod is None:
            return RemoteStatus(PENDING, message="waiting for a pod")
        return self._pod_state(pod)

    @staticmethod
    def _pod_state(pod: Any) -> RemoteStatus:
        phase = pod.status.phase if pod.status else None
        if phase == "Running":
            return RemoteStatus(RUNNING, message="running")
        for condition in (pod.status.conditions if pod.status else None) or []:
            if condition.type == "PodScheduled" and condition.status == "False":
                why = condition.message or condition.reason or "no node fits yet"
                return RemoteStatus(PENDING, message=f"unschedulable: {why}")
        for container in (pod.status.container_statuses if pod.status else None) or []:
            waiting = container.state.waiting if container.state else None
            if waiting is not None and waiting.reason:
                text = waiting.reason + (f": {waiting.message}" if waiting.message else "")
                return RemoteStatus(PENDING, message=text)
        if phase in ("Succeeded", "Failed"):
            return RemoteStatus(RUNNING, message="finishing")
        return RemoteStatus(PENDING, message=f"pod {phase or 'Pending'}")

    def _pod(self, core: Any, namespace: str, name: str) -> Any:
        pods = call_with_retries(
            lambda: core.list_namespaced_pod(namespace, label_selector=f"job-name={name}"),
            _is_transient,
        )
        items = sorted(
            pods.items or [],
            key=lambda p: str(p.metadata.creation_timestamp or ""),
        )
        return items[-1] if items else None

    def _container_end(self, core: Any, namespace: str, name: str) -> tuple[int | None, str]:
        with contextlib.suppress(Exception):
            pod = self._pod(core, namespace, name)
            for container in (pod.status.container_statuses if pod else None) or []:
                terminated = container.state.terminated if container.state else None
                if terminated is not None:
                    code = terminated.exit_code
                    reason = terminated.reason or ""
                    if reason == "OOMKilled":
                        return code, "OOMKilled: the container ran out of memory"
                    message = terminated.message or ""
                    text = f"exited with code {code}" + (f" ({reason})" if reason else "")
                    return code, text + (f": {message}" if message else "")
        return None, ""

    @staticmethod
    def _remember(job: RemoteJob, state: RemoteStatus) -> None:
        with contextlib.suppress(OSError):
            job.directory.mkdir(parents=True, exist_ok=True)
            record = {
                "state": state.state,
                "exit_code": state.exit_code,
                "message": state.message,
                "timed_out": state.timed_out,
            }
            (job.directory / "remote_status.json").write_text(json.dumps(record))

    @staticmethod
    def _remembered(job: RemoteJob) -> RemoteStatus | None:
        try:
            record = json.loads((job.directory / "remote_status.json").read_text())
        except (OSError, ValueError):
            return None
        return RemoteStatus(
            record["state"], record.get("exit_code"), record.get("message"), record["timed_out"]
        )

    def events(self, job: RemoteJob, *, follow: bool = True) -> Iterator[StreamItem]:
        _batch, core, namespace, name = self._apis(job)
        mirror = LogMirror(job.directory)
        seen = 0  # log lines read so far (a reconnect replays the log from its start)
        artifact_lines: list[str] = []
        last_message = None
        while True:
            state = self.status(job)
            if state.message != last_message and not state.is_terminal:
                last_message = state.message
                yield Event("status", {"state": state.state, "message": state.message})
            pod = (
                None if state.state == PENDING else _quiet(lambda: self._pod(core, namespace, name))
            )
            if pod is not None:
                count = 0
                for line in self._log_lines(
                    core, namespace, pod.metadata.name, follow and not state.is_terminal
                ):
                    if line is None:
                        yield None
                        continue
                    count += 1
                    if count <= seen:
                        continue
                    seen = count
                    if line.startswith(ARTIFACT_MARK):
                        artifact_lines.append(line)
                        continue
                    mirror.add(line, seen)
                    yield parse_line(line)
            if state.is_terminal:
                if seen == 0:  # the pod and its log are gone: what this machine kept of it
                    for line, stream in mirror.lines():
                        yield parse_line(line, stream)
                if state.state == SUCCEEDED:
                    yield from self._bring_back(job, artifact_lines)
                return
            if not follow:
                return
            deadline = time.monotonic() + (self.poll_seconds if pod is None else 0.2)
            while time.monotonic() < deadline:
                yield None
                time.sleep(min(self.heartbeat_seconds, max(0.0, deadline - time.monotonic())))

    @staticmethod
    def _bring_back(job: RemoteJob, lines: list[str]) -> Iterator[StreamItem]:
        """Unpack the artifacts printed into the log into the job's ``bundle/output`` (once),
        so the finished run loads like a local one."""
        marker = job.directory / "artifacts_fetched"
        if not lines or marker.exists() or not job.directory.is_dir():
            return
        output = job.directory / "bundle" / "output"
        files = decode_artifacts(lines, output)
        skipped = [
            line.split(" ")[1] for line in lines if line.startswith(f"{ARTIFACT_MARK}-skipped")
        ]
        marker.write_text(json.dumps({name: str(path) for name, path in files.items()}))
        text = f"artifacts brought back to {output}: {', '.join(sorted(files)) or 'none'}"
        if skipped:
            text += f" (too big for the log: {', '.join(skipped)}; see --set output_pvc)"
        yield Event("status", {"message": text})

    def _log_lines(self, core: Any, namespace: str, pod: str, follow: bool) -> Iterator[str | None]:
        """The pod's log lines; with ``follow``, ``None`` heartbeats while none arrive."""
        from kubernetes.client.rest import ApiException

        try:
            response = core.read_namespaced_pod_log(
                pod, namespace, follow=follow, _preload_content=False
            )
        except ApiException as exc:
            if exc.status in (400, 404):  # container not started yet, or the pod is gone
                return
            raise _platform_error(exc) from None
        except Exception as exc:
            if _is_transient(exc):
                return
            raise _platform_error(exc) from None
        try:
            yield from _pumped(_chunks_to_lines(_stream(response)), self.heartbeat_seconds)
        finally:
            with contextlib.suppress(Exception):
                response.close()
                response.release_conn()

    def cancel(self, job: RemoteJob) -> None:
        batch, _core, namespace, name = self._apis(job)
        from kubernetes.client.rest import ApiException

        job.directory.mkdir(parents=True, exist_ok=True)
        (job.directory / "cancel_requested").touch()

        def delete() -> None:
            try:
                batch.delete_namespaced_job(
                    name, namespace, propagation_policy="Foreground", grace_period_seconds=30
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise

        self._call(delete)
        self._remember(job, RemoteStatus(CANCELLED, message="cancelled"))

    def fetch_artifacts(self, job: RemoteJob, destination: Path) -> dict[str, Path]:
        """Decode the output files the bootstrap printed into the pod log (while the pod
        exists) into ``destination``."""
        from kubernetes.client.rest import ApiException

        _batch, core, namespace, name = self._apis(job)
        pod = self._call(lambda: self._pod(core, namespace, name))
        if pod is None:
            raise JobError(
                f"the pod of {namespace}/{name} is gone, and its log with the artifacts",
                job_id=job.id,
                hint="raise --set ttl_seconds, or keep outputs on a volume with "
                "--set output_pvc=CLAIM",
            )
        try:
            text = call_with_retries(
                lambda: core.read_namespaced_pod_log(pod.metadata.name, namespace),
                _is_transient,
            )
        except ApiException as exc:
            raise _platform_error(exc) from None
        return decode_artifacts(str(text).splitlines(), destination)

    def estimate_cost(self, resources: ResourceSpec) -> CostEstimate | None:
        return None  # the cluster's own cost; nothing is billed per job here

    def check_credentials(self) -> None:
        return None  # the API server's answer (401/403, with its message) says it at submit


def decode_artifacts(lines: Iterable[str], destination: Path) -> dict[str, Path]:
    """Rebuild the files of ``##neural-artifact`` log lines under ``destination`` (each one's
    SHA-256 checked); artifact name (``weights``, ``history``...) -> path."""
    files: dict[str, dict[str, Any]] = {}
    for line in lines:
        if not line.startswith(ARTIFACT_MARK):
            continue
        tag, _, rest = line.partition(" ")
        if tag == f"{ARTIFACT_MARK}-begin":
            path, size, digest = rest.split(" ")
            files[path] = {"size": int(size), "sha256": digest, "parts": [], "done": False}
        elif tag == ARTIFACT_MARK:
            path, _, chunk = rest.partition(" ")
            if path in files:
                files[path]["parts"].append(base64.b64decode(chunk))
        elif tag == f"{ARTIFACT_MARK}-end" and rest in files:
            files[rest]["done"] = True
    found: dict[str, Path] = {}
    for path, record in files.items():
        blob = b"".join(record["parts"])
        if not record["done"] or hashlib.sha256(blob).hexdigest() != record["sha256"]:
            continue
        filename = Path(path).name
        target = destination / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob)
        found[ARTIFACT_NAMES.get(filename, filename)] = target
    return found


def _register_credentials(api: Any) -> None:
    """Tokens and passwords the kubeconfig gave the client: masked in anything shown."""
    configuration = getattr(api, "configuration", None)
    for value in (getattr(configuration, "api_key", None) or {}).values():
        register_secret(str(value).removeprefix("Bearer ").strip())
    register_secret(getattr(configuration, "password", None))


def _stream(response: Any) -> Iterator[bytes]:
    while True:
        chunk = response.read1(65536) if hasattr(response, "read1") else response.read(65536)
        if not chunk:
            return
        yield chunk


def _chunks_to_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    partial = b""
    for chunk in chunks:
        partial += chunk
        *lines, partial = partial.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", errors="replace").rstrip("\r")
    if partial:
        yield partial.decode("utf-8", errors="replace").rstrip("\r")


_DONE = object()


def _pumped(lines: Iterable[str], heartbeat: float) -> Iterator[str | None]:
    """Lines read in a background thread; ``None`` every ``heartbeat`` seconds while none come,
    so the caller stays responsive (Ctrl-C, the Cancel button) during a quiet stream."""
    inbox: queue.Queue = queue.Queue(maxsize=10_000)
    failure: list[BaseException] = []

    def reader() -> None:
        try:
            for line in lines:
                inbox.put(line)
        except Exception as exc:  # a dropped connection ends the stream; the caller re-checks
            failure.append(exc)
        finally:
            inbox.put(_DONE)

    threading.Thread(target=reader, name="neural-k8s-log", daemon=True).start()
    while True:
        try:
            item = inbox.get(timeout=heartbeat)
        except queue.Empty:
            yield None
            continue
        if item is _DONE:
            return
        yield item


def _quiet(func: Callable[[], Any]) -> Any:
    try:
        return func()
    except Exception as exc:
        if _is_transient(exc):
            return None
        raise _platform_error(exc) from None


def _is_transient(exc: BaseException) -> bool:
    from kubernetes.client.rest import ApiException

    if isinstance(exc, ApiException):
        return exc.status in TRANSIENT_HTTP_STATUS
    try:
        import urllib3
    except ImportError:  # pragma: no cover
        return isinstance(exc, (ConnectionError, TimeoutError))
    return isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


def _status_message(exc: Any) -> str:
    """The API server's own message from a ``Status`` body (else the HTTP reason)."""
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if body:
        with contextlib.suppress(ValueError, AttributeError):
            message = json.loads(body).get("message")
            if message:
                return str(message)
        return str(body)[:500]
    return str(getattr(exc, "reason", "") or exc)


def _platform_error(exc: BaseException) -> Exception:
    if isinstance(exc, PlatformError | ConfigurationError | JobError):
        return exc
    from kubernetes.client.rest import ApiException

    if isinstance(exc, ApiException):
        message = _status_message(exc)
        status = exc.status
        if status in (401, 403) and "exceeded quota" in message:
            return QuotaError(message, platform=PLATFORM, response=f"HTTP {status}")
        if status == 401:
            return PlatformAuthError(
                message,
                platform=PLATFORM,
                response="HTTP 401",
                hint="the cluster did not accept the kubeconfig's credentials (expired token?)",
            )
        if status == 403:
            return PlatformAuthError(
                message,
                platform=PLATFORM,
                response="HTTP 403",
                hint="the account needs create/get/list/delete on jobs.batch and configmaps, "
                "get/list on pods and pods/log in the namespace (docs/platforms/kubernetes.md)",
            )
        if status in TRANSIENT_HTTP_STATUS:
            return PlatformConnectionError(message, platform=PLATFORM, response=f"HTTP {status}")
        return PlatformError(message, platform=PLATFORM, response=f"HTTP {status}")
    if _is_transient(exc):
        return PlatformConnectionError(
            f"the Kubernetes API server could not be reached: {type(exc).__name__}: {exc}",
            platform=PLATFORM,
        )
    return PlatformError(f"{type(exc).__name__}: {exc}", platform=PLATFORM)
