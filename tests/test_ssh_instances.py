"""Rented instances for the ssh backend: a local fake of the provider's REST API (an
``http.server`` thread that records every request) whose instance "address" is a real OpenSSH
``sshd`` on 127.0.0.1. Every way a job can end must DELETE its instance exactly once, the
ledger must show it launched and terminated, and the API token must never show up anywhere.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sshd import PYTHON, OpenSSHServer, fake_bundle, free_port, live_processes, make_client_key

from neural_jupyter import api
from neural_jupyter import backends as registry
from neural_jupyter.backends import ssh, ssh_instances
from neural_jupyter.backends.base import RemoteJob, ResourceSpec
from neural_jupyter.errors import (
    ConfigurationError,
    PlatformAuthError,
    PlatformConnectionError,
    PlatformError,
)
from neural_jupyter.jobs.store import JobStatus, JobStore
from neural_jupyter.runtime.events import Event
from neural_jupyter.runtime.jobdir import JobDir
from tests.fakes.base import FakeServer, Request, Response, json_response

pytest.importorskip("paramiko")
pytest.importorskip("requests")

TOKEN = "nj-provider-token-Zq81xK0pLmN3vB7w"
USER = __import__("getpass").getuser()

TINY = """
network Tiny {
  input: (8, 8, 1)
  layers:
    Flatten()
    Dense(16, "relu")
    Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  optimizer: Adam(learning_rate=0.01)
  metrics: ["accuracy"]
  train { epochs: 2 batch_size: 128 validation_split: 0.2 seed: 3 }
}
"""


# --- the provider's API, faked ------------------------------------------------------------------
class FakeProvider(FakeServer):
    """``POST/GET/DELETE /instances`` with scripted behaviour; records every request."""

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address
        self.boot_polls = 1  # GETs answering "booting" before "active"
        self.post_mode = "ok"  # ok | error_with_id | error_after_create | unauthorized
        self.boot_state = "active"  # or "error": the instance fails while booting
        self.flaky_gets = 0  # GETs answering 503 first
        self.instances: dict[str, dict] = {}
        self.start()

    @property
    def url(self) -> str:
        return super().url + "/v1"

    def route(self, request: Request) -> Response:
        path = request.path + (f"?{request.raw_query}" if request.raw_query else "")
        with self.lock:
            status, reply = self.answer(request.method, path, request.body.decode(), request)
        return json_response(status, reply)

    def answer(self, method: str, path: str, body: str, request: Request) -> tuple[int, object]:
        if not authorized(request):
            return 401, {"error": "invalid token"}
        path = path.removeprefix("/v1")
        if method == "POST" and path == "/instances":
            spec = json.loads(body)
            number = f"i-{len(self.instances) + 1:03d}"
            self.instances[number] = {
                "id": number,
                "name": spec["name"],
                "status": "booting",
                "polls": 0,
            }
            if self.post_mode == "error_with_id":
                return 500, {"error": "internal error while attaching the volume", "id": number}
            if self.post_mode == "error_after_create":
                return 500, {"error": "internal error"}
            return 201, {"data": {"instance_ids": [number]}}
        if method == "GET" and path.startswith("/instances?name="):
            name = path.split("=", 1)[1]
            return 200, {
                "data": [self.public(i) for i in self.instances.values() if i["name"] == name]
            }
        if path.startswith("/instances/"):
            instance = self.instances.get(path.rsplit("/", 1)[1])
            if instance is None:
                return 404, {"error": "not found"}
            if method == "DELETE":
                instance["status"] = "terminated"
                return 200, {"data": {"terminated_instances": [instance["id"]]}}
            if self.flaky_gets > 0:
                self.flaky_gets -= 1
                return 503, {"error": "try again"}
            instance["polls"] += 1
            if instance["status"] == "booting" and instance["polls"] > self.boot_polls:
                instance["status"] = self.boot_state
            return 200, {"data": self.public(instance)}
        return 404, {"error": f"no route {method} {path}"}

    def public(self, instance: dict) -> dict:
        data = {"id": instance["id"], "name": instance["name"], "status": instance["status"]}
        if instance["status"] == "active":  # OpenStack-style addresses, with the sshd port
            data["addresses"] = {"public": [{"version": 4, "addr": self.address}]}
        return data

    def deletes(self) -> list[str]:
        return [r.path.rsplit("/", 1)[1] for r in self.calls("DELETE")]


def authorized(request: Request) -> bool:
    return request.headers.get("authorization") == f"Bearer {TOKEN}"


class RecordingLedger:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def launched(self, provider, instance_id, hourly_price):
        self.events.append(("launched", provider, instance_id, hourly_price))
        return f"handle-{instance_id}"

    def addressed(self, handle, address):
        self.events.append(("addressed", handle, address))

    def terminated(self, handle):
        self.events.append(("terminated", handle))


# --- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client_key(tmp_path_factory) -> Path:
    return make_client_key(tmp_path_factory.mktemp("instance-keys"))


@pytest.fixture(scope="module")
def sshd(tmp_path_factory, client_key):
    if not Path("/usr/sbin/sshd").exists():
        pytest.skip("OpenSSH server not installed (apt-get install openssh-server)")
    server = OpenSSHServer(tmp_path_factory.mktemp("instance-sshd"), client_key)
    yield server.start()
    server.stop()


@pytest.fixture
def provider(sshd):
    fake = FakeProvider(f"127.0.0.1:{sshd.port}")
    yield fake
    fake.close()


@pytest.fixture(autouse=True)
def environment(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv(ssh_instances.TOKEN_ENV, TOKEN)
    monkeypatch.setattr(ssh.SSHBackend, "poll_seconds", 0.2)
    registry._instances.pop("ssh", None)
    yield
    backend = registry._instances.pop("ssh", None)
    if backend is not None:
        backend.close()


def instance_extra(provider, client_key, tmp_path, **more) -> dict:
    return {
        "provider": "generic",
        "provider_url": provider.url,
        "instance_type": "gpu_1x_a10",
        "ssh_key_name": "my-laptop",
        "user": USER,
        "key_file": str(client_key),
        "python": f"env OMP_NUM_THREADS=1 {PYTHON}",
        "workdir": str(tmp_path / "instance-disk"),
        "poll_seconds": 0.1,
        "boot_timeout": 10,
        "ssh_timeout": 10,
        "hourly_price": 0.75,
        "shutdown_command": f"echo {{minutes}} > {tmp_path / 'shutdown-minutes'}",
        **more,
    }


def submit(backend, tmp_path, extra, key="inst-1", ledger=None, resources=None, **job):
    bundle = fake_bundle(tmp_path / "bundles" / key, **job)
    ledger = ledger or RecordingLedger()
    local = RemoteJob(key, tmp_path / "local" / key, None, {"idempotency_key": key}, ledger)
    submission = backend.submit(bundle, local, resources or ResourceSpec(extra=extra))
    details = {**submission.details, "idempotency_key": key}
    return RemoteJob(key, local.directory, submission.remote_id, details, ledger), ledger


def follow(backend, job, timeout=60.0) -> list:
    deadline = time.monotonic() + timeout
    items = []
    for item in backend.events(job):
        if item is not None:
            items.append(item)
        assert time.monotonic() < deadline
    return items


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def assert_deleted_once(provider, instance_id="i-001", settle=0.5):
    assert wait_for(lambda: provider.deletes()), "the instance was never terminated"
    time.sleep(settle)  # a second DELETE (watcher + follower racing) would show up here
    assert provider.deletes() == [instance_id]


def assert_no_token(*texts):
    for text in texts:
        assert TOKEN not in str(text)


# --- every way a job ends terminates its instance once -----------------------------------------
@pytest.mark.slow
def test_a_real_job_on_an_instance_succeeds_and_the_instance_goes(
    provider, client_key, tmp_path, neural_home, capsys
):
    extra = instance_extra(provider, client_key, tmp_path)
    run = api.submit(
        TINY, "digits", platform="ssh", extra=extra, max_hours=0.5, yes=True, monitor="text"
    )
    assert run.status == "SUCCEEDED" and len(run.history) == 2
    assert run.model() is not None  # artifacts were fetched before the instance went
    assert_deleted_once(provider)
    post = provider.calls("POST")
    assert len(post) == 1
    body = post[0].json
    assert body["name"].startswith("nj-ssh-") and body["instance_type"] == "gpu_1x_a10"
    assert body["ssh_key_name"] == "my-laptop"
    assert all(authorized(r) for r in provider.requests)
    assert (tmp_path / "shutdown-minutes").read_text().strip() == str(30 + 10)
    store = JobStore()
    assert store.live_instances() == []
    with sqlite3.connect(store.path) as conn:
        rows = conn.execute(
            "SELECT provider, instance_id, address, terminated_at, hourly_price FROM instances"
        ).fetchall()
    assert len(rows) == 1
    provider_name, instance_id, address, terminated_at, price = rows[0]
    assert (provider_name, instance_id, price) == ("generic", "i-001", 0.75)
    assert address == provider.address and terminated_at
    record = store.get(run.job_id)
    assert record.status is JobStatus.SUCCEEDED
    captured = capsys.readouterr()
    stored = b"".join(p.read_bytes() for p in neural_home.rglob("*") if p.is_file())
    remote = b"".join(
        p.read_bytes() for p in (tmp_path / "instance-disk").rglob("*") if p.is_file()
    )
    assert TOKEN.encode() not in stored + remote
    assert_no_token(captured.out, captured.err, record.config, record.error)


def test_a_failing_job_terminates_its_instance(provider, client_key, tmp_path):
    backend = ssh.SSHBackend()
    job, ledger = submit(
        backend, tmp_path, instance_extra(provider, client_key, tmp_path), fail_at=2, delay=0.05
    )
    items = follow(backend, job)
    assert any(isinstance(i, Event) and i.kind == "error" for i in items)
    status = backend.status(job)
    assert (status.state, status.exit_code) == ("FAILED", 1)
    assert_deleted_once(provider)
    assert [e[0] for e in ledger.events] == ["launched", "addressed", "terminated"]
    assert ledger.events[0] == ("launched", "generic", "i-001", 0.75)
    assert backend.status(job).state == "FAILED"  # remembered after the instance is gone


def test_an_unwatched_job_still_terminates_its_instance(provider, client_key, tmp_path):
    backend = ssh.SSHBackend()
    job, ledger = submit(
        backend, tmp_path, instance_extra(provider, client_key, tmp_path), epochs=3, delay=0.05
    )
    assert_deleted_once(provider)  # the watcher thread, nobody following
    assert ledger.events[-1] == ("terminated", "handle-i-001")
    assert backend.status(job).state == "SUCCEEDED"
    assert (job.directory / "bundle" / "output" / "model.pt").exists()
    items = follow(backend, job)  # the logs were brought home before the instance went
    assert [i.data["epoch"] for i in items if isinstance(i, Event) and i.kind == "epoch"] == [
        1,
        2,
        3,
    ]


def test_cancel_stops_the_job_and_terminates_the_instance(provider, client_key, tmp_path):
    backend = ssh.SSHBackend()
    extra = instance_extra(provider, client_key, tmp_path, cancel_grace=2)
    job, ledger = submit(backend, tmp_path, extra, epochs=100000, delay=0.1, children=1)
    session = job.details["sid"]
    assert wait_for(lambda: len(live_processes(session)) >= 3)
    backend.cancel(job)
    assert live_processes(session) == []
    assert_deleted_once(provider)
    assert backend.status(job).state == "CANCELLED"
    assert ledger.events[-1][0] == "terminated"
    backend.cancel(job)  # again: nothing more happens
    assert provider.deletes() == ["i-001"]


def test_a_job_over_its_time_limit_terminates_its_instance(provider, client_key, tmp_path):
    backend = ssh.SSHBackend()
    extra = instance_extra(provider, client_key, tmp_path)
    resources = ResourceSpec(timeout_seconds=1.0, max_runtime_hours=0.001, extra=extra)
    job, _ = submit(backend, tmp_path, extra, resources=resources, epochs=100000, delay=0.05)
    follow(backend, job)
    status = backend.status(job)
    assert (status.state, status.timed_out) == ("FAILED", True)
    assert_deleted_once(provider)
    assert (tmp_path / "shutdown-minutes").read_text().strip() == "11"  # ceil(0.06) + 10


def test_an_instance_whose_ssh_never_answers_is_terminated(provider, client_key, tmp_path):
    provider.address = f"127.0.0.1:{free_port()}"  # nothing listens there
    backend = ssh.SSHBackend()
    extra = instance_extra(provider, client_key, tmp_path, ssh_timeout=2)
    with pytest.raises(PlatformConnectionError, match="did not answer SSH") as caught:
        submit(backend, tmp_path, extra, ledger=(ledger := RecordingLedger()))
    assert_deleted_once(provider)
    assert [e[0] for e in ledger.events] == ["launched", "addressed", "terminated"]
    assert_no_token(caught.value)


def test_an_instance_failing_while_booting_is_terminated(provider, client_key, tmp_path):
    provider.boot_state = "error"
    with pytest.raises(PlatformError, match="went to state 'error'"):
        submit(ssh.SSHBackend(), tmp_path, instance_extra(provider, client_key, tmp_path))
    assert_deleted_once(provider)


@pytest.mark.parametrize("mode", ["error_with_id", "error_after_create"])
def test_a_launch_error_after_creating_still_terminates(provider, client_key, tmp_path, mode):
    provider.post_mode = mode
    ledger = RecordingLedger()
    with pytest.raises(ssh_instances.LaunchError) as caught:
        submit(
            ssh.SSHBackend(),
            tmp_path,
            instance_extra(provider, client_key, tmp_path),
            ledger=ledger,
        )
    assert len(provider.calls("POST")) == 1  # a 500 may have created one: never re-POSTed
    assert_deleted_once(provider)
    assert [e[0] for e in ledger.events] == ["launched", "terminated"]
    assert "internal error" in str(caught.value)
    assert_no_token(caught.value)


def test_python_exiting_terminates_the_instance(provider, client_key, tmp_path):
    """A kernel that exits with a job still running takes its instance down (atexit)."""
    extra = instance_extra(provider, client_key, tmp_path)
    script = f"""
