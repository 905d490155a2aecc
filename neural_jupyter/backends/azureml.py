"""Azure Machine Learning: the bundle runs as a ``command`` job (``azure-ai-ml``).

``submit`` sends one command job: code = the bundle folder (the SDK uploads it to the
workspace's storage), ``python -u launcher.py`` (it installs a user-code bundle's
requirements and runs ``python train.py``) in a curated PyTorch environment pinned to one
version (``image_tables/azureml.json``, unless ``--set environment=...``), on a named compute
cluster (``--set compute=NAME``) or, without one, on serverless compute of
``--instance VM_SIZE`` (``--spot``: its spot tier). ``limits.timeout`` comes from
``--max-hours``/``--timeout``.

- One job per idempotency key: its name comes from the key. Every try first asks for a job of
  that name; one that exists is the job a previous try (or run) started, so a retried submit
  never starts a second paid job.
- Status: the job's status mapped by ``STATE_TABLE`` (published in docs/platforms/azureml.md).
  Each change becomes a ``status`` event. Logs: ``user_logs/std_log.txt`` read incrementally
  (HTTP range requests) from the run-history log URLs that ``ml_client.jobs.stream`` uses,
  each line parsed with the event protocol.
- Outputs: ``train.py`` writes ``output/``, linked to ``outputs/``, which Azure ML keeps with
  the run; ``jobs.download`` brings them back into the job's ``bundle/output`` at the end.
- Cancel: ``jobs.begin_cancel`` (the whole job: every instance).
- Data-parallel training (``--nodes N --procs-per-node P``, docs/distributed.md): ``N``
  instances (``resources.instance_count``) with ``distribution: PyTorch`` and one process
  per instance (``process_count_per_instance: 1``, Azure ML's "per-node launch"): Azure ML
  starts the command once on each instance with ``NODE_RANK``, ``MASTER_ADDR`` and
  ``MASTER_PORT`` set, and the launcher there runs torchrun (``--nnodes N
  --nproc-per-node P``) as that node of the rendezvous at instance 0. One launcher per
  machine (one bundle unpacked, one install of requirements), torchrun's own ``RANK``/
  ``LOCAL_RANK``/``WORLD_SIZE`` for each process, and torchrun's report of the first failed
  rank. The log read is process 0's (``user_logs/std_log_process_0.txt``, instance 0);
  a failed instance fails the job. One instance with ``P`` > 1 needs no distribution: the
  launcher runs torchrun on that machine alone.

Workspace: ``--set subscription_id=... resource_group=... workspace=...``, else a
``config.json`` (``--set config=PATH``, else found like ``MLClient.from_config`` does).
Credentials: ``DefaultAzureCredential`` (``az login``, environment variables, managed
identity...); no secret is read into a request, a bundle, the job store or a message.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from neural_jupyter.backends import base, retry
from neural_jupyter.backends.base import State
from neural_jupyter.backends.images import table
from neural_jupyter.backends.log_mirror import LogMirror
from neural_jupyter.backends.remote import LogReader, Look, RemotePlatform, StateTable
from neural_jupyter.errors import ConfigurationError, JobError, PlatformAuthError, PlatformError
from neural_jupyter.redaction import redact
from neural_jupyter.runtime.bundle import Bundle
from neural_jupyter.runtime.events import parse_line
from neural_jupyter.runtime.jobdir import artifact_name, output_target

PLATFORM = "azureml"
DEFAULT_ENVIRONMENT = table("azureml").default()["name"]
DEFAULT_EXPERIMENT = "neural-jupyter"
# train.py writes output/; Azure ML keeps what a job writes to ./outputs with the run. The
# launcher installs a user-code bundle's requirements, then runs train.py.
COMMAND = "mkdir -p outputs && ln -sfn outputs output && python -u launcher.py"
STD_LOGS = (
    "user_logs/std_log.txt",
    "user_logs/std_log_process_0.txt",
    "azureml-logs/70_driver_log.txt",
)
MANAGEMENT_SCOPE = "https://management.azure.com/.default"

# Azure ML job status -> (our state, what it means). Published in docs/platforms/azureml.md.
STATE_TABLE = StateTable(
    {
        "NotStarted": (State.PENDING, "not started yet"),
        "Queued": (State.PENDING, "queued, waiting for compute"),
        "Preparing": (State.PENDING, "preparing the environment image"),
        "Provisioning": (State.PENDING, "provisioning compute"),
        "Starting": (State.PENDING, "starting"),
        "Running": (State.RUNNING, "running"),
        "Finalizing": (State.RUNNING, "finalizing, uploading outputs"),
        "CancelRequested": (State.RUNNING, "cancel requested"),
        "NotResponding": (State.RUNNING, "not responding (no heartbeat from the compute lately)"),
        "Paused": (State.PENDING, "paused"),
        "Completed": (State.SUCCEEDED, "completed"),
        "Failed": (State.FAILED, "failed"),
        "Canceled": (State.CANCELLED, "canceled"),
    }
)


def job_name_for(key: str) -> str:
    """The Azure ML job name for an idempotency key (same key, same job)."""
    return base.name_for(key, 203, allowed="a-z0-9_-")


SERVICE_ERRORS = ("ServiceRequestError", "ServiceResponseError")  # no answer from Azure


def read_azure(exc: BaseException) -> retry.Failure:
    """The Azure error underneath the SDK's wrappers: HTTP status, error code, message."""
    root = _root(exc)
    error = getattr(root, "error", None)
    code = str(getattr(error, "code", None) or "")
    message = getattr(error, "message", None)
    text = f"({code}) {message}" if message and code else str(message or _first_line(root))
    status = getattr(root, "status_code", None)
    if status is None and getattr(root, "response", None) is not None:
        status = getattr(root.response, "status_code", None)
    return retry.Failure(root, status if isinstance(status, int) else None, code, text)


