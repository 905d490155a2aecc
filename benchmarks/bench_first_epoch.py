"""Time from a ``%%neural_run`` cell starting to its first epoch event, minus torch's import.

    python benchmarks/bench_first_epoch.py [--repeats 7]

Each sample is a fresh ``python`` process standing in for a kernel with the extension loaded
(``neural_jupyter.api`` imported before the clock starts; ``NEURAL_JUPYTER_HOME`` is a new temp
directory). It runs the DigitNet cell twice (``cold``: the first run in the kernel, paying
lazy imports and the grammar build; ``warm``: the same cell again):

    job = api.run(DIGITNET, "digits", epochs=2, wait=False, monitor="none")
    for item in job.follow(): ...   # until the first "epoch" event arrives

``overhead = (first epoch event in the kernel - cell start) - import torch - epoch duration``
where ``import torch`` is the median wall time of ``python -c "import torch"`` processes run
alternately with the samples (so it includes interpreter start-up) and ``epoch duration`` is
the ``duration`` field of that first epoch event. Target: <= 300 ms.

Breakdown (wall clock, ``time.time()`` on both sides of the process boundary; event times are
the ``time`` field the script writes, rounded to 1 ms): compile (``as_compiled``), data resolve
(``runtime.data.resolve``), bundle write (``build_bundle``), job store and the rest of
``api.run`` before submit, process spawn (``LocalBackend.submit``), the child up to its
``start`` event (less torch's import: ``model build + data load``), start → first epoch (less
the epoch's own duration), delivery (epoch event written → seen by ``job.follow()``, which
polls every 50 ms). The functions are timed by wrapping them; nothing in the package changes.

An extra, untimed-path "anatomy" run of the same bundle shows what the child spends before
its ``start`` event: interpreter start-up, ``import numpy``, ``import torch``, then train.py's
own work (argument parsing, seeding, data load, model and optimizer build).

Writes benchmarks/results/first_epoch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import REPO_ROOT, RESULTS_DIR, machine_info, table, write_json

TARGET_MS = 300.0

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

_CHILD = r"""
import json, sys, time
import neural_jupyter
from neural_jupyter import api
from neural_jupyter.backends.local import LocalBackend
from neural_jupyter.runtime import data as data_module
from neural_jupyter.runtime.events import Event

SOURCE = {source!r}
marks = {{}}

def timed(name, fn):
    def wrapper(*args, **kwargs):
        t0 = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            marks[name + "_end"] = end = time.time()
            marks[name] = marks.get(name, 0.0) + end - t0
    return wrapper

api.as_compiled = timed("compile", api.as_compiled)
data_module.resolve = timed("data_resolve", data_module.resolve)
api.build_bundle = timed("bundle_write", api.build_bundle)
LocalBackend.submit = timed("spawn", LocalBackend.submit)

samples = []
for label in ("cold", "warm"):
    marks.clear()
    t0 = time.time()
    job = api.run(SOURCE, "digits", epochs=2, wait=False, monitor="none")
    returned = time.time()
    start = epoch = None
    for item in job.follow():
        if not isinstance(item, Event):
            continue
        if item.kind == "start" and start is None:
            start = (time.time(), item.data["time"])
        elif item.kind == "epoch" and epoch is None:
            epoch = (time.time(), item.data["time"], item.data["duration"])
    status = job.record.status.value
    if status != "SUCCEEDED" or start is None or epoch is None:
        raise SystemExit(f"job {{job.id}} ended {{status}}: " + "\n".join(job.logs(tail=20)))
    samples.append({{
        "label": label,
        "t0": t0,
        "returned": returned,
        "submitted_at": marks["spawn_end"],
        "compile": marks["compile"],
        "data_resolve": marks["data_resolve"],
        "bundle_write": marks["bundle_write"],
        "spawn": marks["spawn"],
        "start_seen": start[0],
        "start_event": start[1],
        "epoch_seen": epoch[0],
        "epoch_event": epoch[1],
        "epoch_duration": epoch[2],
        "bundle": str(job.bundle_dir),
    }})
