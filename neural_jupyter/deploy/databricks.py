"""Databricks Model Serving, through ``databricks-sdk`` (wire format only).

Databricks serves MLflow models only, so the model goes as an MLflow model
(``python_function`` flavour loading the serving TorchScript; ``deploy/package.py``):

1. its files are uploaded to DBFS, ``dbfs:/neural-jupyter/models/NAME/DIGEST/``;
2. registered in the workspace model registry as model NAME, version with that ``source``
   (an existing version with the same source is reused);
3. a serving endpoint NAME is created with that version as its served entity
   (``workload_size`` from ``--instance``: Small, Medium or Large; ``--set workload_type=``
   GPU_SMALL... for GPUs; ``--set scale_to_zero=true`` to let it sleep when idle).

The endpoint is looked up by name before it is created, so a retry never makes a second one;
``state.ready`` / ``state.config_update`` give its status; ``query(inputs=...)`` predicts
(MLflow's tensor input); ``served-models/.../logs`` gives its logs; delete removes the
endpoint, the model version, the registered model and the files. Unity Catalog models are
not supported yet (they need the MLflow client's upload protocol); workspaces whose model
registry is Unity Catalog only get the platform's error.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np

from neural_jupyter.backends import get_backend
from neural_jupyter.backends.base import name_for
from neural_jupyter.backends.databricks import FAULTS, Place
from neural_jupyter.deploy import package as packages
from neural_jupyter.deploy.base import Created, DeployRequest, Look, ServingPlatform
from neural_jupyter.errors import ConfigurationError, PlatformError
from neural_jupyter.jobs.endpoints import EndpointRecord, EndpointStatus

PLATFORM = "databricks"
NAME_MAX = 63
STAGING = "dbfs:/neural-jupyter/models"
SIZES = ("Small", "Medium", "Large")


class DatabricksPlatform(ServingPlatform):
    name = PLATFORM
    label = "Databricks Model Serving"
    backend = "databricks"
    default_instance = "Small"
    serving_format = "an MLflow model (python_function flavour, TorchScript inside)"
    poll_seconds = 15.0

    def extra_keys(self) -> Mapping[str, str]:
        return {
            "host": "workspace URL (default: DATABRICKS_HOST / the profile's)",
            "profile": "~/.databrickscfg profile",
            "workload_type": "CPU (default), GPU_SMALL, GPU_MEDIUM, GPU_LARGE...",
            "scale_to_zero": "let the endpoint scale to zero when idle (default false)",
        }

    def endpoint_name(self, base: str) -> str:
        return name_for(base, NAME_MAX, prefix="", allowed="a-zA-Z0-9_-", lower=False)

    def instance_for(self, request_instance: str | None) -> str | None:
        size = (request_instance or self.default_instance or "").capitalize()
        if size not in SIZES:
            raise ConfigurationError(
                f"Databricks Model Serving sizes are {', '.join(SIZES)}, not {request_instance!r}",
                hint="--instance Small (GPUs: --set workload_type=GPU_SMALL)",
            )
        return size

    # --- requests ---------------------------------------------------------------------------
    def _client(self, extra: Mapping[str, Any]) -> Any:
        return get_backend(PLATFORM)._client(
            Place("", host=extra.get("host") or None, profile=extra.get("profile") or None)
        )

    def _source(self, request: DeployRequest) -> str:
        return f"{STAGING}/{request.name}/{request.package.digest[:12]}"

    def endpoint_config(self, request: DeployRequest, version: str) -> dict[str, Any]:
        extra = request.extra
        return {
            "served_entities": [
                {
                    "entity_name": request.name,
                    "entity_version": version,
                    "workload_size": request.instance,
                    "workload_type": str(extra.get("workload_type") or "CPU"),
                    "scale_to_zero_enabled": bool(extra.get("scale_to_zero", False)),
                }
            ]
        }

    def plan(self, request: DeployRequest) -> dict[str, Any]:
        source = self._source(request)
        return {
            "upload": f"{source}/ (MLmodel, model.pt, code/, requirements)",
            "POST /api/2.0/mlflow/registered-models/create": {"name": request.name},
            "POST /api/2.0/mlflow/model-versions/create": {"name": request.name, "source": source},
            "POST /api/2.0/serving-endpoints": {
                "name": request.name,
                "config": self.endpoint_config(request, "<the new version>"),
                "tags": [{"key": "neural-jupyter-key", "value": request.idempotency_key}],
            },
        }

    # --- lifecycle ----------------------------------------------------------------------------
    def create(self, request: DeployRequest, record: EndpointRecord) -> Created:
        client = self._client(request.extra)
        model_dir = packages.mlflow_model(request.package)
        source = self._source(request)
        for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
            target = f"{source}/{path.relative_to(model_dir).as_posix()}"
            data = path.read_bytes()
            FAULTS.call(
                f"uploading {target}",
                lambda t=target, d=data: client.dbfs.upload(t, io.BytesIO(d), overwrite=True),
            )
        self._once(
            "registering the model", lambda: client.model_registry.create_model(request.name)
        )
        version = self._version(client, request.name, source)
        if version is None:
            created = FAULTS.call(
                "creating the model version",
                lambda: client.model_registry.create_model_version(
                    request.name, source, description=f"neural-jupyter {request.idempotency_key}"
                ),
            )
            version = str(created.model_version.version)
        found = self._get(client, request.name)
        if found is None:
            from databricks.sdk.service.serving import EndpointCoreConfigInput, EndpointTag

            config = EndpointCoreConfigInput.from_dict(self.endpoint_config(request, version))
            self._once(
                "creating the serving endpoint",
                lambda: client.serving_endpoints.create(
                    request.name,
                    config=config,
                    tags=[EndpointTag("neural-jupyter-key", request.idempotency_key)],
                ),
            )
        host = client.config.host.rstrip("/")
        return Created(
            request.name,
            f"{host}/serving-endpoints/{request.name}/invocations",
            {
                "host": request.extra.get("host"),
                "profile": request.extra.get("profile"),
                "source": source,
                "version": version,
                "served_model": f"{request.name}-{version}",
            },
        )

    @staticmethod
    def _once(action: str, create: Any) -> None:
        def attempt() -> None:
            try:
                create()
            except Exception as exc:
                code = str(getattr(exc, "error_code", "") or "")
                if code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_CONFLICT") and (
                    "already exists" not in str(exc).lower()
                ):
                    raise

        FAULTS.call(action, attempt)

    @staticmethod
    def _version(client: Any, name: str, source: str) -> str | None:
        def search() -> str | None:
            for found in client.model_registry.search_model_versions(filter=f"name='{name}'"):
                if found.source == source:
                    return str(found.version)
            return None

        return FAULTS.call("looking for the model version", search)

    @staticmethod
    def _get(client: Any, name: str) -> Any:
        def get() -> Any:
            try:
                return client.serving_endpoints.get(name)
            except Exception as exc:
                if type(exc).__name__ in ("NotFound", "ResourceDoesNotExist"):
                    return None
                raise

        return FAULTS.call(f"reading serving endpoint {name}", get)

    def _record_client(self, record: EndpointRecord) -> Any:
        details = record.details
        extra = {k: details.get(k) for k in ("host", "profile")}
        return self._client(extra)

    def look(self, record: EndpointRecord) -> Look:
        found = self._get(self._record_client(record), record.name)
        if found is None:
            return Look(EndpointStatus.DELETED, "the workspace has no such serving endpoint")
        state = found.state
        ready = getattr(getattr(state, "ready", None), "value", None)
        update = getattr(getattr(state, "config_update", None), "value", None)
        if update in ("UPDATE_FAILED", "UPDATE_CANCELED"):
            return Look(EndpointStatus.FAILED, _failure(found) or f"config update {update}")
        if ready == "READY":
            status = (
                EndpointStatus.UPDATING if update == "IN_PROGRESS" else EndpointStatus.IN_SERVICE
            )
            return Look(status, f"{ready}, {update}")
        return Look(EndpointStatus.CREATING, f"{ready}, {update}")

    def invoke(self, record: EndpointRecord, batch: np.ndarray) -> np.ndarray:
        client = self._record_client(record)
        answer = FAULTS.call(
            f"querying {record.name}",
            lambda: client.serving_endpoints.query(record.name, inputs=batch.tolist()),
        )
        predictions = answer.predictions
        if isinstance(predictions, dict):  # a named tensor output
            predictions = next(iter(predictions.values()))
        if predictions is None:
            raise PlatformError(
                f"serving endpoint {record.name} answered without predictions", platform=PLATFORM
            )
        return np.asarray(predictions, dtype=np.float32)

    def logs(self, record: EndpointRecord, tail: int = 100) -> list[str]:
        client = self._record_client(record)
        served = str(record.details.get("served_model") or record.name)
        answer = FAULTS.call(
            f"reading the logs of {record.name}",
            lambda: client.serving_endpoints.logs(record.name, served),
        )
        return (answer.logs or "").splitlines()[-tail:]

    def delete(self, record: EndpointRecord) -> None:
        client = self._record_client(record)
        details = record.details
        steps = [
            ("deleting the serving endpoint", lambda: client.serving_endpoints.delete(record.name))
        ]
        if details.get("version"):
            steps.append(
                (
                    "deleting the model version",
                    lambda: client.model_registry.delete_model_version(
                        record.name, str(details["version"])
                    ),
                )
            )
        steps.append(
            (
                "deleting the registered model",
                lambda: client.model_registry.delete_model(record.name),
            )
        )
        if details.get("source"):
            steps.append(
                (
                    "deleting the model files",
                    lambda: client.dbfs.delete(str(details["source"]), recursive=True),
                )
            )
        for action, call in steps:
            FAULTS.call(action, lambda c=call: _gone_is_fine(c))


def _gone_is_fine(call: Any) -> None:
    try:
        call()
    except Exception as exc:
        if type(exc).__name__ not in ("NotFound", "ResourceDoesNotExist"):
            raise


def _failure(found: Any) -> str | None:
    config = getattr(found, "pending_config", None) or getattr(found, "config", None)
    for entity in getattr(config, "served_entities", None) or []:
        state = getattr(entity, "state", None)
        message = getattr(state, "deployment_state_message", None)
        if message:
            return str(message)
    return None
