"""Google Vertex AI custom training jobs (``pip install "neural-jupyter[vertex]"``).

A submit uploads the bundle to ``gs://BUCKET/neural-jupyter/KEY/bundle.tar.gz`` and creates
one ``CustomJob`` (REST API of ``google-cloud-aiplatform``'s ``JobServiceClient``) with one
worker pool: a prebuilt PyTorch training container whose command is a short launcher that
fetches the bundle's ``launcher.py`` (``runtime/launcher.py``, uploaded next to the bundle)
and runs it: it fetches the bundle, runs ``python train.py``, copies its log lines to
``gs://.../KEY/logs/`` every few seconds and its ``output/`` files to ``gs://.../KEY/output/``.
The image is the newest one of ``image_tables/vertex.json``.

Vertex AI's API reports a job's state only; its output lives in Cloud Logging. ``events``
therefore streams the launcher's log copy in Cloud Storage (``--set logs=gcs``, the
default) or reads Cloud Logging's ``entries:list`` (``--set logs=cloud_logging``; needs
``roles/logging.viewer``), and says which once, as a ``status`` event; if no output can be
found, it says that only the job's state is known.

Vertex AI job state → neural-jupyter state (``STATES``; docs/platforms/vertex.md):

- ``QUEUED``, ``PENDING`` (machines being provisioned), ``PAUSED`` → PENDING
- ``RUNNING``, ``UPDATING``, ``CANCELLING`` (until ``CANCELLED``) → RUNNING
- ``SUCCEEDED`` → SUCCEEDED
- ``FAILED``, ``PARTIALLY_SUCCEEDED`` → FAILED, with ``error.message`` as the message and
  the exit code parsed from "non-zero status of N" (124, or a ``DEADLINE_EXCEEDED`` error:
  timed out); ``EXPIRED`` → FAILED, timed out
- ``CANCELLED`` → CANCELLED; ``UNSPECIFIED`` → UNKNOWN

Data-parallel training (``--nodes N --procs-per-node P``, docs/distributed.md): with
``N`` > 1 the job has two worker pools of the same machine, image and command, pool 0 the
primary replica (``replicaCount`` 1) and pool 1 the other ``N - 1``. Every replica runs the
launcher with ``--nnodes N --nproc-per-node P``; the launcher starts torchrun as node
``R`` of the rendezvous at pool 0's address, both read from the ``CLUSTER_SPEC`` that Vertex AI
gives every replica (``cluster.workerpool0[0]`` is ``host:port``; ``task`` says
``workerpool1`` index ``i``: node ``i + 1``). Node 0 writes the log copy and the outputs;
node ``R`` copies its log to ``gs://.../KEY/logs/node-R/``. A replica that fails fails the
job (Vertex AI stops the others); cancel stops every replica.

Every remote name derives from the job's idempotency key: the display name, the label
``neural_jupyter_key`` and the Cloud Storage prefix. Before creating a job, ``submit`` looks
for one carrying that label, so a retried or repeated submit never starts a second job.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import io
import json
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from neural_jupyter.backends import base, retry
from neural_jupyter.backends.base import State
from neural_jupyter.backends.images import Image, table
from neural_jupyter.backends.log_mirror import LogMirror
from neural_jupyter.backends.remote import LogReader, Look, RemotePlatform, StateTable
from neural_jupyter.errors import ConfigurationError, PlatformAuthError
from neural_jupyter.pricing import estimate, lookup
from neural_jupyter.redaction import redact, register_secret
from neural_jupyter.runtime.bundle import Bundle, launcher_source
from neural_jupyter.runtime.events import parse_line
from neural_jupyter.runtime.jobdir import artifact_name, output_target

T = TypeVar("T")

PLATFORM = "vertex"
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
DEFAULT_REGION = "us-central1"
DEFAULT_MACHINE = "n1-standard-4"
DEFAULT_GPU = "NVIDIA_TESLA_T4"
IMAGES = table(PLATFORM)
GPU_IMAGE = f"{IMAGES.extra['registry']}/{IMAGES.default()['gpu']}"
CPU_IMAGE = f"{IMAGES.extra['registry']}/{IMAGES.default()['cpu']}"
PREFIX = "neural-jupyter"
KEY_LABEL = "neural_jupyter_key"
LOG_SOURCES = ("gcs", "cloud_logging")
LOG_SYNC_SECONDS = 15
API_TIMEOUT = 60.0
DEFAULT_MAX_HOURS = 24  # the job's time limit when neither --max-hours nor --timeout is given

ENV_ENDPOINT = "NEURAL_JUPYTER_VERTEX_ENDPOINT"
ENV_BUCKET = "NEURAL_JUPYTER_VERTEX_BUCKET"
ENV_GCS_ENDPOINT = "NEURAL_JUPYTER_GCS_ENDPOINT"
ENV_LOGGING_ENDPOINT = "NEURAL_JUPYTER_LOGGING_ENDPOINT"

# The container's command: fetch launcher.py (Cloud Storage, else the /gcs/ mount Vertex AI
# provides) and run it with the remaining arguments.
FETCH_LAUNCHER = (
    "import os, runpy, shutil, sys, tempfile\n"
    "uri, path = sys.argv.pop(1), os.path.join(tempfile.mkdtemp(), 'launcher.py')\n"
    "try:\n"
    "    from google.cloud import storage\n"
    "    bucket, _, name = uri[5:].partition('/')\n"
    "    client = storage.Client(project=os.environ.get('CLOUD_ML_PROJECT_ID') or None)\n"
    "    client.bucket(bucket).blob(name).download_to_filename(path)\n"
    "except Exception:\n"
    "    shutil.copyfile('/gcs/' + uri[5:], path)\n"
    "sys.argv[0] = path\n"
    "runpy.run_path(path, run_name='__main__')\n"
)

STATES = StateTable(
    {
        "JOB_STATE_UNSPECIFIED": State.UNKNOWN,
        "JOB_STATE_QUEUED": State.PENDING,
        "JOB_STATE_PENDING": State.PENDING,
        "JOB_STATE_PAUSED": State.PENDING,
        "JOB_STATE_RUNNING": State.RUNNING,
        "JOB_STATE_UPDATING": State.RUNNING,
        "JOB_STATE_CANCELLING": State.RUNNING,
        "JOB_STATE_SUCCEEDED": State.SUCCEEDED,
        "JOB_STATE_FAILED": State.FAILED,
        "JOB_STATE_PARTIALLY_SUCCEEDED": State.FAILED,
        "JOB_STATE_EXPIRED": State.FAILED,
        "JOB_STATE_CANCELLED": State.CANCELLED,
    }
)

# Short GPU names users type → Vertex AI accelerator types.
GPU_NAMES = {
    "T4": "NVIDIA_TESLA_T4",
    "V100": "NVIDIA_TESLA_V100",
    "P100": "NVIDIA_TESLA_P100",
    "P4": "NVIDIA_TESLA_P4",
    "A100": "NVIDIA_TESLA_A100",
    "A100_80GB": "NVIDIA_A100_80GB",
    "L4": "NVIDIA_L4",
    "H100": "NVIDIA_H100_80GB",
    "H100_MEGA": "NVIDIA_H100_MEGA_80GB",
    "H200": "NVIDIA_H200_141GB",
    "B200": "NVIDIA_B200",
    "GB200": "NVIDIA_GB200",
    "RTX_PRO_6000": "NVIDIA_RTX_PRO_6000",
}

# Accelerator-optimized machine families come with their GPUs: (pattern, type, count).
BUILT_IN_GPUS: tuple[tuple[str, str, Callable[[re.Match[str]], int]], ...] = (
    (r"a2-highgpu-(\d+)g", "NVIDIA_TESLA_A100", lambda m: int(m[1])),
    (r"a2-megagpu-(\d+)g", "NVIDIA_TESLA_A100", lambda m: int(m[1])),
    (r"a2-ultragpu-(\d+)g", "NVIDIA_A100_80GB", lambda m: int(m[1])),
    (r"a3-highgpu-(\d+)g", "NVIDIA_H100_80GB", lambda m: int(m[1])),
    (r"a3-megagpu-(\d+)g", "NVIDIA_H100_MEGA_80GB", lambda m: int(m[1])),
    (r"a3-ultragpu-(\d+)g", "NVIDIA_H200_141GB", lambda m: int(m[1])),
    (r"a4-highgpu-(\d+)g", "NVIDIA_B200", lambda m: int(m[1])),
    (r"a4x-highgpu-(\d+)g", "NVIDIA_GB200", lambda m: int(m[1])),
    (r"g2-standard-(\d+)", "NVIDIA_L4", lambda m: {24: 2, 48: 4, 96: 8}.get(int(m[1]), 1)),
    (r"g4-standard-(\d+)", "NVIDIA_RTX_PRO_6000", lambda m: max(1, int(m[1]) // 48)),
)


FAULTS = retry.FaultPolicy(
    PLATFORM,
    "Vertex AI",
    auth_hint="check `gcloud auth application-default login` and that the account has "
    "roles/aiplatform.user and roles/storage.objectAdmin on the staging bucket",
    quota_hint="see IAM & Admin → Quotas (Vertex AI custom training) or try another region",
    rules=(
        retry.Rule(retry.AUTH, types=("Unauthorized", "Forbidden")),
        retry.Rule(
            retry.AUTH,
            types=("RefreshError", "DefaultCredentialsError"),
            message="{action}: the Google Cloud credentials do not work: {text}",
            hint="run `gcloud auth application-default login` again",
        ),
        retry.Rule(retry.QUOTA, types=("TooManyRequests",), retry=True),
        retry.TRANSIENT_HTTP,
        retry.Rule(retry.UNAVAILABLE, types=("ServerError",)),
        retry.CONNECTION,
    ),
)


@dataclass(frozen=True)
class Machine:
    """One worker's hardware: a machine type and its accelerators."""

    machine_type: str
    accelerator_type: str | None = None
    accelerator_count: int = 0
    built_in: bool = False  # the machine type implies its GPUs (a2, a3, g2)

    @property
    def price_key(self) -> str:
        """How ``prices.json`` names it: the machine, plus ``+ACCELERATOR`` when attached."""
        if self.accelerator_type and not self.built_in:
            return f"{self.machine_type}+{self.accelerator_type}"
        return self.machine_type


