"""The default backend: ``python train.py`` in a subprocess on this machine.

The process gets its own process group (cancel and timeout stop it and all its children:
SIGTERM, then SIGKILL after a grace period) and writes stdout/stderr to files in the job's
directory, so it outlives the kernel and can be re-attached from another one. A generated
training script may instead start as a child of the warm worker (``runtime/warm.py``): the
same process group, files and records, without paying the framework's import again.
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

from neural_jupyter.backends import base
from neural_jupyter.backends.base import State
from neural_jupyter.errors import JobError
from neural_jupyter.runtime import torchrun, warm
from neural_jupyter.runtime.bundle import Bundle
from neural_jupyter.runtime.events import parse_line
from neural_jupyter.runtime.jobdir import ARTIFACT_FILES, EXIT_RECORD, OUTPUT
from neural_jupyter.runtime.log_relay import relayed_output
from neural_jupyter.runtime.processes import group_alive, pid_alive, pid_exists, process_start_time
from neural_jupyter.runtime.tail import LineTail

EXIT_TIMEOUT = 124
GRACE_SECONDS = 5.0
WATCHDOG_GRACE_SECONDS = 30.0
POLL_SECONDS = 0.05


class LocalBackend(base.Backend):
    name = "local"
    label = "This machine"
    max_nodes = 1  # procs_per_node processes under torchrun on this machine

    # Processes started by this kernel: their exit codes are known exactly.
    _processes: ClassVar[dict[str, subprocess.Popen]] = {}
    _relays: ClassVar[dict[str, subprocess.Popen]] = {}  # their output relays (reaped here)
    _watchdogs: ClassVar[dict[str, threading.Timer]] = {}

    # --- paths ------------------------------------------------------------------------------
    @staticmethod
    def stdout_path(job: base.RemoteJob) -> Path:
        return job.files.stdout

    @staticmethod
    def stderr_path(job: base.RemoteJob) -> Path:
        return job.files.stderr

    @staticmethod
    def _process_file(job: base.RemoteJob) -> Path:
        return job.files.process

    # --- contract ---------------------------------------------------------------------------
    def submit(
        self, bundle: Bundle, job: base.RemoteJob, resources: base.ResourceSpec
    ) -> base.Submission:
        job.directory.mkdir(parents=True, exist_ok=True)
        env = warm.local_job_environment(resources.gpu_ids)
        command = [sys.executable, "-u", "train.py", "--job", "job.json"]
        if resources.world_size > 1:  # torchrun: every process in this job's process group
            command = [*torchrun.local_command(resources.procs_per_node), "--job", "job.json"]
        # the output goes through a relay that masks secrets before they reach the log files
        logs = (self.stdout_path(job), self.stderr_path(job))
        process = None
        with relayed_output(*logs, env=env) as (out, err, relay):
            # a child of the warm worker when it can serve the job exactly as a cold start
            # torchrun jobs start their own ranks: always cold
            pid = None
            if resources.world_size == 1:
                pid = warm.run_job(
                    bundle.path, bundle.job, command, env, (out, err), job.files.process_exit
                )
            if pid is None:
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
                pid = process.pid
            relay.job_pid = pid
        self._relays[job.id] = relay.process
        record = {
            "pid": pid,
            "pgid": pid,
            "start_time": process_start_time(pid),
            "relay_pid": relay.pid,
            "relay_start_time": process_start_time(relay.pid),
            "bundle": str(bundle.path),
            "started": time.time(),
            "warm": process is None,
        }
        self._process_file(job).write_text(json.dumps(record))
        if process is not None:
            self._processes[job.id] = process
            warm.after_cold_start(bundle.job, env)
        if resources.timeout_seconds:
            self._start_watchdog(job, resources.timeout_seconds)
        return base.Submission(f"pid:{pid}", {"pid": pid})

    def _start_watchdog(self, job: base.RemoteJob, seconds: float) -> None:
        """Backstop for the script's own budget: kill the group if it overruns."""

        def expire() -> None:
            if self.status(job).is_terminal:
                return
            job.files.mark(job.files.timed_out)
            self._kill_group(job)

        # the script stops itself at its budget (exit 124); this only catches a hung one
        timer = threading.Timer(seconds + WATCHDOG_GRACE_SECONDS, expire)
        timer.daemon = True
        timer.start()
        self._watchdogs[job.id] = timer

    def _process_info(self, job: base.RemoteJob) -> dict | None:
        try:
            return json.loads(self._process_file(job).read_text())
        except (OSError, ValueError):
            return None

    def _is_running(self, job: base.RemoteJob, info: dict | None) -> bool:
        process = self._processes.get(job.id)
        if process is not None:
            return process.poll() is None
        if not info:
            return False
        pid = info["pid"]
        if info.get("warm"):
            # a child of the warm worker, which records its exit before reaping it
            if job.files.process_exit.exists() or not pid_exists(pid):
                return False
        elif not pid_alive(pid):
            return False
        started = info.get("start_time")
        return started is None or process_start_time(pid) in (None, started)

    def _exit_code(self, job: base.RemoteJob, info: dict | None) -> int | None:
        process = self._processes.get(job.id)
        if process is not None and process.poll() is not None:
            return process.returncode
        recorded = job.files.read_json(job.files.process_exit)  # a warm-started job's
        if isinstance(recorded, dict) and isinstance(recorded.get("exit_code"), int):
            return recorded["exit_code"]
        status_file = Path(info["bundle"]) / OUTPUT / EXIT_RECORD if info else None
        if status_file and status_file.exists():
            with contextlib.suppress(OSError, ValueError, KeyError):
                return int(json.loads(status_file.read_text())["exit_code"])
        return None

    def _relay_running(self, job: base.RemoteJob, info: dict | None) -> bool:
        """The output relay is still writing the job's last lines to its log files."""
        relay = self._relays.get(job.id)
        if relay is not None:
            return relay.poll() is None
        pid = (info or {}).get("relay_pid")
        if not pid or not pid_alive(pid):
            return False
        started = info.get("relay_start_time")
        return started is None or process_start_time(pid) in (None, started)

    def status(self, job: base.RemoteJob) -> base.RemoteStatus:
        info = self._process_info(job)
        if info is None:
            return base.RemoteStatus(State.UNKNOWN, message="no process was recorded for this job")
        if self._is_running(job, info) or self._relay_running(job, info):
            return base.RemoteStatus(State.RUNNING)
        code = self._exit_code(job, info)
        timed_out = job.files.timed_out.exists() or code == EXIT_TIMEOUT
        if timed_out:
            return base.RemoteStatus(
                State.FAILED, code, "stopped at its time limit", timed_out=True
            )
        if job.files.cancel_requested.exists():
            return base.RemoteStatus(State.CANCELLED, code, "cancelled")
        if code == 0:
            return base.RemoteStatus(State.SUCCEEDED, 0)
        if code is None:
            return base.RemoteStatus(
                State.FAILED, None, "the process ended without reporting (killed?)"
            )
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else -code
            return base.RemoteStatus(State.FAILED, code, f"killed by signal {name}")
        return base.RemoteStatus(State.FAILED, code, f"exited with code {code}")

    def events(self, job: base.RemoteJob, *, follow: bool = True) -> Iterator[base.StreamItem]:
        out, err = LineTail(self.stdout_path(job)), LineTail(self.stderr_path(job))
        while True:
            running = follow and self.status(job).state == State.RUNNING
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

    def cancel(self, job: base.RemoteJob) -> None:
        info = self._process_info(job)
        if info is None:
            raise JobError(f"job {job.id} has no local process to cancel", job_id=job.id)
        job.files.mark(job.files.cancel_requested)
        self._kill_group(job)

    def _kill_group(self, job: base.RemoteJob, grace: float = GRACE_SECONDS) -> None:
        """SIGTERM the job's process group, then SIGKILL whatever is left after ``grace``."""
        info = self._process_info(job)
        if info is None or not self._is_running(job, info):
            return
        pgid = info["pgid"]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            # _is_running first: it reaps our own exited child, which as a zombie would keep
            # the group alive for the whole grace period
            if not self._is_running(job, info) and not group_alive(pgid):
                break
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        process = self._processes.get(job.id)
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=grace)

    def bring_back_outputs(self, job: base.RemoteJob) -> Iterator[base.StreamItem]:
        return iter(())  # train.py wrote them in place

    def fetch_artifacts(self, job: base.RemoteJob, destination: Path) -> dict[str, Path]:
        info = self._process_info(job)
        output = Path(info["bundle"]) / OUTPUT if info else job.files.output
        files = ARTIFACT_FILES.items()
        return {name: output / file for name, file in files if (output / file).exists()}
