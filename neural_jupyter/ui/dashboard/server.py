"""The dashboard's HTTP server (tornado, on its own thread and event loop).

Security: it listens on 127.0.0.1 only; every request must carry the random token (query
``token=``, ``Authorization: Bearer``, or the cookie set after a first good request), compared
in constant time; anything else is 403. It serves three fixed files and a JSON/SSE API keyed by
job ids that must exist in the job store: no directory listing, no path from the request ever
reaches the file system.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import secrets
from importlib import resources
from pathlib import Path
from typing import Any

from neural_jupyter.errors import ConfigurationError, MissingDependencyError
from neural_jupyter.redaction import redact_value
from neural_jupyter.runtime.jobdir import JobDir
from neural_jupyter.runtime.loopback import LoopbackServer, quiet_poll, require_tornado
from neural_jupyter.runtime.tail import LineTail

JOB_ID = r"nj-[0-9a-f]{4,32}"
COOKIE = "neural_dashboard_token"
POLL_SECONDS = 0.2


def plotly_js_path() -> Path:
    """plotly.js as shipped inside the installed ``plotly`` package (never a CDN)."""
    try:
        import plotly
    except ImportError:
        raise MissingDependencyError("plotly", "dashboard", "The debug dashboard") from None
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.exists():  # pragma: no cover - depends on plotly's packaging
        raise ConfigurationError(f"the installed plotly has no bundled plotly.js at {path}")
    return path


def _static(name: str) -> bytes:
    return resources.files("neural_jupyter.ui.dashboard").joinpath(f"static/{name}").read_bytes()


class DashboardServer(LoopbackServer):
    """One server per kernel; ``start()`` returns once it listens."""

    def __init__(self, job_id: str | None = None, port: int = 0, store: Any = None) -> None:
        super().__init__(port)
        self.job_id = job_id
        self.store = store
        self.token = secrets.token_urlsafe(32)

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> DashboardServer:
        require_tornado("The debug dashboard")
        plotly_js_path()
        self.listen(lambda: _make_app(self), what="dashboard", thread_name="neural-dashboard")
        return self

    def path(self) -> str:
        """The page's path with the token (for proxies that add their own prefix)."""
        job = f"&job={self.job_id}" if self.job_id else ""
        return f"/?token={self.token}{job}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path()}"

    def check_token(self, candidate: str | None) -> bool:
        return bool(candidate) and hmac.compare_digest(candidate.encode(), self.token.encode())

    def job_store(self):
        from neural_jupyter.jobs.store import JobStore

        return self.store or JobStore()


def _make_app(dashboard: DashboardServer):
    import tornado.iostream
    import tornado.web

    class Protected(tornado.web.RequestHandler):
        def prepare(self) -> None:
            header = self.request.headers.get("Authorization", "")
            candidates = [
                self.get_query_argument("token", None),
                header[7:] if header.startswith("Bearer ") else None,
                self.get_cookie(COOKIE),
            ]
            if not any(dashboard.check_token(c) for c in candidates):
                raise tornado.web.HTTPError(403)
            if self.get_cookie(COOKIE) != dashboard.token:
                self.set_cookie(COOKIE, dashboard.token, httponly=True, samesite="Strict")

        def set_default_headers(self) -> None:
            self.set_header("X-Content-Type-Options", "nosniff")
            self.set_header("Referrer-Policy", "no-referrer")
            self.set_header("Cache-Control", "no-store")

        def write_error(self, status_code: int, **kwargs: Any) -> None:
            self.finish(f"{status_code}")

        def job(self, job_id: str):
            from neural_jupyter.jobs.store import JobStoreError

            try:
                return dashboard.job_store().get(job_id)
            except JobStoreError:
                raise tornado.web.HTTPError(404) from None

    class Page(Protected):
        def get(self) -> None:
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.set_header(
                "Content-Security-Policy",
                "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                "img-src 'self' data:; connect-src 'self'",
            )
            self.write(_static("index.html"))

    class Script(Protected):
        def get(self, name: str) -> None:
            self.set_header("Content-Type", "application/javascript; charset=utf-8")
            if name == "plotly.min.js":
                self.write(plotly_js_path().read_bytes())
            else:
                self.write(_static("dashboard.js"))

    class Jobs(Protected):
        def get(self) -> None:
            records = dashboard.job_store().list(limit=50)
            self.write(
                redact_value(
                    {
                        "default": dashboard.job_id or (records[0].id if records else None),
                        "jobs": [
                            {
                                "id": r.id,
                                "name": r.name,
                                "platform": r.platform,
                                "status": r.status.value,
                            }
                            for r in records
                        ],
                    }
                )
            )

    class Spec(Protected):
        def get(self, job_id: str) -> None:
            record = self.job(job_id)
            spec = JobDir(record.job_dir or ".").spec
            self.write(redact_value(json.loads(spec.read_text())) if spec.exists() else {})

    class Graph(Protected):
        def get(self, job_id: str) -> None:
            from neural_jupyter.ui.graph import graph_svg

            record = self.job(job_id)
            spec = JobDir(record.job_dir or ".").spec
            if not spec.exists():
                raise tornado.web.HTTPError(404)
            self.set_header("Content-Type", "image/svg+xml")
            self.write(graph_svg(json.loads(spec.read_text())))

    class Events(Protected):
        async def get(self, job_id: str) -> None:
            from neural_jupyter.jobs.lifetime import EndWatch

            record = self.job(job_id)
            self.set_header("Content-Type", "text/event-stream")
            self.set_header("X-Accel-Buffering", "no")
            tail = LineTail(JobDir(record.job_dir or ".").stdout)
            watch = EndWatch(record.id, dashboard.job_store())
            loop = asyncio.get_running_loop()
            idle = 0.0
            try:
                while True:
                    lines = [line for line in tail.read() if line.startswith('{"event"')]
                    for line in lines:
                        self.write(event_message(line))
                    if lines:
                        await self.flush()
                        idle = 0.0
                        continue
                    # the job's own event log and process say when it ended (nobody has to
                    # refresh its status); a platform call would block the loop: a thread
                    ended = await loop.run_in_executor(None, watch.ended)
                    if ended is not None:
                        for line in tail.flush():
                            if line.startswith('{"event"'):
                                self.write(event_message(line))
                        self.write(f"event: end\ndata: {json.dumps(ended.value)}\n\n")
                        await self.flush()
                        return
                    idle = await quiet_poll(self, idle, POLL_SECONDS)
            except tornado.iostream.StreamClosedError:
                return

    return tornado.web.Application(
        [
            (r"/", Page),
            (r"/static/(plotly\.min\.js|dashboard\.js)", Script),
            (r"/api/jobs", Jobs),
            (rf"/api/jobs/({JOB_ID})/spec", Spec),
            (rf"/api/jobs/({JOB_ID})/graph\.svg", Graph),
            (rf"/api/jobs/({JOB_ID})/events", Events),
        ],
        default_handler_class=_not_found_handler(Protected),
        compress_response=True,
    )


def _not_found_handler(base):
    import tornado.web

    class NotFound(base):
        def prepare(self) -> None:
            super().prepare()
            raise tornado.web.HTTPError(404)

    return NotFound


def event_message(line: str) -> str:
    """One event line as a server-sent event, redacted (the one serializer of the stream, which
    an ngrok tunnel may make public): string fields masked, the JSON kept valid."""
    try:
        event = json.loads(line)
    except ValueError:
        return ""
    return f"data: {json.dumps(redact_value(event))}\n\n"


def valid_job_id(text: str) -> bool:
    return re.fullmatch(JOB_ID, text) is not None