def machine_for(resources: base.ResourceSpec) -> Machine:
    """``--instance`` (``n1-standard-8``, ``n1-standard-4+NVIDIA_TESLA_T4``, ``g2-standard-8``),
    ``--gpus`` and ``--gpu-type`` (``T4`` or ``NVIDIA_TESLA_T4``) → the worker's hardware."""
    machine_type, _, attached = (resources.instance_type or DEFAULT_MACHINE).partition("+")
    accelerator = attached or resources.gpu_type
    count = resources.gpus
    built_in = False
    for pattern, gpu, gpu_count in BUILT_IN_GPUS:
        match = re.fullmatch(pattern, machine_type)
        if match:
            built_in = True
            accelerator = accelerator or gpu
            count = count or gpu_count(match)
            break
    if accelerator and not count:
        count = 1
    if count and not accelerator:
        accelerator = DEFAULT_GPU
    if accelerator:
        accelerator = GPU_NAMES.get(accelerator.upper(), accelerator.upper())
    return Machine(machine_type, accelerator, int(count or 0), built_in)


def state_of(job_state: Any) -> str:
    """A ``JobState`` (enum, name or number) → its name, e.g. ``JOB_STATE_RUNNING``."""
    name = getattr(job_state, "name", None)
    if name:
        return str(name)
    if isinstance(job_state, int):
        return STATE_NUMBERS.get(job_state, "JOB_STATE_UNSPECIFIED")
    return str(job_state)


