"""Compile time: neural-jupyter's full compile vs neural-dsl 0.2.9's parser alone, one run.

    python benchmarks/bench_compile.py            # creates benchmarks/.venv-neuraldsl if missing
    python benchmarks/bench_compile.py --quick    # fewer repetitions (smoke run)
    python benchmarks/bench_compile.py --profile  # + cProfile of our compile

For each model the SAME source text is given to both sides (the networks below are written
in the common subset of the two languages) and both sides must parse every layer:

  ours:   compile_model(src).code        parse + validate + shapes + PyTorch code generation
  theirs: network_parser.parse(src) + ModelTransformer().transform(tree)
          (neural-dsl's parser alone, in its own venv, in a subprocess started from here;
          see neural_dsl_parse.py for exactly what is timed and what is switched off)

Each side: warm-up calls, then ``repeats`` calls timed one by one with time.perf_counter;
median and min are reported. ratio = their parse median / our full compile median
(target from the issue: >= 10). The import benchmark (bench_import.py) runs in the same run
unless --no-import. Results: benchmarks/results/compile.json.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from _common import (
    BENCH_DIR,
    REPO_ROOT,
    RESULTS_DIR,
    machine_info,
    measure,
    summarize,
    table,
    write_json,
)

sys.path.insert(0, str(REPO_ROOT))

import bench_import

import neural_jupyter
from neural_jupyter.compiler import GENERATORS, compile_model
from neural_jupyter.dsl import analyze, parse
from neural_jupyter.dsl.parser import clear_cache

TARGET_RATIO = 10.0
DEFAULT_VENV = BENCH_DIR / ".venv-neuraldsl"
SETUP_SCRIPT = BENCH_DIR / "setup_neural_dsl_venv.sh"

TAIL = """  loss: "sparse_categorical_crossentropy"
  optimizer: Adam(learning_rate=0.001)
}
"""


def cnn10_source() -> str:
    """A 10-layer MNIST CNN."""
    return (
        """network MnistCNN {
  input: (28, 28, 1)
  layers:
    Conv2D(filters=32, kernel_size=(3,3), activation="relu")
    BatchNormalization()
    Conv2D(filters=32, kernel_size=(3,3), activation="relu")
    MaxPooling2D(pool_size=(2,2))
    Conv2D(filters=64, kernel_size=(3,3), activation="relu")
    MaxPooling2D(pool_size=(2,2))
    Dropout(0.25)
    Flatten()
    Dense(128, "relu")
    Output(10, "softmax")
"""
        + TAIL
    )


def mixed200_source() -> str:
    """200 layers, each written out (no `* n` repetition, so both parsers see 200 calls):
    50 x [Conv2D same-padding, BatchNormalization, Dropout], Flatten, 48 x Dense, Output."""
    conv = [
        '    Conv2D(filters=16, kernel_size=(3,3), padding="same", activation="relu")',
        "    BatchNormalization()",
        "    Dropout(0.1)",
    ]
    lines = ["network Deep200 {", "  input: (16, 16, 3)", "  layers:"]
    lines += conv * 50
    lines.append("    Flatten()")
    lines += ['    Dense(64, "relu")'] * 48
    lines.append('    Output(10, "softmax")')
    return "\n".join(lines) + "\n" + TAIL


# key -> (source, layers expected, repeats, warm-up calls)
MODELS: dict[str, tuple[str, int, int, int]] = {
    "cnn10": (cnn10_source(), 10, 1000, 50),
    "mixed200": (mixed200_source(), 200, 100, 10),
}


# --- neural-dsl side --------------------------------------------------------------------------


def ensure_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    env = {**os.environ, "NEURAL_DSL_VENV": str(venv), "PYTHON": sys.executable}
    subprocess.run(["bash", str(SETUP_SCRIPT)], check=True, env=env)
    return python


def run_neural_dsl(python: Path, job: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "PYSNOOPER_DISABLED": "1"}
    env.pop("PYTHONPATH", None)  # nothing of ours in their interpreter
    with tempfile.TemporaryDirectory(prefix="nj-bench-nd-") as tmp:
        out = Path(tmp) / "neural_dsl.json"
        proc = subprocess.run(
            [str(python), str(BENCH_DIR / "neural_dsl_parse.py"), str(out)],
            input=json.dumps(job),
            env=env,
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not out.exists():
            raise SystemExit(f"neural-dsl benchmark failed:\n{proc.stderr[-4000:]}")
        return json.loads(out.read_text(encoding="utf-8"))


# --- our side ---------------------------------------------------------------------------------


def full_compile(source: str) -> str:
    """A cold compile: the parse cache is emptied first, so every call parses."""
    clear_cache()
    return compile_model(source).code


def warm_compile(source: str) -> str:
    """A re-run cell or a sweep trial: the parse comes from the cache."""
    return compile_model(source).code


def check_ours(key: str, source: str, layers: int) -> dict[str, Any]:
    model = compile_model(source)
    code = model.code
    assert len(model.spec.layers) == layers, (key, len(model.spec.layers))
    assert f"class {model.name}(nn.Module)" in code, key
    return {
        "name": model.name,
        "input": list(model.spec.input_shape),
        "layer_types": [layer.kind for layer in model.spec.layers],
    }


def time_ours(source: str, repeats: int, warmup: int) -> dict[str, Any]:
    program = parse(source)
    spec = analyze(program)
    generate = GENERATORS["pytorch"]
    return {
        "full_compile": summarize(measure(lambda: full_compile(source), repeats, warmup)),
        "warm_compile": summarize(measure(lambda: warm_compile(source), repeats, warmup)),
        "phases": {
            "parse": summarize(measure(lambda: parse(source), repeats, warmup)),
            "analyze": summarize(measure(lambda: analyze(program), repeats, warmup)),
            "codegen_pytorch": summarize(measure(lambda: generate(spec), repeats, warmup)),
        },
    }


def profile_ours(source: str, calls: int, top: int = 25) -> str:
    full_compile(source)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        full_compile(source)
    profiler.disable()
    text = io.StringIO()
    for order in ("tottime", "cumulative"):
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats(order).print_stats(top)
    return text.getvalue()


# --- driver -----------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a tenth of the repetitions")
    ap.add_argument("--no-import", action="store_true", help="skip the import benchmark")
    ap.add_argument("--import-repeats", type=int, default=15)
    ap.add_argument("--profile", action="store_true", help="cProfile our compile of mixed200")
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="neural-dsl venv")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "compile.json")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args()
    scale = 10 if args.quick else 1

    python = ensure_venv(args.venv)
    models = {
        key: (src, layers, max(10, repeats // scale), max(3, warmup // scale))
        for key, (src, layers, repeats, warmup) in MODELS.items()
    }

    expected = {key: check_ours(key, src, layers) for key, (src, layers, _, _) in models.items()}
    job = {
        "models": {
            key: {"source": src, "repeats": repeats, "warmup": warmup, **expected[key]}
            for key, (src, _, repeats, warmup) in models.items()
        }
    }

    print("timing neural-jupyter (in process) ...", flush=True)
    ours = {key: time_ours(src, rep, warm) for key, (src, _, rep, warm) in models.items()}
    print(f"timing neural-dsl parser (subprocess, {_rel(python)}) ...", flush=True)
    theirs = run_neural_dsl(python, job)

    compile_results: dict[str, Any] = {}
    rows = []
    for key, (src, layers, repeats, _) in models.items():
        o, t = ours[key]["full_compile"], theirs["models"][key]["parse"]
        shipped = theirs["models"][key]["parse_network_as_shipped"]
        ratio = t["median_ms"] / o["median_ms"]
        compile_results[key] = {
            "layers": layers,
            "source_lines": src.count("\n"),
            "repeats": repeats,
            "ours_full_compile": o,
            "ours_warm_compile": ours[key]["warm_compile"],
            "ratio_warm_median": t["median_ms"] / ours[key]["warm_compile"]["median_ms"],
            "ours_phases": ours[key]["phases"],
            "neural_dsl_parse": t,
            "neural_dsl_parse_network_as_shipped": shipped,
            "neural_dsl_layers_parsed": theirs["models"][key]["layers_parsed"],
            "ratio_median": ratio,
            "ratio_min": t["min_ms"] / o["min_ms"],
            "ratio_vs_as_shipped_median": shipped["median_ms"] / o["median_ms"],
            "target_ratio": TARGET_RATIO,
            "meets_target": ratio >= TARGET_RATIO,
        }
        phases = ours[key]["phases"]
        rows.append(
            [
                f"{key} ({layers} layers)",
                f"{o['median_ms']:.3f} / {o['min_ms']:.3f}",
                f"{t['median_ms']:.3f} / {t['min_ms']:.3f}",
                f"{ratio:.2f}x",
                f"{shipped['median_ms'] / o['median_ms']:.2f}x",
                "/".join(
                    f"{phases[p]['median_ms']:.2f}" for p in ("parse", "analyze", "codegen_pytorch")
                ),
            ]
        )

    print()
    print(
        table(
            [
                "model",
                "ours full compile ms (med/min)",
                "neural-dsl parse ms (med/min)",
                "ratio",
                "vs parse_network",
                "ours parse/analyze/codegen ms",
            ],
            rows,
        )
    )
    missed = [key for key, r in compile_results.items() if not r["meets_target"]]
    print(
        f"ratio = neural-dsl parse median / our full compile median; target >= {TARGET_RATIO:g}x: "
        + (f"MISSED for {', '.join(missed)}" if missed else "met")
    )

    result: dict[str, Any] = {
        "machine": machine_info(),
        "versions": {
            "neural-jupyter": neural_jupyter.__version__,
            "lark (ours)": _version("lark"),
            **{f"{k} (neural-dsl venv)": v for k, v in theirs["versions"].items()},
        },
        "method": {
            "ours": "neural_jupyter.compiler.compile_model(src).code (pytorch backend)",
            "neural_dsl": theirs["entry_point"],
            "neural_dsl_secondary": theirs["secondary_entry_point"],
            "neural_dsl_env": {"PYSNOOPER_DISABLED": "1", "logging": "disabled (CRITICAL)"},
            "neural_dsl_pysnooper_disabled": theirs["pysnooper_disabled"],
            "timer": "time.perf_counter per call, after warm-up; same source text both sides",
        },
        "compile": compile_results,
        "sources": {key: src for key, (src, *_) in models.items()},
    }

    if not args.no_import:
        print(f"\ntiming import + %load_ext ({args.import_repeats} fresh processes each) ...")
        imp = bench_import.run(args.import_repeats)
        print(bench_import.report(imp))
        result["import"] = imp

    if args.profile:
        text = profile_ours(models["mixed200"][0], max(5, 50 // scale))
        path = args.out.with_name("compile_profile.txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"\nprofile of our compile (mixed200): {_rel(path)}")

    path = write_json(args.out, result)
    print(f"\nwrote {_rel(path)}")
    if args.check and (missed or not result.get("import", {}).get("meets_target", True)):
        raise SystemExit(1)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _rel(path: Path) -> str:
    try:
        return str(path.absolute().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    main()
