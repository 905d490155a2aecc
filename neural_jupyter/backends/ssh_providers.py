"""Instance providers for the ssh backend: places that rent machines by the hour through a
REST API (``InstanceProvider``), and their settings. ``ssh_instances`` uses them to launch a
machine, run the job on it over SSH and terminate it exactly once on every path.

Picked with ``--set provider=generic|lambda|paperspace`` (plus ``--instance``, ``--region``,
``--set ssh_key_name=...``). ``generic`` speaks the minimal API described on
``GenericProvider``.

Lambda Cloud, API v1 (``https://cloud.lambda.ai/api/v1``; the older
``cloud.lambdalabs.com/api/v1`` host serves the same API), ``Authorization: Bearer <key>``:

* ``GET /instance-types`` (picks a region with capacity when no ``--region`` is given),
  ``GET /ssh-keys`` (picks your key when no ``ssh_key_name`` is given);
* ``POST /instance-operations/launch`` ``{region_name, instance_type_name, ssh_key_names: [k],
  quantity: 1, name}`` → ``{"data": {"instance_ids": [id]}}``;
* ``GET /instances/{id}`` → ``{"data": {id, name, status, ip, ...}}`` (status ``booting``,
  ``active``, ``unhealthy``, ``terminating``, ``terminated``, ``preempted``);
* ``GET /instances`` (find a launch by its name), ``POST /instance-operations/terminate``
  ``{"instance_ids": [id]}``;
* errors: ``{"error": {"code", "message", "suggestion"}}``: ``global/invalid-api-key`` and
  401/403 → ``PlatformAuthError``; ``instance-operations/launch/insufficient-capacity`` and
  ``global/quota-exceeded`` → ``QuotaError``; 429 and 5xx → retried (a launch only when it
  cannot have created anything).

Paperspace (DigitalOcean), API v1 (``https://api.paperspace.com/v1``; the older Core API at
``api.paperspace.io`` with ``X-Api-Key`` was retired in 2024), ``Authorization: Bearer <key>``:

* ``POST /machines`` ``{name, machineType, templateId, diskSize, region, publicIpType:
  "dynamic", startOnCreate: true, emailPassword: false}`` → ``{"event": ..., "data": {id,
  state, ...}}``;
* ``GET /machines/{id}`` → ``{id, name, state, publicIp, ...}`` (state ``provisioning``,
  ``starting``, ``serviceready``, ``ready``, ``stopping``, ``off``, ...);
* ``GET /machines?name=N`` → ``{"items": [...]}``, ``DELETE /machines/{id}``;
* errors: ``{"message": ...}`` (sometimes with ``code``/``status``): 401/403 →
  ``PlatformAuthError``; 402, or a 400/409/422 whose message speaks of capacity or quota →
  ``QuotaError``; 429 and 5xx → retried as above.

The API key comes from ``LAMBDA_API_KEY`` / ``PAPERSPACE_API_KEY``, else the generic
``NEURAL_JUPYTER_PROVIDER_TOKEN`` or the keyring (service ``neural-jupyter``, user =
provider name); it is registered with the redaction filter and sent only in the header. The
API address can be changed with ``extra={"provider_url": ...}`` or ``NEURAL_JUPYTER_LAMBDA_URL``
/ ``NEURAL_JUPYTER_PAPERSPACE_URL`` (tests point them at local fakes).
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from neural_jupyter.backends.base import ResourceSpec
from neural_jupyter.backends.retry import TRANSIENT_HTTP_STATUS, call_with_retries
from neural_jupyter.errors import (
    ConfigurationError,
    MissingDependencyError,
    PlatformAuthError,
    PlatformConnectionError,
    PlatformError,
    QuotaError,
)
from neural_jupyter.redaction import register_secret


def remote_name(idempotency_key: str) -> str:
    """A directory name from the job's idempotency key (stable across retries)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", idempotency_key).strip(".-")
    return name[:120] or "job"


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


# what a failed call means (RestProvider._classify)
AUTH, QUOTA, RETRY, REFUSED, GONE, FAILED = "auth", "quota", "retry", "refused", "gone", "failed"
_QUOTA_WORDS = ("capacity", "quota", "out of stock", "unavailable", "not available", "insufficient")


