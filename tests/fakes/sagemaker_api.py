"""A local fake of the SageMaker JSON API (training jobs), for boto3 to talk to in tests.

moto completes training jobs at once and does not implement ``StopTrainingJob``; this fake
speaks the same wire format (AWS JSON 1.1: ``POST /`` with ``X-Amz-Target:
SageMaker.<Operation>``, errors as ``{"__type": code, "message": ...}``) for
``CreateTrainingJob``, ``DescribeTrainingJob`` and ``StopTrainingJob``, with:

* scripted state transitions: each ``DescribeTrainingJob`` answers the job's current step and
  then moves it one step on (``COMPLETED``: Starting → Downloading → Training → Uploading →
  Completed; ``FAILED`` ends with a ``FailureReason``; ``StopTrainingJob`` → Stopping →
  Stopped);
* an optional ``container(job) -> exit code``, run in a thread once a describe has shown the
  job in ``Training`` (so its log lines never come before that status); the job stays in
  Training until it returns, and a non-zero exit code fails the job with SageMaker's
  ``AlgorithmError`` reason;
* injectable faults (``fail(operation, kind, times, after=...)``): 503, throttling, access
  denied, validation, quota; ``after=True`` performs the operation and then answers with the
  fault, as when a response is lost on the way back;
* a record of every request (``requests``, ``calls(operation)``).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .base import FakeServer, Request, Response, json_response


@dataclass(frozen=True)
class Step:
    status: str  # TrainingJobStatus
    secondary: str  # SecondaryStatus
    message: str = ""
    failure_reason: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in ("Completed", "Failed", "Stopped")


STARTING = Step("InProgress", "Starting", "Launching requested ML instances")
DOWNLOADING = Step("InProgress", "Downloading", "Downloading the training image")
TRAINING = Step(
    "InProgress", "Training", "Training image download completed. Training in progress."
)
UPLOADING = Step("InProgress", "Uploading", "Uploading generated training model")
COMPLETED = (
    STARTING,
    DOWNLOADING,
    TRAINING,
    UPLOADING,
    Step("Completed", "Completed", "Training job completed"),
)
OOM_REASON = (
    'AlgorithmError: ExecuteUserScriptError:\nExitCode 1\nErrorMessage "RuntimeError: CUDA out '
    'of memory. Tried to allocate 2.00 GiB"\nCommand "/opt/conda/bin/python3.11 '
    'neural_jupyter_entry.py", exit code: 1'
)
FAILED = (
    STARTING,
    DOWNLOADING,
    TRAINING,
    Step("Failed", "Failed", "Training job failed", OOM_REASON),
)
MAX_RUNTIME = (
    STARTING,
    DOWNLOADING,
    TRAINING,
    Step(
        "Stopped",
        "MaxRuntimeExceeded",
        "Training job stopped: it exceeded MaxRuntimeInSeconds",
    ),
)
STOPPING = Step("Stopping", "Stopping", "Stopping the training job")
STOPPED = Step("Stopped", "Stopped", "The training job was stopped")

ERRORS: dict[str, tuple[int, str, str]] = {
    "unavailable": (503, "ServiceUnavailable", "Service Unavailable"),
    "internal": (500, "InternalFailure", "We encountered an internal error. Please try again."),
    "throttle": (400, "ThrottlingException", "Rate exceeded"),
    "access_denied": (
        400,
        "AccessDeniedException",
        "User: arn:aws:iam::123456789012:user/dev is not authorized to perform: "
        "sagemaker:CreateTrainingJob because no identity-based policy allows the "
        "sagemaker:CreateTrainingJob action",
    ),
    "expired": (
        400,
        "ExpiredTokenException",
        "The security token included in the request is expired",
    ),
    "validation": (
        400,
        "ValidationException",
        "Invalid MaxRuntimeInSeconds: must be at most 432000 for this instance type",
    ),
    "quota": (
        400,
        "ResourceLimitExceeded",
        "The account-level service limit 'ml.p4d.24xlarge for training job usage' is 0 "
        "Instances, with current utilization of 0 Instances and a request delta of 1 "
        "Instances. Please use AWS Service Quotas to request an increase for this quota.",
    ),
}

NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
ROLE_PATTERN = re.compile(r"^arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+$")
MAX_SECONDS = 28 * 24 * 3600


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def validation(message: str) -> ApiError:
    return ApiError(400, "ValidationException", message)


def fault(kind: str, message: str | None = None) -> dict[str, Any]:
    """``fail()``'s arguments for an error of ``kind`` (a key of ``ERRORS``)."""
    status, code, default = ERRORS[kind]
    return {"status": status, "message": message or default, "code": code}


