"""Lambda Cloud and Paperspace instance providers: local fakes of each REST API (``http.server``
threads speaking the provider's wire format and recording every request) whose instances'
address is a real OpenSSH ``sshd`` on 127.0.0.1. Every way a job can end must terminate its
instance exactly once, provider errors must map to the right exception, and the API key must
never show up anywhere.
"""

from __future__ import annotations

import hashlib
import sqlite3
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from sshd import (
    PYTHON,
    OpenSSHServer,
    fake_bundle,
    free_port,
    live_processes,
    make_client_key,
)
from test_ssh_instances import TINY, USER, RecordingLedger, follow, wait_for

from neural_jupyter import api
from neural_jupyter import backends as registry
from neural_jupyter.backends import ssh, ssh_instances
from neural_jupyter.backends.base import RemoteJob, ResourceSpec
from neural_jupyter.backends.ssh_providers import LambdaProvider, PaperspaceProvider
from neural_jupyter.errors import (
    ConfigurationError,
    PlatformAuthError,
    PlatformConnectionError,
    PlatformError,
    QuotaError,
)
from neural_jupyter.jobs.store import JobStore
from neural_jupyter.runtime.events import Event
from tests.fakes.base import FakeServer, Request, Response, json_response

pytest.importorskip("paramiko")
pytest.importorskip("requests")

KEYS = {"lambda": "lambda-key-Qw93Zx71LmN0pB5v", "paperspace": "ps-key-Hj28Kd04RtY6uE1zA9"}


# --- the providers' APIs, faked -----------------------------------------------------------------
class FakeAPI(FakeServer):
    """HTTP plumbing shared by the fakes: records every request, answers through ``answer``.

    Scripted behaviour: ``boot_polls`` GETs answer "booting" first; ``launch_mode`` is ok,
    capacity (refused, nothing made), busy_once (a 503 first, nothing made) or
    error_after_create (made, then a 500); ``flaky_gets`` GETs answer 503 first;
    ``boot_state`` is the state reached after booting.
    """

    name = ""
    prefix = ""
    ready_state = ""

    def __init__(self, key: str, host: str = "127.0.0.1") -> None:
        super().__init__()
        self.key = key
        self.host = host
        self.boot_polls = 1
        self.launch_mode = "ok"
        self.boot_state = self.ready_state
        self.flaky_gets = 0
        self.instances: dict[str, dict] = {}
        self.terminated: list[str] = []
        self.start()

    @property
    def url(self) -> str:
        return super().url + self.prefix

    def _view(self, request: Request) -> dict:
        """The request as the scripts below read it."""
        return {
            "method": request.method,
            "path": request.path + (f"?{request.raw_query}" if request.raw_query else ""),
            "body": request.json,
            "auth_ok": request.headers.get("authorization") == f"Bearer {self.key}",
        }

    def record(self, request: Request) -> None:
        self.requests.append(self._view(request))

    def route(self, request: Request) -> Response:
        with self.lock:
            status, reply = self.answer(self._view(request))
        return json_response(status, reply)

    def answer(self, request: dict) -> tuple[int, object]:
        raise NotImplementedError

    def new_instance(self, name: str, **fields) -> dict:
        number = len(self.instances) + 1
        instance = {"id": self.make_id(number), "name": name, "status": "booting", "polls": 0}
        instance.update(fields)
        self.instances[instance["id"]] = instance
        return instance

    def poll(self, instance: dict) -> None:
        instance["polls"] += 1
        if instance["status"] == "booting" and instance["polls"] > self.boot_polls:
            instance["status"] = self.boot_state

    def flaky(self) -> bool:
        if self.flaky_gets > 0:
            self.flaky_gets -= 1
            return True
        return False

    def make_id(self, number: int) -> str:
        raise NotImplementedError

    @property
    def first_id(self) -> str:
        return self.make_id(1)

    def launches(self) -> list[dict]:
        raise NotImplementedError


