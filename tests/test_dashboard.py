"""The debug dashboard: real HTTP against the server (auth, SSE, bad paths), pyngrok with a
fake ngrok executable, and Colab's port proxy with a stand-in google.colab module."""

from __future__ import annotations

import json
import sys
import textwrap
import threading
import time
import types

import pytest
import requests

from neural_jupyter.compiler import compile_model
from neural_jupyter.errors import ConfigurationError
from neural_jupyter.jobs.store import JobStatus, JobStore
from neural_jupyter.runtime.bundle import spec_summary
from neural_jupyter.ui.dashboard import control
from neural_jupyter.ui.dashboard.server import DashboardServer
from neural_jupyter.ui.dashboard.tunnels import resolve_mode

pytest.importorskip("tornado")
pytest.importorskip("plotly")

NET = """network Dash {
  input: (8,)
  layers: Dense(4, "relu") Residual { Dense(4) } Output(2, "softmax")
  loss: "sparse_categorical_crossentropy"
}"""

EVENTS = [
    {"event": "start", "model": "Dash", "device_name": "cpu", "params": 70},
    {"event": "epoch", "epoch": 1, "epochs": 2, "metrics": {"loss": 0.9}},
    {
        "event": "layer_stats",
        "step": 5,
        "layers": [{"name": "dense_1", "grad_norm": 0.1}],
        "anomalies": [{"kind": "non_finite", "layer": "dense_1", "step": 5}],
    },
]


@pytest.fixture
def job(neural_home):
    store = JobStore()
    record = store.create(name="Dash", platform="local", status=JobStatus.RUNNING)
    directory = neural_home / "jobs" / record.id
    (directory / "bundle").mkdir(parents=True)
    spec = spec_summary(compile_model(NET).spec)
    (directory / "bundle" / "spec.json").write_text(json.dumps(spec))
    (directory / "stdout.log").write_text(
        "plain log line\n" + "".join(json.dumps(e) + "\n" for e in EVENTS)
    )
    store.update(record.id, job_dir=str(directory))
    return store.get(record.id)


@pytest.fixture
def server(job):
    running = DashboardServer(job.id).start()
    yield running
    running.stop()


def get(server, path, token=True, **kwargs):
    params = {"token": server.token} if token is True else ({"token": token} if token else {})
    return requests.get(
        f"http://127.0.0.1:{server.port}{path}", params=params, timeout=10, **kwargs
    )


def test_every_request_needs_the_token(server):
    assert get(server, "/", token=None).status_code == 403
    assert get(server, "/", token="wrong-" + server.token).status_code == 403
    assert get(server, "/api/jobs", token=None).status_code == 403
    assert get(server, "/static/plotly.min.js", token=None).status_code == 403
    page = get(server, "/")
    assert page.status_code == 200 and "neural-jupyter" in page.text
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    assert page.cookies.get("neural_dashboard_token") == server.token
    bearer = requests.get(
        f"http://127.0.0.1:{server.port}/api/jobs",
        timeout=10,
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert bearer.status_code == 200
    plotly = get(server, "/static/plotly.min.js")
    assert plotly.status_code == 200 and len(plotly.content) > 1_000_000


def test_listens_on_loopback_only(server):
    socket = next(iter(server._server._sockets.values()))
    assert socket.getsockname()[0] == "127.0.0.1"


def test_no_listing_or_traversal(server, job):
    for path in (
        "/static/",
        "/static/../server.py",
        "/static/%2e%2e/server.py",
        "/..%2f..%2fetc%2fpasswd",
        "/api/jobs/nj-00000000/spec",
        "/api/jobs/../../etc/passwd",
        "/api/jobs/nj-zz/spec",
        "/etc/passwd",
    ):
        response = get(server, path)
        assert response.status_code in (403, 404), path
        assert "root:" not in response.text
    assert get(server, "/static/", token=None).status_code == 403


def test_spec_graph_and_sse_stream(server, job):
    spec = get(server, f"/api/jobs/{job.id}/spec").json()
    assert spec["name"] == "Dash" and spec["layers"][1]["kind"] == "Residual"
    svg = get(server, f"/api/jobs/{job.id}/graph.svg")
    assert svg.headers["Content-Type"].startswith("image/svg") and "residual_1" in svg.text
    received: list[str] = []

    def stream():
        with get(server, f"/api/jobs/{job.id}/events", stream=True) as response:
            for line in response.iter_lines(decode_unicode=True):
                received.append(line)
                if len(received) > 1 and received[-2].startswith("event: end"):
                    break

    reader = threading.Thread(target=stream)
    reader.start()
    time.sleep(0.8)  # the live part: a new epoch arrives, then the job ends
    log = job.job_dir + "/stdout.log"
    with open(log, "a") as handle:
        handle.write(json.dumps({"event": "epoch", "epoch": 2, "metrics": {"loss": 0.5}}) + "\n")
    time.sleep(0.5)
    JobStore().set_status(job.id, JobStatus.SUCCEEDED)
    reader.join(15)
    data = [json.loads(line[6:]) for line in received if line.startswith("data: {")]
    assert [e["event"] for e in data] == ["start", "epoch", "layer_stats", "epoch"]
    assert data[-1]["epoch"] == 2
    assert "event: end" in received and 'data: "SUCCEEDED"' in received
    assert not any("plain log line" in line for line in received)


FAKE_NGROK = """#!{python}
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RECORD = {record!r}


def record(entry):
    with open(RECORD, "a") as handle:
        handle.write(json.dumps(entry) + "\\n")


record({{"argv": sys.argv}})


class Api(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, body, status=200):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.reply({{"tunnels": [], "endpoints": []}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        record({{"post": self.path, "body": body}})
        self.reply({{"name": body.get("name", "t"), "uri": "/api/tunnels/t", "proto": "https",
                    "public_url": "https://fake-tunnel.ngrok.app", "url": "https://fake-tunnel.ngrok.app",
                    "id": "ep_1", "config": {{"addr": body.get("addr")}}}}, 201)

    def do_DELETE(self):
        record({{"delete": self.path}})
        self.send_response(204)
        self.end_headers()


server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
port = server.server_address[1]
print(f't=now lvl=info msg="starting web service" obj=web addr=127.0.0.1:{{port}}', flush=True)
print('t=now lvl=info msg="client session established" obj=csess', flush=True)
print('t=now lvl=info msg="tunnel session started" obj=tunnels.session', flush=True)
server.serve_forever()
"""


@pytest.fixture
def fake_ngrok(tmp_path):
    from pyngrok import conf, ngrok

    record = tmp_path / "ngrok-record.jsonl"
    binary = tmp_path / "ngrok"
    binary.write_text(textwrap.dedent(FAKE_NGROK).format(python=sys.executable, record=str(record)))
    binary.chmod(0o755)
    config = conf.PyngrokConfig(
        ngrok_path=str(binary),
        config_path=str(tmp_path / "n.yml"),
        config_version="2",
        monitor_thread=False,
    )
    (tmp_path / "n.yml").write_text('version: "2"\n')
    yield config, record
    ngrok.kill(pyngrok_config=config)


def test_ngrok_tunnel_requires_a_token(job, monkeypatch, fake_ngrok):
    config, record = fake_ngrok
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="NGROK_AUTHTOKEN"):
        control.start(job.id, "ngrok", pyngrok_config=config)
    assert not record.exists()  # no agent was started
    assert control.current() is None


