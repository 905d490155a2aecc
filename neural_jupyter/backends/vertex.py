"""Google Vertex AI custom training jobs (``pip install "neural-jupyter[vertex]"``).

A submit uploads the bundle to ``gs://BUCKET/neural-jupyter/KEY/bundle.tar.gz`` and creates
one ``CustomJob`` (REST API of ``google-cloud-aiplatform``'s ``JobServiceClient``) with one
worker pool: a prebuilt PyTorch training container whose command is a short launcher that
fetches the bundle, runs ``python train.py``, copies its log lines to
``gs://.../KEY/logs/`` every few seconds and its ``output/`` files to ``gs://.../KEY/output/``.

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
from neural_jupyter.backends.retry import TRANSIENT_HTTP_STATUS, call_with_retries
from neural_jupyter.errors import (
    ConfigurationError,
    MissingDependencyError,
    NeuralError,
    PlatformAuthError,
    PlatformConnectionError,
    PlatformError,
    QuotaError,
)
from neural_jupyter.redaction import redact, register_secret
from neural_jupyter.runtime.bundle import Bundle
from neural_jupyter.runtime.events import Event, parse_line

T = TypeVar("T")

PLATFORM = "vertex"
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
DEFAULT_REGION = "us-central1"
DEFAULT_MACHINE = "n1-standard-4"
DEFAULT_GPU = "NVIDIA_TESLA_T4"
# Vertex AI's prebuilt PyTorch training containers (torch, numpy, google-cloud-storage):
# https://cloud.google.com/vertex-ai/docs/training/pre-built-containers. The CPU image of
# PyTorch is the XLA one (it runs on plain CPUs too).
GPU_IMAGE = "us-docker.pkg.dev/vertex-ai/training/pytorch-gpu.2-3.py310:latest"
CPU_IMAGE = "us-docker.pkg.dev/vertex-ai/training/pytorch-xla.2-3.py310:latest"
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

STATES: dict[str, str] = {
    "JOB_STATE_UNSPECIFIED": UNKNOWN,
    "JOB_STATE_QUEUED": PENDING,
    "JOB_STATE_PENDING": PENDING,
    "JOB_STATE_PAUSED": PENDING,
    "JOB_STATE_RUNNING": RUNNING,
    "JOB_STATE_UPDATING": RUNNING,
    "JOB_STATE_CANCELLING": RUNNING,
    "JOB_STATE_SUCCEEDED": SUCCEEDED,
    "JOB_STATE_FAILED": FAILED,
    "JOB_STATE_PARTIALLY_SUCCEEDED": FAILED,
    "JOB_STATE_EXPIRED": FAILED,
    "JOB_STATE_CANCELLED": CANCELLED,
}

# Short GPU names users type → Vertex AI accelerator types.
GPU_NAMES = {
    "T4": "NVIDIA_TESLA_T4",
    "V100": "NVIDIA_TESLA_V100",
    "P100": "NVIDIA_TESLA_P100",
    "P4": "NVIDIA_TESLA_P4",
    "K80": "NVIDIA_TESLA_K80",
    "A100": "NVIDIA_TESLA_A100",
    "A100_80GB": "NVIDIA_A100_80GB",
    "L4": "NVIDIA_L4",
    "H100": "NVIDIA_H100_80GB",
    "H100_MEGA": "NVIDIA_H100_MEGA_80GB",
    "H200": "NVIDIA_H200_141GB",
    "B200": "NVIDIA_B200",
}

# Accelerator-optimized machine families come with their GPUs: (pattern, type, count).
BUILT_IN_GPUS: tuple[tuple[str, str, Callable[[re.Match[str]], int]], ...] = (
    (r"a2-highgpu-(\d+)g", "NVIDIA_TESLA_A100", lambda m: int(m[1])),
    (r"a2-megagpu-(\d+)g", "NVIDIA_TESLA_A100", lambda m: int(m[1])),
    (r"a2-ultragpu-(\d+)g", "NVIDIA_A100_80GB", lambda m: int(m[1])),
    (r"a3-highgpu-(\d+)g", "NVIDIA_H100_80GB", lambda m: int(m[1])),
    (r"a3-megagpu-(\d+)g", "NVIDIA_H100_MEGA_80GB", lambda m: int(m[1])),
    (r"a3-ultragpu-(\d+)g", "NVIDIA_H200_141GB", lambda m: int(m[1])),
    (r"g2-standard-(\d+)", "NVIDIA_L4", lambda m: {24: 2, 48: 4, 96: 8}.get(int(m[1]), 1)),
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


def machine_for(resources: ResourceSpec) -> Machine:
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


def remote_status(state_name: str, error_code: int = 0, error_message: str = "") -> RemoteStatus:
    """Vertex AI's job state (and ``error``) → a ``RemoteStatus`` (see the module's table)."""
    state = STATES.get(state_name, UNKNOWN)
    message = redact(error_message) if error_message else None
    pretty = state_name.removeprefix("JOB_STATE_").lower().replace("_", " ")
    if state == FAILED:
        timed_out = state_name == "JOB_STATE_EXPIRED" or error_code == DEADLINE_EXCEEDED
        found = re.search(r"non-zero status of (-?\d+)", error_message or "")
        exit_code = int(found[1]) if found else None
        if exit_code == 124:
            timed_out = True
        if timed_out and not message:
            message = "stopped at its time limit"
        return RemoteStatus(FAILED, exit_code, message or f"Vertex AI job {pretty}", timed_out)
    if state == SUCCEEDED:
        return RemoteStatus(SUCCEEDED, 0)
    if state == CANCELLED:
        return RemoteStatus(CANCELLED, None, message or "cancelled")
    if state_name in ("JOB_STATE_CANCELLING", "JOB_STATE_PAUSED", "JOB_STATE_PENDING"):
        return RemoteStatus(state, None, pretty)
    return RemoteStatus(state, None, message)


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


class VertexBackend(Backend):
    """Custom training jobs on Google Vertex AI."""

    name = "vertex"
    label = "Google Vertex AI"
    extra = "vertex"

    POLL_SECONDS: ClassVar[float] = 10.0  # between state requests while following a job
    HEARTBEAT_SECONDS: ClassVar[float] = 0.25

    def __init__(self) -> None:
        self._clients: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()

    # --- configuration ----------------------------------------------------------------------
    def place(self, job: RemoteJob, resources: ResourceSpec) -> Place:
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

    def custom_job(self, job: RemoteJob, resources: ResourceSpec, place: Place) -> dict[str, Any]:
        """The ``CustomJob`` resource (REST JSON) that ``submit`` creates."""
        hw = machine_for(resources)
        machine_spec: dict[str, Any] = {"machineType": hw.machine_type}
        if hw.accelerator_type:
            machine_spec.update(
                acceleratorType=hw.accelerator_type, acceleratorCount=hw.accelerator_count
            )
        extra = resources.extra
        image = extra.get("image") or (GPU_IMAGE if hw.accelerator_type else CPU_IMAGE)
        env = [{"name": "NEURAL_JUPYTER_JOB", "value": job.idempotency_key}]
        sync = extra.get("log_sync_seconds", LOG_SYNC_SECONDS)
        env.append({"name": "NEURAL_JUPYTER_LOG_SYNC_SECONDS", "value": str(sync)})
        pool: dict[str, Any] = {
            "machineSpec": machine_spec,
            "replicaCount": "1",
            "containerSpec": {
                "imageUri": image,
                "command": ["python", "-c", LAUNCHER],
                "args": [place.uri("bundle.tar.gz"), place.base_uri],
                "env": env,
            },
        }
        if resources.disk_gb:
            pool["diskSpec"] = {"bootDiskSizeGb": int(resources.disk_gb)}
        limit = resources.max_seconds or DEFAULT_MAX_HOURS * 3600
        scheduling: dict[str, Any] = {"timeout": f"{int(limit)}s"}
        if resources.spot:
            scheduling["strategy"] = "SPOT"
        spec: dict[str, Any] = {
            "workerPoolSpecs": [pool],
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
    @staticmethod
    def _sdk() -> Any:
        try:
            from google.cloud import aiplatform_v1
        except ImportError:
            raise MissingDependencyError(
                "google-cloud-aiplatform", "vertex", "The Vertex AI backend"
            ) from None
        return aiplatform_v1

    @staticmethod
    def _credentials() -> Any:
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
        sdk = self._sdk()
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
        try:
            from google.cloud import storage
        except ImportError:
            raise MissingDependencyError(
                "google-cloud-storage", "vertex", "The Vertex AI backend"
            ) from None

        options = {"api_endpoint": place.storage_endpoint} if place.storage_endpoint else None
        return self._cached(
            ("storage", place.storage_endpoint, place.project),
            lambda: storage.Client(
                project=place.project, credentials=self._credentials(), client_options=options
            ),
        )

    def _call(self, action: str, func: Callable[[], T]) -> T:
        """``func()`` with retries for transient faults; SDK errors become ours."""
        try:
            return call_with_retries(func, _is_transient)
        except NeuralError:
            raise
        except Exception as exc:
            raise _translate(exc, action) from None

    # --- contract ---------------------------------------------------------------------------
    def check_credentials(self) -> None:
        self._sdk()
        self._credentials()

    def plan(self, job: RemoteJob, resources: ResourceSpec) -> dict[str, Any]:
        place = self.place(job, resources)
        body = self.custom_job(job, resources, place)
        container = body["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]
        lines = len(LAUNCHER.strip().splitlines())
        container["command"] = [
            *container["command"][:2],
            f"<neural_jupyter.backends.vertex.LAUNCHER: {lines} lines of Python>",
        ]
        return {
            "backend": self.name,
            "upload": place.uri("bundle.tar.gz"),
            "CreateCustomJob": {"parent": place.parent, "customJob": body},
            "resources": resources.public(),
        }

    def estimate_cost(self, resources: ResourceSpec) -> CostEstimate | None:
        """List price × the job's time limit (``--max-hours``, default 24 h)."""
        from neural_jupyter.pricing import estimate, offers

        hw = machine_for(resources)
        hours = (resources.max_seconds or DEFAULT_MAX_HOURS * 3600) / 3600  # the job's limit
        given = resources.extra.get("hourly_usd")
        if given is not None:
            return CostEstimate(
                self.name, hw.price_key, float(given), hours, resources.spot, source="--set"
            )
        known = {o.instance_type: o for o in offers() if o.platform == self.name}
        offer = known.get(hw.price_key)
        if offer is not None and offer.gpus in (0, hw.accelerator_count):
            return estimate(self.name, hw.price_key, hours, spot=resources.spot)
        if not resources.instance_type and not hw.accelerator_type:
            return None  # the small default CPU machine; not in the price table
        raise ConfigurationError(
            f"no price known for {hw.price_key} × {hw.accelerator_count or 1} on Vertex AI",
            hint="known: "
            + ", ".join(sorted(known))
            + "; or give its price with --set hourly_usd=PRICE "
            "(https://cloud.google.com/vertex-ai/pricing)",
        )

    def submit(self, bundle: Bundle, job: RemoteJob, resources: ResourceSpec) -> Submission:
        place = self.place(job, resources)
        body = self.custom_job(job, resources, place)
        sdk = self._sdk()
        client = self._jobs(place)
        existing = self._find(client, place, job)
        if existing is None:
            self.upload_bundle(bundle, place)
            request = sdk.CustomJob.from_json(json.dumps(body))
            tries: list[int] = []

            def find_or_create() -> Any:
                # After a failed try (maybe only its response was lost) the job may exist.
                found = self._find(client, place, job, retry=False) if tries else None
                tries.append(1)
                if found is not None:
                    return found
                return client.create_custom_job(
                    parent=place.parent, custom_job=request, retry=None, timeout=API_TIMEOUT
                )

            existing = self._call("creating the Vertex AI job", find_or_create)
        _remember_token(client)
        details = {**place.details(), "display_name": body["displayName"]}
        details["console_url"] = console_url(existing.name, place.project)
        return Submission(existing.name, details)

    def _find(self, client: Any, place: Place, job: RemoteJob, *, retry: bool = True) -> Any:
        """The job already created under this idempotency key, if any."""
        label = label_value(job.idempotency_key)
        request = {"parent": place.parent, "filter": f'labels.{KEY_LABEL}="{label}"'}

        def look() -> Any:
            pager = client.list_custom_jobs(request=request, retry=None, timeout=API_TIMEOUT)
            return next(iter(pager), None)

        if not retry:
            return look()
        return self._call("looking for an earlier Vertex AI job", look)

    def upload_bundle(self, bundle: Bundle, place: Place) -> str:
        """The bundle as one ``.tar.gz`` object; returns its ``gs://`` URI."""
        data = io.BytesIO(bundle.archive(compresslevel=1))
        blob = self._storage(place).bucket(place.bucket).blob(place.object_name("bundle.tar.gz"))

        def upload() -> None:
            data.seek(0)
            blob.upload_from_file(
                data,
                size=len(data.getbuffer()),
                content_type="application/gzip",
                retry=None,
                timeout=API_TIMEOUT * 5,
            )

        self._call("uploading the bundle to Cloud Storage", upload)
        return place.uri("bundle.tar.gz")

    def describe(self, job: RemoteJob) -> tuple[str, RemoteStatus]:
        """Vertex AI's own state name and what it maps to."""
        if not job.remote_id:
            return "JOB_STATE_UNSPECIFIED", RemoteStatus(UNKNOWN, message="never submitted")
        place = Place.from_details(job.details)
        client = self._jobs(place)
        found = self._call(
            "reading the Vertex AI job",
            lambda: client.get_custom_job(name=job.remote_id, retry=None, timeout=API_TIMEOUT),
        )
        name = state_of(found.state)
        error = found.error
        code, message = (error.code, error.message) if error is not None else (0, "")
        return name, remote_status(name, code, message)

    def status(self, job: RemoteJob) -> RemoteStatus:
        return self.describe(job)[1]

    def cancel(self, job: RemoteJob) -> None:
        if not job.remote_id:
            return
        client = self._jobs(Place.from_details(job.details))
        self._call(
            "cancelling the Vertex AI job",
            lambda: client.cancel_custom_job(name=job.remote_id, retry=None, timeout=API_TIMEOUT),
        )

    def events(self, job: RemoteJob, *, follow: bool = True) -> Iterator[StreamItem]:
        place = Place.from_details(job.details)
        logs = self._log_reader(job, place)
        yield Event("status", {"message": logs.note})
        seen = None
        while True:
            state_name, status = self.describe(job)
            if state_name != seen:
                seen = state_name
                yield Event("status", {"message": _state_message(state_name, status)})
            yield from logs.read()
            if status.is_terminal or not follow:
                yield from logs.finish()
                if status.state == SUCCEEDED:
                    yield from self.fetch_after_success(job)
                return
            yield from self.heartbeats(self.POLL_SECONDS, self.HEARTBEAT_SECONDS)

    def fetch_artifacts(self, job: RemoteJob, destination: Path) -> dict[str, Path]:
        """Every object under ``gs://.../KEY/output/`` → ``destination`` (the bundle's
        ``output/`` directory by default)."""
        place = Place.from_details(job.details)
        bucket = self._storage(place).bucket(place.bucket)
        prefix = place.object_name("output") + "/"
        blobs = self._call(
            "listing the job's outputs",
            lambda: list(bucket.list_blobs(prefix=prefix, retry=None, timeout=API_TIMEOUT)),
        )
        found: dict[str, Path] = {}
        for blob in blobs:
            relative = blob.name[len(prefix) :]
            if not relative or relative.endswith("/") or ".." in Path(relative).parts:
                continue
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            self._call(
                f"downloading {relative}",
                lambda blob=blob, target=target: blob.download_to_filename(
                    str(target), retry=None, timeout=API_TIMEOUT * 5
                ),
            )
            found[ARTIFACT_NAMES.get(relative, relative)] = target
        return found

    # --- logs -------------------------------------------------------------------------------
    def _log_reader(self, job: RemoteJob, place: Place) -> _Logs:
        if place.logs == "cloud_logging":
            return _CloudLogging(self, job, place)
        return _StorageLogs(self, job, place)


