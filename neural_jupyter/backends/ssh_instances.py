"""Rented GPU instances for the ssh backend: launch one through a provider's REST API, run
the job on it over SSH, and terminate it whatever happens.

Used when ``resources.extra["provider"]`` is set. The life of an instance:

1. ``launch`` (``POST /instances``), recorded at once with ``job.ledger.launched`` so a crash
   cannot forget a paid machine (``%neural_jobs --instances`` lists it);
2. poll ``describe`` until it is active and has an address (bounded), wait until SSH
   answers (bounded), schedule ``shutdown -h`` from the inside when there is a ``max_hours``
   budget, then start the job with the ssh backend;
3. ``terminate`` (``DELETE /instances/{id}``) exactly once, when the job succeeds, fails, is
   cancelled or runs out of time (a watcher thread follows it even if nobody watches), when
   starting it fails at any step, and when this Python process exits (``atexit``); then
   ``ledger.terminated``.

The API token comes from ``NEURAL_JUPYTER_PROVIDER_TOKEN`` or the keyring (service
``neural-jupyter``, user = the provider name); it is registered with the redaction filter and
never stored, logged or put in a job's details.

A provider is a small class (``launch``, ``describe``, ``terminate``, optionally ``find``);
``GenericProvider`` speaks the simple REST API below, and Lambda or Paperspace providers can
be added to ``PROVIDERS`` the same way (``ssh_providers`` adds ``lambda`` and
``paperspace``).
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import json
import math
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from neural_jupyter.backends.base import (
    FAILED,
    CostEstimate,
    RemoteJob,
    RemoteStatus,
    ResourceSpec,
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

if TYPE_CHECKING:
    from neural_jupyter.backends.ssh import SSHBackend

TOKEN_ENV = "NEURAL_JUPYTER_PROVIDER_TOKEN"
KEYRING_SERVICE = "neural-jupyter"
FINAL_STATUS_FILE = "instance_final.json"
HTTP_TIMEOUT = (10.0, 60.0)  # connect, read
BOOT_TIMEOUT = 900.0
SSH_TIMEOUT = 300.0
POLL_SECONDS = 5.0
SHUTDOWN_MARGIN_MINUTES = 10
DEFAULT_USER = "ubuntu"
DEFAULT_SHUTDOWN = (
    'if [ "$(id -u)" = 0 ]; then shutdown -h +{minutes}; else sudo -n shutdown -h +{minutes}; fi'
)
ACTIVE_STATES = frozenset({"active", "running", "ready", "booted"})
DEAD_STATES = frozenset(
    {"error", "failed", "terminated", "terminating", "deleted", "stopped", "unhealthy", "gone"}
)
ADDRESS_KEYS = ("ip", "floating_ip", "public_ip", "accessIPv4", "ip_address", "public_ip_address")
EXTRA_KEYS = frozenset(
    {
        "provider",
        "provider_url",
        "instance_type",
        "ssh_key_name",
        "boot_timeout",
        "ssh_timeout",
        "poll_seconds",
        "hourly_price",
        "shutdown_command",
        "template_id",
        "disk_size",
    }
)
PROVIDER_OPTIONS = ("template_id", "disk_size")  # passed to a provider in settings.options


# --- providers ------------------------------------------------------------------------------
@dataclass(frozen=True)
class InstanceInfo:
    """What a provider says about an instance."""

    id: str
    status: str
    address: str | None = None
    port: int | None = None

    @property
    def is_active(self) -> bool:
        return self.status.lower() in ACTIVE_STATES and bool(self.address)

    @property
    def is_dead(self) -> bool:
        return self.status.lower() in DEAD_STATES


class ProviderTransientError(PlatformConnectionError):
    """A provider call failed in a way worth another try. ``maybe_created``: a launch request
    may have reached the provider, so trying it again could start a second instance."""

    def __init__(self, message: str, *, maybe_created: bool = False, **kwargs: Any) -> None:
        self.maybe_created = maybe_created
        super().__init__(message, **kwargs)


class LaunchError(PlatformError):
    """Launching failed; ``instance_id`` is set when the provider created one anyway."""

    def __init__(self, message: str, *, instance_id: str | None = None, **kwargs: Any) -> None:
        self.instance_id = instance_id
        super().__init__(message, **kwargs)


class InstanceProvider(abc.ABC):
    """A place to rent machines by the hour. Subclasses register in ``PROVIDERS``."""

    name: ClassVar[str]

    def __init__(self, settings: InstanceSettings, token: str) -> None:
        self.settings = settings
        self._token = token

    @abc.abstractmethod
    def launch(
        self, *, name: str, instance_type: str, region: str | None, ssh_key_name: str | None
    ) -> str:
        """Start an instance; its id. Raises ``LaunchError`` (with the id if one was made)."""

    @abc.abstractmethod
    def describe(self, instance_id: str) -> InstanceInfo:
        """Its state and address (transient faults retried)."""

    @abc.abstractmethod
    def terminate(self, instance_id: str) -> None:
        """Stop paying for it (an instance already gone is fine)."""

    def find(self, name: str) -> str | None:
        """The id of a live instance launched under ``name`` (a retried submit), or None."""
        return None


class GenericProvider(InstanceProvider):
    """A minimal REST API, with ``Authorization: Bearer <token>``:

    ``POST /instances`` ``{name, instance_type, region, ssh_key_name}`` → ``{id}``;
    ``GET /instances/{id}`` → ``{status, ip | floating_ip | public_ip | accessIPv4 |
    addresses{...}}``; ``DELETE /instances/{id}``; optionally ``GET /instances?name=N``.
    Responses may be wrapped in ``{"instance": ...}`` or ``{"data": ...}``.
    """

    name = "generic"

    def __init__(self, settings: InstanceSettings, token: str) -> None:
        super().__init__(settings, token)
        if not settings.provider_url:
            raise ConfigurationError(
                "the generic instance provider needs its API address",
                hint="extra={'provider_url': 'https://api.example.com/v1'}",
            )
        try:
            import requests
        except ImportError:
            raise MissingDependencyError("requests", "ssh", "Launching instances") from None
        self._requests = requests
        self.url = settings.provider_url.rstrip("/")
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {token}"
        self._session.headers["Accept"] = "application/json"

    def launch(
        self, *, name: str, instance_type: str, region: str | None, ssh_key_name: str | None
    ) -> str:
        body = {"name": name, "instance_type": instance_type}
        body.update({k: v for k, v in (("region", region), ("ssh_key_name", ssh_key_name)) if v})
        try:
            response = call_with_retries(
                lambda: self._call("POST", "/instances", body, launching=True),
                lambda exc: isinstance(exc, ProviderTransientError) and not exc.maybe_created,
            )
        except ProviderTransientError as exc:
            raise LaunchError(
                f"launching a {instance_type} instance failed: {exc.message}",
                platform=self.name,
                response=exc.response,
                instance_id=_instance_id(exc.response),
            ) from exc
        instance_id = _instance_id(response.text)
        if not instance_id:
            raise LaunchError(
                "the provider accepted the launch but returned no instance id",
                platform=self.name,
                response=response.text[:500],
            )
        return instance_id

    def describe(self, instance_id: str) -> InstanceInfo:
        response = self._call_retried("GET", f"/instances/{instance_id}")
        if response.status_code == 404:
            return InstanceInfo(instance_id, "gone")
        return parse_instance(instance_id, _json(response.text))

    def terminate(self, instance_id: str) -> None:
        self._call_retried("DELETE", f"/instances/{instance_id}")  # 404: already gone

    def find(self, name: str) -> str | None:
        try:
            response = self._call_retried("GET", f"/instances?name={name}")
        except PlatformError:
            return None
        if response.status_code != 200:
            return None
        payload = _unwrap(_json(response.text))
        items = payload.get("instances", []) if isinstance(payload, dict) else payload
        for item in items if isinstance(items, list) else []:
            item = _unwrap(item)
            if isinstance(item, dict) and item.get("name") == name:
                info = parse_instance(str(_instance_id(json.dumps(item)) or ""), item)
                if info.id and not info.is_dead:
                    return info.id
        return None

    def _call_retried(self, method: str, path: str) -> Any:
        return call_with_retries(
            lambda: self._call(method, path), lambda exc: isinstance(exc, ProviderTransientError)
        )

    def _call(
        self, method: str, path: str, body: dict | None = None, *, launching: bool = False
    ) -> Any:
        requests = self._requests
        url = self.url + path
        try:
            response = self._session.request(method, url, json=body, timeout=HTTP_TIMEOUT)
        except requests.ConnectTimeout as exc:
            raise ProviderTransientError(
                f"{method} {url}: no connection", platform=self.name, response=str(exc)
            ) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            # the request may have arrived: for a launch, another try could pay twice
            raise ProviderTransientError(
                f"{method} {url}: {type(exc).__name__}",
                platform=self.name,
                response=str(exc),
                maybe_created=launching and not _never_sent(exc),
            ) from None
        status = response.status_code
        text = response.text[:1000]
        if status in (401, 403):
            raise PlatformAuthError(
                f"{method} {url} was refused ({status}): check the API token",
                platform=self.name,
                response=text,
                hint=f"set {TOKEN_ENV}, or store it: keyring set {KEYRING_SERVICE} {self.name}",
            )
        if status in TRANSIENT_HTTP_STATUS:
            refused = status in (429, 503)
            raise ProviderTransientError(
                f"{method} {url} answered {status}",
                platform=self.name,
                response=text,
                maybe_created=launching and not refused,
            )
        if status == 404 and method in ("GET", "DELETE"):
            return response
        if status == 402 or (status in (400, 409, 422) and "quota" in text.lower()):
            raise QuotaError(f"{method} {url} answered {status}", platform=self.name, response=text)
        if status >= 400:
            error = LaunchError if launching else PlatformError
            raise error(f"{method} {url} answered {status}", platform=self.name, response=text)
        return response


PROVIDERS: dict[str, type[InstanceProvider]] = {"generic": GenericProvider}


def _never_sent(exc: BaseException) -> bool:
    """True when a requests error happened before a byte of the request left."""
    text = repr(exc)
    return "NewConnectionError" in text or "Failed to establish a new connection" in text


def _json(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {}


def _unwrap(payload: Any) -> Any:
    while isinstance(payload, dict) and len(payload) == 1:
        ((key, inner),) = payload.items()
        if key not in ("data", "instance") or not isinstance(inner, (dict, list)):
            break
        payload = inner
    if isinstance(payload, dict):
        for key in ("instance", "data"):
            if isinstance(payload.get(key), dict):
                return payload[key]
    return payload


def _instance_id(text: str | None) -> str | None:
    payload = _unwrap(_json(text or ""))
    if not isinstance(payload, dict):
        return None
    for key in ("id", "instance_id"):
        if payload.get(key):
            return str(payload[key])
    ids = payload.get("instance_ids")
    if isinstance(ids, list) and ids:
        return str(ids[0])
    return None


def parse_instance(instance_id: str, payload: Any) -> InstanceInfo:
    """Status and address from any of the usual shapes of a provider's answer."""
    data = _unwrap(payload) if payload else {}
    if not isinstance(data, dict):
        return InstanceInfo(instance_id, "unknown")
    status = str(data.get("status") or data.get("state") or "unknown")
    address = next((str(data[k]) for k in ADDRESS_KEYS if data.get(k)), None)
    if address is None and data.get("addresses"):
        address = _first_address(data["addresses"])
    port = None
    if address and address.count(":") == 1:  # "host:port" (IPv4 or a name)
        host, _, text = address.partition(":")
        if text.isdigit():
            address, port = host, int(text)
    if data.get("ssh_port"):
        port = int(data["ssh_port"])
    return InstanceInfo(str(data.get("id") or instance_id), status, address, port)


