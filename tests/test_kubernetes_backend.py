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

import neural_jupyter
import neural_jupyter.backends.kubernetes as k8s
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
from neural_jupyter.runtime.bundle import RunSettings, build_bundle, launcher_source
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


def test_artifact_lines_round_trip(tmp_path, capsys):
    """What the launcher prints into the log decodes to the same bytes (checksum checked)."""
    from neural_jupyter.runtime import launcher

    output = tmp_path / "work" / "output"
    output.mkdir(parents=True)
    payload = bytes(range(256)) * 100
    (output / "model.pt").write_bytes(payload)
    (output / "history.json").write_text("[]")
    (output / "status.json").write_text('{"exit_code": 0}')  # train.py's own record: not sent
    launcher.print_outputs(str(output), 1_000_000)
    out = capsys.readouterr().out.splitlines()
    assert all(len(line) < 9000 for line in out)
    found = decode_artifacts(out, tmp_path / "back")
    assert set(found) == {"weights", "history"}
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
    launcher.print_outputs(str(output), 100)  # over the budget: named, not sent
    skipped = capsys.readouterr().out.splitlines()
    assert "##neural-artifact-skipped output/model.pt 25600" in skipped
    assert decode_artifacts(skipped, tmp_path / "none") == {
        "history": tmp_path / "none" / "history.json"
    }


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
    calls = [(r.method, r.path) for r in kube.requests]
    assert calls == [  # the ConfigMap first: a Job never waits for a ConfigMap that failed
        ("POST", "/api/v1/namespaces/runai-vision/configmaps"),
        ("POST", "/apis/batch/v1/namespaces/runai-vision/jobs"),
        ("PATCH", f"/api/v1/namespaces/runai-vision/configmaps/{name}"),
    ]
    manifest = kube.requests[1].json
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
    # the restricted Pod Security Standard
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["requests"] == {"cpu": "4", "memory": "16384Mi"}
    configmap = kube.configmaps[("runai-vision", name)]
    owner = configmap["metadata"]["ownerReferences"][0]
    assert (
        owner["kind"] == "Job"
        and owner["uid"] == kube.jobs[("runai-vision", name)]["metadata"]["uid"]
    )
    assert configmap["data"]["launcher.py"] == launcher_source()
    assert container["command"][:5] == [
        "python",
        "-u",
        "/neural/launcher.py",
        "--bundle",
        "/neural/bundle.tar.gz",
    ]
    archive = base64.b64decode(configmap["binaryData"]["bundle.tar.gz"])
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        names = set(tar.getnames())
    assert {"train.py", "job.json", "data.npz", "model.neural"} <= names
    assert not any(n.startswith("output") for n in names)
    everything = "".join(r.body.decode() for r in kube.requests)
    assert TOKEN not in everything


