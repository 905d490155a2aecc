"""Azure Machine Learning: the bundle runs as a ``command`` job (``azure-ai-ml``).

``submit`` sends one command job: code = the bundle folder (the SDK uploads it to the
workspace's storage), ``python -u train.py`` in a curated PyTorch environment
(``AzureML-acpt-pytorch-2.2-cuda12.1@latest`` unless ``--set environment=...``), on a named
compute cluster (``--set compute=NAME``) or, without one, on serverless compute of
``--instance VM_SIZE``. ``limits.timeout`` comes from ``--max-hours``/``--timeout``.

- One job per idempotency key: its name comes from the key. Every try first asks for a job of
  that name; one that exists is the job a previous try (or run) started, so a retried submit
  never starts a second paid job.
- Status: the job's status mapped by ``STATE_TABLE`` (published in docs/platforms/azureml.md).
  Each change becomes a ``status`` event. Logs: ``user_logs/std_log.txt`` read incrementally
  (HTTP range requests) from the run-history log URLs that ``ml_client.jobs.stream`` uses,
  each line parsed with the event protocol.
- Outputs: ``train.py`` writes ``output/``, linked to ``outputs/``, which Azure ML keeps with
  the run; ``jobs.download`` brings them back into the job's ``bundle/output`` at the end.
- Cancel: ``jobs.begin_cancel``.

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
import time
from collections.abc import Callable, Iterator, Mapping
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
from neural_jupyter.redaction import redact
from neural_jupyter.runtime.bundle import Bundle
from neural_jupyter.runtime.events import Event, parse_line

PLATFORM = "azureml"
DEFAULT_ENVIRONMENT = "AzureML-acpt-pytorch-2.2-cuda12.1@latest"
DEFAULT_EXPERIMENT = "neural-jupyter"
# train.py writes output/; Azure ML keeps what a job writes to ./outputs with the run.
COMMAND = "mkdir -p outputs && ln -sfn outputs output && python -u train.py"
STD_LOGS = (
    "user_logs/std_log.txt",
    "user_logs/std_log_process_0.txt",
    "azureml-logs/70_driver_log.txt",
)
ARTIFACT_NAMES = {"model.pt": "weights", "history.json": "history", "checkpoint.pt": "checkpoint"}
MANAGEMENT_SCOPE = "https://management.azure.com/.default"

# Azure ML job status -> (our state, what it means). Published in docs/platforms/azureml.md.
STATE_TABLE: dict[str, tuple[str, str]] = {
    "NotStarted": (PENDING, "not started yet"),
    "Queued": (PENDING, "queued, waiting for compute"),
    "Preparing": (PENDING, "preparing the environment image"),
    "Provisioning": (PENDING, "provisioning compute"),
    "Starting": (PENDING, "starting"),
    "Running": (RUNNING, "running"),
    "Finalizing": (RUNNING, "finalizing, uploading outputs"),
    "CancelRequested": (RUNNING, "cancel requested"),
    "NotResponding": (RUNNING, "not responding (no heartbeat from the compute lately)"),
    "Paused": (PENDING, "paused"),
    "Completed": (SUCCEEDED, "completed"),
    "Failed": (FAILED, "failed"),
    "Canceled": (CANCELLED, "canceled"),
}


def _sdk() -> Any:
    experimental = logging.getLogger("azure.ai.ml._utils._experimental")
    if experimental.level == logging.NOTSET:  # "experimental class" notes at import: not ours
        experimental.setLevel(logging.ERROR)
    try:
        import azure.ai.ml as aml
    except ImportError:
        raise MissingDependencyError("azure-ai-ml", "azureml", "The Azure ML backend") from None
    return aml


def job_name_for(key: str) -> str:
    """The Azure ML job name for an idempotency key (same key, same job)."""
    return "nj-" + re.sub(r"[^a-z0-9_-]+", "-", key.lower()).strip("-")[:200]


def state_of(status: str | None) -> tuple[str, str]:
    if not status:
        return UNKNOWN, "no status yet"
    return STATE_TABLE.get(str(status), (UNKNOWN, str(status)))


class AzureMLBackend(Backend):
    name = PLATFORM
    label = "Azure Machine Learning"
    extra = "azureml"

    poll_seconds = 10.0
    heartbeat_seconds = 0.25

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
            _sdk()
            try:
                from azure.identity import DefaultAzureCredential
            except ImportError:
                raise MissingDependencyError(
                    "azure-identity", "azureml", "The Azure ML backend"
                ) from None
            self.credential = DefaultAzureCredential()
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
        aml = _sdk()
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
                aml = _sdk()
                self._clients[key] = aml.MLClient(
                    self.get_credential(), sub, group, space, **self._options()
                )
            return self._clients[key]

    def _job_client(self, job: RemoteJob) -> tuple[Any, str]:
        details = job.details
        if not details.get("subscription_id"):
            raise JobError(f"job {job.id} has no Azure ML workspace recorded", job_id=job.id)
        ml = self.client(
            details["subscription_id"], details["resource_group"], details["workspace"]
        )
        return ml, str(details.get("job_name") or job.remote_id)

    @staticmethod
    def _call(func: Callable[[], Any]) -> Any:
        try:
            return call_with_retries(func, _is_transient)
        except Exception as exc:
            raise _platform_error(exc) from None

    # --- the request --------------------------------------------------------------------------
    def command_job(self, bundle_path: str | Path, job: RemoteJob, resources: ResourceSpec):
        aml = _sdk()
        extra = resources.extra
        compute = extra.get("compute")
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
            "command": COMMAND,
            "environment": str(extra.get("environment") or DEFAULT_ENVIRONMENT),
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
        if resources.max_seconds:
            settings["timeout"] = max(1, int(resources.max_seconds))
        if resources.spot:
            settings["job_tier"] = "Spot"
        if extra.get("shm_size"):
            settings["shm_size"] = str(extra["shm_size"])
        return aml.command(**settings)

    def plan(self, job: RemoteJob, resources: ResourceSpec) -> dict[str, Any]:
        extra = resources.extra
        request: dict[str, Any] = {
            "name": job_name_for(job.idempotency_key),
            "command": COMMAND,
            "code": "<the bundle folder, uploaded to the workspace's storage>",
            "environment": str(extra.get("environment") or DEFAULT_ENVIRONMENT),
            "experiment_name": str(extra.get("experiment") or DEFAULT_EXPERIMENT),
        }
        if extra.get("compute"):
            request["compute"] = str(extra["compute"])
        elif resources.instance_type:
            request["resources"] = {"instance_type": resources.instance_type, "instance_count": 1}
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

    def submit(self, bundle: Bundle, job: RemoteJob, resources: ResourceSpec) -> Submission:
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
        return Submission(name, {k: v for k, v in details.items() if v is not None})

    @staticmethod
    def _get_job(ml: Any, name: str) -> Any:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return ml.jobs.get(name)
        except ResourceNotFoundError:
            return None

    def status(self, job: RemoteJob) -> RemoteStatus:
        ml, name = self._job_client(job)
        remote = self._call(lambda: self._get_job(ml, name))
        if remote is None:
            return RemoteStatus(UNKNOWN, message=f"Azure ML job {name} not found")
        return self._status_of(ml, name, _status_text(remote.status), job)

    def _status_of(self, ml: Any, name: str, raw: str, job: RemoteJob) -> RemoteStatus:
        state, meaning = state_of(raw)
        if state == FAILED:
            return RemoteStatus(
                FAILED, _exit_code(error := self._error(ml, name)), error or meaning
            )
        if state == CANCELLED:
            error = self._error(ml, name) or ""
            if not (job.directory / "cancel_requested").exists() and (
                "timeout" in error.lower() or "time limit" in error.lower()
            ):
                return RemoteStatus(
                    FAILED, None, "stopped at its time limit (limits.timeout)", timed_out=True
                )
            return RemoteStatus(CANCELLED, None, error or meaning)
        if state == SUCCEEDED:
            return RemoteStatus(SUCCEEDED, 0, meaning)
        return RemoteStatus(state, None, f"{raw}: {meaning}")

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

    def events(self, job: RemoteJob, *, follow: bool = True) -> Iterator[StreamItem]:
        ml, name = self._job_client(job)
        mirror = LogMirror(job.directory)
        tail = LogTail()
        last = None
        while True:
            remote = self._call(lambda: self._get_job(ml, name))
            raw = _status_text(remote.status) if remote is not None else "Unknown"
            state = self._status_of(ml, name, raw, job) if remote else RemoteStatus(UNKNOWN)
            if raw != last and not state.is_terminal:
                last = raw
                yield Event(
                    "status",
                    {"state": state.state, "status": raw, "message": f"Azure ML: {state.message}"},
                )
            if state.state == RUNNING or state.is_terminal:
                lines = self._read_log(ml, name, tail, final=state.is_terminal)
                first = tail.count - len(lines)
                for number, line in enumerate(lines, first + 1):
                    mirror.add(line, number)
                    yield parse_line(line)
            if state.is_terminal or remote is None:
                if tail.count == 0:  # no log left on the platform: what this machine kept
                    for line, stream in mirror.lines():
                        yield parse_line(line, stream)
                if state.state == SUCCEEDED:
                    yield from self.bring_back_outputs(job)
                return
            if not follow:
                return
            deadline = time.monotonic() + self.poll_seconds
            while time.monotonic() < deadline:
                yield None
                time.sleep(self.heartbeat_seconds)

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
            if response.status_code in TRANSIENT_HTTP_STATUS:
                response.raise_for_status()
            return response

        try:
            response = call_with_retries(fetch, _is_transient)
        except Exception:
            return []
        if response.status_code == 206:
            data = response.content
        elif response.status_code == 200:  # the server ignored the range: skip what we have
            data = response.content[tail.offset :]
        else:  # 416 (nothing new), 404 (not written yet), 403 (an expired link: next time)
            data = b""
        return tail.feed(data, final)

    def fetch_artifacts(self, job: RemoteJob, destination: Path) -> dict[str, Path]:
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
                inner = relative[relative.index("outputs") + 1 :]
                if not inner or inner[-1] == "status.json":
                    continue
                target = destination.joinpath(*inner)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                found[ARTIFACT_NAMES.get(target.name, target.name)] = target
            return found
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def cancel(self, job: RemoteJob) -> None:
        ml, name = self._job_client(job)
        job.directory.mkdir(parents=True, exist_ok=True)
        (job.directory / "cancel_requested").touch()
        self._call(lambda: ml.jobs.begin_cancel(name))

    def estimate_cost(self, resources: ResourceSpec) -> CostEstimate | None:
        if not resources.instance_type:
            return None  # a named cluster's VM size is not known here
        return super().estimate_cost(resources)


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


def _is_transient(exc: BaseException) -> bool:
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    root = _root(exc)
    if isinstance(root, (ServiceRequestError, ServiceResponseError)):
        return True
    if isinstance(root, HttpResponseError):
        return root.status_code in TRANSIENT_HTTP_STATUS
    try:
        import requests
    except ImportError:  # pragma: no cover
        return False
    if isinstance(root, requests.HTTPError):
        return root.response is not None and root.response.status_code in TRANSIENT_HTTP_STATUS
    return isinstance(root, (requests.ConnectionError, requests.Timeout, ConnectionError))


def _azure_message(exc: Any) -> str:
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    message = getattr(error, "message", None)
    if message:
        return f"({code}) {message}" if code else str(message)
    return _first_line(exc)


def _platform_error(exc: BaseException) -> Exception:
    if isinstance(exc, PlatformError | ConfigurationError | JobError):
        return exc
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

    root = _root(exc)
    if isinstance(root, ClientAuthenticationError):
        status = getattr(root, "status_code", None)
        return PlatformAuthError(
            _azure_message(root),
            platform=PLATFORM,
            response=f"HTTP {status}" if status else None,
            hint="'az login' (or check the identity's role on the workspace: AzureML Data "
            "Scientist or Contributor)",
        )
    if isinstance(root, HttpResponseError):
        status = root.status_code
        message = _azure_message(root)
        code = str(getattr(getattr(root, "error", None), "code", "") or "")
        if status == 403:
            return PlatformAuthError(
                message,
                platform=PLATFORM,
                response="HTTP 403",
                hint="the identity needs AzureML Data Scientist (or Contributor) on the "
                "workspace (docs/platforms/azureml.md)",
            )
        if "quota" in (message + code).lower():
            return QuotaError(message, platform=PLATFORM, response=f"HTTP {status}")
        if status in TRANSIENT_HTTP_STATUS:
            return PlatformConnectionError(message, platform=PLATFORM, response=f"HTTP {status}")
        return PlatformError(message, platform=PLATFORM, response=f"HTTP {status}")
    if _is_transient(root):
        return PlatformConnectionError(
            f"Azure ML could not be reached: {_first_line(root)}", platform=PLATFORM
        )
    if type(exc).__name__ == "ValidationException":  # the SDK's own checks, before sending
        return ConfigurationError(f"Azure ML refused the job: {_first_line(exc)}")
    return PlatformError(f"{type(exc).__name__}: {_first_line(exc)}", platform=PLATFORM)
