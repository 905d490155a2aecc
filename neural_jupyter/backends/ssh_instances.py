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

Providers (``generic``, ``lambda``, ``paperspace``) live in ``ssh_providers``. The SSH side
(connections, commands) is the ``Any`` this module is handed; it imports nothing of
``ssh``, which imports it.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neural_jupyter.backends import base
from neural_jupyter.backends.base import State
from neural_jupyter.backends.ssh_providers import (  # noqa: F401 (the public names of instances)
    BOOT_TIMEOUT,
    EXTRA_KEYS,
    KEYRING_SERVICE,
    PROVIDERS,
    SHUTDOWN_MARGIN_MINUTES,
    TOKEN_ENV,
    GenericProvider,
    InstanceInfo,
    InstanceProvider,
    InstanceSettings,
    LaunchError,
    ProviderTransientError,
    make_provider,
    parse_instance,
    provider_token,
    remote_name,
)
from neural_jupyter.errors import (
    ConfigurationError,
    NeuralError,
    PlatformAuthError,
    PlatformConnectionError,
    PlatformError,
)
from neural_jupyter.redaction import redact
from neural_jupyter.runtime.bundle import Bundle
from neural_jupyter.runtime.jobdir import JobDir


def instance_name(idempotency_key: str) -> str:
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


def _live_for(job: base.RemoteJob) -> LiveInstance | None:
    """This process's record of the job's instance, rebuilt from the job's details if this
    process did not launch it (a reattached kernel)."""
    with _LIVE_LOCK:
        live = _LIVE.get(job.id)
    if live is not None or not is_instance_job(job) or final_status(job) is not None:
        return live
    info = job.details["instance"]
    resources = base.ResourceSpec(
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
                    base.RemoteStatus(
                        State.FAILED, None, "the instance was terminated when Python exited"
                    ),
                    overwrite=False,
                )
            live.terminate()


def is_instance_job(job: base.RemoteJob) -> bool:
    return isinstance(job.details.get("instance"), Mapping)


def final_status(job: base.RemoteJob) -> base.RemoteStatus | None:
    """The status recorded when the job's instance went away (None while it lives)."""
    if not is_instance_job(job):
        return None
    return base.RemoteStatus.from_record(job.files.read_json(job.files.final_status))


def _write_final(directory: Path, status: base.RemoteStatus, *, overwrite: bool = True) -> None:
    files = JobDir(directory)
    if overwrite or not files.final_status.exists():
        files.write_json(files.final_status, status.record())


def job_ended(backend: Any, job: base.RemoteJob, status: base.RemoteStatus) -> None:
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


def _watch(backend: Any, job: base.RemoteJob, live: LiveInstance, settings: InstanceSettings):
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
                base.RemoteStatus(
                    State.FAILED, 124, "stopped at its time limit (instance terminated)", True
                ),
            )
            return


# --- submit ---------------------------------------------------------------------------------
def submit_on_instance(
    backend: Any, bundle: Bundle, job: base.RemoteJob, resources: base.ResourceSpec
) -> base.Submission:
    """Launch an instance, start the job on it over SSH; terminate it if anything fails."""
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
        target = backend.target(
            hostname=str(info.address),
            port=port,
            user=settings.user,
            key_files=(str(Path(key_file).expanduser()),) if key_file else (),
            known_hosts=str(job.files.known_hosts),
            trust_new_host=True,  # a machine we just created: trust on first use, per job
            spec=f"{provider.name}:{live.instance_id}",
        )
        job.directory.mkdir(parents=True, exist_ok=True)
        wait_for_ssh(backend, target, settings)
        if settings.max_hours:
            schedule_shutdown(backend, target, settings)
        submission = backend.submit_to(target, bundle, job, resources)
    except BaseException as exc:
        status = base.RemoteStatus(State.FAILED, None, f"not started: {exc}")
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
    remote = base.RemoteJob(
        job.id, job.directory, submission.remote_id, {**job.details, **details}, job.ledger
    )
    watcher = threading.Thread(
        target=_watch,
        args=(backend, remote, live, settings),
        name=f"neural-instance-{job.id}",
        daemon=True,
    )
    watcher.start()
    return base.Submission(submission.remote_id, details)


def _launch_recorded(
    provider: InstanceProvider, settings: InstanceSettings, job: base.RemoteJob
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


def wait_for_ssh(backend: Any, target: Any, settings: InstanceSettings) -> None:
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


def schedule_shutdown(backend: Any, target: Any, settings: InstanceSettings) -> None:
    """Power the instance off from the inside after the budget (a backstop for this
    process dying without terminating it)."""
    minutes = math.ceil((settings.max_hours or 0) * 60) + SHUTDOWN_MARGIN_MINUTES
    command = settings.shutdown_command.replace("{minutes}", str(minutes))
    try:
        code, out, err = backend.run(target, command)
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


def estimate(resources: base.ResourceSpec) -> base.CostEstimate | None:
    settings = InstanceSettings.from_resources(resources)
    price = hourly_price(settings)
    if price is None:
        return None
    return base.CostEstimate(
        f"ssh/{settings.provider}",
        settings.instance_type,
        price[0],
        resources.max_runtime_hours or 1.0,
        source=price[1],
        date=price[2],
        note="" if resources.max_runtime_hours else "no --max-hours: one hour shown",
    )


def plan(resources: base.ResourceSpec) -> dict[str, Any]:
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