def _first_address(value: Any) -> str | None:
    """The first IPv4-looking address in OpenStack/Paperspace-style ``addresses``."""
    if isinstance(value, str):
        return value if value.replace(".", "").replace(":", "").isdigit() else None
    if isinstance(value, dict):
        for key in ("addr", "ip", "address"):
            if isinstance(value.get(key), str):
                return value[key]
        values = list(value.values())
    elif isinstance(value, list):
        values = value
    else:
        return None
    for item in values:
        found = _first_address(item)
        if found:
            return found
    return None


# --- settings -------------------------------------------------------------------------------
@dataclass(frozen=True)
class InstanceSettings:
    provider: str
    provider_url: str | None
    instance_type: str
    region: str | None = None
    ssh_key_name: str | None = None
    user: str = DEFAULT_USER
    port: int | None = None
    key_file: str | None = None
    boot_timeout: float = BOOT_TIMEOUT
    ssh_timeout: float = SSH_TIMEOUT
    poll_seconds: float = POLL_SECONDS
    hourly_price: float | None = None
    shutdown_command: str = DEFAULT_SHUTDOWN
    max_hours: float | None = None
    max_seconds: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_resources(cls, resources: ResourceSpec) -> InstanceSettings:
        extra = resources.extra
        provider = str(extra.get("provider") or "")
        if provider not in PROVIDERS:
            from neural_jupyter.dsl.suggest import did_you_mean

            raise ConfigurationError(
                f"unknown instance provider {provider!r}",
                hint=did_you_mean(provider, PROVIDERS) or "known: " + ", ".join(PROVIDERS),
            )
        instance_type = resources.instance_type or extra.get("instance_type")
        if not instance_type:
            raise ConfigurationError(
                "launching an instance needs its type", hint="--instance gpu_1x_a10 (instance=)"
            )

        def number(key: str, default: float | None) -> float | None:
            value = extra.get(key, default)
            if value is None:
                return None
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ConfigurationError(f"extra {key!r} must be a number, got {value!r}") from None
            if value <= 0:
                raise ConfigurationError(f"extra {key!r} must be positive, got {value!r}")
            return value

        return cls(
            provider=provider,
            provider_url=extra.get("provider_url"),
            instance_type=str(instance_type),
            region=resources.region or extra.get("region"),
            ssh_key_name=extra.get("ssh_key_name"),
            user=str(extra.get("user") or DEFAULT_USER),
            port=int(extra["port"]) if extra.get("port") else None,
            key_file=extra.get("key_file"),
            boot_timeout=number("boot_timeout", BOOT_TIMEOUT) or BOOT_TIMEOUT,
            ssh_timeout=number("ssh_timeout", SSH_TIMEOUT) or SSH_TIMEOUT,
            poll_seconds=number("poll_seconds", POLL_SECONDS) or POLL_SECONDS,
            hourly_price=number("hourly_price", None),
            shutdown_command=str(extra.get("shutdown_command") or DEFAULT_SHUTDOWN),
            max_hours=resources.max_runtime_hours,
            max_seconds=resources.max_seconds,
            options={
                **({"disk_size": resources.disk_gb} if resources.disk_gb else {}),
                **{k: extra[k] for k in PROVIDER_OPTIONS if extra.get(k) is not None},
            },
        )

    def public(self) -> dict[str, Any]:
        return {"provider": self.provider, "provider_url": self.provider_url}