import json, sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).parent)!r})
from sshd import fake_bundle
from neural_jupyter.backends.base import RemoteJob, ResourceSpec
from neural_jupyter.backends.ssh import SSHBackend
extra = json.loads({json.dumps(extra)!r})
bundle = fake_bundle(Path({str(tmp_path / "exiting")!r}), epochs=10000, delay=0.1)
job = RemoteJob("exiting", Path({str(tmp_path / "exiting-local")!r}), None,
                {{"idempotency_key": "exit-1"}})
print(SSHBackend().submit(bundle, job, ResourceSpec(extra=extra)).remote_id)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert provider.deletes() == ["i-001"]
    assert_no_token(done.stdout, done.stderr)
    final = json.loads(JobDir(tmp_path / "exiting-local").final_status.read_text())
    assert final["state"] == "FAILED" and "exited" in final["message"]
    # a real instance takes its processes with it; the stand-in host needs a hand
    record = json.loads(next((tmp_path / "instance-disk").glob("*/process.json")).read_text())
    os.killpg(record["pgid"], signal.SIGKILL)


# --- the provider's API ---------------------------------------------------------------------------
def test_a_wrong_token_is_an_auth_error_that_is_not_retried(
    provider, client_key, tmp_path, monkeypatch
):
    monkeypatch.setenv(ssh_instances.TOKEN_ENV, "wrong-token-123456")
    with pytest.raises(PlatformAuthError, match="401") as caught:
        submit(ssh.SSHBackend(), tmp_path, instance_extra(provider, client_key, tmp_path))
    assert len(provider.calls("POST")) == 1 and provider.instances == {}
    assert "wrong-token-123456" not in str(caught.value)


