"""An existing Ray cluster, through the Ray Jobs API (``pip install "neural-jupyter[ray]"``).

A submit packs the bundle (``bundle.tar.gz``) and its ``launcher.py`` into a small working
directory that Ray uploads with the job (``runtime_env={"working_dir": ...}``), and starts
one Ray job whose entrypoint runs the launcher: it unpacks the bundle into a fresh folder on
the node that runs it, installs what the cluster's Python lacks (into the job's own folder:
the cluster's environment stays as it is), runs ``python train.py`` and prints the output
files into the job's log, from which they come home (``--set outputs_dir=`` copies them to
a shared filesystem instead).

- The cluster: ``--set address=http://HEAD:8265`` (the dashboard's address), else
  ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS``; HTTP headers for a cluster behind a proxy
  (a bearer token) from ``RAY_JOB_HEADERS`` (JSON), as Ray's own CLI reads them; their values
  are masked in anything shown.
- One job per idempotency key: the submission id is derived from the key; a submit first
  looks that id up, and a create refused because it exists adopts the job already there, so
  a retry or a re-run never starts a second one. Reattach finds the job by that id.
- Resources: ``--cpus`` (default 1) and ``--gpus`` become ``entrypoint_num_cpus`` /
  ``entrypoint_num_gpus`` (Ray starts the job on a node that has them, and queues it until
  one does), ``--memory-gb`` ``entrypoint_memory``, ``--gpu-type T`` the resource
  ``accelerator_type:T`` Ray gives nodes with that GPU. ``--max-hours``/``--timeout``
  become a hard limit (coreutils ``timeout`` around the entrypoint; exit code 124 reads as
  timed out).
- ``nodes × procs_per_node`` above 1 × 1: torchrun on the workers. The entrypoint is
  ``ray_driver.py`` (``runtime/ray_driver.py``), which reserves ``nodes`` slots of ``--cpus``
  (default: one per process) and ``--gpus`` (per node) at once in a placement group
  (``STRICT_SPREAD``: one machine each; ``--set placement_strategy=`` for another) and runs the
  launcher in each slot with torchrun's rendezvous arguments. Only bundles that train under
  torchrun may ask for it: script bundles (the user's script reads torchrun's ``RANK``,
  ``WORLD_SIZE``...) and bundles whose ``job.json`` says ``"torchrun": true``.
- Logs: ``tail_job_logs`` (a websocket) while the job runs, ``get_job_logs`` to settle at the
  end and after a reattach; every line is kept in the job directory's log mirror.
- Cancel: ``stop_job`` (Ray ends the entrypoint's process group; the launcher passes the
  signal on to ``train.py``).
- Sweeps: ``capacity`` asks the cluster (``/api/v0/nodes``) how many jobs of this size fit on
  its live nodes at once; a sweep runs that many trials at a time.

Ray job state → neural-jupyter state: ``PENDING`` → PENDING, ``RUNNING`` → RUNNING,
``SUCCEEDED`` → SUCCEEDED, ``FAILED`` → FAILED (exit code 124: timed out), ``STOPPED`` →
CANCELLED.

Options (``--set key=value``): ``address``, ``outputs_dir``, ``log_artifacts_max_mb``,
``placement_strategy``, ``ready_timeout``, ``python``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from neural_jupyter.backends import base, retry
from neural_jupyter.backends.base import State
from neural_jupyter.backends.log_artifacts import (
    DEFAULT_MAX_MB,
    decode_artifacts,
)
from neural_jupyter.backends.remote import (
    AsyncTail,
    CountedLog,
    LogReader,
    Look,
    RemotePlatform,
    StateTable,
    gone_look,
    remember,
)
from neural_jupyter.errors import ConfigurationError, JobError, NeuralError, PlatformError
from neural_jupyter.redaction import redact, register_secret
from neural_jupyter.runtime.bundle import LAUNCHER, Bundle, launcher_source
from neural_jupyter.runtime.jobdir import artifact_name, output_target

PLATFORM = "ray"
DRIVER = "ray_driver.py"
ARCHIVE = "bundle.tar.gz"
ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
QUIET_LOGGERS = (
    "ray.dashboard.modules.dashboard_sdk",
    "ray.dashboard.modules.job.sdk",
    "ray._private.runtime_env.packaging",
)
TIMED_OUT_EXIT = 124  # coreutils timeout
KILL_GRACE_SECONDS = 30  # after the limit, SIGKILL if SIGTERM was not enough
STATES = StateTable(
    {
        "PENDING": (State.PENDING, "waiting for the cluster's resources or its runtime env"),
        "RUNNING": (State.RUNNING, "running"),
        "SUCCEEDED": (State.SUCCEEDED, "succeeded"),
        "FAILED": (State.FAILED, "failed"),
        "STOPPED": (State.CANCELLED, "stopped (cancelled)"),
    }
)


def read_ray(exc: BaseException) -> retry.Failure:
    """The Jobs SDK's errors are ``RuntimeError("Request failed with status code N: BODY")``
    (BODY often a server traceback: its last ``SomeError: message`` line is the message) or a
    ``ConnectionError`` when the dashboard does not answer."""
    text = str(exc)
    found = re.search(r"status code (\d{3})", text)
    status = int(found.group(1)) if found else None
    lines = [line.strip() for line in text.splitlines() if line.strip(" .")]
    errors = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception): ", line)]
    message = errors[-1].split(": ", 1)[1] if errors else (lines[0] if lines else "")
    if found and not errors:
        message = text[found.end() :].lstrip(": ").strip() or message
    return retry.Failure(exc, status, "", redact(message.strip(" .") or type(exc).__name__))


FAULTS = retry.FaultPolicy(
    PLATFORM,
    "the Ray cluster",
    read=read_ray,
    auth_hint="the cluster's dashboard refused the request: set RAY_JOB_HEADERS to the "
    'headers it needs, e.g. {"Authorization": "Bearer TOKEN"}',
    rules=(
        retry.Rule(retry.AUTH, statuses=(401, 403)),
        retry.Rule(retry.UNAVAILABLE, statuses=(502, 503, 504), retry=True),
        # a head whose job agent is not up yet: "No available agent ..., try again later"
        retry.Rule(retry.UNAVAILABLE, words=("no available agent", "try again later"), retry=True),
        retry.Rule(
            retry.UNAVAILABLE,
            types=("ConnectionError", "Timeout", "TimeoutError", "ClientConnectorError"),
            retry=True,
            hint="is the cluster up, and is --set address (or RAY_ADDRESS) its dashboard's "
            "address, e.g. http://HEAD:8265?",
        ),
        retry.Rule(retry.INVALID, statuses=(400,)),
        retry.Rule(types=("RuntimeError",)),
    ),
)


def submission_id_for(key: str) -> str:
    """The Ray submission id of the job with idempotency key ``key`` (same key, same id)."""
    return base.name_for(key, 96, allowed="A-Za-z0-9_.-", lower=False)


def job_headers() -> dict[str, str] | None:
    """``RAY_JOB_HEADERS`` (JSON), as Ray's CLI reads it; its values count as secrets."""
    text = os.environ.get("RAY_JOB_HEADERS")
    if not text:
        return None
    try:
        headers = json.loads(text)
    except ValueError:
        raise ConfigurationError(
            'RAY_JOB_HEADERS must be a JSON object, e.g. {"Authorization": "Bearer T"}'
        ) from None
    if not isinstance(headers, dict):
        raise ConfigurationError("RAY_JOB_HEADERS must be a JSON object")
    for value in headers.values():
        register_secret(str(value))
        register_secret(str(value).removeprefix("Bearer ").strip())
    return {str(k): str(v) for k, v in headers.items()}