STATE_NUMBERS = dict(enumerate(STATES))  # the proto's numbering follows the table's order

DEADLINE_EXCEEDED = 4  # google.rpc.Code


def remote_status(
    state_name: str, error_code: int = 0, error_message: str = ""
) -> base.RemoteStatus:
    """Vertex AI's job state (and ``error``) → a ``RemoteStatus`` (see the module's table)."""
    state = STATES.state(state_name)
    message = redact(error_message) if error_message else None
    pretty = state_name.removeprefix("JOB_STATE_").lower().replace("_", " ")
    if state == State.FAILED:
        timed_out = state_name == "JOB_STATE_EXPIRED" or error_code == DEADLINE_EXCEEDED
        found = re.search(r"non-zero status of (-?\d+)", error_message or "")
        exit_code = int(found[1]) if found else None
        if exit_code == 124:
            timed_out = True
        if timed_out and not message:
            message = "stopped at its time limit"
        return base.RemoteStatus(
            State.FAILED, exit_code, message or f"Vertex AI job {pretty}", timed_out
        )
    if state == State.SUCCEEDED:
        return base.RemoteStatus(State.SUCCEEDED, 0)
    if state == State.CANCELLED:
        return base.RemoteStatus(State.CANCELLED, None, message or "cancelled")
    if state_name in ("JOB_STATE_CANCELLING", "JOB_STATE_PAUSED", "JOB_STATE_PENDING"):
        return base.RemoteStatus(state, None, pretty)
    return base.RemoteStatus(state, None, message)


def torchrun_options(resources: base.ResourceSpec) -> list[str]:
    """The launcher's torchrun options for ``nodes × procs_per_node`` (none for 1 × 1); each
    replica finds its node rank and node 0's address in ``CLUSTER_SPEC``."""
    if resources.world_size == 1:
        return []
    return ["--nnodes", str(resources.nodes), "--nproc-per-node", str(resources.procs_per_node)]


def label_value(text: str) -> str:
    """A Vertex AI label value (≤ 63 of ``a-z0-9_-``) naming ``text`` uniquely."""
    value = re.sub(r"[^a-z0-9_-]", "-", text.lower())
    if value != text or len(value) > 63:
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        value = f"{value[:50]}-{digest}"
    return value


