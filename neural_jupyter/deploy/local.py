"""The local platform (the default): the model served from this kernel, on 127.0.0.1 with a
token, batching requests (``deploy/server.py``). Free, offline, nothing to install beyond the
``dashboard`` extra's tornado.

It lives as long as the process that created it: ``delete()`` or the kernel's exit (an
``atexit`` hook) stops it and frees its port. A kernel that dies without running its exit
hooks leaves a live record behind; the next time the package looks at its endpoints it sees
that the owning process is gone and marks the record DELETED ("its kernel ended").
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import numpy as np

from neural_jupyter.deploy.base import Created, DeployRequest, Look, ServingPlatform
from neural_jupyter.deploy.server import BATCH_WAIT, MAX_BATCH, PredictionServer
from neural_jupyter.errors import ConfigurationError, DataError, PlatformError
from neural_jupyter.jobs.endpoints import EndpointRecord, EndpointStatus
from neural_jupyter.redaction import redact
from neural_jupyter.runtime.processes import pid_alive

_servers: dict[str, PredictionServer] = {}
_stopped: dict[str, list[str]] = {}  # the log lines of servers stopped in this process
_lock = threading.Lock()
_on_exit: dict[str, Any] = {}  # endpoint id -> what to do once it stopped at exit


def owner_alive(record: EndpointRecord) -> bool:
    """Whether the process that serves ``record`` still runs (on this host)."""
    if record.owner_host and record.owner_host != socket.gethostname():
        return True  # another machine's: we cannot tell, so it is not ours to close
    pid = record.owner_pid
    if not pid:
        return False
    if pid == os.getpid():
        return record.id in _servers
    return pid_alive(pid)


class LocalPlatform(ServingPlatform):
    name = "local"
    label = "this kernel"
    paid = False
    serving_format = "the TorchScript export (Keras: the model), in this process"
    poll_seconds = 0.05

    def extra_keys(self) -> Mapping[str, str]:
        return {
            "port": "port to listen on (default: a free one)",
            "max_batch": f"most samples run in one forward pass (default {MAX_BATCH})",
            "batch_wait_ms": f"how long a batch waits for more requests (default "
            f"{BATCH_WAIT * 1000:g} ms)",
        }

    def endpoint_name(self, base: str) -> str:
        return base

    def plan(self, request: DeployRequest) -> dict[str, Any]:
        extra = request.extra
        return {
            "serve": f"http://127.0.0.1:{extra.get('port', '<free port>')}/v1/models/"
            f"{request.name}:predict",
            "model": str(request.package.torchscript or f"{request.package.model_name} (Keras)"),
            "max_batch": int(extra.get("max_batch", MAX_BATCH)),
            "batch_wait_ms": float(extra.get("batch_wait_ms", BATCH_WAIT * 1000)),
            "auth": "a random token, kept in this process only",
        }

    def create(self, request: DeployRequest, record: EndpointRecord) -> Created:
        if request.replicas != 1:
            raise ConfigurationError("the local platform serves one replica (replicas=1)")
        extra = request.extra
        package = request.package
        server = PredictionServer(
            request.name,
            package.predictor(),
            package.prepare,
            {"name": request.name, "model": package.model_name, **package.metadata},
            port=_int(extra, "port", 0),
            max_batch=_int(extra, "max_batch", MAX_BATCH),
            batch_wait=float(extra.get("batch_wait_ms", BATCH_WAIT * 1000)) / 1000,
        ).start()
        with _lock:
            _servers[record.id] = server
        return Created(
            f"127.0.0.1:{server.port}",
            server.url,
            {"port": server.port, "pid": os.getpid()},
        )

    def look(self, record: EndpointRecord) -> Look:
        server = _servers.get(record.id)
        if server is not None and server.running:
            return Look(EndpointStatus.IN_SERVICE, f"serving on 127.0.0.1:{server.port}")
        if owner_alive(record):
            return Look(
                EndpointStatus.IN_SERVICE, f"served by another kernel (pid {record.owner_pid})"
            )
        return Look(EndpointStatus.DELETED, "its kernel ended")

    def server(self, record: EndpointRecord) -> PredictionServer:
        server = _servers.get(record.id)
        if server is None or not server.running:
            where = (
                f"by another kernel (pid {record.owner_pid})"
                if owner_alive(record)
                else "by nobody any more (its kernel ended)"
            )
            raise ConfigurationError(
                f"the local endpoint {record.name} is served {where}; its token lives only "
                "in the kernel that deployed it",
                hint="predict from that kernel, or deploy again here",
            )
        return server

    def invoke(self, record: EndpointRecord, batch: np.ndarray) -> np.ndarray:
        server = self.server(record)
        body = json.dumps({"instances": batch.tolist()}).encode()
        request = urllib.request.Request(
            server.url,
            data=body,
            method="POST",
            headers={
                "Authorization": f"Bearer {server.token}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            text = redact(exc.read().decode("utf-8", "replace"))
            if exc.code == 400:
                raise DataError(json.loads(text).get("error", text)) from None
            raise PlatformError(
                f"the local endpoint answered HTTP {exc.code}", platform="local", response=text
            ) from None
        return np.asarray(answer["predictions"], dtype=np.float32)

    def logs(self, record: EndpointRecord, tail: int = 100) -> list[str]:
        server = _servers.get(record.id)
        lines = list(server.lines) if server is not None else _stopped.get(record.id, [])
        return lines[-tail:]

    def delete(self, record: EndpointRecord) -> None:
        with _lock:
            server = _servers.pop(record.id, None)
        if server is not None:
            server.stop()
            _stopped[record.id] = list(server.lines)
            return
        if record.owner_pid and record.owner_pid != os.getpid() and owner_alive(record):
            raise ConfigurationError(
                f"the local endpoint {record.name} is served by another kernel "
                f"(pid {record.owner_pid}); only that kernel can stop it",
                hint="run %neural_undeploy there, or restart that kernel",
            )

    def close(self, record: EndpointRecord) -> None:
        self.delete(record)


def _int(extra: Mapping[str, Any], key: str, default: int) -> int:
    value = extra.get(key, default)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"--set {key} must be a whole number, got {value!r}") from None
    if number < 0 or (key != "port" and number < 1):
        raise ConfigurationError(f"--set {key} must be positive, got {value!r}")
    return number


def on_exit(endpoint_id: str, callback: Any) -> None:
    """Run ``callback()`` once the endpoint was stopped at exit (its record is updated)."""
    _on_exit[endpoint_id] = callback


def stop_all() -> list[str]:
    """Stop every local endpoint of this process (at exit); their ids."""
    with _lock:
        items = list(_servers.items())
        _servers.clear()
    for _, server in items:
        server.stop()
    for endpoint_id, _ in items:
        callback = _on_exit.pop(endpoint_id, None)
        try:
            if callback is not None:
                callback()
        except Exception:  # at exit the store may be gone; housekeeping fixes it later
            pass
    return [endpoint_id for endpoint_id, _ in items]


atexit.register(stop_all)
