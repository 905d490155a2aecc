"""The Kubernetes backend through the real ``kubernetes`` client, against a local fake API
server (``fakes.kubernetes_api.FakeKubernetes``: the REST wire format, ``Status`` error
bodies, chunked ``follow`` log streams, every request recorded, injectable faults).

The client finds the fake through a real kubeconfig file (server URL, bearer token, context
namespace). Scripted pods cover the state machine in milliseconds; one test lets the fake run
the container command for real (bootstrap.py unpacks the ConfigMap's bundle and runs
train.py), so the log the backend streams is what a cluster would show.
"""

from __future__ import annotations

import base64
import io
import json
import sqlite3
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
from fakes.kubernetes_api import FakeKubernetes, Script

from neural_jupyter import api
from neural_jupyter.backends import get_backend
from neural_jupyter.backends import retry as retry_module
from neural_jupyter.backends.base import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    RemoteJob,
    ResourceSpec,
)
from neural_jupyter.backends.kubernetes import (
    BOOTSTRAP,
    KubernetesBackend,
    decode_artifacts,
    job_name_for,
)
from neural_jupyter.compiler import compile_model
from neural_jupyter.errors import (
    ConfigurationError,
    JobFailed,
    MissingDependencyError,
    PlatformAuthError,
    PlatformError,
    QuotaError,
)
from neural_jupyter.jobs.store import JobStatus, JobStore
from neural_jupyter.runtime import data as data_module
from neural_jupyter.runtime.bundle import RunSettings, build_bundle
from neural_jupyter.runtime.events import Event, LogLine

TOKEN = "k8s-bearer-token-that-must-never-leak-0123"
KEY = "kubernetes-0123456789abcdef0123"

SMALL = """
network Small {
  input: (8, 8, 1)
  layers: Flatten() Dense(16, "relu") Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  optimizer: Adam(learning_rate=0.01)
  metrics: ["accuracy"]
  train { epochs: 3 batch_size: 64 validation_split: 0.2 seed: 3 }
}
"""

EVENTS = [
    '{"event": "start", "epochs": 2, "steps_per_epoch": 3}',
    "plain log line from train.py",
    '{"event": "epoch", "epoch": 1, "epochs": 2, "metrics": {"loss": 0.9, "accuracy": 0.6}}',
    '{"event": "epoch", "epoch": 2, "epochs": 2, "metrics": {"loss": 0.5, "accuracy": 0.8}}',
    '{"event": "done", "metrics": {"loss": 0.5, "accuracy": 0.8}, "best_epoch": 2}',
]


@pytest.fixture
def kube(tmp_path, monkeypatch, neural_home):
    monkeypatch.setattr(retry_module, "BASE_WAIT", 0.0)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with FakeKubernetes(token=TOKEN) as fake:
        fake.config_path = fake.kubeconfig(tmp_path / "kubeconfig.json", namespace="ml")
        monkeypatch.setenv("KUBECONFIG", str(fake.config_path))
        backend = get_backend("kubernetes")
        backend._clients.clear()
        monkeypatch.setattr(backend, "poll_seconds", 0.02)
        monkeypatch.setattr(backend, "heartbeat_seconds", 0.02)
        fake.backend = backend
        yield fake
        backend._clients.clear()


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    model = compile_model(SMALL)
    dataset = data_module.resolve(model.spec, "digits")
    directory = tmp_path_factory.mktemp("bundle")
    return build_bundle(
        model.spec, dataset, directory / "bundle", RunSettings.from_spec(model.spec), job_id="j1"
    )


def remote_job(tmp_path: Path, key: str = KEY, submission=None) -> RemoteJob:
    directory = tmp_path / "job"
    directory.mkdir(exist_ok=True)
    details = {"idempotency_key": key, **(submission.details if submission else {})}
    return RemoteJob("j1", directory, submission.remote_id if submission else None, details)


def submit(kube, tmp_path, bundle, **resources):
    job = remote_job(tmp_path)
    submission = kube.backend.submit(bundle, job, ResourceSpec(**resources))
    return remote_job(tmp_path, submission=submission), submission


