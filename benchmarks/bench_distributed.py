"""Data-parallel scaling of the generated ``train.py``: 1 process against N under torchrun.

    python benchmarks/bench_distributed.py [--procs 2] [--rounds 2] [--epochs 4]
    python benchmarks/bench_distributed.py --device cuda [--procs 2] [--dist-backend nccl]

One real job bundle (``build_bundle``) of an MLP on synthetic 28x28x1 data is run, in
alternating rounds, as ``python train.py`` (1 process) and as ``python -m
torch.distributed.run --standalone --nproc-per-node N train.py`` (N processes,
DistributedDataParallel). The epoch time is the ``duration`` of each ``epoch`` event
(training pass + validation pass, measured inside rank 0, after the metrics are summed over
the ranks); the first epoch of every run is warm-up and left out of the medians.

* ``throughput_ratio`` = median epoch time of 1 process / median epoch time of N processes
  (both go through the whole data set each epoch);
* ``scaling_efficiency`` = throughput_ratio / N (1.0 is perfect).

``batch_size`` is per process (the DDP convention: N processes step through N batches at
once); ``--same-global-batch`` gives each of the N processes ``batch_size / N`` instead.

CPU (default): gloo; each of the N processes gets ``cpu_count / N`` threads
(``OMP_NUM_THREADS``), the single process all of them, so both sides use the whole machine.
On a 2-core machine shared with other work the figure measures contention as much as
scaling: report it, do not target it.

``--device cuda``: bf16 autocast (``--precision``), NCCL when each process has a GPU of its
own; processes sharing one GPU use gloo (NCCL refuses two ranks on one device), which
``--dist-backend nccl`` forces anyway (it then fails and says so). With one GPU,
``--procs 2`` measures two processes sharing it. The model is larger there (``--width``).

Prints the result as JSON and writes benchmarks/results/distributed[_cuda].json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import REPO_ROOT, RESULTS_DIR, machine_info, write_json

MODEL = """
network WideMLP {{
  input: (28, 28, 1)
  layers:
    Flatten()
    Dense({width}, "relu")
    Dense({width}, "relu")
    Dense({width}, "relu")
    Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  optimizer: Adam(learning_rate=0.001)
  metrics: ["accuracy"]
  train {{ epochs: 4 batch_size: {batch} validation_split: 0.1 seed: 1 }}
}}
"""


def build(directory: Path, args: argparse.Namespace) -> Path:
    sys.path.insert(0, str(REPO_ROOT))
    import numpy as np

    from neural_jupyter.compiler import compile_model
    from neural_jupyter.runtime.bundle import RunSettings, build_bundle
    from neural_jupyter.runtime.data import Dataset

    model = compile_model(MODEL.format(width=args.width, batch=args.batch_size))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.samples, 28, 28, 1), dtype=np.float32)
    y = (x.reshape(len(x), -1)[:, :10].argmax(axis=1)).astype(np.int64)
    dataset = Dataset(x_train=x, y_train=y, description="synthetic 28x28x1")
    settings = RunSettings.from_spec(
        model.spec,
        epochs=args.epochs,
        device=args.device,
        precision=args.precision,
    )
    bundle = build_bundle(model.spec, dataset, directory, settings, job_id="bench")
    return bundle.path


def set_batch(bundle: Path, batch_size: int) -> None:
    path = bundle / "job.json"
    job = json.loads(path.read_text())
    job["batch_size"] = batch_size
    path.write_text(json.dumps(job))


def run_once(bundle: Path, procs: int, args: argparse.Namespace) -> dict[str, Any]:
    """One training run; its epoch durations and the process-group backend it used."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    threads = max(1, (os.cpu_count() or 1) // procs)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if args.dist_backend:
        env["NEURAL_JUPYTER_DIST_BACKEND"] = args.dist_backend
    batch = args.batch_size // procs if args.same_global_batch and procs > 1 else args.batch_size
    set_batch(bundle, batch)
    command = [sys.executable, "-u"]
    if procs > 1:
        command += ["-m", "torch.distributed.run", "--standalone"]
        command += ["--nproc-per-node", str(procs)]
    command += ["train.py", "--job", "job.json"]
    done = subprocess.run(
        command, cwd=bundle, env=env, capture_output=True, text=True, timeout=args.run_timeout
    )
    events = [json.loads(x) for x in done.stdout.splitlines() if x.startswith('{"event"')]
    epochs = [e["duration"] for e in events if e["event"] == "epoch"]
    errors = [e for e in events if e["event"] == "error"]
    if done.returncode != 0 or not epochs:
        reason = errors[0]["message"] if errors else done.stderr[-2000:]
        return {"procs": procs, "failed": True, "exit_code": done.returncode, "reason": reason}
    backend = next(
        (
            line.split("(", 1)[1].split(")", 1)[0]
            for line in done.stderr.splitlines()
            if line.startswith("data parallel:")
        ),
        None,
    )
    start = next(e for e in events if e["event"] == "start")
    final = next(e for e in events if e["event"] == "done")
    return {
        "procs": procs,
        "batch_size_per_process": batch,
        "threads_per_process": threads,
        "dist_backend": backend,
        "device": start["device"],
        "epoch_seconds": epochs,
        "val_accuracy": final["metrics"].get("val_accuracy"),
    }


def median_after_warmup(runs: list[dict[str, Any]]) -> float | None:
    times = [t for run in runs if not run.get("failed") for t in run["epoch_seconds"][1:]]
    return statistics.median(times) if times else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None)
    parser.add_argument("--dist-backend", choices=("gloo", "nccl"), default=None)
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--same-global-batch", action="store_true")
    parser.add_argument("--run-timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    args.samples = args.samples or (200_000 if cuda else 8_000)
    args.width = args.width or (4096 if cuda else 512)
    args.batch_size = args.batch_size or (512 if cuda else 64)
    runs: dict[int, list[dict[str, Any]]] = {1: [], args.procs: []}
    with tempfile.TemporaryDirectory(prefix="bench-dist-") as temporary:
        bundle = build(Path(temporary) / "bundle", args)
        for round_ in range(args.rounds):
            order = [1, args.procs] if round_ % 2 == 0 else [args.procs, 1]
            for procs in order:
                result = run_once(bundle, procs, args)
                runs[procs].append(result)
                print(json.dumps({"round": round_, **result}), file=sys.stderr, flush=True)
    one, many = median_after_warmup(runs[1]), median_after_warmup(runs[args.procs])
    ratio = one / many if one and many else None
    report = {
        "benchmark": "distributed",
        "device": args.device,
        "precision": args.precision,
        "procs": args.procs,
        "model": f"MLP 784-{args.width}x3-10",
        "samples": args.samples,
        "batch_size": args.batch_size,
        "same_global_batch": args.same_global_batch,
        "median_epoch_seconds_1": one,
        f"median_epoch_seconds_{args.procs}": many,
        "throughput_ratio": ratio,
        "scaling_efficiency": ratio / args.procs if ratio else None,
        "runs": runs,
        "machine": machine_info(),
    }
    if cuda:
        import torch

        report["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    name = "distributed_cuda.json" if cuda else "distributed.json"
    write_json(args.out or RESULTS_DIR / name, report)
    print(json.dumps({k: v for k, v in report.items() if k not in ("runs", "machine")}))
    return 0 if ratio else 1


if __name__ == "__main__":
    sys.exit(main())
