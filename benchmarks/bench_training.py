"""Epoch time of our generated ``train.py`` against a hand-written PyTorch loop.

    python benchmarks/bench_training.py [--samples 20000] [--epochs 4] [--rounds 4]

For each model (a DigitNet-like CNN and an MLP, both on the same synthetic 28x28x1 data) the
driver writes a real job bundle with ``build_bundle`` and runs, in fresh ``python``
subprocesses with the same ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``:

* **ours**: ``python train.py --job job.json``; the ``duration`` of each ``epoch`` event
  (training pass + validation pass, measured inside the script).
* **hand-written**: ``handwritten.py`` (below), what an expert writes for in-memory tensors:
  the same ``nn.Module`` (``build_model`` imported from the bundle's ``train.py``), the same
  ``data.npz``, the same seeded 80/20 split, manual batching over a ``randperm``, Adam with the
  same settings, ``CrossEntropyLoss``, loss and accuracy per epoch, validation every epoch.
  Its epoch time is measured over the same span (training pass + validation pass).

Runs alternate (ours first in even rounds, hand-written first in odd ones) so drift hits both.
The first epoch of every run is reported apart (warm-up) and left out of the medians.
Target: median(ours) / median(hand-written) <= 1.05 for each model.

Both sides compute the same thing: same initial weights, same batches, so the epoch-1 losses
agree (checked, reported as ``loss_diff``). ``interval`` is the time between consecutive epoch
lines; for ours it includes the per-epoch checkpoint the hand-written loop does not write
(information, not the target). ``cpu`` is the same span in CPU time of the child process
(utime + stime from /proc, read as each epoch line arrives): on a shared machine it is far
less disturbed by other processes than wall time, so it is reported beside it, with the
minor page faults over the same span. ``--malloc-tuned`` runs both sides with glibc's mmap and
trim thresholds raised (``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``), which removes
the per-step page faults of multi-MB activation buffers (results/training_malloc_tuned.json).

Writes benchmarks/results/training.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from time import perf_counter
from typing import Any

from _common import REPO_ROOT, RESULTS_DIR, machine_info, table, write_json

TARGET_RATIO = 1.05

CNN = """
network DigitNet {
  input: (28, 28, 1)
  layers:
    Conv2D(filters=16, kernel_size=3, padding="same", activation="relu")
    MaxPooling2D(2)
    Conv2D(filters=32, kernel_size=3, padding="same", activation="relu")
    MaxPooling2D(2)
    Flatten()
    Dense(64, "relu")
    Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  optimizer: Adam(learning_rate=0.001)
  metrics: ["accuracy"]
  train { epochs: 4 batch_size: 64 validation_split: 0.2 seed: 1 }
}
"""

MLP = """
network DigitMLP {
  input: (28, 28, 1)
  layers:
    Flatten()
    Dense(512, "relu")
    Dense(512, "relu")
    Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  optimizer: Adam(learning_rate=0.001)
  metrics: ["accuracy"]
  train { epochs: 4 batch_size: 64 validation_split: 0.2 seed: 1 }
}
"""

MODELS = {"cnn": CNN, "mlp": MLP}

# The hand-written side: standard library, numpy and torch only (no neural_jupyter).
HANDWRITTEN = r"""
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

bundle = Path(sys.argv[1])
job = json.loads((bundle / "job.json").read_text())
spec = importlib.util.spec_from_file_location("generated_train", bundle / "train.py")
generated = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generated)  # defines the model class and build_model(); runs nothing

seed, batch_size, epochs = job["seed"], job["batch_size"], job["epochs"]
torch.manual_seed(seed)
generator = torch.Generator().manual_seed(seed)
with np.load(bundle / "data.npz") as data:
    x_all = torch.as_tensor(data["x_train"]).float()
    y_all = torch.as_tensor(data["y_train"]).long()