def provider_token(provider: str) -> str:
    """The provider's API token from the environment or the keyring (registered as secret)."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        with contextlib.suppress(Exception):  # keyring absent or without a backend
            import keyring

            token = (keyring.get_password(KEYRING_SERVICE, provider) or "").strip()
    if not token:
        raise PlatformAuthError(
            f"no API token for the {provider} instance provider",
            platform=provider,
            hint=f"set {TOKEN_ENV}, or store it once: keyring set {KEYRING_SERVICE} {provider}",
        )
    register_secret(token)
    return token


def make_provider(settings: InstanceSettings) -> InstanceProvider:
    cls = PROVIDERS[settings.provider]
    token_source = getattr(cls, "api_token", None)  # a provider's own env var, then ours
    return cls(settings, token_source() if token_source else provider_token(settings.provider))


def instance_name(idempotency_key: str) -> str:
    from neural_jupyter.backends.ssh import remote_name

    return f"nj-{remote_name(idempotency_key)}"[:63]


# --- one instance's life ----------------------------------------------------------------------
@dataclass
class LiveInstance:
    """An instance this process launched; ``terminate`` acts once."""

    provider: InstanceProvider
    instance_id: str
    ledger: Any
    handle: Any
    directory: Path
    terminated: bool = False
    finished: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock)

    def terminate(self) -> None:
        with self.lock:
            if self.terminated:
                return
            try:
                self.provider.terminate(self.instance_id)
            except Exception as exc:
                message = (
                    f"neural-jupyter: could not terminate {self.provider.name} instance "
                    f"{self.instance_id}: {exc}; it may still be billing, terminate it in the "
                    "provider's console"
                )
                print(redact(message), file=sys.stderr)
                raise
            self.terminated = True
            with contextlib.suppress(Exception):
                self.ledger.terminated(self.handle)


_LIVE: dict[str, LiveInstance] = {}  # job id -> instance, for this process
_LIVE_LOCK = threading.Lock()


def _register(job_id: str, live: LiveInstance) -> None:
    with _LIVE_LOCK:
        _LIVE[job_id] = live


def _live_for(job: RemoteJob) -> LiveInstance | None:
    """This process's record of the job's instance, rebuilt from the job's details if this
    process did not launch it (a reattached kernel)."""
    with _LIVE_LOCK:
        live = _LIVE.get(job.id)
    if live is not None or not is_instance_job(job) or final_status(job) is not None:
        return live
    info = job.details["instance"]
    resources = ResourceSpec(
        instance_type=str(info.get("instance_type") or "unknown"),
        extra={"provider": info["provider"], "provider_url": info.get("provider_url")},
    )
    provider = make_provider(InstanceSettings.from_resources(resources))
    live = LiveInstance(
        provider, str(info["id"]), job.ledger, info.get("ledger_handle"), job.directory
    )
    _register(job.id, live)
    return live


@atexit.register
def terminate_all() -> None:
    """Terminate every instance this process launched and still holds (kernel exit)."""
    with _LIVE_LOCK:
        items = list(_LIVE.items())
    for _job_id, live in items:
        with contextlib.suppress(Exception):
            if not live.terminated:
                _write_final(
                    live.directory,
                    RemoteStatus(FAILED, None, "the instance was terminated when Python exited"),
                    overwrite=False,
                )
            live.terminate()


def is_instance_job(job: RemoteJob) -> bool:
    return isinstance(job.details.get("instance"), Mapping)


def final_status(job: RemoteJob) -> RemoteStatus | None:
    """The status recorded when the job's instance went away (None while it lives)."""
    if not is_instance_job(job):
        return None
    path = job.directory / FINAL_STATUS_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return RemoteStatus(
        data["state"], data.get("exit_code"), data.get("message"), bool(data.get("timed_out"))
    )


