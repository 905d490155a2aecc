"""The Azure ML backend through the real ``azure-ai-ml`` ``MLClient``, against a local fake
(``fakes.azureml_api.FakeAzureML``).

The client is the SDK's own, built as TESTING.md describes (``cloud="LocalFake"`` with
``cloud_metadata`` pointing at the fake, a stand-in credential, telemetry off). The fake
serves HTTPS, since the SDK sends bearer tokens over TLS only, with a throw-away CA passed as
``connection_verify``. Everything the SDK does goes over the wire, including the parts that
touch storage: the code upload (a SAS URL from ``startPendingUpload``), the std_log reads
(run-history SAS URLs, HTTP range requests) and ``jobs.download`` (the workspace's storage
account, reached through the fake acting as HTTPS proxy). No step is stubbed.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest
from fakes.azureml_api import (
    ACCOUNT,
    ARTIFACT_CONTAINER,
    FakeAzureML,
    Script,
    StandInCredential,
    fake_jwt,
)

import neural_jupyter
from neural_jupyter import api
from neural_jupyter.backends import get_backend
from neural_jupyter.backends import retry as retry_module
from neural_jupyter.backends.azureml import (
    COMMAND,
    DEFAULT_ENVIRONMENT,
    STATE_TABLE,
    AzureMLBackend,
    job_name_for,
)
from neural_jupyter.backends.base import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    UNKNOWN,
    RemoteJob,
    ResourceSpec,
)
from neural_jupyter.compiler import compile_model
from neural_jupyter.errors import (
    ConfigurationError,
    MissingDependencyError,
    PlatformAuthError,
    PlatformError,
    QuotaError,
)
from neural_jupyter.jobs.job import Job
from neural_jupyter.jobs.store import JobStatus, JobStore
from neural_jupyter.runtime import data as data_module
from neural_jupyter.runtime.bundle import RunSettings, build_bundle
from neural_jupyter.runtime.events import Event, LogLine

# azure-ai-ml's schemas raise marshmallow deprecation warnings by the hundred: not ours
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

KEY = "azureml-0123456789abcdef0123"

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

LINES = [
    '{"event": "start", "epochs": 2, "steps_per_epoch": 3}',
    "a plain log line",
    '{"event": "epoch", "epoch": 1, "epochs": 2, "metrics": {"loss": 0.9}}',
    '{"event": "epoch", "epoch": 2, "epochs": 2, "metrics": {"loss": 0.5}}',
    '{"event": "done", "metrics": {"loss": 0.5}, "best_epoch": 2}',
]


@pytest.fixture
def azure(monkeypatch, neural_home):
    monkeypatch.setattr(retry_module, "BASE_WAIT", 0.0)
    with FakeAzureML() as fake:
        for name, value in fake.environment().items():
            monkeypatch.setenv(name, value)
        backend = get_backend("azureml")
        monkeypatch.setattr(backend, "credential", StandInCredential(fake.token))
        monkeypatch.setattr(backend, "client_options", fake.client_options())
        monkeypatch.setattr(backend, "_clients", {})
        monkeypatch.setattr(backend, "poll_seconds", 0.02)
        monkeypatch.setattr(backend, "heartbeat_seconds", 0.01)
        fake.backend = backend
        fake.extra = {
            "subscription_id": fake.sub,
            "resource_group": fake.rg,
            "workspace": fake.ws,
            "compute": "gpu-cluster",
        }
        yield fake


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    model = compile_model(SMALL)
    dataset = data_module.resolve(model.spec, "digits")
    directory = tmp_path_factory.mktemp("bundle")
    return build_bundle(
        model.spec, dataset, directory / "bundle", RunSettings.from_spec(model.spec), job_id="j1"
    )


def remote_job(tmp_path: Path, submission=None) -> RemoteJob:
    directory = tmp_path / "job"
    (directory / "bundle").mkdir(parents=True, exist_ok=True)
    details = {"idempotency_key": KEY, **(submission.details if submission else {})}
    return RemoteJob("j1", directory, submission.remote_id if submission else None, details)


def submit(azure, tmp_path, bundle, extra=None, **resources):
    extra = {**azure.extra, **(extra or {})}
    resources = ResourceSpec(extra={k: v for k, v in extra.items() if v is not None}, **resources)
    submission = azure.backend.submit(bundle, remote_job(tmp_path), resources)
    return remote_job(tmp_path, submission), submission


def collect(backend, job, follow=True, timeout=20.0):
    items, deadline = [], time.monotonic() + timeout
    for item in backend.events(job, follow=follow):
        if item is not None:
            items.append(item)
        assert time.monotonic() < deadline, "the event stream did not end"
    return items


# --- pure parts ---------------------------------------------------------------------------------
def test_every_azure_status_is_mapped():
    statuses = {
        "NotStarted": PENDING,
        "Queued": PENDING,
        "Preparing": PENDING,
        "Provisioning": PENDING,
        "Starting": PENDING,
        "Running": RUNNING,
        "Finalizing": RUNNING,
        "Completed": SUCCEEDED,
        "Failed": FAILED,
        "Canceled": CANCELLED,
        "CancelRequested": RUNNING,
        "NotResponding": RUNNING,
        "Paused": PENDING,
    }
    assert {name: state for name, (state, _) in STATE_TABLE.items()} == statuses
    names = {job_name_for(KEY), job_name_for(KEY.upper())}
    assert names == {"nj-azureml-0123456789abcdef0123"}


def test_missing_sdk_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "azure.ai.ml", None)
    with pytest.raises(MissingDependencyError) as caught:
        AzureMLBackend().client("s", "g", "w")
    assert "neural-jupyter[azureml]" in str(caught.value)


# --- submit -------------------------------------------------------------------------------------
def test_submit_uploads_the_bundle_and_puts_a_command_job(azure, tmp_path, small_bundle):
    _job, submission = submit(azure, tmp_path, small_bundle, max_runtime_hours=1.5)
    name = job_name_for(KEY)
    assert submission.remote_id == name and submission.details["workspace"] == "ws"
    arm = [r for r in azure.requests if r.path.startswith("/subscriptions/")]
    assert arm[0].method == "GET" and arm[0].path.endswith(f"/jobs/{name}")  # looked first
    puts = azure.calls("PUT", r"/jobs/")
    assert len(puts) == 1 and puts[0].path.endswith(f"/jobs/{name}")
    props = puts[0].body["properties"]
    assert props["jobType"] == "Command" and props["command"] == COMMAND
    assert "distribution" not in props  # one process: no distribution, one instance
    assert DEFAULT_ENVIRONMENT in props["environmentId"]
    assert props["computeId"].endswith("/computes/gpu-cluster")
    assert props["limits"]["timeout"] == "PT1H30M"
    assert props["experimentName"] == "neural-jupyter"
    assert props["tags"]["neural-jupyter-key"] == KEY
    # the code folder went to storage through the SDK's own upload, byte for byte
    code = props["codeId"].split("/codes/")[1].split("/")[0]
    prefix = azure.codes[code]["properties"]["codeUri"].split(f"/{ACCOUNT}/", 1)[1]
    container, folder = prefix.split("/", 1)
    uploaded = {
        path[len(folder) + 1 :]: data
        for (acc, con, path), (data, _) in azure.blobs.items()
        if con == container and path.startswith(folder)
    }
    for name_ in ("train.py", "data.npz", "job.json"):
        assert uploaded[name_] == (small_bundle.path / name_).read_bytes()
    assert all(r.query.get("sig") for r in azure.requests if r.path.startswith(f"/{ACCOUNT}"))
    bodies = json.dumps([r.body for r in arm if isinstance(r.body, dict)])
    assert azure.token not in bodies


def test_serverless_spot_needs_an_instance(azure, tmp_path, small_bundle):
    with pytest.raises(ConfigurationError, match="compute cluster"):
        submit(azure, tmp_path, small_bundle, extra={"compute": None})
    assert azure.requests == []
    submit(
        azure,
        tmp_path,
        small_bundle,
        extra={"compute": None, "environment": "my-env:3"},
        instance_type="Standard_NC4as_T4_v3",
        spot=True,
    )
    props = azure.calls("PUT", r"/jobs/")[0].body["properties"]
    assert "computeId" not in props or not props["computeId"]
    assert props["resources"]["instanceType"] == "Standard_NC4as_T4_v3"
    assert props["queueSettings"]["jobTier"].lower() == "spot"
    assert props["environmentId"].endswith("/environments/my-env/versions/3")
    # a named cluster's VMs are what the cluster is: --spot there is refused, never ignored
    with pytest.raises(ConfigurationError, match="serverless"):
        submit(azure, tmp_path, small_bundle, spot=True)


def test_default_environment_is_one_pinned_version():
    name, _, version = DEFAULT_ENVIRONMENT.partition(":")
    assert "@" not in DEFAULT_ENVIRONMENT and version.isdigit()  # never a moving label
    assert name.startswith("AzureML-acpt-pytorch-")


def test_workspace_from_config_json(azure, tmp_path, small_bundle):
    config = tmp_path / "ws" / "config.json"
    config.parent.mkdir()
    config.write_text(
        json.dumps(
            {"subscription_id": azure.sub, "resource_group": azure.rg, "workspace_name": azure.ws}
        )
    )
    _job, submission = submit(
        azure,
        tmp_path,
        small_bundle,
        extra={
            "subscription_id": None,
            "resource_group": None,
            "workspace": None,
            "config": str(config),
        },
    )
    assert submission.details["subscription_id"] == azure.sub
    assert len(azure.calls("PUT", r"/jobs/")) == 1
    with pytest.raises(ConfigurationError, match=r"config\.json"):
        submit(
            azure,
            tmp_path,
            small_bundle,
            extra={
                "subscription_id": None,
                "resource_group": None,
                "workspace": None,
                "config": str(tmp_path / "other"),
            },
        )


# --- status and events --------------------------------------------------------------------------
def test_statuses_and_std_log_through_to_success(azure, tmp_path, small_bundle):
    hold = threading.Event()
    azure.script = Script(
        lines=LINES, outputs={"model.pt": b"weights", "history.json": b"[]"}, hold=hold
    )
    job, _ = submit(azure, tmp_path, small_bundle)
    assert azure.backend.status(job).state == PENDING
    items = []
    for item in azure.backend.events(job):
        if isinstance(item, Event) and item.kind == "done":
            assert azure.backend.status(job).state == RUNNING  # read while running
            hold.set()
        if item is not None:
            items.append(item)
    statuses = [i.get("status") for i in items if isinstance(i, Event) and i.get("status")]
    seen_after_submit = [s for s in statuses if s != "NotStarted"]  # status() saw NotStarted
    assert seen_after_submit[:4] == ["Queued", "Preparing", "Starting", "Running"]
    kinds = [i.kind for i in items if isinstance(i, Event) and i.kind != "status"]
    assert kinds == ["start", "epoch", "epoch", "done"]
    assert LogLine("a plain log line") in items
    assert azure.backend.status(job).state == SUCCEEDED
    reads = azure.calls("GET", r"^/logs/")
    assert reads[0].status == 200 and {r.status for r in reads[1:]} <= {206, 416}  # ranges
    output = job.directory / "bundle" / "output"
    assert (output / "model.pt").read_bytes() == b"weights"  # via jobs.download
    assert any(r.host == f"{ACCOUNT}.blob.storage.fake.invalid" for r in azure.requests)
    fetched = azure.backend.fetch_artifacts(job, tmp_path / "again")
    assert set(fetched) == {"weights", "history"}
    replay = [i for i in collect(azure.backend, job, follow=False) if isinstance(i, Event)]
    assert [i.kind for i in replay if i.kind != "status"] == ["start", "epoch", "epoch", "done"]


def test_failed_job_reports_the_run_error(azure, tmp_path, small_bundle):
    azure.script = Script(
        lines=['{"event": "error", "type": "RuntimeError", "message": "boom"}'], exit_code=1
    )
    job, _ = submit(azure, tmp_path, small_bundle)
    items = collect(azure.backend, job)
    assert any(isinstance(i, Event) and i.kind == "error" for i in items)
    status = azure.backend.status(job)
    assert status.state == FAILED and status.exit_code == 1
    assert "exited with status code 1" in status.message


def test_timeout_is_a_timeout(azure, tmp_path, small_bundle):
    azure.script = Script(lines=LINES[:1], hold=threading.Event())
    job, _ = submit(azure, tmp_path, small_bundle, max_runtime_hours=0.1 / 3600)
    collect(azure.backend, job)
    status = azure.backend.status(job)
    assert status.state == FAILED and status.timed_out


def test_cancel_calls_begin_cancel(azure, tmp_path, small_bundle):
    azure.script = Script(lines=LINES[:2], hold=threading.Event())
    job, _ = submit(azure, tmp_path, small_bundle)
    stream = azure.backend.events(job)
    for item in stream:
        if item == LogLine("a plain log line"):
            break
    azure.backend.cancel(job)
    assert len(azure.calls("POST", r"/jobs/[^/]+/cancel$")) == 1
    rest = [i for i in stream if i is not None]  # ends by itself once Canceled
    assert not any(isinstance(i, Event) and i.kind == "done" for i in rest)
    assert azure.backend.status(job).state == CANCELLED


def test_cancel_from_studio_is_cancelled(azure, tmp_path, small_bundle):
    azure.script = Script(lines=LINES[:1], hold=threading.Event())
    job, _ = submit(azure, tmp_path, small_bundle)
    azure.cancel_from_studio(job_name_for(KEY))
    collect(azure.backend, job)
    assert azure.backend.status(job).state == CANCELLED


# --- errors and retries -------------------------------------------------------------------------
def test_rejected_token_is_an_auth_error_with_azures_message(azure, tmp_path, small_bundle):
    azure.backend.credential = StandInCredential(fake_jwt("some-other-signature"))
    with pytest.raises(PlatformAuthError) as caught:
        submit(azure, tmp_path, small_bundle)
    assert "The access token is invalid or has expired." in str(caught.value)
    assert len(azure.requests) == 1  # not retried, nothing created
    assert azure.jobs == {}


def test_unusable_credential_chain_is_an_auth_error(azure):
    from azure.core.exceptions import ClientAuthenticationError

    class NoLogin:
        def get_token(self, *scopes, **kwargs):
            raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")

    azure.backend.credential = NoLogin()
    with pytest.raises(PlatformAuthError) as caught:
        azure.backend.check_credentials()
    assert "failed to retrieve a token" in str(caught.value) and "az login" in caught.value.hint


def test_forbidden_and_quota(azure, tmp_path, small_bundle):
    azure.fail(
        "PUT",
        r"/jobs/",
        403,
        "The client does not have authorization to perform action "
        "'Microsoft.MachineLearningServices/workspaces/jobs/write'",
        code="AuthorizationFailed",
    )
    with pytest.raises(PlatformAuthError, match="AuthorizationFailed"):
        submit(azure, tmp_path, small_bundle)
    azure.fail(
        "PUT", r"/jobs/", 400, "Not enough quota for Standard_NC24ads_A100_v4", code="QuotaExceeded"
    )
    with pytest.raises(QuotaError):
        submit(azure, tmp_path, small_bundle)


@pytest.mark.parametrize("lost_reply", [False, True])
def test_transient_503_is_retried_into_exactly_one_job(azure, tmp_path, small_bundle, lost_reply):
    azure.fail(
        "PUT", r"/jobs/", 503, "The service is busy", code="ServiceUnavailable", after=lost_reply
    )
    _job, submission = submit(azure, tmp_path, small_bundle)
    assert list(azure.jobs) == [job_name_for(KEY)]
    assert len(azure.calls("PUT", r"/jobs/")) == (1 if lost_reply else 2)
    assert bool(submission.details.get("adopted")) is lost_reply
    again = azure.backend.submit(
        small_bundle, remote_job(tmp_path), ResourceSpec(extra=azure.extra)
    )
    assert again.details["adopted"] and len(azure.jobs) == 1


def test_permanent_400_is_not_retried(azure, tmp_path, small_bundle):
    azure.fail("PUT", r"/jobs/", 400, "Compute gpu-cluster was not found", code="UserError")
    with pytest.raises(PlatformError, match="Compute gpu-cluster was not found") as caught:
        submit(azure, tmp_path, small_bundle)
    assert not isinstance(caught.value, (PlatformAuthError, QuotaError))
    assert len(azure.calls("PUT", r"/jobs/")) == 1 and azure.jobs == {}


def test_status_of_an_unknown_job(azure, tmp_path):
    job = RemoteJob(
        "j9",
        tmp_path,
        "nj-missing",
        {**azure.extra, "job_name": "nj-missing", "idempotency_key": "k"},
    )
    assert azure.backend.status(job).state == UNKNOWN


# --- through the API ----------------------------------------------------------------------------
def test_dry_run_shows_the_job_and_its_cost(azure):
    plan = api.submit(
        SMALL,
        "digits",
        platform="azureml",
        instance="Standard_NC4as_T4_v3",
        max_hours=2,
        dry_run=True,
        extra={**azure.extra, "compute": None},
    )
    assert azure.requests == []
    request = plan.request["command_job"]
    assert request["resources"]["instance_type"] == "Standard_NC4as_T4_v3"
    assert request["limits"] == {"timeout": 7200}
    assert plan.cost.total_usd == pytest.approx(2 * 0.526)


def test_full_run_through_the_api(azure, capsys):
    """The fake runs the job's real command in the uploaded code folder; the std_log and the
    outputs come back through the SDK."""
    azure.execute = True
    run = api.submit(SMALL, "digits", platform="azureml", extra=azure.extra, monitor="text")
    out = capsys.readouterr().out
    assert "epoch 3/3" in out and run.status == "SUCCEEDED"
    record = JobStore().get(run.job_id)
    assert record.status is JobStatus.SUCCEEDED and record.metrics["val_accuracy"] > 0.6
    assert record.remote_id == job_name_for(record.idempotency_key)
    assert len(run.history) == 3 and run.artifacts["weights"].exists()
    assert sum(p.numel() for p in run.model().parameters()) > 0
    # the std_log came through the log API (incremental range reads are asserted, without
    # timing luck, in test_statuses_and_std_log_through_to_success)
    assert azure.calls("GET", r"^/logs/")
    blob = (ACCOUNT, ARTIFACT_CONTAINER, f"ExperimentRun/dcid.{record.remote_id}/outputs/model.pt")
    assert azure.blobs[blob][0] == run.artifacts["weights"].read_bytes()
    again = api.submit(SMALL, "digits", platform="azureml", extra=azure.extra, monitor="none")
    assert again.job_id == run.job_id and len(azure.calls("PUT", r"/jobs/")) == 1
    # the bearer token is nowhere we write or show
    job = Job.load(run.job_id)
    texts = [out, capsys.readouterr().out]
    with sqlite3.connect(JobStore().path) as conn:
        texts.extend(json.dumps(row) for row in conn.execute("SELECT * FROM jobs"))
    for path in job.directory.rglob("*"):
        if path.is_file() and path.suffix not in (".pt", ".npz"):
            texts.append(path.read_text(errors="replace"))
    assert azure.token not in "\n".join(texts)
    assert azure.token.rsplit(".", 1)[1] not in "\n".join(texts)


# --- user code --------------------------------------------------------------------------------
def test_a_script_folder_runs_as_a_command_job(azure, tmp_path):
    """The bundle folder (project/ and data/ included) is the job's code; the launcher runs
    the script; output/outputs/ comes back through jobs.download."""
    from usercode_jobs import check_script_run, make_project

    azure.execute = True
    project, data = make_project(tmp_path / "user")
    run = neural_jupyter.run_script(
        project,
        ["--epochs", "2"],
        data=data,
        platform="azureml",
        extra=azure.extra,
        monitor="none",
    )
    check_script_run(run)


# --- data-parallel training (nodes × procs_per_node) ----------------------------------------
def test_nodes_are_instances_of_a_pytorch_distribution(azure, tmp_path, small_bundle):
    """--nodes 2 --procs-per-node 4: two instances, Azure ML's PyTorch distribution with one
    process per instance (the launcher there runs torchrun with four)."""
    job, _ = submit(azure, tmp_path, small_bundle, nodes=2, procs_per_node=4)
    (put,) = azure.calls("PUT", r"/jobs/")
    props = put.body["properties"]
    assert props["distribution"] == {"distributionType": "PyTorch", "processCountPerInstance": 1}
    assert props["resources"]["instanceCount"] == 2
    assert props["computeId"].endswith("/computes/gpu-cluster")
    assert props["command"] == f"{COMMAND} --nnodes 2 --nproc-per-node 4"
    # the SDK reads the job back as its own types
    ml, name = azure.backend._job_client(job)
    entity = ml.jobs.get(name)
    assert type(entity.distribution).__name__ == "PyTorchDistribution"
    assert entity.distribution.process_count_per_instance == 1
    assert entity.resources.instance_count == 2
    # cancel is one call for the whole job, every instance
    azure.backend.cancel(job)
    assert len(azure.calls("POST", r"/jobs/[^/]+/cancel$")) == 1
    # one instance with several processes: no distribution, torchrun on that machine alone
    azure.requests.clear()
    other = remote_job(tmp_path / "one")
    other.details["idempotency_key"] = KEY + "-one"
    resources = ResourceSpec(extra=azure.extra, procs_per_node=2)
    azure.backend.submit(small_bundle, other, resources)
    (put,) = azure.calls("PUT", r"/jobs/")
    props = put.body["properties"]
    assert "distribution" not in props and props["command"].endswith("--nproc-per-node 2")
    # and 1 × 1 is the plain command
    assert (
        azure.backend.plan(other, ResourceSpec(extra=azure.extra))["command_job"]["command"]
        == COMMAND
    )


def test_multi_node_dry_run_and_cost(azure):
    plan = api.submit(
        SMALL,
        "digits",
        platform="azureml",
        instance="Standard_NC4as_T4_v3",
        max_hours=2,
        nodes=3,
        procs_per_node=2,
        dry_run=True,
        extra={**azure.extra, "compute": None},
    )
    assert azure.requests == []
    request = plan.request["command_job"]
    assert request["resources"] == {"instance_type": "Standard_NC4as_T4_v3", "instance_count": 3}
    assert request["distribution"] == {"type": "pytorch", "process_count_per_instance": 1}
    assert plan.cost.total_usd == pytest.approx(3 * 2 * 0.526) and "3 machines" in plan.cost.note


def test_per_node_launch_reads_azures_variables():
    """What each instance's launcher runs with the variables Azure ML sets there."""
    from neural_jupyter.runtime import launcher

    args = launcher.parse_args(["--nnodes", "2", "--nproc-per-node", "4"])
    environ = {
        "NODE_RANK": "1",
        "MASTER_ADDR": "10.0.0.4",
        "MASTER_PORT": "6105",
        "RANK": "1",
        "WORLD_SIZE": "2",
    }
    command = launcher.torchrun_arguments(args, environ)
    assert command[command.index("--node-rank") + 1] == "1"
    assert command[command.index("--master-addr") + 1] == "10.0.0.4"
    assert command[command.index("--master-port") + 1] == "6105"
    assert command[command.index("--nproc-per-node") + 1] == "4"