@dataclass(frozen=True)
class Place:
    """Where a job lives: project, region, staging location and endpoints (tests point
    the endpoints at local fakes)."""

    project: str
    region: str
    base_uri: str  # gs://bucket/[prefix/]neural-jupyter/KEY
    api_endpoint: str | None = None
    storage_endpoint: str | None = None
    logging_endpoint: str | None = None
    logs: str = "gcs"

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"

    @property
    def bucket(self) -> str:
        return self.base_uri[len("gs://") :].partition("/")[0]

    def object_name(self, *parts: str) -> str:
        prefix = self.base_uri[len("gs://") :].partition("/")[2]
        return "/".join([prefix, *parts])

    def uri(self, *parts: str) -> str:
        return f"gs://{self.bucket}/{self.object_name(*parts)}"

    def details(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_details(cls, details: Mapping[str, Any]) -> Place:
        try:
            return cls(**{k: details[k] for k in cls.__dataclass_fields__ if k in details})
        except TypeError:
            raise ConfigurationError(
                "this Vertex AI job has no record of its project and staging location",
                hint="was it submitted by another version of neural-jupyter?",
            ) from None


def image_for(hw: Machine, image: Image | None = None) -> str:
    """The image for ``hw`` from the table's row ``image`` (default: the newest), if its
    build runs on that GPU."""
    image = image or IMAGES.default()
    if not hw.accelerator_type:
        return f"{IMAGES.extra['registry']}/{image['cpu']}"
    facts = IMAGES.extra
    custom = "give an image that supports it with --set image=URI"
    if hw.accelerator_type in facts["deprecated_accelerators"]:
        raise ConfigurationError(
            facts["deprecated_accelerators"][hw.accelerator_type], hint="pick another --gpu-type"
        )
    if hw.accelerator_type in facts["arm_hosts"]:
        raise ConfigurationError(f"{facts['arm_hosts'][hw.accelerator_type]}", hint=custom)
    needed = facts["min_cuda"].get(hw.accelerator_type)
    if needed and image.cuda_key < tuple(int(p) for p in needed.split(".")):
        raise ConfigurationError(
            f"{hw.accelerator_type} needs CUDA {needed} or later; the prebuilt PyTorch "
            f"{image.framework_version} image has CUDA {image.cuda}",
            hint=custom,
        )
    return f"{IMAGES.extra['registry']}/{image['gpu']}"


class VertexBackend(RemotePlatform):
    """Custom training jobs on Google Vertex AI."""

    name = "vertex"
    label = "Google Vertex AI"
    extra = "vertex"
    sdk_modules: ClassVar[Mapping[str, str]] = {
        "google.cloud.aiplatform_v1": "google-cloud-aiplatform",
        "google.cloud.storage": "google-cloud-storage",
    }
    paid = True
    price_table = PLATFORM
    faults = FAULTS
    max_nodes = 100  # worker pool replicas: each one node of the torchrun job

    def __init__(self) -> None:
        self._clients: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()

    # --- configuration ----------------------------------------------------------------------
    def place(self, job: base.RemoteJob, resources: base.ResourceSpec) -> Place:
        """Project, region, staging URI and endpoints from ``--set``, env and gcloud config."""
        extra = resources.extra
        region = (
            resources.region
            or extra.get("region")
            or os.environ.get("CLOUD_ML_REGION")
            or os.environ.get("GOOGLE_CLOUD_REGION")
            or _gcloud_setting("ai", "region")
            or _gcloud_setting("compute", "region")
            or DEFAULT_REGION
        )
        bucket = str(extra.get("staging_bucket") or os.environ.get(ENV_BUCKET) or "").strip()
        if not bucket:
            raise ConfigurationError(
                "Vertex AI jobs need a Cloud Storage bucket for the bundle and the outputs",
                hint=f"--set staging_bucket=gs://BUCKET (or the {ENV_BUCKET} variable)",
            )
        bucket = bucket.removeprefix("gs://").strip("/")
        logs = str(extra.get("logs") or "gcs")
        if logs not in LOG_SOURCES:
            raise ConfigurationError(f"--set logs={logs}: expected one of {', '.join(LOG_SOURCES)}")
        return Place(
            project=str(extra.get("project") or _project()),
            region=str(region),
            base_uri=f"gs://{bucket}/{PREFIX}/{job.idempotency_key}",
            api_endpoint=extra.get("api_endpoint") or os.environ.get(ENV_ENDPOINT) or None,
            storage_endpoint=extra.get("storage_endpoint") or os.environ.get(ENV_GCS_ENDPOINT),
            logging_endpoint=extra.get("logging_endpoint") or os.environ.get(ENV_LOGGING_ENDPOINT),
            logs=logs,
        )

    def custom_job(
        self, job: base.RemoteJob, resources: base.ResourceSpec, place: Place
    ) -> dict[str, Any]:
        """The ``CustomJob`` resource (REST JSON) that ``submit`` creates."""
        hw = machine_for(resources)
        machine_spec: dict[str, Any] = {"machineType": hw.machine_type}
        if hw.accelerator_type:
            machine_spec.update(
                acceleratorType=hw.accelerator_type, acceleratorCount=hw.accelerator_count
            )
        extra = resources.extra
        image = extra.get("image") or image_for(hw, self.image_row(job))
        env = [{"name": "NEURAL_JUPYTER_JOB", "value": job.idempotency_key}]
        sync = extra.get("log_sync_seconds", LOG_SYNC_SECONDS)
        env.append({"name": "NEURAL_JUPYTER_LOG_SYNC_SECONDS", "value": str(sync)})
        pool: dict[str, Any] = {
            "machineSpec": machine_spec,
            "replicaCount": "1",
            "containerSpec": {
                "imageUri": image,
                "command": ["python", "-c", FETCH_LAUNCHER],
                "args": [
                    place.uri("launcher.py"),
                    "--bundle",
                    place.uri("bundle.tar.gz"),
                    "--logs",
                    place.uri("logs"),
                    "--outputs",
                    place.uri("output"),
                    "--install-missing",
                    "--budget-margin",
                    *torchrun_options(resources),
                ],
                "env": env,
            },
        }
        if resources.disk_gb:
            pool["diskSpec"] = {"bootDiskSizeGb": int(resources.disk_gb)}
        limit = resources.max_seconds or DEFAULT_MAX_HOURS * 3600
        scheduling: dict[str, Any] = {"timeout": f"{int(limit)}s"}
        if resources.spot:
            scheduling["strategy"] = "SPOT"
        pools = [pool]
        if resources.nodes > 1:  # pool 0: the primary replica (node 0); pool 1: the others
            pools.append({**json.loads(json.dumps(pool)), "replicaCount": str(resources.nodes - 1)})
        spec: dict[str, Any] = {
            "workerPoolSpecs": pools,
            "scheduling": scheduling,
            "baseOutputDirectory": {"outputUriPrefix": place.base_uri + "/"},
        }
        if extra.get("service_account"):
            spec["serviceAccount"] = extra["service_account"]
        if extra.get("network"):
            spec["network"] = extra["network"]
        return {
            "displayName": f"{PREFIX}-{job.idempotency_key}"[:128],
            "labels": {KEY_LABEL: label_value(job.idempotency_key), "created_by": PREFIX},
            "jobSpec": spec,
        }

    # --- SDK access -------------------------------------------------------------------------

    # --- SDK access -------------------------------------------------------------------------
    def _credentials(self) -> Any:
        import google.auth
        from google.auth import exceptions as auth_errors

        try:
            credentials, _ = google.auth.default(scopes=list(SCOPES))
        except auth_errors.DefaultCredentialsError as exc:
            raise PlatformAuthError(
                f"no usable Google Cloud credentials: {exc}",
                platform=PLATFORM,
                hint="run `gcloud auth application-default login`, or set "
                "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file",
            ) from None
        return credentials

    def _cached(self, key: tuple[Any, ...], build: Callable[[], T]) -> T:
        key = (*key, os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"))
        with self._lock:
            if key not in self._clients:
                self._clients[key] = build()
            return self._clients[key]

    def _jobs(self, place: Place) -> Any:
        sdk = self.sdk("google.cloud.aiplatform_v1")
        endpoint = place.api_endpoint or f"{place.region}-aiplatform.googleapis.com"
        return self._cached(
            ("jobs", endpoint),
            lambda: sdk.JobServiceClient(
                transport="rest",
                credentials=self._credentials(),
                client_options={"api_endpoint": endpoint},
            ),
        )

    def _storage(self, place: Place) -> Any:
        storage = self.sdk("google.cloud.storage")
        options = {"api_endpoint": place.storage_endpoint} if place.storage_endpoint else None
        return self._cached(
            ("storage", place.storage_endpoint, place.project),
            lambda: storage.Client(
                project=place.project, credentials=self._credentials(), client_options=options
            ),
        )

    # --- contract ---------------------------------------------------------------------------
    def check_credentials(self) -> None:
        self.sdk("google.cloud.aiplatform_v1")
        self._credentials()

    def plan(self, job: base.RemoteJob, resources: base.ResourceSpec) -> dict[str, Any]:
        place = self.place(job, resources)
        body = self.custom_job(job, resources, place)
        for pool in body["jobSpec"]["workerPoolSpecs"]:
            container = pool["containerSpec"]
            container["command"] = [*container["command"][:2], "<fetch and run launcher.py>"]
        return {
            "platform": self.name,
            "upload": [place.uri("bundle.tar.gz"), place.uri("launcher.py")],
            "CreateCustomJob": {"parent": place.parent, "customJob": body},
            "resources": resources.public(),
        }

    def estimate_cost(self, resources: base.ResourceSpec) -> base.CostEstimate | None:
        """List price × the job's time limit (``--max-hours``, default 24 h)."""
        hw = machine_for(resources)
        hours = (resources.max_seconds or DEFAULT_MAX_HOURS * 3600) / 3600  # the job's limit
        given = resources.extra.get("hourly_usd")
        if given is not None:
            return base.CostEstimate(
                self.name, hw.price_key, float(given), hours, resources.spot, source="--set"
            ).times(resources.nodes, "replicas")
        offer = lookup(self.name, hw.price_key)
        if offer is not None and offer.gpus in (0, hw.accelerator_count):
            cost = estimate(self.name, hw.price_key, hours, spot=resources.spot)
            return cost.times(resources.nodes, "replicas")
        if not resources.instance_type and not hw.accelerator_type:
            return None  # the small default CPU machine; not in the price table
        from neural_jupyter.pricing import instance_types

        raise ConfigurationError(
            f"no price known for {hw.price_key} × {hw.accelerator_count or 1} on Vertex AI",
            hint="known: "
            + ", ".join(sorted(o.instance_type for o in instance_types(self.name)))
            + "; or give its price with --set hourly_usd=PRICE "
            "(https://cloud.google.com/vertex-ai/pricing)",
        )

    def submit(
        self, bundle: Bundle, job: base.RemoteJob, resources: base.ResourceSpec
    ) -> base.Submission:
        place = self.place(job, resources)
        body = self.custom_job(job, resources, place)
        sdk = self.sdk("google.cloud.aiplatform_v1")
        client = self._jobs(place)
        existing = self.call(
            "looking for an earlier Vertex AI job", lambda: self._find(client, place, job)
        )
        if existing is None:
            self.upload(place, "bundle.tar.gz", bundle.archive(compresslevel=1), "application/gzip")
            self.upload(place, "launcher.py", launcher_source().encode(), "text/x-python")
            request = sdk.CustomJob.from_json(json.dumps(body))
            existing, _ = self.submit_once(
                "creating the Vertex AI job",
                lambda: client.create_custom_job(
                    parent=place.parent, custom_job=request, retry=None, timeout=API_TIMEOUT
                ),
                find=lambda: self._find(client, place, job),
                look_first=False,  # after a failed try (maybe only its answer was lost)
            )
        _remember_token(client)
        details = {**place.details(), "display_name": body["displayName"]}
        details["console_url"] = console_url(existing.name, place.project)
        return base.Submission(existing.name, details)

    def _find(self, client: Any, place: Place, job: base.RemoteJob) -> Any:
        """The job already created under this idempotency key, if any."""
        label = label_value(job.idempotency_key)
        request = {"parent": place.parent, "filter": f'labels.{KEY_LABEL}="{label}"'}
        pager = client.list_custom_jobs(request=request, retry=None, timeout=API_TIMEOUT)
        return next(iter(pager), None)

    def upload(self, place: Place, name: str, payload: bytes, content_type: str) -> str:
        """One object under the job's staging prefix; its ``gs://`` URI."""
        data = io.BytesIO(payload)
        blob = self._storage(place).bucket(place.bucket).blob(place.object_name(name))

        def send() -> None:
            data.seek(0)
            blob.upload_from_file(
                data,
                size=len(payload),
                content_type=content_type,
                retry=None,
                timeout=API_TIMEOUT * 5,
            )

        self.call(f"uploading {name} to Cloud Storage", send)
        return place.uri(name)

    def look(self, job: base.RemoteJob) -> Look:
        """Vertex AI's own state name and what it maps to."""
        if not job.remote_id:
            return Look(base.RemoteStatus(State.UNKNOWN, message="never submitted"), gone=True)
        place = Place.from_details(job.details)
        client = self._jobs(place)
        found = self.call(
            "reading the Vertex AI job",
            lambda: client.get_custom_job(name=job.remote_id, retry=None, timeout=API_TIMEOUT),
        )
        name = state_of(found.state)
        error = found.error
        code, message = (error.code, error.message) if error is not None else (0, "")
        status = remote_status(name, code, message)
        return Look(status, name, _state_message(name, status))

    def cancel(self, job: base.RemoteJob) -> None:
        if not job.remote_id:
            return
        client = self._jobs(Place.from_details(job.details))
        self.call(
            "cancelling the Vertex AI job",
            lambda: client.cancel_custom_job(name=job.remote_id, retry=None, timeout=API_TIMEOUT),
        )

    def log_reader(self, job: base.RemoteJob) -> LogReader:
        place = Place.from_details(job.details)
        if place.logs == "cloud_logging":
            return _CloudLogging(self, job, place)
        return _StorageLogs(self, job, place)

    def fetch_artifacts(self, job: base.RemoteJob, destination: Path) -> dict[str, Path]:
        """Every object under ``gs://.../KEY/output/`` → ``destination``."""
        place = Place.from_details(job.details)
        bucket = self._storage(place).bucket(place.bucket)
        prefix = place.object_name("output") + "/"
        blobs = self.call(
            "listing the job's outputs",
            lambda: list(bucket.list_blobs(prefix=prefix, retry=None, timeout=API_TIMEOUT)),
        )
        found: dict[str, Path] = {}
        for blob in blobs:
            relative = blob.name[len(prefix) :]
            target = output_target(destination, relative)
            if target is None or relative.endswith("/"):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            self.call(
                f"downloading {relative}",
                lambda blob=blob, target=target: blob.download_to_filename(
                    str(target), retry=None, timeout=API_TIMEOUT * 5
                ),
            )
            found[artifact_name(relative)] = target
        return found


class _Logs(LogReader):
    """A source of the job's output lines: ``note`` says where they come from; ``missing``
    is said at the end if none came."""

    def __init__(self, job: base.RemoteJob, note: str, missing: str) -> None:
        self.note = note
        self.missing = missing
        self.found = False
        job.directory.mkdir(parents=True, exist_ok=True)
        self.mirror = LogMirror(job.directory, merged=False)

    def finish(self, look: Look) -> Iterator[base.StreamItem]:
        if not self.found:
            yield base.status_event(self.missing)


class _StorageLogs(_Logs):
    """The launcher's copy of stdout/stderr in ``gs://.../KEY/logs/``, read incrementally
    (HTTP range requests) and mirrored byte for byte to the job's ``stdout.log``/``stderr.log``."""

    def __init__(self, backend: VertexBackend, job: base.RemoteJob, place: Place) -> None:
        url = logs_url(job.remote_id, place.project)
        super().__init__(
            job,
            "Vertex AI reports only the job's state; the training output shown here is the "
            f"copy the job writes to {place.uri('logs')}/ every few seconds (full logs: "
            f"Cloud Logging, {url})",
            f"no training output was found in {place.uri('logs')}/, so only the job's state "
            f"is known; its output, if any, is in Cloud Logging: {url}",
        )
        self.backend = backend
        self.place = place
        self.offsets = {"stdout": 0, "stderr": 0}
        self.pending = {"stdout": b"", "stderr": b""}

    def read(self, look: Look, follow: bool) -> Iterator[base.StreamItem]:
        bucket = self.backend._storage(self.place).bucket(self.place.bucket)
        for stream in ("stdout", "stderr"):
            name = self.place.object_name("logs", f"{stream}.log")
            data = self.backend.call(
                "reading the job's log copy",
                lambda name=name, s=stream: _tail(bucket, name, self.offsets[s]),
            )
            if not data:
                continue
            self.found = True
            self.mirror.copy_bytes(stream, self.offsets[stream], data)
            self.offsets[stream] += len(data)
            *lines, self.pending[stream] = (self.pending[stream] + data).split(b"\n")
            for line in lines:
                yield parse_line(line.decode("utf-8", "replace").rstrip("\r"), stream)

    def finish(self, look: Look) -> Iterator[base.StreamItem]:
        for stream, rest in self.pending.items():
            if rest:
                offset = self.offsets[stream] - len(rest)
                self.mirror.copy_bytes(stream, offset, rest, whole=True)
                yield parse_line(rest.decode("utf-8", "replace"), stream)
            self.pending[stream] = b""
        yield from super().finish(look)


def _tail(bucket: Any, name: str, offset: int) -> bytes:
    blob = bucket.get_blob(name, retry=None, timeout=API_TIMEOUT)
    if blob is None or not blob.size or blob.size <= offset:
        return b""
    return blob.download_as_bytes(
        start=offset, end=blob.size - 1, retry=None, timeout=API_TIMEOUT, checksum=None
    )


class _CloudLogging(_Logs):
    """The job's entries in Cloud Logging (``entries:list``; needs ``roles/logging.viewer``).
    Entries arrive with a delay of seconds to a minute; ERROR entries are stderr."""

    PAGE_SIZE = 1000

    def __init__(self, backend: VertexBackend, job: base.RemoteJob, place: Place) -> None:
        url = logs_url(job.remote_id, place.project)
        super().__init__(
            job,
            "Vertex AI reports only the job's state; the training output shown here is read "
            f"from Cloud Logging, a few seconds late ({url})",
            f"Cloud Logging had no entries for this job (yet), so only its state is known: {url}",
        )
        self.backend = backend
        self.place = place
        self.job_id = (job.remote_id or "").rsplit("/", 1)[-1]
        self.since: str | None = None
        self.seen: set[str] = set()
        self.count = 0

    def _session(self) -> Any:
        from google.auth.transport.requests import AuthorizedSession

        return self.backend._cached(
            ("logging", self.place.logging_endpoint),
            lambda: AuthorizedSession(self.backend._credentials()),
        )

    def read(self, look: Look, follow: bool) -> Iterator[base.StreamItem]:
        endpoint = (self.place.logging_endpoint or "https://logging.googleapis.com").rstrip("/")
        query = f'resource.type="ml_job" AND resource.labels.job_id="{self.job_id}"'
        if self.since:
            query += f' AND timestamp>="{self.since}"'
        body: dict[str, Any] = {
            "resourceNames": [f"projects/{self.place.project}"],
            "filter": query,
            "orderBy": "timestamp asc",
            "pageSize": self.PAGE_SIZE,
        }
        while True:
            page = self.backend.call(
                "reading Cloud Logging", lambda body=dict(body): self._page(endpoint, body)
            )
            for entry in page.get("entries", []):
                key = entry.get("insertId") or json.dumps(entry, sort_keys=True)
                if key in self.seen:
                    continue
                self.seen.add(key)
                self.found = True
                self.since = entry.get("timestamp", self.since)
                stream = "stderr" if entry.get("severity") in ERROR_SEVERITIES else "stdout"
                for line in _entry_text(entry).splitlines():
                    self.count += 1
                    self.mirror.add(line, self.count, stream)
                    yield parse_line(line, stream)
            if not page.get("nextPageToken"):
                break
            body["pageToken"] = page["nextPageToken"]

    def _page(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self._session().post(f"{endpoint}/v2/entries:list", json=body, timeout=60)
        if response.status_code >= 400:
            from google.api_core import exceptions as api_errors

            raise api_errors.from_http_response(response)
        return response.json()


ERROR_SEVERITIES = frozenset({"ERROR", "CRITICAL", "ALERT", "EMERGENCY"})


def _entry_text(entry: Mapping[str, Any]) -> str:
    if "textPayload" in entry:
        return str(entry["textPayload"]).rstrip("\n")
    payload = entry.get("jsonPayload") or {}
    return str(payload.get("message", json.dumps(payload))).rstrip("\n")


# --- helpers ------------------------------------------------------------------------------------
def _state_message(state_name: str, status: base.RemoteStatus) -> str:
    pretty = state_name.removeprefix("JOB_STATE_").lower().replace("_", " ")
    text = f"Vertex AI job {pretty}"
    if status.message and status.message != pretty:
        text += f": {status.message}"
    return text


def console_url(name: str, project: str) -> str:
    """The job's page in the Google Cloud console."""
    parts = name.split("/")
    region, job_id = (parts[3], parts[5]) if len(parts) >= 6 else ("", name)
    return (
        f"https://console.cloud.google.com/vertex-ai/locations/{region}/training/"
        f"{job_id}/cpu?project={project}"
    )


def logs_url(name: str | None, project: str) -> str:
    job_id = (name or "").rsplit("/", 1)[-1]
    return (
        "https://console.cloud.google.com/logs/query;query=resource.labels.job_id%3D%22"
        f"{job_id}%22?project={project}"
    )


def _project() -> str:
    for variable in ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "GCLOUD_PROJECT"):
        if os.environ.get(variable):
            return os.environ[variable]
    configured = _gcloud_setting("core", "project")
    if configured:
        return configured
    with contextlib.suppress(Exception):
        import google.auth

        _, project = google.auth.default(scopes=list(SCOPES))
        if project:
            return project
    raise ConfigurationError(
        "no Google Cloud project is set",
        hint="--set project=PROJECT, the GOOGLE_CLOUD_PROJECT variable, or "
        "`gcloud config set project PROJECT`",
    )


def _gcloud_setting(section: str, key: str) -> str | None:
    """A value of the active gcloud configuration (read from its file; gcloud not run)."""
    root = Path(os.environ.get("CLOUDSDK_CONFIG") or Path.home() / ".config" / "gcloud")
    try:
        active = (root / "active_config").read_text().strip() or "default"
    except OSError:
        active = "default"
    parser = configparser.ConfigParser()
    try:
        parser.read(root / "configurations" / f"config_{active}")
    except configparser.Error:
        return None
    return parser.get(section, key, fallback=None) or None


def _remember_token(client: Any) -> None:
    """Register the access token the SDK holds, so no later output can show it."""
    credentials = getattr(getattr(client, "_transport", None), "_credentials", None)
    register_secret(getattr(credentials, "token", None))
