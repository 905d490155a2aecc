"""Kubernetes (and Run:AI on Kubernetes): the bundle and its ``launcher.py`` as a ConfigMap, a
``batch/v1`` Job whose container runs the launcher (it unpacks the bundle and runs
``python train.py``), its pod log streamed back.

- One Job per idempotency key: its name is derived from the key, so a retried or re-run submit
  gets ``409 AlreadyExists`` and adopts the Job already there instead of starting a second one.
- The bundle travels as a gzipped tar in the ConfigMap's ``binaryData``; ConfigMaps hold at most
  1 MiB, so a bigger bundle needs ``bundle_url`` (object storage, e.g. a presigned URL).
- The ConfigMap is created first (a failed one leaves no Job behind), then the Job, then the
  ConfigMap is made the Job's (``ownerReferences``) so it goes when the Job goes.
- ``backoffLimit: 0`` and ``restartPolicy: Never``: a failed run is reported, never re-run.
  ``activeDeadlineSeconds`` comes from ``--max-hours``/``--timeout``. The pod meets the
  ``restricted`` Pod Security Standard (non-root user, no privilege escalation, no
  capabilities, the runtime's default seccomp profile).
- The image: ``--set image=``, else the newest of ``image_tables/kubernetes.json`` (AWS's
  public PyTorch Deep Learning Containers, GPU or CPU build).
- Run:AI: ``scheduler=runai-scheduler`` sets ``schedulerName``; ``runai_project=P`` adds the
  project labels and defaults the namespace to ``runai-P``.
- Artifacts: after ``train.py`` ends, the launcher prints every file under ``output/``
  base64-encoded into the pod log between marker lines (``log_artifacts_max_mb``, default
  8); ``fetch_artifacts`` decodes them while the pod exists (``ttl_seconds`` after the end,
  default 7 days). Bigger outputs: mount a PVC with ``output_pvc`` and copy from it (see
  docs/platforms/kubernetes.md).

Data-parallel training (``--nodes N --procs-per-node P``, docs/distributed.md): with ``N`` > 1
the Job is an Indexed Job (``completionMode: Indexed``, ``completions = parallelism = N``)
beside a headless Service of the same name (``clusterIP: None``, ``publishNotReadyAddresses``)
that gives each pod a DNS name (``subdomain``): pod ``i`` is ``NAME-i.NAME.NAMESPACE.svc``.
Every pod runs the launcher with ``--nnodes N --nproc-per-node P --master-addr`` index 0's
name; its node rank is the ``JOB_COMPLETION_INDEX`` Kubernetes sets, and torchrun meets at
index 0 (port ``RENDEZVOUS_PORT``). ``backoffLimit: 0``: a pod that fails fails the Job, and
Kubernetes stops the other pods. Status, log and artifacts are index 0's pod's (rank 0 prints
the events and the outputs); a failure names the pod that failed first. Cancel deletes the
Job (every pod, in the foreground), the Service and the ConfigMap (both also owned by the
Job, so they go with it after ``ttl_seconds``). A Kubeflow ``PyTorchJob`` is not used.

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
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from neural_jupyter.backends import base, retry
from neural_jupyter.backends.base import State
from neural_jupyter.backends.images import Image, table
from neural_jupyter.backends.log_artifacts import decode_artifacts
from neural_jupyter.backends.remote import (
    CountedLog,
    LogReader,
    Look,
    RemotePlatform,
    remember,
    remembered,
)
from neural_jupyter.errors import ConfigurationError, JobError, PlatformAuthError
from neural_jupyter.redaction import register_secret
from neural_jupyter.runtime.bundle import LAUNCHER, Bundle, launcher_source

PLATFORM = "kubernetes"
IMAGES = table(PLATFORM)
CONFIGMAP_LIMIT = 1_000_000  # bytes; the API server refuses ConfigMaps over 1 MiB in all
DEFAULT_TTL_SECONDS = 7 * 24 * 3600
DEFAULT_LOG_ARTIFACTS_MB = 8.0
BUNDLE_MOUNT = "/neural"
WORKDIR = "/workspace/job"
LABEL_JOB_ID = "neural-jupyter/job-id"
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"  # label (1.28+) and annotation
RENDEZVOUS_PORT = 29500  # torchrun's on index 0's pod
MANAGED_BY = {"app.kubernetes.io/managed-by": "neural-jupyter"}
USER_ID = 1000  # the restricted Pod Security Standard: never root
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": USER_ID,
    "runAsGroup": USER_ID,
    "fsGroup": USER_ID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
}


def default_image(gpu: bool, image: Image | None = None) -> str:
    """The image of the table's row ``image`` (default: the newest), GPU or CPU build."""
    return f"{IMAGES.extra['registry']}:{(image or IMAGES.default())['gpu' if gpu else 'cpu']}"


