"""The planted-secret sweep: for each way a secret enters (an environment value, an option, a
setup command, a URL, printed by the job, raised in an exception) a unique value is planted,
real jobs run (locally, and over SSH against a real SSH server), and every sink is scanned:
the job store file (its pages and WAL, as bytes), every other file under
NEURAL_JUPYTER_HOME (bundles, log mirrors), log reads (``Job.logs``, ``%neural_logs``), the
dashboard's event stream and API, the widget and text monitors, exceptions and dry runs.
Zero hits; and controls prove each secret really went through (the raw value is on the
"remote" side, masks are in the logs), so the sweep can fail.
"""

from __future__ import annotations

import getpass
import json
import secrets
import threading
from pathlib import Path

import pytest
import requests

from neural_jupyter import api, redaction
from neural_jupyter.backends import ssh
from neural_jupyter.codegen import pytorch_training
from neural_jupyter.errors import JobFailed, NeuralError
from neural_jupyter.jobs.job import Job
from neural_jupyter.jobs.store import JobStore
from neural_jupyter.redaction import MASK
from neural_jupyter.runtime.bundle import Bundle
from neural_jupyter.ui.monitor import WidgetMonitor

pytest.importorskip("paramiko")
pytest.importorskip("asyncssh")
pytest.importorskip("tornado")
pytest.importorskip("plotly")
pytest.importorskip("ipywidgets")

from sshd import PYTHON, AsyncSSHServer, make_client_key

USER = getpass.getuser()
MODEL = """network Leaky {
  input: (8,)
  layers: Dense(4, "relu") Output(2, "softmax")
  loss: "sparse_categorical_crossentropy"
  train { epochs: 1 batch_size: 64 }
}"""
# What the job does first (reading only environment variable *names*, so no secret is ever
# in the generated script, the bundle or this file): print secrets, then raise one.
JOB_CODE = """
    import os as _os
    _e = _os.environ.get
    print("env:", _e("SWEEP_SERVICE_TOKEN"), _e("AWS_SECRET_ACCESS_KEY"), flush=True)
    print(_e("SWEEP_SERVICE_TOKEN"), file=sys.stderr, flush=True)
    print("option:", _e("SWEEP_ECHO_OPTION"), _e("SWEEP_ECHO_URL"), flush=True)
    print("printed: ghp_" + _e("SWEEP_PRINT_A", ""), flush=True)
    print("printed: password=" + _e("SWEEP_PRINT_B", ""), file=sys.stderr, flush=True)
    print("printed: Authorization: Bearer " + _e("SWEEP_PRINT_C", ""), flush=True)
    emit("status", message="printed: fetching https://bot:" + _e("SWEEP_PRINT_D", "") + "@h/x")
    emit("status", message="env: " + str(_e("SWEEP_SERVICE_TOKEN")))
    raise RuntimeError(
        "cannot connect to postgres://admin:" + _e("SWEEP_EXC_VALUE", "") + "@db.internal/x"
    )
"""
SINKS = (
    "job store (sqlite pages + WAL)",
    "files under NEURAL_JUPYTER_HOME",
    "bundles",
    "log mirrors",
    "log reads (Job.logs, %neural_logs)",
    "dashboard stream and API",
    "widget monitor",
    "text monitor",
    "exceptions",
    "dry runs",
)
WAYS = ("env value", "option", "setup command", "URL", "printed by the job", "exception")


def token(prefix: str) -> str:
    return prefix + secrets.token_hex(14)


