"""Debug-mode overhead: epoch time of the same generated training run with and without
``--debug`` (layer_stats every N steps), side by side in one run, alternating.

    python benchmarks/bench_debug.py [--samples 20000] [--epochs 3] [--rounds 3] [--every 10]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info, write_json

from neural_jupyter.compiler import compile_model
from neural_jupyter.runtime.bundle import RunSettings, build_bundle
from neural_jupyter.runtime.data import synthetic

NET = """network DebugBench {
  input: (28, 28, 1)
  layers:
    Conv2D(16, 3, padding="same", activation="relu")
    MaxPooling2D(2)
    Conv2D(32, 3, padding="same", activation="relu")
    MaxPooling2D(2)
    Flatten()
    Dense(128, "relu")
    Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  optimizer: Adam(learning_rate=0.001)
  metrics: ["accuracy"]
  train { epochs: 3 batch_size: 128 }
}"""


def epoch_times(bundle: Path) -> list[float]:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, "train.py"],
        cwd=bundle,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return [e["duration"] for e in events if e["event"] == "epoch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args()
    spec = compile_model(NET).spec
    data = synthetic(spec, samples=args.samples)
    results: dict[str, list[float]] = {"normal": [], "debug": []}
    with tempfile.TemporaryDirectory() as tmp:
        bundles = {}
        for mode in results:
            settings = RunSettings.from_spec(
                spec, epochs=args.epochs, debug_every=args.every if mode == "debug" else None
            )
            bundles[mode] = build_bundle(spec, data, Path(tmp) / mode, settings, job_id=mode).path
        for _ in range(args.rounds):  # alternate so drift hits both alike
            for mode in results:
                results[mode] += epoch_times(bundles[mode])[1:]  # skip the warm-up epoch
    normal, debug = (statistics.median(results[m]) for m in ("normal", "debug"))
    report = {
        "machine": machine_info(),
        "settings": vars(args),
        "median_epoch_s": {"normal": normal, "debug": debug},
        "overhead_ratio": debug / normal,
        "epochs_timed": {m: len(v) for m, v in results.items()},
    }
    print(
        f"median epoch: normal {normal:.3f} s, debug (every {args.every} steps) "
        f"{debug:.3f} s -> overhead ratio {debug / normal:.3f}"
    )
    print("wrote", write_json(RESULTS_DIR / "debug.json", report))


if __name__ == "__main__":
    main()