MAX_NODES = 1024


class RayBackend(RemotePlatform):
    """Jobs on an existing Ray cluster."""

    name = PLATFORM
    label = "Ray"
    extra = "ray"
    sdk_modules: ClassVar[Mapping[str, str]] = {"ray.job_submission": "ray[default]"}
    faults = FAULTS
    poll_seconds = 1.0
    max_nodes = MAX_NODES

    def __init__(self) -> None:
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._artifact_lines: dict[str, list[str]] = {}  # job id -> what a stream saw

    # --- connection -----------------------------------------------------------------------
    @staticmethod
    def address(extra: Mapping[str, Any]) -> str:
        """The dashboard address jobs go to (``--set address``, then Ray's variables)."""
        given = extra.get("address") or next(
            (os.environ[name] for name in ADDRESS_VARIABLES if os.environ.get(name)), None
        )
        if not given:
            raise ConfigurationError(
                "no Ray cluster given",
                hint="pass --set address=http://HEAD:8265 (the cluster's dashboard) or set "
                "RAY_ADDRESS; docs/platforms/ray.md",
            )
        return str(given).rstrip("/")

    def client(self, address: str) -> Any:
        sdk = self.sdk()
        with self._lock:
            if address in self._clients:
                return self._clients[address]
        for name in QUIET_LOGGERS:  # "Uploading package ..." on every submit
            logging.getLogger(name).setLevel(logging.WARNING)
        headers = job_headers()
        made = self.call(
            f"connecting to the Ray cluster at {address}",
            lambda: sdk.JobSubmissionClient(address, headers=headers),
        )
        with self._lock:
            self._clients[address] = made
        return made

    def _client_of(self, job: base.RemoteJob) -> tuple[Any, str]:
        address = str(job.details.get("address") or self.address({}))
        sid = str(job.remote_id or job.details.get("submission_id") or "")
        return self.client(address), sid or submission_id_for(job.idempotency_key)

    # --- the request ------------------------------------------------------------------------
    def entrypoint(self, job: base.RemoteJob, resources: base.ResourceSpec) -> str:
        """The shell command the Ray job runs in its working directory."""
        extra = resources.extra
        python = str(extra.get("python") or "python")
        launcher = ["--bundle", ARCHIVE, "--packages", "job", "--install-missing"]
        if extra.get("outputs_dir"):
            launcher += [
                "--outputs",
                f"{extra['outputs_dir']}/{submission_id_for(job.idempotency_key)}",
            ]
        else:
            budget = base.number_option(extra, "log_artifacts_max_mb", DEFAULT_MAX_MB)
            launcher += ["--print-outputs", str(int(budget * 2**20))]
        if resources.max_seconds:
            launcher.append("--budget-margin")
        if resources.world_size > 1:
            driver = [DRIVER, "--nodes", str(resources.nodes)]
            driver += ["--procs-per-node", str(resources.procs_per_node)]
            if resources.cpus:
                driver += ["--cpus", str(resources.cpus)]
            if resources.gpus:
                driver += ["--gpus", str(resources.gpus)]
            if extra.get("placement_strategy"):
                driver += ["--strategy", str(extra["placement_strategy"]).upper()]
            if extra.get("ready_timeout"):
                driver += ["--ready-timeout", str(base.number_option(extra, "ready_timeout", 600))]
            command = [python, "-u", *driver, "--", *launcher]
        else:
            command = [python, "-u", LAUNCHER, *launcher]
        if resources.max_seconds:
            limit = max(1, int(resources.max_seconds))
            command = ["timeout", f"--kill-after={KILL_GRACE_SECONDS}", str(limit), *command]
        return shlex.join(command)

    def request(self, job: base.RemoteJob, resources: base.ResourceSpec) -> dict[str, Any]:
        """The arguments of ``JobSubmissionClient.submit_job`` (without the working dir)."""
        request: dict[str, Any] = {
            "entrypoint": self.entrypoint(job, resources),
            "submission_id": submission_id_for(job.idempotency_key),
            "metadata": {
                "neural_jupyter_job": str(job.id),
                "idempotency_key": job.idempotency_key,
            },
            "runtime_env": {"working_dir": "(the bundle and launcher.py, uploaded)"},
        }
        if resources.world_size > 1:
            return request  # the driver holds nothing; its placement group holds the slots
        request["entrypoint_num_cpus"] = float(resources.cpus or 1)
        if resources.gpus:
            request["entrypoint_num_gpus"] = float(resources.gpus)
        if resources.memory_gb:
            request["entrypoint_memory"] = int(resources.memory_gb * 2**30)
        if resources.gpu_type:
            request["entrypoint_resources"] = {f"accelerator_type:{resources.gpu_type}": 0.001}
        return request

    def plan(self, job: base.RemoteJob, resources: base.ResourceSpec) -> dict[str, Any]:
        extra = resources.extra
        try:
            address = self.address(extra)
        except ConfigurationError:
            address = "(--set address or RAY_ADDRESS)"
        return {
            "backend": self.name,
            "job": job.id,
            "address": address,
            "resources": resources.public(),
            "submit_job": self.request(job, resources),
        }

    def estimate_cost(self, resources: base.ResourceSpec) -> base.CostEstimate | None:
        return None  # an existing cluster: it bills (or not) whether or not this job runs

    # --- contract ---------------------------------------------------------------------------
    def submit(
        self, bundle: Bundle, job: base.RemoteJob, resources: base.ResourceSpec
    ) -> base.Submission:
        self._check_layout(bundle, resources)
        address = self.address(resources.extra)
        client = self.client(address)
        request = self.request(job, resources)
        sid = request["submission_id"]
        with tempfile.TemporaryDirectory(prefix="neural-jupyter-ray-") as staging:
            folder = Path(staging)
            (folder / ARCHIVE).write_bytes(bundle.archive(exclude=(LAUNCHER,), compresslevel=1))
            (folder / LAUNCHER).write_text(launcher_source(), encoding="utf-8")
            if resources.world_size > 1:
                shutil.copyfile(Path(__file__).parents[1] / "runtime" / DRIVER, folder / DRIVER)
            request["runtime_env"] = {"working_dir": str(folder)}
            _, how = self.submit_once(
                "submitting the Ray job",
                lambda: client.submit_job(**request),
                find=lambda: self._info(client, sid),
                exists=lambda exc: "already exists" in str(exc),
            )
        details = {
            "address": address,
            "submission_id": sid,
            "entrypoint": request["entrypoint"],
            "submitted": how,
        }
        if resources.extra.get("outputs_dir"):
            details["outputs_dir"] = str(resources.extra["outputs_dir"])
        return base.Submission(sid, details)

    @staticmethod
    def _check_layout(bundle: Bundle, resources: base.ResourceSpec) -> None:
        if resources.world_size == 1:
            return
        if bundle.trains_under_torchrun:
            return
        raise ConfigurationError(
            f"--nodes {resources.nodes} × --procs-per-node {resources.procs_per_node}: this "
            f"{bundle.kind} bundle's train.py does not train under torchrun yet",
            hint="run it as one process (1 × 1), or run your own DDP script with "
            "run_script / %neural_script, which torchrun starts on every process",
        )

    def _info(self, client: Any, sid: str) -> Any:
        """The job's info, or None when the cluster has no job of that id."""
        try:
            return client.get_job_info(sid)
        except RuntimeError as exc:
            if "404" in str(exc) or "does not exist" in str(exc):
                return None
            raise

    def look(self, job: base.RemoteJob) -> Look:
        client, sid = self._client_of(job)
        info = self.call("reading the Ray job", lambda: self._info(client, sid))
        if info is None:
            return gone_look(
                job, "GONE", f"the cluster has no job {sid} (restarted or another cluster?)"
            )
        words = str(getattr(info.status, "value", info.status))
        state, meaning = STATES.lookup(words)
        code = info.driver_exit_code
        message = _first_line(info.message)
        if state == State.FAILED:
            timed_out = code == TIMED_OUT_EXIT
            why = "stopped at its time limit" if timed_out else message or meaning
            status = base.RemoteStatus(State.FAILED, code, why, timed_out)
        elif state == State.SUCCEEDED:
            status = base.RemoteStatus(State.SUCCEEDED, code if code is not None else 0)
        else:
            status = base.RemoteStatus(state, code, message or meaning)
        if status.is_terminal:
            remember(job, status)
        announce = f"Ray job {sid} {meaning}" if not status.is_terminal else None
        return Look(status, words, announce, {"state": state}, raw=info)

    def log_reader(self, job: base.RemoteJob) -> LogReader:
        return _JobLog(self, job)

    def cancel(self, job: base.RemoteJob) -> None:
        client, sid = self._client_of(job)
        job.files.mark(job.files.cancel_requested)

        def stop() -> None:
            try:
                client.stop_job(sid)
            except RuntimeError as exc:
                if "404" not in str(exc) and "does not exist" not in str(exc):
                    raise

        self.call("stopping the Ray job", stop)

    def fetch_artifacts(self, job: base.RemoteJob, destination: Path) -> dict[str, Path]:
        """From the shared ``outputs_dir``, else decoded from the job's log (the lines a
        stream of this process kept, else the whole log read again)."""
        if job.details.get("outputs_dir"):
            return _copy_tree(
                Path(str(job.details["outputs_dir"])) / str(job.remote_id), destination
            )
        lines = self._artifact_lines.pop(job.id, None)
        if lines is None:
            client, sid = self._client_of(job)
            if self.call("reading the Ray job", lambda: self._info(client, sid)) is None:
                raise JobError(
                    f"the cluster no longer has job {sid}, nor its log with the outputs",
                    job_id=job.id,
                    hint="keep outputs on a shared filesystem with --set outputs_dir=PATH",
                )
            text = self.call("reading the Ray job's log", lambda: client.get_job_logs(sid))
            lines = str(text).splitlines()
        return decode_artifacts(lines, destination)

    def capacity(self, resources: base.ResourceSpec) -> int | None:
        """How many jobs of this size the cluster's live nodes hold at once (None when the
        cluster cannot be asked)."""
        try:
            client = self.client(self.address(resources.extra))
            response = client._do_request("GET", "/api/v0/nodes?detail=1")
            response.raise_for_status()
            nodes = response.json()["data"]["result"]["result"]
        except (NeuralError, Exception):
            return None
        return jobs_that_fit(nodes, resources)

    def check_credentials(self) -> None:
        return None  # the dashboard's answer (401/403) says it at submit


