"""A trained run as a file another program can serve: TorchScript, ONNX or a Keras file.

Every export serves what ``TrainingRun.predict`` computes: it takes the channels-last batch
(``inference.prepare``) and returns ``predict``'s output (the output activation applied when
the loss fused it). Each file carries a small description of its input and output
(``SERVING_METADATA``: TorchScript extra file, ONNX metadata property, a JSON file beside a
Keras file), and each export is checked before it is returned: the file is loaded back and
its outputs on a fixed sample are compared with ``TrainingRun.predict``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from neural_jupyter.errors import ConfigurationError, ExportError, MissingDependencyError
from neural_jupyter.jobs import inference

if TYPE_CHECKING:  # pragma: no cover
    from neural_jupyter.jobs.result import TrainingRun

FORMATS = ("torchscript", "onnx", "keras")
SUFFIXES = {"torchscript": ".pt", "onnx": ".onnx", "keras": ".keras"}
FRAMEWORK_FORMATS = {"pytorch": ("torchscript", "onnx"), "keras": ("keras",)}
SERVING_METADATA = "neural_jupyter.json"  # TorchScript extra file / ONNX metadata key
EXPORTS_DIR = "exports"  # under the job's directory
CHECK_SAMPLES = 16
TOLERANCE = 1e-5  # largest absolute difference accepted between the export and predict()


@dataclass(frozen=True)
class Export:
    """An exported model file and how it compared with ``TrainingRun.predict``."""

    format: str
    path: Path
    metadata: dict[str, Any]
    max_abs_diff: float  # over CHECK_SAMPLES samples

    def __repr__(self) -> str:
        return (
            f"<Export {self.format} {self.path} (checked: max |difference| "
            f"{self.max_abs_diff:.2g} over {CHECK_SAMPLES} samples)>"
        )


def metadata(run: TrainingRun) -> dict[str, Any]:
    """What a server needs to know about the model besides its weights."""
    spec = run.spec()
    return {
        "format_version": 1,
        "model": run.model_name,
        "job_id": run.job_id,
        "framework": run.config.get("framework", "pytorch"),
        "input_shape": list(spec.input_shape),
        "input_dtype": spec.input_dtype,
        "output_shape": list(spec.output_shape),
        "output_activation": spec.fused_output_activation,
    }


def export(run: TrainingRun, fmt: str, path: str | Path | None = None) -> Export:
    """Write ``run``'s model as ``fmt``, load it back and compare it with ``run.predict``."""
    fmt = str(fmt).lower()
    if fmt not in FORMATS:
        raise ConfigurationError(
            f"unknown export format {fmt!r}", hint="one of " + ", ".join(FORMATS)
        )
    framework = run.config.get("framework", "pytorch")
    allowed = FRAMEWORK_FORMATS.get(framework, ())
    if fmt not in allowed:
        raise ConfigurationError(
            f"a {framework} model cannot be exported as {fmt}",
            hint=f"{framework} models export as " + " or ".join(allowed),
        )
    target = Path(path) if path is not None else default_path(run, fmt)
    target.parent.mkdir(parents=True, exist_ok=True)
    info = metadata(run)
    writer, loader = {
        "torchscript": (_write_torchscript, _load_torchscript),
        "onnx": (_write_onnx, _load_onnx),
        "keras": (_write_keras, _load_keras),
    }[fmt]
    writer(run, target, info)
    sample = check_sample(info)
    expected = run.predict(sample)
    got = loader(target)(sample)
    return Export(fmt, target, info, _compare(fmt, target, expected, got))


def default_path(run: TrainingRun, fmt: str) -> Path:
    return run.directory.parent / EXPORTS_DIR / f"{run.model_name}{SUFFIXES[fmt]}"


def check_sample(info: dict[str, Any], samples: int = CHECK_SAMPLES) -> np.ndarray:
    """A fixed batch to compare an export with ``predict`` on (same every time)."""
    rng = np.random.default_rng(0)
    shape = (samples, *info["input_shape"])
    if info["input_dtype"] == "int64":
        return rng.integers(0, 2, size=shape).astype(np.int64)
    return rng.standard_normal(shape).astype(np.float32)