print(json.dumps(samples))
"""

# Runs the bundle's own train.py after timing interpreter start-up and the framework imports.
_ANATOMY = r"""
import time
t_main = time.time()
import numpy
t_numpy = time.time()
import torch
t_torch = time.time()
import json, runpy, sys
sys.stderr.write(json.dumps({"main": t_main, "numpy": t_numpy, "torch": t_torch}) + "\n")
sys.argv = ["train.py", "--job", "job.json"]
runpy.run_path("train.py", run_name="__main__")
"""


def _env(home: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["NEURAL_JUPYTER_MONITOR"] = "text"
    env.pop("PYTHONSTARTUP", None)
    if home:
        env["NEURAL_JUPYTER_HOME"] = home
    return env


def _wall(command: list[str], env: dict[str, str], cwd: str | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def run_sample(env: dict[str, str]) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="nj-bench-first-epoch-") as home:
        child_env = {**env, "NEURAL_JUPYTER_HOME": home}
        code = _CHILD.format(source=DIGITNET)
        proc = subprocess.run(
            [sys.executable, "-c", code], env=child_env, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise SystemExit(f"sample failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        samples = json.loads(proc.stdout.strip().splitlines()[-1])
        samples.append(anatomy(Path(samples[-1]["bundle"]), child_env))
        return samples


def anatomy(bundle: Path, env: dict[str, str]) -> dict[str, Any]:
    spawned = time.time()
    proc = subprocess.run(
        [sys.executable, "-u", "-c", _ANATOMY], cwd=bundle, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"anatomy run failed:\n{proc.stderr[-3000:]}")
    marks = json.loads(next(ln for ln in proc.stderr.splitlines() if ln.startswith('{"main"')))
    start = next(
        json.loads(ln)["time"]
        for ln in proc.stdout.splitlines()
        if ln.startswith('{"event": "start"')
    )
    return {
        "label": "anatomy",
        "interpreter_startup": marks["main"] - spawned,
        "import_numpy": marks["numpy"] - marks["main"],
        "import_torch_after_numpy": marks["torch"] - marks["numpy"],
        "train_py_to_start": start - marks["torch"],
    }


def breakdown(sample: dict[str, Any], torch_import: float) -> dict[str, float]:
    """Milliseconds per phase; the phases add up to ``total``."""
    t0 = sample["t0"]
    in_run = sample["returned"] - t0
    to_start = sample["start_event"] - sample["submitted_at"]
    start_to_epoch = sample["epoch_event"] - sample["start_event"] - sample["epoch_duration"]
    parts = {
        "compile": sample["compile"],
        "data_resolve": sample["data_resolve"],
        "bundle_write": sample["bundle_write"],
        "process_spawn": sample["spawn"],
        "job_store_and_rest_of_run": in_run
        - sample["compile"]
        - sample["data_resolve"]
        - sample["bundle_write"]
        - sample["spawn"],
        "gap_run_return_to_submit_end": sample["submitted_at"] - (t0 + in_run),
        "child_import_torch": torch_import,
        "child_model_build_data_load": to_start - torch_import,
        "start_to_first_epoch_less_duration": start_to_epoch,
        "epoch_duration": sample["epoch_duration"],
        "delivery_to_kernel": sample["epoch_seen"] - sample["epoch_event"],
    }
    total = sample["epoch_seen"] - t0
    out = {key: value * 1e3 for key, value in parts.items()}
    out["total"] = total * 1e3
    out["overhead"] = (total - torch_import - sample["epoch_duration"]) * 1e3
    return out


def run(repeats: int) -> dict[str, Any]:
    env = _env()
    torch_walls, bare_walls = [], []
    cold, warm, anatomies = [], [], []
    _wall([sys.executable, "-c", "import torch"], env)  # warm-up: page cache, bytecode
    run_sample(env)
    for i in range(repeats):
        torch_walls.append(_wall([sys.executable, "-c", "import torch"], env))
        bare_walls.append(_wall([sys.executable, "-c", "pass"], env))
        first, second, anat = run_sample(env)
        cold.append(first)
        warm.append(second)
        anatomies.append(anat)
        print(f"  sample {i + 1}/{repeats} done", flush=True)
    torch_import = statistics.median(torch_walls)

    def medians(rows: list[dict[str, float]]) -> dict[str, float]:
        return {key: statistics.median(row[key] for row in rows) for key in rows[0]}

    cold_ms = medians([breakdown(s, torch_import) for s in cold])
    warm_ms = medians([breakdown(s, torch_import) for s in warm])
    anatomy_ms = {
        key: statistics.median(a[key] for a in anatomies) * 1e3
        for key in anatomies[0]
        if key != "label"
    }
    return {
        "repeats": repeats,
        "target_ms": TARGET_MS,
        "python_c_import_torch_ms": torch_import * 1e3,
        "python_c_pass_ms": statistics.median(bare_walls) * 1e3,
        "cold": cold_ms,
        "warm": warm_ms,
        "anatomy_ms": anatomy_ms,
        "overhead_cold_samples_ms": sorted(breakdown(s, torch_import)["overhead"] for s in cold),
        "overhead_warm_samples_ms": sorted(breakdown(s, torch_import)["overhead"] for s in warm),
        "meets_target_cold": cold_ms["overhead"] <= TARGET_MS,
        "meets_target_warm": warm_ms["overhead"] <= TARGET_MS,
    }


def report(result: dict[str, Any]) -> str:
    labels = [
        ("compile", "compile (as_compiled)"),
        ("data_resolve", "data resolve (digits)"),
        ("bundle_write", "bundle write"),
        ("job_store_and_rest_of_run", "job store + rest of api.run"),
        ("process_spawn", "process spawn (LocalBackend.submit)"),
        ("child_import_torch", "  python -c 'import torch' (subtracted)"),
        ("child_model_build_data_load", "train.py to 'start' less torch import"),
        ("start_to_first_epoch_less_duration", "'start' -> epoch, less its duration"),
        ("epoch_duration", "  first epoch duration (subtracted)"),
        ("delivery_to_kernel", "epoch event -> job.follow()"),
        ("total", "total: cell start -> first epoch"),
        ("overhead", f"OVERHEAD (target <= {result['target_ms']:.0f})"),
    ]
    rows = [
        [text, f"{result['cold'][key]:.1f}", f"{result['warm'][key]:.1f}"] for key, text in labels
    ]
    text = table([f"median of {result['repeats']}, ms", "cold", "warm"], rows)
    a = result["anatomy_ms"]
    text += (
        f"\nanatomy of the child before 'start' (ms): interpreter start-up "
        f"{a['interpreter_startup']:.1f}, import numpy {a['import_numpy']:.1f}, import torch "
        f"{a['import_torch_after_numpy']:.1f}, train.py to 'start' {a['train_py_to_start']:.1f}"
        f"\npython -c pass {result['python_c_pass_ms']:.1f} ms; python -c 'import torch' "
        f"{result['python_c_import_torch_ms']:.1f} ms"
    )
    for label in ("cold", "warm"):
        verdict = "MEETS" if result[f"meets_target_{label}"] else "MISSES"
        text += f"\n{label}: overhead {result[label]['overhead']:.1f} ms, {verdict} target"
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7, help="fresh kernels (2 runs each)")
    ap.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    args = ap.parse_args()
    result = run(args.repeats)
    print(report(result))
    path = write_json(
        RESULTS_DIR / "first_epoch.json", {"machine": machine_info(), "first_epoch": result}
    )
    print(f"\nwrote {path.relative_to(REPO_ROOT)}")
    if args.check and not result["meets_target_cold"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
