"""The server extension's REST API in a real Jupyter Server (pytest-jupyter), over a real job
store with real local training jobs on the bundled digits data.

Jobs are started by a separate Python process (as a kernel would start them) that exits at
once, so the server knows them only through the job store, like in real use. That process and
the jobs print planted secrets (a ``sitecustomize`` on their path); no response may carry them.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
from tornado.httpclient import HTTPClientError

from neural_jupyter.redaction import MASK

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

MODEL = """
network Digits {
  input: (8, 8, 1)
  layers:
    Flatten()
    Dense(32, "relu")
    Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  optimizer: Adam(learning_rate=0.01)
  metrics: ["accuracy"]
  train { epochs: EPOCHS  batch_size: 64  validation_split: 0.2  seed: 1 }
}
"""

SECRETS = (
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzz9PLANTED",
    "sk-planted-0123456789abcdef",
    "planted0123456789tokenvalue",
)
PLANT = f"""
import sys
print("connecting with AWS_SECRET_ACCESS_KEY={SECRETS[0]}", flush=True)
print("api_key={SECRETS[1]}", file=sys.stderr, flush=True)
print('{{"event": "status", "message": "uploading with token={SECRETS[2]}"}}', flush=True)
"""
STARTER = """
import sys
from neural_jupyter import api, compile_model
job = api.run(compile_model(sys.stdin.read()), "digits", wait=False, monitor="none")
print(job.id)
"""


@pytest.fixture
def job_env(neural_home, tmp_path):
    """The environment of a kernel: same job store, plus a sitecustomize printing secrets."""
    plant = tmp_path / "plant"
    plant.mkdir()
    (plant / "sitecustomize.py").write_text(PLANT)
    path = os.pathsep.join(p for p in (str(plant), str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "NEURAL_JUPYTER_HOME": str(neural_home)}


@pytest.fixture
def start_job(job_env):
    """Start a digits job with ``epochs`` from another process; returns (job id, pid)."""
    started: list[int] = []

    def start(epochs: int) -> tuple[str, int]:
        done = subprocess.run(
            [sys.executable, "-c", STARTER],
            input=MODEL.replace("EPOCHS", str(epochs)),
            capture_output=True,
            text=True,
            env=job_env,
            timeout=180,
            check=True,
        )
        job_id = done.stdout.strip().splitlines()[-1]
        from neural_jupyter import jobs

        pid = int(jobs.get(job_id).record.remote_id.removeprefix("pid:"))
        started.append(pid)
        return job_id, pid

    yield start
    for pid in started:  # never leave a training process behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, 9)


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" in status.read_text()


async def get_json(jp_fetch, *parts, **kwargs):
    response = await jp_fetch("neural-jupyter", "api", *parts, **kwargs)
    text = response.body.decode()
    for secret in SECRETS:
        assert secret not in text, f"a planted secret leaked in {parts}"
    return json.loads(text)


async def wait_until(check, timeout=90.0, interval=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await _sleep(interval)
    raise AssertionError("timed out waiting")


async def _sleep(seconds):
    import asyncio

    await asyncio.sleep(seconds)


async def test_list_get_and_logs_of_real_jobs(jp_fetch, start_job):
    short_id, _ = start_job(3)
    long_id, long_pid = start_job(100000)

    # the finished job gets its final state recorded by the server (no kernel follows it)
    async def short_finished():
        jobs = (await get_json(jp_fetch, "jobs"))["jobs"]
        by_id = {job["id"]: job for job in jobs}
        return by_id if by_id[short_id]["status"] == "SUCCEEDED" else None

    by_id = await wait_until(short_finished)
    short, running = by_id[short_id], by_id[long_id]
    assert short["platform"] == "local" and short["terminal"] is True
    assert short["progress"]["fraction"] == 1.0 and short["progress"]["epochs"] == 3
    assert 0.0 <= short["metrics"]["val_accuracy"] <= 1.0
    assert short["attach"] == f"%neural_attach {short_id}"
    assert short["paid"] is False and short["cost"] is None

    # the running job shows live progress read from its event stream
    async def running_epochs():
        job = await get_json(jp_fetch, "jobs", long_id)
        return job if (job["progress"] or {}).get("epoch", 0) >= 2 else None

    running = await wait_until(running_epochs)
    assert running["status"] == "RUNNING" and running["terminal"] is False
    assert running["progress"]["epochs"] == 100000
    assert 0 < running["progress"]["fraction"] < 0.01
    assert "loss" in running["metrics"]
    assert running["message"] is not None and MASK in running["message"]  # the planted status
    assert [h["epoch"] for h in running["history"][:2]] == [1, 2]

    # filters
    listed = await get_json(jp_fetch, "jobs", params={"status": "running"})
    assert [job["id"] for job in listed["jobs"]] == [long_id]
    listed = await get_json(jp_fetch, "jobs", params={"status": "SUCCEEDED,FAILED"})
    assert [job["id"] for job in listed["jobs"]] == [short_id]
    listed = await get_json(jp_fetch, "jobs", params={"platform": "local"})
    assert {job["id"] for job in listed["jobs"]} == {short_id, long_id}
    assert (await get_json(jp_fetch, "jobs", params={"platform": "sagemaker"}))["jobs"] == []
    assert len((await get_json(jp_fetch, "jobs", params={"limit": "1"}))["jobs"]) == 1
    with pytest.raises(HTTPClientError) as bad:
        await jp_fetch("neural-jupyter", "api", "jobs", params={"status": "DONE"})
    assert bad.value.code == 400

    # one job with its whole history; an id prefix works; an unknown id is 404
    detail = await get_json(jp_fetch, "jobs", short_id[:7])
    assert detail["id"] == short_id
    assert [entry["epoch"] for entry in detail["history"]] == [1, 2, 3]
    assert all(isinstance(entry["loss"], float) for entry in detail["history"])
    assert detail["config"]["settings"]["epochs"] == 3
    with pytest.raises(HTTPClientError) as missing:
        await jp_fetch("neural-jupyter", "api", "jobs", "nj-00000000")
    assert missing.value.code == 404
    assert "no job with id" in json.loads(missing.value.response.body)["message"]

    # logs: plain lines only (no events), the planted secrets masked
    logs = await get_json(jp_fetch, "jobs", short_id, "logs", params={"tail": "50"})
    assert logs["lines"], logs
    assert not any(line.startswith('{"event"') for line in logs["lines"])
    assert any("AWS_SECRET_ACCESS_KEY=" + MASK in line for line in logs["lines"])
    assert any("api_key=" + MASK in line for line in logs["lines"])
    stderr = await get_json(jp_fetch, "jobs", short_id, "logs", params={"stream": "stderr"})
    assert all("AWS_SECRET" not in line for line in stderr["lines"])
    assert (
        len((await get_json(jp_fetch, "jobs", short_id, "logs", params={"tail": "1"}))["lines"])
        == 1
    )

    # the dashboard is served by this server, behind its login
    url = (await get_json(jp_fetch, "jobs", short_id, "dashboard"))["url"]
    assert url.endswith(f"/neural-jupyter/dashboard/?job={short_id}")
    page = await jp_fetch("neural-jupyter", "dashboard/", params={"job": short_id})
    assert b"neural-jupyter dashboard" in page.body
    graph = await jp_fetch("neural-jupyter", "dashboard", "api", "jobs", short_id, "graph.svg")
    assert graph.headers["Content-Type"] == "image/svg+xml" and b"<svg" in graph.body
    spec = await jp_fetch("neural-jupyter", "dashboard", "api", "jobs", short_id, "spec")
    assert json.loads(spec.body)["name"] == "Digits"
    events = await jp_fetch("neural-jupyter", "dashboard", "api", "jobs", short_id, "events")
    text = events.body.decode()
    assert text.count('"event": "epoch"') == 3 and 'event: end\ndata: "SUCCEEDED"' in text
    assert all(secret not in text for secret in SECRETS)

    assert not pid_gone(long_pid)


async def test_cancel_stops_the_training_process(jp_fetch, start_job):
    job_id, pid = start_job(100000)
    await wait_until(lambda: _status_is(jp_fetch, job_id, "RUNNING"), timeout=90)
    reply = await get_json(jp_fetch, "jobs", job_id, "cancel", method="POST", body=b"")
    assert reply["status"] == "CANCELLED" and reply["cancelled"] is True
    deadline = time.monotonic() + 15
    while not pid_gone(pid) and time.monotonic() < deadline:
        await _sleep(0.1)
    assert pid_gone(pid)
    # cancelling again changes nothing and says so
    again = await get_json(jp_fetch, "jobs", job_id, "cancel", method="POST", body=b"")
    assert again["status"] == "CANCELLED" and again["cancelled"] is False
    from neural_jupyter import jobs

    assert jobs.get(job_id).record.status.value == "CANCELLED"


async def _status_is(jp_fetch, job_id, status):
    return (await get_json(jp_fetch, "jobs", job_id))["status"] == status


ROUTES = [
    ("GET", ("jobs",)),
    ("GET", ("jobs", "nj-00000000")),
    ("GET", ("jobs", "nj-00000000", "logs")),
    ("GET", ("jobs", "nj-00000000", "dashboard")),
    ("POST", ("jobs", "nj-00000000", "cancel")),
]


@pytest.mark.parametrize(("method", "parts"), ROUTES)
async def test_every_route_refuses_a_request_without_the_token(jp_fetch, method, parts):
    for header in ("", "token wrong-token-0123456789"):
        with pytest.raises(HTTPClientError) as refused:
            await jp_fetch(
                "neural-jupyter",
                "api",
                *parts,
                method=method,
                body=b"" if method == "POST" else None,
                headers={"Authorization": header},
            )
        assert refused.value.code == 403


async def test_dashboard_refuses_a_request_without_the_token(jp_fetch):
    with pytest.raises(HTTPClientError) as refused:
        await jp_fetch("neural-jupyter", "dashboard", "api", "jobs", headers={"Authorization": ""})
    assert refused.value.code == 403
    for parts in (("",), ("static", "dashboard.js")):  # pages: sent to log in, like /lab
        with pytest.raises(HTTPClientError) as redirected:
            await jp_fetch(
                "neural-jupyter",
                "dashboard",
                *parts,
                headers={"Authorization": ""},
                follow_redirects=False,
            )
        assert redirected.value.code == 302
        assert "/login?next=" in redirected.value.response.headers["Location"]


async def test_cancel_with_the_login_cookie_needs_the_xsrf_token(jp_fetch, jp_serverapp, start_job):
    """A browser session (cookie login) must send the XSRF token with a POST, like every
    Jupyter API; without it the job is left running."""
    job_id, pid = start_job(100000)
    token = jp_serverapp.identity_provider.token
    login = await jp_fetch(
        "neural-jupyter", "api", "jobs", params={"token": token}, headers={"Authorization": ""}
    )
    cookies = [value.split(";", 1)[0] for value in login.headers.get_list("Set-Cookie")]
    assert any(c.startswith("username-") for c in cookies), cookies  # logged in by cookie
    session = {"Authorization": "", "Cookie": "; ".join(cookies)}
    listed = await jp_fetch("neural-jupyter", "api", "jobs", headers=session)
    assert job_id in listed.body.decode()

    cancel = ("neural-jupyter", "api", "jobs", job_id, "cancel")
    with pytest.raises(HTTPClientError) as refused:
        await jp_fetch(*cancel, method="POST", body=b"", headers=session)
    assert refused.value.code == 403
    assert "_xsrf" in refused.value.response.body.decode()
    assert not pid_gone(pid)

    # the XSRF token a page of this server hands out (as JupyterLab's page does)
    page = await jp_fetch("login", headers={"Authorization": ""})
    xsrf = next(
        value.split(";", 1)[0].partition("=")[2]
        for value in page.headers.get_list("Set-Cookie")
        if value.startswith("_xsrf=")
    )
    with_xsrf = {
        **session,
        "Cookie": session["Cookie"] + f"; _xsrf={xsrf}",
        "X-XSRFToken": unquote(xsrf),
    }
    reply = await jp_fetch(*cancel, method="POST", body=b"", headers=with_xsrf)
    assert json.loads(reply.body)["status"] == "CANCELLED"