FAULTS = retry.FaultPolicy(
    PLATFORM,
    "Azure ML",
    read=read_azure,
    rules=(
        retry.Rule(
            retry.AUTH,
            types=("ClientAuthenticationError",),
            message="{text}",
            hint="'az login' (or check the identity's role on the workspace: AzureML Data "
            "Scientist or Contributor)",
        ),
        retry.Rule(
            retry.AUTH,
            statuses=(403,),
            message="{text}",
            hint="the identity needs AzureML Data Scientist (or Contributor) on the "
            "workspace (docs/platforms/azureml.md)",
        ),
        retry.Rule(retry.QUOTA, words=("quota",), message="{text}"),
        retry.Rule(
            retry.UNAVAILABLE, statuses=retry.TRANSIENT_HTTP_STATUS, retry=True, message="{text}"
        ),
        retry.Rule(retry.UNAVAILABLE, types=(*retry.CONNECTION_TYPES, *SERVICE_ERRORS), retry=True),
        retry.Rule(
            retry.INVALID,
            exact_types=("ValidationException",),
            message="Azure ML refused the job: {text}",
        ),
        retry.Rule(types=("HttpResponseError",), message="{text}"),
    ),
)


class AzureMLBackend(RemotePlatform):
    name = PLATFORM
    label = "Azure Machine Learning"
    image_option = "environment"
    extra = "azureml"
    sdk_modules: ClassVar[Mapping[str, str]] = {
        "azure.ai.ml": "azure-ai-ml",
        "azure.identity": "azure-identity",
    }
    paid = True
    price_table = PLATFORM
    faults = FAULTS
    max_nodes = 100  # instance_count: each instance one node of the torchrun job

    @classmethod
    def sdk(cls, module: str | None = None) -> Any:
        experimental = logging.getLogger("azure.ai.ml._utils._experimental")
        if experimental.level == logging.NOTSET:  # "experimental" notes at import: not ours
            experimental.setLevel(logging.ERROR)
        return super().sdk(module)

    def __init__(self, credential: Any = None, client_options: Mapping[str, Any] | None = None):
        """``credential``: a ``TokenCredential`` (default ``DefaultAzureCredential``);
        ``client_options``: more ``MLClient`` keywords (``cloud=...`` for sovereign clouds)."""
        self.credential = credential
        self.client_options: dict[str, Any] = dict(client_options or {})
        self._clients: dict[tuple[str, str, str], Any] = {}
        self._lock = threading.Lock()

    # --- client -------------------------------------------------------------------------------
    def get_credential(self) -> Any:
        if self.credential is None:
            self.sdk()
            self.credential = self.sdk("azure.identity").DefaultAzureCredential()
        return self.credential

    def _options(self) -> dict[str, Any]:
        options = {
            "enable_telemetry": False,
            "show_progress": False,
            "retry_total": 0,  # our own bounded retries only (never a create behind our back)
            "user_agent": "neural-jupyter",
        }
        options.update(self.client_options)
        return options

    def workspace(self, settings: Mapping[str, Any]) -> tuple[str, str, str]:
        """(subscription, resource group, workspace) from options or a ``config.json``."""
        sub = settings.get("subscription_id")
        group = settings.get("resource_group") or settings.get("resource_group_name")
        space = settings.get("workspace") or settings.get("workspace_name")
        if sub and group and space:
            return str(sub), str(group), str(space)
        aml = self.sdk()
        try:
            client = aml.MLClient.from_config(
                self.get_credential(), path=settings.get("config"), **self._options()
            )
        except Exception as exc:
            raise ConfigurationError(
                f"no Azure ML workspace given and no usable config.json ({exc})",
                hint="--set subscription_id=... resource_group=... workspace=..., or download "
                "config.json from the workspace's page in the Azure portal (--set config=PATH)",
            ) from None
        return client.subscription_id, client.resource_group_name, client.workspace_name

    def client(self, sub: str, group: str, space: str) -> Any:
        key = (sub, group, space)
        with self._lock:
            if key not in self._clients:
                aml = self.sdk()
                self._clients[key] = aml.MLClient(
                    self.get_credential(), sub, group, space, **self._options()
                )
            return self._clients[key]

    def _job_client(self, job: base.RemoteJob) -> tuple[Any, str]:
        details = job.details
        if not details.get("subscription_id"):
            raise JobError(f"job {job.id} has no Azure ML workspace recorded", job_id=job.id)
        ml = self.client(
            details["subscription_id"], details["resource_group"], details["workspace"]
        )
        return ml, str(details.get("job_name") or job.remote_id)

    def _call(self, func: Callable[[], Any]) -> Any:
        return self.call("Azure ML", func)

    # --- the request --------------------------------------------------------------------------
    def command_job(
        self, bundle_path: str | Path, job: base.RemoteJob, resources: base.ResourceSpec
    ):
        aml = self.sdk()
        extra = resources.extra
        compute = extra.get("compute")
        _check_spot(resources)
        if not compute and not resources.instance_type:
            raise ConfigurationError(
                "Azure ML needs a compute cluster (--set compute=NAME) or a VM size for "
                "serverless compute (--instance Standard_NC4as_T4_v3)"
            )
        settings: dict[str, Any] = {
            "name": job_name_for(job.idempotency_key),
            "display_name": f"{bundle_model(bundle_path)} ({job.id})",
            "experiment_name": str(extra.get("experiment") or DEFAULT_EXPERIMENT),
            "code": str(bundle_path),
            "command": command_for(resources),
            "environment": str(extra.get("environment") or self.image_row(job)["name"]),
            "environment_variables": {"PYTHONUNBUFFERED": "1"},
            "tags": {
                "neural-jupyter-job": job.id,
                "neural-jupyter-key": job.idempotency_key,
            },
        }
        if compute:
            settings["compute"] = str(compute)
        else:
            settings["instance_type"] = resources.instance_type
            settings["instance_count"] = 1
        if resources.nodes > 1:  # one launcher per instance; it runs torchrun there
            settings["instance_count"] = resources.nodes
            settings["distribution"] = aml.PyTorchDistribution(process_count_per_instance=1)
        if resources.max_seconds:
            settings["timeout"] = max(1, int(resources.max_seconds))
        if resources.spot:
            settings["job_tier"] = "Spot"  # serverless only (_check_spot)
        if extra.get("shm_size"):
            settings["shm_size"] = str(extra["shm_size"])
        return aml.command(**settings)

    def plan(self, job: base.RemoteJob, resources: base.ResourceSpec) -> dict[str, Any]:
        extra = resources.extra
        _check_spot(resources)
        request: dict[str, Any] = {
            "name": job_name_for(job.idempotency_key),
            "command": command_for(resources),
            "code": "<the bundle folder, uploaded to the workspace's storage>",
            "environment": str(extra.get("environment") or self.image_row(job)["name"]),
            "experiment_name": str(extra.get("experiment") or DEFAULT_EXPERIMENT),
        }
        if extra.get("compute"):
            request["compute"] = str(extra["compute"])
        elif resources.instance_type:
            request["resources"] = {"instance_type": resources.instance_type, "instance_count": 1}
        if resources.nodes > 1:
            request.setdefault("resources", {})["instance_count"] = resources.nodes
            request["distribution"] = {"type": "pytorch", "process_count_per_instance": 1}
        if resources.max_seconds:
            request["limits"] = {"timeout": max(1, int(resources.max_seconds))}
        if resources.spot:
            request["queue_settings"] = {"job_tier": "Spot"}
        workspace = {
            k: extra[k] for k in ("subscription_id", "resource_group", "workspace") if k in extra
        }
        return {
            "backend": self.name,
            "job": job.id,
            "resources": resources.public(),
            "workspace": workspace or "from config.json",
            "command_job": request,
        }

    # --- contract -----------------------------------------------------------------------------
    def check_credentials(self) -> None:
        credential = self.get_credential()
        scope = MANAGEMENT_SCOPE
        metadata = self.client_options.get("cloud_metadata") or {}
        if metadata.get("resource_manager"):
            scope = str(metadata["resource_manager"]).rstrip("/") + "/.default"
        try:
            credential.get_token(scope)
        except Exception as exc:
            raise PlatformAuthError(
                f"no Azure credential works: {_first_line(exc)}",
                platform=PLATFORM,
                hint="run 'az login' (or set AZURE_CLIENT_ID/AZURE_TENANT_ID/"
                "AZURE_CLIENT_SECRET for a service principal, or use a managed identity)",
            ) from None

    def submit(
        self, bundle: Bundle, job: base.RemoteJob, resources: base.ResourceSpec
    ) -> base.Submission:
        extra = resources.extra
        sub, group, space = self.workspace(extra)
        ml = self.client(sub, group, space)
        entity = self.command_job(bundle.path, job, resources)
        name = entity.name

        def attempt() -> tuple[Any, bool]:
            existing = self._get_job(ml, name)
            if existing is not None:  # started by an earlier try or run: never a second job
                return existing, True
            with _quiet_stderr():
                return ml.jobs.create_or_update(entity), False

        created, adopted = self._call(attempt)
        studio = None
        with contextlib.suppress(Exception):
            studio = created.studio_url
        details = {
            "job_name": name,
            "subscription_id": sub,
            "resource_group": group,
            "workspace": space,
            "experiment": entity.experiment_name,
            "compute": extra.get("compute"),
            "timeout_seconds": int(resources.max_seconds) if resources.max_seconds else None,
            "studio_url": studio,
            "adopted": adopted or None,
        }
        return base.Submission(name, {k: v for k, v in details.items() if v is not None})

    @staticmethod
    def _get_job(ml: Any, name: str) -> Any:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return ml.jobs.get(name)
        except ResourceNotFoundError:
            return None

    def look(self, job: base.RemoteJob) -> Look:
        ml, name = self._job_client(job)
        remote = self._call(lambda: self._get_job(ml, name))
        if remote is None:
            return Look(
                base.RemoteStatus(State.UNKNOWN, message=f"Azure ML job {name} not found"),
                gone=True,
            )
        raw = _status_text(remote.status)
        state = self._status_of(ml, name, raw, job)
        announce = None if state.is_terminal else f"Azure ML: {state.message}"
        return Look(state, raw, announce, {"state": state.state, "status": raw}, raw=(ml, name))

    def _status_of(self, ml: Any, name: str, raw: str, job: base.RemoteJob) -> base.RemoteStatus:
        state, meaning = STATE_TABLE.lookup(raw)
        if state == State.FAILED:
            return base.RemoteStatus(
                State.FAILED, _exit_code(error := self._error(ml, name)), error or meaning
            )
        if state == State.CANCELLED:
            error = self._error(ml, name) or ""
            if not job.files.cancel_requested.exists() and (
                "timeout" in error.lower() or "time limit" in error.lower()
            ):
                return base.RemoteStatus(
                    State.FAILED, None, "stopped at its time limit (limits.timeout)", timed_out=True
                )
            return base.RemoteStatus(State.CANCELLED, None, error or meaning)
        if state == State.SUCCEEDED:
            return base.RemoteStatus(State.SUCCEEDED, 0, meaning)
        return base.RemoteStatus(state, None, f"{raw}: {meaning}")

    def _error(self, ml: Any, name: str) -> str | None:
        """The run's error message (run history), if it has one."""
        with contextlib.suppress(Exception):
            details = self._call(lambda: ml.jobs._runs_operations.get_run_details(name))
            error = getattr(details, "error", None)
            root = getattr(error, "error", None) or error
            message = getattr(root, "message", None)
            if message:
                return redact(str(message))
        return None

    def _log_url(self, ml: Any, name: str) -> str | None:
        """The job's std_log URL from run history (what ``ml_client.jobs.stream`` reads)."""
        details = self._call(lambda: ml.jobs._runs_operations.get_run_details(name))
        files = dict(getattr(details, "log_files", None) or {})
        for wanted in STD_LOGS:
            if wanted in files:
                return str(files[wanted])
        for key in sorted(files):
            if "std_log" in key:
                return str(files[key])
        return None

    def log_reader(self, job: base.RemoteJob) -> LogReader:
        return _StdLog(self, job)

    def _read_log(self, ml: Any, name: str, tail: LogTail, final: bool) -> list[str]:
        try:
            url = self._log_url(ml, name)
        except PlatformError:
            return []
        if not url:
            return []
        import requests

        headers = {"Range": f"bytes={tail.offset}-"} if tail.offset else {}

        def fetch() -> Any:
            response = requests.get(url, headers=headers, timeout=60)
            if response.status_code in retry.TRANSIENT_HTTP_STATUS:
                response.raise_for_status()
            return response

        try:
            response = retry.call_with_retries(fetch, FAULTS.is_transient)
        except Exception:
            return []
        if response.status_code == 206:
            data = response.content
        elif response.status_code == 200:  # the server ignored the range: skip what we have
            data = response.content[tail.offset :]
        else:  # 416 (nothing new), 404 (not written yet), 403 (an expired link: next time)
            data = b""
        return tail.feed(data, final)

    def fetch_artifacts(self, job: base.RemoteJob, destination: Path) -> dict[str, Path]:
        """``jobs.download`` of the run's ``outputs/`` into ``destination``."""
        ml, name = self._job_client(job)
        scratch = Path(tempfile.mkdtemp(prefix="neural-azureml-"))
        try:
            with _quiet_sdk_logs():
                self._call(lambda: ml.jobs.download(name, download_path=str(scratch)))
            found: dict[str, Path] = {}
            for source in sorted(scratch.rglob("*")):
                relative = source.relative_to(scratch).parts
                if not source.is_file() or "outputs" not in relative:
                    continue
                inner = "/".join(relative[relative.index("outputs") + 1 :])
                target = output_target(destination, inner)
                if target is None:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                found[artifact_name(inner)] = target
            return found
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def cancel(self, job: base.RemoteJob) -> None:
        ml, name = self._job_client(job)
        job.files.mark(job.files.cancel_requested)
        self._call(lambda: ml.jobs.begin_cancel(name))

    def estimate_cost(self, resources: base.ResourceSpec) -> base.CostEstimate | None:
        if not resources.instance_type:
            return None  # a named cluster's VM size is not known here
        return super().estimate_cost(resources)


