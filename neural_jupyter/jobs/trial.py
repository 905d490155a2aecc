"""``Trial``: one run of a sweep (parameters, seed, the job that ran it, its result); shared by
the sweep coordinator and its strategies."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class Trial:
    index: int
    params: dict[str, Any]
    seed: int
    key: str = ""
    job_id: str | None = None
    status: str = "QUEUED"
    metric: float | None = None
    duration: float | None = None
    reused: bool = False
    attempt: int = 0
    error: str | None = None

    def row(self, metric: str) -> dict[str, Any]:
        return {
            "trial": self.index,
            **self.params,
            "seed": self.seed,
            "status": self.status,
            metric: self.metric,
            "duration": self.duration,
            "job_id": self.job_id,
            "reused": self.reused,
        }
