"""The output relay of local jobs: what a job prints is redacted before it reaches its log
files (patterns, secret environment values, secrets registered in the kernel), whole lines,
partial lines and long lines kept, and a daemon the job leaves behind cannot keep it alive."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time

from neural_jupyter.redaction import MASK, register_secret
from neural_jupyter.runtime.log_relay import DRAIN_SECONDS, relayed_output


def run_through_relay(tmp_path, code: str, env: dict | None = None):
    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    job_env = {**os.environ, **(env or {})}
    with relayed_output(out, err, env=job_env) as (out_fd, err_fd, relay):
        child = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=out_fd,
            stderr=err_fd,
            env=job_env,
            start_new_session=True,
        )
        relay.job_pid = child.pid
    return child, relay, out, err


def test_job_output_is_redacted_before_it_is_written(tmp_path):
    registered = "kernel-registered-" + secrets.token_hex(8)
    register_secret(registered)
    env_value = "envsecret" + secrets.token_hex(8)
    code = (
        "import os, sys\n"
        "print('password=hunter2xyz')\n"
        f"print('registered {registered}')\n"
        "print('env', os.environ['RELAY_TEST_TOKEN'], file=sys.stderr)\n"
        "print('x' * 2_000_000)\n"
        "sys.stdout.write('partial line without newline')\n"
    )
    child, relay, out, err = run_through_relay(tmp_path, code, {"RELAY_TEST_TOKEN": env_value})
    assert child.wait(60) == 0
    relay.process.wait(30)
    stdout, stderr = out.read_text(), err.read_text()
    assert f"password={MASK}" in stdout and "hunter2xyz" not in stdout
    assert f"registered {MASK}" in stdout and registered not in stdout
    assert f"env {MASK}" in stderr and env_value not in stderr
    lines = stdout.splitlines()
    assert sum(len(line) for line in lines if set(line) == {"x"}) == 2_000_000  # nothing lost
    assert lines[-1] == "partial line without newline"


def test_a_daemon_left_behind_does_not_keep_the_relay(tmp_path):
    code = (
        "import subprocess, sys\n"
        "subprocess.Popen(['sleep', '60'], stdout=sys.stdout, stderr=sys.stderr)\n"
        "print('parent done', flush=True)\n"
    )
    child, relay, out, _ = run_through_relay(tmp_path, code)
    assert child.wait(60) == 0
    started = time.monotonic()
    relay.process.wait(DRAIN_SECONDS + 30)
    assert time.monotonic() - started < DRAIN_SECONDS + 10
    assert "parent done" in out.read_text()
    os.killpg(child.pid, signal.SIGKILL)  # the sleep is in the job's session
