"""The ssh backend against real SSH servers on 127.0.0.1, through the real paramiko client.

The asyncssh server (in this process, commands really run) covers host keys, logins,
retries, idempotent submits, status mapping and a real torch job end to end; OpenSSH's
``sshd`` covers what needs a real daemon: process groups on cancel, a connection killed
mid-run, and a second Python process re-attaching to a running job.
"""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sshd import (
    PYTHON,
    AsyncSSHServer,
    FlakyProxy,
    OpenSSHServer,
    fake_bundle,
    free_port,
    known_hosts_line,
    live_processes,
    make_client_key,
    train_py_pids,
)

import neural_jupyter
from neural_jupyter import api
from neural_jupyter import backends as registry
from neural_jupyter.backends import ssh
from neural_jupyter.backends.base import RemoteJob, ResourceSpec
from neural_jupyter.errors import (
    ConfigurationError,
    MissingDependencyError,
    PlatformAuthError,
    PlatformConnectionError,
)
from neural_jupyter.jobs.job import Job
from neural_jupyter.jobs.store import JobStatus, JobStore
from neural_jupyter.runtime.events import Event, LogLine

pytest.importorskip("paramiko")
pytest.importorskip("asyncssh")

USER = getpass.getuser()
PASSWORD = "correct-horse-battery-42"

DIGITS = """
network DigitNet {
  input: (8, 8, 1)
  layers:
    Conv2D(filters=8, kernel_size=3, padding="same", activation="relu")
    MaxPooling2D(2)
    Flatten()
    Dense(32, "relu")
    Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  optimizer: Adam(learning_rate=0.005)
  metrics: ["accuracy"]
  train { epochs: 3 batch_size: 64 validation_split: 0.2 seed: 1 }
}
"""


# --- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client_key(tmp_path_factory) -> Path:
    return make_client_key(tmp_path_factory.mktemp("client-keys"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, client_key):
    directory = tmp_path_factory.mktemp("asyncssh")
    instance = AsyncSSHServer(directory, Path(f"{client_key}.pub"), passwords={USER: PASSWORD})
    yield instance.start()
    instance.stop()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory, client_key):
    if not Path("/usr/sbin/sshd").exists():
        pytest.skip("OpenSSH server not installed (apt-get install openssh-server)")
    instance = OpenSSHServer(tmp_path_factory.mktemp("sshd"), client_key)
    yield instance.start()
    instance.stop()