ARTIFACT_NAMES = {"model.pt": "weights", "history.json": "history", "checkpoint.pt": "checkpoint"}


class _Logs:
    """A source of the job's output lines: ``note`` says where they come from; ``missing``
    is said at the end if none came."""

    def __init__(self, note: str, missing: str) -> None:
        self.note = note
        self.missing = missing
        self.found = False

    def read(self) -> Iterator[StreamItem]:
        return iter(())

    def finish(self) -> Iterator[StreamItem]:
        if not self.found:
            yield Event("status", {"message": self.missing})


class _StorageLogs(_Logs):
    """The launcher's copy of stdout/stderr in ``gs://.../KEY/logs/``, read incrementally
    (HTTP range requests) and mirrored to the job directory's ``stdout.log``/``stderr.log``."""

    def __init__(self, backend: VertexBackend, job: RemoteJob, place: Place) -> None:
        url = logs_url(job.remote_id, place.project)
        super().__init__(
            "Vertex AI reports only the job's state; the training output shown here is the "
            f"copy the job writes to {place.uri('logs')}/ every few seconds (full logs: "
            f"Cloud Logging, {url})",
            f"no training output was found in {place.uri('logs')}/, so only the job's state "
            f"is known; its output, if any, is in Cloud Logging: {url}",
        )
        self.backend = backend
        self.place = place
        self.directory = job.directory
        self.offsets = {"stdout": 0, "stderr": 0}
        self.pending = {"stdout": b"", "stderr": b""}

    def read(self) -> Iterator[StreamItem]:
        bucket = self.backend._storage(self.place).bucket(self.place.bucket)
        for stream in ("stdout", "stderr"):
            name = self.place.object_name("logs", f"{stream}.log")
            data = self.backend._call(
                "reading the job's log copy",
                lambda name=name, s=stream: _tail(bucket, name, s, self),
            )
            if not data:
                continue
            self.found = True
            self._mirror(stream, data)
            self.offsets[stream] += len(data)
            *lines, self.pending[stream] = (self.pending[stream] + data).split(b"\n")
            for line in lines:
                yield parse_line(line.decode("utf-8", "replace").rstrip("\r"), stream)

    def finish(self) -> Iterator[StreamItem]:
        for stream, rest in self.pending.items():
            if rest:
                yield parse_line(rest.decode("utf-8", "replace"), stream)
            self.pending[stream] = b""
        yield from super().finish()

    def _mirror(self, stream: str, data: bytes) -> None:
        path = self.directory / f"{stream}.log"
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(path, "r+b" if path.exists() else "wb") as out:
            out.seek(self.offsets[stream])
            out.write(data)
            out.truncate()