def read_api(exc: BaseException) -> retry.Failure:
    """An ``ApiException``: its HTTP status and the API server's own message (``Status``)."""
    status = getattr(exc, "status", None)
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    message = ""
    if body:
        with contextlib.suppress(ValueError, AttributeError):
            message = str(json.loads(body).get("message") or "")
        message = message or str(body)[:500]
    message = message or str(getattr(exc, "reason", "") or f"{type(exc).__name__}: {exc}")
    return retry.Failure(exc, status if isinstance(status, int) else None, "", message)


FAULTS = retry.FaultPolicy(
    PLATFORM,
    "the Kubernetes API server",
    read=read_api,
    rules=(
        retry.Rule(retry.QUOTA, statuses=(401, 403), words=("exceeded quota",), message="{text}"),
        retry.Rule(
            retry.AUTH,
            statuses=(401,),
            message="{text}",
            hint="the cluster did not accept the kubeconfig's credentials (expired token?)",
        ),
        retry.Rule(
            retry.AUTH,
            statuses=(403,),
            message="{text}",
            hint="the account needs create/get/list/delete on jobs.batch and configmaps "
            "(and services, for --nodes above 1), patch on configmaps and services, get/list "
            "on pods and pods/log in the namespace (docs/platforms/kubernetes.md)",
        ),
        retry.Rule(
            retry.UNAVAILABLE, statuses=retry.TRANSIENT_HTTP_STATUS, retry=True, message="{text}"
        ),
        retry.Rule(
            retry.UNAVAILABLE, types=("HTTPError", "ConnectionError", "TimeoutError"), retry=True
        ),
        retry.Rule(types=("ApiException",), message="{text}"),
    ),
)


def job_name_for(key: str) -> str:
    """A DNS-1123 label derived from the idempotency key (same key, same name)."""
    return base.name_for(key, 53)


def pack_bundle(bundle: Bundle) -> bytes:
    """The bundle's files as a gzipped tar (outputs of earlier runs and the launcher, which
    travels beside it, left out)."""
    return bundle.archive(exclude=(LAUNCHER,))


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