def _write_final(directory: Path, status: RemoteStatus, *, overwrite: bool = True) -> None:
    path = directory / FINAL_STATUS_FILE
    if path.exists() and not overwrite:
        return
    directory.mkdir(parents=True, exist_ok=True)
    record = {
        "state": status.state,
        "exit_code": status.exit_code,
        "message": status.message,
        "timed_out": status.timed_out,
    }
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(record))
    partial.replace(path)


def job_ended(backend: SSHBackend, job: RemoteJob, status: RemoteStatus) -> None:
    """The job on an instance is over: last logs and artifacts home, then terminate."""
    if not is_instance_job(job):
        return
    live = _live_for(job)
    if live is None:
        return
    with live.lock:
        if live.finished:
            return
        with contextlib.suppress(NeuralError, OSError):
            backend.final_sync(job)
        _write_final(job.directory, status)
        live.finished = True
        live.terminate()


def _watch(backend: SSHBackend, job: RemoteJob, live: LiveInstance, settings: InstanceSettings):
    """Follow the job from a thread so its instance goes when it ends, watched or not."""
    limit = settings.max_seconds
    # past the budget, timeout's grace and time to copy results home, the instance goes
    deadline = time.monotonic() + limit + 180 if limit else None
    while not live.finished:
        time.sleep(settings.poll_seconds)
        if live.finished:
            return
        status = backend.status(job)
        if status.is_terminal:
            job_ended(backend, job, status)
            return
        if deadline is not None and time.monotonic() > deadline:
            job_ended(
                backend,
                job,
                RemoteStatus(FAILED, 124, "stopped at its time limit (instance terminated)", True),
            )
            return


