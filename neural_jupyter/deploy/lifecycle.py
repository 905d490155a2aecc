"""The shared endpoint lifecycle: ``deploy`` → (dry run | cost guard → record → create → wait
until in service) → ``Endpoint``; ``undeploy``; ``endpoints``; and the housekeeping every entry
point runs first (``housekeeping``): local endpoints whose kernel ended are marked DELETED, and
endpoints past their ``max_hours`` are deleted.

``max_hours`` has no mechanism on the platforms' side (none of SageMaker, Vertex AI, Azure ML
or Databricks deletes an endpoint after a time), so the deadline is recorded and enforced by
neural-jupyter: a timer in the kernel that deployed it, and ``housekeeping`` whenever the
package looks at its endpoints (``%load_ext``, ``deploy``, ``endpoints``, ``undeploy``). If no
kernel with neural-jupyter runs at the deadline, the endpoint keeps billing until one does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import socket
import threading
import warnings
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from neural_jupyter.deploy import package as packages
from neural_jupyter.deploy.base import DeployRequest, ServingPlatform, platform
from neural_jupyter.deploy.endpoint import Endpoint
from neural_jupyter.errors import ConfigurationError, JobStoreError, NeuralError, PlatformError
from neural_jupyter.jobs.endpoints import EndpointRecord, EndpointStatus, EndpointStore
from neural_jupyter.pricing import CostEstimate
from neural_jupyter.redaction import redact, redact_value

COST_CONFIRM_THRESHOLD = 5.0  # USD per day; above it a deploy needs yes=True (--yes)
DEFAULT_TIMEOUT = 3600.0  # seconds to wait for an endpoint to come into service
MAX_HOURS_WARNING = (
    "max_hours is enforced by neural-jupyter, not by {label}: the kernel that deployed it "
    "deletes it at {deadline} UTC while it runs, and otherwise the next time neural-jupyter "
    "is loaded (%load_ext neural_jupyter) or lists its endpoints. Until then it keeps billing; "
    "%neural_undeploy {name} deletes it now."
)


class MaxHoursWarning(UserWarning):
    """``max_hours`` needs a running kernel to be enforced."""


@dataclasses.dataclass
class DeployPlan:
    """What a deploy would do: the exact requests (redacted), the price, the key."""

    platform: str
    name: str
    model: str
    instance: str | None
    replicas: int
    requests: dict[str, Any]
    cost: CostEstimate | None
    idempotency_key: str
    existing: str | None = None
    max_hours: float | None = None

    @property
    def daily_usd(self) -> float | None:
        if self.cost is None:
            return None
        return self.cost.hourly_usd * min(24.0, self.max_hours or 24.0)

    def __str__(self) -> str:
        lines = [
            f"Dry run: deploy {self.model} to {self.platform} as {self.name!r} (nothing was sent)",
            f"  idempotency key: {self.idempotency_key}",
        ]
        if self.existing:
            lines.append(f"  already deployed as endpoint {self.existing}")
        if self.cost is not None:
            lines.append(
                f"  price: ${self.cost.hourly_usd:.3f}/h for {self.replicas} x {self.instance} "
                f"(list price of {self.cost.date}; ${self.daily_usd:.2f} per day)"
            )
        elif self.platform == "local":
            lines.append("  price: nothing (served by this kernel)")
        else:
            lines.append(f"  price: unknown for {self.instance} (deploying needs --yes)")
        if self.max_hours:
            lines.append(f"  deleted after {self.max_hours:g} h (enforced by neural-jupyter)")
        lines.append("  requests:")
        lines.extend(
            "    " + line for line in json.dumps(self.requests, indent=2, default=str).splitlines()
        )
        return redact("\n".join(lines))

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))


def idempotency_key(platform_name: str, digest: str, name: str) -> str:
    """Same model file, platform and name → the same key (a re-run cell finds the endpoint)."""
    payload = f"{platform_name}\0{digest}\0{name}"
    return f"{platform_name}-{hashlib.sha256(payload.encode()).hexdigest()[:20]}"


def default_name(model_name: str, digest: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", model_name.lower()).strip("-")[:20] or "model"
    return f"{slug}-{digest[:8]}"


def deploy(
    run_or_job_or_path: Any,
    platform: str = "local",
    instance: str | None = None,
    replicas: int = 1,
    name: str | None = None,
    max_hours: float | None = None,
    *,
    extra: Mapping[str, Any] | None = None,
    dry_run: bool = False,
    yes: bool = False,
    wait: bool = True,
    timeout: float | None = None,
    confirm_above: float = COST_CONFIRM_THRESHOLD,
    store: Any = None,
) -> Endpoint | DeployPlan:
    """Serve a trained model on ``platform`` and return its ``Endpoint`` (see docs/deploy.md).

    ``dry_run`` returns the ``DeployPlan`` (exact requests, hourly price) and sends nothing. A
    deploy whose price per day is above ``confirm_above`` dollars, or unknown on a paid
    platform, needs ``yes=True``. Deploying the same model to the same platform under the same
    name again returns the endpoint already there. ``max_hours`` deletes it after that long
    (enforced by neural-jupyter; see the module docstring).
    """
    records = EndpointStore(store)
    housekeeping(records)
    target = _platform(platform)
    replicas = _replicas(replicas)
    max_hours = _max_hours(max_hours)
    extra = dict(extra or {})
    given_price = extra.pop("hourly_usd", None)
    target.check_extra(extra)
    package = packages.resolve(run_or_job_or_path, records.store)
    if target.name != "local":
        package.require_torchscript(target.label)
    chosen = target.endpoint_name(name or default_name(package.model_name, package.digest))
    key = idempotency_key(target.name, package.digest, chosen)
    instance = target.instance_for(instance)
    request = DeployRequest(chosen, key, package, instance, replicas, extra)
    existing = records.find(key)
    cost = _given_price(target, instance, replicas, given_price) or target.hourly_price(
        instance, replicas
    )
    plan = DeployPlan(
        target.name,
        chosen,
        package.model_name,
        instance,
        replicas,
        redact_value(_plain(target.plan(request))),
        cost,
        key,
        existing.id if existing else None,
        max_hours,
    )
    if dry_run:
        return plan
    if existing is not None:
        endpoint = Endpoint(existing, target, records)
        if existing.status is not EndpointStatus.FAILED:
            print(f"{package.model_name} is already deployed to {target.name} as {chosen!r}")
            return endpoint.wait(timeout or DEFAULT_TIMEOUT) if wait else endpoint
    check_cost(plan, yes, confirm_above, target)
    target.require_sdk()
    record, created = records.create_or_get(
        idempotency_key=key,
        name=chosen,
        platform=target.name,
        job_id=package.job_id,
        model_name=package.model_name,
        artifact=str(package.torchscript or ""),
        artifact_digest=package.digest,
        instance_type=instance,
        replicas=replicas,
        hourly_price=cost.hourly_usd / replicas if cost else None,
        expires_at=_deadline(max_hours),
        owner_pid=os.getpid(),
        owner_host=socket.gethostname(),
        details={"metadata": package.metadata, "extra": extra},
    )
    endpoint = Endpoint(record, target, records)
    if record.status is EndpointStatus.FAILED:
        endpoint.delete()
        return deploy(
            run_or_job_or_path, platform, instance, replicas, name, max_hours,
            extra=extra, yes=yes, wait=wait, timeout=timeout, confirm_above=confirm_above,
            store=records.store,
        )  # fmt: skip
    if created or not record.remote_id:
        try:
            made = target.create(request, record)
        except BaseException as exc:
            _create_failed(records, record, target, exc)
            raise
        record = records.update(
            record.id,
            remote_id=made.remote_id,
            url=made.url,
            details=dict(made.details),
            status=EndpointStatus.CREATING,
        )
        endpoint = Endpoint(record, target, records)
        if target.name == "local":
            from neural_jupyter.deploy.local import on_exit

            on_exit(record.id, _closed_at_exit(records, record.id))
    if max_hours:
        warnings.warn(
            MAX_HOURS_WARNING.format(
                label=target.label, deadline=record.expires_at[:19], name=record.name
            ),
            MaxHoursWarning,
            stacklevel=2,
        )
        _arm_timer(record, records)
    if not wait:
        return endpoint
    return endpoint.wait(timeout or DEFAULT_TIMEOUT)


def _create_failed(
    records: EndpointStore, record: EndpointRecord, target: ServingPlatform, exc: BaseException
) -> None:
    """A create that raised: clean up what it may have made, and keep the record honest."""
    message = exc.message if isinstance(exc, NeuralError) else f"{type(exc).__name__}: {exc}"
    try:
        target.delete(record)
    except Exception as cleanup:
        records.update(
            record.id,
            status=EndpointStatus.FAILED,
            error=f"{message}; cleaning up failed too: {cleanup}",
        )
        return
    records.update(record.id, status=EndpointStatus.DELETED, error=message)


def _closed_at_exit(records: EndpointStore, endpoint_id: str) -> Any:
    def closed() -> None:
        records.update(endpoint_id, status=EndpointStatus.DELETED, error="its kernel exited")

    return closed


def check_cost(plan: DeployPlan, yes: bool, confirm_above: float, target: ServingPlatform) -> None:
    """Refuse (``ConfigurationError``) a paid deploy above ``confirm_above`` dollars per day,
    or of unknown price, unless ``yes``."""
    if yes or plan.existing or not target.paid:
        return
    if plan.cost is None:
        raise ConfigurationError(
            f"no list price is known for {plan.instance} on {target.label}, so the cost of "
            "this endpoint cannot be checked against the confirmation threshold",
            hint="add --yes (yes=True) to deploy anyway; it bills every hour until deleted",
        )
    if plan.daily_usd is not None and plan.daily_usd > confirm_above:
        raise ConfigurationError(
            f"this endpoint costs ${plan.cost.hourly_usd:.3f}/h, ${plan.daily_usd:.2f} per day, "
            f"above the ${confirm_above:.2f} per day confirmation threshold",
            hint="add --yes (yes=True) to deploy; max_hours / --max-hours limits its life; "
            "%config DeployMagics.confirm_cost_above sets the threshold",
        )


# --- listing and deleting ---------------------------------------------------------------------
def endpoints(
    *, include_deleted: bool = False, refresh: bool = False, store: Any = None
) -> list[Endpoint]:
    """Every endpoint the job store knows, newest first (all platforms, all kernels).
    ``refresh`` asks each live one's platform for its state (network calls)."""
    records = EndpointStore(store)
    housekeeping(records)
    found = []
    for record in records.list(include_deleted=include_deleted):
        endpoint = Endpoint(record, platform(record.platform), records)
        if refresh and record.live:
            with contextlib.suppress(NeuralError):  # shown as last recorded
                endpoint.refresh()
        found.append(endpoint)
    return found


