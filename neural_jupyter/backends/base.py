"""The backend contract: move a bundle somewhere, start ``python train.py``, bring back its
event stream and artifacts; and the facts a platform declares about itself (paid or not, how
many jobs at once, its price table, the extra that installs its SDK).

Backends know nothing of the job store or widgets: the jobs layer hands them a ``RemoteJob``
(the job's id, its local directory and the remote id a previous ``submit`` returned) and turns
what they report into job-store updates. File names in the job's directory come from its
``JobDir`` (``job.files``).
"""

from __future__ import annotations

import abc
import hashlib
import importlib
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Protocol

from neural_jupyter.backends.images import Image, table
from neural_jupyter.errors import ConfigurationError, MissingDependencyError, NeuralError
from neural_jupyter.pricing import CostEstimate, estimate
from neural_jupyter.redaction import MASK, harvest, redact, register_secret
from neural_jupyter.runtime.bundle import BUNDLE_FILES, Bundle
from neural_jupyter.runtime.events import Event, LogLine
from neural_jupyter.runtime.jobdir import JobDir


class State:
    """The job states every platform's own states map onto (their one definition)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"
    TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
    # after these, outputs come home: a failed run's checkpoint and a user-code job's
    # exception record (output/result.pkl) are outputs too
    WITH_OUTPUTS = frozenset({SUCCEEDED, FAILED})


PENDING, RUNNING, SUCCEEDED = State.PENDING, State.RUNNING, State.SUCCEEDED
FAILED, CANCELLED, UNKNOWN = State.FAILED, State.CANCELLED, State.UNKNOWN
TERMINAL = State.TERMINAL


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

    @property
    def files(self) -> JobDir:
        """The names of the job's local files."""
        return JobDir(self.directory)

    @property
    def payload_python(self) -> str | None:
        """The Python (major.minor) of the notebook that pickled a function or cell job's
        payload (``details["python"]``), which loads best under the same version; None for
        models and scripts."""
        python = self.details.get("python")
        if self.details.get("kind") not in ("function", "cell") or not python:
            return None
        return ".".join(str(python).split(".")[:2])

    @property
    def bundle_files(self) -> list[str]:
        """The top-level entries of the job's bundle (folders end in ``/``), for plans made
        before the bundle exists: ``details["bundle_files"]``, else a model bundle's."""
        return list(self.details.get("bundle_files") or BUNDLE_FILES)


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
    # a job on several machines: the node whose failure failed the job (its host), and
    # ``message`` says what it reported (it, not node 0's stream, is the job's error)
    failed_node: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL

    def record(self) -> dict[str, Any]:
        """As kept in a job directory's record (``JobDir.final_status``), message redacted."""
        record = dict(self.__dict__)
        if record.get("message"):
            record["message"] = redact(record["message"])
        return record

    @classmethod
    def from_record(cls, record: Any) -> RemoteStatus | None:
        if not isinstance(record, Mapping) or "state" not in record:
            return None
        return cls(
            str(record["state"]),
            record.get("exit_code"),
            record.get("message"),
            bool(record.get("timed_out")),
            record.get("failed_node"),
        )


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
    # data-parallel layout: machines × processes on each (torchrun); 1 × 1 is one process
    nodes: int = 1
    procs_per_node: int = 1
    extra: Mapping[str, Any] = field(default_factory=dict)

    def validated(self) -> ResourceSpec:
        from neural_jupyter import validation as v

        v.integer("--gpus", self.gpus, 0, v.MAX_GPUS)
        v.integer("--nodes", self.nodes, 1, v.MAX_NODES)
        v.integer("--procs-per-node", self.procs_per_node, 1, v.MAX_PROCS_PER_NODE)
        v.optional_integer("--cpus", self.cpus, 1, 4096)
        if self.memory_gb is not None:
            v.number("--memory-gb", self.memory_gb, 0.1, 1e6)
        if self.disk_gb is not None:
            v.number("--disk-gb", self.disk_gb, 1, 1e6)
        if self.max_runtime_hours is not None:
            v.number(
                "--max-hours", self.max_runtime_hours, 0.001, 24 * 28, unit=" (28 days at most)"
            )
        v.seconds("--timeout", self.timeout_seconds)
        v.platform_options(self.extra)
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
    def world_size(self) -> int:
        """How many training processes in all (``nodes × procs_per_node``)."""
        return self.nodes * self.procs_per_node

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
        """A JSON-friendly copy for the job store and dry runs: secret options are masked, and
        so is any secret inside another option's value (a setup command's ``TOKEN=...``, a URL's
        password), by name, pattern and value; all of them are registered, so every later
        redaction masks their values too (printed on their own by the job, say)."""
        data = {
            k: v
            for k, v in self.__dict__.items()
            if k != "extra" and v not in (None, {}) and not (k in _ONE_BY_DEFAULT and v == 1)
        }
        for key, value in self.extra.items():
            if is_secret_option(key) and value not in (None, "", True, False):
                register_secret(str(value))
                value = MASK
            elif isinstance(value, str):
                harvest(value)
                value = redact(value)
            data[f"extra.{key}"] = value
        return data