class RestProvider(InstanceProvider):
    """A provider with a JSON REST API and a bearer API key (the shared plumbing)."""

    label: ClassVar[str]  # for messages: "Lambda Cloud"
    default_url: ClassVar[str]
    url_env: ClassVar[str]  # overrides default_url (tests)
    token_env: ClassVar[str]  # the provider's own variable for its API key

    @classmethod
    def api_token(cls) -> str:
        """``token_env``, else ``NEURAL_JUPYTER_PROVIDER_TOKEN`` or the keyring."""
        token = os.environ.get(cls.token_env, "").strip()
        if token:
            register_secret(token)
            return token
        try:
            return provider_token(cls.name)
        except PlatformAuthError:
            raise PlatformAuthError(
                f"no API key for {cls.label}",
                platform=cls.name,
                hint=f"set {cls.token_env} (or {TOKEN_ENV}), or store it once: "
                f"keyring set {KEYRING_SERVICE} {cls.name}",
            ) from None

    def __init__(self, settings: InstanceSettings, token: str) -> None:
        super().__init__(settings, token)
        try:
            import requests
        except ImportError:
            raise MissingDependencyError("requests", "ssh", "Launching instances") from None
        self._requests = requests
        url = settings.provider_url or os.environ.get(self.url_env) or self.default_url
        self.url = url.rstrip("/")
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {token}"
        self._session.headers["Accept"] = "application/json"

    # --- subclasses say what their answers mean ---------------------------------------------
    def _error_fields(self, payload: Any) -> tuple[str, str]:
        """(code, message) of an error answer."""
        if not isinstance(payload, dict):
            return "", ""
        error = payload.get("error")
        if isinstance(error, dict):
            return str(error.get("code") or ""), str(error.get("message") or "")
        message = payload.get("message") or (error if isinstance(error, str) else "")
        return str(payload.get("code") or ""), str(message or "")

    def _classify(self, status: int, code: str, message: str) -> str:
        if status in (401, 403):
            return AUTH
        if status in (429, 503):
            return REFUSED  # turned away before anything happened
        if status in TRANSIENT_HTTP_STATUS:
            return RETRY
        if status == 404:
            return GONE
        if status == 402:
            return QUOTA
        if status in (400, 409, 422) and any(w in message.lower() for w in _QUOTA_WORDS):
            return QUOTA
        return FAILED

    # --- HTTP -------------------------------------------------------------------------------
    def _call(
        self, method: str, path: str, body: Any = None, *, launching: bool = False
    ) -> Any | None:
        """The JSON answer; None when the thing asked about is gone (not for a launch)."""
        requests = self._requests
        url = self.url + path
        try:
            response = self._session.request(
                method, url, json=body, timeout=HTTP_TIMEOUT, allow_redirects=False
            )
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
        if status < 300:
            return _json(response.text)
        text = response.text[:1000]
        if status < 400:  # a redirect would drop the key or turn a POST into a GET
            raise PlatformError(
                f"{method} {url} answered {status} (moved)",
                platform=self.name,
                response=response.headers.get("Location") or text,
                hint="set extra provider_url to the API's current address",
            )
        code, message = self._error_fields(_json(response.text))
        kind = self._classify(status, code, message)
        summary = f"{method} {url} answered {status}" + "".join(
            f": {part}" for part in (code, message) if part
        )
        if kind == AUTH:
            raise PlatformAuthError(
                f"{summary} (check the API key)",
                platform=self.name,
                response=text,
                hint=f"set {self.token_env}, or store it: keyring set {KEYRING_SERVICE} "
                f"{self.name}",
            )
        if kind in (RETRY, REFUSED):
            raise ProviderTransientError(
                summary,
                platform=self.name,
                response=text,
                maybe_created=launching and kind == RETRY,
            )
        if kind == QUOTA:
            raise QuotaError(summary, platform=self.name, response=text, hint=self._quota_hint())
        if kind == GONE and not launching:
            return None
        error = LaunchError if launching else PlatformError
        raise error(summary, platform=self.name, response=text)

    def _call_retried(self, method: str, path: str, body: Any = None) -> Any | None:
        return call_with_retries(
            lambda: self._call(method, path, body),
            lambda exc: isinstance(exc, ProviderTransientError),
        )

    def _launch_call(self, path: str, body: dict[str, Any], instance_type: str) -> Any:
        """POST a launch: retried only while it cannot have created an instance."""
        try:
            return call_with_retries(
                lambda: self._call("POST", path, body, launching=True),
                lambda exc: isinstance(exc, ProviderTransientError) and not exc.maybe_created,
            )
        except ProviderTransientError as exc:
            # maybe created: ssh_instances looks for it by name and terminates it
            raise LaunchError(
                f"launching a {instance_type} instance failed: {exc.message}",
                platform=self.name,
                response=exc.response,
                instance_id=_instance_id(exc.response),
            ) from exc

    def _quota_hint(self) -> str:
        return "try another --instance type or --region, or later"

    # --- InstanceProvider -------------------------------------------------------------------
    def terminate(self, instance_id: str) -> None:
        try:
            self._terminate(instance_id)
        except PlatformAuthError:
            raise
        except PlatformError:
            # the refusal may mean it is already on its way out
            with contextlib.suppress(PlatformError):
                if self.describe(instance_id).is_dead:
                    return
            raise

    def _terminate(self, instance_id: str) -> None:
        raise NotImplementedError

    def find(self, name: str) -> str | None:
        try:
            items = self._list(name)
        except PlatformError:
            return None
        for item in items:
            if isinstance(item, dict) and item.get("name") == name and item.get("id"):
                info = self._info(str(item["id"]), item)
                if not info.is_dead:
                    return info.id
        return None

    def _list(self, name: str) -> list[Any]:
        raise NotImplementedError

    def _info(self, instance_id: str, data: dict[str, Any]) -> InstanceInfo:
        raise NotImplementedError