def _tail(bucket: Any, name: str, stream: str, logs: _StorageLogs) -> bytes:
    blob = bucket.get_blob(name, retry=None, timeout=API_TIMEOUT)
    offset = logs.offsets[stream]
    if blob is None or not blob.size or blob.size <= offset:
        return b""
    return blob.download_as_bytes(
        start=offset, end=blob.size - 1, retry=None, timeout=API_TIMEOUT, checksum=None
    )


class _CloudLogging(_Logs):
    """The job's entries in Cloud Logging (``entries:list``; needs ``roles/logging.viewer``).
    Entries arrive with a delay of seconds to a minute; ERROR entries are stderr."""

    PAGE_SIZE = 1000

    def __init__(self, backend: VertexBackend, job: RemoteJob, place: Place) -> None:
        url = logs_url(job.remote_id, place.project)
        super().__init__(
            "Vertex AI reports only the job's state; the training output shown here is read "
            f"from Cloud Logging, a few seconds late ({url})",
            f"Cloud Logging had no entries for this job (yet), so only its state is known: {url}",
        )
        self.backend = backend
        self.place = place
        self.job_id = (job.remote_id or "").rsplit("/", 1)[-1]
        self.directory = job.directory
        self.since: str | None = None
        self.seen: set[str] = set()
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}

    def _session(self) -> Any:
        from google.auth.transport.requests import AuthorizedSession

        return self.backend._cached(
            ("logging", self.place.logging_endpoint),
            lambda: AuthorizedSession(self.backend._credentials()),
        )

    def read(self) -> Iterator[StreamItem]:
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
            page = self.backend._call(
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
                    self.lines[stream].append(line)
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

    def finish(self) -> Iterator[StreamItem]:
        self.directory.mkdir(parents=True, exist_ok=True)
        for stream, lines in self.lines.items():
            (self.directory / f"{stream}.log").write_text("".join(f"{x}\n" for x in lines))
        yield from super().finish()


ERROR_SEVERITIES = frozenset({"ERROR", "CRITICAL", "ALERT", "EMERGENCY"})


def _entry_text(entry: Mapping[str, Any]) -> str:
    if "textPayload" in entry:
        return str(entry["textPayload"]).rstrip("\n")
    payload = entry.get("jsonPayload") or {}
    return str(payload.get("message", json.dumps(payload))).rstrip("\n")


# --- helpers ------------------------------------------------------------------------------------
def _state_message(state_name: str, status: RemoteStatus) -> str:
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


def _is_transient(exc: BaseException) -> bool:
    """Throttling, 5xx and dropped connections; never auth, validation or quota refusals."""
    import requests
    from google.api_core import exceptions as api_errors
    from google.auth import exceptions as auth_errors

    if isinstance(exc, api_errors.GoogleAPICallError):
        return getattr(exc, "code", None) in TRANSIENT_HTTP_STATUS
    return isinstance(
        exc,
        (
            requests.ConnectionError,
            requests.Timeout,
            auth_errors.TransportError,
            ConnectionError,
            TimeoutError,
        ),
    )


def _translate(exc: BaseException, action: str) -> NeuralError:
    """An SDK exception → one of ours, with the platform's own message."""
    import requests
    from google.api_core import exceptions as api_errors
    from google.auth import exceptions as auth_errors

    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    code = getattr(exc, "code", None)
    response = f"HTTP {code}: {message}" if isinstance(code, int) else None
    if isinstance(exc, (api_errors.Unauthorized, api_errors.Forbidden)):
        return PlatformAuthError(
            f"{action} was refused: {message}",
            platform=PLATFORM,
            response=response,
            hint="check `gcloud auth application-default login` and that the account has "
            "roles/aiplatform.user and roles/storage.objectAdmin on the staging bucket",
        )
    if isinstance(exc, (auth_errors.RefreshError, auth_errors.DefaultCredentialsError)):
        return PlatformAuthError(
            f"{action}: the Google Cloud credentials do not work: {message}",
            platform=PLATFORM,
            hint="run `gcloud auth application-default login` again",
        )
    if isinstance(exc, api_errors.TooManyRequests):
        return QuotaError(
            f"{action} was refused for quota: {message}",
            platform=PLATFORM,
            response=response,
            hint="see IAM & Admin → Quotas (Vertex AI custom training) or try another region",
        )
    if isinstance(
        exc,
        (
            api_errors.ServerError,
            requests.ConnectionError,
            requests.Timeout,
            auth_errors.TransportError,
            ConnectionError,
            TimeoutError,
        ),
    ):
        return PlatformConnectionError(
            f"{action} failed: Vertex AI is unreachable or unavailable ({message})",
            platform=PLATFORM,
            response=response,
        )
    return PlatformError(f"{action} failed: {message}", platform=PLATFORM, response=response)


# The command of the training container (``python -c LAUNCHER BUNDLE_URI BASE_URI``). It uses
# only the standard library and google-cloud-storage (in Vertex AI's images), falling back to
# the Cloud Storage FUSE mount at /gcs/ that Vertex AI provides.
LAUNCHER = r"""
import importlib.util, json, os, re, shutil, signal, subprocess, sys, tarfile, tempfile, threading

bundle_uri, base_uri = sys.argv[1], sys.argv[2].rstrip("/")
sync_every = float(os.environ.get("NEURAL_JUPYTER_LOG_SYNC_SECONDS") or 15)

try:
    from google.cloud import storage
    client = storage.Client(project=os.environ.get("CLOUD_ML_PROJECT_ID") or None)
except Exception as exc:  # no library or no credentials: the FUSE mount
    print(f"neural-jupyter: using /gcs/ ({exc})", file=sys.stderr)
    client = None

def get(uri, path):
    if client is None:
        shutil.copyfile("/gcs/" + uri[5:], path)
        return
    bucket, _, name = uri[5:].partition("/")
    client.bucket(bucket).blob(name).download_to_filename(path)

def put(path, uri):
    if client is None:
        target = "/gcs/" + uri[5:]
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(path, target)
        return
    bucket, _, name = uri[5:].partition("/")
    client.bucket(bucket).blob(name).upload_from_filename(path)

work = tempfile.mkdtemp(prefix="neural-jupyter-")
bundle = os.path.join(work, "bundle")
archive = os.path.join(work, "bundle.tar.gz")
get(bundle_uri, archive)
with tarfile.open(archive) as tar:
    if hasattr(tarfile, "data_filter"):
        tar.extractall(bundle, filter="data")
    else:
        tar.extractall(bundle)

missing = []
for line in open(os.path.join(bundle, "requirements.txt")):
    line = line.split("#")[0].strip()
    name = re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0]
    if name and importlib.util.find_spec(name.replace("-", "_")) is None:
        missing.append(line)
if missing:
    subprocess.call([sys.executable, "-m", "pip", "install", "--quiet", *missing])

# Stop training a little before the platform's limit so its outputs are still saved.
job_file = os.path.join(bundle, "job.json")
settings = json.load(open(job_file))
if settings.get("max_seconds"):
    budget = float(settings["max_seconds"])
    settings["max_seconds"] = budget - min(120.0, budget * 0.1)
    json.dump(settings, open(job_file, "w"))

logs = os.path.join(work, "logs")
os.makedirs(logs)
lock = threading.Lock()
child = subprocess.Popen(
    [sys.executable, "-u", "train.py", "--job", "job.json"],
    cwd=bundle,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    env=dict(os.environ, PYTHONUNBUFFERED="1"),
)
for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, lambda signum, frame: child.send_signal(signum))

def pump(source, name, echo):
    with open(os.path.join(logs, name + ".log"), "ab") as copy:
        for line in iter(source.readline, b""):
            echo.buffer.write(line)
            echo.flush()
            with lock:
                copy.write(line)
                copy.flush()

def sync(sizes):
    for name in ("stdout", "stderr"):
        path = os.path.join(logs, name + ".log")
        size = os.path.getsize(path) if os.path.exists(path) else -1
        if size >= 0 and sizes.get(name) != size:
            put(path, base_uri + "/logs/" + name + ".log")
            sizes[name] = size

def syncer(stop, sizes):
    while not stop.wait(sync_every):
        try:
            sync(sizes)
        except Exception as exc:
            print(f"neural-jupyter: could not copy the logs: {exc}", file=sys.stderr)

pumps = [
    threading.Thread(target=pump, args=(child.stdout, "stdout", sys.stdout)),
    threading.Thread(target=pump, args=(child.stderr, "stderr", sys.stderr)),
]
for thread in pumps:
    thread.start()
stop, sizes = threading.Event(), {}
copier = threading.Thread(target=syncer, args=(stop, sizes), daemon=True)
copier.start()
code = child.wait()
for thread in pumps:
    thread.join()
stop.set()
copier.join()
output = os.path.join(bundle, "output")
for root, _, names in os.walk(output):
    for name in names:
        path = os.path.join(root, name)
        put(path, base_uri + "/output/" + os.path.relpath(path, output).replace(os.sep, "/"))
sync({})
sys.exit(code if code >= 0 else 128 - code)
"""