class KubernetesBackend(RemotePlatform):
    name = PLATFORM
    label = "Kubernetes (also Run:AI)"
    extra = "kubernetes"
    sdk_modules: ClassVar[Mapping[str, str]] = {"kubernetes": "kubernetes"}
    faults = FAULTS
    poll_seconds = 2.0  # between status checks while waiting for the pod
    max_nodes = 100  # an Indexed Job's pods: each one node of the torchrun job

    def __init__(self) -> None:
        self._clients: dict[tuple[str | None, str | None], Any] = {}
        self._artifact_lines: dict[str, list[str]] = {}  # job id -> what a stream saw

    # --- connection -----------------------------------------------------------------------
    def api_client(self, kubeconfig: str | None = None, context: str | None = None) -> Any:
        """An ``ApiClient`` for the kubeconfig/context (in-cluster config inside a pod)."""
        self.require_sdk()
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

    def _apis(self, job: base.RemoteJob) -> tuple[Any, Any, str, str]:
        details = job.details
        client = self.sdk("kubernetes.client")
        api = self.api_client(details.get("kubeconfig"), details.get("context"))
        name = str(details.get("job_name") or job.remote_id or job_name_for(job.idempotency_key))
        namespace = str(details.get("namespace") or "default")
        return client.BatchV1Api(api), client.CoreV1Api(api), namespace, name

    # --- manifests ------------------------------------------------------------------------
    def manifests(
        self, name: str, namespace: str, job: base.RemoteJob, resources: base.ResourceSpec
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The Job and the ConfigMap (without the bundle bytes) ``submit`` creates."""
        extra = resources.extra
        labels = {**MANAGED_BY, LABEL_JOB_ID: re.sub(r"[^A-Za-z0-9_.-]", "-", job.id)[:63]}
        project = extra.get("runai_project")
        if project:
            labels.update({"project": str(project), "runai/queue": str(project)})
        budget = int(
            base.number_option(extra, "log_artifacts_max_mb", DEFAULT_LOG_ARTIFACTS_MB) * 2**20
        )
        source = str(extra.get("bundle_url") or f"{BUNDLE_MOUNT}/bundle.tar.gz")
        command = ["python", "-u", f"{BUNDLE_MOUNT}/{LAUNCHER}", "--bundle", source]
        command += ["--work", WORKDIR, "--install-missing", "--print-outputs", str(budget)]
        if resources.world_size > 1:  # torchrun; the node rank is JOB_COMPLETION_INDEX
            command += ["--nnodes", str(resources.nodes)]
            command += ["--nproc-per-node", str(resources.procs_per_node)]
        if resources.nodes > 1:
            command += ["--master-addr", master_address(name, namespace)]
            command += ["--master-port", str(RENDEZVOUS_PORT)]
        env = [
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            {"name": "HOME", "value": "/workspace"},  # the non-root user's writable home
        ]
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
            "image": str(
                extra.get("image") or default_image(bool(resources.gpus), self.image_row(job))
            ),
            "command": command,
            "env": env,
            "workingDir": "/workspace",
            "securityContext": dict(CONTAINER_SECURITY),
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
            "securityContext": dict(POD_SECURITY),
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
            "backoffLimit": 0,  # one failed pod (one node's ranks) fails the whole Job
            "ttlSecondsAfterFinished": int(
                base.number_option(extra, "ttl_seconds", DEFAULT_TTL_SECONDS)
            ),
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
        }
        if resources.nodes > 1:  # pods NAME-0 … NAME-(N-1), each one node, all at once
            spec.update(
                completionMode="Indexed", completions=resources.nodes, parallelism=resources.nodes
            )
            pod["subdomain"] = name  # the headless Service: NAME-i.NAME.NAMESPACE.svc
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
            "data": {LAUNCHER: launcher_source()},
        }
        return manifest, configmap

    @staticmethod
    def service(name: str, namespace: str, labels: Mapping[str, str]) -> dict[str, Any]:
        """The headless Service that names an Indexed Job's pods in DNS (multi-node)."""
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
            "spec": {
                "clusterIP": "None",
                "selector": {"job-name": name},
                # a name as soon as a pod has an address: the ranks meet before "ready"
                "publishNotReadyAddresses": True,
                "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT}],
            },
        }

    def plan(self, job: base.RemoteJob, resources: base.ResourceSpec) -> dict[str, Any]:
        extra = resources.extra
        name = job_name_for(job.idempotency_key)
        namespace = self._namespace(extra, extra.get("kubeconfig"), extra.get("context"))
        manifest, configmap = self.manifests(name, namespace, job, resources)
        configmap["binaryData"] = {"bundle.tar.gz": "<the bundle, gzipped tar, base64>"}
        plan = {
            "backend": self.name,
            "job": job.id,
            "resources": resources.public(),
            "ConfigMap": configmap,
            "Job": manifest,
        }
        if resources.nodes > 1:
            plan["Service"] = self.service(name, namespace, manifest["metadata"]["labels"])
        return plan

    # --- contract -------------------------------------------------------------------------
    def submit(
        self, bundle: Bundle, job: base.RemoteJob, resources: base.ResourceSpec
    ) -> base.Submission:
        extra = resources.extra
        kubeconfig, context = extra.get("kubeconfig"), extra.get("context")
        name = job_name_for(job.idempotency_key)
        archive = pack_bundle(bundle)
        digest = hashlib.sha256(archive).hexdigest()
        job.directory.mkdir(parents=True, exist_ok=True)
        if not extra.get("bundle_url") and len(archive) + len(launcher_source()) > CONFIGMAP_LIMIT:
            path = job.files.scratch("bundle.tar.gz")
            path.write_bytes(archive)
            raise ConfigurationError(
                f"the bundle is {len(archive) / 2**20:.1f} MiB compressed; a Kubernetes "
                "ConfigMap holds at most 1 MiB",
                hint=f"upload {path} to object storage (S3, GCS, Azure Blob, MinIO...) and pass "
                "--set bundle_url=URL (a presigned URL the pod can download)",
            )
        client = self.sdk("kubernetes.client")
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

        service = None
        if resources.nodes > 1:
            service = self.service(name, namespace, manifest["metadata"]["labels"])
        # the ConfigMap (and Service) first: a Job whose ConfigMap failed would wait forever
        self._create(lambda: core.create_namespaced_config_map(namespace, configmap))
        if service is not None:
            self._create(lambda: core.create_namespaced_service(namespace, service))
        created_job = self._create(lambda: batch.create_namespaced_job(namespace, manifest))
        if created_job is None:  # 409: a previous try (or run) already created it
            created_job = self._call(lambda: batch.read_namespaced_job(name, namespace))
        uid = created_job.metadata.uid
        if uid:  # the ConfigMap (and Service) go when their Job goes
            owner = {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": name,
                "uid": uid,
                "blockOwnerDeletion": False,
            }
            patch = {"metadata": {"ownerReferences": [owner]}}
            self.call(
                "making the ConfigMap the Job's",
                lambda: core.patch_namespaced_config_map(name, namespace, patch),
            )
            if service is not None:
                self.call(
                    "making the Service the Job's",
                    lambda: core.patch_namespaced_service(name, namespace, patch),
                )
        details = {
            "job_name": name,
            "namespace": namespace,
            "uid": uid,
            "image": manifest["spec"]["template"]["spec"]["containers"][0]["image"],
            "bundle_sha256": digest,
        }
        if service is not None:
            details["nodes"] = resources.nodes
            details["service"] = name
        if kubeconfig:
            details["kubeconfig"] = str(kubeconfig)
        if context:
            details["context"] = str(context)
        if extra.get("scheduler"):
            details["scheduler"] = str(extra["scheduler"])
        return base.Submission(f"{namespace}/{name}", details)

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

        return self.call("Kubernetes", attempt)

    def _call(self, func: Callable[[], Any]) -> Any:
        return self.call("Kubernetes", func)

    def status(self, job: base.RemoteJob) -> base.RemoteStatus:
        from kubernetes.client.rest import ApiException

        batch, core, namespace, name = self._apis(job)

        def read() -> Any:
            try:
                return batch.read_namespaced_job(name, namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

        remote = self._call(read)
        if remote is None:
            kept = remembered(job)
            if kept is not None:
                return kept
            if job.files.cancel_requested.exists():
                return base.RemoteStatus(State.CANCELLED, message="cancelled (the Job was deleted)")
            return base.RemoteStatus(
                State.UNKNOWN,
                message=f"Job {namespace}/{name} no longer exists (deleted or expired)",
            )
        state = self._job_state(remote, core, namespace, name, job)
        if state.is_terminal:
            remember(job, state)
        return state

    def _job_state(self, remote: Any, core: Any, namespace: str, name: str, job: base.RemoteJob):
        meta, status = remote.metadata, remote.status
        if meta is not None and meta.deletion_timestamp:
            return base.RemoteStatus(
                State.CANCELLED, message="cancelled (the Job is being deleted)"
            )
        conditions = {c.type: c for c in (status.conditions or []) if c.status == "True"}
        completions = (remote.spec.completions if remote.spec else None) or 1
        if "Complete" in conditions or (status.succeeded or 0) >= completions:
            return base.RemoteStatus(State.SUCCEEDED, 0)
        failed = conditions.get("Failed") or conditions.get("FailureTarget")
        if failed is not None or (status.failed or 0) > 0:
            reason = failed.reason if failed is not None else None
            if reason == "DeadlineExceeded":
                return base.RemoteStatus(
                    State.FAILED,
                    None,
                    "stopped at its time limit (activeDeadlineSeconds)",
                    timed_out=True,
                )
            code, detail = self._container_end(core, namespace, name)
            if code is None and not detail:
                detail = (failed.message if failed is not None else None) or "the pod failed"
            return base.RemoteStatus(State.FAILED, code, detail or f"exited with code {code}")
        if "Suspended" in conditions:
            return base.RemoteStatus(State.PENDING, message="suspended (waiting in a queue)")
        pod = self._pod(core, namespace, name)
        if pod is None:
            return base.RemoteStatus(State.PENDING, message="waiting for a pod")
        return self._pod_state(pod)

    @staticmethod
    def _pod_state(pod: Any) -> base.RemoteStatus:
        phase = pod.status.phase if pod.status else None
        if phase == "Running":
            return base.RemoteStatus(State.RUNNING, message="running")
        for condition in (pod.status.conditions if pod.status else None) or []:
            if condition.type == "PodScheduled" and condition.status == "False":
                why = condition.message or condition.reason or "no node fits yet"
                return base.RemoteStatus(State.PENDING, message=f"unschedulable: {why}")
        for container in (pod.status.container_statuses if pod.status else None) or []:
            waiting = container.state.waiting if container.state else None
            if waiting is not None and waiting.reason:
                text = waiting.reason + (f": {waiting.message}" if waiting.message else "")
                return base.RemoteStatus(State.PENDING, message=text)
        if phase in ("Succeeded", "Failed"):
            return base.RemoteStatus(State.RUNNING, message="finishing")
        return base.RemoteStatus(State.PENDING, message=f"pod {phase or 'Pending'}")

    def _pods(self, core: Any, namespace: str, name: str) -> list[Any]:
        """The Job's pods, oldest first."""
        pods = self._call(
            lambda: core.list_namespaced_pod(namespace, label_selector=f"job-name={name}")
        )
        return sorted(pods.items or [], key=lambda p: str(p.metadata.creation_timestamp or ""))

    def _pod(self, core: Any, namespace: str, name: str) -> Any:
        """The pod whose log is the job's: the newest, of index 0 in an Indexed Job (the node
        of rank 0, which prints the events and the outputs)."""
        items = self._pods(core, namespace, name)
        first = [p for p in items if pod_index(p) in (None, 0)]
        return (first or items)[-1] if items else None

    def _container_end(self, core: Any, namespace: str, name: str) -> tuple[int | None, str]:
        """The exit code and words of the pod that failed first (of several nodes: which
        one), else of the job's pod."""
        with contextlib.suppress(Exception):
            items = self._pods(core, namespace, name)
            ended = [(p, t) for p in items for t in _terminated(p)]
            # the root cause first: a pod that ended by itself (not stopped by the Job
            # controller, 137/143) and earliest, then by index
            failed = sorted(
                ((p, t) for p, t in ended if t.exit_code),
                key=lambda pt: (
                    pt[1].exit_code in (137, 143) and pt[1].reason != "OOMKilled",
                    str(pt[1].finished_at or ""),
                    pod_index(pt[0]) or 0,
                ),
            )
            several = any(pod_index(p) is not None for p in items)
            pod, terminated = (failed or ended or [(None, None)])[0]
            if terminated is not None:
                code = terminated.exit_code
                reason = terminated.reason or ""
                where = f"node {pod_index(pod)} (pod {pod.metadata.name}) " if several else ""
                if reason == "OOMKilled":
                    return code, f"{where}OOMKilled: the container ran out of memory"
                message = terminated.message or ""
                text = f"{where}exited with code {code}" + (f" ({reason})" if reason else "")
                return code, text + (f": {message}" if message else "")
        return None, ""

    def look(self, job: base.RemoteJob) -> Look:
        state = self.status(job)
        announce = None if state.is_terminal else state.message
        return Look(state, str(state.message), announce, {"state": state.state})

    def log_reader(self, job: base.RemoteJob) -> LogReader:
        return _PodLog(self, job)

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
            raise FAULTS.translate(exc, "reading the pod log") from None
        except Exception as exc:
            if FAULTS.is_transient(exc):
                return
            raise FAULTS.translate(exc, "reading the pod log") from None
        try:
            yield from _pumped(_chunks_to_lines(_stream(response)), self.heartbeat_seconds)
        finally:
            with contextlib.suppress(Exception):
                response.close()
                response.release_conn()

    def cancel(self, job: base.RemoteJob) -> None:
        batch, core, namespace, name = self._apis(job)
        from kubernetes.client.rest import ApiException

        job.files.mark(job.files.cancel_requested)

        def gone(func: Callable[[], Any]) -> Callable[[], None]:
            def delete() -> None:
                try:
                    func()
                except ApiException as exc:
                    if exc.status != 404:  # already gone: fine
                        raise

            return delete

        # the Job first, in the foreground: every pod (every node's ranks) stops with it
        self._call(
            gone(
                lambda: batch.delete_namespaced_job(
                    name, namespace, propagation_policy="Foreground", grace_period_seconds=30
                )
            )
        )
        if job.details.get("service"):
            self._call(gone(lambda: core.delete_namespaced_service(name, namespace)))
        self._call(gone(lambda: core.delete_namespaced_config_map(name, namespace)))
        remember(job, base.RemoteStatus(State.CANCELLED, message="cancelled"))

    def fetch_artifacts(self, job: base.RemoteJob, destination: Path) -> dict[str, Path]:
        """Decode the output files the launcher printed into the pod log (the lines a stream
        of this process kept, else the log of the pod, while it exists) into ``destination``."""
        lines = self._artifact_lines.pop(job.id, None)
        if lines is None:
            _batch, core, namespace, name = self._apis(job)
            pod = self._call(lambda: self._pod(core, namespace, name))
            if pod is None:
                raise JobError(
                    f"the pod of {namespace}/{name} is gone, and its log with the artifacts",
                    job_id=job.id,
                    hint="raise --set ttl_seconds, or keep outputs on a volume with "
                    "--set output_pvc=CLAIM",
                )
            text = self._call(lambda: core.read_namespaced_pod_log(pod.metadata.name, namespace))
            lines = str(text).splitlines()
        return decode_artifacts(lines, destination)

    def estimate_cost(self, resources: base.ResourceSpec) -> base.CostEstimate | None:
        return None  # the cluster's own cost; nothing is billed per job here

    def check_credentials(self) -> None:
        return None  # the API server's answer (401/403, with its message) says it at submit


def master_address(name: str, namespace: str) -> str:
    """Index 0's pod of the Indexed Job ``name`` by its DNS name (the headless Service)."""
    return f"{name}-0.{name}.{namespace}.svc"


def pod_index(pod: Any) -> int | None:
    """An Indexed Job pod's completion index (label, or annotation before Kubernetes 1.28)."""
    meta = pod.metadata
    for found in ((meta.labels or {}).get(INDEX_LABEL), (meta.annotations or {}).get(INDEX_LABEL)):
        if found is not None and str(found).isdigit():
            return int(found)
    return None


def _terminated(pod: Any) -> list[Any]:
    statuses = (pod.status.container_statuses if pod.status else None) or []
    return [c.state.terminated for c in statuses if c.state and c.state.terminated]


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
        if FAULTS.is_transient(exc):
            return None
        raise FAULTS.translate(exc, "Kubernetes") from None


class _PodLog(CountedLog):
    """The pod's log, followed while it runs (heartbeats while quiet); a reconnect replays
    it from the start."""

    backend: KubernetesBackend
    skipped_hint = "see --set output_pvc"

    def __init__(self, backend: KubernetesBackend, job: base.RemoteJob) -> None:
        super().__init__(backend, job)
        _batch, self.core, self.namespace, self.name = backend._apis(job)
        self.pod: Any = None

    def read(self, look: Look, follow: bool) -> Iterator[base.StreamItem]:
        state = look.status
        self.pod = (
            None
            if state.state == State.PENDING
            else _quiet(lambda: self.backend._pod(self.core, self.namespace, self.name))
        )
        if self.pod is None:
            return
        count = 0
        lines = self.backend._log_lines(
            self.core, self.namespace, self.pod.metadata.name, follow and not state.is_terminal
        )
        for line in lines:
            if line is None:
                yield None
                continue
            count += 1
            yield from self._numbered([(count, line)])

    def pause(self, look: Look, seconds: float, step: float) -> Iterator[base.StreamItem]:
        return base.heartbeats(seconds if self.pod is None else 0.2, step)

    def finish(self, look: Look) -> Iterator[base.StreamItem]:
        if not look.status.is_terminal:
            return
        if self.position == 0:  # the pod and its log are gone: what this machine kept of it
            yield from self.mirror.events()
        yield from self.hand_over_artifacts()