n_val = round(len(x_all) * job["validation_split"])
order = torch.randperm(len(x_all), generator=generator)
x_val, y_val = x_all[order[:n_val]], y_all[order[:n_val]]
x_train, y_train = x_all[order[n_val:]], y_all[order[n_val:]]

model = generated.build_model()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
loss_fn = nn.CrossEntropyLoss()
print(json.dumps({"event": "start", "time": time.time()}), flush=True)

for epoch in range(1, epochs + 1):
    started = time.monotonic()
    model.train()
    permutation = torch.randperm(len(x_train), generator=generator)
    running_loss, correct = 0.0, 0
    for i in range(0, len(x_train), batch_size):
        index = permutation[i : i + batch_size]
        xb, yb = x_train[index], y_train[index]
        optimizer.zero_grad(set_to_none=True)
        logits = model(xb)
        loss = loss_fn(logits, yb)
        loss.backward()
        optimizer.step()
        running_loss += loss.item() * len(xb)
        correct += (logits.argmax(dim=1) == yb).sum().item()
    model.eval()
    val_loss, val_correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x_val), batch_size):
            xb, yb = x_val[i : i + batch_size], y_val[i : i + batch_size]
            logits = model(xb)
            val_loss += loss_fn(logits, yb).item() * len(xb)
            val_correct += (logits.argmax(dim=1) == yb).sum().item()
    metrics = {
        "loss": running_loss / len(x_train),
        "accuracy": correct / len(x_train),
        "val_loss": val_loss / len(x_val),
        "val_accuracy": val_correct / len(x_val),
    }
    duration = time.monotonic() - started
    print(
        json.dumps(
            {"event": "epoch", "time": time.time(), "epoch": epoch, "metrics": metrics,
             "duration": duration}
        ),
        flush=True,
    )
"""


# glibc: serve every allocation from the heap and never give it back, so the per-step
# activation buffers (MBs each) stop being mmap'ed, page-faulted in and munmap'ed every step
MALLOC_TUNED = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**32)}


def _env(threads: int, malloc_tuned: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    for name in MALLOC_TUNED:
        env.pop(name, None)
    if malloc_tuned:
        env.update(MALLOC_TUNED)
    return env


def make_bundles(root: Path, samples: int, epochs: int) -> dict[str, Path]:
    from neural_jupyter.compiler import compile_model
    from neural_jupyter.runtime.bundle import RunSettings, build_bundle
    from neural_jupyter.runtime.data import synthetic

    bundles = {}
    dataset = None
    for name, source in MODELS.items():
        spec = compile_model(source).spec
        dataset = dataset or synthetic(spec, samples=samples, seed=0)  # one data set for both
        settings = RunSettings.from_spec(spec, epochs=epochs)
        bundle = build_bundle(spec, dataset, root / name, settings, job_id=f"bench-{name}")
        (bundle.path / "handwritten.py").write_text(HANDWRITTEN, encoding="utf-8")
        bundles[name] = bundle.path
    return bundles


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_and_faults(pid: int) -> tuple[float | None, int | None]:
    """User + system CPU seconds and minor page faults of a live process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None, None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS, int(fields[7])


