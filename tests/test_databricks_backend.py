"""The Databricks backend through the real databricks-sdk ``WorkspaceClient`` (host and token
from the environment, as users configure it) against a local fake workspace
(``tests/fakes/databricks_api.py``) that records every request.

Real: the SDK (config resolution, auth header, its own retries, DBFS and Files API helpers),
the launcher the run executes, train.py. Faked: the workspace's REST API, and the cluster's
driver (the fake runs the ``spark_python_task`` on this machine, with ``/dbfs`` and
``/Volumes`` mapped into a directory, as the driver's FUSE mounts would).
"""

from __future__ import annotations

import io
import json
import sqlite3
import sys
import tarfile
from types import SimpleNamespace

import pytest

pytest.importorskip("databricks.sdk")

import neural_jupyter
from neural_jupyter import api
from neural_jupyter.backends import databricks
from neural_jupyter.backends import retry as retry_module
from neural_jupyter.backends.base import RemoteJob, ResourceSpec
from neural_jupyter.backends.databricks import DatabricksBackend, remote_status
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
from tests.fakes.databricks_api import TOKEN, USER, FakeDatabricks

SMALL = """
network Small {
  input: (8, 8, 1)
  layers: Flatten() Dense(16, "relu") Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  metrics: ["accuracy"]
  train { epochs: 2 batch_size: 128 }
}
"""
KEY = "databricks-0123456789abcdef0123"
BASE = f"/neural-jupyter/{KEY}"
# What a bundle's train.py prints (recorded from a run, times shortened).
STDOUT = [
    '{"event": "start", "time": 1.0, "model": "Small", "epochs": 2, "steps_per_epoch": 15}',
    "Using device: cuda",
    '{"event": "epoch", "time": 2.0, "epoch": 1, "epochs": 2, "metrics": {"loss": 2.31, '
    '"accuracy": 0.10}}',
    '{"event": "epoch", "time": 3.0, "epoch": 2, "epochs": 2, "metrics": {"loss": 2.27, '
    '"accuracy": 0.12}}',
    '{"event": "artifact", "time": 3.1, "name": "weights", "path": "output/model.pt", "bytes": 5}',
    '{"event": "done", "time": 3.2, "metrics": {"loss": 2.27, "accuracy": 0.12}, '
    '"best_epoch": 2, "epochs_run": 2, "wall_time": 2.2}',
]
TRACE = 'Traceback (most recent call last):\n  File "train.py", line 9\nRuntimeError: boom'


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """The fake, and a user environment pointing at it (DATABRICKS_HOST/TOKEN)."""
    fake = FakeDatabricks(tmp_path / "workspace").start()
    monkeypatch.setenv("DATABRICKS_HOST", fake.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    monkeypatch.delenv("DATABRICKS_CONFIG_PROFILE", raising=False)
    monkeypatch.delenv("NEURAL_JUPYTER_DATABRICKS_STAGING", raising=False)
    monkeypatch.setattr(DatabricksBackend, "poll_seconds", 0.0)
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


def test_submit_uploads_and_starts_one_run_on_a_single_node_gpu_cluster(workspace, bundle_dir, job):
    backend = DatabricksBackend()
    resources = ResourceSpec(max_runtime_hours=2, spot=True).validated()
    remote = submitted(backend, bundle_dir, job, resources)

    (submit,) = workspace.calls("POST", r"/jobs/runs/submit$")
    assert submit.headers["authorization"] == f"Bearer {TOKEN}"
    body = submit.json
    assert body["run_name"] == f"neural-jupyter-{KEY}"
    assert body["idempotency_token"] == KEY and body["timeout_seconds"] == 7200
    (task,) = body["tasks"]
    assert task["task_key"] == "train" and task["timeout_seconds"] == 7200
    assert task["spark_python_task"] == {
        "python_file": f"dbfs:{BASE}/launch.py",
        "parameters": [
            "--bundle",
            f"/dbfs{BASE}/bundle.tar.gz",
            "--outputs",
            f"/dbfs{BASE}/output",
            "--install-missing",
            "--budget-margin",
        ],
    }
    cluster = task["new_cluster"]
    assert cluster["node_type_id"] == cluster["driver_node_type_id"] == "g4dn.xlarge"
    assert cluster["spark_version"] == databricks.GPU_RUNTIME and cluster["num_workers"] == 0
    assert cluster["spark_conf"]["spark.databricks.cluster.profile"] == "singleNode"
    assert cluster["custom_tags"]["ResourceClass"] == "SingleNode"
    assert (cluster["data_security_mode"], cluster["single_user_name"]) == ("SINGLE_USER", USER)
    assert cluster["aws_attributes"] == {"availability": "SPOT_WITH_FALLBACK", "first_on_demand": 0}

    # DBFS: create → add-block → close, for the bundle and the launcher
    created = [r.json["path"] for r in workspace.calls("POST", r"/dbfs/create$")]
    assert created == [f"{BASE}/bundle.tar.gz", f"{BASE}/launch.py"]
    archive = workspace.file(f"{BASE}/bundle.tar.gz").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert {"train.py", "job.json", "data.npz", "requirements.txt"} <= set(tar.getnames())
    assert workspace.file(f"{BASE}/launch.py").read_text() == launcher_source()

    assert remote.remote_id == str(workspace.run()["run_id"])
    assert remote.details["host"] == workspace.url and TOKEN not in json.dumps(remote.details)
    plan = backend.plan(job, resources)["jobs/runs/submit"]
    assert plan["tasks"][0]["new_cluster"]["node_type_id"] == "g4dn.xlarge"
    assert plan["idempotency_token"] == body["idempotency_token"]


def test_existing_cluster_and_cpu_runtime(workspace, bundle_dir, job):
    backend = DatabricksBackend()
    resources = ResourceSpec(extra={"cluster_id": "0123-456789-abcdef"})
    remote = submitted(backend, bundle_dir, job, resources)
    assert backend.fetch_artifacts(remote, job.directory / "out") == {}  # none written yet
    (task,) = workspace.calls("POST", r"/jobs/runs/submit$")[0].json["tasks"]
    assert task["existing_cluster_id"] == "0123-456789-abcdef" and "new_cluster" not in task
    assert workspace.calls("GET", r"/scim/v2/Me$") == []
    assert task["timeout_seconds"] == 24 * 3600  # the default limit
    assert backend.estimate_cost(resources) is None  # billed whether or not the job runs
    cpu = backend.cluster_spec(ResourceSpec(instance_type="i3.xlarge"))
    assert cpu["spark_version"] == databricks.CPU_RUNTIME
    custom = backend.cluster_spec(ResourceSpec(extra={"spark_version": "14.3.x-gpu-ml-scala2.12"}))
    assert custom["spark_version"] == "14.3.x-gpu-ml-scala2.12"
    # EBS general-purpose volumes hold 100 GB at least; Azure keeps the driver on demand
    assert (
        backend.cluster_spec(ResourceSpec(disk_gb=150))["aws_attributes"]["ebs_volume_size"] == 150
    )
    with pytest.raises(ConfigurationError, match="100 GB"):
        backend.cluster_spec(ResourceSpec(disk_gb=50))
    azure_spot = backend.cluster_spec(ResourceSpec(spot=True), cloud="azure")["azure_attributes"]
    assert azure_spot["first_on_demand"] >= 1


def test_follow_to_success_reads_task_output_and_fetches_outputs(workspace, bundle_dir, job):
    workspace.script = [
        ("PENDING", None, "Waiting for cluster"),  # read by submit (for the run's page)
        ("PENDING", None, "Waiting for cluster"),
        ("RUNNING", None, "In run"),
        ("RUNNING", None, "In run"),
        ("TERMINATED", "SUCCESS", ""),
    ]
    workspace.logs = "".join(f"{line}\n" for line in STDOUT[:3])
    backend = DatabricksBackend()
    remote = submitted(backend, bundle_dir, job)
    run = workspace.run()
    (workspace.root / "dbfs" / BASE.lstrip("/") / "output").mkdir(parents=True)
    workspace.file(f"{BASE}/output/model.pt").write_bytes(b"weights")
    workspace.file(f"{BASE}/output/history.json").write_text("[]")

    items = []
    for item in backend.events(remote):
        items.append(item)
        if isinstance(item, Event) and item.get("message") == "Databricks run running: In run":
            run["planned_logs"] = run["logs"] = "".join(f"{line}\n" for line in STDOUT)

    statuses = [i.get("message") for i in items if isinstance(i, Event) and i.kind == "status"]
    assert "jobs/runs/get-output" in statuses[0]
    assert statuses[1:4] == [
        "Databricks run pending: Waiting for cluster",
        "Databricks run running: In run",
        "Databricks run terminated success",
    ]
    kinds = [i.kind for i in items if isinstance(i, Event) and i.kind != "status"]
    assert kinds == ["start", "epoch", "epoch", "artifact", "done"]  # each line once
    assert items.count(LogLine("Using device: cuda", "stdout")) == 1
    outputs = workspace.calls("GET", r"/runs/get-output$")
    assert outputs and {r.query["run_id"] for r in outputs} == {str(run["task_run_id"])}
    assert (job.directory / "stdout.log").read_text() == "".join(f"{x}\n" for x in STDOUT)
    assert (job.directory / "bundle" / "output" / "model.pt").read_bytes() == b"weights"
    assert backend.status(remote).state == "SUCCEEDED"


def test_failure_reports_the_run_output_error(workspace, bundle_dir, job):
    workspace.script = [
        ("RUNNING", None, "In run"),
        ("TERMINATED", "FAILED", "Workload failed, see run output for details"),
    ]
    workspace.logs = STDOUT[0] + "\n"
    workspace.error_trace = TRACE
    backend = DatabricksBackend()
    remote = submitted(backend, bundle_dir, job)
    items = list(backend.events(remote))
    stderr = [i.text for i in items if isinstance(i, LogLine) and i.stream == "stderr"]
    assert stderr == TRACE.splitlines()
    status = backend.status(remote)
    assert (status.state, status.message) == ("FAILED", "RuntimeError: boom")
    assert (job.directory / "stderr.log").read_text() == TRACE + "\n"
    assert not (job.directory / "bundle" / "output").exists()


@pytest.mark.parametrize(
    ("life_cycle", "result", "expected"),
    [
        ("QUEUED", None, "PENDING"),
        ("PENDING", None, "PENDING"),
        ("BLOCKED", None, "PENDING"),
        ("WAITING_FOR_RETRY", None, "PENDING"),
        ("RUNNING", None, "RUNNING"),
        ("TERMINATING", None, "RUNNING"),
        ("TERMINATING", "SUCCESS", "SUCCEEDED"),
        ("TERMINATED", "SUCCESS", "SUCCEEDED"),
        ("TERMINATED", "SUCCESS_WITH_FAILURES", "SUCCEEDED"),
        ("TERMINATED", "FAILED", "FAILED"),
        ("TERMINATED", "UPSTREAM_FAILED", "FAILED"),
        ("TERMINATED", "MAXIMUM_CONCURRENT_RUNS_REACHED", "FAILED"),
        ("TERMINATED", "TIMEDOUT", "FAILED"),
        ("TERMINATED", "CANCELED", "CANCELLED"),
        ("TERMINATED", "UPSTREAM_CANCELED", "CANCELLED"),
        ("SKIPPED", None, "FAILED"),
        ("INTERNAL_ERROR", None, "FAILED"),
    ],
)
def test_state_table(life_cycle, result, expected):
    status = remote_status(life_cycle, result, "")
    assert status.state == expected
    assert status.timed_out == (result == "TIMEDOUT")


def test_cancel_calls_runs_cancel(workspace, bundle_dir, job):
    workspace.script = [("RUNNING", None, "In run")] * 3
    backend = DatabricksBackend()
    remote = submitted(backend, bundle_dir, job)
    assert backend.status(remote).state == "RUNNING"
    backend.cancel(remote)
    (cancel,) = workspace.calls("POST", r"/jobs/runs/cancel$")
    assert cancel.json == {"run_id": int(remote.remote_id)}
    assert backend.status(remote).state == "CANCELLED"


def test_wrong_token_is_an_auth_error(workspace, bundle_dir, job, monkeypatch):
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-wrong-token-0000000000000000")
    with pytest.raises(PlatformAuthError) as caught:
        DatabricksBackend().submit(bundle_dir, job, ResourceSpec())
    assert "Invalid access token." in str(caught.value) and "[databricks]" in str(caught.value)
    assert "dapi-wrong-token" not in str(caught.value)
    assert workspace.runs == {}


def test_permission_denied_is_not_retried(workspace, bundle_dir, job):
    message = "User someone@example.com does not have permission to create clusters."
    workspace.fail("POST", r"/jobs/runs/submit$", 403, message)
    with pytest.raises(PlatformAuthError, match="does not have permission to create clusters"):
        DatabricksBackend().submit(bundle_dir, job, ResourceSpec())
    assert len(workspace.calls("POST", r"/jobs/runs/submit$")) == 1


@pytest.mark.parametrize("status", [503, 502])
def test_transient_failure_is_retried_without_a_second_run(workspace, bundle_dir, job, status):
    """The run starts but the answer is lost: 503 is retried by the SDK itself, 502 by our
    retry wrapper; both send the same idempotency token, so Databricks returns that run."""
    workspace.fail(
        "POST", r"/jobs/runs/submit$", status, "Service is temporarily unavailable.", after=True
    )
    remote = submitted(DatabricksBackend(), bundle_dir, job)
    submits = workspace.calls("POST", r"/jobs/runs/submit$")
    assert len(submits) == 2 and {r.json["idempotency_token"] for r in submits} == {KEY}
    assert len(workspace.runs) == 1 and remote.remote_id == str(workspace.run()["run_id"])


def test_permanent_400_is_not_retried(workspace, bundle_dir, job):
    message = "Node type g9.huge is not supported. Supported node types: g4dn.xlarge, ..."
    workspace.fail("POST", r"/jobs/runs/submit$", 400, message)
    with pytest.raises(PlatformError) as caught:
        DatabricksBackend().submit(bundle_dir, job, ResourceSpec(instance_type="g9.huge"))
    assert not isinstance(caught.value, (PlatformAuthError, PlatformConnectionError))
    assert "Node type g9.huge is not supported" in str(caught.value)
    assert len(workspace.calls("POST", r"/jobs/runs/submit$")) == 1 and workspace.runs == {}


def test_truncated_logs_continue_where_they_left_off(tmp_path):
    logs = databricks._RunLogs(tmp_path)

    def output(text, truncated=False):
        return SimpleNamespace(logs=text, logs_truncated=truncated, error=None, error_trace=None)

    lines = [f"line {n}" for n in range(10)]
    first = list(logs.update(output("\n".join(lines[:6]) + "\n")))
    # Databricks kept only the last 5 MB: the beginning is gone, the rest continues
    later = list(logs.update(output("\n".join(lines[3:]) + "\npartial", truncated=True)))
    rest = list(logs.finish())
    seen = [item.text for item in first + later + rest]
    assert seen == [*lines, "partial"]


def test_prices_configuration_and_missing_sdk(monkeypatch, tmp_path, job):
    backend = DatabricksBackend()
    cost = backend.estimate_cost(ResourceSpec(max_runtime_hours=2))
    assert cost.instance_type == "g4dn.xlarge" and cost.hours == 2
    with pytest.raises(ConfigurationError, match="hourly_usd"):
        backend.estimate_cost(ResourceSpec(instance_type="Standard_NC6s_v3"))
    azure = ResourceSpec(extra={"host": "https://adb-1.2.azuredatabricks.net"})
    assert backend.cluster_spec(azure, cloud="azure")["node_type_id"] == "Standard_NC4as_T4_v3"
    assert backend.estimate_cost(azure) is None  # Azure's default node is not in the table
    with pytest.raises(ConfigurationError, match="staging_path"):
        backend.plan(job, ResourceSpec(extra={"staging_path": "s3://bucket/x"}))
    monkeypatch.setenv("HOME", str(tmp_path))
    for variable in ("DATABRICKS_HOST", "DATABRICKS_TOKEN", "DATABRICKS_CONFIG_FILE"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(PlatformAuthError, match="DATABRICKS_HOST"):
        backend.check_credentials()
    monkeypatch.setitem(sys.modules, "databricks.sdk", None)
    with pytest.raises(MissingDependencyError) as caught:
        DatabricksBackend().check_credentials()
    assert "neural-jupyter[databricks]" in str(caught.value)


def test_full_submit_on_a_volume_trains_for_real_and_keeps_secrets(workspace, neural_home, capsys):
    """api.submit → the fake runs the launcher and train.py as the driver would; the job
    store ends SUCCEEDED with the metrics, the outputs come back through the Files API."""
    workspace.execute = True
    volume = workspace.create_volume("main", "default", "scratch")
    run = api.submit(
        SMALL,
        "digits",
        platform="databricks",
        max_hours=0.25,
        extra={"staging_path": f"{volume}/nj"},
        monitor="text",
    )
    assert run.status == "SUCCEEDED"
    assert set(run.metrics) >= {"loss", "accuracy"} and len(run.history) == 2
    assert (run.directory / "output" / "model.pt").exists()
    record = JobStore().get(run.job_id)
    assert record.status.value == "SUCCEEDED" and record.remote_id == str(workspace.run()["run_id"])
    assert record.metrics["accuracy"] == run.metrics["accuracy"]
    task = workspace.calls("POST", r"/jobs/runs/submit$")[0].json["tasks"][0]
    assert task["spark_python_task"]["python_file"].startswith(f"{volume}/nj/databricks-")
    assert task["timeout_seconds"] == 900
    assert workspace.calls("PUT", r"^/api/2.0/fs/files/Volumes/main/default/scratch/nj/")
    out = capsys.readouterr()
    assert "epoch 2/2" in out.out
    texts = [out.out, out.err, workspace.run()["logs"]]
    with sqlite3.connect(JobStore().path) as conn:
        texts.extend(json.dumps(row) for row in conn.execute("SELECT * FROM jobs"))
    for path in (neural_home / "jobs").rglob("*"):
        if path.is_file() and path.suffix not in (".pt", ".npz"):
            texts.append(path.read_text(errors="replace"))
    assert TOKEN not in "\n".join(texts)


# --- user code --------------------------------------------------------------------------------
def test_a_cell_runs_on_the_driver_and_its_outputs_come_back(workspace, neural_home):
    import numpy as np
    import pandas as pd

    workspace.execute = True
    volume = workspace.create_volume("main", "default", "scratch")
    x, df = np.arange(6.0).reshape(2, 3), pd.DataFrame({"a": [1, 2]})
    out = neural_jupyter.run_cell(
        "y = x.T @ x\ndf2 = df.assign(b=df.a * 10)",
        inputs={"x": x, "df": df},
        outputs=["y", "df2"],
        platform="databricks",
        max_hours=0.25,
        extra={"staging_path": f"{volume}/nj"},
        monitor="none",
    )
    np.testing.assert_array_equal(out["y"], x.T @ x)
    assert list(out["df2"].b) == [10, 20]
    record = JobStore().list(platform="databricks")[0]
    assert record.status.value == "SUCCEEDED" and record.config["kind"] == "cell"
    # the runtime is the newest LTS ML runtime with the notebook's Python, where there is one
    cluster = workspace.calls("POST", r"/jobs/runs/submit$")[0].json["tasks"][0]["new_cluster"]
    notebook = ".".join(map(str, sys.version_info[:2]))
    row = databricks.table("databricks").for_python(notebook) or databricks.RUNTIME
    assert cluster["spark_version"] in (row["gpu"], row["cpu"])
