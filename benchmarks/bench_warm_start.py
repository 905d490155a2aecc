"""Warm start of local jobs: cell start -> first epoch, cold vs warm vs a hand-written script.

Issue 19's measured goals, side by side in one run. A fresh ``python`` stands in for a
kernel with the extension loaded (``neural_jupyter.api`` and ``runtime.warm`` imported before
any clock starts) and its own ``NEURAL_JUPYTER_HOME``. In it, the DigitNet cell on
``digits`` runs:

* **first run** in the kernel: cold, as every first run is (warm start ``auto``: the worker
  starts in the background afterwards); the benchmark then waits until the worker is ready.
* then ``--rounds`` rounds, each of three runs in a rotating order:
  * **warm**: a later run with the warm worker (``status().last_job == "warm"`` is checked);
  * **cold**: the same run started cold with the worker still there, idle
    (``NEURAL_JUPYTER_WARM_START=off`` for that run only: the mode is read per run and
    changing it this way stops nothing);
  * **hand-written**: an equivalent PyTorch script written in this benchmark (the same
    network, data, split, optimizer and batch size; it prints one JSON line per epoch)
    started fresh with ``python -u`` by the same process; timed from just before
    ``Popen`` to its first epoch line read.

Timed for our runs: ``api.run(..., wait=False, monitor="none")`` called -> the first
``epoch`` event seen by ``job.follow()`` (which polls every 50 ms), i.e. what a user waits
for after pressing Shift-Enter. Ratios: hand-written / warm (target >= 4x), cold / warm, and
the warm time itself (target <= 0.5 s).

Throughput: each run trains ``--epochs`` epochs; an epoch's time is its event's ``duration``
(training pass + validation pass), epoch 1 left out (first-touch allocations). Per side, the
median over every run's epochs 2..N; ratio warm / cold (target <= 1.02), and hand-written's
for information.

Every process runs with ``--threads`` OpenMP threads (default 1, as in ``bench_training.py``:
on a shared 2-core machine two spin-waiting threads scatter wall times by 3x).

Writes benchmarks/results/warm_start.json.
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

from _common import REPO_ROOT, RESULTS_DIR, machine_info, table, write_json

TARGET_WARM_S = 0.5
TARGET_SPEEDUP = 4.0
TARGET_THROUGHPUT = 1.02

DIGITNET = """
network DigitNet {
  input: (8, 8, 1)
  layers:
    Conv2D(filters=16, kernel_size=3, padding="same", activation="relu")
    MaxPooling2D(2)
    Flatten()
    Dense(64, "relu")
    Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  optimizer: Adam(learning_rate=0.003)
  metrics: ["accuracy"]
  train { epochs: 8 batch_size: 64 validation_split: 0.2 seed: 1 }
}
"""

# The same network trained as one would write it by hand (NHWC data, like the notebook's).
HANDWRITTEN = r'''
"""DigitNet by hand: python -u handwritten.py DATA.npz EPOCHS"""
import json
import sys
import time

import numpy as np
import torch
from torch import nn


class DigitNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.hidden = nn.Linear(256, 64)
        self.out = nn.Linear(64, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv(x.permute(0, 3, 1, 2))))
        x = torch.flatten(x.permute(0, 2, 3, 1), 1)
        return self.out(torch.relu(self.hidden(x)))


def main():
    data = np.load(sys.argv[1])
    epochs = int(sys.argv[2])
    torch.manual_seed(1)
    x = torch.as_tensor(data["x"], dtype=torch.float32)
    y = torch.as_tensor(data["y"], dtype=torch.long)
    order = torch.randperm(len(x))
    count = round(len(x) * 0.2)
    x_val, y_val = x[order[:count]], y[order[:count]]
    x_train, y_train = x[order[count:]], y[order[count:]]
    model = DigitNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.003, eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(1, epochs + 1):
        began = time.monotonic()
        model.train()
        perm = torch.randperm(len(x_train))
        for start in range(0, len(x_train), 64):
            index = perm[start : start + 64]
            optimizer.zero_grad()
            loss = loss_fn(model(x_train[index]), y_train[index])
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(x_val).argmax(-1) == y_val).float().mean().item()
        duration = time.monotonic() - began
        print(json.dumps({"epoch": epoch, "val_accuracy": accuracy, "duration": duration}))
        sys.stdout.flush()


main()
'''

_CHILD = r"""
import json, os, subprocess, sys, time
import numpy as np
from neural_jupyter import api
from neural_jupyter.compiler import compile_model
from neural_jupyter.runtime import warm
from neural_jupyter.runtime.data import digits
from neural_jupyter.runtime.events import Event

