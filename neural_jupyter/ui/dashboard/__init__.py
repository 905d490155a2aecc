"""The debug dashboard: a token-protected local web page with live curves, gradient flow,
activation statistics, anomalies and the model graph, fed by Server-Sent Events from a job's
event log; reachable inline, through Colab's port proxy, or (opt-in) an authenticated ngrok
tunnel."""

from neural_jupyter.ui.dashboard.server import DashboardServer
from neural_jupyter.ui.dashboard.tunnels import Tunnel, open_tunnel

__all__ = ["DashboardServer", "Tunnel", "open_tunnel"]