class FakeLambda(FakeAPI):
    """Lambda Cloud API v1: ``/instance-types``, ``/ssh-keys``, ``/instances[/{id}]``,
    ``/instance-operations/{launch,terminate}``; errors as ``{"error": {code, message,
    suggestion}}``; instance status booting → active (with ``ip``) → terminated."""

    name = "lambda"
    prefix = "/api/v1"
    ready_state = "active"

    def __init__(self, key: str, host: str = "127.0.0.1") -> None:
        super().__init__(key, host)
        self.capacity = {"gpu_1x_a10": ["us-south-1", "us-east-1"], "gpu_1x_h100_pcie": []}
        self.ssh_keys = [{"id": "k1", "name": "my-laptop", "public_key": "ssh-ed25519 AAAA x"}]

    def make_id(self, number: int) -> str:
        return hashlib.md5(str(number).encode()).hexdigest()

    @staticmethod
    def refusal(status: int, code: str, message: str, suggestion: str | None = None):
        return status, {"error": {"code": code, "message": message, "suggestion": suggestion}}

    def answer(self, request: dict) -> tuple[int, object]:
        if not request["auth_ok"]:
            return self.refusal(
                401,
                "global/invalid-api-key",
                "API key was invalid, expired, or deleted.",
                "Check your API key or create a new one, then try again.",
            )
        method, path, body = request["method"], request["path"], request["body"]
        path = path.removeprefix(self.prefix)
        if method == "GET" and path == "/instance-types":
            return 200, {
                "data": {
                    name: {
                        "instance_type": {"name": name, "price_cents_per_hour": 75},
                        "regions_with_capacity_available": [
                            {"name": r, "description": r} for r in regions
                        ],
                    }
                    for name, regions in self.capacity.items()
                }
            }
        if method == "GET" and path == "/ssh-keys":
            return 200, {"data": self.ssh_keys}
        if method == "POST" and path == "/instance-operations/launch":
            missing = {"region_name", "instance_type_name", "ssh_key_names"} - set(body)
            if missing or len(body["ssh_key_names"]) != 1:
                return self.refusal(400, "global/invalid-parameters", f"missing {missing}")
            if self.launch_mode == "capacity":
                return self.refusal(
                    400,
                    "instance-operations/launch/insufficient-capacity",
                    "Not enough capacity to fulfill launch request.",
                )
            if self.launch_mode == "busy_once":
                self.launch_mode = "ok"
                return self.refusal(503, "global/service-unavailable", "try again")
            instance = self.new_instance(
                body.get("name"),
                region=body["region_name"],
                type=body["instance_type_name"],
                ssh_key_names=body["ssh_key_names"],
            )
            if self.launch_mode == "error_after_create":
                return self.refusal(500, "global/unknown", "internal error")
            return 200, {"data": {"instance_ids": [instance["id"]]}}
        if method == "GET" and path == "/instances":
            live = [i for i in self.instances.values() if i["status"] != "terminated"]
            return 200, {"data": [self.public(i) for i in live]}
        if method == "GET" and path.startswith("/instances/"):
            instance = self.instances.get(path.rsplit("/", 1)[1])
            if instance is None:
                return self.refusal(404, "global/object-does-not-exist", "Instance not found.")
            if self.flaky():
                return self.refusal(503, "global/service-unavailable", "try again")
            self.poll(instance)
            return 200, {"data": self.public(instance)}
        if method == "POST" and path == "/instance-operations/terminate":
            gone = [i for i in body["instance_ids"] if i not in self.instances]
            if gone:
                return self.refusal(404, "global/object-does-not-exist", f"unknown {gone}")
            for instance_id in body["instance_ids"]:
                self.instances[instance_id]["status"] = "terminated"
                self.terminated.append(instance_id)
            return 200, {
                "data": {
                    "terminated_instances": [
                        self.public(self.instances[i]) for i in body["instance_ids"]
                    ]
                }
            }
        return self.refusal(404, "global/object-does-not-exist", f"no route {method} {path}")

    def public(self, instance: dict) -> dict:
        data = {
            "id": instance["id"],
            "name": instance["name"],
            "status": instance["status"],
            "region": {"name": instance["region"], "description": instance["region"]},
            "instance_type": {"name": instance["type"], "price_cents_per_hour": 75},
            "ssh_key_names": instance["ssh_key_names"],
            "file_system_names": [],
            "is_reserved": False,
        }
        if instance["status"] == "active":
            data.update(ip=self.host, hostname=self.host.replace(".", "-"))
        return data

    def launches(self) -> list[dict]:
        return [
            r["body"]
            for r in self.requests
            if r["method"] == "POST" and r["path"].endswith("/instance-operations/launch")
        ]