SOURCE, EPOCHS, ROUNDS, WORKDIR = {source!r}, {epochs}, {rounds}, {workdir!r}
MODE = warm.ENV_MODE

data = digits(compile_model(SOURCE).spec)
npz = os.path.join(WORKDIR, "digits.npz")
np.savez(npz, x=data.x_train, y=data.y_train)
script = os.path.join(WORKDIR, "handwritten.py")


def ours(label):
    t0 = time.time()
    job = api.run(SOURCE, "digits", epochs=EPOCHS, wait=False, monitor="none")
    how = warm.status().last_job
    first = None
    durations = []
    accuracy = None
    for item in job.follow():
        if isinstance(item, Event) and item.kind == "epoch":
            if first is None:
                first = time.time() - t0
            durations.append(item.data["duration"])
            accuracy = item.data["metrics"].get("val_accuracy")
    status = job.record.status.value
    if status != "SUCCEEDED" or first is None:
        raise SystemExit(f"job {{job.id}} ended {{status}}: " + "\n".join(job.logs(tail=20)))
    return {{"label": label, "first_epoch_s": first, "durations": durations,
            "val_accuracy": accuracy, "how": how}}


def handwritten(label):
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-u", script, npz, str(EPOCHS)],
                            stdout=subprocess.PIPE, text=True)
    first = None
    durations = []
    accuracy = None
    for line in proc.stdout:
        if first is None:
            first = time.time() - t0
        record = json.loads(line)
        durations.append(record["duration"])
        accuracy = record["val_accuracy"]
    if proc.wait() != 0 or first is None:
        raise SystemExit("the hand-written script failed")
    return {{"label": label, "first_epoch_s": first, "durations": durations,
            "val_accuracy": accuracy, "how": "fresh python"}}


def cold(label):
    os.environ[MODE] = "off"  # this run only: the worker stays, idle
    try:
        return ours(label)
    finally:
        os.environ[MODE] = "auto"


os.environ[MODE] = "auto"
samples = [ours("first")]
began = time.monotonic()
while not warm.status().ready:
    if time.monotonic() - began > 600 or warm.status().state in ("failed", "exited"):
        raise SystemExit(f"the warm worker did not become ready: {{warm.status()}}")
    time.sleep(0.1)
status = warm.status()
worker = {{"preload_seconds": status.preload_seconds, "resident_bytes": status.resident_bytes,
          "ready_after_first_run_s": time.monotonic() - began}}
sides = [("warm", ours), ("cold", cold), ("handwritten", handwritten)]
for round_ in range(ROUNDS):
    for label, fn in sides[round_ % 3:] + sides[:round_ % 3]:
        samples.append(fn(label))
    print(f"round {{round_ + 1}}/{{ROUNDS}}", file=sys.stderr, flush=True)
