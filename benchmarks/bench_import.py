"""What ``%load_ext neural_jupyter`` adds to a bare IPython start, in fresh interpreters.

    python benchmarks/bench_import.py [--repeats 15]

Each sample is a new ``python -c`` process (bytecode caches warm, one untimed warm-up each):

  (a) import IPython; InteractiveShell.instance()
  (b) the same + shell.run_line_magic("load_ext", "neural_jupyter")

(a) and (b) alternate so drift hits both. The added time is median(b) - median(a), both as
whole-process wall time seen by the parent and as time measured inside the child. Target:
<= 150 ms added. Each (b) child also asserts that no heavy optional dependency (torch,
tensorflow, keras, ipywidgets, boto3) is in ``sys.modules`` after loading the extension.

Writes benchmarks/results/import.json (bench_compile.py runs this too, into compile.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from time import perf_counter
from typing import Any

from _common import REPO_ROOT, RESULTS_DIR, machine_info, table, write_json

TARGET_ADDED_MS = 150.0
FORBIDDEN = ("torch", "tensorflow", "keras", "ipywidgets", "boto3")

_CHILD = r"""
import time
_t0 = time.perf_counter()
import IPython
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
_t1 = time.perf_counter()
_before = set(__import__("sys").modules)
LOAD_EXT = {load_ext}
if LOAD_EXT:
    shell.run_line_magic("load_ext", "neural_jupyter")
_t2 = time.perf_counter()
import json, sys
forbidden = {forbidden!r}
loaded = sorted(
    m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in forbidden)
)
magics = shell.magics_manager.magics
print(json.dumps({{
    "ipython_s": _t1 - _t0,
    "load_ext_s": _t2 - _t1,
    "total_s": _t2 - _t0,
    "forbidden_loaded": loaded,
    "extension_loaded": "neural_jupyter" in shell.extension_manager.loaded,
    "line_magics": sorted(m for m in magics["line"] if m.startswith("neural")),
    "cell_magics": sorted(m for m in magics["cell"] if m.startswith("neural")),
    "modules_added": len(set(sys.modules) - _before),
    "lark_loaded": "lark" in sys.modules,
}}))
"""


def _env(ipython_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["IPYTHONDIR"] = ipython_dir  # no user profile, startup files or extensions
    env.pop("PYTHONSTARTUP", None)
    return env


def _run_child(load_ext: bool, env: dict[str, str], importtime: bool = False) -> dict[str, Any]:
    code = _CHILD.format(load_ext=load_ext, forbidden=FORBIDDEN)
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", code]
    start = perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    wall = perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({'b' if load_ext else 'a'}):\n{proc.stderr[-3000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    data["wall_s"] = wall
    if importtime:
        data["importtime"] = _parse_importtime(proc.stderr)
    return data


def _parse_importtime(stderr: str) -> dict[str, int]:
    """module -> cumulative microseconds, from ``-X importtime`` output."""
    out: dict[str, int] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _self_us, cumulative, name = line[len("import time:") :].split("|", 2)
        out[name.strip()] = int(cumulative)
    return out


def _med(samples: list[dict[str, Any]], key: str) -> float:
    return statistics.median(s[key] for s in samples) * 1e3


def run(repeats: int = 15) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="nj-bench-ipython-") as ipython_dir:
        env = _env(ipython_dir)
        _run_child(False, env)  # warm-up: profile dir, bytecode caches
        _run_child(True, env)
        bare: list[dict[str, Any]] = []
        ext: list[dict[str, Any]] = []
        for _ in range(repeats):
            bare.append(_run_child(False, env))
            ext.append(_run_child(True, env))
        # which modules load_ext adds, with -X importtime (one extra run each, not timed)
        it_bare = _run_child(False, env, importtime=True)["importtime"]
        it_ext = _run_child(True, env, importtime=True)["importtime"]

    for sample in ext:
        if sample["forbidden_loaded"]:
            raise SystemExit(
                "load_ext neural_jupyter imported heavy optional modules: "
                + ", ".join(sample["forbidden_loaded"][:20])
            )
        if not sample["extension_loaded"]:
            raise SystemExit("neural_jupyter did not load as an IPython extension")

    added_top = sorted(
        ((name, us) for name, us in it_ext.items() if name not in it_bare),
        key=lambda item: -item[1],
    )[:12]
    wall_a, wall_b = _med(bare, "wall_s"), _med(ext, "wall_s")
    in_a, in_b = _med(bare, "total_s"), _med(ext, "total_s")
    return {
        "repeats": repeats,
        "target_added_ms": TARGET_ADDED_MS,
        "bare_ipython": {"wall_median_ms": wall_a, "in_process_median_ms": in_a},
        "with_load_ext": {"wall_median_ms": wall_b, "in_process_median_ms": in_b},
        "added_wall_ms": wall_b - wall_a,
        "added_in_process_ms": in_b - in_a,
        "load_ext_call_median_ms": _med(ext, "load_ext_s"),
        "meets_target": (wall_b - wall_a) <= TARGET_ADDED_MS,
        "forbidden_checked": list(FORBIDDEN),
        "forbidden_loaded": [],
        "lark_loaded_by_load_ext": ext[0]["lark_loaded"],
        "modules_added_by_load_ext": statistics.median(s["modules_added"] for s in ext),
        "magics": {"line": ext[0]["line_magics"], "cell": ext[0]["cell_magics"]},
        "imports_added_cumulative_us": dict(added_top),
    }


def report(result: dict[str, Any]) -> str:
    rows = [
        [
            "import IPython + InteractiveShell",
            f"{result['bare_ipython']['wall_median_ms']:.1f}",
            f"{result['bare_ipython']['in_process_median_ms']:.1f}",
        ],
        [
            "  + %load_ext neural_jupyter",
            f"{result['with_load_ext']['wall_median_ms']:.1f}",
            f"{result['with_load_ext']['in_process_median_ms']:.1f}",
        ],
        [
            f"added (target <= {result['target_added_ms']:.0f} ms)",
            f"{result['added_wall_ms']:.1f}",
            f"{result['added_in_process_ms']:.1f}",
        ],
    ]
    text = table([f"fresh process, median of {result['repeats']}", "wall ms", "in-proc ms"], rows)
    verdict = "MEETS" if result["meets_target"] else "MISSES"
    text += (
        f"\nload_ext call alone: {result['load_ext_call_median_ms']:.1f} ms; "
        f"{verdict} target; none of {', '.join(result['forbidden_checked'])} imported"
    )
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=15, help="processes per variant")
    args = ap.parse_args()
    result = run(args.repeats)
    print(report(result))
    path = write_json(RESULTS_DIR / "import.json", {"machine": machine_info(), "import": result})
    print(f"\nwrote {path.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
