"""Lifetimes that do not depend on anyone polling: an ngrok tunnel (pyngrok's real code, a
fake agent binary) and the dashboard's event stream end within seconds of their job's end;
after kill -9 of the kernel that started a job, listing jobs shows it ended, with its real
duration; a launch cut short by kill -9 is marked FAILED."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from neural_jupyter import api, jobs
from neural_jupyter.jobs.store import JobStatus, JobStore
from neural_jupyter.ui.tables import JobTable
from neural_jupyter.ui.text import format_duration

pytest.importorskip("tornado")
pytest.importorskip("plotly")
pytest.importorskip("pyngrok")

REPO = Path(__file__).resolve().parents[1]
SHORT = """network Short {
  input: (8,)
  layers: Dense(32, "relu") Output(2, "softmax")
  loss: "sparse_categorical_crossentropy"
  train { epochs: 25 batch_size: 16 }
}"""
END_WITHIN_SECONDS = 10.0


def process_of(job_id: str, home: Path, timeout: float = 60.0) -> int:
    path = home / "jobs" / job_id / "process.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return int(json.loads(path.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            time.sleep(0.05)
    raise AssertionError(f"job {job_id} never recorded its process")


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def wait_until_gone(pid: int, timeout: float = 300.0) -> float:
    """When the process exited (monotonic time), watching /proc only: no job status call."""
    deadline = time.monotonic() + timeout
    while not gone(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} still running after {timeout:g} s")
        time.sleep(0.05)
    return time.monotonic()


@pytest.fixture
def fake_ngrok(tmp_path):
    from pyngrok import conf, ngrok

    from tests.test_dashboard import FAKE_NGROK

    record = tmp_path / "ngrok-record.jsonl"
    binary = tmp_path / "ngrok"
    binary.write_text(textwrap.dedent(FAKE_NGROK).format(python=sys.executable, record=str(record)))
    binary.chmod(0o755)
    (tmp_path / "n.yml").write_text('version: "2"\n')
    config = conf.PyngrokConfig(
        ngrok_path=str(binary),
        config_path=str(tmp_path / "n.yml"),
        config_version="2",
        monitor_thread=False,
    )
    yield config, record
    ngrok.kill(pyngrok_config=config)


def test_tunnel_and_event_stream_end_with_the_job_without_anyone_polling(
    neural_home, monkeypatch, fake_ngrok
):
    import requests

    from neural_jupyter.ui.dashboard import control

    config, record = fake_ngrok
    monkeypatch.setenv("NGROK_AUTHTOKEN", "2ngroktoken" + "x" * 24)
    job = api.run(SHORT, "synthetic", wait=False, monitor="none")
    pid = process_of(job.id, neural_home)
    board = control.start(job.id, "ngrok", pyngrok_config=config)
    stream_ended: list[float] = []
    end_status: list[str] = []

    def read_stream() -> None:
        url = f"http://127.0.0.1:{board.server.port}/api/jobs/{job.id}/events"
        with requests.get(url, params={"token": board.server.token}, stream=True, timeout=600) as r:
            previous = ""
            for line in r.iter_lines(decode_unicode=True):
                if previous.startswith("event: end"):
                    end_status.append(line)
                    stream_ended.append(time.monotonic())
                    return
                previous = line

    reader = threading.Thread(target=read_stream, daemon=True)
    reader.start()
    try:
        ended = wait_until_gone(pid)
        deadline = ended + END_WITHIN_SECONDS
        closed_at = None
        while time.monotonic() < deadline + 1:
            text = record.read_text() if record.exists() else ""
            if '"delete"' in text:
                closed_at = time.monotonic()
                break
            time.sleep(0.05)
        assert closed_at is not None, "the tunnel was still open 10 s after the job ended"
        assert closed_at - ended <= END_WITHIN_SECONDS
        assert board.tunnel.closed
        reader.join(END_WITHIN_SECONDS)
        assert stream_ended and stream_ended[0] - ended <= END_WITHIN_SECONDS
        assert end_status == ['data: "SUCCEEDED"']
    finally:
        control.stop()
    # the store learns the end from the job's own events too (no one asks for the status)
    deadline = time.monotonic() + END_WITHIN_SECONDS
    while JobStore().get(job.id).status is not JobStatus.SUCCEEDED:
        assert time.monotonic() < deadline, JobStore().get(job.id)
        time.sleep(0.1)


KERNEL = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from neural_jupyter import api
job = api.run({model!r}, "synthetic", wait=False, monitor="none")
print(job.id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""

CUT_SHORT = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from neural_jupyter import api
from neural_jupyter.backends.local import LocalBackend

def killed(self, bundle, job, resources):
    print(job.id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

LocalBackend.submit = killed
api.run({model!r}, "synthetic", wait=False, monitor="none")
"""


def kernel(script: str, home: Path) -> str:
    """Run ``script`` as a kernel that is killed with SIGKILL; return the job id it printed."""
    env = {**os.environ, "NEURAL_JUPYTER_HOME": str(home), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script.format(repo=str(REPO), model=SHORT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -9, done.stderr
    return done.stdout.split()[0]


def test_kill_9_of_the_starting_kernel_then_list(neural_home):
    job_id = kernel(KERNEL, neural_home)
    assert JobStore().get(job_id).status in (JobStatus.PENDING, JobStatus.RUNNING)
    wait_until_gone(process_of(job_id, neural_home))
    time.sleep(0.5)  # the output relay writes the last lines
    listing_began = time.time()
    (listed,) = [job for job in jobs.list() if job.id == job_id]
    record = listed.record
    assert record.status is JobStatus.SUCCEEDED, record
    stdout = (neural_home / "jobs" / job_id / "stdout.log").read_text().splitlines()
    events = [json.loads(line) for line in stdout if line.startswith('{"event"')]
    start = next(e["time"] for e in events if e["event"] == "start")
    end = next(e["time"] for e in events if e["event"] == "done")
    started = datetime.fromisoformat(record.started_at).timestamp()
    finished = datetime.fromisoformat(record.finished_at).timestamp()
    assert started == pytest.approx(start, abs=0.01) and finished == pytest.approx(end, abs=0.01)
    # The job's own end, not the moment of listing (which came at least 0.5 s later).
    assert finished <= listing_began - 0.4
    # The same arithmetic the table does: a float difference of epoch seconds can round
    # the other way at the second decimal (0.38 vs 0.39 s).
    took = datetime.fromisoformat(record.finished_at) - datetime.fromisoformat(record.started_at)
    assert format_duration(took.total_seconds()) in str(JobTable([record]))


def test_a_launch_cut_short_by_kill_9_is_marked_failed_on_listing(neural_home, ip, capsys):
    job_id = kernel(CUT_SHORT, neural_home)
    assert JobStore().get(job_id).status is JobStatus.PENDING
    ip.run("%neural_jobs")
    out = capsys.readouterr().out
    assert job_id in out and "FAILED" in out
    record = JobStore().get(job_id)
    assert "the kernel that was starting it exited first" in record.error
