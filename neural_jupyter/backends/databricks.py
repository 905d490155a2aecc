"""Databricks one-time job runs (``pip install "neural-jupyter[databricks]"``).

A submit uploads the bundle (``bundle.tar.gz``) and its launcher (``launch.py``, a copy of
``runtime/launcher.py``) to
``STAGING/KEY/`` (``--set staging_path=``: a Unity Catalog volume ``/Volumes/CAT/SCHEMA/VOL/...``
or DBFS ``dbfs:/...``; default ``dbfs:/neural-jupyter``), then starts one run with
``jobs/runs/submit``: a ``spark_python_task`` running the launcher, which unpacks the bundle
on the driver, runs ``python train.py`` and copies ``output/`` to ``STAGING/KEY/output/``.
The run uses a new single-node job cluster (``--instance`` → ``node_type_id``,
``--set spark_version=``, by default the newest ML runtime of ``image_tables/databricks.json``)
or an existing cluster
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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from neural_jupyter.backends import base, retry
from neural_jupyter.backends.base import State
from neural_jupyter.backends.images import Image, table
from neural_jupyter.backends.log_mirror import LogMirror
from neural_jupyter.backends.remote import LogReader, Look, RemotePlatform, StateTable
from neural_jupyter.errors import ConfigurationError, NeuralError, PlatformAuthError, PlatformError
from neural_jupyter.pricing import estimate, instance_types, lookup
from neural_jupyter.redaction import redact, register_secret
from neural_jupyter.runtime.bundle import Bundle, launcher_source
from neural_jupyter.runtime.events import parse_line
from neural_jupyter.runtime.jobdir import artifact_name, output_target

PLATFORM = "databricks"
PREFIX = "neural-jupyter"
DEFAULT_STAGING = "dbfs:/neural-jupyter"
TASK_KEY = "train"
ENV_STAGING = "NEURAL_JUPYTER_DATABRICKS_STAGING"
# How long the SDK itself retries throttling (429), 503 and dropped connections per call.
SDK_RETRY_SECONDS = 30
DEFAULT_MAX_HOURS = 24  # the run's time limit when neither --max-hours nor --timeout is given
# Default single-node GPU machines per cloud; the ML runtime (it has PyTorch) from the table.
DEFAULT_NODE = {"aws": "g4dn.xlarge", "azure": "Standard_NC4as_T4_v3", "gcp": "g2-standard-4"}
RUNTIME = table(PLATFORM).default()
GPU_RUNTIME, CPU_RUNTIME = RUNTIME["gpu"], RUNTIME["cpu"]
GPU_NODE = re.compile(r"^(g\d|p\d|Standard_N|a2-|a3-)", re.IGNORECASE)
MIN_EBS_GB = 100  # general-purpose SSD volumes: 100-4096 GB
# Spot clusters: nodes kept on demand. Azure needs at least 1 (the driver).
FIRST_ON_DEMAND = {"aws": 0, "azure": 1}

LIFE_CYCLE = StateTable(
    {
        "QUEUED": State.PENDING,
        "PENDING": State.PENDING,
        "BLOCKED": State.PENDING,
        "WAITING_FOR_RETRY": State.PENDING,
        "RUNNING": State.RUNNING,
        "TERMINATING": State.RUNNING,  # unless a result_state is already known
        "TERMINATED": State.UNKNOWN,  # decided by result_state
        "SKIPPED": State.FAILED,
        "INTERNAL_ERROR": State.FAILED,
    }
)
RESULTS = StateTable(
    {
        "SUCCESS": State.SUCCEEDED,
        "SUCCESS_WITH_FAILURES": State.SUCCEEDED,
        "FAILED": State.FAILED,
        "UPSTREAM_FAILED": State.FAILED,
        "MAXIMUM_CONCURRENT_RUNS_REACHED": State.FAILED,
        "EXCLUDED": State.FAILED,
        "DISABLED": State.FAILED,
        "TIMEDOUT": State.FAILED,
        "CANCELED": State.CANCELLED,
        "UPSTREAM_CANCELED": State.CANCELLED,
    }
)
OUTPUT_STATES = frozenset({"RUNNING", "TERMINATING", "TERMINATED", "INTERNAL_ERROR"})


def read_databricks(exc: BaseException) -> retry.Failure:
    """The SDK's error (or, when it gave up retrying, what it last saw)."""
    cause = exc.__cause__
    if isinstance(exc, (TimeoutError, RuntimeError)) and cause is not None:
        names = {c.__name__ for c in type(cause).__mro__}
        if names & {"DatabricksError", "RequestException"}:
            exc = cause
    code = str(getattr(exc, "error_code", None) or "")
    return retry.Failure(exc, None, code, redact(str(exc).strip() or type(exc).__name__))


