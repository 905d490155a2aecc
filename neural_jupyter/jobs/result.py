"""``TrainingRun``: what a finished job produced (history, metrics, artifacts, the model)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neural_jupyter.jobs.store import JobRecord


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

    @classmethod
    def from_directory(cls, record: JobRecord, bundle: Path) -> TrainingRun:
        output = bundle / "output"
        history_file = output / "history.json"
        history = json.loads(history_file.read_text()) if history_file.exists() else []
        artifacts = {name: bundle / path for name, path in record.artifacts.items()}
        done = _done_event(bundle.parent / "stdout.log")
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

    def model(self) -> Any:
        """The trained framework model (weights loaded; PyTorch models in eval mode)."""
        from neural_jupyter.compiler import compile_file

        framework = self.config.get("framework", "pytorch")
        compiled = compile_file(
            self.directory / "model.neural",
            framework,
            network=self.model_name,
            hparams=self.config.get("hparams") or None,
        )
        network = compiled.build()
        if framework == "keras":
            weights = self.artifacts.get("weights", self.directory / "output" / "model.weights.h5")
            network.load_weights(str(weights))
            return network
        import torch

        weights = self.artifacts.get("weights", self.directory / "output" / "model.pt")
        network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        network.eval()
        return network

    def plot(self, metrics: tuple[str, ...] | None = None) -> Any:
        """A chart of the history (loss and every metric, train and validation)."""
        from neural_jupyter.ui.chart import history_chart

        return history_chart(self.history, metrics=metrics, title=self.model_name)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{k}={v:.4g}"
            for k, v in self.metrics.items()
            if isinstance(v, (int, float)) and k != "lr"
        )
        return f"<TrainingRun {self.job_id} {self.model_name} {self.status}: {shown}>"


def _done_event(stdout: Path) -> dict[str, Any]:
    from neural_jupyter.runtime.tail import last_lines

    for line in reversed(last_lines(stdout, 20)):
        if line.startswith('{"event": "done"'):
            return json.loads(line)
    return {}
