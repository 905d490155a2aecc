"""``Endpoint``: a handle on one deployed model (any platform), backed by its job-store record.

``predict(x)`` prepares ``x`` as training did (``jobs.inference``) and asks the platform;
``status`` asks the platform and records what it says; ``logs()``, ``delete()``. Its text
form never shows a token or key (there is none in the record).
"""

from __future__ import annotations

import html
import os
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np

from neural_jupyter.deploy.base import ServingPlatform
from neural_jupyter.errors import ConfigurationError, NeuralError, PlatformError
from neural_jupyter.jobs import inference
from neural_jupyter.jobs.endpoints import EndpointRecord, EndpointStatus, EndpointStore
from neural_jupyter.redaction import redact

ENV_POLL = "NEURAL_JUPYTER_DEPLOY_POLL_SECONDS"


class Endpoint:
    """A deployed model. ``neural_jupyter.deploy(run)`` returns one; so do
    ``neural_jupyter.deploy.get(name)`` and ``neural_jupyter.deploy.endpoints()``."""

    def __init__(self, record: EndpointRecord, platform: ServingPlatform, store: EndpointStore):
        self.record = record
        self.platform = platform
        self.store = store

    # --- what it is -----------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self.record.id

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def url(self) -> str | None:
        """Where it answers (no token or key in it)."""
        return self.record.url

    @property
    def status(self) -> str:
        """The platform's answer now (recorded in the job store), e.g. ``IN_SERVICE``."""
        if self.record.live:
            self.refresh()
        return self.record.status.value

    @property
    def hourly_price(self) -> float | None:
        price = self.record.hourly_price
        return None if price is None else price * self.record.replicas

    @property
    def cost_so_far(self) -> float | None:
        return self.record.cost_so_far()

    def refresh(self) -> EndpointRecord:
        look = self.platform.look(self.record)
        fields: dict[str, Any] = {}
        if look.status is not self.record.status:
            fields["status"] = look.status
        if look.url and look.url != self.record.url:
            fields["url"] = look.url
        if look.status is EndpointStatus.FAILED and look.message:
            fields["error"] = look.message
        if fields:
            self.record = self.store.update(self.record.id, **fields)
        self._message = look.message
        return self.record

    def wait(self, timeout: float = 3600.0) -> Endpoint:
        """Wait until it is in service; raise ``PlatformError`` if it failed (what was made
        for it is deleted) and on ``timeout``. Ctrl-C stops waiting, not the endpoint."""
        deadline = time.monotonic() + timeout
        pause = poll_seconds(self.platform)
        try:
            while True:
                record = self.refresh()
                if record.status is EndpointStatus.IN_SERVICE:
                    return self
                if record.status is EndpointStatus.FAILED:
                    reason = record.error or getattr(self, "_message", None) or "no reason given"
                    self._clean_up_failed(reason)
                    raise PlatformError(
                        f"endpoint {record.name} failed to deploy: {reason}",
                        platform=record.platform,
                        hint="what was created for it was deleted; fix the cause and deploy again",
                    )
                if record.status is EndpointStatus.DELETED:
                    raise PlatformError(
                        f"endpoint {record.name} is gone ({record.error or 'deleted'})",
                        platform=record.platform,
                    )
                if time.monotonic() >= deadline:
                    raise PlatformError(
                        f"endpoint {record.name} is still {record.status.value} after "
                        f"{timeout:g} s; it is recorded and keeps being created (and billed)",
                        platform=record.platform,
                        hint=f"neural_jupyter.deploy.get({record.name!r}).wait() waits again; "
                        f"%neural_undeploy {record.name} deletes it",
                    )
                time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
        except KeyboardInterrupt:
            raise ConfigurationError(
                f"stopped waiting for endpoint {self.name}; it keeps being created (and billed)",
                hint=f"neural_jupyter.deploy.get({self.name!r}).wait() waits again; "
                f"%neural_undeploy {self.name} deletes it",
            ) from None

    def _clean_up_failed(self, reason: str) -> None:
        try:
            self.platform.delete(self.record)
        except NeuralError as exc:
            self.record = self.store.update(
                self.record.id, error=f"{reason}; deleting it failed too: {exc.message}"
            )
            return
        self.record = self.store.update(self.record.id, status=EndpointStatus.DELETED, error=reason)

    # --- using it ---------------------------------------------------------------------------
    def predict(self, x: Any) -> np.ndarray:
        """Predictions for ``x`` (numpy, list, tensor or DataFrame; channels last, or flat
        rows), as a float32 array: what ``TrainingRun.predict`` gives for the same input."""
        if not self.record.live:
            raise ConfigurationError(
                f"endpoint {self.name} was deleted ({self.record.error or 'by request'})",
                hint="deploy the model again",
            )
        meta = self.record.details.get("metadata") or {}
        batch = inference.prepare_input(
            tuple(meta.get("input_shape") or ()), meta.get("input_dtype", "float32"), x
        )
        outputs = self.platform.invoke(self.record, batch)
        self.store.invoked(self.record.id)
        return np.asarray(outputs, dtype=np.float32)

    def logs(self, tail: int = 100) -> list[str]:
        """The endpoint's recent log lines, redacted."""
        return [redact(line) for line in self.platform.logs(self.record, tail)]

    def delete(self, reason: str | None = None) -> None:
        """Delete it on its platform and mark it deleted (no error if it is already gone)."""
        if not self.record.live:
            return
        self.record = self.store.update(self.record.id, status=EndpointStatus.DELETING)
        try:
            self.platform.delete(self.record)
        except BaseException as exc:
            message = exc.message if isinstance(exc, NeuralError) else str(exc)
            self.record = self.store.update(
                self.record.id,
                status=EndpointStatus.UNKNOWN,
                error=f"deleting failed: {message}",
            )
            raise
        self.record = self.store.update(
            self.record.id, status=EndpointStatus.DELETED, error=reason or self.record.error
        )

    # --- display ----------------------------------------------------------------------------
    def row(self, now: datetime | None = None) -> dict[str, Any]:
        """One line of ``%neural_endpoints``."""
        record = self.record
        now = now or datetime.now(timezone.utc)
        return {
            "name": record.name,
            "platform": record.platform,
            "status": record.status.value,
            "model": record.model_name,
            "instance": f"{record.replicas} x {record.instance_type}"
            if record.instance_type
            else "-",
            "age_hours": record.hours(now) if record.live else None,
            "hourly_usd": self.hourly_price,
            "cost_usd": record.cost_so_far(now),
            "idle_hours": _hours_since(record.last_invoked_at or record.created_at, now),
            "url": record.url,
            "id": record.id,
        }

    def __repr__(self) -> str:
        record = self.record
        price = f", ${self.hourly_price:.3f}/h" if self.hourly_price else ""
        return redact(
            f"<Endpoint {record.name} on {record.platform}: {record.status.value}{price}, "
            f"{record.url or 'no URL yet'}>"
        )

    def _repr_html_(self) -> str:
        return f"<code>{html.escape(repr(self))}</code>"


def _hours_since(stamp: str, now: datetime) -> float:
    return max(0.0, (now - datetime.fromisoformat(stamp)).total_seconds() / 3600)


def poll_seconds(target: ServingPlatform) -> float:
    value = os.environ.get(ENV_POLL, "").strip()
    try:
        return max(0.01, float(value)) if value else target.poll_seconds
    except ValueError:
        raise ConfigurationError(f"{ENV_POLL} must be a number of seconds, got {value!r}") from None
