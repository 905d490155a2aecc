"""The Vertex AI backend through the real google-cloud-aiplatform, google-cloud-storage and
google-auth libraries, against a local fake of Vertex AI, Cloud Storage and Cloud Logging
(``tests/fakes/vertex_api.py``) that records every request.

Real: the SDKs' REST transport, credential loading (a service-account key whose token URI is
the fake), uploads/downloads, the launcher the container runs, train.py. Faked: Google's
servers, and the container host (the fake runs the container command on this machine).
Switched off: google-auth's background "regional access boundary" lookup, which would call
iamcredentials.googleapis.com (tests never touch the internet).
"""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
import sys
import tarfile
import time
from pathlib import Path

import pytest

pytest.importorskip("google.cloud.aiplatform_v1")
pytest.importorskip("cryptography")

import google.auth.credentials
import google.cloud

import neural_jupyter
from neural_jupyter import api
from neural_jupyter.backends import retry as retry_module
from neural_jupyter.backends import vertex
from neural_jupyter.backends.base import RemoteJob, ResourceSpec
from neural_jupyter.backends.vertex import VertexBackend, machine_for, remote_status
from neural_jupyter.compiler import compile_model
from neural_jupyter.errors import (
    ConfigurationError,
    MissingDependencyError,
    PlatformAuthError,
    PlatformConnectionError,
    PlatformError,
)
from neural_jupyter.jobs.store import JobStore
from neural_jupyter.runtime import data as data_module
from neural_jupyter.runtime.bundle import RunSettings, build_bundle, launcher_source
from neural_jupyter.runtime.events import Event, LogLine
from tests.fakes.vertex_api import ACCESS_TOKEN, FakeGoogleCloud

SMALL = """
network Small {
  input: (8, 8, 1)
  layers: Flatten() Dense(16, "relu") Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  metrics: ["accuracy"]
  train { epochs: 2 batch_size: 128 }
}
"""
BUCKET = "stage-bucket"
KEY = "vertex-0123456789abcdef0123"
PREFIX = f"neural-jupyter/{KEY}"
# What a bundle's train.py prints (recorded from a run, times shortened).
STDOUT = [
    '{"event": "start", "time": 1.0, "model": "Small", "epochs": 2, "steps_per_epoch": 15}',
    '{"event": "epoch", "time": 2.0, "epoch": 1, "epochs": 2, "metrics": {"loss": 2.31, '
    '"accuracy": 0.10}}',
    '{"event": "epoch", "time": 3.0, "epoch": 2, "epochs": 2, "metrics": {"loss": 2.27, '
    '"accuracy": 0.12}}',
    '{"event": "artifact", "time": 3.1, "name": "weights", "path": "output/model.pt", "bytes": 5}',
    '{"event": "done", "time": 3.2, "metrics": {"loss": 2.27, "accuracy": 0.12}, '
    '"best_epoch": 2, "epochs_run": 2, "wall_time": 2.2}',
]
ERROR_LINE = (
    '{"event": "error", "time": 2.0, "type": "RuntimeError", "message": "CUDA out of memory", '
    '"traceback": "Traceback ...", "hint": null}'
)


@pytest.fixture(scope="module")
def key_file(tmp_path_factory):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return tmp_path_factory.mktemp("gcp") / "key.json", pem


@pytest.fixture
def cloud(tmp_path, monkeypatch, key_file):
    """The fake, and a user environment pointing at it (service-account key, project,
    region, bucket, endpoints)."""
    fake = FakeGoogleCloud(tmp_path / "fake").start()
    path, pem = key_file
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "proj",
                "private_key_id": "key1",
                "private_key": pem,
                "client_email": "trainer@proj.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": f"{fake.url}/token",
            }
        )
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "proj")
    monkeypatch.setenv("CLOUD_ML_REGION", "us-central1")
    monkeypatch.setenv("NEURAL_JUPYTER_VERTEX_BUCKET", f"gs://{BUCKET}")
    monkeypatch.setenv("NEURAL_JUPYTER_VERTEX_ENDPOINT", fake.url)
    monkeypatch.setenv("NEURAL_JUPYTER_GCS_ENDPOINT", fake.url)
    monkeypatch.setenv("NEURAL_JUPYTER_LOGGING_ENDPOINT", fake.url)
    monkeypatch.setattr(
        google.auth.credentials.CredentialsWithRegionalAccessBoundary,
        "_maybe_start_regional_access_boundary_refresh",
        lambda self, request, url: None,
    )
    monkeypatch.setattr(VertexBackend, "poll_seconds", 0.0)
    monkeypatch.setattr(retry_module, "BASE_WAIT", 0.0)
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    model = compile_model(SMALL)
    dataset = data_module.resolve(model.spec, "digits")
    settings = RunSettings.from_spec(model.spec, max_seconds=1800)
    directory = tmp_path_factory.mktemp("job")
    return build_bundle(model.spec, dataset, directory / "bundle", settings, job_id="nj-test")


