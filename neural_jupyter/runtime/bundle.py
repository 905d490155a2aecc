"""The job bundle: a directory that trains the model anywhere with ``python train.py``.

It holds ``train.py`` (standard library + numpy + the framework only), ``job.json`` (run
settings: epochs, seed, budget, precision...), ``data.npz``, the model source ``model.neural``,
``spec.json`` (layers and shapes, for dashboards) and ``requirements.txt``. No credential or
environment value is ever written into it.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from neural_jupyter.codegen import keras_training, pytorch_training
from neural_jupyter.dsl.spec import LayerSpec, NetworkSpec
from neural_jupyter.errors import ConfigurationError
from neural_jupyter.runtime.data import Dataset

PRECISIONS = ("fp32", "bf16", "fp16")
REQUIREMENTS = {
    "pytorch": "numpy\ntorch>=2.1\n",
    "keras": (
        "numpy\nkeras>=3\n"
        "# Keras also needs a backend: install one of tensorflow, jax or torch\n"
        "# (train.py uses KERAS_BACKEND, else the first of them that is installed).\n"
    ),
}
BUNDLE_FILES = ("train.py", "job.json", "data.npz", "model.neural", "spec.json", "requirements.txt")


@dataclass(frozen=True)
class RunSettings:
    """How one training run goes; defaults come from the model's ``train { }`` block."""

    epochs: int
    batch_size: int
    validation_split: float = 0.0
    seed: int = 42
    shuffle: bool = True
    early_stopping: dict[str, Any] | None = None
    precision: str = "fp32"
    device: str = "auto"
    max_seconds: float | None = None
    debug_every: int | None = None
    resume: bool = False
    deterministic: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_spec(cls, spec: NetworkSpec, **overrides: Any) -> RunSettings:
        train = spec.train
        early = asdict(train.early_stopping) if train.early_stopping else None
        settings = cls(
            epochs=train.epochs,
            batch_size=train.batch_size,
            validation_split=train.validation_split,
            seed=train.seed,
            shuffle=train.shuffle,
            early_stopping=early,
        )
        given = {key: value for key, value in overrides.items() if value is not None}
        return replace(settings, **given).checked()

    def public(self) -> dict[str, Any]:
        """The settings as stored in the job store (without free-form extras)."""
        return {k: v for k, v in asdict(self).items() if k != "extra"}

    def checked(self) -> RunSettings:
        for name, value, low in (("epochs", self.epochs, 1), ("batch_size", self.batch_size, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigurationError(
                    f"--{name.replace('_', '-')} must be a whole number >= {low}, got {value!r}"
                )
        if self.precision not in PRECISIONS:
            raise ConfigurationError(
                f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ConfigurationError(f"--timeout must be positive, got {self.max_seconds!r}")
        if self.debug_every is not None and self.debug_every < 1:
            raise ConfigurationError("--debug-every must be at least 1")
        return self


@dataclass(frozen=True)
class Bundle:
    path: Path
    job: dict[str, Any]

    @property
    def train_script(self) -> Path:
        return self.path / "train.py"

    def archive(self, exclude: tuple[str, ...] = (), compresslevel: int = 6) -> bytes:
        """The bundle as a reproducible ``.tar.gz`` (owners and times zeroed), without the
        outputs of earlier runs and without the files named in ``exclude``."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=compresslevel) as tar:
            for path in sorted(self.path.rglob("*")):
                relative = path.relative_to(self.path)
                if not path.is_file() or relative.parts[0] == "output":
                    continue
                if str(relative) in exclude:
                    continue
                info = tar.gettarinfo(str(path), arcname=str(relative))
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
        return buffer.getvalue()


def layer_summary(layer: LayerSpec, backend: str) -> dict[str, Any]:
    return {
        "name": layer.name,
        "kind": layer.kind,
        "input_shape": list(layer.input_shape),
        "output_shape": list(layer.output_shape),
        "params": layer.trainable_params(backend),
        "line": layer.span.line,
        "children": [layer_summary(child, backend) for child in layer.children],
    }


def spec_summary(spec: NetworkSpec, backend: str = "pytorch") -> dict[str, Any]:
    return {
        "name": spec.name,
        "input_shape": list(spec.input_shape),
        "output_shape": list(spec.output_shape),
        "params": spec.trainable_params(backend),
        "loss": spec.loss.name,
        "metrics": list(spec.metrics),
        "hyperparameters": {hp.name: hp.value for hp in spec.hyperparameters},
        "layers": [layer_summary(layer, backend) for layer in spec.layers],
    }


def build_bundle(
    spec: NetworkSpec,
    dataset: Dataset,
    directory: Path,
    settings: RunSettings,
    *,
    job_id: str,
    backend: str = "pytorch",
) -> Bundle:
    """Write a complete bundle into ``directory`` (created) and return it."""
    generators = {
        "pytorch": pytorch_training.generate_training_script,
        "keras": keras_training.generate_training_script,
    }
    if backend not in generators:
        raise ConfigurationError(
            f"no training script generator for backend {backend!r}",
            hint="compile with --backend pytorch or --backend keras to train",
        )
    directory.mkdir(parents=True, exist_ok=True)
    job = {
        "job_id": job_id,
        "model": spec.name,
        "framework": backend,
        "data": "data.npz",
        "output_dir": "output",
        **{k: v for k, v in asdict(settings).items() if k != "extra"},
        **settings.extra,
    }
    (directory / "train.py").write_text(generators[backend](spec), encoding="utf-8")
    (directory / "job.json").write_text(json.dumps(job, indent=2), encoding="utf-8")
    np.savez(directory / "data.npz", **dataset.arrays())
    (directory / "model.neural").write_text(spec.source, encoding="utf-8")
    summary = spec_summary(spec, backend)
    (directory / "spec.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    requirements = REQUIREMENTS[backend]
    (directory / "requirements.txt").write_text(requirements, encoding="utf-8")
    return Bundle(directory, job)
