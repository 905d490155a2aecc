"""Azure Machine Learning managed online endpoints, through ``azure-ai-ml`` (wire format only).

Served as an MLflow model (``python_function`` flavour loading the serving TorchScript;
``deploy/package.py``): Azure ML deploys MLflow models without a scoring script or an
environment ("no-code deployment"), building the environment from the model's own
requirements, so nothing of ours runs in the container but the model's loader module.

Requests: register the model (``models.create_or_update``, type ``mlflow_model``, name NAME,
version 1; found first by name and version) → create the endpoint NAME (key auth) → create
deployment ``blue`` (``--instance`` VM size x ``replicas``) without waiting; each look reads
the deployment's provisioning state and, once it succeeded, routes all traffic to it. Predict:
``online_endpoints.invoke`` with ``{"input_data": [...]}`` (MLflow's tensor input); logs:
``online_deployments.get_logs``; delete: the endpoint (and its deployment) and the model
version is archived (Azure ML keeps registered models; archived ones are hidden). Workspace
settings as for training jobs (``backends/azureml.py``).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from neural_jupyter.backends import get_backend
from neural_jupyter.backends.azureml import FAULTS
from neural_jupyter.backends.base import name_for
from neural_jupyter.deploy import package as packages
from neural_jupyter.deploy import prices
from neural_jupyter.deploy.base import Created, DeployRequest, Look, ServingPlatform
from neural_jupyter.errors import PlatformError
from neural_jupyter.jobs.endpoints import EndpointRecord, EndpointStatus

PLATFORM = "azureml"
NAME_MAX = 32  # online endpoint names: 3-32 characters, a letter first, unique in the region
DEPLOYMENT = "blue"
STATES = {
    "Creating": EndpointStatus.CREATING,
    "Updating": EndpointStatus.UPDATING,
    "Scaling": EndpointStatus.UPDATING,
    "Deleting": EndpointStatus.DELETING,
    "Succeeded": EndpointStatus.IN_SERVICE,
    "Failed": EndpointStatus.FAILED,
    "Canceled": EndpointStatus.FAILED,
}


def model_version(digest: str) -> str:
    """The registered model's version: a number from the model's digest (same model, same
    version; another model under the same name, another version)."""
    return str(int(digest[:8] or "1", 16) or 1)


class AzureMLPlatform(ServingPlatform):
    name = PLATFORM
    label = "Azure ML"
    backend = "azureml"
    default_instance = "Standard_DS3_v2"
    serving_format = "an MLflow model (no-code deployment, TorchScript inside)"
    poll_seconds = 15.0

    def extra_keys(self) -> Mapping[str, str]:
        return {
            "subscription_id": "Azure subscription",
            "resource_group": "resource group of the workspace",
            "workspace": "Azure ML workspace",
            "config": "path of the workspace's config.json",
        }

    def endpoint_name(self, base: str) -> str:
        name = name_for(base, NAME_MAX, prefix="")
        return name if name[:1].isalpha() else f"e{name[: NAME_MAX - 1]}"

    def hourly_price(self, instance: str | None, replicas: int) -> Any:
        return prices.hourly(PLATFORM, instance, replicas)

    # --- requests ---------------------------------------------------------------------------
    def _backend(self) -> Any:
        return get_backend(PLATFORM)

    def _client(self, settings: Mapping[str, Any]) -> Any:
        backend = self._backend()
        return backend.client(*backend.workspace(settings))

    def resources(self, request: DeployRequest) -> dict[str, Any]:
        tags = {"neural-jupyter-key": request.idempotency_key}
        version = model_version(request.package.digest)
        return {
            "model": {
                "name": request.name,
                "version": version,
                "type": "mlflow_model",
                "tags": tags,
            },
            "endpoint": {"name": request.name, "auth_mode": "key", "tags": tags},
            "deployment": {
                "name": DEPLOYMENT,
                "endpoint_name": request.name,
                "model": f"azureml:{request.name}:{version}",
                "instance_type": request.instance,
                "instance_count": request.replicas,
            },
            "traffic": {DEPLOYMENT: 100},
        }

    def plan(self, request: DeployRequest) -> dict[str, Any]:
        return self.resources(request)

    # --- lifecycle ----------------------------------------------------------------------------
    def create(self, request: DeployRequest, record: EndpointRecord) -> Created:
        aml = self._backend().sdk()
        entities = aml.entities
        ml = self._client(request.extra)
        wanted = self.resources(request)
        model_dir = packages.mlflow_model(request.package)
        version = wanted["model"]["version"]
        if self._get(lambda: ml.models.get(request.name, version=version)) is None:
            model = entities.Model(path=str(model_dir), **wanted["model"])
            FAULTS.call("registering the model", lambda: ml.models.create_or_update(model))
        endpoint = self._get(lambda: ml.online_endpoints.get(request.name))
        if endpoint is None:
            body = entities.ManagedOnlineEndpoint(**wanted["endpoint"])
            endpoint = FAULTS.call(
                "creating the online endpoint",
                lambda: ml.online_endpoints.begin_create_or_update(body).result(),
            )
        if self._get(lambda: ml.online_deployments.get(DEPLOYMENT, request.name)) is None:
            deployment = entities.ManagedOnlineDeployment(**wanted["deployment"])
            FAULTS.call(
                "creating the deployment",
                lambda: ml.online_deployments.begin_create_or_update(deployment),
            )
        return Created(
            str(getattr(endpoint, "id", None) or request.name),
            getattr(endpoint, "scoring_uri", None),
            {
                **{k: v for k, v in request.extra.items() if k in self.extra_keys()},
                "workspace_tuple": list(self._backend().workspace(request.extra)),
                "model_version": version,
            },
        )

    @staticmethod
    def _get(read: Any) -> Any:
        def attempt() -> Any:
            try:
                return read()
            except Exception as exc:
                if (
                    type(exc).__name__ in ("ResourceNotFoundError",)
                    or "not found" in str(exc).lower()
                ):
                    return None
                raise

        return FAULTS.call("looking for what an earlier try created", attempt)

    def _record_client(self, record: EndpointRecord) -> Any:
        sub, group, space = record.details.get("workspace_tuple") or self._backend().workspace(
            record.details.get("extra") or {}
        )
        return self._backend().client(sub, group, space)

    def look(self, record: EndpointRecord) -> Look:
        ml = self._record_client(record)
        endpoint = self._get(lambda: ml.online_endpoints.get(record.name))
        if endpoint is None:
            return Look(EndpointStatus.DELETED, "Azure ML has no such endpoint (any more)")
        deployment = self._get(lambda: ml.online_deployments.get(DEPLOYMENT, record.name))
        if deployment is None:
            return Look(EndpointStatus.CREATING, "no deployment yet", endpoint.scoring_uri)
        state = str(getattr(deployment.provisioning_state, "value", deployment.provisioning_state))
        status = STATES.get(state, EndpointStatus.UNKNOWN)
        if status is EndpointStatus.FAILED:
            return Look(status, self._failure(ml, record) or f"deployment {state}")
        if status is EndpointStatus.IN_SERVICE and (endpoint.traffic or {}).get(DEPLOYMENT) != 100:
            endpoint.traffic = {DEPLOYMENT: 100}
            FAULTS.call(
                "routing traffic to the deployment",
                lambda: ml.online_endpoints.begin_create_or_update(endpoint).result(),
            )
        return Look(status, state, endpoint.scoring_uri)

    def _failure(self, ml: Any, record: EndpointRecord) -> str | None:
        try:
            text = ml.online_deployments.get_logs(DEPLOYMENT, record.name, lines=20)
        except Exception:
            return None
        lines = [line for line in str(text or "").splitlines() if line.strip()]
        return lines[-1] if lines else None

    def invoke(self, record: EndpointRecord, batch: np.ndarray) -> np.ndarray:
        ml = self._record_client(record)
        with tempfile.TemporaryDirectory(prefix="neural-invoke-") as folder:
            request = Path(folder) / "request.json"
            request.write_text(json.dumps({"input_data": batch.tolist()}))
            text = FAULTS.call(
                f"invoking {record.name}",
                lambda: ml.online_endpoints.invoke(
                    endpoint_name=record.name, request_file=str(request), deployment_name=DEPLOYMENT
                ),
            )
        try:
            answer = json.loads(text)
            if isinstance(answer, dict):
                answer = answer.get("predictions", answer.get("output", answer))
            return np.asarray(answer, dtype=np.float32)
        except (TypeError, ValueError):
            raise PlatformError(
                f"endpoint {record.name} answered something that is not predictions",
                platform=PLATFORM,
                response=str(text)[:500],
            ) from None

    def logs(self, record: EndpointRecord, tail: int = 100) -> list[str]:
        ml = self._record_client(record)
        text = FAULTS.call(
            f"reading the logs of {record.name}",
            lambda: ml.online_deployments.get_logs(DEPLOYMENT, record.name, lines=tail),
        )
        return str(text or "").splitlines()[-tail:]

    def delete(self, record: EndpointRecord) -> None:
        ml = self._record_client(record)
        if self._get(lambda: ml.online_endpoints.get(record.name)) is not None:
            FAULTS.call(
                "deleting the online endpoint",
                lambda: ml.online_endpoints.begin_delete(name=record.name).result(),
            )
        version = str(
            record.details.get("model_version") or model_version(record.artifact_digest or "")
        )
        if self._get(lambda: ml.models.get(record.name, version=version)) is not None:
            FAULTS.call(
                "archiving the model", lambda: ml.models.archive(record.name, version=version)
            )
