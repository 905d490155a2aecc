"""The local prediction server: tornado on 127.0.0.1, on its own thread and event loop (as the
debug dashboard's server), with a token and request batching.

Security: it listens on 127.0.0.1 only; every request must carry the random token
(``Authorization: Bearer TOKEN``), compared in constant time; anything else is 403. The token
is registered with the redaction filter and never stored.

API (JSON, the shape of TensorFlow Serving's and Vertex AI's):

* ``POST /v1/models/NAME:predict`` ``{"instances": [...]}`` → ``{"predictions": [...]}``;
  a bad input is a 400 with ``{"error": "..."}``;
* ``GET /v1/models/NAME`` → the model's description and the server's counters.

Batching: requests that arrive within ``batch_wait`` seconds of each other (up to
``max_batch`` samples) are run as one forward pass, and each gets its own rows back.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hmac
import json
import queue
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from neural_jupyter.errors import DataError
from neural_jupyter.redaction import redact, register_secret
from neural_jupyter.runtime.loopback import LoopbackServer, require_tornado

MAX_BATCH = 256
BATCH_WAIT = 0.005  # seconds a batch waits for more requests after its first
MAX_BODY = 64 * 1024 * 1024
LOG_LINES = 1000


class Batcher:
    """Runs ``predict`` on batches of queued requests, in one worker thread."""

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        max_batch: int = MAX_BATCH,
        wait: float = BATCH_WAIT,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.predict = predict
        self.max_batch = max_batch
        self.wait = wait
        self.log = log
        self.requests = 0
        self.batches = 0
        self.samples = 0
        self.largest = 0
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="neural-endpoint-batcher")
        self._thread.daemon = True
        self._thread.start()

    def submit(self, batch: np.ndarray) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((batch, future))
        return future

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(5)

    def stats(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "batches": self.batches,
            "samples": self.samples,
            "largest_batch": self.largest,
        }

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            items = [first]
            size = len(first[0])
            deadline = time.monotonic() + self.wait
            while size < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = self._queue.get(timeout=left)
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                items.append(item)
                size += len(item[0])
            self._run(items)

    def _run(self, items: list[tuple[np.ndarray, concurrent.futures.Future]]) -> None:
        started = time.monotonic()
        try:
            outputs = self.predict(np.concatenate([batch for batch, _ in items]))
        except Exception as exc:
            for _, future in items:
                future.set_exception(exc)
            self.log(f"batch of {len(items)} requests failed: {type(exc).__name__}: {exc}")
            return
        cursor = 0
        for batch, future in items:
            future.set_result(outputs[cursor : cursor + len(batch)])
            cursor += len(batch)
        self.requests += len(items)
        self.batches += 1
        self.samples += cursor
        self.largest = max(self.largest, cursor)
        self.log(
            f"batch: {len(items)} request(s), {cursor} sample(s), "
            f"{(time.monotonic() - started) * 1000:.1f} ms"
        )


class PredictionServer(LoopbackServer):
    """One endpoint's server; ``start()`` returns once it listens."""

    def __init__(
        self,
        name: str,
        predict: Callable[[np.ndarray], np.ndarray],
        prepare: Callable[[Any], np.ndarray],
        description: dict[str, Any],
        port: int = 0,
        max_batch: int = MAX_BATCH,
        batch_wait: float = BATCH_WAIT,
    ) -> None:
        super().__init__(port)
        self.name = name
        self.prepare = prepare
        self.description = description
        self.token = secrets.token_urlsafe(32)
        register_secret(self.token)
        self.lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self.batcher = Batcher(predict, max_batch, batch_wait, self.log)

    def log(self, line: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        self.lines.append(redact(f"{stamp} {line}"))

    @property
    def path(self) -> str:
        return f"/v1/models/{self.name}:predict"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def start(self) -> PredictionServer:
        require_tornado("The local endpoint")
        self.listen(
            lambda: _make_app(self),
            what="local endpoint",
            thread_name=f"neural-endpoint-{self.name}",
            on_failure=self.batcher.stop,
            max_body_size=MAX_BODY,
        )
        self.log(f"serving {self.name} on 127.0.0.1:{self.port}")
        return self

    def stop(self) -> None:
        if not self._shut_down(cancel_tasks=True):
            return
        self.batcher.stop()
        self.log("stopped")

    def check_token(self, header: str) -> bool:
        candidate = header[7:] if header.startswith("Bearer ") else ""
        return bool(candidate) and hmac.compare_digest(candidate.encode(), self.token.encode())


def _make_app(server: PredictionServer) -> Any:
    import tornado.web

    class Protected(tornado.web.RequestHandler):
        def prepare(self) -> None:
            if not server.check_token(self.request.headers.get("Authorization", "")):
                server.log(f"403 {self.request.method} {self.request.path}: no valid token")
                raise tornado.web.HTTPError(403)

        def set_default_headers(self) -> None:
            self.set_header("X-Content-Type-Options", "nosniff")
            self.set_header("Cache-Control", "no-store")

        def write_error(self, status_code: int, **kwargs: Any) -> None:
            self.finish({"error": f"HTTP {status_code}"})

    class Predict(Protected):
        async def post(self) -> None:
            try:
                body = json.loads(self.request.body or b"{}")
                instances = body["instances"]
                batch = server.prepare(instances)
            except (ValueError, KeyError, TypeError, DataError) as exc:
                message = exc.message if isinstance(exc, DataError) else f"bad request: {exc}"
                self.set_status(400)
                server.log(f"400 predict: {message}")
                self.finish({"error": redact(message)})
                return
            outputs = await asyncio.wrap_future(server.batcher.submit(batch))
            self.finish({"predictions": outputs.tolist()})

    class Describe(Protected):
        def get(self) -> None:
            self.finish({**server.description, "stats": server.batcher.stats()})

    class NotFound(Protected):
        def prepare(self) -> None:
            super().prepare()
            raise tornado.web.HTTPError(404)

    def log_request(handler: Any) -> None:
        request = handler.request
        server.log(
            f"{handler.get_status()} {request.method} {request.path} "
            f"{request.request_time() * 1000:.1f} ms"
        )

    name = server.name.replace(".", r"\.")
    return tornado.web.Application(
        [(rf"/v1/models/{name}:predict", Predict), (rf"/v1/models/{name}", Describe)],
        default_handler_class=NotFound,
        log_function=log_request,
    )
