"""Databricks one-time job runs (``pip install "neural-jupyter[databricks]"``).

A submit uploads the bundle (``bundle.tar.gz``) and a small launcher (``launch.py``) to
``STAGING/KEY/`` (``--set staging_path=``: a Unity Catalog volume ``/Volumes/CAT/SCHEMA/VOL/...``
or DBFS ``dbfs:/...``; default ``dbfs:/neural-jupyter``), then starts one run with
``jobs/runs/submit``: a ``spark_python_task`` running the launcher, which unpacks the bundle
on the driver, runs ``python train.py`` and copies ``output/`` to ``STAGING/KEY/output/``.
The run uses a new single-node job cluster (``--instance`` → ``node_type_id``,
``--set spark_version=``, ML runtime by default) or an existing cluster
(``--set cluster_id=``). ``idempotency_token`` is the job's idempotency key, so a retried
or repeated submit returns the run already started instead of a second one.

``events`` follows ``jobs/runs/get`` (state changes become ``status`` events) and the task's
``jobs/runs/get-output`` (its ``logs``: the task's stdout and stderr, the last 5 MB, parsed
with the event protocol).

Databricks run state → neural-jupyter state (``LIFE_CYCLE``, ``RESULTS``;
docs/platforms/databricks.md):

- ``QUEUED``, ``PENDING`` (the cluster is starting), ``BLOCKED``, ``WAITING_FOR_RETRY``
  → PENDING
- ``RUNNING``; ``TERMINATING`` without a result yet → RUNNING
- ``TERMINATED``/``TERMINATING`` with ``result_state``: ``SUCCESS``,
  ``SUCCESS_WITH_FAILURES`` → SUCCEEDED; ``FAILED``, ``UPSTREAM_FAILED``,
  ``MAXIMUM_CONCURRENT_RUNS_REACHED``, ``EXCLUDED``, ``DISABLED`` → FAILED (message: the run
  output's ``error``, else ``state_message``); ``TIMEDOUT`` → FAILED, timed out;
  ``CANCELED``, ``UPSTREAM_CANCELED`` → CANCELLED
- ``SKIPPED`` (never ran), ``INTERNAL_ERROR`` → FAILED

Credentials come from the Databricks SDK's own chain (``DATABRICKS_HOST``/``DATABRICKS_TOKEN``,
``~/.databrickscfg`` profiles with ``--set profile=``, OAuth, Azure CLI, notebook-native
auth). Tokens are registered with the redaction filter and never stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
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
from neural_jupyter.backends.retry import call_with_retries
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
from neural_jupyter.runtime.events import Event, LogLine, parse_line

T = TypeVar("T")

PLATFORM = "databricks"
PREFIX = "neural-jupyter"
DEFAULT_STAGING = "dbfs:/neural-jupyter"
TASK_KEY = "train"
ENV_STAGING = "NEURAL_JUPYTER_DATABRICKS_STAGING"
# How long the SDK itself retries throttling (429), 503 and dropped connections per call.
SDK_RETRY_SECONDS = 30
DEFAULT_MAX_HOURS = 24  # the run's time limit when neither --max-hours nor --timeout is given
# Default single-node GPU machines per cloud, and the ML runtime (it has PyTorch).
DEFAULT_NODE = {"aws": "g4dn.xlarge", "azure": "Standard_NC4as_T4_v3", "gcp": "g2-standard-4"}
GPU_RUNTIME = "15.4.x-gpu-ml-scala2.12"
CPU_RUNTIME = "15.4.x-cpu-ml-scala2.12"
GPU_NODE = re.compile(r"^(g\d|p\d|Standard_N|a2-|a3-)", re.IGNORECASE)

LIFE_CYCLE: dict[str, str] = {
    "QUEUED": PENDING,
    "PENDING": PENDING,
    "BLOCKED": PENDING,
    "WAITING_FOR_RETRY": PENDING,
    "RUNNING": RUNNING,
    "TERMINATING": RUNNING,  # unless a result_state is already known
    "TERMINATED": UNKNOWN,  # decided by result_state
    "SKIPPED": FAILED,
    "INTERNAL_ERROR": FAILED,
}
RESULTS: dict[str, str] = {
    "SUCCESS": SUCCEEDED,
    "SUCCESS_WITH_FAILURES": SUCCEEDED,
    "FAILED": FAILED,
    "UPSTREAM_FAILED": FAILED,
    "MAXIMUM_CONCURRENT_RUNS_REACHED": FAILED,
    "EXCLUDED": FAILED,
    "DISABLED": FAILED,
    "TIMEDOUT": FAILED,
    "CANCELED": CANCELLED,
    "UPSTREAM_CANCELED": CANCELLED,
}
OUTPUT_STATES = frozenset({"RUNNING", "TERMINATING", "TERMINATED", "INTERNAL_ERROR"})


def remote_status(life_cycle: str, result: str | None = None, message: str = "") -> RemoteStatus:
    """A run's ``life_cycle_state``/``result_state`` → a ``RemoteStatus`` (module table)."""
    message = redact(message) if message else ""
    if result and life_cycle in ("TERMINATED", "TERMINATING"):
        state = RESULTS.get(result, FAILED)
    else:
        state = LIFE_CYCLE.get(life_cycle, UNKNOWN)
    if state == SUCCEEDED:
        return RemoteStatus(SUCCEEDED, 0, message or None)
    if state == CANCELLED:
        return RemoteStatus(CANCELLED, None, message or "cancelled")
    if state == FAILED:
        timed_out = result == "TIMEDOUT"
        default = {
            "SKIPPED": "the run was skipped",
            "INTERNAL_ERROR": "Databricks reported an internal error",
        }.get(life_cycle, f"the run ended {(result or life_cycle).lower()}")
        if timed_out:
            default = "stopped at its time limit"
        return RemoteStatus(FAILED, None, message or default, timed_out)
    return RemoteStatus(state, None, message or None)


