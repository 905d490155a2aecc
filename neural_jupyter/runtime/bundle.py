"""The job bundle: a directory that trains the model anywhere with ``python train.py``.

It holds ``train.py`` (standard library + numpy + the framework only, plus the copied code
of custom layers and its imports, whose packages requirements.txt lists), ``job.json`` (run
settings: epochs, seed, budget, precision...), ``data.npz``, the model source ``model.neural``,
``spec.json`` (layers and shapes, for dashboards), ``requirements.txt`` and ``launcher.py``
(``runtime/launcher.py``: what a remote platform runs to unpack the bundle, run train.py and
hand back its outputs). No credential or environment value is ever written into it.

That is the bundle of kind ``model``. A bundle of kind ``function``, ``cell`` or ``script``
runs the user's own code instead (``runtime/code_bundle.py``): its ``train.py`` is the runner
(``runtime/runner.py``), so every platform starts both kinds the same way.
"""

from __future__ import annotations

import errno
import io
import json
import tarfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from neural_jupyter.codegen import keras, keras_training, pytorch, pytorch_training
from neural_jupyter.deprecation import renamed_parameters
from neural_jupyter.dsl.spec import LayerSpec, NetworkSpec
from neural_jupyter.errors import ConfigurationError, LaunchError
from neural_jupyter.redaction import redact_value
from neural_jupyter.runtime.data import Dataset

PRECISIONS = ("fp32", "bf16", "fp16")
# where the data set lives during training: "auto" (on the device when under 512 MiB, as
# always), "on" (whenever it fits in half the device's free memory), "off" (host memory,
# each batch copied); True/False are accepted for on/off
DATA_PLACEMENTS = ("auto", "on", "off")
# the generated-loop options only the PyTorch training script has
TORCH_ONLY = {
    "compile": "--compile",
    "channels_last": "--channels-last",
    "data_on_device": "--data-on-device",
}
REQUIREMENTS = {
    "pytorch": "numpy\ntorch>=2.1\n",
    "keras": (
        "numpy\nkeras>=3\n"
        "# Keras also needs a backend: install one of tensorflow, jax or torch\n"
        "# (train.py uses KERAS_BACKEND, else the first of them that is installed).\n"
    ),
}
KINDS = ("model", "function", "cell", "script")
LAUNCHER = "launcher.py"
BUNDLE_FILES = (
    "train.py",
    "job.json",
    "data.npz",
    "model.neural",
    "spec.json",
    "requirements.txt",
    LAUNCHER,
)


def launcher_source() -> str:
    """The text of ``runtime/launcher.py``, the launcher shipped in every bundle."""
    return (Path(__file__).with_name("launcher.py")).read_text(encoding="utf-8")


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
    # the device the model source asks for (Neural DSL `execution { device: ... }`, `@`
    # placements): used when `device` is "auto" and the machine has it
    preferred_device: str | None = None
    max_seconds: float | None = None
    debug_every: int | None = None
    resume: bool = False
    deterministic: bool = False
    # GPU-minded options of the generated PyTorch loop, all off by default (docs/warm-start.md)
    compile: bool = False  # torch.compile the model
    channels_last: bool = False  # 2-D convolution weights in channels-last memory format
    data_on_device: str = "auto"  # DATA_PLACEMENTS
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
            preferred_device=spec.device,
        )
        given = {key: value for key, value in overrides.items() if value is not None}
        if isinstance(given.get("data_on_device"), bool):
            given["data_on_device"] = "on" if given["data_on_device"] else "off"
        return replace(settings, **given).checked()

    def public(self) -> dict[str, Any]:
        """The settings as stored in the job store (without free-form extras)."""
        return {k: v for k, v in asdict(self).items() if k != "extra"}

    def checked(self) -> RunSettings:
        """Every setting in its accepted range (``InvalidArgumentError`` names the option)."""
        from neural_jupyter import validation as v

        v.integer("--epochs", self.epochs, 1, v.MAX_EPOCHS)
        v.integer("--batch-size", self.batch_size, 1, v.MAX_BATCH_SIZE)
        v.integer("--seed", self.seed, 0, v.MAX_SEED)
        v.choice("--precision", self.precision, PRECISIONS)
        v.seconds("--timeout", self.max_seconds)
        if self.debug_every is not None:
            v.integer("--debug-every", self.debug_every, 1, 1_000_000)
        v.flag("--compile", self.compile)
        v.flag("--channels-last", self.channels_last)
        v.choice("--data-on-device", self.data_on_device, DATA_PLACEMENTS)
        if self.compile and self.debug_every is not None:
            raise ConfigurationError(
                "--compile and --debug cannot be combined: debug mode hooks into every layer "
                "at some steps, which torch.compile would recompile the model for",
                hint="leave out --debug (debug=True) or --compile (compile=True)",
            )
        return self

    def for_model(self, spec: NetworkSpec, framework: str) -> RunSettings:
        """These settings checked against the model they train: the loop options are the
        PyTorch script's (a Keras model refuses them), and ``channels_last`` needs a 2-D
        convolution. Raises ``ConfigurationError`` naming the option."""
        if framework != "pytorch":
            for name, option in TORCH_ONLY.items():
                if getattr(self, name) != getattr(RunSettings, name):
                    raise ConfigurationError(
                        f"{option} is an option of the generated PyTorch training loop; "
                        f"{spec.name} is compiled for {framework}",
                        hint=f"compile the model with --framework pytorch, or leave out {option}",
                    )
        if self.channels_last and not _has_2d_convolution(spec):
            raise ConfigurationError(
                f"--channels-last is for models with 2-D convolutions (4-D inputs); "
                f"{spec.name} has no Conv2D layer",
                hint="leave out --channels-last (channels_last=True) for this model",
            )
        return self