def test_a_missing_token_says_where_to_put_it(provider, client_key, tmp_path, monkeypatch):
    monkeypatch.delenv(ssh_instances.TOKEN_ENV)
    monkeypatch.setitem(sys.modules, "keyring", None)
    with pytest.raises(PlatformAuthError) as caught:
        submit(ssh.SSHBackend(), tmp_path, instance_extra(provider, client_key, tmp_path))
    assert ssh_instances.TOKEN_ENV in str(caught.value) and provider.requests == []


def test_transient_provider_errors_are_retried(provider):
    provider.flaky_gets = 2
    settings = ssh_instances.InstanceSettings("generic", provider.url, "gpu_1x_a10")
    client = ssh_instances.GenericProvider(settings, TOKEN)
    instance_id = client.launch(
        name="nj-x", instance_type="gpu_1x_a10", region=None, ssh_key_name=None
    )
    info = client.describe(instance_id)
    assert (info.status, info.address, info.port) == ("booting", None, None)
    assert len(provider.calls("GET")) == 3
    assert client.find("nj-x") == instance_id and client.find("nj-other") is None
    client.terminate(instance_id)
    client.terminate(instance_id)  # already gone is fine
    assert client.describe("i-404").status == "gone"


def test_addresses_are_found_in_the_usual_shapes():
    parse = ssh_instances.parse_instance
    assert parse("a", {"status": "active", "ip": "1.2.3.4"}).address == "1.2.3.4"
    assert parse("a", {"data": {"status": "running", "public_ip": "5.6.7.8"}}).is_active
    assert parse("a", {"instance": {"accessIPv4": "9.9.9.9", "status": "ACTIVE"}}).is_active
    nested = {"status": "ACTIVE", "addresses": {"net": [{"addr": "10.0.0.5", "version": 4}]}}
    assert parse("a", nested).address == "10.0.0.5"
    assert parse("a", {"status": "active", "floating_ip": "3.3.3.3:2222"}).port == 2222
    assert not parse("a", {"status": "booting"}).is_active
    assert parse("a", {"status": "error"}).is_dead


def test_cost_and_dry_run_of_an_instance_job(provider, client_key, tmp_path, neural_home):
    extra = instance_extra(provider, client_key, tmp_path)
    plan = api.submit(TINY, "digits", platform="ssh", extra=extra, max_hours=2, dry_run=True)
    assert plan.cost is not None and plan.cost.total_usd == pytest.approx(1.5)
    text = str(plan)
    assert f"{provider.url}/instances" in text and "gpu_1x_a10" in text
    assert "shutdown_after_minutes" in text and TOKEN not in text
    assert provider.requests == []  # a dry run sends nothing
    with pytest.raises(ConfigurationError, match="confirmation threshold"):
        api.submit(TINY, "digits", platform="ssh", extra=extra, max_hours=10, monitor="none")
    assert provider.requests == []
    unpriced = ResourceSpec(instance_type="gpu_x", extra={"provider": "generic"})
    assert ssh.SSHBackend().estimate_cost(unpriced) is None  # no price known, none invented
    assert ssh.SSHBackend().estimate_cost(ResourceSpec(extra={"host": "me@box"})) is None
