"""Registering the handlers with a running Jupyter Server, and the extension's settings
(``c.NeuralJobsServer.refresh_seconds = 5`` in ``jupyter_server_config.py``)."""

from __future__ import annotations

from typing import Any

from jupyter_server.utils import url_path_join
from traitlets import Float, Unicode
from traitlets.config import LoggingConfigurable

from neural_jupyter.server import dashboard, handlers
from neural_jupyter.server.service import JobService

API = "neural-jupyter/api"


class NeuralJobsServer(LoggingConfigurable):
    """Settings of the neural-jupyter server extension."""

    store_path = Unicode(
        "",
        config=True,
        help="The job store to read (default: the one kernels use, NEURAL_JUPYTER_HOME/"
        "jobs.sqlite). Point it elsewhere only if the kernels are told the same.",
    )
    refresh_seconds = Float(
        3.0,
        config=True,
        help="How often an unfinished local job is re-checked (process alive?) while the "
        "sidebar polls; 0 turns it off.",
    )
    remote_refresh_seconds = Float(
        60.0,
        config=True,
        help="How often an unfinished job on another platform is re-checked by asking that "
        "platform (an API call with the credentials this server has); 0 turns it off (the "
        "sidebar then shows what the kernels recorded).",
    )


def setup(serverapp: Any) -> JobService:
    settings = NeuralJobsServer(parent=serverapp)
    service = JobService(
        store_path=settings.store_path or None,
        refresh_seconds=settings.refresh_seconds,
        remote_refresh_seconds=settings.remote_refresh_seconds,
    )
    base = serverapp.web_app.settings["base_url"]
    options = {"service": service}
    job = handlers.JOB_ID

    def route(path: str) -> str:
        return url_path_join(base, API, path)

    serverapp.web_app.add_handlers(
        ".*$",
        [
            (route("jobs"), handlers.JobsHandler, options),
            (route(f"jobs/{job}"), handlers.JobHandler, options),
            (route(f"jobs/{job}/logs"), handlers.LogsHandler, options),
            (route(f"jobs/{job}/cancel"), handlers.CancelHandler, options),
            (route(f"jobs/{job}/dashboard"), dashboard.DashboardUrlHandler, options),
            *dashboard.handlers(base, job, options),
        ],
    )
    serverapp.web_app.settings["neural_jupyter_service"] = service
    serverapp.log.info("neural-jupyter: job sidebar API at %s", url_path_join(base, API))
    return service
