"""The SageMaker backend through real boto3, against local doubles only.

* S3, CloudWatch Logs and STS: moto's server (``ThreadedMotoServer``) on a free port.
* SageMaker training jobs: ``fakes.sagemaker_api.FakeSageMaker`` (the JSON 1.1 wire format,
  scripted state transitions, injectable faults, every request recorded), because moto's
  jobs complete at once and it lacks ``StopTrainingJob``.

boto3 finds both through its standard ``AWS_ENDPOINT_URL_<SERVICE>`` variables and
``NEURAL_JUPYTER_SAGEMAKER_ENDPOINT``; credentials are planted fake values that must never
show up anywhere.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from fakes.sagemaker_api import (
    FAILED,
    MAX_RUNTIME,
    STARTING,
    TRAINING,
    UPLOADING,
    FakeSageMaker,
    FakeTrainingJob,
    Step,
    fault,
)

import neural_jupyter
from neural_jupyter import api
from neural_jupyter.backends import base, get_backend
from neural_jupyter.backends import retry as retry_module
from neural_jupyter.backends.base import (
    CANCELLED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    RemoteJob,
    ResourceSpec,
)
from neural_jupyter.backends.sagemaker import (
    ENTRY_POINT,
    STATE_TABLE,
    SageMakerBackend,
    _safe_extract,
    job_name_for,
    split_s3_uri,
    write_source_archive,
)
from neural_jupyter.backends.sagemaker_images import training_image
from neural_jupyter.errors import (
    ConfigurationError,
    JobFailed,
    JobTimeout,
    MissingDependencyError,
    PlatformAuthError,
    PlatformError,
    QuotaError,
)
from neural_jupyter.jobs.job import Job
from neural_jupyter.jobs.store import JobStatus, JobStore
from neural_jupyter.runtime.bundle import build_bundle, launcher_source
from neural_jupyter.runtime.events import Event, LogLine

ACCESS_KEY_ID = "AKIAABCDEFGHIJKLMNOP"
SECRET_KEY = "nJ0fakeSecretKeyDoNotLeak/7bXyZ+Qw3ErTy"
SESSION_TOKEN = "FQoGZXIvYXdzEfakeSessionTokenNeverShown0123456789"
SECRETS = (ACCESS_KEY_ID, SECRET_KEY, SESSION_TOKEN)
ROLE = "arn:aws:iam::123456789012:role/NeuralJupyterSageMaker"
BUCKET = "nj-test-bucket"
REGION = "us-east-1"
LOG_GROUP = "/aws/sagemaker/TrainingJobs"

SMALL = """
network Small {
  input: (8, 8, 1)
  layers: Flatten() Dense(16, "relu") Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  optimizer: Adam(learning_rate=0.02)
  metrics: ["accuracy"]
  train { epochs: 3 batch_size: 128 validation_split: 0.2 seed: 3 }
}
"""


# --- doubles --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@dataclass
class Cloud:
    endpoint: str
    fake: FakeSageMaker
    backend: SageMakerBackend
    tmp: Path

    def client(self, service: str):
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION)

    @property
    def s3(self):
        return self.client("s3")

    @property
    def logs(self):
        return self.client("logs")

    def objects(self, bucket: str = BUCKET) -> list[str]:
        listing = self.s3.list_objects_v2(Bucket=bucket)
        return [item["Key"] for item in listing.get("Contents", [])]

    def source_tar(self, job: FakeTrainingJob) -> tarfile.TarFile:
        uri = json.loads(job.hyperparameters["sagemaker_submit_directory"])
        bucket, key = split_s3_uri(uri)
        data = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        return tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")

    def log_writer(self, job: FakeTrainingJob, host: str = "algo-1"):
        """A function that appends one line to the job's CloudWatch stream, as SageMaker does."""
        logs = self.logs
        with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
            logs.create_log_group(logGroupName=LOG_GROUP)
        stream = f"{job.name}/{host}-1700000000"
        logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)

        def write(line: str) -> None:
            event = {"timestamp": int(time.time() * 1000), "message": line}
            logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=stream, logEvents=[event])

        return write

    def upload_model(self, job: FakeTrainingJob, directory: Path) -> None:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for path in sorted(directory.iterdir()):
                tar.add(path, arcname=path.name)
        bucket, key = split_s3_uri(job.model_uri)
        self.s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())