@pytest.fixture
def job(tmp_path):
    return RemoteJob("nj-test", tmp_path / "job", None, {"idempotency_key": KEY})


def submitted(backend, bundle, job, resources=None):
    submission = backend.submit(bundle, job, resources or ResourceSpec())
    return RemoteJob(job.id, job.directory, submission.remote_id, {**submission.details})


def put_logs(fake, stdout=(), stderr=()):
    for name, lines in (("stdout", stdout), ("stderr", stderr)):
        if lines:
            data = "".join(f"{line}\n" for line in lines).encode()
            fake.put_object(BUCKET, f"{PREFIX}/logs/{name}.log", data)


def test_submit_uploads_the_bundle_and_creates_one_custom_job(cloud, bundle_dir, job):
    backend = VertexBackend()
    resources = ResourceSpec(
        gpus=1, gpu_type="T4", max_runtime_hours=2, spot=True, disk_gb=150
    ).validated()
    remote = submitted(backend, bundle_dir, job, resources)

    (create,) = cloud.calls("POST", r"/customJobs$")
    assert create.path == "/v1/projects/proj/locations/us-central1/customJobs"
    assert create.raw_query == "%24alt=json%3Benum-encoding%3Dint"  # $alt=json;enum-encoding=int
    assert create.headers["authorization"].startswith("Bearer ")
    body = create.json
    assert body["displayName"] == f"neural-jupyter-{KEY}"
    assert body["labels"] == {"neural_jupyter_key": KEY, "created_by": "neural-jupyter"}
    (pool,) = body["jobSpec"]["workerPoolSpecs"]
    assert pool["machineSpec"] == {
        "machineType": "n1-standard-4",
        "acceleratorType": 5,  # NVIDIA_TESLA_T4, as an int: enum-encoding=int
        "acceleratorCount": 1,
    }
    assert pool["diskSpec"] == {"bootDiskSizeGb": 150}
    container = pool["containerSpec"]
    assert container["imageUri"] == vertex.GPU_IMAGE
    assert container["command"][:2] == ["python", "-c"]
    assert container["args"] == [
        f"gs://{BUCKET}/{PREFIX}/launcher.py",
        "--bundle",
        f"gs://{BUCKET}/{PREFIX}/bundle.tar.gz",
        "--logs",
        f"gs://{BUCKET}/{PREFIX}/logs",
        "--outputs",
        f"gs://{BUCKET}/{PREFIX}/output",
        "--install-missing",
        "--budget-margin",
    ]
    assert cloud.object_data(BUCKET, f"{PREFIX}/launcher.py").decode() == launcher_source()
    assert body["jobSpec"]["scheduling"] == {"timeout": "7200s", "strategy": 4}  # SPOT
    assert body["jobSpec"]["baseOutputDirectory"] == {"outputUriPrefix": f"gs://{BUCKET}/{PREFIX}/"}

    archive = cloud.object_data(BUCKET, f"{PREFIX}/bundle.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert {"train.py", "job.json", "data.npz", "requirements.txt"} <= set(tar.getnames())
    assert remote.remote_id == cloud.job()["name"]
    assert remote.details["project"] == "proj" and remote.details["logs"] == "gcs"
    assert remote.details["console_url"].startswith("https://console.cloud.google.com/vertex-ai/")

    # the dry run shows the same request; a CPU job gets the CPU image and no accelerator
    plan = backend.plan(job, resources)
    assert plan["CreateCustomJob"]["customJob"]["labels"] == body["labels"]
    cpu = backend.plan(job, ResourceSpec(instance_type="n1-standard-8"))["CreateCustomJob"]
    cpu_pool = cpu["customJob"]["jobSpec"]["workerPoolSpecs"][0]
    assert cpu_pool["machineSpec"] == {"machineType": "n1-standard-8"}
    assert cpu_pool["containerSpec"]["imageUri"] == vertex.CPU_IMAGE
    assert cpu["customJob"]["jobSpec"]["scheduling"] == {"timeout": "86400s"}  # 24 h default


def test_follow_to_success_streams_log_copy_and_fetches_outputs(cloud, bundle_dir, job):
    cloud.script = [
        "JOB_STATE_PENDING",
        "JOB_STATE_RUNNING",
        "JOB_STATE_RUNNING",
        "JOB_STATE_SUCCEEDED",
    ]
    backend = VertexBackend()
    remote = submitted(backend, bundle_dir, job)
    put_logs(cloud, STDOUT[:2], ["Using device: cpu"])
    cloud.put_object(BUCKET, f"{PREFIX}/output/model.pt", b"weights")
    cloud.put_object(BUCKET, f"{PREFIX}/output/history.json", b"[]")

    items = []
    for item in backend.events(remote):
        items.append(item)
        if isinstance(item, Event) and item.get("message") == "Vertex AI job running":
            put_logs(cloud, STDOUT, ["Using device: cpu"])  # the launcher's next copy

    statuses = [i.get("message") for i in items if isinstance(i, Event) and i.kind == "status"]
    assert "reports only the job's state" in statuses[0]
    assert f"gs://{BUCKET}/{PREFIX}/logs" in statuses[0]
    assert statuses[1:4] == [
        "Vertex AI job pending",
        "Vertex AI job running",
        "Vertex AI job succeeded",
    ]
    kinds = [i.kind for i in items if isinstance(i, Event) and i.kind != "status"]
    assert kinds == ["start", "epoch", "epoch", "artifact", "done"]  # each line once
    assert LogLine("Using device: cpu", "stderr") in items
    # the second read asked only for the new bytes
    ranges = [r.headers.get("range") for r in cloud.calls("GET", r"/download/.*stdout\.log$")]
    first = len("".join(f"{x}\n" for x in STDOUT[:2]))
    assert ranges[0] == f"bytes=0-{first - 1}" and ranges[1].startswith(f"bytes={first}-")

    assert (job.directory / "stdout.log").read_text() == "".join(f"{x}\n" for x in STDOUT)
    output = job.directory / "bundle" / "output"
    assert (output / "model.pt").read_bytes() == b"weights"
    assert backend.status(remote).state == "SUCCEEDED"


def test_failure_reports_the_platform_error_and_exit_code(cloud, bundle_dir, job):
    message = (
        "The replica workerpool0-0 exited with a non-zero status of 1. To find out more about "
        "why your job exited please check the logs: https://console.cloud.google.com/logs"
    )
    cloud.script = ["JOB_STATE_RUNNING", ("JOB_STATE_FAILED", {"code": 3, "message": message})]
    backend = VertexBackend()
    remote = submitted(backend, bundle_dir, job)
    put_logs(cloud, [STDOUT[0], ERROR_LINE], ["Traceback (most recent call last):", "RuntimeError"])
    items = list(backend.events(remote))
    errors = [i for i in items if isinstance(i, Event) and i.kind == "error"]
    assert errors and errors[0].get("message") == "CUDA out of memory"
    stderr = [i for i in items if isinstance(i, LogLine) and i.stream == "stderr"]
    assert stderr == [
        LogLine("Traceback (most recent call last):", "stderr"),
        LogLine("RuntimeError", "stderr"),
    ]
    assert items[-2] == Event("status", {"message": f"Vertex AI job failed: {message}"})
    status = backend.status(remote)
    assert (status.state, status.exit_code, status.message) == ("FAILED", 1, message)
    # a failed job's outputs come home too (a checkpoint, a user-code job's exception): none
    output = job.directory / "bundle" / "output"
    assert items[-1] == Event("status", {"message": f"outputs brought back to {output}: none"})
    assert not list(output.rglob("*"))


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("JOB_STATE_QUEUED", "PENDING"),
        ("JOB_STATE_PENDING", "PENDING"),
        ("JOB_STATE_PAUSED", "PENDING"),
        ("JOB_STATE_RUNNING", "RUNNING"),
        ("JOB_STATE_UPDATING", "RUNNING"),
        ("JOB_STATE_CANCELLING", "RUNNING"),
        ("JOB_STATE_SUCCEEDED", "SUCCEEDED"),
        ("JOB_STATE_FAILED", "FAILED"),
        ("JOB_STATE_PARTIALLY_SUCCEEDED", "FAILED"),
        ("JOB_STATE_EXPIRED", "FAILED"),
        ("JOB_STATE_CANCELLED", "CANCELLED"),
        ("JOB_STATE_UNSPECIFIED", "UNKNOWN"),
    ],
)
def test_state_table(state, expected):
    assert remote_status(state).state == expected
    assert vertex.STATES.state(state) == expected


