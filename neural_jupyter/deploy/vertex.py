"""Vertex AI online prediction, through ``google-cloud-aiplatform``'s REST clients (wire
format only).

Served by Vertex AI's prebuilt PyTorch prediction container (TorchServe), whose URI comes from
the SDK's own list (``aiplatform.helpers.get_prebuilt_prediction_container_uri``) for the
version of ``image_tables/vertex_serving.json``. It loads ``model.mar`` from the model's
artifact folder: the serving TorchScript with a module-level handler
(``deploy/serving/torchserve_handler.py``). Vertex AI does not serve MLflow models natively.

Requests: upload ``gs://BUCKET/neural-jupyter/endpoints/NAME/DIGEST/model.mar`` →
``models:upload`` (labelled with the idempotency key; found by label first) → create an
``Endpoint`` (same) → ``endpoints/E:deployModel`` with a fixed deployed-model id derived from
the key (a retry is refused as a duplicate instead of deploying twice). The deploy runs for
minutes: its long-running operation is recorded and its state read on each look. Predict:
``endpoints/E:predict`` ``{"instances": [...]}``. Delete: undeploy, delete the endpoint, the
model and the file. Project, region, bucket and endpoints as for training jobs
(``backends/vertex.py``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from neural_jupyter.backends import get_backend
from neural_jupyter.backends.base import RemoteJob, ResourceSpec, name_for
from neural_jupyter.backends.images import table
from neural_jupyter.backends.vertex import API_TIMEOUT, FAULTS, KEY_LABEL, label_value, machine_for
from neural_jupyter.deploy import package as packages
from neural_jupyter.deploy.base import Created, DeployRequest, Look, ServingPlatform
from neural_jupyter.errors import PlatformError
from neural_jupyter.jobs.endpoints import EndpointRecord, EndpointStatus

PLATFORM = "vertex"
NAME_MAX = 63


def deployed_model_id(key: str) -> str:
    """Vertex AI's deployed-model ids are 1-10 digits: a stable one from the key."""
    return str(1_000_000_000 + int(hashlib.sha256(key.encode()).hexdigest(), 16) % 1_000_000_000)


def serving_image(region: str, gpu: bool) -> str:
    """The prebuilt PyTorch prediction container, as the SDK lists it."""
    from google.cloud.aiplatform.helpers import get_prebuilt_prediction_container_uri

    version = table("vertex_serving").default().framework_version
    return get_prebuilt_prediction_container_uri(
        "pytorch", version, region=region, accelerator="gpu" if gpu else "cpu"
    )


