"""Amazon SageMaker real-time endpoints, through boto3 (wire format only).

Served by AWS's own PyTorch inference container (Deep Learning Container ``pytorch-inference``,
``image_tables/sagemaker_serving.json``): its default handler loads ``model.pt`` from
``model.tar.gz`` with ``torch.jit.load``, decodes a JSON body into a float tensor, calls the
model and answers JSON, so the serving TorchScript (``predict`` semantics built in) needs no
``inference.py`` at all.

Requests, each named after the endpoint (derived from the idempotency key), each looked up
before it is made so a retry never makes a second one: ``PutObject``
``s3://BUCKET/neural-jupyter/endpoints/NAME/model.tar.gz`` → ``CreateModel`` →
``CreateEndpointConfig`` (one variant, ``replicas`` x ``instance``) → ``CreateEndpoint``;
``DescribeEndpoint`` for the state; ``sagemaker-runtime InvokeEndpoint`` to predict;
CloudWatch ``/aws/sagemaker/Endpoints/NAME`` for logs; ``DeleteEndpoint``,
``DeleteEndpointConfig``, ``DeleteModel`` and the S3 object to delete. Region, role, bucket
and endpoints as for training jobs (``backends/sagemaker.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from neural_jupyter.backends import get_backend
from neural_jupyter.backends.base import ResourceSpec, name_for
from neural_jupyter.backends.images import table
from neural_jupyter.backends.sagemaker import FAULTS, _already_exists, _not_found
from neural_jupyter.backends.sagemaker_images import instance_family, is_gpu_instance, registry
from neural_jupyter.deploy import package as packages
from neural_jupyter.deploy import prices
from neural_jupyter.deploy.base import Created, DeployRequest, Look, ServingPlatform
from neural_jupyter.errors import PlatformError
from neural_jupyter.jobs.endpoints import EndpointRecord, EndpointStatus

PLATFORM = "sagemaker"
NAME_MAX = 63
S3_PREFIX = "neural-jupyter/endpoints"
LOG_GROUP = "/aws/sagemaker/Endpoints"
VARIANT = "AllTraffic"
STATES = {
    "OutOfService": EndpointStatus.CREATING,
    "Creating": EndpointStatus.CREATING,
    "Updating": EndpointStatus.UPDATING,
    "SystemUpdating": EndpointStatus.UPDATING,
    "RollingBack": EndpointStatus.UPDATING,
    "UpdateRollbackFailed": EndpointStatus.FAILED,
    "InService": EndpointStatus.IN_SERVICE,
    "Deleting": EndpointStatus.DELETING,
    "Failed": EndpointStatus.FAILED,
}


def serving_image(region: str, instance: str) -> str:
    """AWS's PyTorch inference image for ``instance`` in ``region``."""
    images = table("sagemaker_serving")
    instance_family(instance)  # a clear error for names that are not instance types
    row = images.default()
    tag = row["gpu"] if is_gpu_instance(instance) else row["cpu"]
    return f"{registry(region)}/{images.extra['repository']}:{tag}"