def get(name_or_id: str, store: Any = None) -> Endpoint:
    """The endpoint with this name or id (a live one first)."""
    records = EndpointStore(store)
    housekeeping(records)
    record = records.get(name_or_id)
    return Endpoint(record, platform(record.platform), records)


def undeploy(name_or_id: str, store: Any = None) -> Endpoint:
    """Delete the live endpoint with this name or id (everything made for it)."""
    records = EndpointStore(store)
    housekeeping(records)
    record = records.get(name_or_id, live_only=True)
    endpoint = Endpoint(record, platform(record.platform), records)
    endpoint.delete()
    return endpoint


# --- housekeeping -----------------------------------------------------------------------------
def housekeeping(records: EndpointStore | None = None) -> list[str]:
    """Reconcile local endpoints whose kernel ended, delete endpoints past their deadline;
    what was done, one line each (also printed)."""
    try:
        records = records or EndpointStore()
        live = records.list()
    except JobStoreError:
        return []
    from neural_jupyter.deploy.local import owner_alive

    done = []
    now = datetime.now(timezone.utc)
    for record in live:
        if record.platform == "local" and not owner_alive(record):
            records.update(
                record.id, status=EndpointStatus.DELETED, error="its kernel ended without it"
            )
            done.append(f"local endpoint {record.name}: its kernel ended; marked deleted")
        elif record.expires_at and datetime.fromisoformat(record.expires_at) <= now:
            endpoint = Endpoint(record, platform(record.platform), records)
            try:
                endpoint.delete(reason="max_hours reached")
                done.append(
                    f"endpoint {record.name} on {record.platform}: max_hours reached, deleted"
                )
            except NeuralError as exc:
                done.append(
                    f"endpoint {record.name} on {record.platform} is past its max_hours but "
                    f"could not be deleted: {exc.message}"
                )
    for line in done:
        print(f"neural-jupyter: {line}")
    return done