# --- the minimal generic API ---------------------------------------------------------------------
class GenericProvider(RestProvider):
    """A minimal REST API, with ``Authorization: Bearer <token>``:

    ``POST /instances`` ``{name, instance_type, region, ssh_key_name}`` → ``{id}``;
    ``GET /instances/{id}`` → ``{status, ip | floating_ip | public_ip | accessIPv4 |
    addresses{...}}``; ``DELETE /instances/{id}``; optionally ``GET /instances?name=N``.
    Responses may be wrapped in ``{"instance": ...}`` or ``{"data": ...}``.
    """

    name = "generic"
    label = "the generic instance provider"
    default_url = ""
    url_env = "NEURAL_JUPYTER_PROVIDER_URL"
    token_env = TOKEN_ENV

    def __init__(self, settings: InstanceSettings, token: str) -> None:
        if not (settings.provider_url or os.environ.get(self.url_env)):
            raise ConfigurationError(
                "the generic instance provider needs its API address",
                hint="extra={'provider_url': 'https://api.example.com/v1'}",
            )
        super().__init__(settings, token)

    def launch(
        self, *, name: str, instance_type: str, region: str | None, ssh_key_name: str | None
    ) -> str:
        body = {"name": name, "instance_type": instance_type}
        body.update({k: v for k, v in (("region", region), ("ssh_key_name", ssh_key_name)) if v})
        payload = self._launch_call("/instances", body, instance_type)
        instance_id = _instance_id(json.dumps(payload))
        if not instance_id:
            raise LaunchError(
                "the provider accepted the launch but returned no instance id",
                platform=self.name,
                response=str(payload)[:500],
            )
        return instance_id

    def describe(self, instance_id: str) -> InstanceInfo:
        payload = self._call_retried("GET", f"/instances/{instance_id}")
        if payload is None:
            return InstanceInfo(instance_id, "gone")
        return parse_instance(instance_id, payload)

    def _info(self, instance_id: str, data: dict[str, Any]) -> InstanceInfo:
        return parse_instance(instance_id, data)

    def _terminate(self, instance_id: str) -> None:
        self._call_retried("DELETE", f"/instances/{instance_id}")  # gone: fine

    def _list(self, name: str) -> list[Any]:
        payload = _unwrap(self._call_retried("GET", f"/instances?name={name}") or {})
        items = payload.get("instances", []) if isinstance(payload, dict) else payload
        return [_unwrap(item) for item in items] if isinstance(items, list) else []


