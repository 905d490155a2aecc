"""REST handlers: Jupyter Server's ``APIHandler`` with its own authentication
(``@web.authenticated``), authorization (``@authorized``, resource ``neural_jobs``) and XSRF
checks, exactly as the server's built-in APIs. Every body goes out through ``redact_tree``."""

from __future__ import annotations

import json
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from neural_jupyter.server.service import JobService
from neural_jupyter.server.views import redact_tree

AUTH_RESOURCE = "neural_jobs"
JOB_ID = r"(?P<job_id>[A-Za-z0-9_-]{1,64})"
STATUSES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "UNKNOWN")
STREAMS = ("both", "stdout", "stderr")
MAX_TAIL = 5000


class NeuralHandler(APIHandler):
    """Shared parts: the service, JSON replies, errors as JSON with a readable message."""

    auth_resource = AUTH_RESOURCE

    def initialize(self, service: JobService, **_: Any) -> None:
        self.service = service

    def reply(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(redact_tree(payload)))

    def fail(self, status: int, message: str, hint: str | None = None) -> None:
        self.reply({"message": message, "hint": hint}, status)

    async def answer(self, work: Any) -> None:
        """Await ``work`` and reply; our errors become 4xx/5xx with their message."""
        from neural_jupyter.errors import JobStoreError, MissingDependencyError, NeuralError
        from neural_jupyter.jobs.store import AmbiguousJobIdError, JobNotFoundError

        try:
            result = await work
        except JobNotFoundError as exc:
            self.fail(404, exc.message, exc.hint)
        except AmbiguousJobIdError as exc:
            self.fail(409, exc.message, exc.hint)
        except MissingDependencyError as exc:
            self.fail(424, exc.message, exc.hint)
        except JobStoreError as exc:
            self.fail(503, exc.message, exc.hint)
        except NeuralError as exc:
            self.fail(502, exc.message, exc.hint)
        else:
            self.reply(result)

    def int_argument(self, name: str, default: int, low: int, high: int) -> int:
        text = self.get_argument(name, None)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            raise web.HTTPError(400, f"{name} must be a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise web.HTTPError(400, f"{name} must be between {low} and {high}, got {value}")
        return value


class JobsHandler(NeuralHandler):
    """``GET jobs``: every job in the store, newest first; filters ``status`` (repeatable or
    comma-separated), ``platform``, ``limit``; ``refresh=1`` re-checks unfinished jobs now."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        statuses: list[str] = []
        for value in self.get_arguments("status"):
            statuses += [part.strip().upper() for part in value.split(",") if part.strip()]
        unknown = [s for s in statuses if s not in STATUSES]
        if unknown:
            raise web.HTTPError(
                400, f"unknown status {', '.join(unknown)}; expected {', '.join(STATUSES)}"
            )
        platform = self.get_argument("platform", None) or None
        limit = self.int_argument("limit", 200, 1, 10_000)
        force = self.get_argument("refresh", "0") not in ("0", "", "false")

        async def work() -> dict[str, Any]:
            jobs = await self.service.list_jobs(statuses, platform, limit, force)
            return {"jobs": jobs, "count": len(jobs)}

        await self.answer(work())


class JobHandler(NeuralHandler):
    """``GET jobs/ID``: one job (a unique id prefix works) with its metrics history."""

    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        await self.answer(self.service.get_job(job_id))


class LogsHandler(NeuralHandler):
    """``GET jobs/ID/logs``: the last ``tail`` plain log lines (events left out), redacted."""

    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        tail = self.int_argument("tail", 200, 1, MAX_TAIL)
        stream = self.get_argument("stream", "both")
        if stream not in STREAMS:
            raise web.HTTPError(400, f"stream must be one of {', '.join(STREAMS)}")
        await self.answer(self.service.logs(job_id, tail, stream))


class CancelHandler(NeuralHandler):
    """``POST jobs/ID/cancel``: stop the job for good (``Job.cancel``)."""

    @web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        await self.answer(self.service.cancel(job_id))
