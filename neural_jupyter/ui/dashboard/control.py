"""Starting, showing and stopping the kernel's one dashboard (``%neural_dashboard``)."""

from __future__ import annotations

import atexit
from dataclasses import dataclass
from typing import Any

from neural_jupyter.ui.dashboard.server import DashboardServer
from neural_jupyter.ui.dashboard.tunnels import Tunnel, close_when_job_ends, open_tunnel


@dataclass
class Dashboard:
    server: DashboardServer
    tunnel: Tunnel

    @property
    def url(self) -> str | None:
        return self.tunnel.url

    def _repr_html_(self) -> str:
        import html

        if self.tunnel.kind == "colab" or not self.url:
            return "<i>the dashboard is shown by Colab above</i>"
        link = html.escape(self.url)
        frame = (
            ""
            if self.tunnel.kind == "ngrok"
            else (
                f"<iframe src='{link}' width='100%' height='720' style='border:1px solid #ddd'>"
                "</iframe>"
            )
        )
        return (
            f"<div class='neural-dashboard'><a href='{link}' target='_blank'>open the "
            f"dashboard in a new tab</a>{frame}</div>"
        )

    def __repr__(self) -> str:
        # text output ends up in logs and saved notebooks: the token stays out of it
        shown = self.url.replace(self.server.token, "****") if self.url else "shown by Colab"
        return f"<Dashboard {self.tunnel.kind}: {shown} (the full URL is .url)>"


_current: Dashboard | None = None


def start(
    job_id: str | None = None,
    tunnel: str = "auto",
    port: int = 0,
    close_tunnel_at_job_end: bool = True,
    pyngrok_config: Any = None,
) -> Dashboard:
    """Start (or re-point) the dashboard and open the requested way to reach it."""
    global _current
    stop()
    server = DashboardServer(job_id, port).start()
    try:
        way = open_tunnel(server, tunnel, pyngrok_config)
    except BaseException:
        server.stop()
        raise
    if job_id and close_tunnel_at_job_end and way.kind == "ngrok":
        close_when_job_ends(way, job_id, server.job_store())
    _current = Dashboard(server, way)
    return _current


def stop() -> bool:
    """Close the tunnel and stop the server; False if none was running."""
    global _current
    if _current is None:
        return False
    _current.tunnel.close()
    _current.server.stop()
    _current = None
    return True


def current() -> Dashboard | None:
    return _current


atexit.register(stop)
