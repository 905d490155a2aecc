"""How compile, code generation and bundle writing scale with the number of layers.

    python benchmarks/bench_codegen_scale.py [--sizes 1000,2500,5000,10000] [--repeats 3]
                                             [--baseline-tree PATH] [--profile] [--out PATH]

One model per size, every layer written on its own line (so the parser sees them all), a
cycle of layers that all carry an activation (each becomes an entry of train.py's
``LAYER_ACTIVATIONS``, the statement that used to grow quadratically): ``Dense(32, "relu")``,
``Activation("tanh")``, ``Dense(32, "gelu")``, ``Activation("sigmoid")``, then
``Output(10, "softmax")``. Each phase is timed on its own, parse cache bypassed:

* ``parse``: ``dsl.parser.parse(source)``;
* ``analyze``: ``dsl.analyze(program)`` (binding, shapes, counts);
* ``pytorch``: the model module (``codegen.pytorch.generate``);
* ``train_py``: the PyTorch ``train.py`` (``generate_training_script``, model included);
* ``keras``: the Keras ``build_model`` module;
* ``bundle``: ``build_bundle`` into a temporary directory (``train.py``, ``spec.json``, a
  16-sample data set).

``compile_train_py`` = parse + analyze + train_py: the issue's "compile + train.py" target
(<= 1 s at 10,000 layers, linear). Each phase is timed by CPU time (``time.process_time``;
the work is single-threaded, so other load on a shared machine hardly moves it) and by wall
time. Reported per clock and size: median seconds per phase, microseconds per layer, and
``growth`` = time(n) / time(smallest) divided by n / smallest (1.0 is linear, 10 would be
quadratic over 1k -> 10k). Reported, not asserted; ``--check`` exits 1 when compile_train_py
at the largest size exceeds 1 s of CPU time or its CPU growth exceeds 1.5.

``--baseline-tree PATH`` also runs the same measurement, in a subprocess, on another checkout
of the package (e.g. ``git worktree add /tmp/base <commit>``), and reports each phase's
speed-up against it in the same run. ``--profile`` writes a cProfile of the largest size's
full path to ``results/codegen_scale_profile.txt``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, RESULTS_DIR, machine_info, table, write_json

CYCLE = ('Dense(32, "relu")', 'Activation("tanh")', 'Dense(32, "gelu")', 'Activation("sigmoid")')
PHASES = ("parse", "analyze", "pytorch", "train_py", "keras", "bundle")
PHASES_ALL = (*PHASES, "compile_train_py")


def model_source(layers: int) -> str:
    """A network of exactly ``layers`` layers, one per line."""
    body = [f"    {CYCLE[i % len(CYCLE)]}" for i in range(layers - 1)]
    body.append('    Output(10, "softmax")')
    return (
        f"network Scale{layers} {{\n  input: (32,)\n  layers:\n"
        + "\n".join(body)
        + '\n  loss: "sparse_categorical_crossentropy"\n'
        "  train { epochs: 1 batch_size: 8 }\n}\n"
    )


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def run_phases(source: str, directory: Path) -> dict[str, dict[str, float]]:
    """Seconds per phase for one source (each phase once), by clock: ``cpu`` (this process's
    CPU time: the work is single-threaded, so other load on the machine hardly moves it)
    and ``wall``."""
    from neural_jupyter.codegen import keras, pytorch, pytorch_training
    from neural_jupyter.dsl import analyze
    from neural_jupyter.dsl.parser import parse
    from neural_jupyter.runtime.bundle import RunSettings, build_bundle
    from neural_jupyter.runtime.data import synthetic

    times: dict[str, dict[str, float]] = {clock: {} for clock in CLOCKS}

    def timed(phase: str, function, *args):
        starts = {clock: read() for clock, read in CLOCKS.items()}
        result = function(*args)
        for clock, read in CLOCKS.items():
            times[clock][phase] = read() - starts[clock]
        return result

    program = timed("parse", parse, source)
    spec = timed("analyze", analyze, program)
    timed("pytorch", pytorch.generate, spec)
    timed("train_py", pytorch_training.generate_training_script, spec)
    timed("keras", keras.generate, spec)
    dataset = synthetic(spec, samples=16)
    settings = RunSettings.from_spec(spec)
    timed("bundle", lambda: build_bundle(spec, dataset, directory, settings, job_id="scale"))
    for phases in times.values():
        phases["compile_train_py"] = phases["parse"] + phases["analyze"] + phases["train_py"]
    return times


def measure(sizes: list[int], repeats: int) -> dict[str, dict[int, dict[str, float]]]:
    """{clock: {size: {phase: median seconds}}}."""
    results: dict[str, dict[int, dict[str, float]]] = {clock: {} for clock in CLOCKS}
    with tempfile.TemporaryDirectory() as tmp:
        run_phases(model_source(50), Path(tmp) / "warmup")  # grammar, imports, templates
        for size in sizes:
            source = model_source(size)
            samples = [run_phases(source, Path(tmp) / f"{size}-{r}") for r in range(repeats)]
            for clock in CLOCKS:
                results[clock][size] = {
                    k: statistics.median(s[clock][k] for s in samples) for k in samples[0][clock]
                }
    return results


def report(results: dict[int, dict[str, float]]) -> tuple[str, dict]:
    sizes = sorted(results)
    base = sizes[0]
    keys = [*PHASES, "compile_train_py"]
    growth = {
        size: {
            k: (results[size][k] / results[base][k]) / (size / base) if results[base][k] else None
            for k in keys
        }
        for size in sizes
    }
    rows = []
    for key in keys:
        row = [key]
        for size in sizes:
            seconds = results[size][key]
            row.append(f"{seconds * 1e3:9.1f} ms {seconds / size * 1e6:6.1f} us/l")
        g = growth[sizes[-1]][key]
        row.append("-" if g is None else f"{g:.2f}")
        rows.append(row)
    headers = ["phase", *(f"{s:,} layers" for s in sizes), f"growth {base}->{sizes[-1]}"]
    return table(headers, rows), growth


def profile(size: int) -> Path:
    profiler = cProfile.Profile()
    source = model_source(size)
    with tempfile.TemporaryDirectory() as tmp:
        profiler.enable()
        run_phases(source, Path(tmp) / "bundle")
        profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(40)
    path = RESULTS_DIR / "codegen_scale_profile.txt"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


def baseline(tree: Path, sizes: list[int], repeats: int) -> dict[str, dict[int, dict]]:
    """The same measurement on another checkout, in a fresh interpreter."""
    command = [
        sys.executable,
        __file__,
        "--tree",
        str(tree),
        "--sizes",
        ",".join(map(str, sizes)),
        "--repeats",
        str(repeats),
        "--json-only",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds = json.loads(done.stdout)["seconds"]
    return {clock: {int(k): v for k, v in by_size.items()} for clock, by_size in seconds.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,2500,5000,10000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-tree", type=Path, help="another checkout to compare with")
    parser.add_argument("--tree", type=Path, default=REPO_ROOT, help=argparse.SUPPRESS)
    parser.add_argument("--json-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "codegen_scale.json")
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))
    sizes = sorted(int(s) for s in args.sizes.split(","))
    results = measure(sizes, args.repeats)
    if args.json_only:
        print(json.dumps({"seconds": results}))
        return 0
    data: dict = {"machine": machine_info(), "repeats": args.repeats, "seconds": results}
    growth = {}
    for clock in CLOCKS:
        text, growth[clock] = report(results[clock])
        print(f"{clock} time (median of {args.repeats}):\n{text}\n")
    data["growth"] = growth
    largest = sizes[-1]
    for clock in CLOCKS:
        total = results[clock][largest]["compile_train_py"]
        print(
            f"compile + train.py at {largest:,} layers ({clock}): {total:.3f} s "
            f"(target <= 1 s); growth {growth[clock][largest]['compile_train_py']:.2f} "
            "(1.0 = linear)"
        )
    if args.baseline_tree:
        base = baseline(args.baseline_tree, sizes, args.repeats)
        data["baseline"] = {"tree": str(args.baseline_tree), "seconds": base}
        data["speedup"] = {}
        for clock in CLOCKS:
            base_text, _ = report(base[clock])
            print(f"\nbaseline {args.baseline_tree}, {clock} time:\n{base_text}")
            speedup = {
                size: {k: base[clock][size][k] / results[clock][size][k] for k in PHASES_ALL}
                for size in sizes
            }
            rows = [[key, *(f"{speedup[size][key]:.1f}x" for size in sizes)] for key in PHASES_ALL]
            print(f"\nspeed-up, {clock} time (baseline / this tree):")
            print(table(["phase", *(f"{s:,}" for s in sizes)], rows))
            data["speedup"][clock] = speedup
    if args.profile:
        print(f"profile: {profile(largest)}")
    write_json(args.out, data)
    print(f"results: {args.out}")
    cpu = results["cpu"][largest]["compile_train_py"]
    met = cpu <= 1.0 and growth["cpu"][largest]["compile_train_py"] <= 1.5
    return 0 if met or not args.check else 1


if __name__ == "__main__":
    raise SystemExit(main())
