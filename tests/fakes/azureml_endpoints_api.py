"""The Azure ML fake (``azureml_api.py``) extended with managed online endpoints, in the ARM
wire format ``azure-ai-ml`` speaks:

* model versions: ``PUT``/``GET models/NAME/versions/V`` (the files uploaded through the
  workspace's blob datastore, as the SDK does for a local path), ``archive`` as a ``PUT``
  with ``isArchived``;
* ``onlineEndpoints/NAME`` (``PUT`` as a long-running operation: ``Azure-AsyncOperation``,
  polled to ``Succeeded``; ``GET``; ``DELETE`` as an operation too), ``listKeys``;
* ``onlineEndpoints/NAME/deployments/D``: ``PUT`` starts a deployment whose
  ``provisioningState`` follows a script (one step per ``GET``: Creating → Succeeded, or →
  Failed with a log line saying why), ``getLogs``;
* scoring: ``POST /score/NAME`` with the endpoint's key, served for real: the deployment's
  model files are read back from the fake's blob storage and loaded with
  ``mlflow.pyfunc.load_model``, as Azure ML's no-code MLflow deployment does;
  ``{"input_data": [...]}`` → the predictions as a JSON list.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .azureml_api import FakeAzureML

READY = ("Creating", "Creating", "Succeeded")
FAILURE_LOG = "Liveness probe failed: the MLflow model could not be loaded (model loading failed)"
FAILED = ("Creating", "Failed")
KEY = "fake-endpoint-primary-key-0123456789abcdef"


class FakeAzureMLEndpoints(FakeAzureML):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.models: dict[tuple[str, str], dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.deployments: dict[tuple[str, str], dict[str, Any]] = {}
        self.operations: dict[str, str] = {}
        self.deployment_script: tuple = READY
        self.loaded: dict[str, Any] = {}
        self.served: list[int] = []

    # --- HTTP ---------------------------------------------------------------------------------
    def _handler(self) -> Any:
        parent = super()._handler()
        fake = self

        class Handler(parent):  # type: ignore[misc, valid-type]
            def _dispatch(self) -> None:
                url = urlsplit(self.path)
                if url.path.startswith("/score/"):
                    return fake._score(self, url)
                if url.path.startswith("/operations/"):
                    return self._send(200, {"status": fake.operations.get(url.path, "Succeeded")})
                return super()._dispatch()

            do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = _dispatch

            def _arm(self, url: Any, body: Any, reply: bool = True) -> None:
                rest = (
                    url.path[len(fake.prefix) + 1 :]
                    if url.path.startswith(fake.prefix + "/")
                    else ""
                )
                try:
                    answer = fake._endpoints_api(self.command, rest, body) if rest else None
                except Exception as exc:  # a bug in the fake: answer, never leave it hanging
                    answer = 500, _error("FakeError", f"{type(exc).__name__}: {exc}"), {}
                if answer is None:
                    return super()._arm(url, body, reply)
                if reply:
                    status, payload, headers = answer
                    self._send(status, payload, **headers)

        return Handler

    def _operation(self) -> dict[str, str]:
        path = f"/operations/{uuid.uuid4().hex}"
        self.operations[path] = "Succeeded"
        url = f"{self.endpoint}{path}"
        return {"Azure_AsyncOperation": url, "Location": url}

    def _endpoints_api(self, method: str, rest: str, body: Any) -> tuple | None:
        if m := re.fullmatch(r"models/([^/]+)/versions/([^/]+)", rest):
            return self._model(method, m[1], m[2], body)
        if m := re.fullmatch(r"onlineEndpoints/([^/]+)/listKeys", rest):
            if m[1] not in self.endpoints:
                return 404, _error("NotFound", f"endpoint {m[1]} not found"), {}
            return 200, {"primaryKey": KEY, "secondaryKey": KEY[::-1]}, {}
        if m := re.fullmatch(r"onlineEndpoints/([^/]+)/deployments/([^/]+)/getLogs", rest):
            deployment = self.deployments.get((m[1], m[2]))
            if deployment is None:
                return 404, _error("NotFound", f"deployment {m[2]} not found"), {}
            return 200, {"content": "\n".join(deployment["logs"])}, {}
        if (m := re.fullmatch(r"onlineEndpoints/([^/]+)/deployments", rest)) and method == "GET":
            found = [self._deployment_json(e, d) for (e, d) in self.deployments if e == m[1]]
            return 200, {"value": found}, {}
        if m := re.fullmatch(r"onlineEndpoints/([^/]+)/deployments/([^/]+)", rest):
            return self._deployment(method, m[1], m[2], body)
        if m := re.fullmatch(r"onlineEndpoints/([^/]+)", rest):
            return self._endpoint(method, m[1], body)
        return None

    # --- models ------------------------------------------------------------------------------
    def _model(self, method: str, name: str, version: str, body: Any) -> tuple:
        key = (name, version)
        if method == "GET":
            if key not in self.models:
                return 404, _error("UserError", f"Model container with name: {name} not found."), {}
            return 200, self.models[key], {}
        if method == "PUT":
            properties = dict(body.get("properties") or {})
            properties["flavors"] = properties.get("flavors") or {}
            stored = {
                **body,
                "properties": properties,
                "id": f"{self.prefix}/models/{name}/versions/{version}",
                "name": version,
                "type": "Microsoft.MachineLearningServices/workspaces/models/versions",
            }
            self.models[key] = stored
            return 200, stored, {}
        return None

    def model_files(self, name: str, version: str) -> Path:
        """The registered model's files, read back from the blob storage they went to."""
        uri = self.models[(name, version)]["properties"]["modelUri"]
        match = re.search(r"paths/(.+?)/?$", uri) or re.search(r"blob\.[^/]+/[^/]+/(.+?)/?$", uri)
        prefix = match[1] if match else ""
        target = Path(tempfile.mkdtemp(prefix="fake-aml-model-", dir=self.workdir))
        found = False
        for (_account, _container, blob), (data, _) in list(self.blobs.items()):
            if blob.startswith(prefix.rstrip("/") + "/"):
                relative = blob[len(prefix.rstrip("/")) + 1 :]
                path = target / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                found = True
        if not found:
            raise RuntimeError(f"no blobs under {prefix!r} (model {name}:{version}, {uri})")
        while (target / "MLmodel").exists() is False and len(list(target.iterdir())) == 1:
            target = next(target.iterdir())
        return target

    # --- endpoints and deployments ---------------------------------------------------------
    def _endpoint_json(self, name: str) -> dict[str, Any]:
        endpoint = self.endpoints[name]
        return {
            "id": f"{self.prefix}/onlineEndpoints/{name}",
            "name": name,
            "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
            "location": "eastus",
            "tags": endpoint["body"].get("tags", {}),
            "identity": {"type": "SystemAssigned"},
            "properties": {
                **endpoint["body"].get("properties", {}),
                "provisioningState": "Succeeded",
                "scoringUri": f"{self.endpoint}/score/{name}",
                "swaggerUri": f"{self.endpoint}/swagger/{name}",
                "traffic": endpoint["traffic"],
            },
        }

    def _endpoint(self, method: str, name: str, body: Any) -> tuple:
        if method == "GET":
            if name not in self.endpoints:
                return 404, _error("UserError", f"No online endpoint found with name {name}"), {}
            return 200, self._endpoint_json(name), {}
        if method == "PUT":
            traffic = (body.get("properties") or {}).get("traffic") or {}
            if name in self.endpoints:
                self.endpoints[name]["traffic"] = traffic
                self.endpoints[name]["body"] = body
            else:
                self.endpoints[name] = {"body": body, "traffic": traffic}
            return 201, self._endpoint_json(name), self._operation()
        if method == "DELETE":
            if self.endpoints.pop(name, None) is None:
                return 404, _error("UserError", f"No online endpoint found with name {name}"), {}
            for key in [k for k in self.deployments if k[0] == name]:
                del self.deployments[key]
            self.loaded.pop(name, None)
            return 202, b"", self._operation()
        return None

    def _deployment(self, method: str, endpoint: str, name: str, body: Any) -> tuple:
        key = (endpoint, name)
        if method == "GET":
            deployment = self.deployments.get(key)
            if deployment is None:
                return 404, _error("UserError", f"No deployment found with name {name}"), {}
            if deployment["script"]:
                deployment["state"] = deployment["script"].pop(0)
                if deployment["state"] == "Failed":
                    deployment["logs"].append(FAILURE_LOG)
            return 200, self._deployment_json(endpoint, name), {}
        if method == "PUT":
            if endpoint not in self.endpoints:
                return (
                    404,
                    _error("UserError", f"No online endpoint found with name {endpoint}"),
                    {},
                )
            model = (body.get("properties") or {}).get("model", "")
            found = re.search(r"models/([^/]+)/versions/([^/]+)$", model)
            if not found or (found[1], found[2]) not in self.models:
                return 400, _error("BadArgument", f"Model {model} not found"), {}
            self.deployments[key] = {
                "body": body,
                "state": "Creating",
                "script": list(self.deployment_script),
                "model": (found[1], found[2]),
                "logs": ["Pulling the inference image", "Downloading the model"],
            }
            return 201, self._deployment_json(endpoint, name), self._operation()
        return None

    def _deployment_json(self, endpoint: str, name: str) -> dict[str, Any]:
        deployment = self.deployments[(endpoint, name)]
        return {
            "sku": {"name": "Default", "capacity": 1},
            **deployment["body"],
            "id": f"{self.prefix}/onlineEndpoints/{endpoint}/deployments/{name}",
            "name": name,
            "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments",
            "properties": {
                "scaleSettings": {"scaleType": "Default"},
                "endpointComputeType": "Managed",
                **(deployment["body"].get("properties") or {}),
                "provisioningState": deployment["state"],
            },
        }

    # --- scoring: the no-code MLflow deployment -------------------------------------------
    def _score(self, handler: Any, url: Any) -> None:
        name = url.path[len("/score/") :]
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        if handler.headers.get("Authorization") != f"Bearer {KEY}":
            return handler._send(401, {"message": "Invalid key"})
        endpoint = self.endpoints.get(name)
        live = [
            d for (e, _), d in self.deployments.items() if e == name and d["state"] == "Succeeded"
        ]
        if endpoint is None or not live or endpoint["traffic"].get(DEPLOYMENT_NAME) != 100:
            return handler._send(424, {"message": "No valid deployments to route to."})
        import mlflow.pyfunc
        import numpy as np

        if name not in self.loaded:
            self.loaded[name] = mlflow.pyfunc.load_model(str(self.model_files(*live[0]["model"])))
        payload = json.loads(raw)
        output = self.loaded[name].predict(np.asarray(payload["input_data"], dtype=np.float32))
        self.served.append(len(payload["input_data"]))
        live[0]["logs"].append(f"scored {len(payload['input_data'])} rows")
        handler._send(200, np.asarray(output).tolist())

    def cleanup_files(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


DEPLOYMENT_NAME = "blue"


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
