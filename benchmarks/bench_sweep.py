"""Sweep coordinator overhead, measured with no-op trials (a backend that "trains" instantly,
so only the coordinator's own work is timed: compiling each trial, writing its bundle, the
job store, following its events, storing results).

    python benchmarks/bench_sweep.py [--trials 200] [--resume-total 1000] [--resume-done 900]

Reports the overhead per trial and the cost of resuming a 1,000-trial sweep of which 900
trials already finished (they must be found and reused, not run again).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info, write_json

NET = """network SweepBench {
  input: (4,)
  layers: Dense(HPO(range(1, 4096, step=1)), "relu") Output(1)
  loss: "mse"
  train { epochs: 1 batch_size: 16 }
}"""


def noop_backend():
    from neural_jupyter.backends.base import Backend, RemoteStatus, Submission
    from neural_jupyter.runtime.events import parse_line

    class NoopBackend(Backend):
        """Finishes every job at once with one epoch (no process, no training)."""

        name = "noop"

        def submit(self, bundle, job, resources):
            job.directory.mkdir(parents=True, exist_ok=True)
            lines = [
                {"event": "start", "model": "SweepBench", "epochs": 1},
                {"event": "epoch", "epoch": 1, "epochs": 1, "metrics": {"loss": 0.5}},
                {"event": "done", "metrics": {"loss": 0.5}, "best_epoch": 1},
            ]
            (job.directory / "stdout.log").write_text(
                "".join(json.dumps(line) + "\n" for line in lines)
            )
            output = bundle.path / "output"
            output.mkdir(exist_ok=True)
            (output / "history.json").write_text(json.dumps([{"epoch": 1, "loss": 0.5}]))
            return Submission(f"noop:{job.id}")

        def status(self, job):
            return RemoteStatus("SUCCEEDED", 0)

        def events(self, job, *, follow=True) -> Iterator:
            for line in (job.directory / "stdout.log").read_text().splitlines():
                yield parse_line(line)

        def cancel(self, job):
            return None

    return NoopBackend()


def run_sweep(values: int, name: str) -> tuple[float, object]:
    from neural_jupyter import Sweep

    started = time.perf_counter()
    sweep = Sweep(
        NET,
        "synthetic",
        grid={"dense_1.units": tuple(range(1, values + 1))},
        platform="noop",
        metric="loss",
        name=name,
    )
    result = sweep.run()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--resume-total", type=int, default=1000)
    parser.add_argument("--resume-done", type=int, default=900)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        os.environ["NEURAL_JUPYTER_HOME"] = home
        from neural_jupyter import backends

        backends._instances["noop"] = noop_backend()
        fresh, result = run_sweep(args.trials, "overhead")
        per_trial = fresh / args.trials
        seeded, _ = run_sweep(args.resume_done, "resume")
        resumed, resumed_result = run_sweep(args.resume_total, "resume")
        reused = sum(t.reused for t in resumed_result.trials)
        new = len(resumed_result.trials) - reused
    assert all(t.status == "SUCCEEDED" for t in result.trials)
    assert reused == args.resume_done and new == args.resume_total - args.resume_done
    new_cost = new * per_trial
    report = {
        "machine": machine_info(),
        "settings": vars(args),
        "overhead_per_trial_ms": per_trial * 1e3,
        "first_run_of_done_trials_s": seeded,
        "resume": {
            "total_s": resumed,
            "trials_reused": reused,
            "trials_run": new,
            "cost_of_reuse_s": resumed - new_cost,
            "per_reused_trial_ms": (resumed - new_cost) / reused * 1e3,
        },
    }
    print(f"coordinator overhead: {per_trial * 1e3:.1f} ms per trial ({args.trials} no-op trials)")
    print(
        f"resume {args.resume_total} trials with {args.resume_done} finished: {resumed:.1f} s "
        f"({reused} reused at ~{report['resume']['per_reused_trial_ms']:.1f} ms each, "
        f"{new} run)"
    )
    print("wrote", write_json(RESULTS_DIR / "sweep.json", report))


if __name__ == "__main__":
    main()