@pytest.fixture
def cloud(moto_endpoint, monkeypatch, tmp_path, neural_home):
    urllib.request.urlopen(
        urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")
    ).close()
    for name in list(os.environ):
        if name.startswith(("AWS_", "NEURAL_JUPYTER_SAGEMAKER", "SAGEMAKER_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    # no profile files (fixed paths, so the backend's boto3 session is reused across tests)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/neural-jupyter-tests/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/neural-jupyter-tests/creds")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for service in ("S3", "CLOUDWATCH_LOGS", "STS"):
        monkeypatch.setenv(f"AWS_ENDPOINT_URL_{service}", moto_endpoint)
    monkeypatch.setenv("NEURAL_JUPYTER_SAGEMAKER_ROLE", ROLE)
    monkeypatch.setenv("NEURAL_JUPYTER_SAGEMAKER_POLL_SECONDS", "0.02")
    monkeypatch.setattr(retry_module, "BASE_WAIT", 0.01)
    fake = FakeSageMaker().start()
    monkeypatch.setenv("NEURAL_JUPYTER_SAGEMAKER_ENDPOINT", fake.endpoint)
    world = Cloud(moto_endpoint, fake, get_backend("sagemaker"), tmp_path)
    world.s3.create_bucket(Bucket=BUCKET)
    yield world
    fake.stop()


def bodies_of(cloud: Cloud, operation: str) -> list[dict]:
    """The bodies of the ``operation`` requests the fake got, in order."""
    return [r.json for r in cloud.fake.calls("POST", f"^/{operation}$")]


def make_bundle(tmp_path: Path, key: str = "sagemaker-test-key") -> tuple:
    _, compiled, dataset, settings, _ = api.plan_submission(
        SMALL, "digits", platform="sagemaker", resources=ResourceSpec(extra={"bucket": BUCKET})
    )
    directory = tmp_path / "job-1"
    bundle = build_bundle(compiled.spec, dataset, directory / "bundle", settings, job_id="job-1")
    return bundle, RemoteJob("job-1", directory, None, {"idempotency_key": key})


RECORDED = [
    "2026-11-23 14:00:01,112 sagemaker-training-toolkit INFO     Invoking user script",
    '{"event": "start", "time": 1.0, "job_id": "job-1", "model": "Small", "framework": '
    '"pytorch", "device": "cpu", "device_name": "cpu", "epochs": 2, "batch_size": 128, '
    '"steps_per_epoch": 12, "train_samples": 1437, "val_samples": 360, "params": 1210}',
    '{"event": "epoch", "time": 2.0, "epoch": 1, "epochs": 2, "metrics": {"loss": 1.61, '
    '"accuracy": 0.52, "val_loss": 1.02, "val_accuracy": 0.81}, "duration": 0.21}',
    "a plain line from train.py on stderr",
    '{"event": "epoch", "time": 3.0, "epoch": 2, "epochs": 2, "metrics": {"loss": 0.71, '
    '"accuracy": 0.86, "val_loss": 0.55, "val_accuracy": 0.9}, "duration": 0.19}',
    '{"event": "artifact", "time": 3.1, "name": "history", "path": "output/history.json", '
    '"bytes": 210}',
    '{"event": "done", "time": 3.2, "metrics": {"loss": 0.71, "accuracy": 0.86, "val_loss": '
    '0.55, "val_accuracy": 0.9}, "best_epoch": 2, "epochs_run": 2, "stopped_early": false, '
    '"wall_time": 0.5}',
    "2026-11-23 14:00:09,001 sagemaker-training-toolkit INFO     Reporting training SUCCESS",
]


def recorded_container(
    cloud: Cloud,
    lines=RECORDED,
    exit_code: int = 0,
    delay: float = 0.0,
    gate: threading.Event | None = None,
    pause_after: int = 0,
):
    """A container that writes a recorded run's log lines and uploads a small model.tar.gz.

    With a ``gate`` it stops after ``pause_after`` lines until the gate is set (by a reader
    that has seen them: proof that lines arrive while the job is still training)."""

    def container(job: FakeTrainingJob) -> int:
        write = cloud.log_writer(job)
        for number, line in enumerate(lines):
            if gate is not None and number == pause_after and not gate.wait(20):
                return 2
            write(line)
            time.sleep(delay)
        if exit_code == 0:
            model = cloud.tmp / f"model-{job.name}"
            model.mkdir()
            history = [{"epoch": 1, "loss": 1.61}, {"epoch": 2, "loss": 0.71}]
            (model / "history.json").write_text(json.dumps(history))
            (model / "status.json").write_text('{"exit_code": 0}')
            cloud.upload_model(job, model)
        return exit_code

    return container


def real_container(cloud: Cloud, python: str | Path = sys.executable):
    """What SageMaker's PyTorch image does, on this machine: fetch source.tar.gz, run the
    entry point in script mode with the job's hyperparameters as arguments and SM_MODEL_DIR,
    stream its output line by line into CloudWatch, upload SM_MODEL_DIR as model.tar.gz (when
    the job completes). ``python`` is the image's interpreter."""

    def container(job: FakeTrainingJob) -> int:
        root = cloud.tmp / "opt-ml" / job.name
        code, model = root / "code", root / "model"
        code.mkdir(parents=True)
        with cloud.source_tar(job) as tar:
            tar.extractall(code, filter="data")
        hyperparameters = {k: json.loads(v) for k, v in job.hyperparameters.items()}
        args = []
        for key, value in hyperparameters.items():
            if not key.startswith("sagemaker_"):
                args += [f"--{key}", str(value).replace("/opt/ml/", f"{root}/")]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(SM_MODEL_DIR=str(model), PYTHONUNBUFFERED="1")
        write = cloud.log_writer(job)
        process = subprocess.Popen(
            [str(python), hyperparameters["sagemaker_program"], *args],
            cwd=code,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        for line in process.stdout:
            write(line.rstrip("\n"))
        result = process.wait()
        if result == 0:
            cloud.upload_model(job, model)
        return result

    return container


def scan_for_secrets(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def files_text(root: Path) -> str:
    return "\n".join(
        path.read_bytes().decode("latin-1") for path in root.rglob("*") if path.is_file()
    )


# --- pure parts -----------------------------------------------------------------------------------
def test_training_image_per_region_and_processor():
    # the newest PyTorch image AWS still patches (image_tables/sagemaker.json)
    assert training_image("us-east-1", "ml.g5.xlarge") == (
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:"
        "2.10.0-gpu-py313-cu130-ubuntu22.04-sagemaker"
    )
    assert training_image("eu-west-1", "ml.m5.xlarge").endswith(
        ":2.10.0-cpu-py313-ubuntu22.04-sagemaker"
    )
    assert training_image("af-south-1", "ml.g5.xlarge").startswith("626614931356.dkr.ecr.")
    # the SDK's registry table: ap-southeast-6 has its own account
    assert training_image("ap-southeast-6", "ml.g5.xlarge").startswith("633930458069.dkr.ecr.")
    assert ".amazonaws.com.cn/" in training_image("cn-north-1", "ml.m5.xlarge")
    for instance in ("ml.p6-b200.48xlarge", "ml.p6-b300.48xlarge", "ml.g7e.2xlarge"):
        assert "-gpu-" in training_image("us-east-1", instance), instance
    with pytest.raises(ConfigurationError, match="Neuron"):
        training_image("us-east-1", "ml.trn1.2xlarge")
    with pytest.raises(ConfigurationError, match="Arm"):
        training_image("us-east-1", "ml.p6e-gb200.36xlarge")
    with pytest.raises(ConfigurationError, match="V100"):  # CUDA 13 dropped Volta
        training_image("us-east-1", "ml.p3.2xlarge")
    with pytest.raises(ConfigurationError, match=r"did you mean 'ml\.g5\.xlarge'"):
        training_image("us-east-1", "g5.xlarge")


def test_job_names_are_stable_valid_and_short():
    import re

    keys = [
        "sagemaker-0123456789abcdef0123",
        "sagemaker-0123456789abcdef0123-1a2b3c4d",
        "weird key/with:chars" * 5,
        "x",
    ]
    for key in keys:
        name = job_name_for(key)
        assert name == job_name_for(key)
        assert len(name) <= 63 and re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", name)
    assert job_name_for("sagemaker-0123456789abcdef0123") == "nj-sagemaker-0123456789abcdef0123"
    assert job_name_for(keys[2]) != job_name_for(keys[2] + "!")


def test_state_table_maps_primary_and_secondary_status():
    status = SageMakerBackend.status_from
    assert STATE_TABLE.state(("InProgress", "Starting")) == PENDING
    assert (
        status({"TrainingJobStatus": "InProgress", "SecondaryStatus": "Downloading"}).state
        == PENDING
    )
    assert (
        status({"TrainingJobStatus": "InProgress", "SecondaryStatus": "Training"}).state == RUNNING
    )
    assert status({"TrainingJobStatus": "Stopping", "SecondaryStatus": "Stopping"}).state == RUNNING
    done = status({"TrainingJobStatus": "Completed", "SecondaryStatus": "Completed"})
    assert done.state == SUCCEEDED and done.exit_code == 0
    failed = status(
        {
            "TrainingJobStatus": "Failed",
            "SecondaryStatus": "Failed",
            "FailureReason": "x ExitCode 3",
        }
    )
    assert (failed.state, failed.exit_code, failed.message) == (base.FAILED, 3, "x ExitCode 3")
    stopped = status({"TrainingJobStatus": "Stopped", "SecondaryStatus": "Stopped"})
    assert stopped.state == CANCELLED
    late = status({"TrainingJobStatus": "Stopped", "SecondaryStatus": "MaxRuntimeExceeded"})
    assert late.state == base.FAILED and late.timed_out and "time limit" in late.message


def test_unsafe_members_of_model_tar_are_skipped(tmp_path):
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("model.pt", "../evil.txt", "/abs.txt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"ok"))
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    out = tmp_path / "out"
    extracted = _safe_extract(archive, out)
    assert [p.name for p in extracted] == ["model.pt"]
    assert not (tmp_path / "evil.txt").exists() and not (out / "link").exists()
    assert not Path("/abs.txt").exists()


def test_missing_boto3_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(MissingDependencyError) as caught:
        SageMakerBackend().check_credentials()
    assert "neural-jupyter[sagemaker]" in str(caught.value)


# --- configuration and dry run --------------------------------------------------------------------
def test_dry_run_is_the_exact_request_and_sends_nothing(cloud):
    kwargs = dict(
        platform="sagemaker",
        instance="ml.g5.xlarge",
        max_hours=2,
        spot=True,
        extra={"bucket": BUCKET},
    )
    plan = api.submit(SMALL, "digits", dry_run=True, **kwargs)
    request = plan.request["CreateTrainingJob"]
    name = request["TrainingJobName"]
    assert name == job_name_for(plan.idempotency_key)
    assert request["RoleArn"] == ROLE
    assert request["AlgorithmSpecification"]["TrainingImage"] == training_image(
        REGION, "ml.g5.xlarge"
    )
    assert request["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    assert request["ResourceConfig"] == {
        "InstanceType": "ml.g5.xlarge",
        "InstanceCount": 1,
        "VolumeSizeInGB": 30,
    }
    assert request["StoppingCondition"] == {
        "MaxRuntimeInSeconds": 7200,
        "MaxWaitTimeInSeconds": 14400,
    }
    assert request["EnableManagedSpotTraining"] is True
    root = f"s3://{BUCKET}/neural-jupyter/{name}"
    assert request["CheckpointConfig"] == {
        "S3Uri": f"{root}/checkpoints",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert request["OutputDataConfig"] == {"S3OutputPath": f"{root}/output"}
    hyper = {k: json.loads(v) for k, v in request["HyperParameters"].items()}
    assert hyper["sagemaker_program"] == ENTRY_POINT
    assert hyper["sagemaker_submit_directory"] == f"{root}/source.tar.gz"
    assert plan.request["upload"]["uri"] == f"{root}/source.tar.gz"
    assert plan.cost.total_usd == pytest.approx(1.408 * 2)
    assert cloud.fake.requests == [] and cloud.objects() == []
    assert JobStore().list() == []
    text = str(plan)
    assert "Dry run" in text and ROLE in text
    scan_for_secrets(text)

    # ... and it is what a real submit sends (the job id tag aside)
    job = api.submit(SMALL, "digits", wait=False, monitor="none", **kwargs)
    [sent] = bodies_of(cloud, "CreateTrainingJob")
    tags = {t["Key"]: t["Value"] for t in sent.pop("Tags")}
    planned_tags = {t["Key"]: t["Value"] for t in request.pop("Tags")}
    assert sent == request
    assert tags["neural-jupyter:job-id"] == job.id
    assert tags["neural-jupyter:idempotency-key"] == planned_tags["neural-jupyter:idempotency-key"]


def test_missing_role_is_a_clear_error_before_anything_is_bodies_of(cloud, monkeypatch):
    monkeypatch.delenv("NEURAL_JUPYTER_SAGEMAKER_ROLE")
    for dry_run in (True, False):
        with pytest.raises(ConfigurationError) as caught:
            api.submit(SMALL, "digits", platform="sagemaker", max_hours=1, dry_run=dry_run)
        text = str(caught.value)
        assert "execution role" in text and "NEURAL_JUPYTER_SAGEMAKER_ROLE" in text
    assert cloud.fake.requests == [] and cloud.objects() == []
    monkeypatch.setenv("SAGEMAKER_ROLE", "MyRole")
    with pytest.raises(ConfigurationError, match="must be a role ARN"):
        api.submit(SMALL, "digits", platform="sagemaker", max_hours=1, dry_run=True)
    plan = api.submit(
        SMALL, "digits", platform="sagemaker", max_hours=1, dry_run=True, extra={"role": ROLE}
    )
    assert plan.request["CreateTrainingJob"]["RoleArn"] == ROLE


def test_settings_are_checked_with_suggestions(cloud):
    with pytest.raises(ConfigurationError, match="did you mean 'bucket'"):
        api.submit(SMALL, "digits", platform="sagemaker", dry_run=True, extra={"bukcet": "b"})
    with pytest.raises(ConfigurationError, match="instance_count must be a positive number"):
        api.submit(SMALL, "digits", platform="sagemaker", dry_run=True, extra={"instance_count": 0})
    with pytest.raises(ConfigurationError, match="not a SageMaker instance type"):
        api.submit(SMALL, "digits", platform="sagemaker", dry_run=True, instance="g5.xlarge")
    plan = api.submit(
        SMALL,
        "digits",
        platform="sagemaker",
        dry_run=True,
        gpus=4,
        max_hours=1,
        region="eu-west-1",
        extra={"bucket": BUCKET},
    )
    request = plan.request["CreateTrainingJob"]
    assert request["ResourceConfig"]["InstanceType"] == "ml.g5.12xlarge"
    assert request["ResourceConfig"]["InstanceCount"] == 1
    assert ".eu-west-1.amazonaws.com/" in request["AlgorithmSpecification"]["TrainingImage"]
    assert plan.cost.hourly_usd == pytest.approx(7.09)
    # instances are the nodes of one data-parallel job: instance_count alone is not enough
    with pytest.raises(ConfigurationError, match="instance_count=2 and --nodes 1 disagree"):
        api.submit(
            SMALL,
            "digits",
            platform="sagemaker",
            dry_run=True,
            max_hours=1,
            extra={"instance_count": 2, "bucket": BUCKET},
        )
    assert cloud.fake.requests == []


def test_nodes_are_instances_each_running_torchrun(cloud):
    plan = api.submit(
        SMALL,
        "digits",
        platform="sagemaker",
        dry_run=True,
        gpus=4,
        max_hours=1,
        nodes=2,
        procs_per_node=4,
        extra={"bucket": BUCKET},
    )
    request = plan.request["CreateTrainingJob"]
    assert request["ResourceConfig"]["InstanceCount"] == 2
    assert request["ResourceConfig"]["InstanceType"] == "ml.g5.12xlarge"
    hyper = request["HyperParameters"]
    assert (hyper["nnodes"], hyper["nproc-per-node"]) == ("2", "4")
    assert plan.cost.hourly_usd == pytest.approx(2 * 7.09) and "2 instances" in plan.cost.note
    # the request is one the SDK's own model accepts (botocore validates it against the
    # service's CreateTrainingJob shape before sending)
    from botocore.validate import validate_parameters

    model = cloud.client("sagemaker").meta.service_model
    validate_parameters(request, model.operation_model("CreateTrainingJob").input_shape)
    # what each instance's launcher then runs, with SageMaker's environment on algo-2
    from neural_jupyter.runtime import launcher

    args = launcher.parse_args(["--nnodes", "2", "--nproc-per-node", "4"])
    environ = {"SM_HOSTS": '["algo-2", "algo-1"]', "SM_CURRENT_HOST": "algo-2"}
    command = launcher.torchrun_arguments(args, environ)
    assert command[command.index("--node-rank") + 1] == "1"
    assert command[command.index("--master-addr") + 1] == "algo-1"
    assert command[command.index("--nproc-per-node") + 1] == "4"


def test_budget_defaults_to_24_hours(cloud):
    backend = cloud.backend
    resources = ResourceSpec(instance_type="ml.m5.xlarge", extra={"bucket": BUCKET})
    _, job = make_bundle(cloud.tmp)
    request = backend.plan(job, resources)["CreateTrainingJob"]
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 24 * 3600}
    assert "EnableManagedSpotTraining" not in request
    assert backend.estimate_cost(resources).total_usd == pytest.approx(0.23 * 24)


# --- submit ---------------------------------------------------------------------------------------
def test_submit_uploads_the_bundle_and_creates_the_job(cloud):
    bundle, job = make_bundle(cloud.tmp)
    resources = ResourceSpec(
        instance_type="ml.m5.xlarge", max_runtime_hours=1, extra={"bucket": BUCKET}
    )
    submission = cloud.backend.submit(bundle, job, resources)
    name = job_name_for(job.idempotency_key)
    assert submission.remote_id == name
    assert submission.details["source"] == f"s3://{BUCKET}/neural-jupyter/{name}/source.tar.gz"
    assert cloud.objects() == [f"neural-jupyter/{name}/source.tar.gz"]
    [fake_job] = cloud.fake.jobs.values()
    with cloud.source_tar(fake_job) as tar:
        names = tar.getnames()
        assert {"train.py", "job.json", "data.npz", ENTRY_POINT} <= set(names)
        assert "requirements.txt" not in names  # the image has torch; no pip at start-up
        job_json = json.loads(tar.extractfile("job.json").read())
        assert tar.extractfile(ENTRY_POINT).read().decode() == launcher_source()
        assert tar.extractfile("train.py").read() == (bundle.path / "train.py").read_bytes()
    assert job_json == json.loads((bundle.path / "job.json").read_text())
    assert not (job.directory / "source.tar.gz").exists()  # the local copy is gone
    [sent] = bodies_of(cloud, "CreateTrainingJob")
    assert sent["TrainingJobName"] == name and sent["RoleArn"] == ROLE
    assert {"Key": "neural-jupyter:job-id", "Value": "job-1"} in sent["Tags"]
    # the archive is reproducible: same bundle, same bytes, same digest as uploaded
    digests = {write_source_archive(bundle, cloud.tmp / f"{n}.tar.gz") for n in range(2)}
    assert digests == {submission.details["source_sha256"]}


def test_default_bucket_comes_from_sts_and_is_created(cloud):
    bundle, job = make_bundle(cloud.tmp)
    submission = cloud.backend.submit(bundle, job, ResourceSpec(max_runtime_hours=1))
    default = "sagemaker-us-east-1-123456789012"  # moto's account
    assert submission.details["bucket"] == default
    assert cloud.objects(default) == [f"neural-jupyter/{submission.remote_id}/source.tar.gz"]


def test_named_bucket_must_exist(cloud):
    bundle, job = make_bundle(cloud.tmp)
    with pytest.raises(ConfigurationError, match="'missing-bucket' does not exist"):
        cloud.backend.submit(bundle, job, ResourceSpec(extra={"bucket": "missing-bucket"}))
    assert bodies_of(cloud, "CreateTrainingJob") == []


@pytest.mark.parametrize("lost_response", [False, True])
def test_transient_503_on_create_is_retried_into_exactly_one_job(cloud, lost_response):
    cloud.fake.fail("POST", "/CreateTrainingJob$", **fault("unavailable"), after=lost_response)
    bundle, job = make_bundle(cloud.tmp)
    submission = cloud.backend.submit(bundle, job, ResourceSpec(extra={"bucket": BUCKET}))
    assert len(bodies_of(cloud, "CreateTrainingJob")) == 2
    assert list(cloud.fake.jobs) == [submission.remote_id]
    if lost_response:  # the first try had created it: the retry found it, not a second one
        assert submission.details["existing"] == "after a retry"
    else:
        assert "existing" not in submission.details


def test_throttling_is_retried_and_gives_up_after_three_tries(cloud):
    bundle, job = make_bundle(cloud.tmp)
    resources = ResourceSpec(extra={"bucket": BUCKET})
    submission = cloud.backend.submit(bundle, job, resources)
    remote = RemoteJob(job.id, job.directory, submission.remote_id, dict(submission.details))
    cloud.fake.fail("POST", "/DescribeTrainingJob$", **fault("throttle"), times=2)
    assert cloud.backend.status(remote).state == PENDING
    assert len(bodies_of(cloud, "DescribeTrainingJob")) == 3
    cloud.fake.fail("POST", "/DescribeTrainingJob$", **fault("unavailable"), times=5)
    with pytest.raises(PlatformError, match="ServiceUnavailable") as caught:
        cloud.backend.status(remote)
    assert len(bodies_of(cloud, "DescribeTrainingJob")) == 6
    assert "after retries" in str(caught.value)


@pytest.mark.parametrize(
    ("kind", "error", "text"),
    [
        ("validation", PlatformError, "Invalid MaxRuntimeInSeconds"),
        ("access_denied", PlatformAuthError, "is not authorized to perform"),
        ("expired", PlatformAuthError, "ExpiredTokenException: .* request is expired"),
        ("quota", QuotaError, "ml.p4d.24xlarge for training job usage"),
    ],
)
def test_permanent_errors_are_raised_at_once(cloud, kind, error, text):
    cloud.fake.fail("POST", "/CreateTrainingJob$", **fault(kind))
    bundle, job = make_bundle(cloud.tmp)
    with pytest.raises(error, match=text) as caught:
        cloud.backend.submit(bundle, job, ResourceSpec(extra={"bucket": BUCKET}))
    if error is PlatformError:
        assert not isinstance(caught.value, (PlatformAuthError, QuotaError))
    assert len(bodies_of(cloud, "CreateTrainingJob")) == 1  # not retried
    assert cloud.fake.jobs == {}


def test_resubmitting_the_same_thing_returns_the_existing_job(cloud, capsys):
    kwargs = dict(platform="sagemaker", max_hours=1, wait=False, monitor="none")
    first = api.submit(SMALL, "digits", extra={"bucket": BUCKET}, **kwargs)
    again = api.submit(SMALL, "digits", extra={"bucket": BUCKET}, **kwargs)
    assert again.id == first.id
    assert "already submitted" in capsys.readouterr().out
    assert len(bodies_of(cloud, "CreateTrainingJob")) == 1
    # even without the job store (another machine, a deleted store) the name finds it
    bundle, job = make_bundle(cloud.tmp, key=first.record.idempotency_key)
    submission = cloud.backend.submit(
        bundle, job, ResourceSpec(max_runtime_hours=1, extra={"bucket": BUCKET})
    )
    assert submission.remote_id == first.record.remote_id
    assert submission.details["existing"] == "submitted before"
    assert len(cloud.fake.jobs) == 1


# --- status, events, cancel -----------------------------------------------------------------------
def test_events_follow_status_transitions_and_cloudwatch_logs(cloud):
    first_epoch_seen = threading.Event()
    cloud.fake.container = recorded_container(cloud, gate=first_epoch_seen, pause_after=3)
    cloud.fake.fail(
        "POST", "/DescribeTrainingJob$", **fault("throttle")
    )  # retried inside the stream
    bundle, job = make_bundle(cloud.tmp)
    submission = cloud.backend.submit(bundle, job, ResourceSpec(extra={"bucket": BUCKET}))
    remote = RemoteJob(job.id, job.directory, submission.remote_id, dict(submission.details))
    items = []
    for item in cloud.backend.events(remote, follow=True):
        items.append(item)
        if isinstance(item, Event) and item.kind == "epoch" and not first_epoch_seen.is_set():
            # live: the container waits (still "Training") until this reader has the epoch
            assert cloud.fake.jobs[remote.remote_id].step.secondary == "Training"
            first_epoch_seen.set()
    assert None in items  # heartbeats while waiting
    items = [item for item in items if item is not None]
    statuses = [i.get("status") for i in items if isinstance(i, Event) and i.kind == "status"]
    assert [s for s in statuses if s] == [
        "Starting",
        "Downloading",
        "Training",
        "Uploading",
        "Completed",
        "Completed",  # the billing summary
    ]
    messages = [i.get("message") for i in items if isinstance(i, Event) and i.kind == "status"]
    assert any("logs are not available yet" in m for m in messages)
    assert any(m.startswith("billable time 400 s on 1 × ml.m5.xlarge") for m in messages)
    kinds = [i.kind for i in items if isinstance(i, Event) and i.kind != "status"]
    assert kinds == ["start", "epoch", "epoch", "artifact", "done"]
    epochs = [i for i in items if isinstance(i, Event) and i.kind == "epoch"]
    assert epochs[-1].get("metrics")["val_accuracy"] == 0.9
    lines = [i for i in items if isinstance(i, LogLine)]
    assert [line.text for line in lines] == [RECORDED[0], RECORDED[3], RECORDED[7]]
    assert {line.stream for line in lines} == {"stderr"}
    # order: the training status comes before the first epoch, uploading after the last
    position = {id(item): n for n, item in enumerate(items)}
    training = next(i for i in items if isinstance(i, Event) and i.get("status") == "Training")
    uploading = next(i for i in items if isinstance(i, Event) and i.get("status") == "Uploading")
    assert position[id(training)] < position[id(epochs[0])]
    assert position[id(uploading)] > position[id(epochs[-1])]
    # mirrored like a local job's files, and model.tar.gz brought back into bundle/output
    assert (job.directory / "stdout.log").read_text().splitlines() == [
        RECORDED[1],
        RECORDED[2],
        RECORDED[4],
        RECORDED[5],
        RECORDED[6],
    ]
    assert RECORDED[3] in (job.directory / "stderr.log").read_text()
    assert json.loads((bundle.path / "output" / "history.json").read_text())[-1]["epoch"] == 2
    assert cloud.backend.status(remote).state == SUCCEEDED
    # a second reading (re-attach) gives the same stream from the start, without following
    replay = [i for i in cloud.backend.events(remote, follow=False) if i is not None]
    assert [i.kind for i in replay if isinstance(i, Event) and i.kind != "status"] == kinds


def test_spot_interruption_and_restart_show_every_transition(cloud):
    cloud.fake.script = (
        STARTING,
        TRAINING,
        Step("InProgress", "Interrupted", "Spot capacity was reclaimed"),
        STARTING,
        TRAINING,
        UPLOADING,
        Step("Completed", "Completed", "Training job completed"),
    )
    bundle, job = make_bundle(cloud.tmp)
    resources = ResourceSpec(spot=True, max_runtime_hours=1, extra={"bucket": BUCKET})
    submission = cloud.backend.submit(bundle, job, resources)
    remote = RemoteJob(job.id, job.directory, submission.remote_id, dict(submission.details))
    states = []
    for item in cloud.backend.events(remote):
        if isinstance(item, Event) and item.get("time"):
            states.append(
                (
                    item.get("status"),
                    cloud.backend.status_from(
                        {"TrainingJobStatus": "InProgress", "SecondaryStatus": item.get("status")}
                    ).state,
                )
            )
    assert [s for s, _ in states] == [
        "Starting",
        "Training",
        "Interrupted",
        "Starting",
        "Training",
        "Uploading",
        "Completed",
    ]
    assert states[2] == ("Interrupted", PENDING)


def test_failure_reason_surfaces_in_job_failed(cloud):
    cloud.fake.script = FAILED
    with pytest.raises(JobFailed) as caught:
        api.submit(
            SMALL,
            "digits",
            platform="sagemaker",
            max_hours=1,
            monitor="none",
            extra={"bucket": BUCKET},
        )
    text = str(caught.value)
    assert "CUDA out of memory" in text and "ExecuteUserScriptError" in text
    assert "reduce the batch size" in text  # the out-of-memory hint
    [record] = JobStore().list()
    assert record.status is JobStatus.FAILED and record.exit_code == 1
    assert "CUDA out of memory" in record.error


def test_failing_script_reports_its_error_event(cloud):
    error = (
        '{"event": "error", "time": 2.0, "type": "ValueError", "message": "bad shape (3, 4)", '
        '"traceback": "Traceback ...", "hint": null}'
    )
    cloud.fake.container = recorded_container(
        cloud,
        lines=[RECORDED[0], RECORDED[1], error, "Traceback (most recent call last):"],
        exit_code=1,
    )
    with pytest.raises(JobFailed, match="ValueError: bad shape") as caught:
        api.submit(
            SMALL,
            "digits",
            platform="sagemaker",
            max_hours=1,
            monitor="none",
            extra={"bucket": BUCKET},
        )
    assert "Traceback (most recent call last):" in str(caught.value)  # the log tail


def test_max_runtime_exceeded_is_a_timeout(cloud):
    cloud.fake.script = MAX_RUNTIME
    with pytest.raises(JobTimeout, match="time limit"):
        api.submit(
            SMALL,
            "digits",
            platform="sagemaker",
            max_hours=1,
            monitor="none",
            extra={"bucket": BUCKET},
        )
    [record] = JobStore().list()
    assert record.status is JobStatus.FAILED and "MaxRuntimeExceeded" in record.error
    replay = list(cloud.backend.events(Job(record).remote(), follow=False))
    messages = [i.get("message") for i in replay if isinstance(i, Event)]
    assert any("wrote no training log" in m for m in messages)


def test_cancel_stops_the_training_job(cloud):
    job = api.submit(
        SMALL,
        "digits",
        platform="sagemaker",
        max_hours=1,
        wait=False,
        monitor="none",
        extra={"bucket": BUCKET},
    )
    job.cancel()
    assert bodies_of(cloud, "StopTrainingJob") == [{"TrainingJobName": job.record.remote_id}]
    assert JobStore().get(job.id).status is JobStatus.CANCELLED
    remote = job.remote()
    states = [cloud.backend.status(remote).state for _ in range(3)]
    assert states[0] == RUNNING  # Stopping: still billed until it is Stopped
    assert states[-1] == CANCELLED
    cloud.backend.cancel(remote)  # a job that already ended: nothing to stop, no error
    assert len(bodies_of(cloud, "StopTrainingJob")) == 2


def test_cancel_while_watching_ends_the_stream(cloud):
    gate = threading.Event()

    def slow_container(job):
        gate.wait(10)
        return 0

    cloud.fake.container = slow_container
    bundle, job = make_bundle(cloud.tmp)
    submission = cloud.backend.submit(bundle, job, ResourceSpec(extra={"bucket": BUCKET}))
    remote = RemoteJob(job.id, job.directory, submission.remote_id, dict(submission.details))
    seen = []
    for item in cloud.backend.events(remote):
        seen.append(item)
        if isinstance(item, Event) and item.get("status") == "Training":
            cloud.backend.cancel(remote)
            gate.set()
    transitions = [i.get("status") for i in seen if isinstance(i, Event) and i.get("time")]
    assert transitions[-3:] == ["Training", "Stopping", "Stopped"]
    assert cloud.backend.status(remote).state == CANCELLED


def test_spot_billing_reports_the_saving(cloud):
    cloud.fake.container = recorded_container(cloud)
    cloud.fake.training_seconds, cloud.fake.billable_seconds = 400, 120
    job = api.submit(
        SMALL,
        "digits",
        platform="sagemaker",
        instance="ml.g5.xlarge",
        max_hours=1,
        spot=True,
        wait=False,
        monitor="none",
        extra={"bucket": BUCKET},
    )
    messages = [
        item.get("message")
        for item in job.follow()
        if isinstance(item, Event) and item.kind == "status"
    ]
    billing = cloud.backend.billing(job.remote())
    assert billing["billable_seconds"] == 120 and billing["training_seconds"] == 400
    assert billing["spot"] is True and billing["spot_savings"] == pytest.approx(0.7)
    assert billing["list_price_usd"] == pytest.approx(120 / 3600 * 1.408, abs=1e-3)
    assert any("managed spot saved 70%" in m for m in messages)
    assert "saved 70%" in cloud.backend.status(job.remote()).message
    assert job.refresh().status is JobStatus.SUCCEEDED


# --- end to end -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_full_run_through_the_api_with_live_logs(cloud, capsys):
    """The bundle's train.py really runs (as SageMaker's container would run it) and its
    output reaches the notebook through CloudWatch Logs while the job is in Training."""
    cloud.fake.container = real_container(cloud)
    run = api.submit(
        SMALL,
        "digits",
        platform="sagemaker",
        max_hours=1,
        epochs=6,
        monitor="text",
        extra={"bucket": BUCKET},
    )
    out = capsys.readouterr().out
    assert "epoch 1/6" in out and "epoch 6/6" in out and "finished" in out
    assert run.status == "SUCCEEDED"
    assert len(run.history) == 6 and run.best_epoch is not None
    assert run.metrics["val_accuracy"] > 0.7
    assert run.artifacts["weights"].exists()  # brought back from model.tar.gz
    network = run.model()  # the downloaded weights load into the compiled network
    assert sum(p.numel() for p in network.parameters()) > 0
    record = JobStore().get(run.job_id)
    assert record.status is JobStatus.SUCCEEDED and record.metrics["val_accuracy"] > 0.7
    # the monitor's status line saw SageMaker's statuses
    replay = list(cloud.backend.events(Job.load(run.job_id).remote(), follow=False))
    statuses = [i.get("status") for i in replay if isinstance(i, Event) and i.get("status")]
    assert statuses[:5] == ["Starting", "Downloading", "Training", "Uploading", "Completed"]


@pytest.mark.slow
def test_spot_entry_point_keeps_checkpoints_and_resumes(cloud, tmp_path):
    """The entry point writes to the synced checkpoint directory under managed spot, copies
    the outputs to SM_MODEL_DIR, and resumes from the checkpoint after an interruption."""
    bundle, _ = make_bundle(tmp_path)
    code = tmp_path / "code"
    shutil.copytree(bundle.path, code)
    (code / ENTRY_POINT).write_text(launcher_source())
    model, checkpoints = tmp_path / "model", tmp_path / "checkpoints"
    env = dict(os.environ, SM_MODEL_DIR=str(model))
    command = [sys.executable, ENTRY_POINT, "--neural_checkpoint_dir", str(checkpoints)]
    first = subprocess.run(command, cwd=code, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert (checkpoints / "checkpoint.pt").exists()
    assert {"model.pt", "history.json", "checkpoint.pt"} <= {p.name for p in model.iterdir()}
    second = subprocess.run(command, cwd=code, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "resuming from the last checkpoint" in second.stderr
    start = next(json.loads(line) for line in second.stdout.splitlines() if '"start"' in line)
    assert start["resumed_from"] == 3


def test_credentials_never_leak(cloud, capsys, caplog):
    caplog.set_level(logging.DEBUG, logger="neural_jupyter")
    cloud.fake.container = recorded_container(cloud)
    run = api.submit(
        SMALL,
        "digits",
        platform="sagemaker",
        max_hours=1,
        monitor="text",
        extra={"bucket": BUCKET},
    )
    errors = []
    denied = (
        f"User with key {ACCESS_KEY_ID} is not authorized (aws_secret_access_key="
        f"{SECRET_KEY}, token {SESSION_TOKEN})"
    )
    cloud.fake.fail("POST", "/CreateTrainingJob$", **fault("access_denied", denied))
    with pytest.raises(PlatformAuthError) as caught:
        api.submit(
            SMALL,
            "digits",
            platform="sagemaker",
            max_hours=1,
            monitor="none",
            new=True,
            extra={"bucket": BUCKET},
        )
    errors.append(caught.value)
    cloud.fake.script = FAILED
    with pytest.raises(JobFailed) as failed:
        api.submit(
            SMALL,
            "digits",
            platform="sagemaker",
            max_hours=1,
            monitor="text",
            new=True,
            extra={"bucket": BUCKET},
        )
    errors.append(failed.value)
    captured = capsys.readouterr()
    plan = api.submit(SMALL, "digits", platform="sagemaker", max_hours=1, dry_run=True)
    tarballs = []
    for fake_job in cloud.fake.jobs.values():
        uri = json.loads(fake_job.hyperparameters["sagemaker_submit_directory"])
        bucket, key = split_s3_uri(uri)
        tarballs.append(cloud.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    with cloud.source_tar(next(iter(cloud.fake.jobs.values()))) as tar:
        members = "\n".join(
            tar.extractfile(m).read().decode("latin-1") for m in tar.getmembers() if m.isfile()
        )
    scan_for_secrets(
        captured.out,
        captured.err,
        caplog.text,
        str(plan),
        files_text(Path(os.environ["NEURAL_JUPYTER_HOME"])),  # job store, bundles, logs
        json.dumps([r.json for r in cloud.fake.requests]),
        members,
        *(t.decode("latin-1") for t in tarballs),
        *(str(e) for e in errors),
        *("\n".join(e._render_traceback_()) for e in errors),
        repr(run),
    )
    assert "not authorized" in str(errors[0])


# --- user code ------------------------------------------------------------------------------------
# The double runs the container with this machine's Python, whatever the image; naming an
# image keeps the tests independent of which Python versions AWS's images have.
IMAGE = f"123456789012.dkr.ecr.{REGION}.amazonaws.com/my-pytorch:py{sys.version_info[1]}"


def user_code(**options):
    """``@remote`` / ``run_script`` options for this SageMaker double."""
    return {
        "platform": "sagemaker",
        "instance": "ml.m5.xlarge",
        "max_hours": 1,
        "extra": {"bucket": BUCKET, "image": IMAGE},
        "monitor": "none",
        **options,
    }


@pytest.mark.slow
def test_a_decorated_function_runs_as_a_training_job(cloud):
    """The user-code bundle (the runner as train.py, the launcher as entry point) runs as
    SageMaker's PyTorch image would run it; the value comes back in model.tar.gz."""
    import numpy as np
    from usercode_jobs import check_raised, outer, scaled

    cloud.fake.container = real_container(cloud)
    out = neural_jupyter.remote(**user_code())(scaled)([1.0, 2.0], factor=3.0)
    np.testing.assert_array_equal(out["values"], [3.0, 6.0])
    assert out["pid"] != os.getpid()
    (job,) = cloud.fake.jobs.values()
    with cloud.source_tar(job) as tar:
        names = tar.getnames()
    assert {"launcher.py", "train.py", "payload.pkl", "job.json"} <= set(names)
    assert "neural_jupyter_progress/__init__.py" in names  # subfolders are uploaded
    assert "requirements.txt" not in names  # the toolkit would pip-install it over torch
    record = JobStore().list(platform="sagemaker")[0]
    assert record.status is JobStatus.SUCCEEDED and record.config["kind"] == "function"
    # an exception: SageMaker keeps no model.tar.gz of a failed job, so it is raised from the
    # runner's error event in the log, with the remote frames (the exception object stays there)
    with pytest.raises(neural_jupyter.RemoteError) as caught:
        neural_jupyter.remote(**user_code())(outer)(41)
    check_raised(caught.value)
    assert caught.value.exception is None
    failed = JobStore().get(caught.value.job_id)
    assert failed.status is JobStatus.FAILED and "KeyError" in failed.error


@pytest.mark.slow
def test_a_script_folder_runs_and_its_outputs_come_back(cloud, tmp_path):
    from usercode_jobs import check_script_run, make_project

    cloud.fake.container = real_container(cloud)
    project, data = make_project(tmp_path / "user")
    run = neural_jupyter.run_script(project, ["--epochs", "2"], data=data, **user_code())
    check_script_run(run)
    (job,) = cloud.fake.jobs.values()
    with cloud.source_tar(job) as tar:
        names = set(tar.getnames())
    assert {"project/train.py", "project/lib/stats.py", "data/n.txt"} <= names


@pytest.mark.slow
def test_a_cell_round_trips_an_array_and_a_dataframe(cloud, ip):
    cloud.fake.container = real_container(cloud)
    ip.run("import numpy as np, pandas as pd\nx = np.arange(6.0).reshape(2, 3)")
    ip.run("df = pd.DataFrame({'a': [1, 2]})")
    ip.run(
        f"%%neural_remote --platform sagemaker --instance ml.m5.xlarge --max-hours 1 "
        f"--set bucket={BUCKET} --set image={IMAGE} --inputs x,df --outputs y,df2 "
        "--monitor none\ny = x.T @ x\ndf2 = df.assign(b=df.a * 10)"
    )
    x = ip.ns["x"]
    assert (ip.ns["y"] == x.T @ x).all() and list(ip.ns["df2"].b) == [10, 20]
    assert JobStore().list(platform="sagemaker")[0].config["kind"] == "cell"


@pytest.mark.slow
def test_the_launcher_installs_what_the_image_lacks(cloud, tmp_path):
    from usercode_jobs import TOY_VALUE, toy_python, toy_wheel, uses_toy

    toy_wheel(tmp_path / "wheels")
    image = toy_python(tmp_path / "image", tmp_path / "wheels")
    cloud.fake.container = real_container(cloud, python=image)
    value, where = neural_jupyter.remote(**user_code(requirements=["njtoy==1.0"]))(uses_toy)()
    assert value == TOY_VALUE and Path(where).is_relative_to(tmp_path / "image")
    job = Job.load(JobStore().list(platform="sagemaker")[0].id)
    assert '"installing 1 requirement(s): njtoy==1.0"' in job.files.stdout.read_text()


def test_a_dry_run_shows_the_training_request_and_the_requirements(cloud):
    import importlib.metadata as md

    from usercode_jobs import scaled

    plan = neural_jupyter.remote(**user_code())(scaled).dry_run([1.0])
    text = str(plan)
    assert '"CreateTrainingJob"' in text and '"TrainingImage"' in text
    assert f"numpy=={md.version('numpy')}" in text and "cloudpickle==" in text
    assert '"payload.pkl"' in text and '"requirements.txt"' not in text.split('"files"')[1]
    assert plan.cost is not None and plan.cost.total_usd < 1
    assert not cloud.fake.requests and not JobStore().list()


def test_a_function_gets_an_image_with_the_notebooks_python_or_a_clear_error(cloud, monkeypatch):
    """A function travels pickled: it loads only under the Python that pickled it, so the
    image is the newest one with the notebook's Python, and without one nothing is sent."""
    from usercode_jobs import scaled

    from neural_jupyter.usercode import launch

    options = user_code(extra={"bucket": BUCKET})  # AWS's images
    monkeypatch.setattr(launch.platform, "python_version", lambda: "3.12.4")
    plan = neural_jupyter.remote(**options)(scaled).dry_run([1.0])
    image = plan.request["CreateTrainingJob"]["AlgorithmSpecification"]["TrainingImage"]
    assert image.endswith(":2.9.0-cpu-py312-ubuntu22.04-sagemaker")  # not the newest (py313)
    monkeypatch.setattr(launch.platform, "python_version", lambda: "3.9.1")
    with pytest.raises(
        ConfigurationError, match=r"run Python 3\.12, 3\.13, this notebook 3\.9"
    ) as e:
        neural_jupyter.remote(**options)(scaled).dry_run([1.0])
    assert "--set image=" in e.value.hint and "run_script" in e.value.hint
    # a script has no pickled code: it runs on the default image whatever the notebook's Python
    script = neural_jupyter.run_script(Path(__file__), dry_run=True, **options)
    image = script.request["CreateTrainingJob"]["AlgorithmSpecification"]["TrainingImage"]
    assert image.endswith(":2.10.0-cpu-py313-ubuntu22.04-sagemaker")
    assert not cloud.fake.requests and not JobStore().list()