# --- submit ---------------------------------------------------------------------------------
def submit_on_instance(
    backend: SSHBackend, bundle: Bundle, job: RemoteJob, resources: ResourceSpec
) -> Submission:
    """Launch an instance, start the job on it over SSH; terminate it if anything fails."""
    from neural_jupyter.backends.ssh import SSHTarget

    settings = InstanceSettings.from_resources(resources)
    provider = make_provider(settings)
    live = _launch_recorded(provider, settings, job)
    _register(job.id, live)
    try:
        info = wait_until_active(provider, live.instance_id, settings)
        port = int(settings.port or info.port or 22)
        with contextlib.suppress(Exception):
            job.ledger.addressed(live.handle, f"{info.address}:{port}")
        key_file = settings.key_file
        target = SSHTarget(
            hostname=str(info.address),
            port=port,
            user=settings.user,
            key_files=(str(Path(key_file).expanduser()),) if key_file else (),
            known_hosts=str(job.directory / "known_hosts"),
            trust_new_host=True,  # a machine we just created: trust on first use, per job
            spec=f"{provider.name}:{live.instance_id}",
        )
        job.directory.mkdir(parents=True, exist_ok=True)
        wait_for_ssh(backend, target, settings)
        if settings.max_hours:
            schedule_shutdown(backend, target, settings)
        submission = backend.submit_to(target, bundle, job, resources)
    except BaseException as exc:
        status = RemoteStatus(FAILED, None, f"not started: {exc}")
        with contextlib.suppress(Exception):
            _write_final(job.directory, status)
        live.finished = True
        live.terminate()
        raise
    details = {
        **submission.details,
        "instance": {
            **settings.public(),
            "id": live.instance_id,
            "instance_type": settings.instance_type,
            "ledger_handle": live.handle,
        },
    }
    remote = RemoteJob(
        job.id, job.directory, submission.remote_id, {**job.details, **details}, job.ledger
    )
    watcher = threading.Thread(
        target=_watch,
        args=(backend, remote, live, settings),
        name=f"neural-instance-{job.id}",
        daemon=True,
    )
    watcher.start()
    return Submission(submission.remote_id, details)


