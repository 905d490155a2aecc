"""The Databricks workspace fake (``databricks_api.py``) extended with what model serving
needs, in the REST wire formats ``databricks-sdk`` speaks:

* the workspace model registry: ``registered-models/create`` (``RESOURCE_ALREADY_EXISTS``
  when it exists), ``model-versions/create`` (its ``source`` must hold an MLmodel in this
  fake's DBFS), ``model-versions/search``, ``model-versions/delete``,
  ``registered-models/delete``; and ``dbfs/delete``;
* serving endpoints: create (``RESOURCE_ALREADY_EXISTS`` for a taken name), get, delete; an
  endpoint's ``state`` follows a script, one step per get (NOT_READY/IN_PROGRESS →
  READY/NOT_UPDATING, or → UPDATE_FAILED with a ``deployment_state_message``);
* ``POST /serving-endpoints/NAME/invocations`` served for real: the registered version's
  files are loaded with ``mlflow.pyfunc.load_model`` (as Model Serving's container does) and
  ``{"inputs": ...}`` (a tensor) is answered with ``{"predictions": ...}``;
* ``served-models/NAME/logs``: what the fake's server printed.
"""

from __future__ import annotations

import itertools
import re
import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .base import Request, Response, json_response
from .databricks_api import FakeDatabricks, error

READY = (("NOT_READY", "IN_PROGRESS"), ("NOT_READY", "IN_PROGRESS"), ("READY", "NOT_UPDATING"))
FAILURE = "Served entity creation aborted: container failed to start (model loading failed)"
FAILED = (("NOT_READY", "IN_PROGRESS"), ("NOT_READY", "UPDATE_FAILED", FAILURE))
ENDPOINT = re.compile(r"^/api/2\.0/serving-endpoints/([^/]+)$")
LOGS = re.compile(r"^/api/2\.0/serving-endpoints/([^/]+)/served-models/([^/]+)/logs$")
INVOKE = re.compile(r"^/serving-endpoints/([^/]+)/invocations$")