class VertexPlatform(ServingPlatform):
    name = PLATFORM
    label = "Vertex AI"
    backend = "vertex"
    default_instance = "n1-standard-2"
    serving_format = "model.mar (TorchScript + handler) in Vertex AI's PyTorch prediction container"
    poll_seconds = 15.0

    def extra_keys(self) -> Mapping[str, str]:
        return {
            "project": "Google Cloud project (default: GOOGLE_CLOUD_PROJECT / gcloud's)",
            "region": "region (default: CLOUD_ML_REGION / gcloud's / us-central1)",
            "staging_bucket": "Cloud Storage bucket for model.mar",
            "image": "serving image URI instead of the prebuilt PyTorch one",
            "api_endpoint": "Vertex AI API endpoint (tests, private endpoints)",
            "storage_endpoint": "Cloud Storage endpoint",
        }

    def endpoint_name(self, base: str) -> str:
        return name_for(base, NAME_MAX, prefix="")

    # --- requests ---------------------------------------------------------------------------
    def _backend(self) -> Any:
        return get_backend(PLATFORM)

    def _place(self, name: str, extra: Mapping[str, Any]) -> Any:
        job = RemoteJob(name, Path("."), None, {"idempotency_key": f"endpoints/{name}"})
        keys = ("project", "staging_bucket", "api_endpoint", "storage_endpoint")
        resources = ResourceSpec(
            region=extra.get("region"), extra={k: extra[k] for k in keys if extra.get(k)}
        )
        return self._backend().place(job, resources)

    def _client(self, kind: str, place: Any) -> Any:
        backend = self._backend()
        sdk = backend.sdk("google.cloud.aiplatform_v1")
        endpoint = place.api_endpoint or f"{place.region}-aiplatform.googleapis.com"
        cls = getattr(sdk, kind)
        return backend._cached(
            (kind, endpoint),
            lambda: cls(
                transport="rest",
                credentials=backend._credentials(),
                client_options={"api_endpoint": endpoint},
            ),
        )

    def resources(self, request: DeployRequest, place: Any) -> dict[str, Any]:
        hw = machine_for(ResourceSpec(instance_type=request.instance))
        machine: dict[str, Any] = {"machineType": hw.machine_type}
        if hw.accelerator_type:
            machine.update(
                acceleratorType=hw.accelerator_type, acceleratorCount=hw.accelerator_count
            )
        image = request.extra.get("image") or serving_image(place.region, bool(hw.accelerator_type))
        folder = place.uri(request.package.digest[:12])
        labels = {KEY_LABEL: label_value(request.idempotency_key), "created_by": "neural-jupyter"}
        return {
            "upload": f"{folder}/model.mar",
            "UploadModel": {
                "parent": place.parent,
                "model": {
                    "displayName": request.name,
                    "artifactUri": folder,
                    "containerSpec": {"imageUri": image},
                    "labels": labels,
                },
            },
            "CreateEndpoint": {
                "parent": place.parent,
                "endpoint": {"displayName": request.name, "labels": labels},
            },
            "DeployModel": {
                "deployedModel": {
                    "id": deployed_model_id(request.idempotency_key),
                    "displayName": request.name,
                    "dedicatedResources": {
                        "machineSpec": machine,
                        "minReplicaCount": request.replicas,
                        "maxReplicaCount": request.replicas,
                    },
                },
                "trafficSplit": {deployed_model_id(request.idempotency_key): 100},
            },
        }

    def plan(self, request: DeployRequest) -> dict[str, Any]:
        return self.resources(request, self._place(request.name, request.extra))

    # --- lifecycle ----------------------------------------------------------------------------
    def create(self, request: DeployRequest, record: EndpointRecord) -> Created:
        sdk = self._backend().sdk("google.cloud.aiplatform_v1")
        place = self._place(request.name, request.extra)
        wanted = self.resources(request, place)
        models = self._client("ModelServiceClient", place)
        endpoints = self._client("EndpointServiceClient", place)
        label = f'labels.{KEY_LABEL}="{label_value(request.idempotency_key)}"'
        mar = packages.model_mar(request.package)
        self._backend().upload(
            place, f"{request.package.digest[:12]}/model.mar", mar.read_bytes(), "application/zip"
        )
        model = self._first(models.list_models, place.parent, label)
        if model is None:
            body = sdk.Model.from_json(json.dumps(wanted["UploadModel"]["model"]))
            operation = FAULTS.call(
                "uploading the model to Vertex AI",
                lambda: models.upload_model(parent=place.parent, model=body, timeout=API_TIMEOUT),
            )
            model_name = FAULTS.call(
                "waiting for the model upload", lambda: operation.result(API_TIMEOUT)
            ).model
        else:
            model_name = model.name
        endpoint = self._first(endpoints.list_endpoints, place.parent, label)
        if endpoint is None:
            body = sdk.Endpoint.from_json(json.dumps(wanted["CreateEndpoint"]["endpoint"]))
            operation = FAULTS.call(
                "creating the Vertex AI endpoint",
                lambda: endpoints.create_endpoint(
                    parent=place.parent, endpoint=body, timeout=API_TIMEOUT
                ),
            )
            endpoint = FAULTS.call(
                "waiting for the endpoint", lambda: operation.result(API_TIMEOUT)
            )
        deploy = {**wanted["DeployModel"]["deployedModel"], "model": model_name}
        operation_name = None
        if not endpoint.deployed_models:
            deployed = sdk.DeployedModel.from_json(json.dumps(deploy))
            split = wanted["DeployModel"]["trafficSplit"]

            def start() -> Any:
                try:
                    return endpoints.deploy_model(
                        endpoint=endpoint.name,
                        deployed_model=deployed,
                        traffic_split=split,
                        timeout=API_TIMEOUT,
                    )
                except Exception as exc:  # a retry after a lost answer: it is deploying
                    if type(exc).__name__ in ("Conflict", "AlreadyExists"):
                        return None
                    raise

            operation = FAULTS.call("deploying the model to the endpoint", start)
            operation_name = operation.operation.name if operation is not None else None
        host = place.api_endpoint or f"https://{place.region}-aiplatform.googleapis.com"
        return Created(
            endpoint.name,
            f"{host.rstrip('/')}/v1/{endpoint.name}:predict",
            {
                **place.details(),
                "model": model_name,
                "endpoint": endpoint.name,
                "operation": operation_name,
                "deployed_model_id": deploy["id"],
                "artifact": wanted["upload"],
            },
        )

    @staticmethod
    def _first(listing: Any, parent: str, label: str) -> Any:
        return FAULTS.call(
            "looking for what an earlier try created",
            lambda: next(
                iter(listing(request={"parent": parent, "filter": label}, timeout=API_TIMEOUT)),
                None,
            ),
        )

    def _record_place(self, record: EndpointRecord) -> Any:
        from neural_jupyter.backends.vertex import Place

        if "base_uri" not in record.details:  # a create that failed before it said where
            return self._place(record.name, record.details.get("extra") or {})
        return Place.from_details(record.details)

    def look(self, record: EndpointRecord) -> Look:
        place = self._record_place(record)
        endpoints = self._client("EndpointServiceClient", place)
        name = record.details.get("endpoint") or record.remote_id

        def get() -> Any:
            try:
                return endpoints.get_endpoint(name=name, timeout=API_TIMEOUT)
            except Exception as exc:
                if type(exc).__name__ == "NotFound":
                    return None
                raise

        found = FAULTS.call("reading the Vertex AI endpoint", get)
        if found is None:
            return Look(EndpointStatus.DELETED, "Vertex AI has no such endpoint (any more)")
        if found.deployed_models:
            return Look(EndpointStatus.IN_SERVICE, "model deployed")
        operation = record.details.get("operation")
        if operation:
            done = FAULTS.call(
                "reading the deploy operation",
                lambda: endpoints.get_operation({"name": operation}, timeout=API_TIMEOUT),
            )
            if done.done and done.error and done.error.message:
                return Look(EndpointStatus.FAILED, str(done.error.message))
        return Look(EndpointStatus.CREATING, "deploying the model")

    def invoke(self, record: EndpointRecord, batch: np.ndarray) -> np.ndarray:
        from google.protobuf import json_format, struct_pb2

        place = self._record_place(record)
        client = self._client("PredictionServiceClient", place)
        instances = [json_format.ParseDict(row, struct_pb2.Value()) for row in batch.tolist()]
        answer = FAULTS.call(
            f"predicting with {record.name}",
            lambda: client.predict(
                endpoint=record.details.get("endpoint") or record.remote_id,
                instances=instances,
                timeout=API_TIMEOUT,
            ),
        )
        predictions = [_plain(p) for p in answer.predictions]
        try:
            return np.asarray(predictions, dtype=np.float32)
        except (TypeError, ValueError):
            raise PlatformError(
                f"endpoint {record.name} answered something that is not predictions",
                platform=PLATFORM,
                response=str(predictions)[:500],
            ) from None

    def delete(self, record: EndpointRecord) -> None:
        details = dict(record.details)
        place = self._record_place(record)
        endpoints = self._client("EndpointServiceClient", place)
        models = self._client("ModelServiceClient", place)
        if "endpoint" not in details:  # find what a failed create made, by its label
            label = f'labels.{KEY_LABEL}="{label_value(record.idempotency_key)}"'
            found = self._first(endpoints.list_endpoints, place.parent, label)
            model = self._first(models.list_models, place.parent, label)
            details["endpoint"] = found.name if found is not None else None
            details["model"] = model.name if model is not None else None
            details["deployed_model_id"] = deployed_model_id(record.idempotency_key)
        endpoint = details.get("endpoint")
        deployed = details.get("deployed_model_id")
        steps = []
        if endpoint and deployed:
            steps.append(
                (
                    "undeploying the model",
                    lambda: endpoints.undeploy_model(
                        endpoint=endpoint, deployed_model_id=deployed, timeout=API_TIMEOUT
                    ).result(API_TIMEOUT),
                )
            )
        if endpoint:
            steps.append(
                (
                    "deleting the endpoint",
                    lambda: endpoints.delete_endpoint(name=endpoint, timeout=API_TIMEOUT).result(
                        API_TIMEOUT
                    ),
                )
            )
        if details.get("model"):
            steps.append(
                (
                    "deleting the model",
                    lambda: models.delete_model(name=details["model"], timeout=API_TIMEOUT).result(
                        API_TIMEOUT
                    ),
                )
            )
        for action, call in steps:
            FAULTS.call(action, lambda c=call: _gone_is_fine(c))
        artifact = str(details.get("artifact") or "")
        if artifact.startswith("gs://"):
            bucket, _, name = artifact[5:].partition("/")
            storage = self._backend()._storage(place)
            FAULTS.call(
                "deleting model.mar",
                lambda: _gone_is_fine(lambda: storage.bucket(bucket).blob(name).delete()),
            )


def _gone_is_fine(call: Any) -> None:
    try:
        call()
    except Exception as exc:
        if type(exc).__name__ not in ("NotFound",) and "not found" not in str(exc).lower():
            raise


def _plain(value: Any) -> Any:
    """A prediction as plain Python (proto-plus gives lists; a raw ``Value`` too)."""
    if hasattr(value, "DESCRIPTOR"):
        from google.protobuf import json_format

        return json_format.MessageToDict(value)
    if isinstance(value, (list, tuple)) or type(value).__name__ == "RepeatedComposite":
        return [_plain(v) for v in value]
    return value
