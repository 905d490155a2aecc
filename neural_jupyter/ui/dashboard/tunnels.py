"""How the dashboard is reached: inline (local), through jupyter-server-proxy, through
Colab's kernel-port proxy, or — only when asked for and only with ``NGROK_AUTHTOKEN`` — an
ngrok tunnel that always has HTTP basic auth (a random password shown once) on top of the
dashboard's own token. Never an open tunnel. Tunnels close on ``--stop``, at job end
(unless kept) and at kernel exit.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from neural_jupyter.errors import ConfigurationError, MissingDependencyError
from neural_jupyter.redaction import register_secret

MODES = ("auto", "none", "colab", "ngrok", "proxy")
NGROK_USER = "neural"
FRAME_HEIGHT = 1250  # px: room for the curves, the statistics panels and the model graph
_open: list[Tunnel] = []


@dataclass
class Tunnel:
    kind: str
    url: str | None  # what to open in a browser (None: Colab shows the frame itself)
    username: str | None = None
    password: str | None = None
    _close: Callable[[], None] = field(default=lambda: None, repr=False)
    closed: bool = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._close()


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ModuleNotFoundError, ValueError):
        return False


def in_colab() -> bool:
    return _importable("google.colab")


def resolve_mode(mode: str) -> str:
    """``auto`` never means ngrok: Colab's proxy on Colab, the Jupyter proxy on a hub, else
    a local frame."""
    if mode not in MODES:
        raise ConfigurationError(f"--tunnel must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    if in_colab():
        return "colab"
    if os.environ.get("JUPYTERHUB_SERVICE_PREFIX") and _importable("jupyter_server_proxy"):
        return "proxy"
    return "none"


def ngrok_token() -> str | None:
    token = os.environ.get("NGROK_AUTHTOKEN")
    if token:
        return token
    try:
        import keyring
    except ImportError:
        return None
    try:
        return keyring.get_password("neural-jupyter", "ngrok")
    except Exception:  # a keyring without a backend
        return None


def open_tunnel(server: Any, mode: str = "auto", pyngrok_config: Any = None) -> Tunnel:
    kind = resolve_mode(mode)
    if kind == "none":
        tunnel = Tunnel("local", server.url)
    elif kind == "proxy":
        prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/").rstrip("/")
        tunnel = Tunnel("proxy", f"{prefix}/proxy/{server.port}{server.path()}")
    elif kind == "colab":
        tunnel = _colab(server)
    else:
        tunnel = _ngrok(server, pyngrok_config)
    _open.append(tunnel)
    return tunnel


def _colab(server: Any) -> Tunnel:
    try:
        from google.colab import output
    except ImportError:
        raise ConfigurationError("--tunnel colab works only inside Google Colab") from None
    output.serve_kernel_port_as_iframe(server.port, path=server.path(), height=FRAME_HEIGHT)
    return Tunnel("colab", None)


def _ngrok(server: Any, pyngrok_config: Any) -> Tunnel:
    token = ngrok_token()
    if not token:
        raise ConfigurationError(
            "an ngrok tunnel needs an ngrok auth token",
            hint="set NGROK_AUTHTOKEN (e.g. from Kaggle/Colab secrets) or store it with "
            "keyring.set_password('neural-jupyter', 'ngrok', TOKEN)",
        )
    if not _importable("pyngrok"):
        raise MissingDependencyError("pyngrok", "ngrok", "The ngrok tunnel")
    from pyngrok import conf, ngrok

    register_secret(token)
    # The agent reads NGROK_AUTHTOKEN from its environment: the token stays off its command
    # line (visible to every user of the machine) and out of any config file we write.
    os.environ["NGROK_AUTHTOKEN"] = token
    config = pyngrok_config or conf.PyngrokConfig(config_version="2")
    password = secrets.token_urlsafe(18)
    register_secret(password)
    remote = ngrok.connect(
        str(server.port),
        "http",
        pyngrok_config=config,
        basic_auth=[f"{NGROK_USER}:{password}"],
    )
    url = remote.public_url.rstrip("/") + server.path()

    def close() -> None:
        # the agent may be gone already (kernel exit)
        with contextlib.suppress(Exception):
            ngrok.disconnect(remote.public_url, pyngrok_config=config)

    return Tunnel("ngrok", url, NGROK_USER, password, close)


def close_when_job_ends(tunnel: Tunnel, job_id: str, store: Any, poll: float = 0.5) -> None:
    """Close ``tunnel`` within seconds of the job's end (a daemon thread). It follows the
    job's own event log and process (``jobs.lifetime.EndWatch``), so it does not depend on
    anyone refreshing the job's status; a job removed from the store closes it too."""
    from neural_jupyter.jobs.lifetime import EndWatch
    from neural_jupyter.jobs.store import JobNotFoundError

    watch = EndWatch(job_id, store)

    def follow() -> None:
        while not tunnel.closed:
            try:
                ended = watch.ended()
            except JobNotFoundError:
                ended = True
            except Exception:  # a store that cannot be read now: try again
                ended = False
            if ended:
                tunnel.close()
                with contextlib.suppress(Exception):
                    watch.settle()  # and the job store records the end, whoever looks
                return
            time.sleep(poll)

    threading.Thread(target=follow, name=f"neural-tunnel-{job_id}", daemon=True).start()


def close_all() -> None:
    while _open:
        _open.pop().close()


atexit.register(close_all)