def test_timeouts_are_marked():
    assert remote_status("JOB_STATE_EXPIRED").timed_out
    assert remote_status("JOB_STATE_FAILED", 4, "Job exceeded its timeout").timed_out
    late = remote_status("JOB_STATE_FAILED", 3, "exited with a non-zero status of 124.")
    assert late.timed_out and late.exit_code == 124


def test_cancel_calls_cancel_custom_job(cloud, bundle_dir, job):
    cloud.script = ["JOB_STATE_RUNNING"] * 5
    backend = VertexBackend()
    remote = submitted(backend, bundle_dir, job)
    assert backend.status(remote).state == "RUNNING"
    backend.cancel(remote)
    (cancel,) = cloud.calls("POST", r":cancel$")
    assert cancel.path == f"/v1/{remote.remote_id}:cancel"
    assert cancel.raw_query == "%24alt=json%3Benum-encoding%3Dint"
    assert cloud.job()["state"] == "JOB_STATE_CANCELLING"
    assert backend.status(remote).state == "CANCELLED"
    # nothing was copied to Cloud Storage: the stream says that only the state is known
    messages = [i.get("message") for i in backend.events(remote) if isinstance(i, Event)]
    logs = vertex.logs_url(remote.remote_id, "proj")
    assert messages[-2:] == [
        "Vertex AI job cancelled",
        f"no training output was found in gs://{BUCKET}/{PREFIX}/logs/, so only the job's "
        f"state is known; its output, if any, is in Cloud Logging: {logs}",
    ]


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, "Request had invalid authentication credentials. Expected OAuth 2 access token."),
        (
            403,
            "Permission 'aiplatform.customJobs.create' denied on resource "
            "'//aiplatform.googleapis.com/projects/proj/locations/us-central1' "
            "(or it may not exist).",
        ),
    ],
)
def test_auth_failure_is_not_retried(cloud, bundle_dir, job, status, message):
    cloud.fail("POST", r"/customJobs$", status, message, times=10)
    with pytest.raises(PlatformAuthError) as caught:
        VertexBackend().submit(bundle_dir, job, ResourceSpec())
    assert message in str(caught.value) and "[vertex]" in str(caught.value)
    # no retries of ours; on a 401 google-auth refreshes the token and tries twice more
    assert len(cloud.calls("POST", r"/customJobs$")) == (3 if status == 401 else 1)
    assert cloud.jobs == {}


