"""``TrainingRun``: what a finished job produced (history, metrics, artifacts, the model).

A run is data: ``neural_jupyter.plot(run)`` (``ui/``) draws its history. It rebuilds its
network from the model source kept in its job directory with the DSL and the generated code
(``runtime.frameworks``), never through the compiler.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neural_jupyter.jobs.store import JobRecord
from neural_jupyter.runtime.jobdir import JobDir


@dataclass
class TrainingRun:
    job_id: str
    model_name: str
    status: str
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    artifacts: dict[str, Path]
    directory: Path
    best_epoch: int | None = None
    wall_time: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    _loaded: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_directory(cls, record: JobRecord, bundle: Path) -> TrainingRun:
        files = JobDir(bundle.parent)
        history = json.loads(files.history.read_text()) if files.history.exists() else []
        artifacts = {name: bundle / path for name, path in record.artifacts.items()}
        done = _done_event(files.stdout)
        return cls(
            job_id=record.id,
            model_name=record.model_name or record.name,
            status=record.status.value,
            history=history,
            metrics=dict(record.metrics),
            artifacts=artifacts,
            directory=bundle,
            best_epoch=done.get("best_epoch"),
            wall_time=done.get("wall_time"),
            config=dict(record.config),
        )

    @property
    def framework(self) -> str:
        """The framework it trained with (``pytorch`` or ``keras``)."""
        return str(self.config.get("framework", "pytorch"))

    @property
    def hparams(self) -> dict[str, Any]:
        """The ``HPO(...)`` values it trained with."""
        return dict(self.config.get("hparams") or {})

    @property
    def source(self) -> str:
        """The model source it was compiled from (kept in its job directory); with the
        framework, network name and hparams it compiles again:
        ``compile_model(run.source, run.framework, network=run.model_name, hparams=run.hparams)``.
        """
        if "source" not in self._loaded:
            path = JobDir(self.directory.parent).model_source
            self._loaded["source"] = path.read_text(encoding="utf-8")
        return self._loaded["source"]

    def spec(self) -> Any:
        """The network's ``NetworkSpec`` (input shape and dtype, output, layers)."""
        if "spec" not in self._loaded:
            from neural_jupyter.dsl import analyze
            from neural_jupyter.dsl.parser import parse_cached

            path = JobDir(self.directory.parent).model_source
            program = parse_cached(self.source, str(path))
            self._loaded["spec"] = analyze(program, self.model_name, self.hparams or None)
        return self._loaded["spec"]

    def predict(self, x: Any) -> Any:
        """The trained model's outputs for ``x`` as a float32 numpy array.

        ``x``: a batch shaped like the network's input, channels last (``(N, 8, 8, 1)``),
        one sample, or flat rows (numpy, list, tensor or DataFrame). Probabilities when the
        loss fused the output activation (softmax/sigmoid applied), as the generated
        ``predict()`` does; see ``neural_jupyter.jobs.inference``.
        """
        from neural_jupyter.jobs import inference

        batch = inference.prepare(self.spec(), x)
        if "model" not in self._loaded:
            self._loaded["model"] = self.model()
        if self.framework == "keras":
            return inference.predict_keras(self._loaded["model"], batch)
        return inference.predict_torch(self._loaded["model"], batch)

    def export(self, fmt: str, path: str | Path | None = None) -> Any:
        """Write the model as ``"torchscript"``, ``"onnx"`` or ``"keras"`` (default: under the
        job's ``exports/``), load it back and check it computes what ``predict`` does; an
        ``Export`` (path, metadata, largest difference seen)."""
        from neural_jupyter.jobs.export import export

        return export(self, fmt, path)

    def model(self) -> Any:
        """The trained framework model (weights loaded; PyTorch models in eval mode)."""
        from neural_jupyter.runtime.frameworks import build_model, generate

        framework = self.framework
        network = build_model(generate(self.spec(), framework), self.model_name, framework)
        weights = self.artifacts.get("weights", JobDir(self.directory.parent).weights(framework))
        if framework == "keras":
            network.load_weights(str(weights))
            return network
        import torch

        network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        network.eval()
        return network

    def __getattr__(self, name: str) -> Any:
        # drawing and compiling are not the jobs layer's (neural_jupyter.api puts these
        # back, deprecated)
        if name in _MOVED:
            raise AttributeError(f"TrainingRun.{name}() is now {_MOVED[name]}", name=name, obj=self)
        raise AttributeError(f"'TrainingRun' object has no attribute '{name}'", name=name, obj=self)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{k}={v:.4g}"
            for k, v in self.metrics.items()
            if isinstance(v, (int, float)) and k != "lr"
        )
        return f"<TrainingRun {self.job_id} {self.model_name} {self.status}: {shown}>"


_MOVED = {
    "plot": "neural_jupyter.plot(run)",
    "compiled": "neural_jupyter.compile_model(run.source, run.framework, "
    "network=run.model_name, hparams=run.hparams)",
}


def _done_event(stdout: Path) -> dict[str, Any]:
    from neural_jupyter.runtime.tail import last_lines

    for line in reversed(last_lines(stdout, 20)):
        if line.startswith('{"event": "done"'):
            return json.loads(line)
    return {}