def _compare(fmt: str, path: Path, expected: np.ndarray, got: np.ndarray) -> float:
    if expected.shape != got.shape:
        raise ExportError(
            f"the {fmt} export at {path} gives outputs of shape {got.shape}, "
            f"predict() gives {expected.shape}"
        )
    difference = float(np.max(np.abs(expected - got))) if expected.size else 0.0
    if not difference <= TOLERANCE:
        raise ExportError(
            f"the {fmt} export at {path} does not compute what predict() does: outputs differ "
            f"by up to {difference:.3g} (tolerance {TOLERANCE:g})",
            hint="the file was written but should not be served; please report this model",
        )
    return difference


# --- TorchScript -------------------------------------------------------------------------
def serving_module(run: TrainingRun) -> Any:
    """An ``nn.Module`` whose ``forward`` is ``predict``: casts the input to the network's
    dtype and applies the fused output activation."""
    import torch

    network = run.model()
    activation = run.spec().fused_output_activation
    dtype = torch.int64 if run.spec().input_dtype == "int64" else torch.float32

    class Serving(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.network(x.to(dtype))
            if activation == "softmax":
                return torch.softmax(out, dim=-1)
            if activation == "sigmoid":
                return torch.sigmoid(out)
            return out

    return Serving().eval()


def torchscript_module(run: TrainingRun) -> Any:
    """The serving module as TorchScript (traced on the check sample)."""
    import torch

    module = serving_module(run)
    example = torch.from_numpy(check_sample(metadata(run), 2))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            return torch.jit.trace(module, example, check_trace=False)
        except Exception as exc:
            raise ExportError(
                f"{run.model_name} could not be traced to TorchScript: {exc}"
            ) from exc


def write_torchscript(run: TrainingRun, target: Path) -> None:
    _write_torchscript(run, target, metadata(run))


def _write_torchscript(run: TrainingRun, target: Path, info: dict[str, Any]) -> None:
    import torch

    torch.jit.save(
        torchscript_module(run), str(target), _extra_files={SERVING_METADATA: json.dumps(info)}
    )


def _load_torchscript(path: Path) -> Any:
    import torch

    module = torch.jit.load(str(path), map_location="cpu")

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return run


def read_torchscript_metadata(path: Path) -> dict[str, Any]:
    """The description an exported TorchScript file carries (``SERVING_METADATA``)."""
    import torch

    files = {SERVING_METADATA: ""}
    try:
        torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    except Exception as exc:
        raise ConfigurationError(f"{path} is not a TorchScript file: {exc}") from None
    if not files[SERVING_METADATA]:
        raise ConfigurationError(
            f"{path} was not exported by neural-jupyter (it has no {SERVING_METADATA})",
            hint="export it with run.export('torchscript')",
        )
    return json.loads(files[SERVING_METADATA])


# --- ONNX --------------------------------------------------------------------------------
def _require_onnx() -> None:
    for module, package in (("onnx", "onnx"), ("onnxscript", "onnxscript")):
        try:
            __import__(module)
        except ImportError:
            raise MissingDependencyError(package, "onnx", "Exporting to ONNX") from None


def _write_onnx(run: TrainingRun, target: Path, info: dict[str, Any]) -> None:
    import torch

    _require_onnx()
    import onnx

    module = serving_module(run)
    example = torch.from_numpy(check_sample(info, 2))
    quiet = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with (
            contextlib.redirect_stdout(quiet),
            warnings.catch_warnings(),
            torch.no_grad(),
        ):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                str(target),
                input_names=["input"],
                output_names=["output"],
                dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                dynamo=True,
                verbose=False,
            )
    except Exception as exc:
        raise ExportError(f"{run.model_name} could not be exported to ONNX: {exc}") from exc
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    model = onnx.load(str(target))
    entry = model.metadata_props.add()
    entry.key, entry.value = SERVING_METADATA, json.dumps(info)
    onnx.save(model, str(target))


def _load_onnx(path: Path) -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("onnxruntime", "onnx", "Checking an ONNX export") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: np.asarray(session.run(None, {name: x})[0])


# --- Keras -------------------------------------------------------------------------------
def _write_keras(run: TrainingRun, target: Path, info: dict[str, Any]) -> None:
    if target.suffix != ".keras":
        raise ConfigurationError(f"a Keras export must end in .keras, not {target.name}")
    run.model().save(str(target))
    target.with_suffix(".json").write_text(json.dumps(info, indent=1))


def _load_keras(path: Path) -> Any:
    import keras

    model = keras.saving.load_model(str(path), compile=False)
    return lambda x: inference.predict_keras(model, x)