FAULTS = retry.FaultPolicy(
    PLATFORM,
    "the workspace",
    read=read_databricks,
    auth_hint="check the token (DATABRICKS_TOKEN or the profile) and that you may create job "
    "runs, create clusters (or attach to --set cluster_id) and write to the staging path",
    rules=(
        retry.Rule(retry.AUTH, types=("Unauthenticated", "PermissionDenied")),
        retry.Rule(retry.QUOTA, types=("TooManyRequests",)),
        retry.Rule(retry.QUOTA, words=("quota",)),
        retry.Rule(types=("DataLoss",)),
        # the SDK retries 429, 503 and dropped connections itself; these are ours to retry
        retry.Rule(retry.UNAVAILABLE, types=("InternalError", "DeadlineExceeded"), retry=True),
        retry.Rule(
            retry.UNAVAILABLE, exact_types=("DatabricksError",), retry=True
        ),  # e.g. a gateway's 502
        retry.Rule(retry.UNAVAILABLE, types=("TemporarilyUnavailable",)),
        retry.Rule(retry.UNAVAILABLE, types=("ConnectionError", "Timeout", "TimeoutError")),
    ),
)


def remote_status(
    life_cycle: str, result: str | None = None, message: str = ""
) -> base.RemoteStatus:
    """A run's ``life_cycle_state``/``result_state`` → a ``RemoteStatus`` (module table)."""
    message = redact(message) if message else ""
    if result and life_cycle in ("TERMINATED", "TERMINATING"):
        state = RESULTS.state(result) if result in RESULTS else State.FAILED
    else:
        state = LIFE_CYCLE.state(life_cycle)
    if state == State.SUCCEEDED:
        return base.RemoteStatus(State.SUCCEEDED, 0, message or None)
    if state == State.CANCELLED:
        return base.RemoteStatus(State.CANCELLED, None, message or "cancelled")
    if state == State.FAILED:
        timed_out = result == "TIMEDOUT"
        default = {
            "SKIPPED": "the run was skipped",
            "INTERNAL_ERROR": "Databricks reported an internal error",
        }.get(life_cycle, f"the run ended {(result or life_cycle).lower()}")
        if timed_out:
            default = "stopped at its time limit"
        return base.RemoteStatus(State.FAILED, None, message or default, timed_out)
    return base.RemoteStatus(state, None, message or None)


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