worker["resident_bytes_after"] = warm.status().resident_bytes
warm.stop()
print(json.dumps({{"samples": samples, "worker": worker}}))
"""


def _env(home: str, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    if threads > 0:  # every side: the jobs, the warm worker and the hand-written script
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["NEURAL_JUPYTER_HOME"] = home
    for name in ("PYTHONSTARTUP", "PYTHONPROFILEIMPORTTIME", "NEURAL_JUPYTER_WARM_START"):
        env.pop(name, None)
    return env


def run(rounds: int, epochs: int, threads: int) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="nj-bench-warm-") as workdir:
        Path(workdir, "handwritten.py").write_text(HANDWRITTEN)
        home = str(Path(workdir, "home"))
        code = _CHILD.format(source=DIGITNET, epochs=epochs, rounds=rounds, workdir=workdir)
        proc = subprocess.run(
            [sys.executable, "-c", code], env=_env(home, threads), stdout=subprocess.PIPE, text=True
        )
        if proc.returncode != 0:
            raise SystemExit(f"the benchmark kernel failed:\n{proc.stdout[-3000:]}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    samples = out["samples"]
    wrong = [s for s in samples if s["label"] == "warm" and s["how"] != "warm"]
    wrong += [s for s in samples if s["label"] == "cold" and not s["how"].startswith("cold")]
    if wrong:
        how = [(s["label"], s["how"]) for s in wrong]
        raise SystemExit(f"runs did not start as intended: {how}")
    by: dict[str, list[dict[str, Any]]] = {}
    for sample in samples:
        by.setdefault(sample["label"], []).append(sample)

    def side(label: str) -> dict[str, Any]:
        runs = by[label]
        firsts = sorted(s["first_epoch_s"] for s in runs)
        later = [d for s in runs for d in s["durations"][1:]]
        return {
            "runs": len(runs),
            "first_epoch_s": statistics.median(firsts),
            "first_epoch_min_s": firsts[0],
            "first_epoch_all_s": firsts,
            "epoch_s": statistics.median(later) if later else None,
            "epochs_timed": len(later),
            "val_accuracy": statistics.median(s["val_accuracy"] for s in runs),
        }

    result: dict[str, Any] = {
        "rounds": rounds,
        "epochs": epochs,
        "threads": threads,
        "sides": {label: side(label) for label in ("first", "warm", "cold", "handwritten")},
        "worker": out["worker"],
        "load_average": {"before": load_before, "after": os.getloadavg()[0]},
    }
    sides = result["sides"]
    warm_s = sides["warm"]["first_epoch_s"]
    result["ratios"] = {
        "handwritten_over_warm": sides["handwritten"]["first_epoch_s"] / warm_s,
        "cold_over_warm": sides["cold"]["first_epoch_s"] / warm_s,
        "first_over_warm": sides["first"]["first_epoch_s"] / warm_s,
        "throughput_warm_over_cold": sides["warm"]["epoch_s"] / sides["cold"]["epoch_s"],
        "throughput_handwritten_over_cold": sides["handwritten"]["epoch_s"]
        / sides["cold"]["epoch_s"],
    }
    result["meets"] = {
        "warm_first_epoch": warm_s <= TARGET_WARM_S,
        "speedup_vs_handwritten": result["ratios"]["handwritten_over_warm"] >= TARGET_SPEEDUP,
        "throughput": result["ratios"]["throughput_warm_over_cold"] <= TARGET_THROUGHPUT,
    }
    return result


def report(result: dict[str, Any]) -> str:
    names = {
        "first": "cold, first run in the kernel",
        "cold": "cold, later runs (warm start off)",
        "warm": "warm, later runs (warm worker)",
        "handwritten": "hand-written script, fresh python",
    }
    rows = []
    for label, text in names.items():
        s = result["sides"][label]
        rows.append(
            [
                text,
                str(s["runs"]),
                f"{s['first_epoch_s'] * 1e3:.0f}",
                f"{s['first_epoch_min_s'] * 1e3:.0f}",
                f"{s['epoch_s'] * 1e3:.1f}" if s["epoch_s"] else "-",
                f"{s['val_accuracy']:.3f}",
            ]
        )
    text = table(
        ["cell start -> first epoch", "runs", "median ms", "min ms", "epoch ms", "val_acc"], rows
    )
    r, m, w = result["ratios"], result["meets"], result["worker"]
    load = result["load_average"]

    def verdict(ok: bool) -> str:
        return "MEETS" if ok else "MISSES"

    text += (
        f"\n\nwarm first epoch {result['sides']['warm']['first_epoch_s']:.3f} s "
        f"(target <= {TARGET_WARM_S} s: {verdict(m['warm_first_epoch'])})"
        f"\nhand-written / warm {r['handwritten_over_warm']:.1f}x "
        f"(target >= {TARGET_SPEEDUP:g}x: {verdict(m['speedup_vs_handwritten'])}); "
        f"cold / warm {r['cold_over_warm']:.1f}x; first run / warm {r['first_over_warm']:.1f}x"
        f"\nthroughput, epoch time warm / cold {r['throughput_warm_over_cold']:.3f} "
        f"(target <= {TARGET_THROUGHPUT}: {verdict(m['throughput'])}); hand-written / cold "
        f"{r['throughput_handwritten_over_cold']:.3f} "
        f"({result['sides']['warm']['epochs_timed']} epochs per side, epoch 1 left out)"
        f"\nwarm worker: imported in {w['preload_seconds']:.1f} s, ready "
        f"{w['ready_after_first_run_s']:.1f} s after the first run ended, "
        f"{(w['resident_bytes'] or 0) / 2**20:.0f} MiB resident "
        f"({(w['resident_bytes_after'] or 0) / 2**20:.0f} MiB after every run)"
        f"\nload average {load['before']:.1f} before, {load['after']:.1f} after "
        f"({os.cpu_count()} cores; {result['threads'] or 'default'} torch threads per process)"
    )
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds of warm, cold, hand-written")
    ap.add_argument("--epochs", type=int, default=12, help="epochs per run (throughput)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS/MKL_NUM_THREADS for every side (0: leave them as they are)",
    )
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args()
    result = run(args.rounds, args.epochs, args.threads)
    print(report(result))
    path = write_json(RESULTS_DIR / "warm_start.json", {"machine": machine_info(), **result})
    print(f"\nwrote {path.relative_to(REPO_ROOT)}")
    if args.check and not all(result["meets"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