@pytest.fixture
def planted(monkeypatch):
    values = {
        "env value": [token("envA"), token("envB") + "/" + token("x")],
        "option": [token("opt")],
        "setup command": [token("hfSetup"), token("dbpw")],
        "URL": [token("urlpw"), token("dataurl")],
        "printed by the job": [token("pA"), token("pB"), token("pC"), token("pD")],
        "exception": [token("exc")],
    }
    monkeypatch.setenv("SWEEP_SERVICE_TOKEN", values["env value"][0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", values["env value"][1])
    for name, value in zip("ABCD", values["printed by the job"], strict=True):
        monkeypatch.setenv(f"SWEEP_PRINT_{name}", value)
    monkeypatch.setenv("SWEEP_EXC_VALUE", values["exception"][0])
    redaction.refresh()
    original = pytorch_training.generate_training_script
    marker = "def train(bundle: Path, job: dict, resume: bool) -> dict:\n"

    def leaky(spec):
        code = original(spec)
        assert marker in code
        return code.replace(marker, marker + JOB_CODE, 1)

    monkeypatch.setattr(pytorch_training, "generate_training_script", leaky)
    return values


class Outputs:
    """Everything a sink produced, by sink name."""

    def __init__(self) -> None:
        self.texts: dict[str, list[str]] = {sink: [] for sink in SINKS}

    def add(self, sink: str, value: object) -> None:
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        self.texts[sink].append(value if isinstance(value, str) else json.dumps(value, default=str))

    def hits(self, values: dict[str, list[str]]) -> list[tuple[str, str]]:
        found = []
        for sink, texts in self.texts.items():
            blob = "\n".join(texts)
            for way, planted in values.items():
                if any(value in blob for value in planted):
                    found.append((sink, way))
        return found


def home_files(home: Path, outputs: Outputs) -> None:
    for path in sorted(home.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        outputs.add("files under NEURAL_JUPYTER_HOME", data)
        name = path.name
        if name.startswith("jobs.sqlite"):
            outputs.add("job store (sqlite pages + WAL)", data)
        elif "bundle" in path.parts:
            outputs.add("bundles", data)
        elif name.endswith((".log", ".offset")):
            outputs.add("log mirrors", data)


def dashboard_outputs(job_ids: list[str], outputs: Outputs) -> list[str]:
    from neural_jupyter.ui.dashboard.server import DashboardServer

    server = DashboardServer(job_ids[0]).start()
    streamed: list[str] = []
    try:
        base = f"http://127.0.0.1:{server.port}"
        params = {"token": server.token}
        outputs.add(
            "dashboard stream and API",
            requests.get(f"{base}/api/jobs", params=params, timeout=30).text,
        )
        for job_id in job_ids:
            outputs.add(
                "dashboard stream and API",
                requests.get(f"{base}/api/jobs/{job_id}/spec", params=params, timeout=30).text,
            )
            lines: list[str] = []

            def read(job_id: str = job_id, lines: list[str] = lines) -> None:
                url = f"{base}/api/jobs/{job_id}/events"
                with requests.get(url, params=params, stream=True, timeout=60) as response:
                    for line in response.iter_lines(decode_unicode=True):
                        lines.append(line)
                        if len(lines) > 1 and lines[-2].startswith("event: end"):
                            return

            reader = threading.Thread(target=read)
            reader.start()
            reader.join(60)
            assert lines and lines[-2].startswith("event: end"), lines[-3:]
            outputs.add("dashboard stream and API", "\n".join(lines))
            streamed.extend(lines)
    finally:
        server.stop()
    return streamed


def widget_output(job: Job, outputs: Outputs) -> None:
    view = WidgetMonitor(Job.load(job.id))
    for item in view.job.follow():  # a finished job: its stream from the start
        view.feed(item)
    view.finish(view.job.record.status.value, view.job.record.error or "")
    for widget in (view.header, view.progress_text, view.chart, view.log_view, view.summary):
        outputs.add("widget monitor", widget.value)


@pytest.fixture
def ssh_server(tmp_path_factory):
    keys = make_client_key(tmp_path_factory.mktemp("sweep-keys"))
    server = AsyncSSHServer(tmp_path_factory.mktemp("sweep-ssh"), Path(f"{keys}.pub")).start()
    yield server, keys
    server.stop()


def test_no_planted_secret_reaches_any_sink(
    planted, ssh_server, neural_home, tmp_path, ip, capsys, monkeypatch
):
    outputs = Outputs()
    values = planted
    # --- a local job: env values, printed secrets, an exception --------------------------------
    ip.run(f"%%neural_compile --show none\n{MODEL}")
    local = api.run(MODEL, "synthetic", wait=False, monitor="none")
    with pytest.raises(JobFailed) as failed:
        api.watch(local, "text")
    outputs.add("exceptions", str(failed.value))
    outputs.add("exceptions", "\n".join(failed.value._render_traceback_()))
    # an exception raised in the kernel, with a URL holding a password
    with pytest.raises(NeuralError) as bad_data:
        api.run(MODEL, f"https://u:{values['URL'][1]}@data.example/x.npz", monitor="none")
    outputs.add("exceptions", str(bad_data.value))
    # --- an SSH job: an option, a setup command, a URL, and the same job code ------------------
    server, client_key = ssh_server
    home = tmp_path / "ssh-home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(ssh.SSHBackend, "poll_seconds", 0.2)
    from neural_jupyter import backends as registry

    registry._instances.pop("ssh", None)
    known = tmp_path / "known_hosts"
    known.write_text(server.known_hosts_line())
    hf, db_password = values["setup command"]
    url_password = values["URL"][0]
    option = values["option"][0]
    monkeypatch.setenv("SWEEP_ECHO_OPTION", option)  # the job echoes its options
    monkeypatch.setenv("SWEEP_ECHO_URL", f"https://me:{url_password}@pypi.corp/simple")
    extra = {
        "host": f"{USER}@127.0.0.1:{server.port}",
        "key_file": str(client_key),
        "known_hosts": str(known),
        "python": f"env OMP_NUM_THREADS=1 {PYTHON}",
        "workdir": str(tmp_path / "remote-jobs"),
        "setup": f"export HF_TOKEN={hf}; export DB_URL=postgres://app:{db_password}@db/x; "
        'echo "setup: $HF_TOKEN $DB_URL"',
        "password": option,
        "provider_url": f"https://me:{url_password}@provider.example/v1",
    }
    plan = api.submit(MODEL, "synthetic", platform="ssh", extra=extra, dry_run=True)
    outputs.add("dry runs", str(plan))
    outputs.add("dry runs", plan.request)
    ip.run(
        "%neural_submit Leaky --platform ssh --data synthetic --dry-run "
        f"--host {extra['host']} --set password={option} "
        f"--set provider_url=https://me:{url_password}@provider.example/v1"
    )
    with pytest.raises(JobFailed) as remote_failed:
        api.submit(MODEL, "synthetic", platform="ssh", extra=extra, monitor="text")
    outputs.add("exceptions", str(remote_failed.value))
    outputs.add("exceptions", "\n".join(remote_failed.value._render_traceback_()))
    (remote_record,) = JobStore().list(platform="ssh")
    remote = Job(remote_record)
    captured = capsys.readouterr()
    outputs.add("text monitor", captured.out + captured.err)
    outputs.add("dry runs", captured.out)
    # --- the other read sinks, for both jobs ----------------------------------------------------
    for job in (Job.load(local.id), remote):
        outputs.add("log reads (Job.logs, %neural_logs)", "\n".join(job.logs()))
        outputs.add("log reads (Job.logs, %neural_logs)", "\n".join(job.logs(tail=5)))
        ip.run(f"%neural_logs {job.id}")
        outputs.add("log reads (Job.logs, %neural_logs)", capsys.readouterr().out)
        widget_output(job, outputs)
        outputs.add("bundles", Bundle(job.bundle_dir, {}).archive())
    ip.run("%neural_jobs")
    outputs.add("text monitor", capsys.readouterr().out)
    streamed = dashboard_outputs([local.id, remote.id], outputs)
    home_files(neural_home, outputs)

    # --- controls: every secret really went through the pipeline --------------------------------
    logs = "\n".join(Job.load(local.id).logs() + remote.logs())
    assert logs.count(f"env: {MASK} {MASK}") == 2  # printed by both jobs, masked
    assert f"setup: {MASK} postgres://app:{MASK}@db/x" in logs  # the setup's own output
    assert f"option: {MASK} https://me:{MASK}@pypi.corp/simple" in logs
    assert f"Authorization: Bearer {MASK}" in logs and f"password={MASK}" in logs
    assert f"postgres://admin:{MASK}@db.internal/x" in str(failed.value)
    remote_raw = Path(remote.record.config["remote"]["remote_dir"]) / "stdout.log"
    assert hf in remote_raw.read_text()  # outside NEURAL_JUPYTER_HOME the raw value is there
    assert option in remote_raw.read_text()
    assert any('"event": "error"' in line for line in streamed)
    assert any(f"https://bot:{MASK}@h/x" in line for line in streamed)
    stored = json.dumps(remote.record.config)
    assert f'"extra.password": "{MASK}"' in stored and f"HF_TOKEN={MASK}" in stored
    assert f"https://me:{MASK}@provider.example/v1" in stored
    assert all(outputs.texts[sink] for sink in SINKS)  # every sink produced something

    hits = outputs.hits(values)
    cells = len(SINKS) * len(WAYS)
    print(
        f"\nplanted-secret sweep: {len(SINKS)} sinks x {len(WAYS)} entry ways = {cells} cells, "
        f"{sum(len(v) for v in values.values())} planted values, {len(hits)} hits"
    )
    assert hits == []