@pytest.fixture(autouse=True)
def isolated_ssh(tmp_path, monkeypatch):
    """A HOME without keys, known_hosts or agent; a fresh backend (no pooled connections)."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setattr(ssh.SSHBackend, "poll_seconds", 0.2)
    registry._instances.pop("ssh", None)
    yield home
    backend = registry._instances.pop("ssh", None)
    if backend is not None:
        backend.close()


@pytest.fixture
def known_hosts(tmp_path, server) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text(server.known_hosts_line())
    return path


def extra_for(server, client_key, known_hosts, tmp_path, **more) -> dict:
    return {
        "host": f"{USER}@127.0.0.1:{server.port}",
        "key_file": str(client_key),
        "known_hosts": str(known_hosts),
        "python": f"env OMP_NUM_THREADS=1 {PYTHON}",  # one torch thread: quicker on 2 cores
        "workdir": str(tmp_path / "remote-jobs"),
        **more,
    }


def submit_fake(backend, tmp_path, extra, key="ssh-test-1", resources=None, **job):
    bundle = fake_bundle(tmp_path / "bundles" / key, **job)
    local = RemoteJob(key, tmp_path / "local" / key, None, {"idempotency_key": key})
    resources = resources or ResourceSpec(extra=extra)
    submission = backend.submit(bundle, local, resources)
    details = {**submission.details, "idempotency_key": key}
    return RemoteJob(key, local.directory, submission.remote_id, details), submission


def collect(backend, job, timeout=60.0) -> list:
    items = []
    deadline = time.monotonic() + timeout
    for item in backend.events(job):
        if item is not None:
            items.append(item)
        assert time.monotonic() < deadline, "the event stream did not end"
    return items


def epochs_of(items) -> list[int]:
    return [i.data["epoch"] for i in items if isinstance(i, Event) and i.kind == "epoch"]


def wait_for(predicate, timeout=20.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


# --- host specs and options -------------------------------------------------------------------
def test_host_specs_parse_like_ssh(tmp_path):
    assert ssh.parse_host("alice@gpu.example.org:2222")[:3] == ("gpu.example.org", 2222, "alice")
    assert ssh.parse_host("bob@[::1]:2200")[:3] == ("::1", 2200, "bob")
    assert ssh.parse_host("carol@box")[:3] == ("box", 22, "carol")
    with pytest.raises(ConfigurationError, match="port"):
        ssh.parse_host("dave@box:99999")
    with pytest.raises(ConfigurationError, match="host"):
        ssh.parse_host("  ")
    with pytest.raises(ConfigurationError, match="key file"):
        ssh.parse_host("box", key_file=str(tmp_path / "missing"))


def test_an_ssh_config_alias_gives_host_port_user_and_key(
    server, client_key, known_hosts, tmp_path
):
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host trainbox\n  HostName 127.0.0.1\n  Port {server.port}\n  User {USER}\n"
        f"  IdentityFile {client_key}\n"
    )
    target = ssh.target_from_extra(
        {"host": "trainbox", "ssh_config": str(config), "known_hosts": str(known_hosts)}
    )
    assert (target.hostname, target.port, target.user) == ("127.0.0.1", server.port, USER)
    assert target.key_files == (str(client_key),)
    client = ssh.connect(target)
    try:
        assert ssh.run_command(client, "echo hi; echo oops >&2; exit 3") == (3, "hi\n", "oops\n")
    finally:
        client.close()


RELAY = """
import socket, sys, threading

upstream = socket.create_connection((sys.argv[1], int(sys.argv[2])))


def forward():
    while data := sys.stdin.buffer.read1(65536):
        upstream.sendall(data)
    upstream.shutdown(socket.SHUT_WR)