@pytest.mark.parametrize("lost_response", [True, False])
def test_transient_503_is_retried_without_a_second_job(cloud, bundle_dir, job, lost_response):
    # lost_response: Vertex created the job but the answer never arrived
    cloud.fail(
        "POST", r"/customJobs$", 503, "The service is currently unavailable.", after=lost_response
    )
    remote = submitted(VertexBackend(), bundle_dir, job)
    assert len(cloud.jobs) == 1 and remote.remote_id == cloud.job()["name"]
    creates = cloud.calls("POST", r"/customJobs$")
    lookups = cloud.calls("GET", r"/customJobs$")
    assert len(creates) == (1 if lost_response else 2)
    assert len(lookups) == 2  # before uploading, and before trying again
    assert all(f'labels.neural_jupyter_key="{KEY}"' == r.query["filter"] for r in lookups)


def test_submitting_again_finds_the_existing_job(cloud, bundle_dir, job):
    backend = VertexBackend()
    first = submitted(backend, bundle_dir, job)
    second = submitted(backend, bundle_dir, job)
    assert first.remote_id == second.remote_id and len(cloud.jobs) == 1
    assert len(cloud.calls("POST", r"/upload/")) == 2  # the bundle and launcher.py, once


def test_permanent_400_is_not_retried(cloud, bundle_dir, job):
    cloud.fail("POST", r"/customJobs$", 400, 'Machine type "n1-huge-99" is not supported.')
    with pytest.raises(PlatformError) as caught:
        VertexBackend().submit(bundle_dir, job, ResourceSpec(instance_type="n1-huge-99"))
    assert not isinstance(caught.value, (PlatformAuthError, PlatformConnectionError))
    assert 'Machine type "n1-huge-99" is not supported.' in str(caught.value)
    assert len(cloud.calls("POST", r"/customJobs$")) == 1


