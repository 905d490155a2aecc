"""The debug dashboard (``neural_jupyter/ui/dashboard/static``) served by Jupyter Server itself,
behind Jupyter's login: no extra port, token or tunnel, and it works wherever JupyterLab does
(JupyterHub, a remote server). Same page and script as ``%neural_dashboard``; the script's
relative ``api/...`` requests land on the handlers here, which read through the jobs API.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.utils import url_path_join
from tornado import iostream, web

from neural_jupyter.runtime.loopback import quiet_poll
from neural_jupyter.server.handlers import AUTH_RESOURCE, NeuralHandler
from neural_jupyter.server.live import LIVE_PLATFORMS, EventFollower
from neural_jupyter.server.service import JobService, stored_history
from neural_jupyter.server.views import redact_tree

PREFIX = "neural-jupyter/dashboard"
POLL_SECONDS = 0.3


def dashboard_url(base_url: str, job_id: str) -> str:
    return url_path_join(base_url, PREFIX) + f"/?job={job_id}"


def static_file(name: str) -> bytes:
    package = resources.files("neural_jupyter.ui.dashboard")
    return package.joinpath("static", name).read_bytes()


def require_plotly() -> bytes:
    """plotly.js from the installed plotly package (``MissingDependencyError`` names the extra)."""
    from neural_jupyter.ui.dashboard.server import plotly_js_path

    return plotly_js_path().read_bytes()


class PageHandler(JupyterHandler):
    """The dashboard page (a browser without Jupyter's login cookie is sent to log in)."""

    auth_resource = AUTH_RESOURCE

    def initialize(self, **_: Any) -> None:
        pass

    @web.authenticated
    @authorized
    def get(self) -> None:
        from neural_jupyter.errors import MissingDependencyError

        if not self.request.path.endswith("/"):  # the page's relative URLs need the slash
            query = f"?{self.request.query}" if self.request.query else ""
            self.redirect(self.request.path + "/" + query)
            return
        try:
            require_plotly()
        except MissingDependencyError as exc:
            self.set_status(424)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(f"{exc.message}\n{exc.hint}\n")
            return
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(static_file("index.html"))


class ScriptHandler(JupyterHandler):
    auth_resource = AUTH_RESOURCE

    def initialize(self, **_: Any) -> None:
        pass

    @web.authenticated
    @authorized
    def get(self, name: str) -> None:
        self.set_header("Content-Type", "application/javascript; charset=utf-8")
        self.finish(require_plotly() if name == "plotly.min.js" else static_file("dashboard.js"))


class DashboardJobsHandler(NeuralHandler):
    """The job picker's list (the page's ``api/jobs``)."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        async def work() -> dict[str, Any]:
            from neural_jupyter import jobs

            found = await self.service.call(lambda: jobs.list(limit=50, store=self.service.store()))
            return {
                "default": found[0].id if found else None,
                "jobs": [
                    {
                        "id": job.id,
                        "name": job.name,
                        "platform": job.record.platform,
                        "status": job.record.status.value,
                    }
                    for job in found
                ],
            }

        await self.answer(work())


def _spec(job: Any) -> dict[str, Any] | None:
    if not job.record.job_dir:  # never given a directory (not started)
        return None
    path = job.bundle_dir / "spec.json"
    return json.loads(path.read_text()) if path.exists() else None


class SpecHandler(NeuralHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        async def work() -> dict[str, Any]:
            job = await self.service.call(self.service.load_job, job_id)
            return await self.service.call(_spec, job) or {}

        await self.answer(work())


class GraphHandler(JupyterHandler):
    """The model graph as SVG (not an ``APIHandler``: those always answer JSON)."""

    auth_resource = AUTH_RESOURCE

    def initialize(self, service: JobService, **_: Any) -> None:
        self.service = service

    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        from neural_jupyter.errors import JobStoreError
        from neural_jupyter.ui.graph import graph_svg

        try:
            job = await self.service.call(self.service.load_job, job_id)
        except JobStoreError as exc:
            raise web.HTTPError(404, exc.message) from None
        spec = await self.service.call(_spec, job)
        if spec is None:
            raise web.HTTPError(404, f"job {job.id} has no model summary")
        self.set_header("Content-Type", "image/svg+xml")
        self.finish(graph_svg(spec))


class EventsHandler(NeuralHandler):
    """The job's events as Server-Sent Events, from the start, then live, then ``end``.

    Local jobs are followed through their event stream; for other platforms the page gets
    the history their kernel brought back (if any) and the stored status.
    """

    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        job = await self.service.call(self.service.load_job, job_id)
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Accel-Buffering", "no")
        try:
            if job.record.platform in LIVE_PLATFORMS and job.record.remote_id is not None:
                await self._follow(job)
            else:
                for entry in await self.service.call(stored_history, job):
                    epoch = entry.get("epoch")
                    metrics = {k: v for k, v in entry.items() if k != "epoch"}
                    self._send({"event": "epoch", "epoch": epoch, "metrics": metrics})
            record = await self.service.call(self.service.store().get, job.id)
            self.write(f"event: end\ndata: {json.dumps(record.status.value)}\n\n")
            await self.flush()
        except iostream.StreamClosedError:
            return

    def _send(self, event: dict[str, Any]) -> None:
        self.write(f"data: {json.dumps(redact_tree(event))}\n\n")

    async def _follow(self, job: Any) -> None:
        follower = EventFollower(job)
        idle = 0.0
        try:
            while True:
                arrived: list[tuple[str, dict[str, Any]]] = []
                await self.service.call(follower.advance, 0.5, _collector(arrived))
                for kind, data in arrived:
                    self._send({"event": kind, **data})
                if arrived:
                    await self.flush()
                    idle = 0.0
                if follower.finished:
                    return
                if not arrived:
                    idle = await quiet_poll(self, idle, POLL_SECONDS)
        finally:
            follower.close()


def _collector(into: list[tuple[str, dict[str, Any]]]) -> Any:
    return lambda kind, data: into.append((kind, data))


def handlers(base_url: str, job_id: str, options: dict[str, Any]) -> list[tuple]:
    def route(path: str) -> str:
        return url_path_join(base_url, PREFIX, path)

    return [
        (route("/?"), PageHandler, options),
        (route(r"/static/(plotly\.min\.js|dashboard\.js)"), ScriptHandler, options),
        (route("/api/jobs"), DashboardJobsHandler, options),
        (route(f"/api/jobs/{job_id}/spec"), SpecHandler, options),
        (route(rf"/api/jobs/{job_id}/graph\.svg"), GraphHandler, options),
        (route(f"/api/jobs/{job_id}/events"), EventsHandler, options),
    ]


class DashboardUrlHandler(NeuralHandler):
    """``GET jobs/ID/dashboard``: where this server shows the job's dashboard."""

    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        async def work() -> dict[str, Any]:
            job = await self.service.call(self.service.load_job, job_id)
            await self.service.call(require_plotly)  # MissingDependencyError: 424, names the extra
            return {"id": job.id, "url": dashboard_url(self.base_url, job.id)}

        await self.answer(work())