# --- Lambda Cloud ------------------------------------------------------------------------------
class LambdaProvider(RestProvider):
    """Lambda Cloud on-demand instances (``--set provider=lambda``)."""

    name = "lambda"
    label = "Lambda Cloud"
    default_url = "https://cloud.lambda.ai/api/v1"
    url_env = "NEURAL_JUPYTER_LAMBDA_URL"
    token_env = "LAMBDA_API_KEY"

    AUTH_CODES = frozenset({"global/invalid-api-key", "global/account-inactive"})
    QUOTA_CODES = frozenset(
        {"instance-operations/launch/insufficient-capacity", "global/quota-exceeded"}
    )

    def _classify(self, status: int, code: str, message: str) -> str:
        if code in self.AUTH_CODES:
            return AUTH
        if code in self.QUOTA_CODES:
            return QUOTA
        if code == "global/object-does-not-exist":
            return GONE
        return super()._classify(status, code, message)

    def _quota_hint(self) -> str:
        return (
            "Lambda has no capacity for it now: leave out --region to take a region that has "
            "some, try another --instance type, or try later"
        )

    def launch(
        self, *, name: str, instance_type: str, region: str | None, ssh_key_name: str | None
    ) -> str:
        body = {
            "region_name": region or self.region_with_capacity(instance_type),
            "instance_type_name": instance_type,
            "ssh_key_names": [ssh_key_name or self.ssh_key_name()],
            "quantity": 1,
            "name": name,
        }
        payload = self._launch_call("/instance-operations/launch", body, instance_type)
        data = payload.get("data") if isinstance(payload, dict) else None
        ids = data.get("instance_ids") if isinstance(data, dict) else None
        if not ids:
            raise LaunchError(
                "Lambda accepted the launch but returned no instance id",
                platform=self.name,
                response=str(payload)[:500],
            )
        return str(ids[0])

    def region_with_capacity(self, instance_type: str) -> str:
        """The first region where ``instance_type`` can be launched now."""
        payload = self._call_retried("GET", "/instance-types") or {}
        types = payload.get("data") if isinstance(payload, dict) else None
        types = types if isinstance(types, dict) else {}
        if instance_type not in types:
            from neural_jupyter.dsl.suggest import did_you_mean

            raise ConfigurationError(
                f"Lambda Cloud has no instance type {instance_type!r}",
                hint=did_you_mean(instance_type, types)
                or "known: " + ", ".join(sorted(types)[:12]),
            )
        regions = types[instance_type].get("regions_with_capacity_available") or []
        names = [r.get("name") for r in regions if isinstance(r, dict) and r.get("name")]
        if not names:
            raise QuotaError(
                f"no Lambda Cloud region has capacity for {instance_type} right now",
                platform=self.name,
                hint="try another --instance type, or later",
            )
        return str(names[0])

    def ssh_key_name(self) -> str:
        """The registered key matching ``key_file``'s public key, or the only one there is."""
        payload = self._call_retried("GET", "/ssh-keys") or {}
        keys = payload.get("data") if isinstance(payload, dict) else None
        keys = [k for k in keys or [] if isinstance(k, dict) and k.get("name")]
        mine = _public_key(self.settings.key_file)
        for key in keys:
            if mine and str(key.get("public_key") or "").split()[:2] == mine:
                return str(key["name"])
        if len(keys) == 1:
            return str(keys[0]["name"])
        names = ", ".join(str(k["name"]) for k in keys)
        raise ConfigurationError(
            "Lambda Cloud needs the name of the SSH key to install on the instance",
            hint=f"--set ssh_key_name=NAME (registered: {names})"
            if keys
            else "add your public key at https://cloud.lambda.ai/ssh-keys, then "
            "--set ssh_key_name=NAME",
        )

    def describe(self, instance_id: str) -> InstanceInfo:
        payload = self._call_retried("GET", f"/instances/{instance_id}")
        if payload is None:
            return InstanceInfo(instance_id, "gone")
        data = payload.get("data") if isinstance(payload, dict) else None
        return self._info(instance_id, data if isinstance(data, dict) else {})

    def _info(self, instance_id: str, data: dict[str, Any]) -> InstanceInfo:
        status = str(data.get("status") or "unknown")
        if status == "preempted":
            status = "terminated"
        address = data.get("ip") or None
        return InstanceInfo(str(data.get("id") or instance_id), status, address)

    def _terminate(self, instance_id: str) -> None:
        self._call_retried(
            "POST", "/instance-operations/terminate", {"instance_ids": [instance_id]}
        )

    def _list(self, name: str) -> list[Any]:
        payload = self._call_retried("GET", "/instances") or {}
        data = payload.get("data") if isinstance(payload, dict) else None
        return data if isinstance(data, list) else []