@pytest.mark.slow
def test_two_instances_train_for_real(azure, capsys):
    """The fake starts the command on two 'instances' with Azure's variables; their
    launchers' torchruns meet at instance 0 and train as one gloo group; the log read is
    process 0's, the outputs instance 0's."""
    azure.execute = True
    run = api.submit(
        SMALL, "digits", platform="azureml", nodes=2, extra=azure.extra, monitor="none"
    )
    assert run.status == "SUCCEEDED", JobStore().get(run.job_id).error
    assert len(run.history) == 3 and run.artifacts["weights"].exists()
    job = Job.load(run.job_id)
    stream = [
        json.loads(line)
        for line in job.files.stdout.read_text().splitlines()
        if line.startswith('{"event"')
    ]
    starts = [e for e in stream if e["event"] == "start"]
    assert len(starts) == 1 and starts[0]["world_size"] == 2
    remote = azure.jobs[JobStore().get(run.job_id).remote_id]
    assert sorted(remote.logs) == [
        "user_logs/std_log_process_0.txt",
        "user_logs/std_log_process_1.txt",
    ]
    assert b"data parallel: 2 processes" in remote.log_of("user_logs/std_log_process_0.txt")
    assert b'"event"' not in remote.log_of("user_logs/std_log_process_1.txt")


@pytest.mark.slow
def test_cancel_stops_every_instance(azure):
    from tests.test_distributed import alive, descendants, wait_for

    azure.execute = True
    job = api.submit(
        SMALL,
        "digits",
        platform="azureml",
        nodes=2,
        epochs=500,
        extra=azure.extra,
        wait=False,
        monitor="none",
    )

    def training() -> list[int]:
        found = []
        for remote in list(azure.jobs.values()):
            remote.observed += 1  # as a client's polls would: the pre-run statuses pass
            for process in list(remote.processes):
                for child in descendants(process.pid):
                    try:
                        if "train.py" in Path(f"/proc/{child}/cmdline").read_text():
                            found.append(child)
                    except OSError:
                        pass
        return found

    assert wait_for(lambda: len(training()) >= 2, 120), "the instances never started training"
    ranks = training()
    job.cancel()
    assert wait_for(lambda: not any(alive(pid) for pid in ranks), 30), "a rank outlived cancel"
    assert job.refresh().status is JobStatus.CANCELLED