def _no_platforms(min_nodes: int) -> list[str]:
    return []


# The platforms that launch torchrun on at least N machines, for refusals' hints: the registry
# (backends/__init__.py), which knows every platform, sets it when it loads.
data_parallel_platforms: Callable[[int], list[str]] = _no_platforms

# left out of public() at their default, so the idempotency keys of jobs submitted before
# they existed stay the same
_ONE_BY_DEFAULT = ("nodes", "procs_per_node")


def number_option(extra: Mapping[str, Any], name: str, default: float) -> float:
    """The platform option ``--set name=`` as a number (``default`` when not given)."""
    value = extra.get(name, default)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"--set {name} must be a number, got {value!r}") from None


def is_secret_option(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS) and not lowered.endswith(
        ("_file", "_path", "_name", "_id")
    )


SECRET_WORDS = ("password", "passphrase", "secret", "token", "api_key", "apikey", "credential")


StreamItem = Event | LogLine | None  # None: a heartbeat while nothing new arrived


def name_for(
    key: str,
    limit: int,
    *,
    prefix: str = "nj-",
    allowed: str = "a-z0-9-",
    lower: bool = True,
    exact: bool = False,
) -> str:
    """A platform-valid name derived from an idempotency key (same key, same name): the key
    with other characters than ``allowed`` as dashes, at most ``limit`` long; when cut (or,
    with ``exact``, changed at all) it ends in a digest of the key, so names never collide."""
    slug = re.sub(f"[^{allowed}]+", "-", key.lower() if lower else key).strip("-")
    name = prefix + slug
    if len(name) <= limit and not (exact and slug != key):
        return name
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"{name[: limit - len(digest) - 1].rstrip('-')}-{digest}"


def status_event(message: str, **fields: Any) -> Event:
    """A ``status`` event (the monitor's status line) with optional extra fields."""
    return Event(
        "status", {"message": message, **{k: v for k, v in fields.items() if v is not None}}
    )


def heartbeats(seconds: float, step: float = 0.25) -> Iterator[None]:
    """``None`` every ``step`` seconds for ``seconds`` (a poll wait callers can interrupt)."""
    deadline = time.monotonic() + seconds
    while True:
        yield None
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(step, left))


_bring_back_locks: dict[str, threading.Lock] = {}
_bring_back_guard = threading.Lock()


def _lock_for(directory: Path) -> threading.Lock:
    with _bring_back_guard:
        return _bring_back_locks.setdefault(str(directory.resolve()), threading.Lock())


