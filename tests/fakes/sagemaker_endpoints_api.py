"""The SageMaker fake (``sagemaker_api.py``) extended with real-time endpoints, and the
runtime's ``InvokeEndpoint`` served for real.

moto covers these operations too, but its endpoints are ``InService`` at once (no
``Creating``, no ``Failed``) and its ``InvokeEndpoint`` answers canned bodies. This fake adds
what the tests need beyond that, in the same wire formats:

* ``CreateModel``, ``CreateEndpointConfig``, ``CreateEndpoint``, ``DescribeEndpoint``,
  ``DeleteEndpoint``, ``DeleteEndpointConfig``, ``DeleteModel`` (AWS JSON 1.1, SageMaker's
  own error texts: "Cannot create already existing ...", "Could not find ...");
* an endpoint's status follows a script (one step per ``DescribeEndpoint``: Creating →
  InService, or Creating → Failed with a ``FailureReason``);
* ``POST /endpoints/NAME/invocations`` (``sagemaker-runtime``) does what AWS's PyTorch
  inference container does with its default handler: ``model.tar.gz`` is fetched from S3
  (``ModelDataUrl``, through the given S3 client: moto), ``model.pt`` loaded with
  ``torch.jit.load``, the JSON body decoded into a float tensor, the model called, the result
  encoded as JSON.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import time
import uuid
from typing import Any

from .base import Request, Response
from .sagemaker_api import ApiError, FakeSageMaker, validation

IN_SERVICE = ("Creating", "Creating", "InService")
FAILURE_REASON = (
    "The primary container for production variant AllTraffic did not pass the ping health "
    "check. Please check CloudWatch logs for this endpoint."
)
FAILED = ("Creating", ("Failed", FAILURE_REASON))
INVOCATIONS = re.compile(r"^/endpoints/([^/]+)/invocations$")


class FakeSageMakerEndpoints(FakeSageMaker):
    """Training jobs and real-time endpoints; ``s3`` is a boto3 S3 client (moto)."""

    def __init__(self, s3: Any, *, endpoint_script: tuple = IN_SERVICE, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.s3 = s3
        self.endpoint_script = endpoint_script
        self.models: dict[str, dict[str, Any]] = {}
        self.configs: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.loaded: dict[str, Any] = {}  # endpoint name -> the TorchScript module it serves
        self.invocations: list[int] = []  # batch sizes served

    def handle(self, request: Request) -> Response:
        if INVOCATIONS.match(request.path):
            with self.lock:
                self.record(request)
            fault = self._fault(request)
            if fault is not None:
                return self.error(fault.status, fault.message, **fault.fields)
            return self._invoke(request)
        return super().handle(request)

    def _arn(self, kind: str, name: str) -> str:
        return f"arn:aws:sagemaker:{self.region}:{self.account}:{kind}/{name.lower()}"

    # --- control plane ------------------------------------------------------------------------
    def op_CreateModel(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body["ModelName"]
        with self.lock:
            if name in self.models:
                raise validation(
                    f'Cannot create already existing model "{self._arn("model", name)}".'
                )
            container = body.get("PrimaryContainer") or {}
            if not container.get("Image") or not container.get("ModelDataUrl"):
                raise validation("PrimaryContainer needs an Image and a ModelDataUrl")
            self.models[name] = json.loads(json.dumps(body))
        return {"ModelArn": self._arn("model", name)}

    def op_CreateEndpointConfig(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body["EndpointConfigName"]
        with self.lock:
            if name in self.configs:
                raise validation(
                    "Cannot create already existing endpoint configuration "
                    f'"{self._arn("endpoint-config", name)}".'
                )
            for variant in body.get("ProductionVariants") or []:
                if variant.get("ModelName") not in self.models:
                    raise validation(f'Could not find model "{variant.get("ModelName")}".')
            self.configs[name] = json.loads(json.dumps(body))
        return {"EndpointConfigArn": self._arn("endpoint-config", name)}

    def op_CreateEndpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body["EndpointName"]
        with self.lock:
            if name in self.endpoints:
                raise validation(
                    f'Cannot create already existing endpoint "{self._arn("endpoint", name)}".'
                )
            if body.get("EndpointConfigName") not in self.configs:
                raise validation(
                    f'Could not find endpoint configuration "{body.get("EndpointConfigName")}".'
                )
            self.endpoints[name] = {
                "request": json.loads(json.dumps(body)),
                "script": list(self.endpoint_script),
                "status": "Creating",
                "reason": None,
                "created": time.time(),
            }
        return {"EndpointArn": self._arn("endpoint", name)}

    def op_DescribeEndpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("EndpointName")
        with self.lock:
            endpoint = self.endpoints.get(name)
            if endpoint is None:
                raise validation(f'Could not find endpoint "{self._arn("endpoint", str(name))}".')
            if endpoint["script"]:
                step = endpoint["script"].pop(0)
                status, reason = (step, None) if isinstance(step, str) else step
                endpoint["status"], endpoint["reason"] = status, reason
            answer = {
                "EndpointName": name,
                "EndpointArn": self._arn("endpoint", name),
                "EndpointConfigName": endpoint["request"]["EndpointConfigName"],
                "EndpointStatus": endpoint["status"],
                "CreationTime": endpoint["created"],
                "LastModifiedTime": time.time(),
            }
            if endpoint["reason"]:
                answer["FailureReason"] = endpoint["reason"]
        return answer

    def op_DeleteEndpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("EndpointName")
        with self.lock:
            if self.endpoints.pop(name, None) is None:
                raise validation(f'Could not find endpoint "{self._arn("endpoint", str(name))}".')
            self.loaded.pop(name, None)
        return {}

    def op_DeleteEndpointConfig(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("EndpointConfigName")
        with self.lock:
            if self.configs.pop(name, None) is None:
                raise validation(f'Could not find endpoint configuration "{name}".')
        return {}

    def op_DeleteModel(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("ModelName")
        with self.lock:
            if self.models.pop(name, None) is None:
                raise validation(f'Could not find model "{self._arn("model", str(name))}".')
        return {}

    # --- runtime: the PyTorch inference container's default handler -----------------------
    def _invoke(self, request: Request) -> Response:
        name = INVOCATIONS.match(request.path)[1]
        with self.lock:
            endpoint = self.endpoints.get(name)
            if endpoint is None or endpoint["status"] != "InService":
                return self.error(
                    400,
                    f"Endpoint {name} of account {self.account} not found.",
                    "ValidationError",
                )
        try:
            module = self._module(name, endpoint)
            import numpy as np
            import torch

            if request.headers.get("content-type") != "application/json":
                raise ApiError(415, "ModelError", "unsupported content type")
            tensor = torch.FloatTensor(np.asarray(json.loads(request.body)))
            with torch.no_grad():
                output = module(tensor).detach().cpu().numpy().tolist()
        except ApiError as exc:
            return self.error(exc.status, exc.message, exc.code)
        except Exception as exc:  # the container's 500: a ModelError to the caller
            return self.error(
                424,
                f'Received server error (500) from primary with message "{exc}".',
                "ModelError",
            )
        self.invocations.append(len(output))
        return Response(
            200,
            json.dumps(output).encode(),
            {
                "Content-Type": "application/json",
                "x-Amzn-Invoked-Production-Variant": "AllTraffic",
                "x-amzn-RequestId": str(uuid.uuid4()),
            },
        )

    def _module(self, name: str, endpoint: dict[str, Any]) -> Any:
        if name in self.loaded:
            return self.loaded[name]
        import torch

        config = self.configs[endpoint["request"]["EndpointConfigName"]]
        model = self.models[config["ProductionVariants"][0]["ModelName"]]
        url = model["PrimaryContainer"]["ModelDataUrl"]
        bucket, _, key = url.removeprefix("s3://").partition("/")
        data = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            member = tar.extractfile("model.pt")
            module = torch.jit.load(io.BytesIO(member.read()), map_location="cpu")
        module.eval()
        self.loaded[name] = module
        return module

    def cleanup(self) -> None:
        super().cleanup()


def moto_results(endpoint: str, bodies: list[str]) -> None:
    """Queue canned ``InvokeEndpoint`` answers in moto (its way of serving predictions)."""
    import urllib.request

    payload = {
        "account_id": "123456789012",
        "region": "us-east-1",
        "results": [
            {
                "Body": body,
                "ContentType": "application/json",
                "InvokedProductionVariant": "AllTraffic",
                "CustomAttributes": "",
            }
            for body in bodies
        ],
    }  # fmt: skip
    request = urllib.request.Request(
        f"{endpoint}/moto-api/static/sagemaker/endpoint-results",
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request).close()
