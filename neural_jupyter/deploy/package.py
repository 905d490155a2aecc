"""What gets served: a trained model as one checked TorchScript file, and the artifact each
platform's own serving stack loads from it.

``resolve`` turns what the user passes (a ``TrainingRun``, a ``Job``, a job id, a job's
directory, or a TorchScript file from ``run.export("torchscript")``) into a ``ModelPackage``:
the serving TorchScript (``predict`` semantics: channels-last input, the fused output
activation applied), its description (``SERVING_METADATA``) and its sha256, from which the
idempotency key of an endpoint derives. Keras runs are served locally through their own
``predict``; the cloud formats need the TorchScript file and say so.

Artifacts (each built once per digest under the job's ``deploy/`` folder):

* ``model.tar.gz`` (SageMaker): ``model.pt`` at its root, which the PyTorch inference
  container's default handler loads with ``torch.jit.load`` (no ``inference.py`` needed);
* ``model.mar`` (Vertex AI's prebuilt PyTorch containers, TorchServe): ``model.pt``, a
  module-level handler (``serving/torchserve_handler.py``) and ``MAR-INF/MANIFEST.json``;
* an MLflow model directory (Azure ML, Databricks): ``MLmodel`` with a ``python_function``
  flavour whose loader module (``serving/mlflow_pyfunc.py``) is shipped in ``code/``, a
  tensor signature, ``model.pt`` and the pinned requirements.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from neural_jupyter.errors import ConfigurationError, JobError
from neural_jupyter.jobs import inference

SERVED_FILE = "model.pt"
MAR_HANDLER = "handler.py"
PYFUNC_MODULE = "neural_jupyter_pyfunc"
DEPLOY_DIR = "deploy"  # under the job's directory


@dataclass
class ModelPackage:
    """A model ready to serve (see the module docstring)."""

    model_name: str
    metadata: dict[str, Any]
    digest: str  # sha256 of the served file
    directory: Path  # where platform artifacts are built
    torchscript: Path | None  # the checked serving TorchScript (None: a Keras run)
    run: Any = None  # the TrainingRun, when there is one
    _predictor: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False)

    @property
    def job_id(self) -> str | None:
        return self.metadata.get("job_id")

    @property
    def framework(self) -> str:
        return str(self.metadata.get("framework", "pytorch"))

    def prepare(self, x: Any) -> np.ndarray:
        meta = self.metadata
        return inference.prepare_input(tuple(meta["input_shape"]), meta["input_dtype"], x)

    def predictor(self) -> Callable[[np.ndarray], np.ndarray]:
        """A function from a prepared batch to predictions, in this process."""
        if self._predictor is None:
            if self.torchscript is None:
                run = self.run
                self._predictor = lambda batch: run.predict(batch)
            else:
                import torch

                module = torch.jit.load(str(self.torchscript), map_location="cpu")

                def predict(batch: np.ndarray) -> np.ndarray:
                    with torch.no_grad():
                        return module(torch.from_numpy(batch)).numpy().astype(np.float32)

                self._predictor = predict
        return self._predictor

    def require_torchscript(self, platform: str) -> Path:
        if self.torchscript is None:
            raise ConfigurationError(
                f"{self.model_name} is a {self.framework} model; {platform} serves the "
                "TorchScript export of PyTorch models only",
                hint="deploy it with platform='local', or train it with the pytorch framework",
            )
        return self.torchscript


def resolve(source: Any, store: Any = None) -> ModelPackage:
    """A ``ModelPackage`` for a ``TrainingRun``, ``Job``, job id, job directory or
    TorchScript file (see the module docstring)."""
    from neural_jupyter.jobs.job import Job
    from neural_jupyter.jobs.result import TrainingRun

    if isinstance(source, Job):
        source = _finished(source)
    if isinstance(source, TrainingRun):
        return _from_run(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if path.is_file():
            return _from_torchscript(path)
        if path.is_dir():
            return _from_run(_finished(_job_of_directory(path, store)))
        if isinstance(source, str) and not any(sep in source for sep in "/\\"):
            return _from_run(_finished(Job.load(source, store)))
        raise ConfigurationError(f"nothing to deploy at {path}: no such file or directory")
    raise ConfigurationError(
        f"cannot deploy a {type(source).__name__}",
        hint="pass a TrainingRun (what %%neural_run returns), a job, a job id, or a "
        "TorchScript file from run.export('torchscript')",
    )


def _finished(job: Any) -> Any:
    record = job.refresh()
    if not record.status.is_terminal:
        raise JobError(
            f"job {job.id} is {record.status.value}: only a finished training run can be deployed",
            job_id=job.id,
            hint=f"wait for it (neural_jupyter.jobs.get({job.id!r}).result()) and deploy that",
        )
    return job.result()


def _job_of_directory(path: Path, store: Any) -> Any:
    from neural_jupyter.jobs.job import Job
    from neural_jupyter.jobs.store import JobStore

    store = store or JobStore()
    wanted = path.resolve()
    for record in store.list():
        if record.job_dir and wanted in (
            Path(record.job_dir).resolve(),
            Path(record.job_dir).resolve() / "bundle",
        ):
            return Job(record, store)
    raise ConfigurationError(f"{path} is not the directory of a job in the job store")


def _from_run(run: Any) -> ModelPackage:
    from neural_jupyter.jobs.export import metadata

    if run.status != "SUCCEEDED":
        raise JobError(
            f"job {run.job_id} ended {run.status}; only a successful run can be deployed",
            job_id=run.job_id,
        )
    info = metadata(run)
    digest = run_digest(run, info)
    root = run.directory.parent / DEPLOY_DIR
    if info["framework"] != "pytorch":
        return ModelPackage(run.model_name, info, digest, root / digest[:12], None, run)
    served = root / digest[:12] / SERVED_FILE
    if not served.exists():  # exported (and checked) once per trained model
        served.parent.mkdir(parents=True, exist_ok=True)
        exported = run.export("torchscript", served.with_suffix(".partial.pt"))
        os.replace(exported.path, served)
    return ModelPackage(run.model_name, info, digest, root / digest[:12], served, run)


def run_digest(run: Any, info: dict[str, Any]) -> str:
    """A run's model identity: its trained weights, its source and its description (stable
    across exports, whose bytes are not)."""
    digest = hashlib.sha256(json.dumps(info, sort_keys=True).encode())
    digest.update(run.spec().source.encode())
    weights = run.artifacts.get("weights")
    if weights is None or not Path(weights).exists():
        raise JobError(f"job {run.job_id} has no weights file to deploy", job_id=run.job_id)
    with Path(weights).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _from_torchscript(path: Path) -> ModelPackage:
    from neural_jupyter.jobs.export import read_torchscript_metadata

    info = read_torchscript_metadata(path)
    digest = _sha256(path)
    return ModelPackage(
        str(info.get("model") or path.stem),
        info,
        digest,
        path.parent / f"{path.stem}-{DEPLOY_DIR}" / digest[:12],
        path,
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- platform artifacts ---------------------------------------------------------------------
def serving_source(name: str) -> bytes:
    """A file of ``deploy/serving/`` (the code shipped next to the model)."""
    return resources.files("neural_jupyter.deploy").joinpath(f"serving/{name}").read_bytes()


def _fresh(target: Path) -> bool:
    return target.exists() and target.stat().st_size > 0


def _atomic(target: Path, write: Callable[[Path], None]) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    write(partial)
    os.replace(partial, target)
    return target


def model_tar_gz(package: ModelPackage) -> Path:
    """SageMaker's ``model.tar.gz``: ``model.pt`` at the root (reproducible bytes)."""
    source = package.require_torchscript("SageMaker")
    target = package.directory / "model.tar.gz"
    if _fresh(target):
        return target

    def write(path: Path) -> None:
        with (
            path.open("wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped,
            tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            _add(tar, SERVED_FILE, source.read_bytes())
            _add(tar, "neural_jupyter.json", json.dumps(package.metadata).encode())

    return _atomic(target, write)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def model_mar(package: ModelPackage) -> Path:
    """TorchServe's ``model.mar`` for Vertex AI's prebuilt PyTorch containers."""
    source = package.require_torchscript("Vertex AI")
    target = package.directory / "model.mar"
    if _fresh(target):
        return target
    manifest = {
        "createdOn": datetime.now(timezone.utc).strftime("%d/%m/%Y %H:%M:%S"),
        "runtime": "python",
        "model": {
            "modelName": "model",
            "serializedFile": SERVED_FILE,
            "handler": MAR_HANDLER,
            "modelVersion": "1.0",
        },
        "archiverVersion": "neural-jupyter",
    }

    def write(path: Path) -> None:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest, indent=1))
            archive.writestr(SERVED_FILE, source.read_bytes())
            archive.writestr(MAR_HANDLER, serving_source("torchserve_handler.py"))
            archive.writestr("neural_jupyter.json", json.dumps(package.metadata))

    return _atomic(target, write)