class FakePaperspace(FakeAPI):
    """Paperspace API v1: ``/machines`` (POST, GET ?name=), ``/machines/{id}`` (GET,
    DELETE); errors as ``{"message": ...}``; state provisioning → ready (with ``publicIp``),
    a deleted machine answers 404."""

    name = "paperspace"
    prefix = "/v1"
    ready_state = "ready"

    def make_id(self, number: int) -> str:
        return f"psm{number:05d}xq"

    def poll(self, machine: dict) -> None:
        super().poll(machine)
        if machine["status"] == "deleted":  # deleted under us (boot_state="deleted")
            machine["deleted"] = True

    def answer(self, request: dict) -> tuple[int, object]:
        if not request["auth_ok"]:
            return 401, {"message": "Invalid API key", "status": 401}
        method, body = request["method"], request["body"]
        parts = urlsplit(request["path"].removeprefix(self.prefix))
        path, query = parts.path, parse_qs(parts.query)
        if method == "POST" and path == "/machines":
            missing = {"name", "machineType", "templateId", "diskSize", "region"} - set(body)
            if missing:
                return 400, {"message": f"missing {sorted(missing)}", "status": 400}
            if self.launch_mode == "capacity":
                return 400, {
                    "message": f"Out of capacity for {body['machineType']} in {body['region']}",
                    "status": 400,
                }
            if self.launch_mode == "busy_once":
                self.launch_mode = "ok"
                return 503, {"message": "Service unavailable", "status": 503}
            machine = self.new_instance(
                body["name"], type=body["machineType"], region=body["region"], deleted=False
            )
            if self.launch_mode == "error_after_create":
                return 500, {"message": "internal error", "status": 500}
            return 200, {"event": self.event(machine), "data": self.public(machine)}
        if method == "GET" and path == "/machines":
            names = query.get("name")
            items = [
                self.public(m)
                for m in self.instances.values()
                if not m["deleted"] and (not names or m["name"] == names[0])
            ]
            return 200, {"hasMore": False, "nextPage": None, "items": items}
        if path.startswith("/machines/"):
            machine = self.instances.get(path.rsplit("/", 1)[1])
            if machine is None or machine["deleted"]:
                return 404, {"message": "Machine not found", "status": 404}
            if method == "DELETE":
                machine["deleted"] = True
                self.terminated.append(machine["id"])
                return 200, {"event": self.event(machine), "data": self.public(machine)}
            if self.flaky():
                return 503, {"message": "Service unavailable", "status": 503}
            self.poll(machine)
            return 200, self.public(machine)
        return 404, {"message": f"no route {method} {path}", "status": 404}

    def public(self, machine: dict) -> dict:
        state = {"booting": "provisioning"}.get(machine["status"], machine["status"])
        ready = state == "ready"
        return {
            "id": machine["id"],
            "name": machine["name"],
            "state": state,
            "machineType": machine["type"],
            "region": machine["region"],
            "publicIp": self.host if ready else None,
            "publicIpType": "dynamic",
            "privateIp": "10.0.0.5",
            "dtCreated": "2024-06-01T00:00:00Z",
            "dtDeleted": "2024-06-01T00:05:00Z" if machine["deleted"] else None,
        }

    @staticmethod
    def event(machine: dict) -> dict:
        return {"id": "ev1", "name": "create", "state": "new", "machineId": machine["id"]}

    def launches(self) -> list[dict]:
        return [
            r["body"]
            for r in self.requests
            if r["method"] == "POST" and urlsplit(r["path"]).path.endswith("/machines")
        ]