def test_storage_outage_gives_up_after_three_tries(cloud, bundle_dir, job):
    cloud.fail("POST", r"/upload/", 503, "Backend Error", times=5)
    with pytest.raises(PlatformConnectionError, match="Backend Error"):
        VertexBackend().submit(bundle_dir, job, ResourceSpec())
    assert len(cloud.calls("POST", r"/upload/")) == 3 and cloud.jobs == {}


def test_cloud_logging_source(cloud, bundle_dir, job):
    cloud.script = ["JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]
    backend = VertexBackend()
    remote = submitted(backend, bundle_dir, job, ResourceSpec(extra={"logs": "cloud_logging"}))
    job_id = remote.remote_id.rsplit("/", 1)[1]
    for line in STDOUT:
        cloud.add_entry(job_id, line)
    cloud.add_entry(job_id, "Traceback: nothing serious", "ERROR")
    items = list(backend.events(remote))
    assert "Cloud Logging" in items[0].get("message")
    kinds = [i.kind for i in items if isinstance(i, Event) and i.kind != "status"]
    assert kinds == ["start", "epoch", "epoch", "artifact", "done"]
    assert LogLine("Traceback: nothing serious", "stderr") in items
    (query,) = cloud.calls("POST", r"/v2/entries:list$")[:1]
    assert query.json["resourceNames"] == ["projects/proj"]
    assert f'resource.labels.job_id="{job_id}"' in query.json["filter"]
    assert (job.directory / "stdout.log").read_text().count('"event"') == len(STDOUT)


def test_resources_and_prices():
    assert machine_for(ResourceSpec()) == vertex.Machine("n1-standard-4")
    t4 = machine_for(ResourceSpec(instance_type="n1-standard-4+NVIDIA_TESLA_T4"))
    assert (t4.accelerator_type, t4.accelerator_count) == ("NVIDIA_TESLA_T4", 1)
    a2 = machine_for(ResourceSpec(instance_type="a2-highgpu-2g"))
    assert (a2.accelerator_type, a2.accelerator_count, a2.price_key) == (
        "NVIDIA_TESLA_A100",
        2,
        "a2-highgpu-2g",
    )
    assert machine_for(ResourceSpec(gpus=2)).accelerator_type == "NVIDIA_TESLA_T4"
    assert machine_for(ResourceSpec(gpu_type="l4")).accelerator_type == "NVIDIA_L4"
    # Blackwell machine families come with their accelerators
    for machine, gpu, count in (
        ("a4-highgpu-8g", "NVIDIA_B200", 8),
        ("a4x-highgpu-4g", "NVIDIA_GB200", 4),
        ("g4-standard-48", "NVIDIA_RTX_PRO_6000", 1),
        ("g4-standard-192", "NVIDIA_RTX_PRO_6000", 4),
    ):
        hw = machine_for(ResourceSpec(instance_type=machine))
        assert (hw.accelerator_type, hw.accelerator_count, hw.built_in) == (gpu, count, True)
    backend = VertexBackend()
    cost = backend.estimate_cost(ResourceSpec(gpus=1, max_runtime_hours=3))
    assert cost.instance_type == "n1-standard-4+NVIDIA_TESLA_T4" and cost.hours == 3
    assert backend.estimate_cost(ResourceSpec()) is None  # the small CPU default
    with pytest.raises(ConfigurationError, match="hourly_usd"):
        backend.estimate_cost(ResourceSpec(instance_type="a3-highgpu-8g"))
    given = backend.estimate_cost(
        ResourceSpec(instance_type="a3-highgpu-8g", max_runtime_hours=2, extra={"hourly_usd": 90})
    )
    assert given.total_usd == 180


def test_images_that_cannot_run_on_the_machine_are_refused(monkeypatch, job):
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "proj")
    monkeypatch.setenv("NEURAL_JUPYTER_VERTEX_BUCKET", "gs://b")
    backend = VertexBackend()
    with pytest.raises(ConfigurationError, match="Arm"):  # a4x: Grace CPUs, x86 images
        backend.plan(job, ResourceSpec(instance_type="a4x-highgpu-4g"))
    with pytest.raises(ConfigurationError, match="deprecated"):
        backend.plan(job, ResourceSpec(instance_type="n1-standard-4+NVIDIA_TESLA_K80"))
    image = vertex.IMAGES.default()
    blackwell = ResourceSpec(instance_type="a4-highgpu-8g")
    if image.cuda_key < (12, 8):  # the prebuilt image's CUDA predates Blackwell
        with pytest.raises(ConfigurationError, match=r"CUDA 12\.8"):
            backend.plan(job, blackwell)
    else:
        backend.plan(job, blackwell)
    own = ResourceSpec(instance_type="a4-highgpu-8g", extra={"image": "us-docker.pkg.dev/p/i:1"})
    pool = backend.plan(job, own)["CreateCustomJob"]["customJob"]["jobSpec"]["workerPoolSpecs"][0]
    assert pool["containerSpec"]["imageUri"] == "us-docker.pkg.dev/p/i:1"
    assert pool["machineSpec"]["acceleratorType"] == "NVIDIA_B200"