def run_side(side: str, bundle: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run one side to the end; each epoch line is stamped with the child's CPU time."""
    if side == "ours":
        command = [sys.executable, "train.py", "--job", "job.json"]
    else:
        command = [sys.executable, "handwritten.py", str(bundle)]
    epochs = []
    with tempfile.TemporaryFile("w+") as err:
        started = perf_counter()
        proc = subprocess.Popen(
            command, cwd=bundle, env=env, stdout=subprocess.PIPE, stderr=err, text=True
        )
        assert proc.stdout is not None
        tail = []
        for line in proc.stdout:
            if line.startswith('{"event": "epoch"'):
                cpu, faults = cpu_and_faults(proc.pid)
                record = json.loads(line)
                epochs.append(
                    {
                        "epoch": record["epoch"],
                        "duration": record["duration"],
                        "time": record["time"],
                        "cpu": cpu,
                        "faults": faults,
                        "loss": record["metrics"]["loss"],
                    }
                )
            tail = [*tail[-20:], line]
        code = proc.wait()
        wall = perf_counter() - started
        if code != 0:
            err.seek(0)
            raise SystemExit(f"{side} failed in {bundle}:\n{''.join(tail)}\n{err.read()[-3000:]}")
    if not epochs:
        raise SystemExit(f"{side} printed no epoch events in {bundle}")
    return {"epochs": epochs, "wall_s": wall}


def _intervals(run: dict[str, Any], key: str) -> list[float]:
    values = [e[key] for e in run["epochs"]]
    if any(v is None for v in values):
        return []
    return [b - a for a, b in itertools.pairwise(values)]


def run(
    samples: int, epochs: int, rounds: int, threads: int, malloc_tuned: bool = False
) -> dict[str, Any]:
    env = _env(threads, malloc_tuned)
    load_before = os.getloadavg()[0]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="nj-bench-training-") as tmp:
        bundles = make_bundles(Path(tmp), samples, epochs)
        runs: dict[str, dict[str, list]] = {m: {"ours": [], "hand": []} for m in bundles}
        for r in range(rounds):
            for model, bundle in bundles.items():
                order = ("ours", "hand") if r % 2 == 0 else ("hand", "ours")
                for side in order:
                    result = run_side(side, bundle, env)
                    runs[model][side].append(result)
                    steady = [e["duration"] for e in result["epochs"][1:]]
                    print(
                        f"  round {r + 1}/{rounds} {model:<4} {side:<5} "
                        f"epochs {', '.join(f'{d:.3f}' for d in steady)} s "
                        f"(first {result['epochs'][0]['duration']:.3f} s)",
                        flush=True,
                    )
        for model, sides in runs.items():
            entry: dict[str, Any] = {}
            for side, side_runs in sides.items():
                steady = [e["duration"] for rr in side_runs for e in rr["epochs"][1:]]
                first = [rr["epochs"][0]["duration"] for rr in side_runs]
                intervals = [i for rr in side_runs for i in _intervals(rr, "time")]
                cpu = [i for rr in side_runs for i in _intervals(rr, "cpu")]
                faults = [i for rr in side_runs for i in _intervals(rr, "faults")]
                entry[side] = {
                    "median_epoch_s": statistics.median(steady),
                    "min_epoch_s": min(steady),
                    "epoch_durations_s": steady,
                    "median_first_epoch_s": statistics.median(first),
                    "median_interval_s": statistics.median(intervals) if intervals else None,
                    "median_cpu_interval_s": statistics.median(cpu) if cpu else None,
                    "median_page_faults_per_epoch": statistics.median(faults) if faults else None,
                    "median_process_wall_s": statistics.median(rr["wall_s"] for rr in side_runs),
                }
            ours, hand = entry["ours"], entry["hand"]
            entry["ratio"] = ours["median_epoch_s"] / hand["median_epoch_s"]
            entry["ratio_min"] = ours["min_epoch_s"] / hand["min_epoch_s"]
            if ours["median_interval_s"] and hand["median_interval_s"]:
                entry["interval_ratio"] = ours["median_interval_s"] / hand["median_interval_s"]
            if ours["median_cpu_interval_s"] and hand["median_cpu_interval_s"]:
                entry["cpu_ratio"] = ours["median_cpu_interval_s"] / hand["median_cpu_interval_s"]
            entry["first_epoch_ratio"] = ours["median_first_epoch_s"] / hand["median_first_epoch_s"]
            entry["loss_diff"] = max(
                abs(a["epochs"][0]["loss"] - b["epochs"][0]["loss"])
                for a, b in zip(sides["ours"], sides["hand"], strict=True)
            )
            entry["meets_target"] = entry["ratio"] <= TARGET_RATIO
            results[model] = entry
    return {
        "samples": samples,
        "train_samples": samples - round(samples * 0.2),
        "epochs_per_run": epochs,
        "rounds": rounds,
        "threads": threads,
        "malloc_tuned": malloc_tuned,
        "batch_size": 64,
        "target_ratio": TARGET_RATIO,
        "models": results,
        "load_average": {"before": load_before, "after": os.getloadavg()[0]},
        "meets_target": all(m["meets_target"] for m in results.values()),
    }


