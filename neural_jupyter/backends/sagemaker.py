"""Amazon SageMaker training jobs, through boto3 only (no ``sagemaker`` SDK).

``submit`` packs the bundle (its ``launcher.py`` is the entry point, see ``runtime/launcher.py``)
into ``source.tar.gz``, uploads it to ``s3://BUCKET/neural-jupyter/JOB/source.tar.gz`` and calls
``CreateTrainingJob`` with AWS's prebuilt PyTorch image (``image_tables/sagemaker.json``) in
script mode. ``events`` follows ``DescribeTrainingJob`` (each secondary status becomes a
``status`` event) and the job's CloudWatch log streams (each line parsed with the event
protocol). When the job ends, ``model.tar.gz`` (everything the job wrote to ``output/``,
which the launcher links to ``SM_MODEL_DIR``) is brought back into the job's
``bundle/output`` so ``TrainingRun`` and user-code results work as for a local run.

Configuration (first match wins):

* region: ``--region`` → ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` → the boto3 profile's region
* bucket: ``--set bucket=...`` → ``NEURAL_JUPYTER_SAGEMAKER_BUCKET`` → SageMaker's default
  bucket ``sagemaker-{region}-{account}`` (account from ``sts:GetCallerIdentity``; created if
  missing)
* execution role: ``--set role=...`` → ``NEURAL_JUPYTER_SAGEMAKER_ROLE`` → ``SAGEMAKER_ROLE``
* endpoints (tests, VPC endpoints): boto3's own ``AWS_ENDPOINT_URL_<SERVICE>`` variables
  (``..._SAGEMAKER``, ``..._S3``, ``..._CLOUDWATCH_LOGS``, ``..._STS``, or ``AWS_ENDPOINT_URL``
  for all); ``NEURAL_JUPYTER_SAGEMAKER_ENDPOINT`` is an alias for the SageMaker one.

Credentials come only from boto3's credential chain; their values are registered with the
redaction filter. Retries are ours (``retry``); botocore's are switched off so a create is
never repeated behind our back. The training job's name is derived from the idempotency key,
so a retried create that finds the job already there (``ResourceInUse``) is the job we
started, never a second one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from neural_jupyter.backends import base, retry
from neural_jupyter.backends.base import State
from neural_jupyter.backends.log_mirror import LogMirror
from neural_jupyter.backends.remote import LogReader, Look, RemotePlatform, StateTable
from neural_jupyter.backends.sagemaker_images import instance_family, training_image
from neural_jupyter.dsl.suggest import did_you_mean
from neural_jupyter.errors import ConfigurationError, PlatformAuthError, PlatformError
from neural_jupyter.pricing import estimate, instance_types, lookup
from neural_jupyter.redaction import register_secret
from neural_jupyter.runtime.bundle import LAUNCHER, Bundle
from neural_jupyter.runtime.events import Event, LogLine, parse_line
from neural_jupyter.runtime.jobdir import artifact_name, output_target

log = logging.getLogger(__name__)

PLATFORM = "sagemaker"
ENV_REGION = ("AWS_REGION", "AWS_DEFAULT_REGION")
ENV_BUCKET = "NEURAL_JUPYTER_SAGEMAKER_BUCKET"
ENV_ROLE = ("NEURAL_JUPYTER_SAGEMAKER_ROLE", "SAGEMAKER_ROLE")
ENV_ENDPOINT = "NEURAL_JUPYTER_SAGEMAKER_ENDPOINT"
ENV_POLL = "NEURAL_JUPYTER_SAGEMAKER_POLL_SECONDS"

S3_PREFIX = "neural-jupyter"
LOG_GROUP = "/aws/sagemaker/TrainingJobs"
PRIMARY_HOST = "algo-1"
ENTRY_POINT = LAUNCHER  # script mode runs the bundle's launcher.py
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
DEFAULT_CPU_INSTANCE = "ml.m5.xlarge"
DEFAULT_MAX_RUNTIME_HOURS = 24.0
MAX_RUNTIME_LIMIT = 28 * 24 * 3600  # SageMaker's ceiling for MaxRuntime/MaxWaitTime
DEFAULT_VOLUME_GB = 30
JOB_NAME_MAX = 63

# Files of the bundle the container must not see: SageMaker's training toolkit would
# pip-install a requirements.txt at start-up, over the image's own torch build. A user-code
# bundle's requirements are installed by the launcher instead (job.json lists them).
SKIPPED_FOR_PYTORCH = frozenset({"requirements.txt"})

# Extra settings (``--set KEY=VALUE`` / ``extra={...}``) this backend understands.
EXTRA_KEYS = {
    "bucket": "S3 bucket for the bundle and outputs",
    "role": "ARN of the SageMaker execution role",
    "instance_count": "number of instances (default 1)",
    "image": "training image URI instead of AWS's PyTorch image",
    "max_wait_hours": "spot only: how long to wait for capacity plus run (default 2x runtime)",
    "prefix": f"S3 key prefix (default {S3_PREFIX!r})",
}

# (TrainingJobStatus, SecondaryStatus) -> our state; "*" stands for any secondary status.
STATE_TABLE = StateTable(
    {
        ("InProgress", "Starting"): State.PENDING,
        ("InProgress", "Pending"): State.PENDING,
        ("InProgress", "LaunchingMLInstances"): State.PENDING,
        ("InProgress", "PreparingTrainingStack"): State.PENDING,
        ("InProgress", "Downloading"): State.PENDING,
        ("InProgress", "DownloadingTrainingImage"): State.PENDING,
        ("InProgress", "Interrupted"): State.PENDING,  # spot capacity reclaimed; waits to restart
        ("InProgress", "Restarting"): State.PENDING,
        ("InProgress", "Training"): State.RUNNING,
        ("InProgress", "Uploading"): State.RUNNING,
        ("InProgress", "Updating"): State.RUNNING,
        ("InProgress", "*"): State.RUNNING,
        ("Stopping", "*"): State.RUNNING,  # still billed until it is Stopped
        ("Completed", "*"): State.SUCCEEDED,
        ("Failed", "*"): State.FAILED,
        ("Stopped", "MaxRuntimeExceeded"): State.FAILED,
        ("Stopped", "MaxWaitTimeExceeded"): State.FAILED,
        ("Stopped", "*"): State.CANCELLED,
        ("Deleting", "*"): State.UNKNOWN,
    }
)
TIMED_OUT_STATUSES = frozenset({"MaxRuntimeExceeded", "MaxWaitTimeExceeded"})

AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "InvalidAccessKeyId",
        "MissingAuthenticationToken",
        "NotAuthorized",
        "AuthFailure",
        "InvalidToken",
        "403",
    }
)
EXISTS_CODES = frozenset({"ResourceInUse", "ConflictException"})
NOT_FOUND_CODES = frozenset({"ResourceNotFound", "ResourceNotFoundException"})
METRIC_NAMES = ("loss", "accuracy", "val_loss", "val_accuracy")
DOCS = "see docs/platforms/sagemaker.md for the credentials and IAM permissions it needs"
LOGIN = (
    "run `aws configure` or `aws sso login`, set AWS_PROFILE, or set "
    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
)


def read_aws(exc: BaseException) -> retry.Failure:
    """A botocore ``ClientError`` (code, message, HTTP status), or any other exception."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        return retry.Failure(
            exc, status, str(error.get("Code") or ""), str(error.get("Message") or "")
        )
    return retry.Failure(exc, message=f"{type(exc).__name__}: {exc}")