def test_missing_configuration_and_sdk(monkeypatch, tmp_path, job):
    monkeypatch.delenv("NEURAL_JUPYTER_VERTEX_BUCKET", raising=False)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "proj")
    with pytest.raises(ConfigurationError, match="staging_bucket"):
        VertexBackend().plan(job, ResourceSpec())
    monkeypatch.setitem(sys.modules, "google.cloud.aiplatform_v1", None)
    monkeypatch.delattr(google.cloud, "aiplatform_v1")
    with pytest.raises(MissingDependencyError) as caught:
        VertexBackend().check_credentials()
    assert "neural-jupyter[vertex]" in str(caught.value)


def test_full_submit_trains_for_real_and_keeps_secrets(cloud, neural_home, capsys, key_file):
    """api.submit → the fake runs the container command (the launcher, then train.py) with
    Cloud Storage pointed at the fake; the job store ends SUCCEEDED with the metrics."""
    cloud.execute = True
    run = api.submit(
        SMALL, "digits", platform="vertex", extra={"log_sync_seconds": 0.5}, monitor="text"
    )
    assert run.status == "SUCCEEDED"
    assert set(run.metrics) >= {"loss", "accuracy"} and len(run.history) == 2
    assert (run.directory / "output" / "model.pt").exists()
    record = JobStore().get(run.job_id)
    assert record.status.value == "SUCCEEDED" and record.remote_id == cloud.job()["name"]
    assert record.metrics["accuracy"] == run.metrics["accuracy"]
    out = capsys.readouterr()
    assert "epoch 2/2" in out.out
    # the container got no user credentials, and no secret was written anywhere
    (create,) = cloud.calls("POST", r"/customJobs$")
    texts = [out.out, out.err, json.dumps(create.json)]
    with sqlite3.connect(JobStore().path) as conn:
        texts.extend(json.dumps(row) for row in conn.execute("SELECT * FROM jobs"))
    for path in (neural_home / "jobs").rglob("*"):
        if path.is_file() and path.suffix not in (".pt", ".npz"):
            texts.append(path.read_text(errors="replace"))
    blob = "\n".join(texts)
    tokens = [
        r.headers["authorization"][7:] for r in cloud.requests if "authorization" in r.headers
    ]
    assert ACCESS_TOKEN in tokens  # the storage client did refresh against the fake
    for secret in {*tokens, key_file[1].splitlines()[1]}:
        assert secret not in blob