def _has_2d_convolution(spec: NetworkSpec) -> bool:
    """A Conv2D layer anywhere (nested ones included), or custom layers, which may hold one
    (train.py then checks the built model and notes it in the job log when it has none)."""
    return bool(spec.custom_layers) or any(layer.kind == "Conv2D" for layer in spec.all_layers())


@dataclass(frozen=True)
class Bundle:
    path: Path
    job: dict[str, Any]

    @property
    def train_script(self) -> Path:
        return self.path / "train.py"

    @property
    def kind(self) -> str:
        """``model`` (a generated training script) or the kind of user code it runs."""
        return str(self.job.get("kind", "model"))

    @property
    def trains_under_torchrun(self) -> bool:
        """Whether its ``train.py`` may run as several torchrun processes: a script bundle
        (the user's script reads torchrun's ``RANK``, ``WORLD_SIZE``...) or one whose
        ``job.json`` says ``"torchrun": true``."""
        return self.kind == "script" or self.job.get("torchrun") is True

    def files(self, exclude: tuple[str, ...] = ()) -> list[str]:
        """Every file of the bundle, subfolders included (``project/``, ``data/``... of a
        user-code bundle), as sorted ``/``-separated relative paths: without the outputs of
        earlier runs and without the paths named in ``exclude``."""
        found = []
        for path in sorted(self.path.rglob("*")):
            relative = path.relative_to(self.path)
            if not path.is_file() or relative.parts[0] == "output":
                continue
            if relative.as_posix() not in exclude:
                found.append(relative.as_posix())
        return found

    def archive(self, exclude: tuple[str, ...] = (), compresslevel: int = 6) -> bytes:
        """The bundle as a reproducible ``.tar.gz`` (owners and times zeroed) of its
        ``files(exclude)``."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=compresslevel) as tar:
            for relative in self.files(exclude):
                path = self.path / relative
                info = tar.gettarinfo(str(path), arcname=relative)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
        return buffer.getvalue()


def layer_summary(layer: LayerSpec, framework: str) -> dict[str, Any]:
    return {
        "name": layer.name,
        "kind": layer.kind,
        "input_shape": list(layer.input_shape),
        "output_shape": list(layer.output_shape),
        "params": layer.trainable_params(framework),
        "line": layer.span.line,
        "children": [layer_summary(child, framework) for child in layer.children],
    }


def spec_summary(spec: NetworkSpec, framework: str = "pytorch") -> dict[str, Any]:
    return {
        "name": spec.name,
        "input_shape": list(spec.input_shape),
        "output_shape": list(spec.output_shape),
        "params": spec.trainable_params(framework),
        "loss": spec.loss.name,
        "metrics": list(spec.metrics),
        "hyperparameters": {hp.name: hp.value for hp in spec.hyperparameters},
        "layers": [layer_summary(layer, framework) for layer in spec.layers],
    }


def _custom_requirements(spec: NetworkSpec, framework: str) -> set[str]:
    """Packages that custom layers' code (copied into train.py) imports."""
    if not spec.custom_layers:
        return set()
    codegen = pytorch if framework == "pytorch" else keras
    return codegen.shipped_distributions(spec)


@renamed_parameters(backend="framework")
def build_bundle(
    spec: NetworkSpec,
    dataset: Dataset,
    directory: Path,
    settings: RunSettings,
    *,
    job_id: str,
    framework: str = "pytorch",
) -> Bundle:
    """Write a complete bundle into ``directory`` (created) and return it."""
    generators = {
        "pytorch": pytorch_training.generate_training_script,
        "keras": keras_training.generate_training_script,
    }
    if framework not in generators:
        raise ConfigurationError(
            f"no training script generator for framework {framework!r}",
            hint="compile with --framework pytorch or --framework keras to train",
        )
    job = {
        "job_id": job_id,
        "model": spec.name,
        "framework": framework,
        "data": "data.npz",
        "output_dir": "output",
        **{k: v for k, v in asdict(settings).items() if k != "extra"},
        **settings.extra,
    }
    if framework == "pytorch":  # its train.py trains data-parallel under torchrun
        job["torchrun"] = True
    summary = spec_summary(spec, framework)
    requirements = REQUIREMENTS[framework] + "".join(
        f"{name}\n" for name in sorted(_custom_requirements(spec, framework))
    )
    files: list[tuple[str, Any]] = [
        ("train.py", generators[framework](spec)),
        ("job.json", json.dumps(redact_value(job), indent=2)),
        ("data.npz", dataset.arrays()),
        ("model.neural", spec.source),
        ("spec.json", json.dumps(summary, indent=2)),
        ("requirements.txt", requirements),
        (LAUNCHER, launcher_source()),
    ]
    _write(directory, None)
    for name, content in files:
        _write(directory / name, content)
    return Bundle(directory, job)


def _write(path: Path, content: Any) -> None:
    """Write one bundle file (a directory for ``None``, arrays for a dict); an ``OSError`` (a
    full disk, no permission) becomes a ``LaunchError`` naming the file."""
    try:
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
        elif isinstance(content, dict):
            np.savez(path, **content)
        else:
            path.write_text(content, encoding="utf-8")
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise LaunchError(
            f"could not write the job bundle: {reason} writing {path}",
            hint=f"free some space on the disk holding {path.parent}, or point "
            "NEURAL_JUPYTER_HOME at a bigger disk"
            if exc.errno == errno.ENOSPC
            else None,
        ) from exc