class DatabricksBackend(RemotePlatform):
    """One-time job runs on a Databricks workspace."""

    name = "databricks"
    label = "Databricks"
    image_option = "spark_version"
    extra = "databricks"
    sdk_modules: ClassVar[Mapping[str, str]] = {"databricks.sdk": "databricks-sdk"}
    paid = True
    price_table = PLATFORM
    faults = FAULTS

    @classmethod
    def is_paid(cls, resources: base.ResourceSpec) -> bool:
        return not resources.extra.get("cluster_id")  # an existing cluster bills anyway

    def __init__(self) -> None:
        self._clients: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()

    # --- configuration ----------------------------------------------------------------------
    def place(self, job: base.RemoteJob, resources: base.ResourceSpec) -> Place:
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
        job: base.RemoteJob,
        resources: base.ResourceSpec,
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
                    "--bundle",
                    fuse_path(place.path("bundle.tar.gz")),
                    "--outputs",
                    fuse_path(place.path("output")),
                    "--install-missing",
                    "--budget-margin",
                ],
            },
        }
        if extra.get("cluster_id"):
            task["existing_cluster_id"] = str(extra["cluster_id"])
        else:
            runtime = RUNTIME if extra.get("spark_version") else self.image_row(job)
            task["new_cluster"] = self.cluster_spec(
                resources, cloud=cloud, user=user, runtime=runtime
            )
        body: dict[str, Any] = {
            "run_name": f"{PREFIX}-{job.idempotency_key}",
            "idempotency_token": token_for(job.idempotency_key),
            "tasks": [task],
        }
        limit = resources.max_seconds or DEFAULT_MAX_HOURS * 3600
        body["timeout_seconds"] = task["timeout_seconds"] = int(limit)
        return body

    def cluster_spec(
        self,
        resources: base.ResourceSpec,
        *,
        cloud: str = "aws",
        user: str | None = None,
        runtime: Image = RUNTIME,
    ) -> dict[str, Any]:
        """A single-node job cluster (driver only) on ``--instance``, on ``runtime`` (a row
        of the runtime table) unless ``--set spark_version=`` names one."""
        extra = resources.extra
        node = resources.instance_type or DEFAULT_NODE.get(cloud, DEFAULT_NODE["aws"])
        gpu = bool(resources.gpus or resources.gpu_type or GPU_NODE.match(node))
        spec: dict[str, Any] = {
            "spark_version": extra.get("spark_version") or runtime["gpu" if gpu else "cpu"],
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
            if resources.disk_gb < MIN_EBS_GB:
                raise ConfigurationError(
                    f"--disk-gb {resources.disk_gb:g}: Databricks' general-purpose EBS volumes "
                    f"hold {MIN_EBS_GB} GB at least"
                )
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
            if cloud in FIRST_ON_DEMAND:
                attributes["first_on_demand"] = FIRST_ON_DEMAND[cloud]
        return spec

    def _client(self, place: Place) -> Any:
        sdk = self.sdk()
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

    # --- contract ---------------------------------------------------------------------------
    def check_credentials(self) -> None:
        """The SDK's credential chain must resolve (``--set profile=`` may name another
        profile at submit time, so only a workspace without any configuration fails here)."""
        self.sdk()
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

    def plan(self, job: base.RemoteJob, resources: base.ResourceSpec) -> dict[str, Any]:
        place = self.place(job, resources)
        return {
            "backend": self.name,
            "upload": [place.path("bundle.tar.gz"), place.path("launch.py")],
            "jobs/runs/submit": self.run_request(job, resources, place, user="(you)"),
            "resources": resources.public(),
        }

    def estimate_cost(self, resources: base.ResourceSpec) -> base.CostEstimate | None:
        """The cloud VM's list price × the run's time limit (``--max-hours``, default 24 h;
        Databricks' DBUs come on top); None on an existing cluster, which is billed whether
        or not this job runs on it."""
        if resources.extra.get("cluster_id"):
            return None
        host = resources.extra.get("host") or os.environ.get("DATABRICKS_HOST")
        node = resources.instance_type or DEFAULT_NODE[cloud_of(host)]
        hours = (resources.max_seconds or DEFAULT_MAX_HOURS * 3600) / 3600  # the run's limit
        given = resources.extra.get("hourly_usd")
        if given is not None:
            return base.CostEstimate(
                self.name, node, float(given), hours, resources.spot, source="--set"
            )
        if lookup(self.name, node) is not None:
            return estimate(self.name, node, hours, spot=resources.spot)
        if not resources.instance_type:
            return None  # this cloud's default node type is not in the price table
        raise ConfigurationError(
            f"no price known for node type {node} on Databricks",
            hint="known: "
            + ", ".join(o.instance_type for o in instance_types(self.name))
            + "; or give the VM's price plus DBUs with --set hourly_usd=PRICE",
        )

    def submit(
        self, bundle: Bundle, job: base.RemoteJob, resources: base.ResourceSpec
    ) -> base.Submission:
        place = self.place(job, resources)
        client = self._client(place)
        self.upload(client, place, "bundle.tar.gz", bundle.archive(compresslevel=1))
        self.upload(client, place, "launch.py", launcher_source().encode())
        user = None
        if not resources.extra.get("cluster_id"):
            me = self.call("reading the current user", lambda: client.current_user.me())
            user = me.user_name
        body = self.run_request(
            job, resources, place, cloud=cloud_of(client.config.host), user=user
        )

        from databricks.sdk.service.jobs import SubmitTask

        tasks = [SubmitTask.from_dict(task) for task in body["tasks"]]
        settings = {k: v for k, v in body.items() if k != "tasks"}
        # The same idempotency token on every try: Databricks returns the run it already
        # started instead of starting another.
        run_id = self.call(
            "starting the Databricks run",
            lambda: int(client.jobs.submit(tasks=tasks, **settings).run_id),
        )
        details = {**place.details(), "host": client.config.host, "run_id": run_id}
        with contextlib.suppress(NeuralError):
            run = self._get_run(client, run_id)
            if run.run_page_url:
                details["run_page_url"] = run.run_page_url
        return base.Submission(str(run_id), details)

    def upload(self, client: Any, place: Place, name: str, data: bytes) -> str:
        path = place.path(name)
        self.call(
            f"uploading {name} to {place.base}",
            lambda: client.dbfs.upload(path, io.BytesIO(data), overwrite=True),
        )
        return path

    def _get_run(self, client: Any, run_id: int) -> Any:
        return self.call("reading the Databricks run", lambda: client.jobs.get_run(run_id))

    def look(self, job: base.RemoteJob) -> Look:
        """The run's state in Databricks' words, what it maps to, and the run itself."""
        if not job.remote_id:
            return Look(
                base.RemoteStatus(State.UNKNOWN, message="never submitted"), "UNKNOWN", gone=True
            )
        client = self._client(Place.from_details(job.details))
        run = self._get_run(client, int(job.remote_id))
        state = run.state
        life = _name(state.life_cycle_state) if state else "PENDING"
        result = _name(state.result_state) if state and state.result_state else None
        status = remote_status(life, result, (state.state_message if state else "") or "")
        if status.state == State.FAILED and not status.timed_out:
            output = self._output(client, run, quiet=True)
            if output is not None and output.error:
                status = base.RemoteStatus(State.FAILED, None, redact(output.error), False)
        words = f"{life} {result}" if result else life
        text = f"Databricks run {words.lower().replace('_', ' ')}"
        if status.message and not status.is_terminal:
            text += f": {status.message}"
        return Look(status, words, text, raw=run)

    def cancel(self, job: base.RemoteJob) -> None:
        if not job.remote_id:
            return
        client = self._client(Place.from_details(job.details))
        self.call(
            "cancelling the Databricks run", lambda: client.jobs.cancel_run(int(job.remote_id))
        )

    def _output(self, client: Any, run: Any, *, quiet: bool = False) -> Any:
        """``runs/get-output`` of the run's task (a multi-task run has none of its own)."""
        task_run = next((t.run_id for t in run.tasks or [] if t.run_id), run.run_id)
        try:
            return self.call(
                "reading the run's output", lambda: client.jobs.get_run_output(task_run)
            )
        except PlatformError:
            if quiet:
                return None
            raise

    def log_reader(self, job: base.RemoteJob) -> LogReader:
        return _RunReader(self, job)

    def fetch_artifacts(self, job: base.RemoteJob, destination: Path) -> dict[str, Path]:
        """Every file under ``STAGING/KEY/output/`` → ``destination``."""
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

        files = self.call("listing the run's outputs", listing)
        found: dict[str, Path] = {}
        for info in files:
            path = str(PurePosixPath(str(info.path).removeprefix("dbfs:")))
            relative = path[len(prefix) :] if path.startswith(prefix) else PurePosixPath(path).name
            target = output_target(destination, relative)
            if target is None:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            data = self.call(f"downloading {relative}", lambda path=path: _read_all(client, path))
            target.write_bytes(data)
            found[artifact_name(relative)] = target
        return found


class _RunLogs:
    """The task's ``logs`` text, turned into new lines as it grows (also when Databricks
    keeps only its last 5 MB), kept in the job directory's log mirror."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.mirror = LogMirror(directory, merged=False)
        self.lines: list[str] = []
        self.count = 0
        self.partial = ""
        self.error_trace: str | None = None

    def _keep(self, line: str, stream: str = "stdout") -> base.StreamItem:
        self.count += 1
        self.mirror.add(line, self.count, stream)
        return parse_line(line, stream)

    def update(self, output: Any) -> Iterator[base.StreamItem]:
        *lines, self.partial = (output.logs or "").split("\n")
        start = len(self.lines)
        if output.logs_truncated and self.lines:
            start = _overlap(self.lines, lines)
        new = lines[start:]
        self.lines.extend(new)
        for line in new:
            yield self._keep(line.rstrip("\r"))
        if output.error_trace or output.error:
            self.error_trace = output.error_trace or output.error

    def finish(self) -> Iterator[base.StreamItem]:
        if self.partial:
            self.lines.append(self.partial)
            yield self._keep(self.partial.rstrip("\r"))
            self.partial = ""
        if self.error_trace:
            for line in self.error_trace.rstrip("\n").splitlines():
                yield self._keep(line, "stderr")
            self.error_trace = None


class _RunReader(LogReader):
    """The run's task output (``runs/get-output``), read after every look."""

    def __init__(self, backend: DatabricksBackend, job: base.RemoteJob) -> None:
        self.backend = backend
        self.client = backend._client(Place.from_details(job.details))
        self.logs = _RunLogs(job.directory)
        self.note = (
            "Databricks returns a run's output through jobs/runs/get-output (stdout and "
            f"stderr together, the last 5 MB); it is read every {backend.poll_seconds:g} s"
        )
        if job.details.get("run_page_url"):
            self.note += f"; run page: {job.details['run_page_url']}"

    def read(self, look: Look, follow: bool) -> Iterator[base.StreamItem]:
        if look.raw is not None and look.state.split()[0] in OUTPUT_STATES:
            output = self.backend._output(self.client, look.raw, quiet=not look.status.is_terminal)
            if output is not None:
                yield from self.logs.update(output)

    def finish(self, look: Look) -> Iterator[base.StreamItem]:
        return self.logs.finish()


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