# --- user code --------------------------------------------------------------------------------
def test_a_decorated_function_runs_as_a_custom_job(cloud, neural_home):
    """A user-code bundle through the same container command: its value comes back through
    gs://.../output/, and a failed job's result.pkl too (the exception itself)."""
    import numpy as np
    from usercode_jobs import check_raised, outer, scaled

    cloud.execute = True
    options = {"platform": "vertex", "extra": {"log_sync_seconds": 0.5}, "monitor": "none"}
    notebook = ".".join(map(str, sys.version_info[:2]))
    if notebook not in vertex.IMAGES.pythons:  # Google's images: another Python, said at once
        with pytest.raises(ConfigurationError, match=f"this notebook {notebook}"):
            neural_jupyter.remote(**options)(scaled)([1.0])
        assert not cloud.requests
    # the double runs the container with this machine's Python, whatever the image
    options["extra"]["image"] = f"us-docker.pkg.dev/proj/images/torch-py{notebook}:1"
    out = neural_jupyter.remote(**options)(scaled)([1.0, 2.0], factor=3.0)
    np.testing.assert_array_equal(out["values"], [3.0, 6.0])
    record = JobStore().list(platform="vertex")[0]
    assert record.status.value == "SUCCEEDED" and record.config["kind"] == "function"
    with pytest.raises(neural_jupyter.RemoteError) as caught:
        neural_jupyter.remote(**options)(outer)(41)
    check_raised(caught.value)
    assert isinstance(caught.value.exception, KeyError)


# --- data-parallel training (nodes × procs_per_node) ----------------------------------------
def test_nodes_become_a_primary_pool_and_a_worker_pool(cloud, bundle_dir, job):
    """--nodes 3 --procs-per-node 2: pool 0 one primary replica, pool 1 two more, the same
    machine, image and command; the request is one the SDK's CustomJob type accepts."""
    from google.cloud import aiplatform_v1

    backend = VertexBackend()
    resources = ResourceSpec(
        gpus=2, gpu_type="T4", nodes=3, procs_per_node=2, max_runtime_hours=1
    ).validated()
    remote = submitted(backend, bundle_dir, job, resources)
    (create,) = cloud.calls("POST", r"/customJobs$")
    primary, workers = create.json["jobSpec"]["workerPoolSpecs"]
    assert (primary["replicaCount"], workers["replicaCount"]) == ("1", "2")
    assert {k: v for k, v in workers.items() if k != "replicaCount"} == {
        k: v for k, v in primary.items() if k != "replicaCount"
    }
    assert primary["machineSpec"] == {
        "machineType": "n1-standard-4",
        "acceleratorType": 5,
        "acceleratorCount": 2,
    }
    args = primary["containerSpec"]["args"]
    assert args[-4:] == ["--nnodes", "3", "--nproc-per-node", "2"]
    assert "--node-rank" not in args and "--master-addr" not in args  # from CLUSTER_SPEC
    # the SDK's own type: every field known, the counts integers
    request = aiplatform_v1.CustomJob.from_json(
        json.dumps(backend.custom_job(job, resources, backend.place(job, resources)))
    )
    pools = request.job_spec.worker_pool_specs
    assert [p.replica_count for p in pools] == [1, 2]
    assert pools[1].machine_spec.accelerator_count == 2
    assert list(pools[1].container_spec.args) == args
    # cancel is one call for the whole job (every replica of every pool)
    backend.cancel(remote)
    (cancel,) = cloud.calls("POST", r":cancel$")
    assert cancel.path == f"/v1/{remote.remote_id}:cancel"
    # the budget: three machines for the hour
    given = {"hourly_usd": 1.5}
    three = backend.estimate_cost(ResourceSpec(nodes=3, max_runtime_hours=1, extra=given))
    assert three.total_usd == pytest.approx(4.5) and "3 replicas" in three.note
    one = backend.estimate_cost(ResourceSpec(gpus=1, max_runtime_hours=1))
    three = backend.estimate_cost(ResourceSpec(gpus=1, nodes=3, max_runtime_hours=1))
    assert three.hourly_usd == pytest.approx(3 * one.hourly_usd) and "3 replicas" in three.note