def test_namespace_comes_from_the_kubeconfig_context(kube, tmp_path, small_bundle):
    _job, submission = submit(kube, tmp_path, small_bundle)
    assert submission.details["namespace"] == "ml"
    job_body = kube.calls("POST", r"/jobs$")[0].json
    pod = job_body["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "schedulerName" not in pod
    assert "resources" not in pod["containers"][0]
    assert "activeDeadlineSeconds" not in job_body["spec"]
    # the default image: the newest of the dated table, CPU build for a job without GPUs
    assert pod["containers"][0]["image"] == k8s.default_image(gpu=False)
    assert submission.details["image"].endswith("-cpu-py313-ubuntu22.04-ec2")


def test_a_failed_configmap_creates_no_job(kube, tmp_path, small_bundle):
    kube.fail("POST", r"/configmaps$", 422, "ConfigMap is invalid", reason="Invalid")
    with pytest.raises(PlatformError, match="ConfigMap is invalid"):
        submit(kube, tmp_path, small_bundle)
    assert kube.calls("POST", r"/jobs$") == [] and kube.jobs == {}


def test_big_bundle_needs_a_bundle_url(kube, tmp_path, small_bundle, monkeypatch):
    import neural_jupyter.backends.kubernetes as k8s

    monkeypatch.setattr(k8s, "CONFIGMAP_LIMIT", 10_000)
    with pytest.raises(ConfigurationError) as caught:
        submit(kube, tmp_path, small_bundle)
    assert "1 MiB" in str(caught.value) and "bundle_url" in str(caught.value)
    assert (tmp_path / "job" / "bundle.tar.gz").exists() and kube.requests == []
    url = "https://storage.example.com/b/bundle.tar.gz?X-Amz-Signature=abc"
    _job, _ = submit(kube, tmp_path, small_bundle, extra={"bundle_url": url})
    container = kube.calls("POST", r"/jobs$")[0].json["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["command"][3:5] == ["--bundle", url] and len(env["NJ_BUNDLE_SHA256"]) == 64
    assert "binaryData" not in kube.calls("POST", r"/configmaps$")[0].json


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
    # the waiting reason is announced when the loop looks while it lasts; on a loaded machine
    # the log reader's own pod read can be the one that sees it (the fake then moves on)
    assert "running" in after_first
    assert set(after_first[: after_first.index("running")]) <= {"ContainerCreating"}
    kinds = [i.kind for i in items if isinstance(i, Event) and i.kind != "status"]
    assert kinds == ["start", "epoch", "epoch", "done"]
    assert LogLine("plain log line from train.py") in items
    final = kube.backend.status(job)
    assert final.state == SUCCEEDED and final.exit_code == 0
    follows = kube.calls("GET", r"/log$")
    assert any(r.query.get("follow") == "true" for r in follows)
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
    assert len(delete) == 1 and delete[0].query["propagationPolicy"] == "Foreground"
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


# --- user code --------------------------------------------------------------------------------
def test_a_script_folder_runs_in_a_pod_and_its_outputs_come_back_through_the_log(kube, tmp_path):
    """Every file under output/ (nested folders, a space in a name) comes back through the
    pod log."""
    from usercode_jobs import check_script_run, make_project

    kube.execute = True
    project, data = make_project(tmp_path / "user")
    run = neural_jupyter.run_script(
        project, ["--epochs", "2"], data=data, platform="kubernetes", monitor="none"
    )
    check_script_run(run)
    assert JobStore().get(run.job_id).config["kind"] == "script"


# --- data-parallel training (nodes × procs_per_node) ----------------------------------------
def _as_model(kind: str, manifest: dict) -> dict:
    """``manifest`` read into the client's own model (``V1Job``, ``V1Service``) and written
    back: what the client knows of it. A field it does not know is dropped on the way."""
    from kubernetes import client

    api = client.ApiClient()
    model = api.deserialize(json.dumps(manifest), kind, "application/json")
    return api.sanitize_for_serialization(model)


def test_nodes_are_an_indexed_job_with_a_headless_service(kube, tmp_path, small_bundle):
    _job, submission = submit(kube, tmp_path, small_bundle, nodes=3, procs_per_node=2, gpus=2)
    name = job_name_for(KEY)
    calls = [(r.method, r.path) for r in kube.requests]
    assert calls == [  # ConfigMap and Service before the Job; both then owned by the Job
        ("POST", "/api/v1/namespaces/ml/configmaps"),
        ("POST", "/api/v1/namespaces/ml/services"),
        ("POST", "/apis/batch/v1/namespaces/ml/jobs"),
        ("PATCH", f"/api/v1/namespaces/ml/configmaps/{name}"),
        ("PATCH", f"/api/v1/namespaces/ml/services/{name}"),
    ]
    service, manifest = kube.requests[1].json, kube.requests[2].json
    spec = manifest["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 3
    assert spec["backoffLimit"] == 0  # one failed pod fails the Job
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == name and pod["restartPolicy"] == "Never"
    command = pod["containers"][0]["command"]
    assert command[command.index("--nnodes") + 1] == "3"
    assert command[command.index("--nproc-per-node") + 1] == "2"
    assert command[command.index("--master-addr") + 1] == f"{name}-0.{name}.ml.svc"
    assert command[command.index("--master-port") + 1] == "29500"
    assert "--node-rank" not in command  # JOB_COMPLETION_INDEX, in each pod
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert service["spec"] == {
        "clusterIP": "None",
        "selector": {"job-name": name},
        "publishNotReadyAddresses": True,
        "ports": [{"name": "rendezvous", "port": 29500}],
    }
    uid = kube.jobs[("ml", name)]["metadata"]["uid"]
    owner = kube.services[("ml", name)]["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "Job" and owner["uid"] == uid
    assert submission.details["service"] == name and submission.details["nodes"] == 3
    # the client's own models know every field (nothing dropped) with the right types
    assert _as_model("V1Job", manifest) == manifest
    assert _as_model("V1Service", service) == service
    # three pods, each with its index and host name
    pods = [p.to_json() for p in kube.pods_of("ml", name)]
    assert [p["metadata"]["labels"][k8s.INDEX_LABEL] for p in pods] == ["0", "1", "2"]
    assert [p["spec"]["hostname"] for p in pods] == [f"{name}-{i}" for i in range(3)]


def test_one_node_is_the_plain_job(kube, tmp_path, small_bundle):
    _job, _ = submit(kube, tmp_path, small_bundle, procs_per_node=2)
    assert not kube.calls("POST", r"/services$")
    spec = kube.calls("POST", r"/jobs$")[0].json["spec"]
    assert "completionMode" not in spec and "subdomain" not in spec["template"]["spec"]
    command = spec["template"]["spec"]["containers"][0]["command"]
    assert command[-4:] == ["--nnodes", "1", "--nproc-per-node", "2"]
    assert "--master-addr" not in command


def test_index_0_is_the_stream_and_success_needs_every_index(kube, tmp_path, small_bundle):
    hold = threading.Event()
    kube.script = Script(lines=EVENTS, worker_lines=["[rank 1] worker chatter"], hold=hold)
    job, _ = submit(kube, tmp_path, small_bundle, nodes=2)
    items = []
    for item in kube.backend.events(job):
        if isinstance(item, Event) and item.kind == "done":
            hold.set()
        if item is not None:
            items.append(item)
    kinds = [i.kind for i in items if isinstance(i, Event) and i.kind != "status"]
    assert kinds == ["start", "epoch", "epoch", "done"]
    assert not any(isinstance(i, LogLine) and "worker chatter" in i.text for i in items)
    assert kube.backend.status(job).state == SUCCEEDED
    logs = {r.path for r in kube.calls("GET", r"/log$")}
    first = kube.pods_of("ml", job_name_for(KEY))[0].name
    assert logs == {f"/api/v1/namespaces/ml/pods/{first}/log"}


def test_a_failed_node_fails_the_job_and_stops_the_others(kube, tmp_path, small_bundle):
    kube.script = Script(lines=EVENTS[:2], exit_codes={1: 1}, hold=threading.Event())
    job, _ = submit(kube, tmp_path, small_bundle, nodes=3)
    collect(kube.backend, job)
    status = kube.backend.status(job)
    pods = kube.pods_of("ml", job_name_for(KEY))
    assert status.state == FAILED and status.exit_code == 1
    assert status.message == f"node 1 (pod {pods[1].name}) exited with code 1 (Error)"
    assert all(pod.ended for pod in pods)  # the Job controller stopped nodes 0 and 2


def test_cancel_deletes_the_job_its_service_and_configmap(kube, tmp_path, small_bundle):
    kube.script = Script(lines=EVENTS[:2], hold=threading.Event())
    job, _ = submit(kube, tmp_path, small_bundle, nodes=2)
    pods = kube.pods_of("ml", job_name_for(KEY))
    deadline = time.monotonic() + 10
    while not all(p.started for p in pods) and time.monotonic() < deadline:
        kube.backend.status(job)
        time.sleep(0.02)
    assert kube.backend.status(job).state == RUNNING
    kube.backend.cancel(job)
    name = job_name_for(KEY)
    deletes = [r.path for r in kube.requests if r.method == "DELETE"]
    assert deletes == [
        f"/apis/batch/v1/namespaces/ml/jobs/{name}",
        f"/api/v1/namespaces/ml/services/{name}",
        f"/api/v1/namespaces/ml/configmaps/{name}",
    ]
    assert kube.calls("DELETE", r"/jobs/")[0].query["propagationPolicy"] == "Foreground"
    assert all(p.ended for p in pods)  # every node's pod
    assert kube.services == {} and kube.configmaps == {}
    assert kube.backend.status(job).state == CANCELLED
    kube.backend.cancel(job)  # again: every 404 is fine


def test_dry_run_shows_the_service(kube):
    plan = api.submit(
        SMALL, "digits", platform="kubernetes", nodes=2, procs_per_node=4, dry_run=True
    )
    assert kube.requests == []
    assert plan.request["Service"]["spec"]["clusterIP"] == "None"
    assert plan.request["Job"]["spec"]["completions"] == 2


def test_each_pod_finds_its_node_rank_in_job_completion_index():
    from neural_jupyter.runtime import launcher

    master = "nj-abc-0.nj-abc.ml.svc"
    args = launcher.parse_args(
        [
            "--nnodes",
            "2",
            "--nproc-per-node",
            "4",
            "--master-addr",
            master,
            "--master-port",
            "29500",
        ]
    )
    command = launcher.torchrun_arguments(args, {"JOB_COMPLETION_INDEX": "1"})
    assert command[command.index("--node-rank") + 1] == "1"
    assert command[command.index("--master-addr") + 1] == master
    assert command[command.index("--master-port") + 1] == "29500"
    # a pod waits for node 0's name to resolve before torchrun tries to meet it
    assert launcher.wait_for_host("localhost", seconds=1)
    assert not launcher.wait_for_host("no-such-pod.invalid", seconds=0.2, every=0.1)
