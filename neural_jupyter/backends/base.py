"""The backend contract: move a bundle somewhere, start ``python train.py``, bring back its
event stream and artifacts.

Backends know nothing of the job store or widgets: the jobs layer hands them a ``RemoteJob``
(the job's id, its local directory and the remote id a previous ``submit`` returned) and turns
what they report into job-store updates.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

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


@dataclass(frozen=True)
class RemoteJob:
    """What a backend needs to find a job again (also after a kernel restart)."""

    id: str
    directory: Path  # the job's local directory (bundle, logs, fetched artifacts)
    remote_id: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


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
    """Where and on what a job runs; each backend reads the fields that apply to it."""

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

    def fetch_artifacts(self, job: RemoteJob, destination: Path) -> dict[str, Path]:
        """Copy the job's output files under ``destination``; name -> local path."""
        return {}

    def estimate_cost(self, resources: ResourceSpec) -> Any:
        """A cost estimate for ``resources``, or None where running costs nothing extra."""
        return None

    def check_credentials(self) -> None:
        """Raise ``PlatformAuthError`` if the platform's credential chain is unusable."""
        return None