def test_ngrok_tunnel_always_has_basic_auth(job, monkeypatch, fake_ngrok):
    config, record = fake_ngrok
    secret_token = "2ngroktokenAbCdEfGhIjKlMnOpQrStUv"
    monkeypatch.setenv("NGROK_AUTHTOKEN", secret_token)
    board = control.start(job.id, "ngrok", pyngrok_config=config)
    try:
        assert board.url.startswith("https://fake-tunnel.ngrok.app/?token=")
        assert board.server.token in board.url
        entries = [json.loads(line) for line in record.read_text().splitlines()]
        posts = [e["body"] for e in entries if "post" in e]
        assert len(posts) == 1
        assert posts[0]["addr"] == str(board.server.port)
        assert posts[0]["basic_auth"] == [f"neural:{board.tunnel.password}"]
        assert len(board.tunnel.password) >= 20
        argv = next(e["argv"] for e in entries if "argv" in e)
        assert secret_token not in " ".join(argv)  # not on the agent's command line
        assert secret_token not in repr(board)
    finally:
        control.stop()
    entries = [json.loads(line) for line in record.read_text().splitlines()]
    assert any("delete" in e for e in entries)  # the tunnel was closed
    assert board.tunnel.closed


def test_colab_uses_its_port_proxy(job, monkeypatch):
    calls = []
    colab = types.ModuleType("google.colab")
    output = types.ModuleType("google.colab.output")
    output.serve_kernel_port_as_iframe = lambda port, path="/", height=None: calls.append(
        (port, path)
    )
    colab.output = output
    google = sys.modules.get("google") or types.ModuleType("google")
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.output", output)
    colab.__spec__ = types.SimpleNamespace(name="google.colab")
    monkeypatch.setattr("neural_jupyter.ui.dashboard.tunnels.in_colab", lambda: True)
    assert resolve_mode("auto") == "colab"
    board = control.start(job.id, "auto")
    try:
        assert board.tunnel.kind == "colab" and board.url is None
        port, path = calls[0]
        assert port == board.server.port and f"token={board.server.token}" in path
    finally:
        control.stop()


def test_auto_never_picks_ngrok(monkeypatch):
    monkeypatch.setenv("NGROK_AUTHTOKEN", "x" * 30)
    monkeypatch.delenv("JUPYTERHUB_SERVICE_PREFIX", raising=False)
    monkeypatch.setattr("neural_jupyter.ui.dashboard.tunnels.in_colab", lambda: False)
    assert resolve_mode("auto") == "none"


def test_dashboard_magic_inline_and_stop(ip, job, capsys):
    ip.run(f"%neural_dashboard {job.id} --tunnel none")
    board = control.current()
    assert board is not None and board.tunnel.kind == "local"
    assert get(board.server, "/api/jobs").json()["default"] == job.id
    ip.run("%neural_dashboard --stop")
    assert control.current() is None and "stopped" in capsys.readouterr().out