FAULTS = retry.FaultPolicy(
    PLATFORM,
    "AWS",
    read=read_aws,
    auth_hint=DOCS,
    rules=(
        retry.Rule(retry.AUTH, codes=AUTH_CODES),
        retry.Rule(
            retry.QUOTA,
            codes=("ResourceLimitExceeded", "ServiceQuotaExceededException"),
            hint="ask for more in Service Quotas (SageMaker: '<instance> for training job "
            "usage'), or pick another instance type or region",
        ),
        retry.Rule(
            retry.UNAVAILABLE,
            retry=True,
            codes=(
                "Throttling",
                "ThrottlingException",
                "ThrottledException",
                "RequestThrottled",
                "RequestThrottledException",
                "TooManyRequestsException",
                "RequestLimitExceeded",
                "ProvisionedThroughputExceededException",
                "SlowDown",
                "ServiceUnavailable",
                "ServiceUnavailableException",
                "InternalFailure",
                "InternalError",
                "InternalServerError",
                "InternalServerException",
                "RequestTimeout",
                "RequestTimeoutException",
                "PriorRequestNotComplete",
            ),
        ),
        retry.Rule(retry.UNAVAILABLE, statuses=retry.TRANSIENT_HTTP_STATUS, retry=True),
        retry.Rule(
            retry.AUTH,
            types=(
                "NoCredentialsError",
                "PartialCredentialsError",
                "CredentialRetrievalError",
                "TokenRetrievalError",
                "SSOTokenLoadError",
                "UnauthorizedSSOTokenError",
                "NoAuthTokenError",
            ),
            message="{action} failed: no usable AWS credentials ({text})",
            hint=f"{LOGIN}; {DOCS}",
        ),
        retry.Rule(exact_types=("SSLError",)),  # a certificate problem does not heal by retrying
        retry.Rule(retry.UNAVAILABLE, types=("ConnectionError", "HTTPClientError"), retry=True),
    ),
)


def _code(exc: BaseException) -> tuple[str, str]:
    failure = read_aws(exc)
    return failure.code, failure.message


def _already_exists(exc: BaseException) -> bool:
    code, message = _code(exc)
    lowered = message.lower()
    return code in EXISTS_CODES or (
        code == "ValidationException"
        and ("already exists" in lowered or "must be unique" in lowered)
    )


def _not_found(exc: BaseException) -> bool:
    code, message = _code(exc)
    return code in NOT_FOUND_CODES or (
        code == "ValidationException" and "not found" in message.lower()
    )


class TrainingJobNotFound(PlatformError):
    """SageMaker has no training job of that name in that region."""


