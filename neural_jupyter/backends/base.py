"""The backend contract: move a bundle somewhere, start ``python train.py``, bring back its
event stream and artifacts.

Backends know nothing of the job store or widgets: the jobs layer hands them a ``RemoteJob``
(the job's id, its local directory and the remote id a previous ``submit`` returned) and turns
what they report into job-store updates.
"""

from __future__ import annotations

import abc
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from neural_jupyter.errors import ConfigurationError, NeuralError
from neural_jupyter.redaction import MASK, register_secret
from neural_jupyter.runtime.bundle import Bundle
from neural_jupyter.runtime.events import Event, LogLine

# The job states every platform's own states map onto.
PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED, UNKNOWN = (
    "PENDING",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
    "UNKNOWN",
)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})


class InstanceLedger(Protocol):
    """Where a backend records paid instances it launches (the jobs layer provides it), so
    ``%neural_jobs --instances`` can list anything still billing, even after a crash."""

    def launched(self, provider: str, instance_id: str, hourly_price: float | None) -> Any: ...

    def addressed(self, handle: Any, address: str) -> None: ...

    def terminated(self, handle: Any) -> None: ...


class NullLedger:
    """A ledger that forgets (for dry runs and tests that do not look)."""

    def launched(self, provider: str, instance_id: str, hourly_price: float | None) -> Any:
        return instance_id

    def addressed(self, handle: Any, address: str) -> None:
        return None

    def terminated(self, handle: Any) -> None:
        return None


@dataclass(frozen=True)
class RemoteJob:
    """What a backend needs to find a job again (also after a kernel restart).

    ``details`` holds what ``submit`` returned plus ``idempotency_key`` (stable across
    retries and re-runs: derive remote job names from it).
    """

    id: str
    directory: Path  # the job's local directory (bundle, logs, fetched artifacts)
    remote_id: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    ledger: Any = field(default_factory=NullLedger, compare=False, repr=False)

    @property
    def idempotency_key(self) -> str:
        return str(self.details.get("idempotency_key") or self.id)


@dataclass(frozen=True)
class Submission:
    remote_id: str
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RemoteStatus:
    state: str  # one of PENDING ... UNKNOWN
    exit_code: int | None = None
    message: str | None = None  # e.g. the platform's secondary status or failure reason
    timed_out: bool = False

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL


@dataclass(frozen=True)
class ResourceSpec:
    """Where and on what a job runs; each backend reads the fields that apply to it.

    ``validated()`` checks every field and names the argument in its error.
    """

    instance_type: str | None = None
    gpus: int = 0
    gpu_type: str | None = None
    cpus: int | None = None
    memory_gb: float | None = None
    disk_gb: float | None = None
    max_runtime_hours: float | None = None
    spot: bool = False
    region: str | None = None
    gpu_ids: str | None = None  # local: CUDA_VISIBLE_DEVICES
    timeout_seconds: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def validated(self) -> ResourceSpec:
        checks: list[tuple[str, Any, float, bool]] = [
            ("--gpus", self.gpus, 0, True),
            ("--cpus", self.cpus, 1, True),
            ("--memory-gb", self.memory_gb, 0.1, False),
            ("--disk-gb", self.disk_gb, 1, False),
            ("--max-hours", self.max_runtime_hours, 0.001, False),
            ("--timeout", self.timeout_seconds, 0.001, False),
        ]
        for name, value, low, integral in checks:
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigurationError(f"{name} must be a number, got {value!r}")
            if integral and not float(value).is_integer():
                raise ConfigurationError(f"{name} must be a whole number, got {value!r}")
            if value < low:
                raise ConfigurationError(f"{name} must be at least {low:g}, got {value!r}")
        if self.max_runtime_hours is not None and self.max_runtime_hours > 24 * 28:
            raise ConfigurationError(
                f"--max-hours {self.max_runtime_hours:g} is more than 28 days; platforms "
                "cap runs well below that"
            )
        for name, value in (
            ("--instance", self.instance_type),
            ("--region", self.region),
            ("--gpu-type", self.gpu_type),
        ):
            if value is not None and (
                not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value)
            ):
                raise ConfigurationError(f"{name} must be a name without spaces, got {value!r}")
        return self

    @property
    def max_seconds(self) -> float | None:
        """The run's budget: the smaller of --timeout and --max-hours."""
        limits = [
            v
            for v in (
                self.timeout_seconds,
                self.max_runtime_hours * 3600 if self.max_runtime_hours else None,
            )
            if v
        ]
        return min(limits) if limits else None

    def public(self) -> dict[str, Any]:
        """A JSON-friendly copy for the job store and dry runs: secret options are masked
        (and registered, so every later redaction masks their values too)."""
        data = {k: v for k, v in self.__dict__.items() if k != "extra" and v not in (None, {})}
        for key, value in self.extra.items():
            if is_secret_option(key):
                register_secret(str(value))
                value = MASK
            data[f"extra.{key}"] = value
        return data


