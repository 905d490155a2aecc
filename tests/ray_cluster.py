"""A real one-machine Ray cluster for tests: ``ray start --head --block`` on 127.0.0.1 in a
process group of its own (so stopping it ends every process it started), its dashboard
(the Jobs API) on a free port, usage statistics off, nothing reaching the internet.

``RayHead.start()`` raises ``RayUnavailable`` with the reason when Ray cannot start on this
machine (no ``ray`` command, a ``/dev/shm`` too small for its object store, a head that does
not answer in time); the tests skip with that reason, never silently.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

MIN_SHM_BYTES = 256 * 2**20  # Ray's object store wants /dev/shm; it refuses less than this
START_SECONDS = 120.0


class RayUnavailable(Exception):
    """Ray cannot run on this machine (the reason is the message)."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RayHead:
    def __init__(self, cpus: int = 4) -> None:
        self.cpus = cpus
        self.dashboard_port = _free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        # short: Ray's unix sockets live under it (paths are limited to ~107 bytes)
        self.temp = Path(tempfile.mkdtemp(prefix="njray", dir="/tmp"))
        self.process: subprocess.Popen | None = None

    def environment(self) -> dict[str, str]:
        """What the head and every job it runs see: this interpreter first on PATH (the
        entrypoint's ``python``), usage statistics off."""
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.update(RAY_USAGE_STATS_ENABLED="0", RAY_DEDUP_LOGS="0", PYTHONUNBUFFERED="1")
        return env

    def start(self) -> RayHead:
        ray = shutil.which("ray", path=self.environment()["PATH"])
        if ray is None:
            raise RayUnavailable("the `ray` command is not installed (pip install 'ray[default]')")
        with contextlib.suppress(OSError):
            free = shutil.disk_usage("/dev/shm").free
            if free < MIN_SHM_BYTES:
                raise RayUnavailable(
                    f"/dev/shm has {free / 2**20:.0f} MiB free; Ray's object store needs more"
                )
        command = [
            ray,
            "start",
            "--head",
            "--block",
            "--port=0",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            "--include-dashboard=true",
            f"--num-cpus={self.cpus}",
            "--num-gpus=0",
            "--object-store-memory=200000000",
            "--disable-usage-stats",
            f"--temp-dir={self.temp}",
        ]
        log = (self.temp / "ray-start.log").open("wb")
        self.process = subprocess.Popen(
            command,
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                reason = (self.temp / "ray-start.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RayUnavailable(f"`ray start` exited: {reason}")
            if self._answers() and self._runs_jobs():
                return self
            time.sleep(0.5)
        self.stop()
        raise RayUnavailable(f"the Ray head did not answer within {START_SECONDS:g} s")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.address}/api/jobs/", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def _runs_jobs(self) -> bool:
        """Whether the head takes a job (its job agent is up): a job of ``true`` submitted
        and finished."""
        from ray.job_submission import JobSubmissionClient

        try:
            client = JobSubmissionClient(self.address)
            job = client.submit_job(entrypoint="true", submission_id=f"probe-{time.time_ns()}")
        except Exception:  # "No available agent to submit job, please try again later"
            return False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if str(client.get_job_status(job)) in ("SUCCEEDED", "JobStatus.SUCCEEDED"):
                return True
            time.sleep(0.3)
        return False

    def stop(self) -> None:
        """End the head and everything it started (its process group), then its files."""
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if process is not None:
            time.sleep(0.5)  # processes of the group that outlived their parent
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(self.temp, ignore_errors=True)

    def __enter__(self) -> RayHead:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