def test_each_replica_finds_its_node_rank_in_cluster_spec():
    """What the launcher in each replica runs, from the CLUSTER_SPEC Vertex AI sets there."""
    from neural_jupyter.runtime import launcher

    args = launcher.parse_args(["--nnodes", "3", "--nproc-per-node", "4"])
    cluster = {
        "workerpool0": ["cmle-training-workerpool0-ab-0:2222"],
        "workerpool1": [
            "cmle-training-workerpool1-ab-0:2222",
            "cmle-training-workerpool1-ab-1:2222",
        ],
    }

    def command(kind: str, index: int) -> list[str]:
        spec = {"cluster": cluster, "environment": "cloud", "task": {"type": kind, "index": index}}
        return launcher.torchrun_arguments(args, {"CLUSTER_SPEC": json.dumps(spec)})

    for kind, index, rank in (("workerpool0", 0, 0), ("workerpool1", 0, 1), ("workerpool1", 1, 2)):
        found = command(kind, index)
        assert found[found.index("--node-rank") + 1] == str(rank)
        assert found[found.index("--master-addr") + 1] == "cmle-training-workerpool0-ab-0"
        assert found[found.index("--master-port") + 1] == "2222"
        assert found[found.index("--nnodes") + 1] == "3"
        assert found[found.index("--nproc-per-node") + 1] == "4"
    # one machine: a rendezvous of its own, whatever the cluster says
    single = launcher.parse_args(["--nnodes", "1", "--nproc-per-node", "2"])
    spec = {"cluster": {"workerpool0": ["h:2222"]}, "task": {"type": "workerpool0", "index": 0}}
    found = launcher.torchrun_arguments(single, {"CLUSTER_SPEC": json.dumps(spec)})
    assert "--standalone" in found and "--master-addr" not in found


def _training(cloud) -> list[int]:
    """The pids of every replica's train.py processes (below each replica's process)."""
    from tests.test_distributed import descendants

    found = []
    for process in list(cloud.processes.values()):
        for child in descendants(process.pid):
            with contextlib.suppress(OSError):
                if "train.py" in Path(f"/proc/{child}/cmdline").read_text():
                    found.append(child)
    return found


@pytest.mark.slow
def test_two_replicas_train_for_real_with_one_stream(cloud, neural_home):
    """--nodes 2: the fake starts both replicas with their CLUSTER_SPEC; their torchruns meet
    at the primary's address and train as one gloo group. One event stream (rank 0's),
    outputs from node 0 only, node 1's log kept beside node 0's."""
    cloud.execute = True
    run = api.submit(
        SMALL,
        "digits",
        platform="vertex",
        nodes=2,
        extra={"log_sync_seconds": 0.5},
        monitor="none",
    )
    assert run.status == "SUCCEEDED", JobStore().get(run.job_id).error
    assert len(run.history) == 2 and (run.directory / "output" / "model.pt").exists()
    job_dir = run.directory.parent
    stream = [
        json.loads(line)
        for line in (job_dir / "stdout.log").read_text().splitlines()
        if line.startswith('{"event"')
    ]
    starts = [e for e in stream if e["event"] == "start"]
    assert len(starts) == 1 and starts[0]["world_size"] == 2
    (create,) = cloud.calls("POST", r"/customJobs$")
    prefix = create.json["jobSpec"]["baseOutputDirectory"]["outputUriPrefix"][
        len(f"gs://{BUCKET}/") :
    ]
    node1 = cloud.object_data(BUCKET, f"{prefix}logs/node-1/stderr.log")
    assert node1 is not None and b"data parallel" not in node1  # rank 0 says it, on node 0
    assert b"data parallel: 2 processes (gloo), 1 on this node" in cloud.object_data(
        BUCKET, f"{prefix}logs/stderr.log"
    )
    assert cloud.job()["jobSpec"]["workerPoolSpecs"][1]["replicaCount"] == "1"


@pytest.mark.slow
def test_cancel_stops_every_replica(cloud, neural_home):
    cloud.execute = True
    job = api.submit(
        SMALL, "digits", platform="vertex", nodes=2, epochs=500, wait=False, monitor="none"
    )
    from tests.test_distributed import alive, wait_for

    # each replica: launcher → torchrun → train.py (one rank each)
    assert wait_for(lambda: len(_training(cloud)) >= 2, 120), "the replicas never started"
    ranks = _training(cloud)
    processes = list(cloud.processes.values())
    assert len(processes) == 2
    job.cancel()
    cloud.wait_for_process(60)
    assert wait_for(lambda: not any(alive(pid) for pid in ranks), 30), "a rank outlived cancel"
    deadline = time.monotonic() + 30
    while cloud.job()["state"] != "JOB_STATE_CANCELLED" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cloud.job()["state"] == "JOB_STATE_CANCELLED"
    assert job.refresh().status.value == "CANCELLED"
