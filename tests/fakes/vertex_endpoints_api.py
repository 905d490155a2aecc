"""The Google Cloud fake (``vertex_api.py``) extended with Vertex AI online prediction, in the
REST wire format of ``google-cloud-aiplatform``'s v1 clients:

* ``models:upload`` (a long-running operation, done at once), models list (label filter),
  get, delete; endpoints create (operation done at once), list, get, delete;
* ``endpoints/E:deployModel``: an operation that finishes after ``deploy_steps`` reads of it
  (``operations/O``), then the model is on the endpoint; or fails with ``deploy_error``; a
  deployed-model id already on the endpoint or being deployed is refused (409);
  ``:undeployModel``;
* ``endpoints/E:predict`` served for real, as the prebuilt PyTorch container would: the
  model's ``model.mar`` is read from this fake's Cloud Storage, its handler imported and
  called through TorchServe's JSON envelope (``{"instances": [...]}`` → the flat list of
  instances → ``{"predictions": [...]}``).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .base import Request, Response, json_response
from .vertex_api import OBJECT, PROJECT_NUMBER, FakeGoogleCloud, error, now

PREFIX = r"^/v1/projects/([^/]+)/locations/([^/]+)"
MODELS = re.compile(PREFIX + r"/models(:upload)?$")
MODEL = re.compile(PREFIX + r"/models/(\d+)$")
ENDPOINTS = re.compile(PREFIX + r"/endpoints$")
ENDPOINT = re.compile(PREFIX + r"/endpoints/(\d+)(:deployModel|:undeployModel|:predict)?$")
OPERATION = re.compile(PREFIX + r"/(?:endpoints/\d+/|models/\d+/)?operations/(\d+)$")
TYPES = "type.googleapis.com/google.cloud.aiplatform.v1"
DEPLOY_ERROR = {
    "code": 3,
    "message": "Model server never became ready. Please validate that your model file or "
    "container configuration are valid.",
}


class FakeVertexEndpoints(FakeGoogleCloud):
    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.models: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.deploy_steps = 2
        self.deploy_error: dict[str, Any] | None = None
        self.handlers: dict[str, Any] = {}
        self.served: list[int] = []
        self._resource_ids = itertools.count(7000000000000000001)
        self._operation_ids = itertools.count(9100000000000000001)

    def route(self, request: Request) -> Response:
        path, method = request.path, request.method
        if path.startswith("/ui/projects/") and "/operations/" in path:
            path = "/v1/" + path[len("/ui/") :]  # the operations mixin's first URI form
        if path.startswith("/v1/") and not request.headers.get("authorization", "").startswith(
            "Bearer "
        ):
            return error(401, "Request is missing required authentication credential.")
        if method == "DELETE" and (match := OBJECT.match(path)):
            with self.lock:
                if self.objects.pop((unquote(match[1]), unquote(match[2])), None) is None:
                    return error(404, f"No such object: {match[1]}/{match[2]}")
            return Response(204)
        if not path.startswith("/v1/projects/") or "customJobs" in path:
            return super().route(request)
        body = request.json if request.body else {}
        if (match := MODELS.match(path)) and match[3] and method == "POST":
            return self._upload_model(match[1], match[2], body)
        if (match := MODELS.match(path)) and method == "GET":
            return self._list(self.models, "models", request.query.get("filter", ""))
        if match := MODEL.match(path):
            return self._model(match[3], method)
        if (match := ENDPOINTS.match(path)) and method == "POST":
            return self._create_endpoint(match[1], match[2], body)
        if (match := ENDPOINTS.match(path)) and method == "GET":
            return self._list(self.endpoints, "endpoints", request.query.get("filter", ""))
        if match := OPERATION.match(path):
            return self._operation(match[3])
        if match := ENDPOINT.match(path):
            verb = match[4]
            if verb == ":deployModel":
                return self._deploy(match[3], body)
            if verb == ":undeployModel":
                return self._undeploy(match[3], body)
            if verb == ":predict":
                return self._predict(match[3], body)
            if method == "DELETE":
                return self._delete_endpoint(match[3])
            return self._get_endpoint(match[3])
        return super().route(request)

    # --- helpers ------------------------------------------------------------------------------
    def _name(self, location: str, kind: str, resource_id: str) -> str:
        return f"projects/{PROJECT_NUMBER}/locations/{location}/{kind}/{resource_id}"

    def _done(self, parent: str, kind: str, response: dict[str, Any] | None) -> dict[str, Any]:
        operation_id = str(next(self._operation_ids))
        operation = {"name": f"{parent}/operations/{operation_id}", "done": True}
        operation["response"] = {"@type": f"type.googleapis.com/google.{kind}", **(response or {})}
        self.operations[operation_id] = operation
        return operation

    def _list(self, store: dict[str, Any], key: str, query: str) -> Response:
        labels = dict(re.findall(r'labels\.([\w-]+)\s*=\s*"([^"]*)"', query))
        with self.lock:
            found = [
                item
                for item in store.values()
                if all(item.get("labels", {}).get(k) == v for k, v in labels.items())
            ]
        return json_response(200, {key: found} if found else {})

    # --- models -------------------------------------------------------------------------------
    def _upload_model(self, project: str, location: str, body: dict[str, Any]) -> Response:
        model = body.get("model") or {}
        if not model.get("containerSpec", {}).get("imageUri"):
            return error(400, "Model.container_spec.image_uri is required.")
        resource_id = str(next(self._resource_ids))
        name = self._name(location, "models", resource_id)
        with self.lock:
            self.models[resource_id] = {**model, "name": name, "createTime": now()}
        operation = self._done(name, "cloud.aiplatform.v1.UploadModelResponse", {"model": name})
        return json_response(200, operation)

    def _model(self, resource_id: str, method: str) -> Response:
        with self.lock:
            model = self.models.get(resource_id)
            if model is None:
                return error(404, f"The Model {resource_id} does not exist.")
            if method == "DELETE":
                if any(
                    d["model"] == model["name"]
                    for e in self.endpoints.values()
                    for d in e.get("deployedModels", [])
                ):
                    return error(400, "The Model is deployed to an Endpoint; undeploy it first.")
                del self.models[resource_id]
                return json_response(200, self._done(model["name"], "protobuf.Empty", None))
        return json_response(200, model)

    # --- endpoints ----------------------------------------------------------------------------
    def _create_endpoint(self, project: str, location: str, body: dict[str, Any]) -> Response:
        resource_id = str(next(self._resource_ids))
        name = self._name(location, "endpoints", resource_id)
        endpoint = {**body, "name": name, "createTime": now(), "_deploying": {}}
        with self.lock:
            self.endpoints[resource_id] = endpoint
        public = self._public(endpoint)
        return json_response(200, self._done(name, "cloud.aiplatform.v1.Endpoint", public))

    @staticmethod
    def _public(endpoint: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in endpoint.items() if not k.startswith("_")}

    def _get_endpoint(self, resource_id: str) -> Response:
        with self.lock:
            endpoint = self.endpoints.get(resource_id)
            if endpoint is None:
                return error(404, f"The Endpoint {resource_id} does not exist.")
            for operation_id in list(endpoint["_deploying"].values()):
                self._step(operation_id)  # a deployment goes on whether or not it is watched
            return json_response(200, self._public(endpoint))

    def _delete_endpoint(self, resource_id: str) -> Response:
        with self.lock:
            endpoint = self.endpoints.get(resource_id)
            if endpoint is None:
                return error(404, f"The Endpoint {resource_id} does not exist.")
            if endpoint.get("deployedModels"):
                return error(400, "The Endpoint has deployed models; undeploy them first.")
            del self.endpoints[resource_id]
            return json_response(200, self._done(endpoint["name"], "protobuf.Empty", None))

    def _deploy(self, resource_id: str, body: dict[str, Any]) -> Response:
        deployed = body.get("deployedModel") or {}
        with self.lock:
            endpoint = self.endpoints.get(resource_id)
            if endpoint is None:
                return error(404, f"The Endpoint {resource_id} does not exist.")
            model_id = deployed.get("model", "").rsplit("/", 1)[-1]
            if model_id not in self.models:
                return error(400, f"The Model {deployed.get('model')} does not exist.")
            known = {d["id"] for d in endpoint.get("deployedModels", [])} | set(
                endpoint["_deploying"]
            )
            if deployed.get("id") in known:
                return error(409, f"A DeployedModel with ID {deployed['id']} already exists.")
            operation_id = str(next(self._operation_ids))
            operation = {
                "name": f"{endpoint['name']}/operations/{operation_id}",
                "done": False,
                "metadata": {"@type": f"{TYPES}.DeployModelOperationMetadata"},
                "_steps": self.deploy_steps,
                "_endpoint": resource_id,
                "_deployed": {**deployed, "createTime": now()},
                "_error": self.deploy_error,
            }  # fmt: skip
            endpoint["_deploying"][deployed["id"]] = operation_id
            self.operations[operation_id] = operation
        return json_response(200, self._public(operation))

    def _operation(self, operation_id: str) -> Response:
        with self.lock:
            operation = self.operations.get(operation_id)
            if operation is None:
                return error(404, f"Operation {operation_id} not found.")
            self._step(operation_id)
            return json_response(200, self._public(operation))

    def _step(self, operation_id: str) -> None:
        operation = self.operations[operation_id]
        if not operation["done"] and "_steps" in operation:
            operation["_steps"] -= 1
            if operation["_steps"] <= 0:
                operation["done"] = True
                endpoint = self.endpoints.get(operation["_endpoint"])
                deployed = operation["_deployed"]
                if endpoint is not None:
                    endpoint["_deploying"].pop(deployed["id"], None)
                if operation["_error"]:
                    operation["error"] = operation["_error"]
                elif endpoint is not None:
                    endpoint.setdefault("deployedModels", []).append(deployed)
                    endpoint["trafficSplit"] = {deployed["id"]: 100}
                    operation["response"] = {
                        "@type": f"{TYPES}.DeployModelResponse",
                        "deployedModel": deployed,
                    }  # fmt: skip

    def _undeploy(self, resource_id: str, body: dict[str, Any]) -> Response:
        with self.lock:
            endpoint = self.endpoints.get(resource_id)
            if endpoint is None:
                return error(404, f"The Endpoint {resource_id} does not exist.")
            wanted = body.get("deployedModelId")
            models = endpoint.get("deployedModels", [])
            if not any(d["id"] == wanted for d in models):
                return error(404, f"The DeployedModel {wanted} does not exist.")
            endpoint["deployedModels"] = [d for d in models if d["id"] != wanted]
            endpoint.pop("trafficSplit", None)
            self.handlers.pop(resource_id, None)
            return json_response(
                200,
                self._done(endpoint["name"], "cloud.aiplatform.v1.UndeployModelResponse", {}),
            )

    # --- prediction: the prebuilt PyTorch container ---------------------------------------
    def _predict(self, resource_id: str, body: dict[str, Any]) -> Response:
        with self.lock:
            endpoint = self.endpoints.get(resource_id)
            if endpoint is None or not endpoint.get("deployedModels"):
                return error(400, f"Endpoint {resource_id} has no deployed model.")
            deployed = endpoint["deployedModels"][0]
        handler, context = self._handler(resource_id, deployed)
        instances = body.get("instances") or []
        predictions = handler.handle(list(instances), context)  # the JSON envelope's flat list
        if len(predictions) != len(instances):
            return error(500, "the handler returned a different number of predictions")
        self.served.append(len(instances))
        return json_response(200, {"predictions": predictions, "deployedModelId": deployed["id"]})

    def _handler(self, resource_id: str, deployed: dict[str, Any]) -> tuple[Any, Any]:
        if resource_id in self.handlers:
            return self.handlers[resource_id]
        model = self.models[deployed["model"].rsplit("/", 1)[-1]]
        bucket, _, prefix = model["artifactUri"][5:].partition("/")
        data = self.object_data(bucket, f"{prefix.rstrip('/')}/model.mar")
        if data is None:
            raise RuntimeError(f"no model.mar under {model['artifactUri']}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        directory = Path(tempfile.mkdtemp(prefix="fake-torchserve-", dir=self.workdir))
        (directory / "model.mar").write_bytes(data)
        with zipfile.ZipFile(directory / "model.mar") as archive:
            archive.extractall(directory / "model")
        manifest = json.loads((directory / "model" / "MAR-INF" / "MANIFEST.json").read_text())
        handler_file = directory / "model" / manifest["model"]["handler"]
        spec = importlib.util.spec_from_file_location(f"handler_{resource_id}", handler_file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)

        class Context:
            def __init__(self) -> None:
                self.system_properties = {"model_dir": str(directory / "model")}
                self.manifest = manifest

        self.handlers[resource_id] = (module, Context())
        module.handle(None, Context())  # TorchServe's initialisation call
        return self.handlers[resource_id]
