"""Starting, showing and stopping the kernel's one dashboard (``%neural_dashboard``)."""

from __future__ import annotations

import atexit
import contextlib
import uuid
from dataclasses import dataclass, field
from typing import Any

from neural_jupyter.ui.dashboard.server import DashboardServer
from neural_jupyter.ui.dashboard.tunnels import (
    FRAME_HEIGHT,
    Tunnel,
    close_when_job_ends,
    open_tunnel,
)

STOPPED_HTML = (
    "<div class='neural-dashboard neural-dashboard-stopped' style='padding:8px 10px;"
    "border:1px solid #ddd;border-radius:4px;color:#555;background:#fafafa'>"
    "<b>dashboard stopped</b>{why} — <code>%neural_dashboard</code> starts it again.</div>"
)


@dataclass
class Dashboard:
    server: DashboardServer
    tunnel: Tunnel
    display_ids: list[str] = field(default_factory=list)
    stopped: str | None = None

    @property
    def url(self) -> str | None:
        return self.tunnel.url

    def _ipython_display_(self) -> None:
        """Shown with a display id, so that stopping the dashboard replaces the frame with
        a note instead of leaving a frame whose server is gone (a broken page)."""
        from IPython.display import display

        display_id = uuid.uuid4().hex
        self.display_ids.append(display_id)
        display(self._bundle(), raw=True, display_id=display_id)

    def _bundle(self) -> dict[str, str]:
        return {"text/html": self._repr_html_(), "text/plain": repr(self)}

    def _repr_html_(self) -> str:
        import html

        if self.stopped is not None:
            return STOPPED_HTML.format(why=html.escape(self.stopped))
        if self.tunnel.kind == "colab" or not self.url:
            return "<i>the dashboard is shown by Colab above</i>"
        link = html.escape(self.url)
        frame = (
            ""
            if self.tunnel.kind == "ngrok"
            else (
                f"<iframe src='{link}' width='100%' height='{FRAME_HEIGHT}' "
                "style='border:1px solid #ddd'></iframe>"
            )
        )
        return (
            f"<div class='neural-dashboard'><a href='{link}' target='_blank'>open the "
            f"dashboard in a new tab</a>{frame}</div>"
        )

    def mark_stopped(self, why: str = "") -> None:
        """Replace every place this dashboard is shown with the 'dashboard stopped' note."""
        self.stopped = why
        if not self.display_ids:
            return
        from IPython.display import update_display

        for display_id in self.display_ids:
            update_display(self._bundle(), raw=True, display_id=display_id)

    def __repr__(self) -> str:
        if self.stopped is not None:
            return f"<Dashboard: stopped{self.stopped}>"
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
    """Start (or re-point) the dashboard and open the requested way to reach it.

    An ngrok tunnel closes within seconds of the end of the job it shows (``job_id``, or
    the newest job while that one is unfinished) unless ``close_tunnel_at_job_end`` is off.
    """
    global _current
    from neural_jupyter import validation
    from neural_jupyter.ui.dashboard.tunnels import MODES

    port = validation.port("--port", port)
    validation.choice("--tunnel", tunnel, MODES)
    stop(" (a new one was started)")
    server = DashboardServer(job_id, port).start()
    try:
        way = open_tunnel(server, tunnel, pyngrok_config)
    except BaseException:
        server.stop()
        raise
    if close_tunnel_at_job_end and way.kind == "ngrok":
        followed = job_id or _unfinished_newest(server)
        if followed:
            close_when_job_ends(way, followed, server.job_store())
    _current = Dashboard(server, way)
    return _current


def _unfinished_newest(server: DashboardServer) -> str | None:
    records = server.job_store().list(limit=1)
    return records[0].id if records and not records[0].status.is_terminal else None


def stop(why: str | None = "") -> bool:
    """Close the tunnel, stop the server and replace its frames with a 'dashboard stopped'
    note (``why`` None: leave the frames alone); False if none was running."""
    global _current
    if _current is None:
        return False
    board, _current = _current, None
    board.tunnel.close()
    board.server.stop()
    if why is not None:
        with contextlib.suppress(Exception):  # no display machinery to update
            board.mark_stopped(why)
    return True


def current() -> Dashboard | None:
    return _current


atexit.register(stop, None)  # at exit there is no front-end left to update