class Backend(abc.ABC):
    """One place a job can run. Subclasses are registered under ``name`` and declare their
    facts as class attributes, readable without an instance (``backends.backend_class``)."""

    name: ClassVar[str]
    label: ClassVar[str] = ""
    extra: ClassVar[str | None] = None  # the pip extra providing its SDK
    sdk_modules: ClassVar[Mapping[str, str]] = {}  # module imported at first use -> package
    paid: ClassVar[bool] = False  # bills per job: a submit checks its budget against a price
    max_parallel: ClassVar[int | None] = None  # jobs it runs at once (None: no known limit)
    # data-parallel training: the most machines one job may span (0: it does not launch
    # torchrun, so only 1 × 1); procs_per_node processes run on each
    max_nodes: ClassVar[int] = 0
    price_table: ClassVar[str | None] = None  # its name in pricing's prices.json
    image_option: ClassVar[str] = "image"  # the extra that names another image

    @classmethod
    def is_paid(cls, resources: ResourceSpec) -> bool:
        """Whether a job with ``resources`` is billed per job (a price must be known or
        ``--yes`` given)."""
        return cls.paid

    @classmethod
    def sdk(cls, module: str | None = None) -> ModuleType:
        """The platform's SDK ``module`` (default: the first one), imported at first use;
        a missing one raises ``MissingDependencyError`` naming the extra to install."""
        modules = cls.sdk_modules
        for name in [module] if module else list(modules):
            try:
                imported = importlib.import_module(name)
            except ImportError:
                package = modules.get(name, name.split(".")[0])
                raise MissingDependencyError(
                    package, cls.extra or cls.name, f"The {cls.label or cls.name} backend"
                ) from None
            if module:
                return imported
        return importlib.import_module(next(iter(modules)))

    @classmethod
    def require_sdk(cls) -> None:
        """Raise ``MissingDependencyError`` unless every SDK module is installed."""
        for name in cls.sdk_modules:
            cls.sdk(name)

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

    def image_row(self, job: RemoteJob) -> Image:
        """The row of the platform's image table (``images.table``) a job runs in: the
        default, or for a function or cell the newest whose Python is the notebook's. A
        function pickled here loads only under the same Python minor version: with no such
        image, submitting it is an error now rather than a failed (paid) job later."""
        rows = table(self.name)
        python = job.payload_python
        found = rows.for_python(python) if python else None
        if found is not None or python is None:
            return found or rows.default()
        if job.details.get("kind") == "function":
            raise ConfigurationError(
                f"{self.label or self.name}'s prebuilt images run Python "
                f"{', '.join(rows.pythons)}, this notebook {python}: a function travels "
                f"pickled and loads only under the Python version that pickled it",
                hint=f"give an image with Python {python} (--set {self.image_option}=...), "
                "run the code as a script (run_script / %neural_script), or use a notebook "
                f"kernel with Python {' or '.join(rows.pythons)}",
            )
        return rows.default()

    def bring_back_outputs(self, job: RemoteJob) -> Iterator[StreamItem]:
        """A finished job's outputs into its bundle's ``output/``, once per job (a marker
        remembers it), told as a status event. The one way outputs come home: a platform's
        stream calls it at the end, the jobs layer after the terminal state (then it is a
        no-op), a rented instance before it goes."""
        files = job.files
        if not files.root.is_dir():
            return
        with _lock_for(files.root):
            if files.outputs_fetched.exists():
                return
            try:
                found = self.fetch_artifacts(job, files.output)
            except NeuralError as exc:
                message = f"could not bring back the outputs: {exc.message}"
            else:
                files.write_json(files.outputs_fetched, {k: str(v) for k, v in found.items()})
                message = f"outputs brought back to {files.output}: " + (
                    ", ".join(sorted(found)) or "none"
                )
        yield status_event(message)

    def fetch_artifacts(self, job: RemoteJob, destination: Path) -> dict[str, Path]:
        """Copy the job's output files under ``destination``; artifact name -> local path."""
        return {}

    def check_layout(self, resources: ResourceSpec, framework: str | None = None) -> None:
        """Refuse (``ConfigurationError``) a ``nodes × procs_per_node`` layout this platform
        or the framework cannot run, before anything starts."""
        if resources.world_size == 1:
            return
        layout = f"--nodes {resources.nodes} × --procs-per-node {resources.procs_per_node}"
        if framework not in (None, "pytorch"):
            raise ConfigurationError(
                f"{layout}: data-parallel training is for the pytorch framework; "
                f"a {framework} model trains as one process",
                hint="compile with --framework pytorch, or drop --nodes/--procs-per-node",
            )
        if self.max_nodes == 0:
            raise ConfigurationError(
                f"{layout}: the {self.name} platform does not launch data-parallel "
                "training (torchrun) yet",
                hint="run it as one process, or on a platform that does ("
                + ", ".join(data_parallel_platforms(1))
                + "; see docs/distributed.md)",
            )
        if resources.nodes > self.max_nodes:
            raise ConfigurationError(
                f"--nodes {resources.nodes}: the {self.name} platform runs a job on at most "
                f"{self.max_nodes} machine(s)",
                hint="--procs-per-node sets the processes on each machine; several machines: "
                + ", ".join(data_parallel_platforms(2))
                + " (docs/distributed.md)",
            )

    def capacity(self, resources: ResourceSpec) -> int | None:
        """How many jobs with ``resources`` it runs at once (None: no known limit); a sweep
        runs at most this many trials at a time. A platform that can ask (a Ray cluster's
        resources) overrides it; the default is the declared ``max_parallel``."""
        return self.max_parallel

    def estimate_cost(self, resources: ResourceSpec) -> CostEstimate | None:
        """The most ``resources`` may cost (its budget), or None where it costs nothing extra."""
        if not self.price_table or not resources.instance_type:
            return None
        hours = resources.max_runtime_hours or 1.0
        try:
            cost = estimate(self.price_table, resources.instance_type, hours, spot=resources.spot)
        except ConfigurationError:
            return None  # no list price known; submit() then asks for an explicit --yes
        return cost.times(resources.nodes)  # each node one machine of that type

    def plan(self, job: RemoteJob, resources: ResourceSpec) -> dict[str, Any]:
        """The request ``submit`` would send, for ``--dry-run`` (nothing is sent)."""
        return {"platform": self.name, "job": job.id, "resources": resources.public()}

    def check_credentials(self) -> None:
        """Raise ``PlatformAuthError`` if the platform's credential chain is unusable."""
        return None