# --- Paperspace --------------------------------------------------------------------------------
class PaperspaceProvider(RestProvider):
    """Paperspace (DigitalOcean) machines (``--set provider=paperspace``)."""

    name = "paperspace"
    label = "Paperspace"
    default_url = "https://api.paperspace.com/v1"
    url_env = "NEURAL_JUPYTER_PAPERSPACE_URL"
    token_env = "PAPERSPACE_API_KEY"
    DEFAULT_REGION = "ny2"
    DEFAULT_DISK_GB = 50

    def launch(
        self, *, name: str, instance_type: str, region: str | None, ssh_key_name: str | None
    ) -> str:
        # ssh_key_name is not part of this API: a new machine gets the SSH keys of the account
        options = self.settings.options
        template = options.get("template_id")
        if not template:
            raise ConfigurationError(
                "a Paperspace machine needs an OS template",
                hint="--set template_id=ID (an ML-in-a-Box or Ubuntu template from the "
                "console's Create Machine page or `pspace os-template list`)",
            )
        try:
            disk = int(float(options.get("disk_size") or self.DEFAULT_DISK_GB))
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"extra 'disk_size' must be a number of GB, got {options.get('disk_size')!r}"
            ) from None
        body = {
            "name": name,
            "machineType": instance_type,
            "templateId": str(template),
            "diskSize": disk,
            "region": region or self.DEFAULT_REGION,
            "publicIpType": "dynamic",
            "startOnCreate": True,
            "emailPassword": False,
        }
        payload = self._launch_call("/machines", body, instance_type)
        data = payload.get("data") if isinstance(payload, dict) else None
        data = data if isinstance(data, dict) else payload
        machine_id = data.get("id") if isinstance(data, dict) else None
        if not machine_id:
            raise LaunchError(
                "Paperspace accepted the machine but returned no id",
                platform=self.name,
                response=str(payload)[:500],
            )
        return str(machine_id)

    def describe(self, instance_id: str) -> InstanceInfo:
        payload = self._call_retried("GET", f"/machines/{instance_id}")
        if payload is None:
            return InstanceInfo(instance_id, "gone")
        if isinstance(payload, dict) and isinstance(payload.get("data"), dict):
            payload = payload["data"]
        return self._info(instance_id, payload if isinstance(payload, dict) else {})

    def _info(self, instance_id: str, data: dict[str, Any]) -> InstanceInfo:
        status = "deleted" if data.get("dtDeleted") else str(data.get("state") or "unknown")
        address = data.get("publicIp") or None
        return InstanceInfo(str(data.get("id") or instance_id), status, address)

    def _terminate(self, instance_id: str) -> None:
        self._call_retried("DELETE", f"/machines/{instance_id}")

    def _list(self, name: str) -> list[Any]:
        from urllib.parse import quote

        payload = self._call_retried("GET", f"/machines?name={quote(name)}") or {}
        items = payload.get("items") if isinstance(payload, dict) else payload
        return items if isinstance(items, list) else []


def _public_key(key_file: str | None) -> list[str] | None:
    """``[type, base64]`` of ``key_file``'s ``.pub`` file, if there is one."""
    if not key_file:
        return None
    try:
        fields = Path(str(Path(key_file).expanduser()) + ".pub").read_text().split()
    except OSError:
        return None
    return fields[:2] if len(fields) >= 2 else None


PROVIDERS: dict[str, type[InstanceProvider]] = {
    "generic": GenericProvider,
    "lambda": LambdaProvider,
    "paperspace": PaperspaceProvider,
}