def jobs_that_fit(nodes: list[Mapping[str, Any]], resources: base.ResourceSpec) -> int:
    """How many jobs of ``resources`` the ``ALIVE`` nodes (as ``/api/v0/nodes`` lists them)
    run at once: per node the slots its CPUs and GPUs hold, over all nodes, divided by the
    slots a job takes (``nodes``)."""
    multi = resources.world_size > 1
    cpus = float(resources.cpus or (resources.procs_per_node if multi else 1))
    gpus = float(resources.gpus or 0)
    slots = 0
    for node in nodes:
        if node.get("state") != "ALIVE":
            continue
        total = node.get("resources_total") or {}
        fits = int(float(total.get("CPU", 0)) // cpus) if cpus else 10**6
        if gpus:
            fits = min(fits, int(float(total.get("GPU", 0)) // gpus))
        if resources.gpu_type:
            fits = fits if f"accelerator_type:{resources.gpu_type}" in total else 0
        slots += fits
    return max(0, slots // max(1, resources.nodes))


def _copy_tree(source: Path, destination: Path) -> dict[str, Path]:
    if not source.is_dir():
        raise JobError(
            f"no outputs at {source}",
            hint="is --set outputs_dir a filesystem shared by the cluster and this machine, "
            "mounted at the same path on both?",
        )
    found: dict[str, Path] = {}
    for path in sorted(source.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(source).as_posix()
        target = output_target(destination, relative)
        if target is None:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        found[artifact_name(relative)] = target
    return found


def _first_line(text: Any) -> str:
    lines = [line for line in str(text or "").splitlines() if line.strip()]
    return redact(lines[0].strip()) if lines else ""


class _JobLog(CountedLog):
    """The job's log from its first line: followed over ``tail_job_logs`` while it runs,
    read whole (``get_job_logs``) otherwise and at the end."""

    backend: RayBackend
    skipped_hint = "see --set outputs_dir, --set log_artifacts_max_mb"

    def __init__(self, backend: RayBackend, job: base.RemoteJob) -> None:
        super().__init__(backend, job)
        self.client, self.sid = backend._client_of(job)

    def _take(self, lines: list[str]) -> Iterator[base.StreamItem]:
        """Lines of the log from its start: the ones past ``position``."""
        yield from self._numbered(enumerate(lines, start=1))

    def _whole(self, final: bool) -> Iterator[base.StreamItem]:
        try:
            text = str(self.backend.call("reading the Ray job's log", self._logs))
        except PlatformError:
            if final:
                raise
            return
        lines = text.split("\n")
        if lines and not final:
            lines.pop()  # a last line without its newline may still grow
        elif lines and lines[-1] == "":
            lines.pop()
        yield from self._take(lines)

    def _logs(self) -> str:
        return self.client.get_job_logs(self.sid)

    def read(self, look: Look, follow: bool) -> Iterator[base.StreamItem]:
        if look.gone:
            return
        if not follow or look.status.state != State.RUNNING:
            if look.status.state != State.PENDING or look.status.is_terminal:
                yield from self._whole(final=False)
            return
        # a dropped websocket or a cancel ends the tail: the caller reads the rest
        tail = self.tail = AsyncTail(lambda: self.client.tail_job_logs(self.sid), "neural-ray-log")
        partial, count = "", 0
        for item in tail.items(self.backend.heartbeat_seconds):
            if item is None:
                yield None
                continue
            *lines, partial = (partial + str(item)).split("\n")
            yield from self._numbered(enumerate(lines, start=count + 1))
            count += len(lines)
        self.tail = None

    def finish(self, look: Look) -> Iterator[base.StreamItem]:
        if look.gone and not self.read_any:  # the cluster forgot the job: what is kept here
            yield from self.mirror.events()
            return
        if not look.status.is_terminal:
            return
        yield from self._whole(final=True)
        yield from self.hand_over_artifacts()