def collect(backend, job, follow=True, timeout=20.0):
    items, deadline = [], time.monotonic() + timeout
    for item in backend.events(job, follow=follow):
        if item is not None:
            items.append(item)
        assert time.monotonic() < deadline, "the event stream did not end"
    return items


# --- pure parts ---------------------------------------------------------------------------------
def test_job_names_are_stable_dns_labels():
    name = job_name_for(KEY)
    assert name == job_name_for(KEY) and name.startswith("nj-")
    long = job_name_for("kubernetes-" + "X_" * 60)
    for candidate in (name, long):
        assert len(candidate) <= 63 and candidate == candidate.lower()
        assert all(c.isalnum() or c == "-" for c in candidate)
    assert job_name_for("a" * 80) != job_name_for("a" * 81)


def test_missing_client_names_the_extra(monkeypatch, tmp_path, small_bundle):
    monkeypatch.setitem(sys.modules, "kubernetes", None)
    with pytest.raises(MissingDependencyError) as caught:
        KubernetesBackend().submit(small_bundle, remote_job(tmp_path), ResourceSpec())
    assert "neural-jupyter[kubernetes]" in str(caught.value)


def test_artifact_lines_round_trip(tmp_path):
    """What the bootstrap prints into the log decodes to the same bytes (checksum checked)."""
    work = tmp_path / "work"
    (work / "output").mkdir(parents=True)
    payload = bytes(range(256)) * 100
    (work / "output" / "model.pt").write_bytes(payload)
    (work / "output" / "history.json").write_text("[]")
    script = BOOTSTRAP.split("budget = ", 1)[1]
    code = "import base64, hashlib, os, sys\nMARK = '##neural-artifact'\n"
    code += f"work = {str(work)!r}\nbudget = " + script.replace("sys.exit(code)", "")
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"NJ_LOG_ARTIFACTS_MAX_BYTES": "1000000"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert all(len(line) < 9000 for line in out)
    found = decode_artifacts(out, tmp_path / "back")
    assert found["weights"].read_bytes() == payload
    assert found["history"].read_text() == "[]"
    chunk = next(i for i, line in enumerate(out) if line.startswith("##neural-artifact output/m"))
    damaged = list(out)
    damaged[chunk] = (
        damaged[chunk][:-8]
        + ("AAAA" if not damaged[chunk].endswith("AAAA") else "BBBB")
        + damaged[chunk][-4:]
    )
    assert set(decode_artifacts(damaged, tmp_path / "bad")) == {"history"}


# --- submit -------------------------------------------------------------------------------------
def test_submit_creates_the_job_and_its_configmap(kube, tmp_path, small_bundle):
    _job, submission = submit(
        kube,
        tmp_path,
        small_bundle,
        gpus=2,
        cpus=4,
        memory_gb=16,
        gpu_type="NVIDIA-A100-SXM4-80GB",
        max_runtime_hours=1.5,
        extra={"scheduler": "runai-scheduler", "runai_project": "vision", "image": "my/img:1"},
    )
    name = job_name_for(KEY)
    assert submission.remote_id == f"runai-vision/{name}"
    posts = [(r.method, r.path) for r in kube.requests]
    assert posts == [
        ("POST", "/apis/batch/v1/namespaces/runai-vision/jobs"),
        ("POST", "/api/v1/namespaces/runai-vision/configmaps"),
    ]
    manifest = kube.requests[0].body
    assert manifest["metadata"]["name"] == name
    assert manifest["metadata"]["annotations"]["neural-jupyter/idempotency-key"] == KEY
    spec = manifest["spec"]
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 5400
    pod = spec["template"]["spec"]
    assert pod["schedulerName"] == "runai-scheduler" and pod["restartPolicy"] == "Never"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert spec["template"]["metadata"]["labels"]["project"] == "vision"
    container = pod["containers"][0]
    assert container["image"] == "my/img:1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["requests"] == {"cpu": "4", "memory": "16384Mi"}
    configmap = kube.requests[1].body
    owner = configmap["metadata"]["ownerReferences"][0]
    assert (
        owner["kind"] == "Job"
        and owner["uid"] == kube.jobs[("runai-vision", name)]["metadata"]["uid"]
    )
    assert configmap["data"]["bootstrap.py"] == BOOTSTRAP
    archive = base64.b64decode(configmap["binaryData"]["bundle.tar.gz"])
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        names = set(tar.getnames())
    assert {"train.py", "job.json", "data.npz", "model.neural"} <= names
    assert not any(n.startswith("output") for n in names)
    everything = json.dumps([r.body for r in kube.requests])
    assert TOKEN not in everything