class SageMakerPlatform(ServingPlatform):
    name = PLATFORM
    label = "Amazon SageMaker"
    backend = "sagemaker"
    default_instance = "ml.m5.large"
    serving_format = "model.tar.gz (TorchScript model.pt) in AWS's PyTorch inference container"
    poll_seconds = 15.0

    def extra_keys(self) -> Mapping[str, str]:
        return {
            "region": "AWS region (default: AWS_REGION / the profile's)",
            "role": "ARN of the execution role the endpoint runs as",
            "bucket": "S3 bucket for model.tar.gz (default: SageMaker's default bucket)",
            "image": "serving image URI instead of AWS's PyTorch inference image",
        }

    def endpoint_name(self, base: str) -> str:
        return name_for(base, NAME_MAX, prefix="", allowed="a-zA-Z0-9", lower=False)

    def hourly_price(self, instance: str | None, replicas: int) -> Any:
        return prices.hourly(PLATFORM, instance, replicas)

    # --- configuration ----------------------------------------------------------------------
    def _backend(self) -> Any:
        return get_backend(PLATFORM)

    def _config(self, extra: Mapping[str, Any]) -> Any:
        keys = ("role", "bucket")
        return self._backend().config(
            ResourceSpec(
                region=extra.get("region"), extra={k: extra[k] for k in keys if k in extra}
            )
        )

    def requests(
        self, request: DeployRequest, region: str, role: str, bucket: str
    ) -> dict[str, Any]:
        name = request.name
        key = f"{S3_PREFIX}/{name}/model.tar.gz"
        image = request.extra.get("image") or serving_image(region, request.instance or "")
        tags = [{"Key": "neural-jupyter-key", "Value": request.idempotency_key}]
        return {
            "upload": f"s3://{bucket}/{key}",
            "CreateModel": {
                "ModelName": name,
                "ExecutionRoleArn": role,
                "PrimaryContainer": {
                    "Image": image,
                    "ModelDataUrl": f"s3://{bucket}/{key}",
                    "Environment": {"SAGEMAKER_CONTAINER_LOG_LEVEL": "20"},
                },
                "Tags": tags,
            },
            "CreateEndpointConfig": {
                "EndpointConfigName": name,
                "ProductionVariants": [
                    {
                        "VariantName": VARIANT,
                        "ModelName": name,
                        "InstanceType": request.instance,
                        "InitialInstanceCount": request.replicas,
                    }
                ],
                "Tags": tags,
            },
            "CreateEndpoint": {"EndpointName": name, "EndpointConfigName": name, "Tags": tags},
        }

    def plan(self, request: DeployRequest) -> dict[str, Any]:
        config = self._config(request.extra)
        return self.requests(
            request, config.region, config.role, config.bucket or "<SageMaker's default bucket>"
        )

    # --- lifecycle ----------------------------------------------------------------------------
    def create(self, request: DeployRequest, record: EndpointRecord) -> Created:
        backend = self._backend()
        config = self._config(request.extra)
        clients = backend.clients(config.region)
        bucket = backend._bucket(clients, config)
        wanted = self.requests(request, config.region, config.role, bucket)
        archive = packages.model_tar_gz(request.package)
        key = wanted["upload"].split("/", 3)[3]

        def upload() -> Any:
            with archive.open("rb") as body:
                return clients.s3.put_object(
                    Bucket=bucket, Key=key, Body=body, ContentType="application/gzip"
                )

        FAULTS.call(f"uploading the model to {wanted['upload']}", upload)
        sagemaker = clients.sagemaker
        self._once("CreateModel", lambda: sagemaker.create_model(**wanted["CreateModel"]))
        self._once(
            "CreateEndpointConfig",
            lambda: sagemaker.create_endpoint_config(**wanted["CreateEndpointConfig"]),
        )
        found = self._describe(config.region, request.name)
        if found is None:
            self._once(
                "CreateEndpoint", lambda: sagemaker.create_endpoint(**wanted["CreateEndpoint"])
            )
            found = self._describe(config.region, request.name) or {}
        url = (
            f"https://runtime.sagemaker.{config.region}.amazonaws.com/endpoints/"
            f"{request.name}/invocations"
        )
        return Created(
            str(found.get("EndpointArn") or request.name),
            url,
            {
                "region": config.region,
                "bucket": bucket,
                "key": key,
                "image": wanted["CreateModel"]["PrimaryContainer"]["Image"],
            },
        )

    def _once(self, action: str, create: Any) -> None:
        """Create, adopting what a lost response or an earlier try already made."""

        def attempt() -> None:
            try:
                create()
            except Exception as exc:
                # SageMaker: "Cannot create already existing model ..." (ValidationException)
                if not (_already_exists(exc) or "already exist" in str(exc).lower()):
                    raise

        FAULTS.call(action, attempt)

    def _describe(self, region: str, name: str) -> dict[str, Any] | None:
        client = self._backend().clients(region).sagemaker

        def describe() -> dict[str, Any] | None:
            try:
                return client.describe_endpoint(EndpointName=name)
            except Exception as exc:
                if _not_found(exc) or "could not find" in str(exc).lower():
                    return None
                raise

        return FAULTS.call(f"DescribeEndpoint {name}", describe)

    def _region(self, record: EndpointRecord) -> str:
        return str(record.details.get("region") or self._backend().region())

    def look(self, record: EndpointRecord) -> Look:
        found = self._describe(self._region(record), record.name)
        if found is None:
            return Look(EndpointStatus.DELETED, "SageMaker has no such endpoint (any more)")
        state = str(found.get("EndpointStatus"))
        status = STATES.get(state, EndpointStatus.UNKNOWN)
        return Look(status, found.get("FailureReason") or state)

    def invoke(self, record: EndpointRecord, batch: np.ndarray) -> np.ndarray:
        runtime = getattr(self._backend().clients(self._region(record)), "sagemaker-runtime")
        body = json.dumps(batch.tolist())

        def call() -> Any:
            response = runtime.invoke_endpoint(
                EndpointName=record.name,
                Body=body,
                ContentType="application/json",
                Accept="application/json",
            )
            return json.loads(response["Body"].read())

        answer = FAULTS.call(f"InvokeEndpoint {record.name}", call)
        if isinstance(answer, dict) and "predictions" in answer:
            answer = answer["predictions"]
        try:
            return np.asarray(answer, dtype=np.float32)
        except (TypeError, ValueError):
            raise PlatformError(
                f"endpoint {record.name} answered something that is not predictions",
                platform=PLATFORM,
                response=str(answer)[:500],
            ) from None

    def logs(self, record: EndpointRecord, tail: int = 100) -> list[str]:
        logs = self._backend().clients(self._region(record)).logs
        group = f"{LOG_GROUP}/{record.name}"

        def read() -> list[str]:
            try:
                found = logs.filter_log_events(logGroupName=group, limit=10000)
            except Exception as exc:
                if _not_found(exc):
                    return []
                raise
            events = sorted(found.get("events", []), key=lambda e: e.get("timestamp", 0))
            return [str(e.get("message", "")).rstrip("\n") for e in events][-tail:]

        return FAULTS.call(f"reading the logs of {record.name}", read)

    def delete(self, record: EndpointRecord) -> None:
        region = self._region(record)
        clients = self._backend().clients(region)
        sagemaker = clients.sagemaker
        for action, call in (
            ("DeleteEndpoint", lambda: sagemaker.delete_endpoint(EndpointName=record.name)),
            (
                "DeleteEndpointConfig",
                lambda: sagemaker.delete_endpoint_config(EndpointConfigName=record.name),
            ),
            ("DeleteModel", lambda: sagemaker.delete_model(ModelName=record.name)),
        ):
            self._gone_is_fine(action, call)
        bucket, key = record.details.get("bucket"), record.details.get("key")
        if bucket and key:
            self._gone_is_fine(
                "deleting the model file", lambda: clients.s3.delete_object(Bucket=bucket, Key=key)
            )

    @staticmethod
    def _gone_is_fine(action: str, call: Any) -> None:
        def attempt() -> None:
            try:
                call()
            except Exception as exc:
                text = str(exc).lower()
                if not (_not_found(exc) or "could not find" in text or "does not exist" in text):
                    raise

        FAULTS.call(action, attempt)