class _StdLog(LogReader):
    """``user_logs/std_log.txt`` read incrementally from the run-history log URL (what
    ``ml_client.jobs.stream`` reads), mirrored into the job's directory."""

    def __init__(self, backend: AzureMLBackend, job: base.RemoteJob) -> None:
        self.backend = backend
        self.mirror = LogMirror(job.directory)
        self.tail = LogTail()

    def read(self, look: Look, follow: bool) -> Iterator[base.StreamItem]:
        if look.raw is None or not (look.status.state == State.RUNNING or look.status.is_terminal):
            return
        ml, name = look.raw
        lines = self.backend._read_log(ml, name, self.tail, final=look.status.is_terminal)
        first = self.tail.count - len(lines)
        for number, line in enumerate(lines, first + 1):
            self.mirror.add(line, number)
            yield parse_line(line)

    def finish(self, look: Look) -> Iterator[base.StreamItem]:
        if (look.status.is_terminal or look.gone) and self.tail.count == 0:
            yield from self.mirror.events()  # no log left there: what was kept here


def command_for(resources: base.ResourceSpec) -> str:
    """The job's command: ``COMMAND``, with the launcher's torchrun options for
    ``nodes × procs_per_node`` above 1 × 1 (each instance's node rank and instance 0's
    address come from Azure ML's ``NODE_RANK``/``MASTER_ADDR``/``MASTER_PORT``)."""
    if resources.world_size == 1:
        return COMMAND
    return f"{COMMAND} --nnodes {resources.nodes} --nproc-per-node {resources.procs_per_node}"