def report(result: dict[str, Any]) -> str:
    def ms(value: float | None) -> str:
        return f"{value * 1e3:.0f}" if value else "-"

    def kilo(value: float | None) -> str:
        return f"{value / 1e3:.0f}k" if value is not None else "-"

    rows = []
    for model, m in result["models"].items():
        ours, hand = m["ours"], m["hand"]
        rows.append(
            [
                model,
                ms(ours["median_epoch_s"]),
                ms(hand["median_epoch_s"]),
                f"{m['ratio']:.3f}",
                f"{m['ratio_min']:.3f}",
                ms(ours["median_cpu_interval_s"]),
                ms(hand["median_cpu_interval_s"]),
                f"{m.get('cpu_ratio', float('nan')):.3f}",
                kilo(ours["median_page_faults_per_epoch"]),
                kilo(hand["median_page_faults_per_epoch"]),
                f"{m.get('interval_ratio', float('nan')):.3f}",
                f"{m['first_epoch_ratio']:.3f}",
                f"{m['loss_diff']:.1e}",
                "yes" if m["meets_target"] else "NO",
            ]
        )
    text = table(
        [
            "model",
            "ours ms",
            "hand ms",
            "ratio",
            "ratio(min)",
            "ours cpu",
            "hand cpu",
            "cpu ratio",
            "ours flt",
            "hand flt",
            "interval",
            "1st epoch",
            "loss_diff",
            f"<= {result['target_ratio']}",
        ],
        rows,
    )
    n = result["rounds"] * (result["epochs_per_run"] - 1)
    load = result["load_average"]
    tuned = "both sides with glibc malloc tuned; " if result["malloc_tuned"] else ""
    text += (
        f"\nmedian epoch wall time (training + validation) over {n} epochs per side "
        f"({result['rounds']} runs x {result['epochs_per_run'] - 1}, first epoch left out), "
        f"{result['train_samples']} training samples, batch 64, {result['threads']} thread(s)"
        f"\ncpu: CPU seconds of the process between consecutive epoch lines (ours includes "
        f"its checkpoint write); flt: minor page faults per epoch (same span); "
        f"{tuned}"
        f"load average {load['before']:.1f} before, {load['after']:.1f} after"
    )
    return text


def git_state() -> dict[str, Any]:
    """The checkout measured: HEAD and the package files changed since (results depend on them)."""

    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True)
        return proc.stdout

    changed = git("status", "--porcelain", "--", "neural_jupyter").splitlines()
    head = git("rev-parse", "--short", "HEAD").strip()
    return {"head": head, "changed": [line[3:] for line in changed if line.strip()]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=20000, help="synthetic 28x28x1 samples")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per run (first is warm-up)")
    ap.add_argument("--rounds", type=int, default=4, help="runs per side and model")
    ap.add_argument(
        "--threads", type=int, default=1, help="OMP_NUM_THREADS/MKL_NUM_THREADS for both sides"
    )
    ap.add_argument(
        "--malloc-tuned",
        action="store_true",
        help="run both sides with glibc's mmap/trim thresholds raised (no per-step page "
        "faults); writes results/training_malloc_tuned.json",
    )
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs must be at least 2 (the first epoch is warm-up)")
    result = run(args.samples, args.epochs, args.rounds, args.threads, args.malloc_tuned)
    print(report(result))
    path = write_json(
        RESULTS_DIR / ("training_malloc_tuned.json" if args.malloc_tuned else "training.json"),
        {"machine": machine_info(), "git": git_state(), "training": result},
    )
    print(f"\nwrote {path.relative_to(REPO_ROOT)}")
    if args.check and not result["meets_target"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