@dataclass
class FakeTrainingJob:
    name: str
    arn: str
    request: dict[str, Any]
    script: list[Step]
    created: float = field(default_factory=time.time)
    index: int = 0
    transitions: list[dict[str, Any]] = field(default_factory=list)
    failure_reason: str | None = None
    container: threading.Thread | None = None
    container_done: threading.Event = field(default_factory=threading.Event)
    stop_requested: threading.Event = field(default_factory=threading.Event)
    exit_code: int | None = None
    ended: float | None = None

    @property
    def step(self) -> Step:
        return self.script[self.index]

    @property
    def hyperparameters(self) -> dict[str, str]:
        return dict(self.request.get("HyperParameters") or {})

    @property
    def model_uri(self) -> str:
        output = self.request["OutputDataConfig"]["S3OutputPath"].rstrip("/")
        return f"{output}/{self.name}/output/model.tar.gz"


class FakeSageMaker(FakeServer):
    """The fake API server; ``with FakeSageMaker() as fake: ... fake.endpoint``. Requests are
    recorded with the operation as their path (``/CreateTrainingJob``)."""

    def __init__(
        self,
        *,
        script: tuple[Step, ...] = COMPLETED,
        container: Callable[[FakeTrainingJob], int | None] | None = None,
        account: str = "123456789012",
        region: str = "us-east-1",
        training_seconds: int = 400,
        billable_seconds: int | None = None,
    ) -> None:
        super().__init__()
        self.script = script
        self.container = container
        self.account = account
        self.region = region
        self.training_seconds = training_seconds
        self.billable_seconds = billable_seconds
        self.jobs: dict[str, FakeTrainingJob] = {}

    def cleanup(self) -> None:
        with self.lock:
            jobs = list(self.jobs.values())
        for job in jobs:
            job.stop_requested.set()
        for job in jobs:
            if job.container is not None:
                job.container.join(timeout=30)

    @property
    def endpoint(self) -> str:
        return self.url

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return False

    # --- the API ------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        target = request.headers.get("x-amz-target", "")
        request.path = "/" + target.partition(".")[2]  # faults and calls() match operations
        return super().handle(request)

    def error(self, status: int, message: str, code: str = "InternalFailure") -> Response:
        return json_response(
            status,
            {"__type": code, "message": message},
            **{"x-amzn-RequestId": str(uuid.uuid4()), "x-amzn-ErrorType": code},
        )

    def route(self, request: Request) -> Response:
        service, _, operation = request.headers.get("x-amz-target", "").partition(".")
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            return self.error(400, "invalid JSON", "SerializationException")
        handler = getattr(self, f"op_{operation}", None)
        if service != "SageMaker" or handler is None:
            return self.error(400, operation or service, "UnknownOperationException")
        try:
            result = handler(body)
        except ApiError as exc:
            return self.error(exc.status, exc.message, exc.code)
        return json_response(200, result, **{"x-amzn-RequestId": str(uuid.uuid4())})

    def op_CreateTrainingJob(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("TrainingJobName")
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise validation(
                f"1 validation error detected: Value '{name}' at 'trainingJobName' failed to "
                f"satisfy constraint: Member must satisfy regular expression pattern: "
                f"{NAME_PATTERN.pattern}"
            )
        self._validate(body)
        with self.lock:
            if name in self.jobs:
                raise ApiError(
                    400,
                    "ResourceInUse",
                    "Training job names must be unique within an AWS account and region, and "
                    f"a training job with this name already exists ({self.jobs[name].arn})",
                )
            arn = f"arn:aws:sagemaker:{self.region}:{self.account}:training-job/{name.lower()}"
            job = FakeTrainingJob(name, arn, json.loads(json.dumps(body)), list(self.script))
            self.jobs[name] = job
            self._enter(job, 0)
        return {"TrainingJobArn": arn}

    def _validate(self, body: dict[str, Any]) -> None:
        for key in ("AlgorithmSpecification", "RoleArn", "OutputDataConfig", "ResourceConfig"):
            if not body.get(key):
                raise validation(f"{key} is required")
        if "StoppingCondition" not in body:
            raise validation("StoppingCondition is required")
        algorithm = body["AlgorithmSpecification"]
        if not algorithm.get("TrainingImage"):
            raise validation("AlgorithmSpecification.TrainingImage is required")
        if algorithm.get("TrainingInputMode") not in ("File", "Pipe", "FastFile"):
            raise validation(
                "AlgorithmSpecification.TrainingInputMode must be File, Pipe or FastFile"
            )
        if not ROLE_PATTERN.match(str(body["RoleArn"])):
            raise validation(f"Value '{body['RoleArn']}' at 'roleArn' failed to satisfy constraint")
        if not str(body["OutputDataConfig"].get("S3OutputPath", "")).startswith("s3://"):
            raise validation("OutputDataConfig.S3OutputPath must be an s3:// URI")
        resources = body["ResourceConfig"]
        if not str(resources.get("InstanceType", "")).startswith("ml."):
            raise validation(f"Invalid instance type {resources.get('InstanceType')!r}")
        if (
            int(resources.get("InstanceCount", 0)) < 1
            or int(resources.get("VolumeSizeInGB", 0)) < 1
        ):
            raise validation("InstanceCount and VolumeSizeInGB must be at least 1")
        stopping = body["StoppingCondition"]
        runtime = stopping.get("MaxRuntimeInSeconds")
        if not isinstance(runtime, int) or not 1 <= runtime <= MAX_SECONDS:
            raise validation(f"Invalid MaxRuntimeInSeconds {runtime!r}")
        if body.get("EnableManagedSpotTraining"):
            wait = stopping.get("MaxWaitTimeInSeconds")
            if not isinstance(wait, int) or wait < runtime:
                raise validation(
                    "MaxWaitTimeInSeconds must be set and at least MaxRuntimeInSeconds for "
                    "managed spot training"
                )
        for key, value in (body.get("HyperParameters") or {}).items():
            if not isinstance(value, str) or len(value) > 2500 or len(key) > 256:
                raise validation(f"Invalid hyperparameter {key!r}")
        for tag in body.get("Tags") or []:
            if not tag.get("Key") or "Value" not in tag:
                raise validation("Tags need a Key and a Value")

    def op_DescribeTrainingJob(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            job = self.jobs.get(str(body.get("TrainingJobName")))
            if job is None:
                raise validation("Requested resource not found.")
            answer = self._describe(job)
            if self._container_due(job):
                # the container starts once a describe has shown "Training", so its first
                # log lines never come before that status
                self._start_container(job)
            else:
                self._advance(job)
        return answer

    def op_StopTrainingJob(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            job = self.jobs.get(str(body.get("TrainingJobName")))
            if job is None:
                raise validation("Requested resource not found.")
            if job.step.status != "InProgress":
                raise validation(
                    f"The training job {job.name} is in status {job.step.status} and cannot "
                    "be stopped."
                )
            job.stop_requested.set()
            job.script = [*job.script[: job.index + 1], STOPPING, STOPPED]
            self._enter(job, job.index + 1)
        return {}

    # --- state machine ------------------------------------------------------------------------
    def _enter(self, job: FakeTrainingJob, index: int) -> None:
        now = time.time()
        if job.transitions:
            job.transitions[-1]["EndTime"] = now
        job.index = index
        step = job.step
        job.transitions.append(
            {"Status": step.secondary, "StartTime": now, "StatusMessage": step.message}
        )
        if step.failure_reason:
            job.failure_reason = step.failure_reason
        if step.terminal:
            job.ended = now
            job.transitions[-1]["EndTime"] = now

    def _container_due(self, job: FakeTrainingJob) -> bool:
        return (
            self.container is not None
            and job.container is None
            and job.step.secondary == "Training"
            and not job.stop_requested.is_set()
        )

    def _start_container(self, job: FakeTrainingJob) -> None:
        job.container = threading.Thread(
            target=self._run_container, args=(job,), name=f"container-{job.name}", daemon=True
        )
        job.container.start()

    def _run_container(self, job: FakeTrainingJob) -> None:
        try:
            assert self.container is not None
            code = self.container(job)
        except Exception as exc:  # a broken container fails the job like SageMaker would
            code = 1
            job.failure_reason = f"AlgorithmError: {type(exc).__name__}: {exc}"
        job.exit_code = 0 if code is None else int(code)
        job.container_done.set()

    def _advance(self, job: FakeTrainingJob) -> None:
        step = job.step
        if step.terminal or job.index + 1 >= len(job.script):
            return
        if job.container is not None and step.secondary == "Training":
            if not job.container_done.is_set():
                return  # still training
            if job.exit_code and not job.stop_requested.is_set():
                program = json.loads(job.hyperparameters.get("sagemaker_program", '"train.py"'))
                reason = job.failure_reason or (
                    f"AlgorithmError: ExecuteUserScriptError:\nExitCode {job.exit_code}\n"
                    f'Command "/opt/conda/bin/python3.11 {program}", exit code: {job.exit_code}'
                )
                job.script = [
                    *job.script[: job.index + 1],
                    Step("Failed", "Failed", "Training job failed", reason),
                ]
        self._enter(job, job.index + 1)

    def _describe(self, job: FakeTrainingJob) -> dict[str, Any]:
        request = job.request
        step = job.step
        answer: dict[str, Any] = {
            "TrainingJobName": job.name,
            "TrainingJobArn": job.arn,
            "TrainingJobStatus": step.status,
            "SecondaryStatus": step.secondary,
            "SecondaryStatusTransitions": [dict(t) for t in job.transitions],
            "AlgorithmSpecification": request["AlgorithmSpecification"],
            "RoleArn": request["RoleArn"],
            "OutputDataConfig": request["OutputDataConfig"],
            "ResourceConfig": request["ResourceConfig"],
            "StoppingCondition": request["StoppingCondition"],
            "HyperParameters": job.hyperparameters,
            "CreationTime": job.created,
            "LastModifiedTime": job.transitions[-1]["StartTime"],
            "EnableManagedSpotTraining": bool(request.get("EnableManagedSpotTraining")),
        }
        if request.get("CheckpointConfig"):
            answer["CheckpointConfig"] = request["CheckpointConfig"]
        if len(job.transitions) > 1:
            answer["TrainingStartTime"] = job.transitions[1]["StartTime"]
        if job.failure_reason and step.status in ("Failed", "Stopped"):
            answer["FailureReason"] = job.failure_reason
        if step.terminal:
            answer["TrainingEndTime"] = job.ended
            answer["TrainingTimeInSeconds"] = self.training_seconds
            billable = self.billable_seconds
            answer["BillableTimeInSeconds"] = (
                self.training_seconds if billable is None else billable
            )
        if step.status == "Completed":
            answer["ModelArtifacts"] = {"S3ModelArtifacts": job.model_uri}
        return answer