# --- names and small helpers ------------------------------------------------------------------
def job_name_for(idempotency_key: str) -> str:
    """The training job name for an idempotency key: stable, ≤ 63 chars of [a-zA-Z0-9-]."""
    return base.name_for(
        idempotency_key, JOB_NAME_MAX, allowed="a-zA-Z0-9", lower=False, exact=True
    )


def split_s3_uri(uri: str) -> tuple[str, str]:
    match = re.match(r"^s3://([^/]+)/(.+)$", uri)
    if not match:
        raise PlatformError(f"not an S3 URI: {uri!r}", platform=PLATFORM)
    return match.group(1), match.group(2)


def _timestamp(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    return None


def state_of(description: Mapping[str, Any]) -> str:
    """Our state for a ``DescribeTrainingJob`` answer (see ``STATE_TABLE``)."""
    primary = str(description.get("TrainingJobStatus", ""))
    secondary = str(description.get("SecondaryStatus", ""))
    return STATE_TABLE.state((primary, secondary), (primary, "*"))


def _exit_code(reason: str | None) -> int | None:
    match = re.search(r"exit ?code[\s:=]*(-?\d+)", reason or "", re.IGNORECASE)
    return int(match.group(1)) if match else None


def billing_from(description: Mapping[str, Any]) -> dict[str, Any]:
    """Billable time, training time and (managed spot) the saving, from a description."""
    billable = description.get("BillableTimeInSeconds")
    training = description.get("TrainingTimeInSeconds")
    spot = bool(description.get("EnableManagedSpotTraining"))
    resources = description.get("ResourceConfig") or {}
    instance = resources.get("InstanceType")
    count = int(resources.get("InstanceCount") or 1)
    info: dict[str, Any] = {
        "billable_seconds": billable,
        "training_seconds": training,
        "instance_type": instance,
        "instance_count": count,
        "spot": spot,
        "spot_savings": None,
        "list_price_usd": None,
    }
    if spot and billable is not None and training:
        info["spot_savings"] = round(1.0 - billable / training, 4)
    offer = lookup(PLATFORM, instance) if billable is not None and instance else None
    if offer is not None:  # list price on demand: with spot the actual bill is lower still
        info["list_price_usd"] = round(billable / 3600 * offer.hourly_usd * count, 4)
    return info


def billing_summary(info: Mapping[str, Any]) -> str | None:
    billable = info.get("billable_seconds")
    if billable is None:
        return None
    text = f"billable time {billable} s on {info['instance_count']} × {info['instance_type']}"
    if info.get("list_price_usd") is not None:
        text += f" (≈ ${info['list_price_usd']:.2f} at the on-demand list price)"
    if info.get("spot_savings") is not None:
        text += (
            f"; managed spot saved {info['spot_savings']:.0%} of "
            f"{info['training_seconds']} s training time"
        )
    return text


# --- configuration ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SageMakerConfig:
    """Where jobs go: resolved from resources, environment and the boto3 profile."""

    region: str
    role: str
    bucket: str | None  # None: SageMaker's default bucket (account looked up at submit)
    prefix: str = S3_PREFIX
    instance_count: int = 1
    image: str | None = None
    max_wait_hours: float | None = None


def _env_first(names: tuple[str, ...] | str) -> str | None:
    for name in (names,) if isinstance(names, str) else names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _check_extra(extra: Mapping[str, Any]) -> None:
    for key in extra:
        if key not in EXTRA_KEYS:
            raise ConfigurationError(
                f"unknown SageMaker setting '{key}'",
                hint=did_you_mean(key, EXTRA_KEYS)
                or "known: " + ", ".join(f"{k} ({v})" for k, v in EXTRA_KEYS.items()),
            )


def _positive(extra: Mapping[str, Any], key: str, kind: type) -> Any:
    value = extra.get(key)
    if value is None:
        return None
    number = None
    if not isinstance(value, bool):
        with contextlib.suppress(TypeError, ValueError):
            number = kind(value)
    if number is None or number <= 0 or (kind is int and number != float(value)):
        raise ConfigurationError(f"--set {key} must be a positive number, got {value!r}")
    return number


def instance_type_for(resources: base.ResourceSpec) -> str:
    """The instance type: as given, else the cheapest known one with ``gpus`` GPUs."""

    offers = instance_types(PLATFORM)
    if resources.instance_type:
        instance = resources.instance_type
        instance_family(instance)  # raises for names that are not ml.* instance types
        known = next((o for o in offers if o.instance_type == instance), None)
        if known is not None and resources.gpus and known.gpus < resources.gpus:
            raise ConfigurationError(
                f"{instance} has {known.gpus} GPU(s); --gpus {resources.gpus} needs a bigger one",
                hint=", ".join(o.instance_type for o in offers if o.gpus >= resources.gpus) or None,
            )
        return instance
    if not resources.gpus:
        return DEFAULT_CPU_INSTANCE
    wanted = (resources.gpu_type or "").lower()
    matches = [
        o
        for o in offers
        if o.gpus == resources.gpus and (not wanted or (o.gpu_type or "").lower() == wanted)
    ]
    if not matches:
        raise ConfigurationError(
            f"no known SageMaker instance has {resources.gpus} {resources.gpu_type or ''} GPU(s)",
            hint="name one with --instance (e.g. ml.g5.xlarge)",
        )
    return matches[0].instance_type


def max_runtime_seconds(resources: base.ResourceSpec) -> int:
    seconds = resources.max_seconds or DEFAULT_MAX_RUNTIME_HOURS * 3600
    return max(1, min(MAX_RUNTIME_LIMIT, math.ceil(seconds)))


# --- the source archive -----------------------------------------------------------------------
def source_files(bundle: Bundle) -> list[str]:
    """The bundle files that go into source.tar.gz, subfolders included (launcher.py is the
    entry point)."""
    framework = str(bundle.job.get("framework", "pytorch"))
    skipped = SKIPPED_FOR_PYTORCH if framework == "pytorch" else frozenset()
    return bundle.files(exclude=tuple(skipped))


def write_source_archive(bundle: Bundle, destination: Path) -> str:
    """Write the bundle as a reproducible tar.gz (owners and times zeroed); its sha256."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with (
        destination.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name in source_files(bundle):
            path = bundle.path / name
            info = tarfile.TarInfo(name)
            info.mode, info.mtime, info.uid, info.gid = 0o644, 0, 0, 0
            info.size = path.stat().st_size
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    digest = hashlib.sha256()
    with destination.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _safe_extract(archive: Path, destination: Path) -> list[Path]:
    """Extract regular files and directories only, never outside ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    root = destination.resolve()
    extracted = []
    with tarfile.open(archive, "r:*") as tar:
        for member in tar.getmembers():
            target = (root / member.name).resolve()
            if not (member.isfile() or member.isdir()) or (
                target != root and root not in target.parents
            ):
                log.warning("skipping %s in model.tar.gz (not a plain file inside it)", member.name)
                continue
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            if source is None:
                continue
            with source, target.open("wb") as out:
                shutil.copyfileobj(source, out)
            extracted.append(target)
    return extracted


class _Clients:
    def __init__(self, factory: Callable[[str], Any]) -> None:
        self._factory = factory
        self._made: dict[str, Any] = {}

    def __getattr__(self, service: str) -> Any:
        if service.startswith("_"):
            raise AttributeError(service)
        if service not in self._made:
            self._made[service] = self._factory(service)
        return self._made[service]


# --- the backend ------------------------------------------------------------------------------
class SageMakerBackend(RemotePlatform):
    name = PLATFORM
    label = "Amazon SageMaker"
    extra = "sagemaker"
    sdk_modules: ClassVar[Mapping[str, str]] = {"boto3": "boto3", "botocore": "boto3"}
    paid = True
    price_table = PLATFORM
    faults = FAULTS
    max_nodes = 100  # InstanceCount: each instance one node of the torchrun job

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, Any] = {}
        self._clients: dict[tuple, Any] = {}

    # --- boto3 plumbing -----------------------------------------------------------------------
    @property
    def poll_seconds(self) -> float:  # type: ignore[override]
        value = os.environ.get(ENV_POLL, "").strip()
        try:
            return max(0.01, float(value)) if value else 5.0
        except ValueError:
            raise ConfigurationError(
                f"{ENV_POLL} must be a number of seconds, got {value!r}"
            ) from None

    def _session(self) -> Any:
        """One boto3 session per credential setting (profile, key id, config files)."""
        self.require_sdk()
        boto3 = self.sdk("boto3")
        names = (
            "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE",
            "AWS_ACCESS_KEY_ID",  # an id, not a secret; new temporary keys get new ids
            "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE",
        )
        key = "\0".join(os.environ.get(n, "") for n in names)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                session = boto3.session.Session()
                self._sessions = {key: session}
                self._clients = {}
            return session

    def _credentials(self, session: Any) -> Any:
        """The session's credentials (their values registered with the redaction filter)."""
        try:
            credentials = session.get_credentials()
        except Exception as exc:  # SSO/assume-role failures surface as auth errors
            raise FAULTS.translate(exc, "reading AWS credentials") from None
        if credentials is not None:
            frozen = credentials.get_frozen_credentials()
            for value in (frozen.access_key, frozen.secret_key, frozen.token):
                register_secret(value)
        return credentials

    def _client(self, service: str, region: str) -> Any:
        from botocore.config import Config

        session = self._session()
        endpoint = _env_first(ENV_ENDPOINT) if service == "sagemaker" else None
        overrides = tuple(
            sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_ENDPOINT_URL"))
        )
        key = (id(session), service, region, endpoint, overrides)
        with self._lock:
            client = self._clients.get(key)
        if client is not None:
            return client
        self._credentials(session)
        config = Config(
            retries={"total_max_attempts": 1, "mode": "standard"},  # we retry, see module doc
            connect_timeout=10,
            read_timeout=70,
        )
        client = session.client(service, region_name=region, endpoint_url=endpoint, config=config)
        with self._lock:
            self._clients[key] = client
        return client

    def clients(self, region: str) -> _Clients:
        return _Clients(lambda service: self._client(service, region))

    # --- configuration ------------------------------------------------------------------------
    def region(self, given: str | None = None) -> str:
        """``given`` → AWS_REGION / AWS_DEFAULT_REGION → the boto3 profile's region."""
        region = given or _env_first(ENV_REGION) or self.sdk("boto3").session.Session().region_name
        if not region:
            raise ConfigurationError(
                "no AWS region configured for SageMaker",
                hint="pass --region us-east-1 (region=...), set AWS_REGION, or "
                "`aws configure set region us-east-1`",
            )
        if not _REGION.match(region):
            raise ConfigurationError(f"'{region}' is not an AWS region name (e.g. us-east-1)")
        return region

    def config(self, resources: base.ResourceSpec) -> SageMakerConfig:
        """Region, role, bucket and extras for ``resources`` (no network)."""
        extra = dict(resources.extra or {})
        _check_extra(extra)
        region = self.region(resources.region)
        role = str(extra.get("role") or _env_first(ENV_ROLE) or "")
        if not role:
            raise ConfigurationError(
                "SageMaker needs an execution role: the IAM role the training job runs as "
                "(it reads the bundle from S3 and writes the model back)",
                hint="set NEURAL_JUPYTER_SAGEMAKER_ROLE=arn:aws:iam::<account>:role/<name> "
                "(SAGEMAKER_ROLE works too), or pass --set role=<ARN> "
                "(extra={'role': ...}); docs/platforms/sagemaker.md shows how to create one",
            )
        if not _ROLE_ARN.match(role):
            raise ConfigurationError(
                f"the SageMaker execution role must be a role ARN, got {role!r}",
                hint="it looks like arn:aws:iam::123456789012:role/SageMakerExecution",
            )
        bucket = str(extra.get("bucket") or _env_first(ENV_BUCKET) or "") or None
        if bucket is not None:
            bucket = bucket.removeprefix("s3://").strip("/")
            if not _BUCKET.match(bucket):
                raise ConfigurationError(f"'{bucket}' is not an S3 bucket name")
        prefix = str(extra.get("prefix") or S3_PREFIX).strip("/")
        image = extra.get("image")
        count = _positive(extra, "instance_count", int) or resources.nodes
        if count != resources.nodes:
            # instances are the nodes of one data-parallel job: one way to say how many
            raise ConfigurationError(
                f"--set instance_count={count} and --nodes {resources.nodes} disagree: each "
                "instance is one node of a data-parallel job",
                hint=f"use --nodes {count} (nodes={count}) alone",
            )
        return SageMakerConfig(
            region=region,
            role=role,
            bucket=bucket,
            prefix=prefix,
            instance_count=count,
            image=str(image) if image else None,
            max_wait_hours=_positive(extra, "max_wait_hours", float),
        )

    @staticmethod
    def job_name(job: base.RemoteJob) -> str:
        return (
            job.remote_id
            or str(job.details.get("job_name") or "")
            or job_name_for(job.idempotency_key)
        )

    def _region_of(self, job: base.RemoteJob) -> str:
        resources = job.details.get("resources") or {}
        return str(job.details.get("region") or self.region(resources.get("region")))

    # --- the request --------------------------------------------------------------------------
    def training_request(
        self,
        job: base.RemoteJob,
        resources: base.ResourceSpec,
        config: SageMakerConfig,
        bucket: str,
    ) -> dict[str, Any]:
        """The exact ``CreateTrainingJob`` parameters for ``job`` (nothing secret in them)."""
        name = self.job_name(job)
        instance = instance_type_for(resources)
        root = f"s3://{bucket}/{config.prefix}/{name}"
        runtime = max_runtime_seconds(resources)
        hyperparameters = {
            # script mode of AWS's framework images; values JSON-encoded like the SDK does
            "sagemaker_program": json.dumps(ENTRY_POINT),
            "sagemaker_submit_directory": json.dumps(f"{root}/source.tar.gz"),
            "sagemaker_region": json.dumps(config.region),
            "sagemaker_container_log_level": "20",
            "sagemaker_job_name": json.dumps(name),
        }
        if resources.world_size > 1:  # every instance runs launcher.py, which runs torchrun
            # with its node rank and algo-1's address from SM_HOSTS / SM_CURRENT_HOST
            hyperparameters["nnodes"] = str(resources.nodes)
            hyperparameters["nproc-per-node"] = str(resources.procs_per_node)
        request: dict[str, Any] = {
            "TrainingJobName": name,
            "AlgorithmSpecification": {
                "TrainingImage": config.image
                or training_image(config.region, instance, self.image_row(job)),
                "TrainingInputMode": "File",
                "MetricDefinitions": [
                    {"Name": metric, "Regex": rf'"event": "epoch".*?"{metric}": ([-0-9.eE+]+)'}
                    for metric in METRIC_NAMES
                ],
            },
            "RoleArn": config.role,
            "HyperParameters": hyperparameters,
            "OutputDataConfig": {"S3OutputPath": f"{root}/output"},
            "ResourceConfig": {
                "InstanceType": instance,
                "InstanceCount": config.instance_count,
                "VolumeSizeInGB": math.ceil(resources.disk_gb or DEFAULT_VOLUME_GB),
            },
            "StoppingCondition": {"MaxRuntimeInSeconds": runtime},
            "Environment": {
                "PYTHONUNBUFFERED": "1",
                "PYTHONDONTWRITEBYTECODE": "1",
                "KERAS_BACKEND": "torch",
            },
            "Tags": [
                {"Key": "neural-jupyter:job-id", "Value": job.id},
                {"Key": "neural-jupyter:idempotency-key", "Value": job.idempotency_key},
            ],
        }
        if resources.spot:
            wait_hours = config.max_wait_hours
            wait = math.ceil(wait_hours * 3600) if wait_hours else 2 * runtime
            if wait < runtime:
                raise ConfigurationError(
                    f"--set max_wait_hours={wait_hours:g} is shorter than the run's budget "
                    f"({runtime / 3600:g} h); spot jobs wait for capacity within it",
                )
            request["EnableManagedSpotTraining"] = True
            request["StoppingCondition"]["MaxWaitTimeInSeconds"] = min(wait, MAX_RUNTIME_LIMIT)
            request["CheckpointConfig"] = {
                "S3Uri": f"{root}/checkpoints",
                "LocalPath": CHECKPOINT_LOCAL_PATH,
            }
            hyperparameters["neural_checkpoint_dir"] = json.dumps(CHECKPOINT_LOCAL_PATH)
        return request

    def plan(self, job: base.RemoteJob, resources: base.ResourceSpec) -> dict[str, Any]:
        """The upload target and the exact ``CreateTrainingJob`` request; sends nothing."""
        config = self.config(resources)
        bucket = config.bucket or f"sagemaker-{config.region}-<account-id>"
        request = self.training_request(job, resources, config, bucket)
        source = json.loads(request["HyperParameters"]["sagemaker_submit_directory"])
        plan: dict[str, Any] = {
            "backend": PLATFORM,
            "region": config.region,
            "upload": {
                "uri": source,
                "files": [f for f in job.bundle_files if f not in SKIPPED_FOR_PYTORCH],
            },
            "CreateTrainingJob": request,
            "logs": f"CloudWatch Logs {LOG_GROUP}, streams {request['TrainingJobName']}/algo-*",
        }
        if config.bucket is None:
            plan["notes"] = [
                "bucket: SageMaker's default bucket; <account-id> is looked up with "
                "sts:GetCallerIdentity at submit, and the bucket is created if missing"
            ]
        return plan

    def estimate_cost(self, resources: base.ResourceSpec) -> base.CostEstimate | None:
        """List price × the run's budget (``--max-hours``, default 24 h) × instances."""
        instance = instance_type_for(resources)
        _check_extra(resources.extra or {})
        count = _positive(resources.extra or {}, "instance_count", int) or resources.nodes
        hours = max_runtime_seconds(resources) / 3600
        cost = estimate(PLATFORM, instance, hours, spot=resources.spot)
        if count > 1:
            cost = dataclasses.replace(
                cost,
                hourly_usd=cost.hourly_usd * count,
                note=f"{count} instances; {cost.note}".rstrip("; "),
            )
        return cost

    def check_credentials(self) -> None:
        if self._credentials(self._session()) is None:
            raise PlatformAuthError(
                "no AWS credentials found", platform=PLATFORM, hint=f"{LOGIN}; {DOCS}"
            )

    # --- submit -------------------------------------------------------------------------------
    def _bucket(self, clients: _Clients, config: SageMakerConfig) -> str:
        if config.bucket:
            bucket, default = config.bucket, False
        else:
            identity = self.call("sts:GetCallerIdentity", clients.sts.get_caller_identity)
            bucket, default = f"sagemaker-{config.region}-{identity['Account']}", True

        def exists() -> bool:
            try:
                clients.s3.head_bucket(Bucket=bucket)
            except Exception as exc:
                if _code(exc)[0] in {"404", "NoSuchBucket"}:
                    return False
                raise
            return True

        if self.call(f"checking bucket {bucket}", exists):
            return bucket
        if not default:
            raise ConfigurationError(
                f"the S3 bucket '{bucket}' does not exist (or is in another account)",
                hint="create it in the job's region, or leave the bucket unset to use "
                "SageMaker's default bucket",
            )
        params: dict[str, Any] = {"Bucket": bucket}
        if config.region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": config.region}
        self.call(f"creating bucket {bucket}", lambda: clients.s3.create_bucket(**params))
        log.info("created SageMaker's default bucket %s", bucket)
        return bucket

    def submit(
        self, bundle: Bundle, job: base.RemoteJob, resources: base.ResourceSpec
    ) -> base.Submission:
        config = self.config(resources)
        clients = self.clients(config.region)
        bucket = self._bucket(clients, config)
        request = self.training_request(job, resources, config, bucket)
        name = request["TrainingJobName"]
        source = json.loads(request["HyperParameters"]["sagemaker_submit_directory"])
        _, key = split_s3_uri(source)
        archive = job.files.scratch("source.tar.gz")
        try:
            sha256 = write_source_archive(bundle, archive)

            def upload() -> Any:
                with archive.open("rb") as body:
                    return clients.s3.put_object(
                        Bucket=bucket, Key=key, Body=body, ContentType="application/gzip"
                    )

            self.call(f"uploading the bundle to {source}", upload)
        finally:
            archive.unlink(missing_ok=True)
        _, outcome = self.submit_once(
            "CreateTrainingJob",
            lambda: clients.sagemaker.create_training_job(**request),
            exists=_already_exists,  # the name comes from the idempotency key: it is this job
        )
        log.info("SageMaker training job %s: %s", name, outcome)
        details = {
            "job_name": name,
            "region": config.region,
            "bucket": bucket,
            "source": source,
            "source_sha256": sha256,
            "output": request["OutputDataConfig"]["S3OutputPath"],
            "image": request["AlgorithmSpecification"]["TrainingImage"],
            "instance_type": request["ResourceConfig"]["InstanceType"],
            "instance_count": request["ResourceConfig"]["InstanceCount"],
            "max_runtime_seconds": request["StoppingCondition"]["MaxRuntimeInSeconds"],
            "spot": bool(resources.spot),
            "log_group": LOG_GROUP,
            "console": f"https://{config.region}.console.aws.amazon.com/sagemaker/home"
            f"?region={config.region}#/jobs/{name}",
        }
        if outcome != "created":
            details["existing"] = outcome
        return base.Submission(name, details)

    # --- status -------------------------------------------------------------------------------
    def describe(self, job: base.RemoteJob, clients: _Clients | None = None) -> dict[str, Any]:
        """``DescribeTrainingJob`` for ``job`` (``TrainingJobNotFound`` if there is none)."""
        region = self._region_of(job)
        clients = clients or self.clients(region)
        name = self.job_name(job)

        def call() -> dict[str, Any]:
            try:
                return clients.sagemaker.describe_training_job(TrainingJobName=name)
            except Exception as exc:
                if _not_found(exc):
                    raise TrainingJobNotFound(
                        f"there is no training job {name} in {region}", platform=PLATFORM
                    ) from None
                raise

        return self.call(f"DescribeTrainingJob {name}", call)

    def look(self, job: base.RemoteJob) -> Look:
        try:
            description = self.describe(job)
        except TrainingJobNotFound as exc:
            return Look(base.RemoteStatus(State.UNKNOWN, message=exc.message), gone=True)
        return Look(self.status_from(description), raw=description)

    @staticmethod
    def status_from(description: Mapping[str, Any]) -> base.RemoteStatus:
        state = state_of(description)
        primary = description.get("TrainingJobStatus")
        secondary = str(description.get("SecondaryStatus") or "")
        reason = description.get("FailureReason")
        if secondary in TIMED_OUT_STATUSES:
            return base.RemoteStatus(
                State.FAILED,
                None,
                f"stopped at its time limit ({secondary}" + (f": {reason})" if reason else ")"),
                timed_out=True,
            )
        if state == State.SUCCEEDED:
            return base.RemoteStatus(
                State.SUCCEEDED, 0, billing_summary(billing_from(description)) or "Completed"
            )
        if state == State.FAILED:
            return base.RemoteStatus(
                State.FAILED, _exit_code(reason), reason or f"{primary}: {secondary}"
            )
        if state == State.CANCELLED:
            return base.RemoteStatus(State.CANCELLED, None, reason or "stopped (StopTrainingJob)")
        transitions = description.get("SecondaryStatusTransitions") or []
        message = transitions[-1].get("StatusMessage") if transitions else None
        return base.RemoteStatus(state, None, f"{secondary}: {message}" if message else secondary)

    def billing(self, job: base.RemoteJob) -> dict[str, Any]:
        """Billable and training seconds, and for managed spot the saving (0.7 = 70 %)."""
        return billing_from(self.describe(job))

    # --- events -------------------------------------------------------------------------------
    def log_reader(self, job: base.RemoteJob) -> LogReader:
        return _CloudWatchReader(self, job)

    def after_end(self, job: base.RemoteJob, look: Look) -> Iterator[base.StreamItem]:
        summary = billing_summary(billing_from(look.raw or {}))
        if summary:
            yield _status_event(summary, status=(look.raw or {}).get("TrainingJobStatus"))
        yield from super().after_end(job, look)

    # --- artifacts ----------------------------------------------------------------------------
    def fetch_artifacts(
        self, job: base.RemoteJob, destination: Path | None = None
    ) -> dict[str, Path]:
        """Download ``model.tar.gz`` and unpack every file of it (default: the job's
        ``bundle/output``); nothing when SageMaker uploaded none (a failed job)."""
        clients = self.clients(self._region_of(job))
        destination = destination or job.files.output
        description = self.describe(job, clients)
        uri = (description.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
        if not uri:
            return {}
        bucket, key = split_s3_uri(uri)
        destination.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=destination.parent, prefix=".model-", suffix=".tar.gz.part", delete=False
        ) as handle:
            partial = Path(handle.name)

        def fetch() -> bool:
            try:
                response = clients.s3.get_object(Bucket=bucket, Key=key)
            except Exception as exc:
                if _code(exc)[0] in {"NoSuchKey", "404"}:
                    return False  # SageMaker uploads model.tar.gz when a job completes
                raise
            with partial.open("wb") as out:
                shutil.copyfileobj(response["Body"], out)
            return True

        try:
            if not self.call(f"downloading {uri}", fetch):
                return {}
            extracted = _safe_extract(partial, destination)
        finally:
            partial.unlink(missing_ok=True)
        found = {}
        for path in extracted:
            relative = path.relative_to(destination.resolve()).as_posix()
            if output_target(destination, relative) is not None:
                found[artifact_name(relative)] = path
        return found

    # --- cancel -------------------------------------------------------------------------------
    def cancel(self, job: base.RemoteJob) -> None:
        clients = self.clients(self._region_of(job))
        name = self.job_name(job)

        def stop() -> None:
            try:
                clients.sagemaker.stop_training_job(TrainingJobName=name)
            except Exception as exc:
                code, message = _code(exc)
                if code == "ValidationException" and "status" in message.lower():
                    log.info("%s has already ended: %s", name, message)  # nothing left to stop
                    return
                raise

        self.call(f"StopTrainingJob {name}", stop)