FAKES = {"lambda": FakeLambda, "paperspace": FakePaperspace}
CHOICES = {  # --instance, --region and the provider's own options
    "lambda": ("gpu_1x_a10", "us-east-1", {"ssh_key_name": "my-laptop"}),
    "paperspace": ("A4000", "ny2", {"template_id": "tmlinabox22"}),
}
PRICES = {"lambda": 0.75, "paperspace": 0.76}  # neural_jupyter/pricing/prices.json


# --- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client_key(tmp_path_factory) -> Path:
    return make_client_key(tmp_path_factory.mktemp("provider-keys"))


@pytest.fixture(scope="module")
def sshd(tmp_path_factory, client_key):
    """The instances' address: a real OpenSSH server (whatever a fake reports, it is here)."""
    if not Path("/usr/sbin/sshd").exists():
        pytest.skip("OpenSSH server not installed (apt-get install openssh-server)")
    server = OpenSSHServer(tmp_path_factory.mktemp("provider-sshd"), client_key)
    yield server.start()
    server.stop()


@pytest.fixture(params=["lambda", "paperspace"])
def cloud(request):
    fake = FAKES[request.param](KEYS[request.param])
    yield fake
    fake.close()


@pytest.fixture(autouse=True)
def environment(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv(ssh_instances.TOKEN_ENV, raising=False)
    monkeypatch.setenv("LAMBDA_API_KEY", KEYS["lambda"])
    monkeypatch.setenv("PAPERSPACE_API_KEY", KEYS["paperspace"])
    monkeypatch.setattr(ssh.SSHBackend, "poll_seconds", 0.2)
    registry._instances.pop("ssh", None)
    yield
    backend = registry._instances.pop("ssh", None)
    if backend is not None:
        backend.close()


def instance_extra(cloud, client_key, sshd, tmp_path, **more) -> dict:
    return {
        "provider": cloud.name,
        "provider_url": cloud.url,
        **CHOICES[cloud.name][2],
        "user": USER,
        "key_file": str(client_key),
        "port": sshd.port,  # the provider reports the bare IP; sshd listens elsewhere than 22
        "python": f"env OMP_NUM_THREADS=1 {PYTHON}",
        "workdir": str(tmp_path / "instance-disk"),
        "poll_seconds": 0.1,
        "boot_timeout": 10,
        "ssh_timeout": 10,
        "shutdown_command": f"echo {{minutes}} > {tmp_path / 'shutdown-minutes'}",
        **more,
    }


def submit(cloud, tmp_path, extra, key="inst-1", ledger=None, **job):
    instance, region, _ = CHOICES[cloud.name]
    resources = ResourceSpec(
        instance_type=instance,
        region=region,
        timeout_seconds=job.pop("timeout_seconds", None),
        max_runtime_hours=job.pop("max_hours", None),
        extra=extra,
    )
    bundle = fake_bundle(tmp_path / "bundles" / key, **job)
    ledger = ledger or RecordingLedger()
    local = RemoteJob(key, tmp_path / "local" / key, None, {"idempotency_key": key}, ledger)
    backend = ssh.SSHBackend()
    submission = backend.submit(bundle, local, resources)
    details = {**submission.details, "idempotency_key": key}
    return backend, RemoteJob(key, local.directory, submission.remote_id, details, ledger), ledger


def assert_terminated_once(cloud, settle=0.5):
    assert wait_for(lambda: cloud.terminated), "the instance was never terminated"
    time.sleep(settle)  # a second terminate (watcher and follower racing) would show up here
    assert cloud.terminated == [cloud.first_id]


def assert_no_key(*texts):
    for text in texts:
        for key in KEYS.values():
            assert key not in str(text)


def stored_bytes(*roots: Path) -> bytes:
    return b"".join(p.read_bytes() for r in roots for p in r.rglob("*") if p.is_file())


# --- a real training run per provider -------------------------------------------------------------
@pytest.mark.slow
def test_a_real_job_on_lambda_succeeds_and_the_instance_goes(
    client_key, sshd, tmp_path, neural_home, capsys, caplog
):
    cloud = FakeLambda(KEYS["lambda"])
    try:
        extra = instance_extra(cloud, client_key, sshd, tmp_path)
        run = api.submit(
            TINY,
            "digits",
            platform="ssh",
            instance="gpu_1x_a10",
            region="us-east-1",
            extra=extra,
            max_hours=0.5,
            epochs=1,
            yes=True,
            monitor="text",
        )
        assert run.status == "SUCCEEDED" and len(run.history) == 1
        assert run.model() is not None  # artifacts came home before the instance went
        assert_terminated_once(cloud)
        (launch,) = cloud.launches()  # the wire format of POST /instance-operations/launch
        assert launch["name"].startswith("nj-ssh-") and len(launch["name"]) <= 64
        assert {k: launch[k] for k in ("region_name", "instance_type_name", "quantity")} == {
            "region_name": "us-east-1",
            "instance_type_name": "gpu_1x_a10",
            "quantity": 1,
        }
        assert launch["ssh_key_names"] == ["my-laptop"]
        assert all(r["auth_ok"] for r in cloud.requests)
        terminate = [r for r in cloud.requests if r["path"].endswith("/terminate")]
        assert [r["body"] for r in terminate] == [{"instance_ids": [cloud.first_id]}]
        assert (tmp_path / "shutdown-minutes").read_text().strip() == "40"
        store = JobStore()
        assert store.live_instances() == []
        with sqlite3.connect(store.path) as conn:
            rows = conn.execute(
                "SELECT provider, instance_id, address, terminated_at, hourly_price FROM instances"
            ).fetchall()
        assert len(rows) == 1
        provider, instance_id, address, terminated_at, price = rows[0]
        assert (provider, instance_id, price) == ("lambda", cloud.first_id, PRICES["lambda"])
        assert address == f"127.0.0.1:{sshd.port}" and terminated_at
        record = store.get(run.job_id)
        captured = capsys.readouterr()
        stored = stored_bytes(neural_home, tmp_path / "instance-disk")
        assert KEYS["lambda"].encode() not in stored
        assert_no_key(captured.out, captured.err, caplog.text, record.config, record.error)
    finally:
        cloud.close()


@pytest.mark.slow
def test_a_real_job_on_paperspace_from_the_magic(
    ip, client_key, sshd, tmp_path, neural_home, monkeypatch, capsys
):
    cloud = FakePaperspace(KEYS["paperspace"])
    monkeypatch.setenv("NEURAL_JUPYTER_PAPERSPACE_URL", cloud.url)  # no provider_url given
    try:
        ip.run(f"%%neural_compile --show none\n{TINY}")
        options = {
            "provider": "paperspace",
            "template_id": "tmlinabox22",
            "disk_size": 100,
            "user": USER,
            "key_file": str(client_key),
            "port": sshd.port,
            "workdir": str(tmp_path / "instance-disk"),
            "poll_seconds": 0.1,
            "boot_timeout": 10,
            "ssh_timeout": 10,
            "shutdown_command": "true",
            "python": PYTHON,  # (a quoted --set value keeps its quotes: no spaces here)
        }
        sets = " ".join(f"--set {k}={v}" for k, v in options.items())
        run = ip.run(
            "%neural_submit Tiny --platform ssh --data digits --instance A4000 --region ny2 "
            f"--epochs 1 --max-hours 0.5 --yes --monitor text {sets}"
        )
        assert run.status == "SUCCEEDED" and len(run.history) == 1
        assert_terminated_once(cloud)
        (launch,) = cloud.launches()  # the wire format of POST /machines
        assert launch == {
            "name": launch["name"],
            "machineType": "A4000",
            "templateId": "tmlinabox22",
            "diskSize": 100,
            "region": "ny2",
            "publicIpType": "dynamic",
            "startOnCreate": True,
            "emailPassword": False,
        }
        assert launch["name"].startswith("nj-ssh-")
        deletes = [r["path"] for r in cloud.requests if r["method"] == "DELETE"]
        assert deletes == [f"/v1/machines/{cloud.first_id}"]
        assert all(r["auth_ok"] for r in cloud.requests)
        with sqlite3.connect(JobStore().path) as conn:
            (row,) = conn.execute("SELECT provider, hourly_price FROM instances").fetchall()
        assert row == ("paperspace", PRICES["paperspace"])
        captured = capsys.readouterr()
        assert KEYS["paperspace"].encode() not in stored_bytes(neural_home)
        assert_no_key(captured.out, captured.err)
    finally:
        cloud.close()


# --- every other way a job ends terminates its instance once -----------------------------------
def test_a_failing_job_terminates_its_instance(cloud, client_key, sshd, tmp_path):
    extra = instance_extra(cloud, client_key, sshd, tmp_path)
    backend, job, ledger = submit(cloud, tmp_path, extra, fail_at=2, delay=0.05)
    items = follow(backend, job)
    assert any(isinstance(i, Event) and i.kind == "error" for i in items)
    assert (backend.status(job).state, backend.status(job).exit_code) == ("FAILED", 1)
    assert_terminated_once(cloud)
    assert [e[0] for e in ledger.events] == ["launched", "addressed", "terminated"]
    assert ledger.events[0] == ("launched", cloud.name, cloud.first_id, PRICES[cloud.name])


def test_cancel_terminates_the_instance(cloud, client_key, sshd, tmp_path):
    extra = instance_extra(cloud, client_key, sshd, tmp_path, cancel_grace=2)
    backend, job, ledger = submit(cloud, tmp_path, extra, epochs=100000, delay=0.1, children=1)
    session = job.details["sid"]
    assert wait_for(lambda: len(live_processes(session)) >= 3)
    backend.cancel(job)
    assert live_processes(session) == []
    assert_terminated_once(cloud)
    assert backend.status(job).state == "CANCELLED"
    backend.cancel(job)  # again: nothing more happens
    assert cloud.terminated == [cloud.first_id] and ledger.events[-1][0] == "terminated"


def test_a_job_over_its_time_limit_terminates_its_instance(cloud, client_key, sshd, tmp_path):
    extra = instance_extra(cloud, client_key, sshd, tmp_path)
    backend, job, _ = submit(
        cloud, tmp_path, extra, timeout_seconds=1.0, max_hours=0.001, epochs=100000, delay=0.05
    )
    follow(backend, job)
    status = backend.status(job)
    assert (status.state, status.timed_out) == ("FAILED", True)
    assert_terminated_once(cloud)
    assert (tmp_path / "shutdown-minutes").read_text().strip() == "11"


def test_an_instance_whose_ssh_never_answers_is_terminated(cloud, client_key, sshd, tmp_path):
    extra = instance_extra(cloud, client_key, sshd, tmp_path, port=free_port(), ssh_timeout=2)
    ledger = RecordingLedger()
    with pytest.raises(PlatformConnectionError, match="did not answer SSH") as caught:
        submit(cloud, tmp_path, extra, ledger=ledger)
    assert_terminated_once(cloud)
    assert [e[0] for e in ledger.events] == ["launched", "addressed", "terminated"]
    assert_no_key(caught.value)


def test_an_instance_dying_while_booting_is_terminated(cloud, client_key, sshd, tmp_path):
    cloud.boot_state = "unhealthy" if cloud.name == "lambda" else "deleted"
    with pytest.raises(PlatformError, match="while booting"):
        submit(cloud, tmp_path, instance_extra(cloud, client_key, sshd, tmp_path))
    if cloud.name == "lambda":
        assert_terminated_once(cloud)
    else:  # already gone: the DELETE answered 404, which is fine
        assert [r["method"] for r in cloud.requests].count("DELETE") == 1


def test_a_launch_error_after_creating_still_terminates(cloud, client_key, sshd, tmp_path):
    cloud.launch_mode = "error_after_create"
    ledger = RecordingLedger()
    with pytest.raises(ssh_instances.LaunchError, match="internal error") as caught:
        submit(cloud, tmp_path, instance_extra(cloud, client_key, sshd, tmp_path), ledger=ledger)
    assert len(cloud.launches()) == 1  # a 500 may have created one: never sent again
    assert_terminated_once(cloud)  # found by its name, then terminated
    assert [e[0] for e in ledger.events] == ["launched", "terminated"]
    assert_no_key(caught.value)


# --- the providers' errors ------------------------------------------------------------------------
def test_a_wrong_key_is_an_auth_error_and_nothing_is_launched(
    cloud, client_key, sshd, tmp_path, monkeypatch
):
    monkeypatch.setenv(
        "LAMBDA_API_KEY" if cloud.name == "lambda" else "PAPERSPACE_API_KEY", "wrong-key-12345678"
    )
    with pytest.raises(PlatformAuthError, match="401") as caught:
        submit(cloud, tmp_path, instance_extra(cloud, client_key, sshd, tmp_path))
    assert len(cloud.launches()) == 1 and cloud.instances == {}  # refused, not retried
    assert "wrong-key-12345678" not in str(caught.value)
    if cloud.name == "lambda":
        assert "global/invalid-api-key" in str(caught.value)


def test_no_capacity_is_a_quota_error_and_nothing_is_terminated(cloud, client_key, sshd, tmp_path):
    cloud.launch_mode = "capacity"
    ledger = RecordingLedger()
    with pytest.raises(QuotaError) as caught:
        submit(cloud, tmp_path, instance_extra(cloud, client_key, sshd, tmp_path), ledger=ledger)
    assert len(cloud.launches()) == 1 and cloud.instances == {} and cloud.terminated == []
    assert ledger.events == []
    assert "capacity" in str(caught.value).lower()
    if cloud.name == "lambda":
        assert "insufficient-capacity" in str(caught.value)


def provider_for(cloud, **options):
    instance, region, extra = CHOICES[cloud.name]
    resources = ResourceSpec(
        instance_type=instance,
        region=region,
        extra={"provider": cloud.name, "provider_url": cloud.url, **extra, **options},
    )
    settings = ssh_instances.InstanceSettings.from_resources(resources)
    return ssh_instances.make_provider(settings), settings


def test_refused_launches_are_retried_and_transient_reads_too(cloud):
    client, settings = provider_for(cloud)
    cloud.launch_mode = "busy_once"  # a 503 made nothing: safe to send again
    instance_id = client.launch(
        name="nj-x", instance_type=settings.instance_type, region=settings.region, ssh_key_name=None
    )
    assert len(cloud.launches()) == 2 and list(cloud.instances) == [instance_id]
    cloud.flaky_gets = 2
    info = client.describe(instance_id)
    assert (info.id, info.address, info.is_active) == (instance_id, None, False)
    assert client.describe(instance_id).is_active  # booted; the address is the bare IP
    assert client.describe(instance_id).address == "127.0.0.1"
    assert client.find("nj-x") == instance_id and client.find("nj-other") is None
    client.terminate(instance_id)
    client.terminate(instance_id)  # already gone is fine
    assert client.find("nj-x") is None
    assert client.describe(cloud.make_id(99)).status == "gone"


def test_lambda_picks_a_region_with_capacity_and_the_matching_ssh_key(client_key):
    cloud = FakeLambda(KEYS["lambda"])
    try:
        mine = Path(str(client_key) + ".pub").read_text()
        cloud.ssh_keys = [
            {"id": "k1", "name": "work", "public_key": "ssh-ed25519 AAAAother work"},
            {"id": "k2", "name": "laptop", "public_key": mine.strip() + " renamed"},
        ]
        resources = ResourceSpec(
            instance_type="gpu_1x_a10",
            extra={"provider": "lambda", "provider_url": cloud.url, "key_file": str(client_key)},
        )
        settings = ssh_instances.InstanceSettings.from_resources(resources)
        client = ssh_instances.make_provider(settings)
        client.launch(name="nj-a", instance_type="gpu_1x_a10", region=None, ssh_key_name=None)
        (launch,) = cloud.launches()
        assert launch["region_name"] == "us-south-1" and launch["ssh_key_names"] == ["laptop"]
        with pytest.raises(QuotaError, match="no Lambda Cloud region has capacity"):
            client.launch(
                name="nj-b", instance_type="gpu_1x_h100_pcie", region=None, ssh_key_name="k"
            )
        with pytest.raises(ConfigurationError, match="no instance type") as caught:
            client.launch(name="nj-c", instance_type="gpu_1x_a1O", region=None, ssh_key_name="k")
        assert "gpu_1x_a10" in str(caught.value)  # did you mean
        cloud.ssh_keys.append({"id": "k3", "name": "ci", "public_key": "ssh-rsa AAAAci"})
        other = LambdaProvider(ssh_instances.InstanceSettings("lambda", cloud.url, "x"), cloud.key)
        with pytest.raises(ConfigurationError, match="SSH key") as caught:
            other.launch(name="nj-d", instance_type="gpu_1x_a10", region="r", ssh_key_name=None)
        assert "work, laptop, ci" in str(caught.value)
        assert len(cloud.launches()) == 1
    finally:
        cloud.close()


def test_paperspace_needs_a_template_and_takes_the_disk_size():
    cloud = FakePaperspace(KEYS["paperspace"])
    try:
        settings = ssh_instances.InstanceSettings.from_resources(
            ResourceSpec(instance_type="A4000", disk_gb=200, extra={"provider": "paperspace"})
        )
        assert settings.options == {"disk_size": 200}
        client = PaperspaceProvider(settings, cloud.key)
        assert client.url == "https://api.paperspace.com/v1"
        with pytest.raises(ConfigurationError, match="template"):
            client.launch(name="nj-a", instance_type="A4000", region=None, ssh_key_name=None)
        assert cloud.requests == []
    finally:
        cloud.close()


def test_keys_come_from_the_providers_variable_or_the_generic_chain(monkeypatch):
    settings = ssh_instances.InstanceSettings("lambda", "http://127.0.0.1:9", "gpu_1x_a10")
    assert ssh_instances.make_provider(settings)._token == KEYS["lambda"]
    monkeypatch.delenv("LAMBDA_API_KEY")
    monkeypatch.setenv(ssh_instances.TOKEN_ENV, "generic-token-5678")
    assert ssh_instances.make_provider(settings)._token == "generic-token-5678"
    monkeypatch.delenv(ssh_instances.TOKEN_ENV)
    monkeypatch.setitem(sys.modules, "keyring", None)
    with pytest.raises(PlatformAuthError, match="no API key for Lambda Cloud") as caught:
        ssh_instances.make_provider(settings)
    assert "LAMBDA_API_KEY" in str(caught.value)
    assert LambdaProvider(settings, "k").url == "http://127.0.0.1:9"
    monkeypatch.setenv("NEURAL_JUPYTER_LAMBDA_URL", "http://127.0.0.1:8/api/v1/")
    default = ssh_instances.InstanceSettings("lambda", None, "gpu_1x_a10")
    assert LambdaProvider(default, "k").url == "http://127.0.0.1:8/api/v1"
    monkeypatch.delenv("NEURAL_JUPYTER_LAMBDA_URL")
    assert LambdaProvider(default, "k").url == "https://cloud.lambda.ai/api/v1"


def test_cost_of_a_lambda_or_paperspace_instance_comes_from_the_price_table():
    for provider, instance in (("lambda", "gpu_1x_a10"), ("paperspace", "A4000")):
        resources = ResourceSpec(
            instance_type=instance, max_runtime_hours=2, extra={"provider": provider}
        )
        cost = ssh.SSHBackend().estimate_cost(resources)
        assert cost is not None and cost.total_usd == pytest.approx(2 * PRICES[provider])
    with pytest.raises(ConfigurationError, match="unknown instance provider"):
        ssh_instances.InstanceSettings.from_resources(
            ResourceSpec(instance_type="x", extra={"provider": "lamda"})
        )