threading.Thread(target=forward, daemon=True).start()
while data := upstream.recv(65536):
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
"""


def test_a_proxy_command_from_ssh_config_is_used(server, client_key, known_hosts, tmp_path):
    relay = tmp_path / "relay.py"
    relay.write_text(RELAY)
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host behind-bastion\n  HostName 127.0.0.1\n  Port {server.port}\n  User {USER}\n"
        f"  IdentityFile {client_key}\n  ProxyCommand {PYTHON} {relay} %h %p\n"
    )
    target = ssh.target_from_extra(
        {"host": "behind-bastion", "ssh_config": str(config), "known_hosts": str(known_hosts)}
    )
    assert target.proxy_command == f"{PYTHON} {relay} 127.0.0.1 {server.port}"
    before = server.connections
    client = ssh.connect(target)
    try:
        assert ssh.run_command(client, "echo through")[1] == "through\n"
    finally:
        client.close()
    assert server.connections == before + 1


def test_unknown_options_are_errors_with_a_suggestion():
    backend = registry.get_backend("ssh")
    job = RemoteJob("x", Path("/nonexistent"), None, {"idempotency_key": "k"})
    # ("hots" would be as near to "hosts" as to "host")
    with pytest.raises(ConfigurationError, match="pyhton") as caught:
        backend.plan(job, ResourceSpec(extra={"host": "a@b", "pyhton": "c"}))
    assert "did you mean 'python'" in str(caught.value)
    with pytest.raises(ConfigurationError, match="needs a host"):
        backend.plan(job, ResourceSpec(extra={}))


def test_missing_paramiko_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "paramiko", None)
    backend = ssh.SSHBackend()
    job = RemoteJob("x", tmp_path, None, {"idempotency_key": "k"})
    with pytest.raises(MissingDependencyError) as caught:
        backend.submit(fake_bundle(tmp_path / "b"), job, ResourceSpec(extra={"host": "a@b"}))
    assert "neural-jupyter[ssh]" in str(caught.value)


# --- host keys and logins ---------------------------------------------------------------------
def test_an_unknown_host_is_refused_with_how_to_trust_it(server, client_key, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    before = server.connections
    extra = extra_for(server, client_key, empty, tmp_path)
    with pytest.raises(PlatformAuthError) as caught:
        submit_fake(ssh.SSHBackend(), tmp_path, extra)
    text = str(caught.value)
    assert "is not in" in text and "SHA256:" in text
    assert f"ssh-keyscan -p {server.port} 127.0.0.1" in text
    assert "--set trust_new_host=true" in text and "'trust_new_host': True" in text
    assert server.connections - before == 1  # permanent: not retried
    assert not (tmp_path / "remote-jobs").exists()
    assert empty.read_text() == ""


def test_trust_new_host_saves_the_key_for_later_connections(server, client_key, tmp_path):
    path = tmp_path / "fresh" / "known_hosts"  # does not exist yet
    extra = {"host": f"{USER}@127.0.0.1:{server.port}", "key_file": str(client_key)}
    target = ssh.target_from_extra({**extra, "known_hosts": str(path), "trust_new_host": True})
    ssh.connect(target).close()
    saved = path.read_text()
    assert saved.startswith(f"[127.0.0.1]:{server.port} ssh-ed25519 ")
    assert saved.split()[2] == server.public_key_line.split()[1]
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    # from now on the key is checked without the flag
    strict = ssh.target_from_extra({**extra, "known_hosts": str(path)})
    ssh.connect(strict).close()
    assert path.read_text() == saved


def test_a_changed_host_key_is_refused(server, client_key, tmp_path):
    import asyncssh

    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    path = tmp_path / "known_hosts"
    path.write_text(known_hosts_line(server.port, other))
    target = ssh.target_from_extra(
        {
            "host": f"{USER}@127.0.0.1:{server.port}",
            "key_file": str(client_key),
            "known_hosts": str(path),
            "trust_new_host": True,
        }
    )
    with pytest.raises(PlatformAuthError, match="CHANGED") as caught:
        ssh.connect(target)
    assert "ssh-keygen -R" in str(caught.value)


def test_a_wrong_key_is_an_auth_error_and_not_retried(server, known_hosts, tmp_path):
    stranger = make_client_key(tmp_path / "other-keys")
    before = server.connections
    target = ssh.target_from_extra(
        {
            "host": f"{USER}@127.0.0.1:{server.port}",
            "key_file": str(stranger),
            "known_hosts": str(known_hosts),
        }
    )
    with pytest.raises(PlatformAuthError, match="refused the login") as caught:
        ssh.connect(target)
    assert server.connections - before == 1
    assert "authorized_keys" in str(caught.value)


def test_password_login_works_and_the_password_is_never_kept(server, known_hosts, tmp_path):
    extra = {
        "host": f"{USER}@127.0.0.1:{server.port}",
        "password": PASSWORD,
        "known_hosts": str(known_hosts),
        "python": PYTHON,
        "workdir": str(tmp_path / "remote-jobs"),
    }
    backend = ssh.SSHBackend()
    job, submission = submit_fake(backend, tmp_path, extra, key="ssh-pw")
    assert PASSWORD not in json.dumps(submission.details) + submission.remote_id
    assert ssh.redact(f"password is {PASSWORD}") == "password is ****"
    plan = backend.plan(job, ResourceSpec(extra=extra))
    assert PASSWORD not in json.dumps(plan) and plan["auth"] == "password (not shown)"
    items = collect(backend, job)
    assert [i for i in items if isinstance(i, LogLine)][-1] == LogLine("epoch 3 done", "stderr")
    assert items[-1].data["message"].startswith("outputs brought back to")  # once, at the end
    remote_files = list((tmp_path / "remote-jobs").rglob("*"))
    assert remote_files and not any(
        PASSWORD in p.read_text(errors="ignore") for p in remote_files if p.is_file()
    )
    wrong = ssh.target_from_extra({**extra, "host": f"nobody@127.0.0.1:{server.port}"})
    with pytest.raises(PlatformAuthError) as caught:
        ssh.connect(wrong)
    assert PASSWORD not in str(caught.value)


# --- retries and idempotency -------------------------------------------------------------------
def test_connection_resets_are_retried_and_resubmits_start_nothing_new(
    server, client_key, tmp_path
):
    proxy = FlakyProxy(server.port, failures=2)
    known = tmp_path / "known_hosts"
    known.write_text(known_hosts_line(proxy.port, server.public_key_line))
    runs = tmp_path / "runs.txt"
    extra = extra_for(server, client_key, known, tmp_path, host=f"{USER}@127.0.0.1:{proxy.port}")
    try:
        job, first = submit_fake(ssh.SSHBackend(), tmp_path, extra, runs_file=str(runs))
        assert proxy.connections == 3  # two resets, then through
        _, again = submit_fake(ssh.SSHBackend(), tmp_path, extra, runs_file=str(runs))
        assert again.remote_id == first.remote_id and again.details["pid"] == first.details["pid"]
        collect(ssh.SSHBackend(), job)
    finally:
        proxy.close()
    assert len(runs.read_text().splitlines()) == 1


def test_a_lost_reply_after_starting_does_not_start_a_second_run(
    server, client_key, known_hosts, tmp_path, monkeypatch
):
    backend = ssh.SSHBackend()
    real_launch = backend._launch
    calls = []

    def launch_then_lose_the_reply(client, job_dir):
        record = real_launch(client, job_dir)
        calls.append(record)
        if len(calls) == 1:
            raise ssh.TransientConnectionError("connection reset by peer", platform="ssh")
        return record

    monkeypatch.setattr(backend, "_launch", launch_then_lose_the_reply)
    runs = tmp_path / "runs.txt"
    extra = extra_for(server, client_key, known_hosts, tmp_path)
    job, submission = submit_fake(backend, tmp_path, extra, runs_file=str(runs))
    assert len(calls) == 2 and calls[0]["pid"] == calls[1]["pid"] == submission.details["pid"]
    collect(backend, job)
    assert len(runs.read_text().splitlines()) == 1


def test_permanent_errors_are_not_retried_and_transient_ones_give_up(
    server, client_key, known_hosts, tmp_path
):
    started = time.monotonic()
    with pytest.raises(PlatformConnectionError, match="cannot resolve") as caught:
        ssh.connect(ssh.SSHTarget("no-such-host.invalid", 22, USER, connect_timeout=3))
    assert not isinstance(caught.value, ssh.TransientConnectionError)
    assert time.monotonic() - started < 5
    proxy = FlakyProxy(server.port, failures=100)
    try:
        target = ssh.SSHTarget("127.0.0.1", proxy.port, USER, (str(client_key),), str(known_hosts))
        with pytest.raises(ssh.TransientConnectionError) as caught:
            ssh.connect(target)
        assert proxy.connections == 3  # retry.ATTEMPTS
        assert "platform response" in str(caught.value)  # paramiko's own words are kept
    finally:
        proxy.close()


def test_status_is_unknown_not_an_error_when_the_host_is_unreachable(tmp_path):
    port = free_port()
    details = {
        "hostname": "127.0.0.1",
        "port": port,
        "user": USER,
        "remote_dir": "/x",
        "pid": 1,
        "connect_timeout": 2,
    }
    status = ssh.SSHBackend().status(RemoteJob("j", tmp_path, "r", details))
    assert status.state == "UNKNOWN" and "no contact" in status.message


# --- job life on the asyncssh server -----------------------------------------------------------
def test_failed_and_timed_out_jobs_and_setup(server, client_key, known_hosts, tmp_path):
    backend = ssh.SSHBackend()
    extra = extra_for(server, client_key, known_hosts, tmp_path)
    failing, _ = submit_fake(backend, tmp_path, extra, key="fails", fail_at=2)
    slow, _ = submit_fake(
        backend,
        tmp_path,
        extra,
        key="slow",
        resources=ResourceSpec(timeout_seconds=1.0, extra=extra),
        epochs=1000,
        delay=0.05,
    )
    bad_setup, _ = submit_fake(
        backend, tmp_path, {**extra, "setup": "echo preparing; exit 7"}, key="badsetup"
    )
    good_setup, _ = submit_fake(
        backend, tmp_path, {**extra, "setup": "echo ready > setup.txt"}, key="goodsetup"
    )
    items = collect(backend, failing)
    assert any(isinstance(i, Event) and i.kind == "error" for i in items)
    status = backend.status(failing)
    assert (status.state, status.exit_code) == ("FAILED", 1)
    collect(backend, slow)
    status = backend.status(slow)
    assert (status.state, status.exit_code, status.timed_out) == ("FAILED", 124, True)
    assert "time limit" in status.message
    items = collect(backend, bad_setup)
    status = backend.status(bad_setup)
    assert (status.state, status.exit_code) == ("FAILED", 7) and "setup" in status.message
    assert LogLine("preparing") in items and epochs_of(items) == []
    collect(backend, good_setup)
    assert backend.status(good_setup).state == "SUCCEEDED"
    remote = Path(good_setup.details["remote_dir"])
    assert (remote / "setup.txt").read_text() == "ready\n"
    assert json.loads((remote / "process.json").read_text())["pid"] == good_setup.details["pid"]
    assert (remote / "exit_code").read_text().strip() == "0"


def test_dry_run_shows_the_plan_and_connects_to_nothing(
    server, client_key, known_hosts, tmp_path, neural_home
):
    before = server.connections
    extra = extra_for(
        server,
        client_key,
        known_hosts,
        tmp_path,
        password=PASSWORD,
        setup="pip install -r requirements.txt",
    )
    plan = api.submit(DIGITS, "digits", platform="ssh", extra=extra, max_hours=0.5, dry_run=True)
    text = str(plan)
    assert f"{USER}@127.0.0.1:{server.port}" in text
    assert str(tmp_path / "remote-jobs") in text and "train.py" in text
    assert "timeout --signal=TERM --kill-after=30 1800" in text
    assert "pip install -r requirements.txt" in text and "data.npz" in text
    assert PASSWORD not in text and plan.cost is None
    assert server.connections == before


def test_a_password_never_reaches_the_job_store(server, known_hosts, tmp_path, neural_home):
    extra = {
        "host": f"{USER}@127.0.0.1:{server.port}",
        "password": PASSWORD,
        "known_hosts": str(known_hosts),
        "python": PYTHON,
        "workdir": str(tmp_path / "remote-jobs"),
    }
    job = api.submit(DIGITS, "digits", platform="ssh", extra=extra, wait=False, monitor="none")
    try:
        stored = b"".join(p.read_bytes() for p in neural_home.rglob("*") if p.is_file())
        assert PASSWORD.encode() not in stored
        assert job.record.config["resources"]["extra.password"] == "****"
    finally:
        job.cancel()


@pytest.mark.slow
def test_a_real_torch_job_end_to_end(server, client_key, known_hosts, tmp_path, neural_home):
    extra = extra_for(server, client_key, known_hosts, tmp_path)
    run = api.submit(DIGITS, "digits", platform="ssh", extra=extra, monitor="none")
    assert run.status == "SUCCEEDED"
    assert len(run.history) == 3 and run.metrics["val_accuracy"] > 0.5, run.metrics
    record = JobStore().get(run.job_id)
    assert record.status is JobStatus.SUCCEEDED and record.exit_code == 0
    assert record.metrics["val_accuracy"] == pytest.approx(run.metrics["val_accuracy"])
    assert record.remote_id.startswith(f"{USER}@127.0.0.1:{server.port}:{tmp_path}/remote-jobs/")
    assert "password" not in json.dumps(record.config)
    assert run.artifacts["weights"].exists() and run.artifacts["history"].exists()
    assert run.artifacts["weights"].is_relative_to(neural_home)  # fetched, not the remote copy
    model = run.model()
    import torch

    assert model(torch.zeros(2, 8, 8, 1)).shape == (2, 10)
    job = Job.load(run.job_id)
    stdout = (job.directory / "stdout.log").read_text()
    assert stdout.count('{"event": "epoch"') == 3
    remote_stdout = Path(record.config["remote"]["remote_dir"]) / "stdout.log"
    assert stdout == remote_stdout.read_text()  # nothing secret in it: the same lines
    # submitting the same thing again finds the job instead of starting another
    again = api.submit(DIGITS, "digits", platform="ssh", extra=extra, monitor="none")
    assert again.job_id == run.job_id
    assert len(JobStore().list(platform="ssh")) == 1


# --- OpenSSH: process groups, dropped connections, a second kernel -------------------------------
@pytest.fixture
def sshd_extra(sshd, client_key, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line())
    return extra_for(sshd, client_key, known, tmp_path)


@pytest.mark.slow
def test_cancel_kills_the_whole_remote_process_group(sshd_extra, tmp_path):
    backend = ssh.SSHBackend()
    extra = {**sshd_extra, "cancel_grace": 2}
    job, submission = submit_fake(backend, tmp_path, extra, epochs=100000, delay=0.1, children=2)
    session = submission.details["sid"]
    assert wait_for(lambda: len(live_processes(session)) >= 4), live_processes(session)
    assert backend.status(job).state == "RUNNING"
    started = time.monotonic()
    backend.cancel(job)
    assert time.monotonic() - started < 10
    assert live_processes(session) == []
    assert live_processes(submission.details["pgid"]) == []
    status = backend.status(job)
    assert status.state == "CANCELLED", status
    items = collect(backend, job)
    assert LogLine("stopping on SIGTERM", "stderr") in items  # asked nicely first


@pytest.mark.slow
def test_a_killed_connection_resumes_without_losing_or_repeating_events(sshd, sshd_extra, tmp_path):
    backend = ssh.SSHBackend()
    # slow enough epochs that the job is surely still running when its connection dies
    job, _ = submit_fake(backend, tmp_path, sshd_extra, epochs=20, delay=0.4)
    items, killed = [], 0
    for item in backend.events(job):
        if item is None:
            continue
        items.append(item)
        if isinstance(item, Event) and item.kind == "epoch" and item.data["epoch"] == 3:
            killed = sshd.kill_sessions()
    assert killed >= 1
    assert epochs_of(items) == list(range(1, 21))
    messages = [i.data["message"] for i in items if isinstance(i, Event) and i.kind == "status"]
    # the backend may notice the drop (and say so) or re-open the connection silently before
    # its next read; either way nothing is lost or repeated, and a notice is always resolved
    if any("reconnecting" in m for m in messages):
        assert any("reconnected" in m for m in messages), messages
    stderr = [i.text for i in items if isinstance(i, LogLine) and i.stream == "stderr"]
    assert stderr == [f"epoch {n} done" for n in range(1, 21)]
    remote = Path(job.details["remote_dir"])
    for name in ("stdout.log", "stderr.log"):
        assert (job.directory / name).read_bytes() == (remote / name).read_bytes()
    assert backend.status(job).state == "SUCCEEDED"


@pytest.mark.slow
def test_a_new_kernel_reattaches_and_follows_to_the_end(sshd_extra, tmp_path, neural_home):
    job = api.submit(
        DIGITS, "digits", platform="ssh", extra=sshd_extra, epochs=4, wait=False, monitor="none"
    )
    assert job.refresh().status in (JobStatus.PENDING, JobStatus.RUNNING)
    registry._instances.pop("ssh").close()  # this kernel forgets its connections
    script = (
        "import json, sys\n"
        "from neural_jupyter.jobs.job import Job\n"
        f"run = Job.load({job.id!r}).result()\n"
        "print(json.dumps({'status': run.status, 'epochs': len(run.history),"
        " 'weights': str(run.artifacts['weights'])}))\n"
    )
    env = {**os.environ, "NEURAL_JUPYTER_HOME": str(neural_home)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "SUCCEEDED" and result["epochs"] == 4
    assert Path(result["weights"]).exists()
    record = JobStore().get(job.id)
    assert record.status is JobStatus.SUCCEEDED and "val_accuracy" in record.metrics


# --- user code on the host (OpenSSH) -------------------------------------------------------------
@pytest.mark.slow
def test_a_decorated_function_returns_its_value_and_raises_with_its_frames(sshd_extra, neural_home):
    import numpy as np
    from usercode_jobs import check_raised, outer, scaled

    out = neural_jupyter.remote(platform="ssh", extra=sshd_extra, monitor="none")(scaled)(
        [1.0, 2.0], factor=3.0
    )
    np.testing.assert_array_equal(out["values"], [3.0, 6.0])
    record = JobStore().list(platform="ssh")[0]
    remote = Path(record.config["remote"]["remote_dir"])
    assert out["pid"] != os.getpid() and (remote / "launcher.py").exists()
    assert record.status is JobStatus.SUCCEEDED and record.config["kind"] == "function"
    with pytest.raises(neural_jupyter.RemoteError) as caught:
        neural_jupyter.remote(platform="ssh", extra=sshd_extra, monitor="none")(outer)(41)
    check_raised(caught.value)
    # the exception itself came home (output/result.pkl of a failed job is brought back)
    assert isinstance(caught.value.exception, KeyError)
    assert JobStore().get(caught.value.job_id).status is JobStatus.FAILED


@pytest.mark.slow
def test_a_cell_and_a_script_folder_run_on_the_host(ip, sshd_extra, tmp_path):
    from usercode_jobs import check_script_run, make_project

    settings = " ".join(
        f"--set {key}={sshd_extra[key]}" for key in ("host", "key_file", "known_hosts", "workdir")
    )
    ip.run("import numpy as np, pandas as pd\nx = np.arange(6.0).reshape(2, 3)")
    ip.run("df = pd.DataFrame({'a': [1, 2]})")
    ip.run(
        f"%%neural_remote --platform ssh {settings} --set python={PYTHON} --inputs x,df "
        "--outputs y,df2 --monitor none\ny = x.T @ x\ndf2 = df.assign(b=df.a * 10)"
    )
    x = ip.ns["x"]
    assert (ip.ns["y"] == x.T @ x).all() and list(ip.ns["df2"].b) == [10, 20]
    project, data = make_project(tmp_path / "user")
    run = neural_jupyter.run_script(
        project, ["--epochs", "2"], data=data, platform="ssh", extra=sshd_extra, monitor="none"
    )
    check_script_run(run)
    remote = Path(JobStore().get(run.job_id).config["remote"]["remote_dir"])
    assert (remote / "project" / "lib" / "stats.py").exists()  # subfolders were uploaded
    assert (remote / "data" / "n.txt").read_text() == "1 2 3.5"


@pytest.mark.slow
def test_requirements_are_installed_into_the_jobs_folder(sshd_extra, tmp_path, neural_home):
    from usercode_jobs import TOY_VALUE, offline_pip, toy_wheel, uses_toy

    toy_wheel(tmp_path / "wheels")
    pip = " ".join(f"{k}={v}" for k, v in offline_pip(tmp_path / "wheels").items())
    extra = {**sshd_extra, "python": f"env {pip} {PYTHON}"}
    remote_toy = neural_jupyter.remote(
        platform="ssh", extra=extra, requirements=["njtoy==1.0"], monitor="none"
    )(uses_toy)
    value, where = remote_toy()
    remote = Path(JobStore().list(platform="ssh")[0].config["remote"]["remote_dir"])
    assert value == TOY_VALUE and Path(where).is_relative_to(remote / ".neural-packages")
    # the host's Python is left as it was
    assert subprocess.run([PYTHON, "-c", "import njtoy"], capture_output=True).returncode != 0
    stdout = (remote / "stdout.log").read_text()
    assert '"installing 1 requirement(s): njtoy==1.0"' in stdout


@pytest.mark.slow
def test_cancel_stops_a_running_function_on_the_host(sshd_extra, tmp_path, neural_home):
    from usercode_jobs import sleeper

    marker = tmp_path / "pid"
    remote_sleeper = neural_jupyter.remote(platform="ssh", extra=sshd_extra, monitor="none")
    job = remote_sleeper(sleeper).submit(str(marker))
    assert wait_for(marker.exists, 60)
    pid = int(marker.read_text())
    session = job.record.config["remote"]["sid"]
    neural_jupyter.cancel(job.id)
    assert wait_for(lambda: not live_processes(session), 15), live_processes(session)
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert JobStore().get(job.id).status is JobStatus.CANCELLED
    with pytest.raises(neural_jupyter.JobCancelled):
        job.result()


def test_a_dry_run_shows_the_request_and_what_the_job_installs(
    server, client_key, known_hosts, tmp_path, neural_home
):
    import importlib.metadata as md

    from usercode_jobs import scaled

    before = server.connections
    extra = extra_for(server, client_key, known_hosts, tmp_path)
    plan = neural_jupyter.remote(scaled, platform="ssh", extra=extra).dry_run([1.0])
    text = str(plan)
    assert f"numpy=={md.version('numpy')}" in text
    assert f"cloudpickle=={md.version('cloudpickle')}" in text
    assert "installed in the job: what the platform's image lacks" in text
    assert "launcher.py --packages job" in text and '"file": "payload.pkl"' in text
    assert f"{USER}@127.0.0.1:{server.port}" in text
    assert server.connections == before and not JobStore().list()


# --- data-parallel training: several processes on the one host ---------------------------------
def _ranks_under(workdir: Path) -> list[int]:
    """The pids of train.py processes running in a job directory under ``workdir``."""
    return train_py_pids(workdir, below=True)


@pytest.mark.slow
def test_several_processes_on_the_host(server, client_key, known_hosts, tmp_path, neural_home):
    extra = extra_for(server, client_key, known_hosts, tmp_path)
    plan = api.submit(DIGITS, "digits", platform="ssh", procs_per_node=2, extra=extra, dry_run=True)
    assert "--nnodes 1 --nproc-per-node 2" in plan.request["command"]
    run = api.submit(
        DIGITS, "digits", platform="ssh", procs_per_node=2, extra=extra, monitor="none"
    )
    assert run.status == "SUCCEEDED" and len(run.history) == 3
    job = Job.load(run.job_id)
    stream = [
        json.loads(line)
        for line in (job.directory / "stdout.log").read_text().splitlines()
        if line.startswith('{"event"')
    ]
    starts = [e for e in stream if e["event"] == "start"]
    assert len(starts) == 1 and starts[0]["world_size"] == 2
    assert run.artifacts["weights"].exists()
    assert "data parallel: 2 processes (gloo)" in (job.directory / "stderr.log").read_text()


@pytest.mark.slow
def test_cancel_stops_every_rank_on_the_host(sshd_extra, tmp_path, neural_home):
    from tests.test_distributed import alive

    job = api.submit(
        DIGITS,
        "digits",
        platform="ssh",
        procs_per_node=2,
        epochs=500,
        extra={**sshd_extra, "cancel_grace": 3},
        wait=False,
        monitor="none",
    )
    workdir = Path(sshd_extra["workdir"])
    assert wait_for(lambda: len(_ranks_under(workdir)) >= 2, 120), "the ranks never started"
    ranks = _ranks_under(workdir)
    job.cancel()
    assert wait_for(lambda: not any(alive(pid) for pid in ranks), 30), "a rank outlived cancel"
    assert job.refresh().status is JobStatus.CANCELLED


def test_several_nodes_need_their_hosts_and_other_platforms_name_ssh(tmp_path, neural_home):
    extra = {"host": "gpu.example.org"}
    with pytest.raises(ConfigurationError) as caught:
        api.submit(DIGITS, "digits", platform="ssh", nodes=2, extra=extra, dry_run=True)
    assert "--nodes 2: the ssh platform needs the 2 hosts" in str(caught.value)
    assert "--set hosts=" in caught.value.hint  # tests/test_ssh_nodes.py runs them
    with pytest.raises(ConfigurationError) as caught:
        api.submit(DIGITS, "digits", platform="local", nodes=2, dry_run=True)
    assert "ssh" in caught.value.hint and "local" not in caught.value.hint
    assert not JobStore().list()