def _launch_recorded(
    provider: InstanceProvider, settings: InstanceSettings, job: RemoteJob
) -> LiveInstance:
    """Launch (or find the instance an earlier try launched) and record it in the ledger."""
    name = instance_name(job.idempotency_key)
    price = hourly_price(settings)
    hourly = price[0] if price else None
    instance_id = provider.find(name)
    if instance_id is None:
        try:
            instance_id = provider.launch(
                name=name,
                instance_type=settings.instance_type,
                region=settings.region,
                ssh_key_name=settings.ssh_key_name,
            )
        except LaunchError as exc:
            created = exc.instance_id or provider.find(name)
            if created:  # the provider made one anyway: it must not outlive the error
                handle = job.ledger.launched(provider.name, created, hourly)
                orphan = LiveInstance(provider, created, job.ledger, handle, job.directory)
                orphan.finished = True
                orphan.terminate()
            raise
    handle = job.ledger.launched(provider.name, instance_id, hourly)
    return LiveInstance(provider, instance_id, job.ledger, handle, job.directory)


def wait_until_active(
    provider: InstanceProvider, instance_id: str, settings: InstanceSettings
) -> InstanceInfo:
    deadline = time.monotonic() + settings.boot_timeout
    info = InstanceInfo(instance_id, "unknown")
    while True:
        with contextlib.suppress(ProviderTransientError):
            info = provider.describe(instance_id)
            if info.is_active:
                return info
            if info.is_dead:
                raise PlatformError(
                    f"instance {instance_id} went to state {info.status!r} while booting",
                    platform=provider.name,
                )
        if time.monotonic() > deadline:
            raise PlatformError(
                f"instance {instance_id} was not active with an address after "
                f"{settings.boot_timeout:g} s (last state {info.status!r})",
                platform=provider.name,
                hint="extra={'boot_timeout': seconds} waits longer",
            )
        time.sleep(settings.poll_seconds)


