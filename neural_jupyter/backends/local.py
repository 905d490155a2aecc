"""The default backend: ``python train.py`` in a subprocess on this machine.

The process gets its own process group (cancel and timeout stop it and all its children:
SIGTERM, then SIGKILL after a grace period) and writes stdout/stderr to files in the job's
directory, so it outlives the kernel and can be re-attached from another one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from neural_jupyter.backends.base import (
    CANCELLED,
    FAILED,
    RUNNING,
    SUCCEEDED,
    UNKNOWN,
    Backend,
    RemoteJob,
    RemoteStatus,
    ResourceSpec,
    StreamItem,
    Submission,
)
from neural_jupyter.errors import JobError
from neural_jupyter.runtime.bundle import Bundle
from neural_jupyter.runtime.events import parse_line
from neural_jupyter.runtime.tail import LineTail

EXIT_TIMEOUT = 124
GRACE_SECONDS = 5.0
WATCHDOG_GRACE_SECONDS = 30.0
POLL_SECONDS = 0.05


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (guards against a recycled pid); None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a finished but unreaped (zombie) process counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


class LocalBackend(Backend):
    name = "local"
    label = "This machine"

    # Processes started by this kernel: their exit codes are known exactly.
    _processes: ClassVar[dict[str, subprocess.Popen]] = {}
    _watchdogs: ClassVar[dict[str, threading.Timer]] = {}

    # --- paths ------------------------------------------------------------------------------
    @staticmethod
    def stdout_path(job: RemoteJob) -> Path:
        return job.directory / "stdout.log"

    @staticmethod
    def stderr_path(job: RemoteJob) -> Path:
        return job.directory / "stderr.log"

    @staticmethod
    def _process_file(job: RemoteJob) -> Path:
        return job.directory / "process.json"

    @staticmethod
    def _marker(job: RemoteJob, name: str) -> Path:
        return job.directory / name

    # --- contract ---------------------------------------------------------------------------
    def submit(self, bundle: Bundle, job: RemoteJob, resources: ResourceSpec) -> Submission:
        from neural_jupyter.runtime.gpu_settings import job_environment

        job.directory.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(job_environment(resources.gpu_ids))
        env.update(PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
        command = [sys.executable, "-u", "train.py", "--job", "job.json"]
        with self.stdout_path(job).open("ab") as out, self.stderr_path(job).open("ab") as err:
            process = subprocess.Popen(
                command,
                cwd=bundle.path,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,  # own session and process group: killpg reaches all
                close_fds=True,
            )
        record = {
            "pid": process.pid,
            "pgid": process.pid,
            "start_time": process_start_time(process.pid),
            "bundle": str(bundle.path),
            "started": time.time(),
        }
        self._process_file(job).write_text(json.dumps(record))
        self._processes[job.id] = process
        if resources.timeout_seconds:
            self._start_watchdog(job, resources.timeout_seconds)
        return Submission(f"pid:{process.pid}", {"pid": process.pid})

    def _start_watchdog(self, job: RemoteJob, seconds: float) -> None:
        """Backstop for the script's own budget: kill the group if it overruns."""

        def expire() -> None:
            if self.status(job).is_terminal:
                return
            self._marker(job, "timed_out").touch()
            self._kill_group(job)

        # the script stops itself at its budget (exit 124); this only catches a hung one
        timer = threading.Timer(seconds + WATCHDOG_GRACE_SECONDS, expire)
        timer.daemon = True
        timer.start()
        self._watchdogs[job.id] = timer

    def _process_info(self, job: RemoteJob) -> dict | None:
        try:
            return json.loads(self._process_file(job).read_text())
        except (OSError, ValueError):
            return None

    def _is_running(self, job: RemoteJob, info: dict | None) -> bool:
        process = self._processes.get(job.id)
        if process is not None:
            return process.poll() is None
        if not info:
            return False
        pid = info["pid"]
        if not pid_alive(pid):
            return False
        started = info.get("start_time")
        return started is None or process_start_time(pid) in (None, started)

    def _exit_code(self, job: RemoteJob, info: dict | None) -> int | None:
        process = self._processes.get(job.id)
        if process is not None and process.poll() is not None:
            return process.returncode
        status_file = Path(info["bundle"]) / "output" / "status.json" if info else None
        if status_file and status_file.exists():
            with contextlib.suppress(OSError, ValueError, KeyError):
                return int(json.loads(status_file.read_text())["exit_code"])
        return None

    def status(self, job: RemoteJob) -> RemoteStatus:
        info = self._process_info(job)
        if info is None:
            return RemoteStatus(UNKNOWN, message="no process was recorded for this job")
        if self._is_running(job, info):
            return RemoteStatus(RUNNING)
        code = self._exit_code(job, info)
        timed_out = self._marker(job, "timed_out").exists() or code == EXIT_TIMEOUT
        if timed_out:
            return RemoteStatus(FAILED, code, "stopped at its time limit", timed_out=True)
        if self._marker(job, "cancel_requested").exists():
            return RemoteStatus(CANCELLED, code, "cancelled")
        if code == 0:
            return RemoteStatus(SUCCEEDED, 0)
        if code is None:
            return RemoteStatus(FAILED, None, "the process ended without reporting (killed?)")
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else -code
            return RemoteStatus(FAILED, code, f"killed by signal {name}")
        return RemoteStatus(FAILED, code, f"exited with code {code}")

    def events(self, job: RemoteJob, *, follow: bool = True) -> Iterator[StreamItem]:
        out, err = LineTail(self.stdout_path(job)), LineTail(self.stderr_path(job))
        while True:
            running = follow and self.status(job).state == RUNNING
            progressed = False
            for tail, stream in ((out, "stdout"), (err, "stderr")):
                for line in tail.read():
                    progressed = True
                    yield parse_line(line, stream)
            if progressed:
                continue
            if not running:
                for tail, stream in ((out, "stdout"), (err, "stderr")):
                    for line in tail.flush():
                        yield parse_line(line, stream)
                return
            yield None
            time.sleep(POLL_SECONDS)

    def cancel(self, job: RemoteJob) -> None:
        info = self._process_info(job)
        if info is None:
            raise JobError(f"job {job.id} has no local process to cancel", job_id=job.id)
        self._marker(job, "cancel_requested").touch()
        self._kill_group(job)

    def _kill_group(self, job: RemoteJob, grace: float = GRACE_SECONDS) -> None:
        """SIGTERM the job's process group, then SIGKILL whatever is left after ``grace``."""
        info = self._process_info(job)
        if info is None or not self._is_running(job, info):
            return
        pgid = info["pgid"]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not _group_alive(pgid) and not self._is_running(job, info):
                break
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        process = self._processes.get(job.id)
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=grace)

    def fetch_artifacts(self, job: RemoteJob, destination: Path) -> dict[str, Path]:
        info = self._process_info(job)
        output = Path(info["bundle"]) / "output" if info else job.directory / "output"
        names = {"weights": "model.pt", "history": "history.json", "checkpoint": "checkpoint.pt"}
        return {name: output / file for name, file in names.items() if (output / file).exists()}


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
