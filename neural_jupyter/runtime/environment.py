"""Which platform this process runs on, from environment variables and paths only.

Every detector is a pure function of ``environ`` (a mapping of environment variables),
``path_exists`` and ``read_text`` (file contents or ``None``), so tests pass fakes. Nothing is
imported from the platform (``google.colab`` is never imported) and nothing touches the network.

Detectors run in ``PRIORITY`` order and the first match wins; ``detect_platforms`` lists all
matches. The order, most specific first:

1. ``sagemaker-training``: a training-job container runs inside AWS infrastructure that can
   look like a notebook instance, and what runs there is a job, not a notebook.
2. ``kaggle`` before ``colab``: Kaggle's image is built on Colab's and may carry ``COLAB_*``.
3. ``colab``, ``databricks``: set by the service itself, never by a user's CLI.
4. ``sagemaker-studio`` before ``sagemaker-notebook``: Studio marks itself explicitly; a
   notebook instance is recognised by its paths, which a Studio image might mimic.
5. ``azureml``, ``paperspace``, ``binder``.
6. ``lambda`` last: its evidence (the Lambda Stack apt source) can exist on any machine where
   Lambda Stack was installed, including Lambda workstations outside Lambda Cloud.
7. ``local`` when nothing matched.

Credentials set for a platform's CLI on a laptop (``KAGGLE_KEY``, ``PAPERSPACE_API_KEY``,
``LAMBDA_API_KEY``, ``DATABRICKS_TOKEN``...) are never evidence of running on that platform.
Evidence strings show an environment value only when neither its name nor its value looks
secret; otherwise they say only that the variable is set.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from neural_jupyter.redaction import redact

PathExists = Callable[[str], bool]
ReadText = Callable[[str], "str | None"]

SAGEMAKER_METADATA = "/opt/ml/metadata/resource-metadata.json"
LAMBDA_APT_SOURCE = "/etc/apt/sources.list.d/lambda-repository.list"

_SECRET_NAME = re.compile(
    r"TOKEN|SECRET|PASSW|PWD|KEY|CREDENTIAL|AUTH|COOKIE|SIGNATURE|PRIVATE|SESSION", re.I
)
_MAX_SHOWN = 80
_MAX_PREFIX_EVIDENCE = 5


@dataclass(frozen=True)
class Platform:
    """A detected platform: ``name`` (stable id), ``label`` (for people), what matched."""

    name: str
    label: str
    evidence: tuple[str, ...] = ()
    details: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "details", MappingProxyType(dict(self.details)))

    @property
    def is_local(self) -> bool:
        return self.name == "local"


def is_secret_name(name: str) -> bool:
    """True for variable names that usually hold credentials (token, key, password...)."""
    return bool(_SECRET_NAME.search(name))


def shown_value(name: str, value: str) -> str | None:
    """``value`` if it is safe and short enough to show next to ``name``, else ``None``."""
    if is_secret_name(name) or redact(value) != value:
        return None
    if len(value) > _MAX_SHOWN or not value.isprintable():
        return None
    return value


def env_evidence(name: str, value: str) -> str:
    """``env NAME=value``, or ``env NAME is set`` when the value must not be shown."""
    if value == "":
        return f"env {name} is set (empty)"
    shown = shown_value(name, value)
    return f"env {name}={shown}" if shown is not None else f"env {name} is set"


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(65536)
    except OSError:
        return None


@dataclass(frozen=True)
class _Probe:
    environ: Mapping[str, str]
    path_exists: PathExists
    read_text: ReadText

    def env(self, name: str) -> str | None:
        value = self.environ.get(name)
        return None if value is None else env_evidence(name, value)

    def value(self, name: str) -> str | None:
        """A detail value: shown only when safe."""
        value = self.environ.get(name)
        return None if not value else shown_value(name, value)

    def prefixed(
        self, prefix: str, *, exclude: Callable[[str], bool] = is_secret_name
    ) -> list[str]:
        names = sorted(n for n in self.environ if n.startswith(prefix) and not exclude(n))
        found = [env_evidence(n, self.environ[n]) for n in names[:_MAX_PREFIX_EVIDENCE]]
        if len(names) > _MAX_PREFIX_EVIDENCE:
            more = len(names) - _MAX_PREFIX_EVIDENCE
            found.append(f"and {more} more env {prefix}* variables")
        return found

    def path(self, path: str) -> str | None:
        return f"path {path} exists" if self.path_exists(path) else None

    def json_file(self, path: str) -> dict:
        if not self.path_exists(path):
            return {}
        try:
            data = json.loads(self.read_text(path) or "")
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}


def _found(
    name: str,
    label: str,
    strong: Sequence[str | None],
    weak: Sequence[str | None] = (),
    details: Mapping[str, str | None] | None = None,
) -> Platform | None:
    """A ``Platform`` if any strong evidence matched; weak evidence is only supporting."""
    strong_found = [e for e in strong if e]
    if not strong_found:
        return None
    evidence = tuple(dict.fromkeys(strong_found + [e for e in weak if e]))
    kept = {k: v for k, v in (details or {}).items() if v}
    return Platform(name, label, evidence, kept)


def _sagemaker_training(p: _Probe) -> Platform | None:
    strong = [
        p.env("SM_TRAINING_ENV"),
        p.env("SM_CURRENT_HOST"),
        p.path("/opt/ml/input/config/hyperparameters.json"),
    ]
    weak = [p.env("TRAINING_JOB_NAME"), p.path("/opt/ml/input/config/resourceconfig.json")]
    details = {"job_name": p.value("TRAINING_JOB_NAME"), "host": p.value("SM_CURRENT_HOST")}
    return _found("sagemaker-training", "Amazon SageMaker training job", strong, weak, details)


def _kaggle(p: _Probe) -> Platform | None:
    strong = [p.env("KAGGLE_KERNEL_RUN_TYPE"), p.env("KAGGLE_URL_BASE"), p.path("/kaggle/input")]
    weak = [p.path("/kaggle/working")]
    details = {"run_type": p.value("KAGGLE_KERNEL_RUN_TYPE")}
    return _found("kaggle", "Kaggle Notebook", strong, weak, details)


def _colab(p: _Probe) -> Platform | None:
    names = ("COLAB_RELEASE_TAG", "COLAB_GPU", "COLAB_BACKEND_VERSION", "COLAB_TPU_ADDR")
    strong = [p.env(n) for n in names]
    weak = [p.path("/content")]
    details = {"release": p.value("COLAB_RELEASE_TAG"), "gpu": p.value("COLAB_GPU")}
    return _found("colab", "Google Colab", strong, weak, details)


def _databricks(p: _Probe) -> Platform | None:
    details = {"runtime": p.value("DATABRICKS_RUNTIME_VERSION")}
    strong = [p.env("DATABRICKS_RUNTIME_VERSION")]
    return _found("databricks", "Databricks", strong, [], details)


def _studio_markers(metadata: Mapping) -> str | None:
    markers = [k for k in ("DomainId", "SpaceName", "UserProfileName") if metadata.get(k)]
    if not markers:
        return None
    return f"file {SAGEMAKER_METADATA} has {', '.join(markers)}"


def _sagemaker_studio(p: _Probe) -> Platform | None:
    metadata = p.json_file(SAGEMAKER_METADATA)
    names = ("SAGEMAKER_INTERNAL_IMAGE_URI", "SAGEMAKER_SPACE_NAME", "SAGEMAKER_APP_TYPE")
    strong = [p.env(n) for n in names] + [_studio_markers(metadata)]
    weak = [p.env("SAGEMAKER_APP_TYPE_LOWERCASE")]
    domain = metadata.get("DomainId")
    details = {
        "domain": shown_value("DomainId", domain) if isinstance(domain, str) else None,
        "space": p.value("SAGEMAKER_SPACE_NAME"),
        "app_type": p.value("SAGEMAKER_APP_TYPE"),
    }
    return _found("sagemaker-studio", "Amazon SageMaker Studio", strong, weak, details)


def _sagemaker_notebook(p: _Probe) -> Platform | None:
    metadata = p.json_file(SAGEMAKER_METADATA)
    arn = metadata.get("ResourceArn")
    is_instance = isinstance(arn, str) and ":notebook-instance/" in arn
    strong = [
        p.path("/home/ec2-user/SageMaker"),
        f"file {SAGEMAKER_METADATA} names a notebook-instance ARN" if is_instance else None,
    ]
    weak = [p.path(SAGEMAKER_METADATA)]
    name = metadata.get("ResourceName")
    details = {"instance": shown_value("ResourceName", name) if isinstance(name, str) else None}
    label = "Amazon SageMaker notebook instance"
    return _found("sagemaker-notebook", label, strong, weak, details)


def _azureml(p: _Probe) -> Platform | None:
    has_ci = "CI_NAME" in p.environ and (
        "CI_WORKSPACE" in p.environ or "CI_RESOURCE_GROUP" in p.environ
    )
    strong = [
        *p.prefixed("AZUREML_"),
        p.env("CI_NAME") if has_ci else None,
        p.path("/mnt/batch/tasks/shared/LS_root"),
    ]
    weak = [p.env("CI_WORKSPACE"), p.env("CI_RESOURCE_GROUP")]
    details = {
        "kind": "job" if "AZUREML_RUN_ID" in p.environ else "compute-instance",
        "compute": p.value("CI_NAME"),
        "workspace": p.value("CI_WORKSPACE"),
    }
    return _found("azureml", "Azure Machine Learning", strong, weak, details)


def _paperspace(p: _Probe) -> Platform | None:
    # PAPERSPACE_API_KEY / PAPERSPACE_NOTEBOOK_ID are also set on laptops for the CLI, so a
    # PAPERSPACE_* or PS_* variable counts only together with the /notebooks workspace.
    ps_vars = p.prefixed("PAPERSPACE_", exclude=lambda n: n == "PAPERSPACE_NOTEBOOK_REPO_ID")
    ps_vars += p.prefixed("PS_", exclude=lambda n: False)
    notebooks = p.path("/notebooks")
    combined = [*ps_vars, notebooks] if notebooks and ps_vars else []
    strong = [p.env("PAPERSPACE_NOTEBOOK_REPO_ID"), *combined]
    weak = [p.path("/storage")]
    details = {"repo_id": p.value("PAPERSPACE_NOTEBOOK_REPO_ID")}
    return _found("paperspace", "Paperspace Gradient", strong, weak, details)


def _binder(p: _Probe) -> Platform | None:
    names = (
        "BINDER_SERVICE_HOST",
        "BINDER_REPO_URL",
        "BINDER_LAUNCH_HOST",
        "BINDER_REF_URL",
        "BINDER_REQUEST",
        "BINDER_PERSISTENT_REQUEST",
    )
    hub = [
        env_evidence(n, v) + " (mentions binder)"
        for n, v in sorted(p.environ.items())
        if n.startswith("JUPYTERHUB_") and not is_secret_name(n) and "binder" in v.lower()
    ]
    strong = [p.env(n) for n in names] + hub
    details = {"repo": p.value("BINDER_REPO_URL")}
    return _found("binder", "Binder", strong, [], details)


def _lambda(p: _Probe) -> Platform | None:
    # Lambda sets no documented environment variable (LAMBDA_* names belong to AWS Lambda or
    # to API keys), so the evidence is the apt source that Lambda Stack installs.
    strong = [p.path(LAMBDA_APT_SOURCE)]
    label = "Lambda (Lambda Stack machine, e.g. Lambda Cloud)"
    return _found("lambda", label, strong, [], {"stack": "lambda-stack"})


# platform name -> detector, in priority order (see the module docstring)
_DETECTORS: dict[str, Callable[[_Probe], Platform | None]] = {
    "sagemaker-training": _sagemaker_training,
    "kaggle": _kaggle,
    "colab": _colab,
    "databricks": _databricks,
    "sagemaker-studio": _sagemaker_studio,
    "sagemaker-notebook": _sagemaker_notebook,
    "azureml": _azureml,
    "paperspace": _paperspace,
    "binder": _binder,
    "lambda": _lambda,
}
PRIORITY: tuple[str, ...] = tuple(_DETECTORS)

LOCAL = Platform("local", "Local machine")


def detect_platforms(
    environ: Mapping[str, str] | None = None,
    path_exists: PathExists | None = None,
    *,
    read_text: ReadText | None = None,
) -> tuple[Platform, ...]:
    """Every platform whose evidence matched, in ``PRIORITY`` order (empty when none)."""
    probe = _Probe(
        os.environ if environ is None else environ,
        os.path.exists if path_exists is None else path_exists,
        _read_text if read_text is None else read_text,
    )
    return tuple(p for p in (detect(probe) for detect in _DETECTORS.values()) if p is not None)


def detect_platform(
    environ: Mapping[str, str] | None = None,
    path_exists: PathExists | None = None,
    *,
    read_text: ReadText | None = None,
) -> Platform:
    """The platform this process runs on: the first match in ``PRIORITY``, else local."""
    found = detect_platforms(environ, path_exists, read_text=read_text)
    return found[0] if found else LOCAL