def _status_event(message: str, **fields: Any) -> Event:
    return base.status_event(message, source=PLATFORM, **fields)


class _CloudWatchReader(LogReader):
    """Secondary-status transitions and the job's log streams (``<job>/algo-*``), each read
    onward from where it last stopped, mirrored into the job's directory."""

    def __init__(self, backend: SageMakerBackend, job: base.RemoteJob) -> None:
        self.backend = backend
        self.clients = backend.clients(backend._region_of(job))
        self.prefix = f"{backend.job_name(job)}/algo-"
        self.mirror = LogMirror(job.directory)
        self.tokens: dict[str, str] = {}
        self.streams: list[str] = []
        self.seen: set[tuple] = set()
        self.lines = 0
        self.told_no_logs = False

    def read(self, look: Look, follow: bool) -> Iterator[base.StreamItem]:
        description = look.raw or {}
        for index, transition in enumerate(description.get("SecondaryStatusTransitions") or []):
            # by position: a spot job that restarts goes through Starting... again; the
            # current entry's message may change while it lasts
            status, message = transition.get("Status"), transition.get("StatusMessage")
            if (index, status, message) in self.seen:
                continue
            self.seen.add((index, status, message))
            yield _status_event(
                f"{status}: {message}" if message else str(status),
                status=status,
                time=_timestamp(transition.get("StartTime")),
            )
        for item, line in self._new_lines():
            self.lines += 1
            stream = "stderr" if isinstance(item, LogLine) else "stdout"
            self.mirror.add(line, self.lines, stream)
            yield item
        if not self.streams and not self.told_no_logs:
            self.told_no_logs = True
            yield _status_event(
                "SageMaker wrote no training log for this job (it ended before its container "
                "started)"
                if look.status.is_terminal
                else "SageMaker logs are not available yet: CloudWatch gets the training log "
                f"once the container starts (now: {description.get('SecondaryStatus')})"
            )

    def _list_streams(self) -> list[str]:
        def call() -> list[str]:
            names: list[str] = []
            kwargs: dict[str, Any] = {"logGroupName": LOG_GROUP, "logStreamNamePrefix": self.prefix}
            try:
                while True:
                    page = self.clients.logs.describe_log_streams(**kwargs)
                    names.extend(s["logStreamName"] for s in page.get("logStreams", []))
                    if not page.get("nextToken"):
                        return names
                    kwargs["nextToken"] = page["nextToken"]
            except Exception as exc:
                if _not_found(exc):
                    return []  # no job in this region has logged yet
                raise

        return sorted(self.backend.call("DescribeLogStreams", call))

    def _new_lines(self) -> Iterator[tuple[Event | LogLine, str]]:
        """New lines of every stream, parsed, with the line as kept in the mirror."""
        self.streams = self._list_streams()
        hosts = [stream[len(self.prefix) - len("algo-") :] for stream in self.streams]
        primary = next((h for h in hosts if h.rsplit("-", 1)[0] == PRIMARY_HOST), None)
        primary = primary or (hosts[0] if hosts else None)
        for stream, host in zip(self.streams, hosts, strict=True):
            label = host.rsplit("-", 1)[0] if host.count("-") > 1 else host
            for message in self._read_stream(stream):
                for line in message.rstrip("\n").split("\n"):
                    line = line.rstrip("\r")
                    if host != primary:
                        text = f"[{label}] {line}"
                        yield LogLine(text, "stderr"), text
                        continue
                    item = parse_line(line, "stdout")
                    if isinstance(item, LogLine):
                        # CloudWatch merges stdout and stderr; train.py writes only events to
                        # stdout, so every other line is treated as stderr.
                        item = LogLine(line, "stderr")
                    yield item, line

    def _read_stream(self, stream: str) -> Iterator[str]:
        while True:
            token = self.tokens.get(stream)
            kwargs: dict[str, Any] = {
                "logGroupName": LOG_GROUP,
                "logStreamName": stream,
                "startFromHead": True,
            }
            if token:
                kwargs["nextToken"] = token
            page = self.backend.call(
                f"GetLogEvents {stream}", lambda k=kwargs: self.clients.logs.get_log_events(**k)
            )
            events = page.get("events") or []
            for event in events:
                yield str(event.get("message", ""))
            new = page.get("nextForwardToken")
            if new:
                self.tokens[stream] = new
            if not events or new == token:
                return