def wait_for_ssh(backend: SSHBackend, target: Any, settings: InstanceSettings) -> None:
    """Try SSH until it answers (a fresh instance boots sshd and installs keys late)."""
    deadline = time.monotonic() + settings.ssh_timeout
    pause = 1.0
    while True:
        try:
            backend._pool.get(target, attempts=1)
            return
        except (PlatformConnectionError, PlatformAuthError) as exc:
            if time.monotonic() + pause > deadline:
                raise PlatformConnectionError(
                    f"the instance at {target.address} did not answer SSH within "
                    f"{settings.ssh_timeout:g} s",
                    platform=target.spec.split(":")[0] or "ssh",
                    response=exc.message,
                    hint="extra={'ssh_timeout': seconds} waits longer; check the instance's "
                    "firewall allows port 22 and ssh_key_name names your key",
                ) from exc
        time.sleep(pause)
        pause = min(pause * 2, 10.0)


def schedule_shutdown(backend: SSHBackend, target: Any, settings: InstanceSettings) -> None:
    """Power the instance off from the inside after the budget (a backstop for this
    process dying without terminating it)."""
    from neural_jupyter.backends.ssh import run_command

    minutes = math.ceil((settings.max_hours or 0) * 60) + SHUTDOWN_MARGIN_MINUTES
    command = settings.shutdown_command.replace("{minutes}", str(minutes))
    try:
        with backend._translated(target):
            code, out, err = run_command(backend._pool.get(target), command)
    except NeuralError as exc:
        code, out, err = -1, "", exc.message
    if code != 0:
        print(
            redact(
                f"neural-jupyter: could not schedule the instance's shutdown in {minutes} min "
                f"({(err or out).strip()[-200:]}); it is terminated when the job ends"
            ),
            file=sys.stderr,
        )


# --- plan and cost ----------------------------------------------------------------------------
def hourly_price(settings: InstanceSettings) -> tuple[float, str, str] | None:
    """(USD per hour, source, date): ``extra.hourly_price``, else the price table."""
    if settings.hourly_price is not None:
        return settings.hourly_price, "extra.hourly_price", ""
    from neural_jupyter.pricing import find

    try:
        offer = find(settings.provider, settings.instance_type)
    except ConfigurationError:
        return None
    return offer.hourly_usd, offer.source, offer.date


def estimate(resources: ResourceSpec) -> CostEstimate | None:
    settings = InstanceSettings.from_resources(resources)
    price = hourly_price(settings)
    if price is None:
        return None
    return CostEstimate(
        f"ssh/{settings.provider}",
        settings.instance_type,
        price[0],
        resources.max_runtime_hours or 1.0,
        source=price[1],
        date=price[2],
        note="" if resources.max_runtime_hours else "no --max-hours: one hour shown",
    )


def plan(resources: ResourceSpec) -> dict[str, Any]:
    """The instance part of a dry run (no token needed, nothing sent)."""
    settings = InstanceSettings.from_resources(resources)
    name = instance_name("<idempotency key>")
    launch: dict[str, Any] = {}
    if settings.provider == "generic":
        url = (settings.provider_url or "<provider_url>").rstrip("/")
        launch = {
            "method": "POST",
            "url": f"{url}/instances",
            "json": {
                "name": name,
                "instance_type": settings.instance_type,
                **({"region": settings.region} if settings.region else {}),
                **({"ssh_key_name": settings.ssh_key_name} if settings.ssh_key_name else {}),
            },
        }
    minutes = (
        math.ceil(settings.max_hours * 60) + SHUTDOWN_MARGIN_MINUTES if settings.max_hours else None
    )
    return {
        "host": f"{settings.user}@<new {settings.provider} instance>",
        "instance": {
            "provider": settings.provider,
            "instance_type": settings.instance_type,
            "region": settings.region,
            "launch": launch,
            "token": f"from ${TOKEN_ENV} or the keyring (not shown)",
            "shutdown_after_minutes": minutes,
            "terminated": "when the job ends, fails, is cancelled or times out, if starting "
            "it fails, and when this Python process exits",
        },
    }


# Lambda Cloud and Paperspace: ssh_providers imports this module and adds its classes to
# PROVIDERS when imported, so it comes last
from neural_jupyter.backends import ssh_providers  # noqa: E402, F401
