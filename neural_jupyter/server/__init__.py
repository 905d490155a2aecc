"""The Jupyter Server extension: a REST API over the job store for the JupyterLab sidebar.

Jupyter Server imports this package (``jupyter-config/jupyter_server_config.d/
neural_jupyter.json``, installed with the package, enables it); ``import neural_jupyter`` and
``%load_ext neural_jupyter`` never do. It reads the same job store the kernels write and acts
only through the public ``neural_jupyter.jobs`` API, so it owns no job state: stop the server
and every job keeps running; start it again and it shows them all.

Routes (under the server's base URL; Jupyter's own authentication and XSRF protection):

    GET  neural-jupyter/api/jobs[?status=RUNNING,PENDING&platform=local&limit=N&refresh=1]
    GET  neural-jupyter/api/jobs/ID              one job with its metrics history
    GET  neural-jupyter/api/jobs/ID/logs[?tail=N&stream=both|stdout|stderr]
    POST neural-jupyter/api/jobs/ID/cancel
    GET  neural-jupyter/api/jobs/ID/dashboard    {"url": ...} of the dashboard served here
    GET  neural-jupyter/dashboard/?job=ID        the debug dashboard, behind Jupyter's login
"""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "neural_jupyter.server"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from neural_jupyter.server.app import setup

    setup(serverapp)