def mlflow_model(package: ModelPackage) -> Path:
    """An MLflow model directory (``python_function`` flavour) serving the TorchScript."""
    source = package.require_torchscript("MLflow serving")
    target = package.directory / "mlflow-model"
    if (target / "MLmodel").exists():
        return target
    import platform as python_platform

    import torch

    meta = package.metadata
    tensor = "int64" if meta["input_dtype"] == "int64" else "float32"
    inputs = [
        {"type": "tensor", "tensor-spec": {"dtype": tensor, "shape": [-1, *meta["input_shape"]]}}
    ]
    outputs = [
        {
            "type": "tensor",
            "tensor-spec": {"dtype": "float32", "shape": [-1, *meta["output_shape"]]},
        }
    ]
    torch_version = torch.__version__.split("+")[0]
    numpy_version = np.__version__
    python = python_platform.python_version()
    requirements = [f"torch=={torch_version}", f"numpy=={numpy_version}", "mlflow"]
    mlmodel = "\n".join(
        [
            "artifact_path: model",
            "flavors:",
            "  python_function:",
            "    code: code",
            f"    data: {SERVED_FILE}",
            "    env:",
            "      conda: conda.yaml",
            "      virtualenv: python_env.yaml",
            f"    loader_module: {PYFUNC_MODULE}",
            f"    python_version: {python}",
            "signature:",
            f"  inputs: '{json.dumps(inputs)}'",
            f"  outputs: '{json.dumps(outputs)}'",
            f"model_uuid: {package.digest[:32]}",
            f"utc_time_created: '{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M:%S.%f')}'",
            "",
        ]
    )
    conda = "\n".join(
        [
            "channels:",
            "- conda-forge",
            "dependencies:",
            f"- python={python}",
            "- pip",
            "- pip:",
            *[f"  - {r}" for r in requirements],
            "name: neural-jupyter-serving",
            "",
        ]
    )
    python_env = "\n".join(
        [
            f"python: {python}",
            "build_dependencies:",
            "- pip",
            "dependencies:",
            "- -r requirements.txt",
            "",
        ]
    )

    def write(path: Path) -> None:
        (path / "code").mkdir(parents=True)
        (path / SERVED_FILE).write_bytes(source.read_bytes())
        (path / "code" / f"{PYFUNC_MODULE}.py").write_bytes(serving_source("mlflow_pyfunc.py"))
        (path / "MLmodel").write_text(mlmodel)
        (path / "conda.yaml").write_text(conda)
        (path / "python_env.yaml").write_text(python_env)
        (path / "requirements.txt").write_text("\n".join(requirements) + "\n")
        (path / "neural_jupyter.json").write_text(json.dumps(package.metadata))

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    if partial.exists():
        import shutil

        shutil.rmtree(partial)
    write(partial)
    os.replace(partial, target)
    return target