def test_namespace_comes_from_the_kubeconfig_context(kube, tmp_path, small_bundle):
    _job, submission = submit(kube, tmp_path, small_bundle)
    assert submission.details["namespace"] == "ml"
    pod = kube.requests[0].body["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "schedulerName" not in pod
    assert "resources" not in pod["containers"][0]
    assert "activeDeadlineSeconds" not in kube.requests[0].body["spec"]


def test_big_bundle_needs_a_bundle_url(kube, tmp_path, small_bundle, monkeypatch):
    import neural_jupyter.backends.kubernetes as k8s

    monkeypatch.setattr(k8s, "CONFIGMAP_LIMIT", 10_000)
    with pytest.raises(ConfigurationError) as caught:
        submit(kube, tmp_path, small_bundle)
    assert "1 MiB" in str(caught.value) and "bundle_url" in str(caught.value)
    assert (tmp_path / "job" / "bundle.tar.gz").exists() and kube.requests == []
    url = "https://storage.example.com/b/bundle.tar.gz?X-Amz-Signature=abc"
    _job, _ = submit(kube, tmp_path, small_bundle, extra={"bundle_url": url})
    env = {
        e["name"]: e["value"]
        for e in kube.requests[0].body["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["NJ_BUNDLE_URL"] == url and len(env["NJ_BUNDLE_SHA256"]) == 64
    assert "binaryData" not in kube.requests[1].body


# --- status and events --------------------------------------------------------------------------
def test_status_and_events_through_to_success(kube, tmp_path, small_bundle):
    hold = threading.Event()
    kube.script = Script(lines=EVENTS, waiting=["Unschedulable", "ContainerCreating"], hold=hold)
    job, _ = submit(kube, tmp_path, small_bundle, gpus=1)
    first = kube.backend.status(job)
    assert first.state == PENDING
    assert first.message == "unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    items = []
    for item in kube.backend.events(job):
        if isinstance(item, Event) and item.kind == "done":
            assert kube.backend.status(job).state == RUNNING
            hold.set()  # the container exits after its last line
        if item is not None:
            items.append(item)
    statuses = [i.get("message") for i in items if isinstance(i, Event) and i.kind == "status"]
    after_first = [s for s in statuses if not s.startswith("unschedulable")]  # status() saw it
    assert after_first[:2] == ["ContainerCreating", "running"]
    kinds = [i.kind for i in items if isinstance(i, Event) and i.kind != "status"]
    assert kinds == ["start", "epoch", "epoch", "done"]
    assert LogLine("plain log line from train.py") in items
    final = kube.backend.status(job)
    assert final.state == SUCCEEDED and final.exit_code == 0
    follows = kube.calls("GET", r"/log$")
    assert any(r.query.get("follow") == ["true"] for r in follows)
    # the log is kept locally: a replay after the TTL controller removed the Job and its pod
    # still has every event (and the final state)
    assert "plain log line" in (job.directory / "stderr.log").read_text()
    kube.pods.clear()
    kube.jobs.clear()
    assert kube.backend.status(job).state == SUCCEEDED
    replay = [i for i in collect(kube.backend, job, follow=False) if isinstance(i, Event)]
    assert [i.kind for i in replay if i.kind != "status"] == ["start", "epoch", "epoch", "done"]


def test_failure_reports_exit_code_and_error_event(kube, tmp_path, small_bundle):
    error = '{"event": "error", "type": "RuntimeError", "message": "CUDA error: boom"}'
    kube.script = Script(lines=['{"event": "start", "epochs": 2}', error], exit_code=3)
    job, _ = submit(kube, tmp_path, small_bundle)
    items = collect(kube.backend, job)
    assert any(isinstance(i, Event) and i.kind == "error" for i in items)
    status = kube.backend.status(job)
    assert status.state == FAILED and status.exit_code == 3
    assert "exited with code 3" in status.message


def test_deadline_exceeded_is_a_timeout(kube, tmp_path, small_bundle):
    kube.script = Script(lines=EVENTS[:1], hold=threading.Event())
    job, _ = submit(kube, tmp_path, small_bundle, max_runtime_hours=0.2 / 3600)
    collect(kube.backend, job)
    status = kube.backend.status(job)
    assert status.state == FAILED and status.timed_out
    assert "activeDeadlineSeconds" in status.message


def test_cancel_deletes_the_job_in_the_foreground(kube, tmp_path, small_bundle):
    hold = threading.Event()
    kube.script = Script(lines=EVENTS[:2], hold=hold)
    job, _ = submit(kube, tmp_path, small_bundle)
    stream = kube.backend.events(job)
    seen = []
    for item in stream:
        if item is not None:
            seen.append(item)
        if LogLine("plain log line from train.py") in seen:
            break
    assert kube.backend.status(job).state == RUNNING
    kube.backend.cancel(job)
    delete = kube.calls("DELETE", r"/jobs/")
    assert len(delete) == 1 and delete[0].query["propagationPolicy"] == ["Foreground"]
    assert kube.backend.status(job).state == CANCELLED
    rest = [i for i in stream if i is not None]  # the stream ends by itself
    assert not any(isinstance(i, Event) and i.kind == "done" for i in rest)
    deadline = time.monotonic() + 10  # the fake's garbage collector: Job, pod, owned ConfigMap
    while (kube.jobs or kube.configmaps) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert kube.jobs == {} and kube.configmaps == {}
    assert kube.backend.status(job).state == CANCELLED
    kube.backend.cancel(job)  # cancelling again is harmless (404 is fine)


# --- errors and retries -------------------------------------------------------------------------
def test_wrong_token_is_an_auth_error_with_the_servers_message(kube, tmp_path, small_bundle):
    bad = kube.kubeconfig(tmp_path / "bad.json", token="expired-token-0000000000")
    with pytest.raises(PlatformAuthError) as caught:
        submit(kube, tmp_path, small_bundle, extra={"kubeconfig": str(bad)})
    assert "Unauthorized" in str(caught.value) and "[kubernetes]" in str(caught.value)
    assert "expired-token-0000000000" not in "".join(caught.value._render_traceback_())
    assert len(kube.requests) == 1  # not retried
    kube.fail(
        "POST",
        r"/jobs$",
        403,
        'jobs.batch is forbidden: User "alice" cannot create resource "jobs" in API group '
        '"batch" in the namespace "ml"',
        reason="Forbidden",
    )
    with pytest.raises(PlatformAuthError) as caught:
        submit(kube, tmp_path, small_bundle)
    assert 'User "alice" cannot create resource "jobs"' in str(caught.value)
    assert "jobs.batch" in caught.value.hint


def test_quota_refusal_is_a_quota_error(kube, tmp_path, small_bundle):
    kube.fail(
        "POST",
        r"/jobs$",
        403,
        "exceeded quota: gpu-quota, requested: requests.nvidia.com/gpu=4, used: 4, limited: 4",
        reason="Forbidden",
    )
    with pytest.raises(QuotaError, match="exceeded quota"):
        submit(kube, tmp_path, small_bundle, gpus=4)


@pytest.mark.parametrize("lost_reply", [False, True])
def test_transient_503_is_retried_into_exactly_one_job(kube, tmp_path, small_bundle, lost_reply):
    kube.fail("POST", r"/jobs$", 503, "etcdserver: leader changed", after=lost_reply)
    _job, submission = submit(kube, tmp_path, small_bundle)
    assert len(kube.calls("POST", r"/jobs$")) == 2
    assert len(kube.jobs) == 1 and len(kube.configmaps) == 1
    uid = next(iter(kube.jobs.values()))["metadata"]["uid"]
    assert submission.details["uid"] == uid  # the ConfigMap belongs to the one Job
    # submitting the same key again adopts the existing Job (409), never a second one
    again = kube.backend.submit(small_bundle, remote_job(tmp_path), ResourceSpec())
    assert again.details["uid"] == uid and len(kube.jobs) == 1


def test_permanent_400_is_not_retried(kube, tmp_path, small_bundle):
    kube.fail(
        "POST",
        r"/jobs$",
        422,
        'Job.batch "x" is invalid: spec.template.spec.containers[0].image: Required value',
        reason="Invalid",
    )
    with pytest.raises(PlatformError) as caught:
        submit(kube, tmp_path, small_bundle)
    assert "Required value" in str(caught.value)
    assert len(kube.calls("POST", r"/jobs$")) == 1 and kube.jobs == {}
    kube.fail("POST", r"/jobs$", 400, "bad request body", reason="BadRequest")
    with pytest.raises(PlatformError, match="bad request body"):
        submit(kube, tmp_path, small_bundle)
    assert len(kube.calls("POST", r"/jobs$")) == 2


def test_unreachable_server_is_a_connection_error(kube, tmp_path, small_bundle):
    from neural_jupyter.errors import PlatformConnectionError

    dead = kube.kubeconfig(tmp_path / "dead.json")
    dead.write_text(dead.read_text().replace(kube.url, "http://127.0.0.1:9"))
    with pytest.raises(PlatformConnectionError):
        submit(kube, tmp_path, small_bundle, extra={"kubeconfig": str(dead)})


# --- through the API ----------------------------------------------------------------------------
def test_dry_run_shows_the_manifest_and_sends_nothing(kube):
    plan = api.submit(
        SMALL, "digits", platform="kubernetes", gpus=1, dry_run=True, extra={"namespace": "t"}
    )
    assert kube.requests == [] and plan.cost is None
    job = plan.request["Job"]
    assert job["metadata"]["namespace"] == "t"
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "nvidia.com/gpu": "1"
    }


def test_full_run_through_the_api(kube, capsys):
    """The fake runs the container command for real: bootstrap.py unpacks the ConfigMap's
    bundle, train.py trains, the artifacts come back through the log."""
    kube.execute = True
    run = api.submit(SMALL, "digits", platform="kubernetes", gpus=1, monitor="text")
    out = capsys.readouterr().out
    assert "epoch 3/3" in out
    assert run.status == "SUCCEEDED" and len(run.history) == 3
    record = JobStore().get(run.job_id)
    assert record.status is JobStatus.SUCCEEDED
    assert record.metrics["val_accuracy"] > 0.6 and record.remote_id.startswith("ml/nj-")
    assert run.artifacts["weights"].exists()  # brought back from the pod log
    assert sum(p.numel() for p in run.model().parameters()) > 0
    from neural_jupyter.jobs.job import Job

    job = Job.load(run.job_id)
    fetched = kube.backend.fetch_artifacts(job.remote(), job.directory / "again")
    assert fetched["weights"].read_bytes() == run.artifacts["weights"].read_bytes()
    assert set(fetched) == {"weights", "history", "checkpoint"}
    # the same submission again is the same job: nothing new is created
    again = api.submit(SMALL, "digits", platform="kubernetes", gpus=1, monitor="none")
    assert again.job_id == run.job_id
    assert len(kube.calls("POST", r"/jobs$")) == 1
    # the token appears nowhere we write or show
    texts = [out, capsys.readouterr().out]
    with sqlite3.connect(JobStore().path) as conn:
        texts.extend(json.dumps(row) for row in conn.execute("SELECT * FROM jobs"))
    for path in job.directory.rglob("*"):
        if path.is_file() and path.suffix not in (".pt", ".npz"):
            texts.append(path.read_text(errors="replace"))
    assert TOKEN not in "\n".join(texts)


def test_failed_run_raises_job_failed_with_the_log_tail(kube, capsys):
    kube.script = Script(
        lines=[
            '{"event": "start", "epochs": 3}',
            "Traceback (most recent call last):",
            "RuntimeError: CUDA out of memory",
            '{"event": "error", "type": "RuntimeError", "message": "CUDA out of memory"}',
        ],
        exit_code=1,
    )
    with pytest.raises(JobFailed) as caught:
        api.submit(SMALL, "digits", platform="kubernetes", monitor="none")
    assert "CUDA out of memory" in str(caught.value)
    assert "batch size" in (caught.value.hint or "")