_timers: dict[str, threading.Timer] = {}


def _arm_timer(record: EndpointRecord, records: EndpointStore) -> None:
    if not record.expires_at or record.id in _timers:
        return
    seconds = (
        datetime.fromisoformat(record.expires_at) - datetime.now(timezone.utc)
    ).total_seconds()

    def expire() -> None:
        _timers.pop(record.id, None)
        housekeeping(EndpointStore(records.store))

    timer = threading.Timer(max(0.0, seconds), expire)
    timer.daemon = True
    _timers[record.id] = timer
    timer.start()


def _deadline(max_hours: float | None) -> str | None:
    if not max_hours:
        return None
    end = datetime.now(timezone.utc) + timedelta(hours=max_hours)
    return end.isoformat(timespec="microseconds")


# --- checks -----------------------------------------------------------------------------------
def _given_price(
    target: ServingPlatform, instance: str | None, replicas: int, given: Any
) -> CostEstimate | None:
    """``--set hourly_usd=PRICE``: the price of one instance, as the user knows it."""
    if given is None:
        return None
    try:
        price = float(given)
    except (TypeError, ValueError):
        price = -1.0
    if not price >= 0:
        raise ConfigurationError(f"--set hourly_usd must be a price in dollars, got {given!r}")
    return CostEstimate(
        target.name, f"{replicas} x {instance}", price * replicas, 1.0, source="--set hourly_usd",
        date="given",
    )  # fmt: skip


def _platform(name: Any) -> ServingPlatform:
    if not isinstance(name, str):
        raise ConfigurationError(f"platform must be a name such as 'local', not {name!r}")
    return platform(name)


def _replicas(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"replicas must be a whole number of at least 1, not {value!r}")
    return value


def _max_hours(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(f"max_hours must be a positive number of hours, not {value!r}")
    return float(value)


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


__all__ = ["DeployPlan", "PlatformError", "deploy", "endpoints", "get", "undeploy"]