def is_secret_option(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS) and not lowered.endswith(
        ("_file", "_path", "_name", "_id")
    )


SECRET_WORDS = ("password", "passphrase", "secret", "token", "api_key", "apikey", "credential")


@dataclass(frozen=True)
class CostEstimate:
    """What a job may cost at most (its budget) and per hour; prices from ``pricing.json``."""

    platform: str
    instance_type: str
    hourly_usd: float
    hours: float
    spot: bool = False
    currency: str = "USD"
    source: str = ""
    date: str = ""
    note: str = ""

    @property
    def total_usd(self) -> float:
        return self.hourly_usd * self.hours

    def __str__(self) -> str:
        kind = " (spot)" if self.spot else ""
        return (
            f"{self.instance_type}{kind} on {self.platform}: ${self.hourly_usd:.3f}/h × "
            f"{self.hours:g} h ≤ ${self.total_usd:.2f}"
            + (f" (prices of {self.date})" if self.date else "")
        )


StreamItem = Event | LogLine | None  # None: a heartbeat while nothing new arrived


class Backend(abc.ABC):
    """One place a job can run. Subclasses are registered under ``name``."""

    name: ClassVar[str]
    label: ClassVar[str] = ""
    extra: ClassVar[str | None] = None  # the pip extra providing its SDK

    @abc.abstractmethod
    def submit(self, bundle: Bundle, job: RemoteJob, resources: ResourceSpec) -> Submission:
        """Start the bundle; return the id to find it again."""

    @abc.abstractmethod
    def status(self, job: RemoteJob) -> RemoteStatus:
        """The job's current state."""

    @abc.abstractmethod
    def events(self, job: RemoteJob, *, follow: bool = True) -> Iterator[StreamItem]:
        """The job's output from the beginning, parsed; with ``follow`` until it ends.

        Yields ``None`` now and then while waiting, so a caller can react to Ctrl-C,
        button clicks or its own deadline.
        """

    @abc.abstractmethod
    def cancel(self, job: RemoteJob) -> None:
        """Stop the job for good (the whole process tree / the paid instance)."""

    def fetch_after_success(self, job: RemoteJob) -> Iterator[StreamItem]:
        """Bring a succeeded job's outputs next to its bundle, told as status events."""
        try:
            fetched = self.fetch_artifacts(job, job.directory / "bundle" / "output")
        except NeuralError as exc:
            yield Event("status", {"message": f"could not download the outputs: {exc.message}"})
            return
        if fetched:
            yield Event("status", {"message": f"downloaded {len(fetched)} output file(s)"})

    def bring_back_outputs(self, job: RemoteJob) -> Iterator[StreamItem]:
        """``fetch_after_success`` done once per job (a marker file remembers it), naming
        what came back — for platforms whose stream may be replayed after the job ended."""
        marker = job.directory / "artifacts_fetched"
        if marker.exists() or not job.directory.is_dir():
            return
        output = job.directory / "bundle" / "output"
        try:
            files = self.fetch_artifacts(job, output)
        except NeuralError as exc:
            yield Event("status", {"message": f"could not bring back the outputs: {exc.message}"})
            return
        marker.write_text(json.dumps({name: str(path) for name, path in files.items()}))
        names = ", ".join(sorted(files)) or "none"
        yield Event("status", {"message": f"outputs brought back to {output}: {names}"})

    @staticmethod
    def heartbeats(seconds: float, step: float) -> Iterator[None]:
        """``None`` every ``step`` seconds for ``seconds`` (a poll wait callers can interrupt)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            yield None
            time.sleep(min(step, max(0.0, deadline - time.monotonic())))

    def fetch_artifacts(self, job: RemoteJob, destination: Path) -> dict[str, Path]:
        """Copy the job's output files under ``destination``; name -> local path."""
        return {}

    def estimate_cost(self, resources: ResourceSpec) -> CostEstimate | None:
        """The most ``resources`` may cost (its budget), or None where it costs nothing extra."""
        from neural_jupyter.pricing import estimate

        if not resources.instance_type:
            return None
        hours = resources.max_runtime_hours or 1.0
        try:
            return estimate(self.name, resources.instance_type, hours, spot=resources.spot)
        except ConfigurationError:
            return None  # no list price known; submit() then asks for an explicit --yes

    def plan(self, job: RemoteJob, resources: ResourceSpec) -> dict[str, Any]:
        """The request ``submit`` would send, for ``--dry-run`` (nothing is sent)."""
        return {"backend": self.name, "job": job.id, "resources": resources.public()}

    def check_credentials(self) -> None:
        """Raise ``PlatformAuthError`` if the platform's credential chain is unusable."""
        return None