def token_for(key: str) -> str:
    """``idempotency_token`` allows 64 characters."""
    return key if len(key) <= 64 else hashlib.sha256(key.encode()).hexdigest()


def fuse_path(path: str) -> str:
    """Where the driver sees a staged file: ``dbfs:/x`` → ``/dbfs/x``; volumes as they are."""
    return "/dbfs/" + path[len("dbfs:/") :].lstrip("/") if path.startswith("dbfs:") else path


@dataclass(frozen=True)
class Place:
    """Which workspace and where in it a job's files are."""

    base: str  # STAGING/KEY, e.g. dbfs:/neural-jupyter/KEY or /Volumes/c/s/v/.../KEY
    host: str | None = None
    profile: str | None = None

    def path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def details(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_details(cls, details: Mapping[str, Any]) -> Place:
        if "base" not in details:
            raise ConfigurationError(
                "this Databricks job has no record of its workspace files",
                hint="was it submitted by another version of neural-jupyter?",
            )
        return cls(details["base"], details.get("host"), details.get("profile"))


class DatabricksBackend(Backend):
    """One-time job runs on a Databricks workspace."""

    name = "databricks"
    label = "Databricks"
    extra = "databricks"

    POLL_SECONDS: ClassVar[float] = 10.0
    HEARTBEAT_SECONDS: ClassVar[float] = 0.25

    def __init__(self) -> None:
        self._clients: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()

    # --- configuration ----------------------------------------------------------------------
    def place(self, job: RemoteJob, resources: ResourceSpec) -> Place:
        extra = resources.extra
        staging = str(extra.get("staging_path") or os.environ.get(ENV_STAGING) or DEFAULT_STAGING)
        staging = staging.rstrip("/")
        if not (staging.startswith("dbfs:/") or staging.startswith("/Volumes/")):
            raise ConfigurationError(
                f"--set staging_path={staging}: expected a volume path (/Volumes/CATALOG/"
                "SCHEMA/VOLUME/...) or a DBFS path (dbfs:/...)"
            )
        return Place(
            f"{staging}/{job.idempotency_key}",
            host=extra.get("host") or None,
            profile=extra.get("profile") or None,
        )

    def run_request(
        self,
        job: RemoteJob,
        resources: ResourceSpec,
        place: Place,
        *,
        cloud: str = "aws",
        user: str | None = None,
    ) -> dict[str, Any]:
        """The ``jobs/runs/submit`` request body."""
        extra = resources.extra
        task: dict[str, Any] = {
            "task_key": TASK_KEY,
            "spark_python_task": {
                "python_file": place.path("launch.py"),
                "parameters": [
                    fuse_path(place.path("bundle.tar.gz")),
                    fuse_path(place.path("output")),
                ],
            },
        }
        if extra.get("cluster_id"):
            task["existing_cluster_id"] = str(extra["cluster_id"])
        else:
            task["new_cluster"] = self.cluster_spec(resources, cloud=cloud, user=user)
        body: dict[str, Any] = {
            "run_name": f"{PREFIX}-{job.idempotency_key}",
            "idempotency_token": token_for(job.idempotency_key),
            "tasks": [task],
        }
        limit = resources.max_seconds or DEFAULT_MAX_HOURS * 3600
        body["timeout_seconds"] = task["timeout_seconds"] = int(limit)
        return body

    def cluster_spec(
        self, resources: ResourceSpec, *, cloud: str = "aws", user: str | None = None
    ) -> dict[str, Any]:
        """A single-node job cluster (driver only) on ``--instance``."""
        extra = resources.extra
        node = resources.instance_type or DEFAULT_NODE.get(cloud, DEFAULT_NODE["aws"])
        gpu = bool(resources.gpus or resources.gpu_type or GPU_NODE.match(node))
        spec: dict[str, Any] = {
            "spark_version": extra.get("spark_version") or (GPU_RUNTIME if gpu else CPU_RUNTIME),
            "node_type_id": node,
            "driver_node_type_id": node,
            "num_workers": 0,
            "spark_conf": {
                "spark.databricks.cluster.profile": "singleNode",
                "spark.master": "local[*, 4]",
            },
            "custom_tags": {"ResourceClass": "SingleNode", "neural-jupyter": "1"},
            "data_security_mode": extra.get("data_security_mode") or "SINGLE_USER",
        }
        if user and spec["data_security_mode"] == "SINGLE_USER":
            spec["single_user_name"] = user
        if extra.get("policy_id"):
            spec["policy_id"] = extra["policy_id"]
        if resources.disk_gb and cloud == "aws":
            spec["aws_attributes"] = {
                "ebs_volume_type": "GENERAL_PURPOSE_SSD",
                "ebs_volume_count": 1,
                "ebs_volume_size": int(resources.disk_gb),
            }
        if resources.spot:
            spot = {
                "aws": ("aws_attributes", {"availability": "SPOT_WITH_FALLBACK"}),
                "azure": (
                    "azure_attributes",
                    {"availability": "SPOT_WITH_FALLBACK_AZURE", "spot_bid_max_price": -1},
                ),
                "gcp": ("gcp_attributes", {"availability": "PREEMPTIBLE_WITH_FALLBACK_GCP"}),
            }[cloud]
            attributes = spec.setdefault(spot[0], {})
            attributes.update(spot[1])
            if cloud != "gcp":
                attributes["first_on_demand"] = 0  # the driver is the only node
        return spec

    # --- SDK access -------------------------------------------------------------------------
    @staticmethod
    def _sdk() -> Any:
        try:
            import databricks.sdk
        except ImportError:
            raise MissingDependencyError(
                "databricks-sdk", "databricks", "The Databricks backend"
            ) from None
        return databricks.sdk

    def _client(self, place: Place) -> Any:
        sdk = self._sdk()
        key = (
            place.host or os.environ.get("DATABRICKS_HOST"),
            place.profile or os.environ.get("DATABRICKS_CONFIG_PROFILE"),
            hashlib.sha256(os.environ.get("DATABRICKS_TOKEN", "").encode()).hexdigest(),
        )
        with self._lock:
            if key in self._clients:
                return self._clients[key]
        from databricks.sdk.core import Config

        settings: dict[str, Any] = {"retry_timeout_seconds": SDK_RETRY_SECONDS}
        if place.host:
            settings["host"] = place.host
        if place.profile:
            settings["profile"] = place.profile
        try:
            config = Config(**settings)
        except ValueError as exc:
            raise PlatformAuthError(
                f"no usable Databricks credentials: {_first_line(exc)}",
                platform=PLATFORM,
                hint="set DATABRICKS_HOST and DATABRICKS_TOKEN, run `databricks auth login`, "
                "or name a ~/.databrickscfg profile with --set profile=NAME",
            ) from None
        for secret in (config.token, config.client_secret, config.password):
            register_secret(secret)
        client = sdk.WorkspaceClient(config=config)
        with self._lock:
            self._clients[key] = client
        return client

    def _call(self, action: str, func: Callable[[], T]) -> T:
        try:
            return call_with_retries(func, _is_transient)
        except NeuralError:
            raise
        except Exception as exc:
            raise _translate(exc, action) from None

    # --- contract ---------------------------------------------------------------------------
    def check_credentials(self) -> None:
        """The SDK's credential chain must resolve (``--set profile=`` may name another
        profile at submit time, so only a workspace without any configuration fails here)."""
        self._sdk()
        from databricks.sdk.core import Config

        try:
            Config()
        except ValueError as exc:
            configured = Path(
                os.environ.get("DATABRICKS_CONFIG_FILE") or Path.home() / ".databrickscfg"
            )
            if configured.exists():
                return
            raise PlatformAuthError(
                f"no Databricks workspace is configured: {_first_line(exc)}",
                platform=PLATFORM,
                hint="set DATABRICKS_HOST and DATABRICKS_TOKEN, or run `databricks auth login`",
            ) from None

    def plan(self, job: RemoteJob, resources: ResourceSpec) -> dict[str, Any]:
        place = self.place(job, resources)
        return {
            "backend": self.name,
            "upload": [place.path("bundle.tar.gz"), place.path("launch.py")],
            "jobs/runs/submit": self.run_request(job, resources, place, user="(you)"),
            "resources": resources.public(),
        }

    def estimate_cost(self, resources: ResourceSpec) -> CostEstimate | None:
        """The cloud VM's list price × the run's time limit (``--max-hours``, default 24 h;
        Databricks' DBUs come on top); None on an existing cluster, which is billed whether
        or not this job runs on it."""
        from neural_jupyter.pricing import estimate, offers

        if resources.extra.get("cluster_id"):
            return None
        host = resources.extra.get("host") or os.environ.get("DATABRICKS_HOST")
        node = resources.instance_type or DEFAULT_NODE[cloud_of(host)]
        hours = (resources.max_seconds or DEFAULT_MAX_HOURS * 3600) / 3600  # the run's limit
        given = resources.extra.get("hourly_usd")
        if given is not None:
            return CostEstimate(
                self.name, node, float(given), hours, resources.spot, source="--set"
            )
        known = sorted(o.instance_type for o in offers() if o.platform == self.name)
        if node in known:
            return estimate(self.name, node, hours, spot=resources.spot)
        if not resources.instance_type:
            return None  # this cloud's default node type is not in the price table
        raise ConfigurationError(
            f"no price known for node type {node} on Databricks",
            hint="known: "
            + ", ".join(known)
            + "; or give the VM's price plus DBUs with --set hourly_usd=PRICE",
        )

    def submit(self, bundle: Bundle, job: RemoteJob, resources: ResourceSpec) -> Submission:
        place = self.place(job, resources)
        client = self._client(place)
        self.upload(client, place, "bundle.tar.gz", bundle.archive(compresslevel=1))
        self.upload(client, place, "launch.py", LAUNCHER.encode())
        user = None
        if not resources.extra.get("cluster_id"):
            me = self._call("reading the current user", lambda: client.current_user.me())
            user = me.user_name
        body = self.run_request(
            job, resources, place, cloud=cloud_of(client.config.host), user=user
        )

        from databricks.sdk.service.jobs import SubmitTask

        tasks = [SubmitTask.from_dict(task) for task in body["tasks"]]
        settings = {k: v for k, v in body.items() if k != "tasks"}

        def start() -> int:
            # The same idempotency token on every try: Databricks returns the run it
            # already started instead of starting another.
            return int(client.jobs.submit(tasks=tasks, **settings).run_id)

        run_id = self._call("starting the Databricks run", start)
        details = {**place.details(), "host": client.config.host, "run_id": run_id}
        with contextlib.suppress(NeuralError):
            run = self._get_run(client, run_id)
            if run.run_page_url:
                details["run_page_url"] = run.run_page_url
        return Submission(str(run_id), details)

    def upload(self, client: Any, place: Place, name: str, data: bytes) -> str:
        path = place.path(name)
        self._call(
            f"uploading {name} to {place.base}",
            lambda: client.dbfs.upload(path, io.BytesIO(data), overwrite=True),
        )
        return path

    def _get_run(self, client: Any, run_id: int) -> Any:
        return self._call("reading the Databricks run", lambda: client.jobs.get_run(run_id))

    def describe(self, job: RemoteJob) -> tuple[str, RemoteStatus, Any]:
        """The run's state in Databricks' words, what it maps to, and the run itself."""
        if not job.remote_id:
            return "UNKNOWN", RemoteStatus(UNKNOWN, message="never submitted"), None
        place = Place.from_details(job.details)
        client = self._client(place)
        run = self._get_run(client, int(job.remote_id))
        state = run.state
        life = _name(state.life_cycle_state) if state else "PENDING"
        result = _name(state.result_state) if state and state.result_state else None
        message = (state.state_message if state else "") or ""
        status = remote_status(life, result, message)
        if status.state == FAILED and not status.timed_out:
            output = self._output(client, run, quiet=True)
            if output is not None and output.error:
                status = RemoteStatus(FAILED, None, redact(output.error), False)
        words = f"{life} {result}" if result else life
        return words, status, run

    def status(self, job: RemoteJob) -> RemoteStatus:
        return self.describe(job)[1]

    def cancel(self, job: RemoteJob) -> None:
        if not job.remote_id:
            return
        client = self._client(Place.from_details(job.details))
        self._call(
            "cancelling the Databricks run", lambda: client.jobs.cancel_run(int(job.remote_id))
        )

    def _output(self, client: Any, run: Any, *, quiet: bool = False) -> Any:
        """``runs/get-output`` of the run's task (a multi-task run has none of its own)."""
        task_run = next((t.run_id for t in run.tasks or [] if t.run_id), run.run_id)
        try:
            return self._call(
                "reading the run's output", lambda: client.jobs.get_run_output(task_run)
            )
        except PlatformError:
            if quiet:
                return None
            raise

    def events(self, job: RemoteJob, *, follow: bool = True) -> Iterator[StreamItem]:
        place = Place.from_details(job.details)
        client = self._client(place)
        logs = _RunLogs(job.directory)
        note = (
            "Databricks returns a run's output through jobs/runs/get-output (stdout and "
            f"stderr together, the last 5 MB); it is read every {self.POLL_SECONDS:g} s"
        )
        if job.details.get("run_page_url"):
            note += f"; run page: {job.details['run_page_url']}"
        yield Event("status", {"message": note})
        seen = None
        while True:
            words, status, run = self.describe(job)
            if words != seen:
                seen = words
                text = f"Databricks run {words.lower().replace('_', ' ')}"
                if status.message and not status.is_terminal:
                    text += f": {status.message}"
                yield Event("status", {"message": text})
            life = words.split()[0]
            if run is not None and life in OUTPUT_STATES:
                output = self._output(client, run, quiet=not status.is_terminal)
                if output is not None:
                    yield from logs.update(output)
            if status.is_terminal or not follow:
                yield from logs.finish()
                if status.state == SUCCEEDED:
                    yield from self.fetch_after_success(job)
                return
            yield from self.heartbeats(self.POLL_SECONDS, self.HEARTBEAT_SECONDS)

    def fetch_artifacts(self, job: RemoteJob, destination: Path) -> dict[str, Path]:
        """Every file under ``STAGING/KEY/output/`` → ``destination`` (the bundle's
        ``output/`` directory by default)."""
        place = Place.from_details(job.details)
        client = self._client(place)
        root = place.path("output")
        prefix = str(PurePosixPath(root.removeprefix("dbfs:"))) + "/"

        def listing() -> list[Any]:
            from databricks.sdk.errors import NotFound

            try:
                return [f for f in client.dbfs.list(root, recursive=True) if not f.is_dir]
            except NotFound:  # the run wrote no outputs
                return []

        files = self._call("listing the run's outputs", listing)
        found: dict[str, Path] = {}
        for info in files:
            path = str(PurePosixPath(str(info.path).removeprefix("dbfs:")))
            relative = path[len(prefix) :] if path.startswith(prefix) else PurePosixPath(path).name
            if not relative or ".." in PurePosixPath(relative).parts:
                continue
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            data = self._call(f"downloading {relative}", lambda path=path: _read_all(client, path))
            target.write_bytes(data)
            found[ARTIFACT_NAMES.get(relative, relative)] = target
        return found


ARTIFACT_NAMES = {"model.pt": "weights", "history.json": "history", "checkpoint.pt": "checkpoint"}


class _RunLogs:
    """The task's ``logs`` text, turned into new lines as it grows (also when Databricks
    keeps only its last 5 MB), mirrored to the job directory's ``stdout.log``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.lines: list[str] = []
        self.partial = ""
        self.error_trace: str | None = None

    def update(self, output: Any) -> Iterator[StreamItem]:
        *lines, self.partial = (output.logs or "").split("\n")
        start = len(self.lines)
        if output.logs_truncated and self.lines:
            start = _overlap(self.lines, lines)
        new = lines[start:]
        self.lines.extend(new)
        self.directory.mkdir(parents=True, exist_ok=True)
        text = "".join(f"{line}\n" for line in self.lines) + self.partial
        (self.directory / "stdout.log").write_text(text)
        for line in new:
            yield parse_line(line.rstrip("\r"), "stdout")
        if output.error_trace or output.error:
            self.error_trace = output.error_trace or output.error

    def finish(self) -> Iterator[StreamItem]:
        if self.partial:
            yield parse_line(self.partial.rstrip("\r"), "stdout")
            self.lines.append(self.partial)
            self.partial = ""
        if self.error_trace:
            (self.directory / "stderr.log").write_text(self.error_trace.rstrip("\n") + "\n")
            for line in self.error_trace.splitlines():
                yield LogLine(line, "stderr")
            self.error_trace = None


def _overlap(seen: list[str], lines: list[str]) -> int:
    """Where ``lines`` (the tail of the whole output) continues after what was ``seen``."""
    for size in range(min(len(seen), len(lines)), 0, -1):
        if lines[:size] == seen[-size:]:
            return size
    return 0


def _read_all(client: Any, path: str) -> bytes:
    chunks = []
    with client.dbfs.download(path) as stream:
        # in chunks: the SDK's volume reader fails on read() without a size
        while chunk := stream.read(1 << 20):
            chunks.append(chunk)
    return b"".join(chunks)


def cloud_of(host: str | None) -> str:
    """The cloud a workspace runs on, from its URL (``aws`` when it does not say)."""
    host = (host or "").lower()
    if "azuredatabricks" in host:
        return "azure"
    if "gcp.databricks" in host:
        return "gcp"
    return "aws"


def _name(value: Any) -> str:
    return str(getattr(value, "value", value))


def _first_line(exc: BaseException) -> str:
    return redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)


def _is_transient(exc: BaseException) -> bool:
    """5xx answers the SDK does not retry itself (it retries 429, 503 and dropped
    connections for ``SDK_RETRY_SECONDS``): 500, 504, and statuses the SDK has no class for
    (such as a gateway's 502)."""
    from databricks.sdk import errors

    if isinstance(exc, errors.DataLoss):
        return False
    if isinstance(exc, (errors.InternalError, errors.DeadlineExceeded)):
        return True
    return type(exc) is errors.DatabricksError


def _translate(exc: BaseException, action: str) -> NeuralError:
    """An SDK exception → one of ours, with the platform's own message."""
    import requests
    from databricks.sdk import errors

    if isinstance(exc, (TimeoutError, RuntimeError)) and isinstance(
        exc.__cause__, (errors.DatabricksError, requests.RequestException)
    ):
        exc = exc.__cause__  # the SDK gave up retrying; report what it last saw
    message = redact(str(exc).strip() or type(exc).__name__)
    code = getattr(exc, "error_code", None)
    response = f"{code}: {message}" if code else None
    if isinstance(exc, (errors.Unauthenticated, errors.PermissionDenied)):
        return PlatformAuthError(
            f"{action} was refused: {message}",
            platform=PLATFORM,
            response=response,
            hint="check the token (DATABRICKS_TOKEN or the profile) and that you may create "
            "job runs, create clusters (or attach to --set cluster_id) and write to the "
            "staging path",
        )
    if isinstance(exc, errors.TooManyRequests) or "QUOTA" in str(code or "").upper():
        return QuotaError(f"{action} was refused: {message}", platform=PLATFORM, response=response)
    if isinstance(
        exc,
        (
            errors.TemporarilyUnavailable,
            errors.InternalError,
            errors.DeadlineExceeded,
            requests.ConnectionError,
            requests.Timeout,
            ConnectionError,
            TimeoutError,
        ),
    ):
        return PlatformConnectionError(
            f"{action} failed: the workspace is unreachable or unavailable ({message})",
            platform=PLATFORM,
            response=response,
        )
    return PlatformError(f"{action} failed: {message}", platform=PLATFORM, response=response)


# The spark_python_task (``launch.py BUNDLE.tar.gz OUTPUT_DIR``, both paths as the driver
# sees them: /dbfs/... or /Volumes/...). Standard library only.
LAUNCHER = r'''"""neural-jupyter launcher for a Databricks run: unpack the bundle, run train.py,
copy its output/ next to the bundle."""
import importlib.util, json, os, re, shutil, signal, subprocess, sys, tarfile, tempfile, threading

archive, output_dir = sys.argv[1], sys.argv[2]
work = tempfile.mkdtemp(prefix="neural-jupyter-")
bundle = os.path.join(work, "bundle")
local = os.path.join(work, "bundle.tar.gz")
shutil.copyfile(archive, local)
with tarfile.open(local) as tar:
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

# Stop training a little before the run's time limit so that its outputs are still saved.
job_file = os.path.join(bundle, "job.json")
settings = json.load(open(job_file))
if settings.get("max_seconds"):
    budget = float(settings["max_seconds"])
    settings["max_seconds"] = budget - min(120.0, budget * 0.1)
    json.dump(settings, open(job_file, "w"))

child = subprocess.Popen(
    [sys.executable, "-u", "train.py", "--job", "job.json"],
    cwd=bundle,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    env=dict(os.environ, PYTHONUNBUFFERED="1"),
)
for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, lambda signum, frame: child.send_signal(signum))

def pump(source, echo):
    for line in iter(source.readline, b""):
        echo.write(line.decode("utf-8", "replace"))
        echo.flush()

pumps = [
    threading.Thread(target=pump, args=(child.stdout, sys.stdout)),
    threading.Thread(target=pump, args=(child.stderr, sys.stderr)),
]
for thread in pumps:
    thread.start()
code = child.wait()
for thread in pumps:
    thread.join()
output = os.path.join(bundle, "output")
if os.path.isdir(output):
    shutil.copytree(output, output_dir, dirs_exist_ok=True)
sys.exit(code if code >= 0 else 128 - code)
'''
