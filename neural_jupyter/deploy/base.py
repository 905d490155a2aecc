"""The serving-platform contract: what each platform module provides (only its wire format),
and the facts it declares. The shared lifecycle (``deploy/lifecycle.py``) does the rest: the
idempotency key, the record in the job store, the cost guard, waiting until in service,
``max_hours``.

A platform's ``create`` must be idempotent by the endpoint's name (derived from the
idempotency key): before creating anything it looks for what a previous try created, so a
retried or re-run create never makes a second endpoint.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from neural_jupyter.errors import ConfigurationError
from neural_jupyter.jobs.endpoints import EndpointRecord, EndpointStatus
from neural_jupyter.pricing import CostEstimate


@dataclass(frozen=True)
class DeployRequest:
    """Everything a platform needs to create an endpoint (validated)."""

    name: str
    idempotency_key: str
    package: Any  # deploy.package.ModelPackage
    instance: str | None
    replicas: int = 1
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Created:
    """What ``create`` made: the platform's id for it, its URL and what to keep."""

    remote_id: str
    url: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Look:
    """One look at an endpoint: our status, the platform's words for it, and its URL."""

    status: EndpointStatus
    message: str | None = None
    url: str | None = None


class ServingPlatform(abc.ABC):
    """One place a model can be served. Subclasses are registered in ``PLATFORMS``."""

    name: ClassVar[str]
    label: ClassVar[str]
    backend: ClassVar[str | None] = None  # the training backend whose SDK and faults it shares
    paid: ClassVar[bool] = True
    default_instance: ClassVar[str | None] = None
    serving_format: ClassVar[str] = ""  # what it serves, for docs and dry runs
    poll_seconds: ClassVar[float] = 10.0

    # --- facts ------------------------------------------------------------------------------
    def require_sdk(self) -> None:
        """``MissingDependencyError`` naming the extra unless the platform's SDK is there."""
        if self.backend:
            from neural_jupyter.backends import backend_class

            backend_class(self.backend).require_sdk()

    def instance_for(self, request_instance: str | None) -> str | None:
        return request_instance or self.default_instance

    def hourly_price(self, instance: str | None, replicas: int) -> CostEstimate | None:
        """The list price per hour of ``replicas`` x ``instance`` (None: unknown or free)."""
        return None

    def check_extra(self, extra: Mapping[str, Any]) -> None:
        known = self.extra_keys()
        for key in extra:
            if key not in known:
                from neural_jupyter.dsl.suggest import did_you_mean

                raise ConfigurationError(
                    f"unknown {self.label} deploy setting '{key}'",
                    hint=did_you_mean(key, known)
                    or ("known: " + ", ".join(sorted(known)) if known else "it takes none"),
                )

    def extra_keys(self) -> Mapping[str, str]:
        """Settings ``--set KEY=VALUE`` understands, with what each means."""
        return {}

    def endpoint_name(self, base: str) -> str:
        """A name valid on the platform (lower case letters, digits and dashes by default)."""
        return base

    # --- wire format --------------------------------------------------------------------------
    @abc.abstractmethod
    def plan(self, request: DeployRequest) -> dict[str, Any]:
        """The exact requests ``create`` would send (nothing is sent)."""

    @abc.abstractmethod
    def create(self, request: DeployRequest, record: EndpointRecord) -> Created:
        """Upload the model and create the endpoint (idempotent by ``request.name``)."""

    @abc.abstractmethod
    def look(self, record: EndpointRecord) -> Look:
        """The endpoint's state now."""

    @abc.abstractmethod
    def invoke(self, record: EndpointRecord, batch: np.ndarray) -> np.ndarray:
        """Predictions for a prepared batch (``jobs.inference.prepare_input``)."""

    def logs(self, record: EndpointRecord, tail: int = 100) -> list[str]:
        """The endpoint's recent log lines (redacted by the caller)."""
        return []

    @abc.abstractmethod
    def delete(self, record: EndpointRecord) -> None:
        """Delete the endpoint and what ``create`` made for it; no error if already gone."""

    def close(self, record: EndpointRecord) -> None:
        """Release what this process holds for it (the local server)."""
        return None


PLATFORMS: dict[str, str] = {
    "local": "neural_jupyter.deploy.local:LocalPlatform",
    "sagemaker": "neural_jupyter.deploy.sagemaker:SageMakerPlatform",
    "vertex": "neural_jupyter.deploy.vertex:VertexPlatform",
    "azureml": "neural_jupyter.deploy.azureml:AzureMLPlatform",
    "databricks": "neural_jupyter.deploy.databricks:DatabricksPlatform",
}
_instances: dict[str, ServingPlatform] = {}


def platform(name: str) -> ServingPlatform:
    """The serving platform called ``name`` (one instance per process)."""
    key = str(name).lower()
    if key not in PLATFORMS:
        from neural_jupyter.dsl.suggest import did_you_mean

        raise ConfigurationError(
            f"cannot deploy to {name!r}",
            hint=did_you_mean(key, PLATFORMS) or "platforms: " + ", ".join(PLATFORMS),
        )
    if key not in _instances:
        module, _, cls = PLATFORMS[key].partition(":")
        _instances[key] = getattr(importlib.import_module(module), cls)()
    return _instances[key]