class FakeDatabricksServing(FakeDatabricks):
    def __init__(self, root: Path, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.models: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, list[dict[str, Any]]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.endpoint_script: tuple = READY
        self.loaded: dict[str, Any] = {}
        self.served: list[int] = []
        self._endpoint_ids = itertools.count(1)

    def route(self, request: Request) -> Response:
        path, method, query = request.path, request.method, request.query
        body = request.json if request.body else {}
        if path == "/api/2.0/dbfs/delete" and method == "POST":
            target = self.file(body["path"])
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            return json_response(200, {})
        if path == "/api/2.0/mlflow/registered-models/create" and method == "POST":
            return self._create_model(body)
        if path == "/api/2.0/mlflow/model-versions/create" and method == "POST":
            return self._create_version(body)
        if path == "/api/2.0/mlflow/model-versions/search":
            name = re.search(r"name\s*=\s*'([^']*)'", unquote(query.get("filter", "")))
            found = self.versions.get(name[1] if name else "", [])
            return json_response(200, {"model_versions": found} if found else {})
        if path == "/api/2.0/mlflow/model-versions/delete" and method == "DELETE":
            versions = self.versions.get(query.get("name", ""), [])
            kept = [v for v in versions if v["version"] != query.get("version")]
            if len(kept) == len(versions):
                return error(404, "Model version not found.", "RESOURCE_DOES_NOT_EXIST")
            self.versions[query["name"]] = kept
            return json_response(200, {})
        if path == "/api/2.0/mlflow/registered-models/delete" and method == "DELETE":
            if self.models.pop(query.get("name", ""), None) is None:
                return error(404, "Registered model not found.", "RESOURCE_DOES_NOT_EXIST")
            self.versions.pop(query["name"], None)
            return json_response(200, {})
        if path == "/api/2.0/serving-endpoints" and method == "POST":
            return self._create_endpoint(body)
        if match := ENDPOINT.match(path):
            if method == "DELETE":
                return self._delete_endpoint(match[1])
            return self._get_endpoint(match[1])
        if match := LOGS.match(path):
            endpoint = self.endpoints.get(match[1])
            if endpoint is None:
                return error(404, f"Endpoint {match[1]} does not exist.", "RESOURCE_DOES_NOT_EXIST")
            return json_response(200, {"logs": "\n".join(endpoint["logs"])})
        if (match := INVOKE.match(path)) and method == "POST":
            return self._invoke(match[1], body)
        return super().route(request)

    # --- model registry ---------------------------------------------------------------------
    def _create_model(self, body: dict[str, Any]) -> Response:
        name = body.get("name", "")
        with self.lock:
            if name in self.models:
                return error(
                    400,
                    f"Registered Model (name={name}) already exists.",
                    "RESOURCE_ALREADY_EXISTS",
                )
            self.models[name] = {"name": name, "creation_timestamp": int(time.time() * 1000)}
        return json_response(200, {"registered_model": self.models[name]})

    def _create_version(self, body: dict[str, Any]) -> Response:
        name, source = body.get("name", ""), body.get("source", "")
        with self.lock:
            if name not in self.models:
                return error(
                    404, f"Registered Model with name={name} not found", "RESOURCE_DOES_NOT_EXIST"
                )
            if not (self.file(source) / "MLmodel").is_file():
                return error(400, f"No MLmodel file found at {source}.", "INVALID_PARAMETER_VALUE")
            versions = self.versions.setdefault(name, [])
            version = {
                "name": name,
                "version": str(len(versions) + 1),
                "source": source,
                "status": "READY",
                "description": body.get("description", ""),
            }
            versions.append(version)
        return json_response(200, {"model_version": version})

    # --- serving endpoints ------------------------------------------------------------------
    def _create_endpoint(self, body: dict[str, Any]) -> Response:
        name = body.get("name", "")
        entities = (body.get("config") or {}).get("served_entities") or []
        with self.lock:
            if name in self.endpoints:
                return error(
                    400, f"Endpoint with name '{name}' already exists.", "RESOURCE_ALREADY_EXISTS"
                )
            for entity in entities:
                known = [v["version"] for v in self.versions.get(entity.get("entity_name"), [])]
                if entity.get("entity_version") not in known:
                    return error(
                        400,
                        f"Model version {entity.get('entity_version')} of "
                        f"{entity.get('entity_name')} does not exist.",
                        "INVALID_PARAMETER_VALUE",
                    )
            self.endpoints[name] = {
                "name": name,
                "id": f"ep{next(self._endpoint_ids):06d}",
                "body": body,
                "script": list(self.endpoint_script),
                "ready": "NOT_READY",
                "update": "IN_PROGRESS",
                "message": None,
                "logs": [
                    f"Creating served entity {entities[0]['entity_name']}" if entities else ""
                ],
            }
            return json_response(200, self._public(self.endpoints[name]))

    def _public(self, endpoint: dict[str, Any]) -> dict[str, Any]:
        entities = []
        for entity in (endpoint["body"].get("config") or {}).get("served_entities") or []:
            state = {
                "deployment": "DEPLOYMENT_READY"
                if endpoint["ready"] == "READY"
                else "DEPLOYMENT_CREATING"
            }
            if endpoint["message"]:
                state = {
                    "deployment": "DEPLOYMENT_FAILED",
                    "deployment_state_message": endpoint["message"],
                }
            entities.append(
                {
                    **entity,
                    "name": f"{entity['entity_name']}-{entity['entity_version']}",
                    "state": state,
                }
            )
        config_key = "config" if endpoint["ready"] == "READY" else "pending_config"
        return {
            "name": endpoint["name"],
            "id": endpoint["id"],
            "state": {"ready": endpoint["ready"], "config_update": endpoint["update"]},
            config_key: {"served_entities": entities},
            "tags": endpoint["body"].get("tags", []),
        }  # fmt: skip

    def _get_endpoint(self, name: str) -> Response:
        with self.lock:
            endpoint = self.endpoints.get(name)
            if endpoint is None:
                return error(404, f"Endpoint {name} does not exist.", "RESOURCE_DOES_NOT_EXIST")
            if endpoint["script"]:
                step = endpoint["script"].pop(0)
                endpoint["ready"], endpoint["update"] = step[0], step[1]
                if len(step) > 2:
                    endpoint["message"] = step[2]
                    endpoint["logs"].append(step[2])
            return json_response(200, self._public(endpoint))

    def _delete_endpoint(self, name: str) -> Response:
        with self.lock:
            if self.endpoints.pop(name, None) is None:
                return error(404, f"Endpoint {name} does not exist.", "RESOURCE_DOES_NOT_EXIST")
            self.loaded.pop(name, None)
        return json_response(200, {})

    def _invoke(self, name: str, body: dict[str, Any]) -> Response:
        import numpy as np

        endpoint = self.endpoints.get(name)
        if endpoint is None or endpoint["ready"] != "READY":
            return error(404, f"Endpoint {name} is not ready.", "RESOURCE_DOES_NOT_EXIST")
        if "inputs" not in body:
            return error(400, "The request needs 'inputs' for a tensor-based model.", "BAD_REQUEST")
        model = self._model(name, endpoint)
        output = model.predict(np.asarray(body["inputs"], dtype=np.float32))
        self.served.append(len(body["inputs"]))
        endpoint["logs"].append(f"predicted {len(body['inputs'])} rows")
        return json_response(200, {"predictions": np.asarray(output).tolist()})

    def _model(self, name: str, endpoint: dict[str, Any]) -> Any:
        if name not in self.loaded:
            import mlflow.pyfunc

            entity = endpoint["body"]["config"]["served_entities"][0]
            (version,) = [
                v for v in self.versions[entity["entity_name"]]
                if v["version"] == entity["entity_version"]
            ]  # fmt: skip
            self.loaded[name] = mlflow.pyfunc.load_model(str(self.file(version["source"])))
            endpoint["logs"].append(f"loaded {version['source']}")
        return self.loaded[name]