def _check_spot(resources: base.ResourceSpec) -> None:
    if resources.spot and resources.extra.get("compute"):
        raise ConfigurationError(
            "--spot picks serverless spot capacity; a named cluster's VMs are dedicated or "
            "low priority as the cluster was created",
            hint="leave out --set compute (serverless, with --instance), or leave out --spot",
        )


def bundle_model(path: str | Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        return str(json.loads((Path(path) / "job.json").read_text()).get("model") or "model")
    return "model"


class LogTail:
    """Bytes of a growing log file in, complete lines out (counted)."""

    def __init__(self) -> None:
        self.offset = 0
        self.count = 0
        self._partial = b""

    def feed(self, data: bytes, final: bool = False) -> list[str]:
        self.offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        if final and self._partial:
            lines.append(self._partial)
            self._partial = b""
        out = [line.decode("utf-8", errors="replace").rstrip("\r") for line in lines]
        self.count += len(out)
        return out


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """The SDK prints a colour reset to stderr after every upload; keep anything else."""
    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer):
        yield
    text = re.sub(r"\x1b\[[0-9;]*m", "", buffer.getvalue()).strip()
    if text:
        print(redact(text), file=sys.stderr)


@contextlib.contextmanager
def _quiet_sdk_logs() -> Iterator[None]:
    """The SDK logs each download at INFO to its own stderr handler; our monitor says it."""
    logger = logging.getLogger("azure.ai.ml.operations._job_operations")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _status_text(status: Any) -> str:
    """``JobStatus.RUNNING`` (an enum in some SDK versions) or ``"Running"`` -> ``"Running"``."""
    return str(getattr(status, "value", status) or "")


def _exit_code(message: str | None) -> int | None:
    match = re.search(
        r"(?:exit(?:ed)? (?:with )?(?:status )?code|exit code)[: ]*(-?\d+)", message or ""
    )
    return int(match.group(1)) if match else None


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return redact(text.splitlines()[0] if text else type(exc).__name__)


def _root(exc: BaseException) -> BaseException:
    """The Azure error underneath the SDK's wrappers (MlException, AssetException...)."""
    from azure.core.exceptions import AzureError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, AzureError):
            return current
        inner = getattr(current, "inner_exception", None)
        current = (
            inner
            if isinstance(inner, BaseException)
            else (current.__cause__ or current.__context__)
        )
    return exc
