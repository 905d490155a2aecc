"""Throughput and memory of the monitor pipeline on a long job's logs.

    python benchmarks/bench_monitor.py [--log-lines 1000000] [--events 100000]

A job directory gets a ``stdout.log`` and a ``stderr.log`` as a long training run writes them:
``--events`` JSON-lines events (one ``start``; per epoch ~100 ``batch`` events and one ``epoch``
event with five metrics; three ``artifact``; ``done``) interleaved with plain log lines
(``--log-lines`` in all, 80 % on stdout, 20 % warnings on stderr, one in 10,000 holding a
``token=...`` for the redaction filter). Then, exactly as ``Job.follow()`` + ``watch()`` do:

    LocalBackend.events(job, follow=False)   # LineTail reads, parse_line per line
      -> redacted(item)                      # Job.follow masks secrets in every item
      -> Tracker.apply(item)                 # real JobStore (SQLite) in a temp dir
      -> monitor.feed(item)                  # TextMonitor into an io.StringIO, or WidgetMonitor

``WidgetMonitor`` builds real ipywidgets objects (no front-end needed). The lines are fed
as fast as the pipeline takes them, so the throttle is exercised at full pressure.

Reported per monitor: lines/s (target >= 50,000), renders and renders per second (target
<= 10/s), and, in a second pass under ``tracemalloc``, traced memory after 10 % of the lines
and after all of them, the peak, and the growth split by source file (the log ring buffer
must keep memory flat; ``Progress.history`` grows by one row per epoch by design, and that
part is shown apart). A third measurement times each stage separately on the first 10 % of
the lines held in memory (read, parse_line, Tracker.apply, feed).

``--what-if`` adds runs with ``redact()`` skipped for lines whose lower-cased text holds none
of the substrings its patterns need (patched in this process only; not the package).

The ``StringIO`` behind the text monitor is emptied every 10,000 items (as a terminal or
output area consumes it) so that its contents do not count as pipeline memory.

Writes benchmarks/results/monitor.json.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import re
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path
from time import perf_counter
from types import SimpleNamespace
from typing import Any

from _common import REPO_ROOT, RESULTS_DIR, machine_info, table, write_json

TARGET_LINES_PER_S = 50_000
TARGET_RENDERS_PER_S = 10.0
BATCHES_PER_EPOCH = 100
DRAIN_EVERY = 10_000

STDOUT_LOGS = (
    "step {i}: lr=0.001000 grad_norm={g:.4f} throughput={t:.1f} samples/s",
    "Saving intermediate predictions to /tmp/run/preds_{i}.npy",
    "data loader: worker 3 prefetched batch {i} ({t:.1f} ms)",
    "[debug] activations mean={g:.5f} std={t:.5f}",
)
STDERR_LOGS = (
    "/usr/lib/python3/site-packages/torch/optim/lr_scheduler.py:{i}: UserWarning: "
    "The epoch parameter in `scheduler.step()` was not necessary",
    "W{i} 12:00:00.000 warning: NaN in gradient of layer dense_{t:.0f}, skipped",
)


def write_logs(directory: Path, log_lines: int, events: int) -> dict[str, int]:
    """Write ``stdout.log``/``stderr.log``; returns counts by kind."""
    counts = {"log_stdout": 0, "log_stderr": 0, "events": 0, "epochs": 0, "secret_lines": 0}
    epochs = max(1, (events - 5) // (BATCHES_PER_EPOCH + 1))
    epoch = batch = 0
    event_every = max(1, log_lines // max(events, 1))
    with (
        (directory / "stdout.log").open("w", encoding="utf-8") as out,
        (directory / "stderr.log").open("w", encoding="utf-8") as err,
    ):

        def event(record: dict[str, Any]) -> None:
            out.write(json.dumps({"event": record.pop("event"), "time": 1.7e9, **record}) + "\n")
            counts["events"] += 1

        event(
            {
                "event": "start",
                "job_id": "nj-bench",
                "model": "DigitNet",
                "framework": "pytorch",
                "device": "cpu",
                "device_name": "cpu",
                "epochs": epochs,
                "batch_size": 64,
                "steps_per_epoch": BATCHES_PER_EPOCH * 10,
                "train_samples": 640_000,
                "val_samples": 160_000,
                "params": 105_866,
                "precision": "fp32",
                "resumed_from": None,
            }
        )
        for i in range(log_lines):
            g, t = (i % 997) / 997, (i % 89) * 1.5
            if i % 10_000 == 5_000:
                text = f"connecting with token={'x' * 20}{i} to the tracking server"
                counts["secret_lines"] += 1
            elif i % 5 == 4:
                text = STDERR_LOGS[i % 2].format(i=i, g=g, t=t)
            else:
                text = STDOUT_LOGS[i % 4].format(i=i, g=g, t=t)
            if i % 5 == 4:
                err.write(text + "\n")
                counts["log_stderr"] += 1
            else:
                out.write(text + "\n")
                counts["log_stdout"] += 1
            if i % event_every == 0 and epoch < epochs:
                batch += 1
                if batch <= BATCHES_PER_EPOCH:
                    event(
                        {
                            "event": "batch",
                            "epoch": epoch + 1,
                            "batch": batch * 10,
                            "batches": BATCHES_PER_EPOCH * 10,
                            "loss": round(2.3 / (1 + epoch + batch / 100), 6),
                        }
                    )
                else:
                    epoch += 1
                    batch = 0
                    loss = 2.3 / (1 + epoch)
                    event(
                        {
                            "event": "epoch",
                            "epoch": epoch,
                            "epochs": epochs,
                            "metrics": {
                                "loss": loss,
                                "accuracy": 1 - loss / 3,
                                "val_loss": loss * 1.1,
                                "val_accuracy": 1 - loss / 2.8,
                                "lr": 0.001,
                            },
                            "duration": 9.87,
                        }
                    )
                    counts["epochs"] += 1
        for name in ("weights", "history", "checkpoint"):
            event({"event": "artifact", "name": name, "path": f"output/{name}.pt", "bytes": 1})
        event(
            {
                "event": "done",
                "metrics": {"loss": 0.01, "accuracy": 0.99},
                "best_epoch": epochs,
                "epochs_run": epochs,
                "stopped_early": False,
                "wall_time": 9.87 * epochs,
            }
        )
    counts["lines"] = counts["log_stdout"] + counts["log_stderr"] + counts["events"]
    return counts


class Pipeline:
    """One job's store record, tracker and monitor, fed like ``watch()`` feeds them."""

    def __init__(self, workdir: Path, monitor: str) -> None:
        from neural_jupyter.jobs.store import JobStore
        from neural_jupyter.jobs.tracker import Tracker
        from neural_jupyter.ui.monitor import TextMonitor, WidgetMonitor

        self.store = JobStore(workdir / f"store-{monitor}-{id(self)}.sqlite")
        record = self.store.create(name="DigitNet", platform="local", job_dir=str(workdir))
        self.tracker = Tracker(self.store, record.id)
        job = SimpleNamespace(
            id=record.id,
            name=record.name,
            record=SimpleNamespace(platform="local"),
            progress=self.tracker.progress,
        )
        self.sink = io.StringIO()
        self.chars_written = 0
        if monitor == "text":
            self.view = TextMonitor(job, self.sink)
        elif monitor == "widget":
            self.view = WidgetMonitor(job)
        else:
            self.view = None

    def drain(self) -> None:
        self.chars_written += self.sink.tell()
        self.sink.seek(0)
        self.sink.truncate()


def follow_redaction():
    """What ``Job.follow`` applies to each item (identity on a checkout without it, so this
    script also measures an older checkout side by side: PYTHONPATH=that/checkout)."""
    try:
        from neural_jupyter.runtime.events import redacted
    except ImportError:
        return lambda item: item
    return redacted


def stream(workdir: Path):
    from neural_jupyter.backends.base import RemoteJob
    from neural_jupyter.backends.local import LocalBackend

    redacted = follow_redaction()
    return map(redacted, LocalBackend().events(RemoteJob("nj-bench", workdir), follow=False))


def run_pipeline(workdir: Path, monitor: str, trace: bool = False) -> dict[str, Any]:
    """Feed every line of ``workdir``'s logs through the pipeline; time it (or trace memory)."""
    pipeline = Pipeline(workdir, monitor)
    tracker, view = pipeline.tracker, pipeline.view
    gc.collect()
    if trace:
        tracemalloc.start()
        baseline = tracemalloc.get_traced_memory()[0]
    count = 0
    started = perf_counter()
    for item in stream(workdir):
        tracker.apply(item)
        if view is not None:
            view.feed(item)
        count += 1
        if count % DRAIN_EVERY == 0:
            pipeline.drain()
    elapsed = perf_counter() - started
    pipeline.drain()
    result: dict[str, Any] = {
        "monitor": monitor,
        "lines": count,
        "seconds": elapsed,
        "lines_per_s": count / elapsed,
        "renders": view.renders if view is not None else 0,
        "renders_per_s": (view.renders / elapsed) if view is not None else 0.0,
        "log_buffer_len": len(view.log) if view is not None else 0,
        "log_buffer_max": view.log.maxlen if view is not None else 0,
        "history_rows": len(tracker.progress.history),
        "text_chars_written": pipeline.chars_written,
        "store_metrics": tracker.store.get(tracker.job_id).metrics,
    }
    if trace:
        # the stream is exhausted: what is still allocated is what the pipeline keeps
        current, peak = tracemalloc.get_traced_memory()
        result["snapshot"] = tracemalloc.take_snapshot()
        tracemalloc.stop()
        result.update({"retained_bytes": current - baseline, "peak_bytes": peak - baseline})
    if view is not None:
        view.finish("SUCCEEDED")
    return result


def memory_growth(small: dict[str, Any], large: dict[str, Any]) -> dict[str, Any]:
    """What the run with 10x the lines keeps in addition, by source file."""
    before, after = small.pop("snapshot"), large.pop("snapshot")
    by_file = [
        {"file": _short(stat.traceback[0].filename), "growth_bytes": stat.size_diff}
        for stat in after.compare_to(before, "filename")
        if abs(stat.size_diff) >= 4096
    ][:8]
    # event payloads kept in Progress.history: dicts made by json.loads, rows by tracker.py
    records = sum(
        stat.size_diff
        for stat in after.compare_to(before, "filename")
        if stat.traceback[0].filename.endswith(("tracker.py", "json/decoder.py"))
    )
    growth = large["retained_bytes"] - small["retained_bytes"]
    return {
        "lines_small": small["lines"],
        "lines_large": large["lines"],
        "retained_small_bytes": small["retained_bytes"],
        "retained_large_bytes": large["retained_bytes"],
        "peak_small_bytes": small["peak_bytes"],
        "peak_large_bytes": large["peak_bytes"],
        "growth_bytes": growth,
        "growth_event_records_bytes": records,
        "growth_other_bytes": growth - records,
        "history_rows_small": small["history_rows"],
        "history_rows_large": large["history_rows"],
        "growth_by_file": by_file,
    }


def _short(filename: str) -> str:
    for marker in ("neural_jupyter/", "site-packages/", "lib/python3"):
        if marker in filename:
            return filename[filename.index(marker) :]
    return Path(filename).name


def stages(workdir: Path, limit: int) -> dict[str, float]:
    """Microseconds per line for each stage, on the first ``limit`` lines held in memory."""
    from neural_jupyter.runtime.events import parse_line
    from neural_jupyter.runtime.tail import LineTail

    raw: list[tuple[str, str]] = []
    tails = [(LineTail(workdir / f"{name}.log"), name) for name in ("stdout", "stderr")]
    started = perf_counter()
    while len(raw) < limit:
        chunks = [(tail.read(), name) for tail, name in tails]
        if not any(lines for lines, _ in chunks):
            break
        for lines, name in chunks:
            raw.extend((line, name) for line in lines)
    out: dict[str, float] = {"lines": len(raw), "read_us": (perf_counter() - started) / len(raw)}
    started = perf_counter()
    items = [parse_line(line, name) for line, name in raw]
    out["parse_line_us"] = (perf_counter() - started) / len(raw)
    redacted = follow_redaction()
    started = perf_counter()
    items = [redacted(item) for item in items]
    out["redacted_us"] = (perf_counter() - started) / len(raw)
    for monitor in ("none", "text", "widget"):
        pipeline = Pipeline(workdir, f"{monitor}-stages" if monitor == "none" else monitor)
        tracker, view = pipeline.tracker, pipeline.view
        started = perf_counter()
        for n, item in enumerate(items, 1):
            tracker.apply(item)
            if view is not None:
                view.feed(item)
            if n % DRAIN_EVERY == 0:
                pipeline.drain()
        out[monitor] = (perf_counter() - started) / len(items)
    out["tracker_apply_us"] = out.pop("none")
    for monitor in ("text", "widget"):
        out[f"feed_{monitor}_us"] = out.pop(monitor) - out["tracker_apply_us"]
    return {key: (value if key == "lines" else value * 1e6) for key, value in out.items()}


# One of these is in every text a pattern of neural_jupyter.redaction can match; searched in
# the lower-cased line without IGNORECASE (several times faster than a (?i) search).
_REDACT_TRIGGER = re.compile(
    r"akia|asia|aws_|token|secret|passw|api[_-]?key|bearer|basic|://|private key"
    r"|\b(?:ghp|gho|ghs|dapi|xox)"
)


@contextlib.contextmanager
def gated_redaction():
    """What-if: skip the regexes for lines holding none of the keywords (patched in memory)."""
    from neural_jupyter import redaction
    from neural_jupyter.jobs import tracker
    from neural_jupyter.ui import monitor

    full = redaction.redact

    def redact(text: str) -> str:
        if text and (redaction._secrets or _REDACT_TRIGGER.search(text.lower())):
            return full(text)
        return text

    saved = monitor.redact, tracker.redact
    monitor.redact = tracker.redact = redact
    try:
        yield
    finally:
        monitor.redact, tracker.redact = saved


def run(log_lines: int, events: int, memory: bool, what_if: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="nj-bench-monitor-") as tmp:
        full, small = Path(tmp) / "full", Path(tmp) / "small"
        full.mkdir()
        small.mkdir()
        started = perf_counter()
        counts = write_logs(full, log_lines, events)
        small_counts = write_logs(small, log_lines // 10, events // 10)
        write_s = perf_counter() - started
        sizes = {name: (full / f"{name}.log").stat().st_size for name in ("stdout", "stderr")}
        print(
            f"  wrote {counts['lines']:,} + {small_counts['lines']:,} lines "
            f"({sum(sizes.values()) / 2**20:.0f} MiB + 10 %) in {write_s:.1f} s",
            flush=True,
        )
        throughput = {}
        for monitor in ("none", "text", "widget"):
            throughput[monitor] = t = run_pipeline(full, monitor)
            print(
                f"  {monitor:<6} {t['lines_per_s']:>10,.0f} lines/s, {t['renders']} renders "
                f"in {t['seconds']:.1f} s",
                flush=True,
            )
        what_if_runs = {}
        if what_if:
            with gated_redaction():
                for monitor in ("text", "widget"):
                    what_if_runs[monitor] = t = run_pipeline(full, monitor)
                    print(f"  {monitor:<6} gated redact: {t['lines_per_s']:>10,.0f} lines/s")
        memory_runs = {}
        if memory:
            for monitor in ("text", "widget"):
                low = run_pipeline(small, monitor, trace=True)
                high = run_pipeline(full, monitor, trace=True)
                memory_runs[monitor] = m = memory_growth(low, high)
                print(
                    f"  {monitor:<6} kept after {m['lines_small']:,} lines "
                    f"{m['retained_small_bytes'] / 2**20:.2f} MiB, after {m['lines_large']:,} "
                    f"{m['retained_large_bytes'] / 2**20:.2f} MiB",
                    flush=True,
                )
        stage_us = stages(full, max(1, counts["lines"] // 10))
    for name in ("text", "widget"):
        if throughput[name]["log_buffer_len"] > throughput[name]["log_buffer_max"]:
            raise SystemExit("the log ring buffer grew past its bound")
    # the throttle allows one render at once, then one per 1/10 s
    meets = {
        name: throughput[name]["lines_per_s"] >= TARGET_LINES_PER_S
        and throughput[name]["renders"] <= throughput[name]["seconds"] * TARGET_RENDERS_PER_S + 1
        for name in ("text", "widget")
    }
    return {
        "counts": counts,
        "file_bytes": sizes,
        "targets": {"lines_per_s": TARGET_LINES_PER_S, "renders_per_s": TARGET_RENDERS_PER_S},
        "throughput": throughput,
        "what_if_gated_redact": what_if_runs,
        "memory": memory_runs,
        "stages_us_per_line": stage_us,
        "meets_target": meets,
    }


def report(result: dict[str, Any]) -> str:
    names = {"none": "parse+tracker only", "text": "TextMonitor", "widget": "WidgetMonitor"}
    rows = []
    runs = [(names[k], v) for k, v in result["throughput"].items()]
    runs += [(f"{names[k]}, gated redact*", v) for k, v in result["what_if_gated_redact"].items()]
    for label, t in runs:
        rows.append(
            [
                label,
                f"{t['lines_per_s']:,.0f}",
                f"{t['seconds'] / t['lines'] * 1e6:.2f}",
                str(t["renders"]),
                f"{t['renders_per_s']:.2f}",
                f"{t['log_buffer_len']}/{t['log_buffer_max']}",
            ]
        )
    c = result["counts"]
    text = table(
        [f"{c['lines']:,} lines", "lines/s", "us/line", "renders", "renders/s", "log buffer"],
        rows,
    )
    text += (
        f"\n{c['log_stdout'] + c['log_stderr']:,} log lines ({c['log_stderr']:,} stderr), "
        f"{c['events']:,} events ({c['epochs']:,} epochs); targets: >= "
        f"{TARGET_LINES_PER_S:,} lines/s, <= {TARGET_RENDERS_PER_S:g} renders/s"
    )
    if result["what_if_gated_redact"]:
        text += "\n* what-if, not the package: redact() skipped for lines without a keyword"
    if result["memory"]:
        mem_rows = []
        for name, m in result["memory"].items():
            mem_rows.append(
                [
                    names[name],
                    f"{m['retained_small_bytes'] / 2**20:.2f}",
                    f"{m['retained_large_bytes'] / 2**20:.2f}",
                    f"{m['growth_bytes'] / 1024:+.0f}",
                    f"{m['growth_event_records_bytes'] / 1024:+.0f}",
                    f"{m['growth_other_bytes'] / 1024:+.0f}",
                    f"{m['peak_small_bytes'] / 2**20:.2f}",
                    f"{m['peak_large_bytes'] / 2**20:.2f}",
                ]
            )
        first = next(iter(result["memory"].values()))
        text += "\n\n" + table(
            [
                f"tracemalloc, {first['lines_small']:,} vs {first['lines_large']:,} lines",
                "kept MiB",
                "kept MiB",
                "growth KiB",
                "history KiB",
                "other KiB",
                "peak MiB",
                "peak MiB",
            ],
            mem_rows,
        )
        text += (
            f"\nhistory = event records kept in Progress.history (one row per epoch: "
            f"{first['history_rows_small']} vs {first['history_rows_large']} epochs)"
        )
        for name, m in result["memory"].items():
            files = ", ".join(
                f"{g['file']} {g['growth_bytes'] / 1024:+.0f} KiB" for g in m["growth_by_file"][:5]
            )
            text += f"\n{names[name]} growth by file: {files or 'none >= 4 KiB'}"
    s = result["stages_us_per_line"]
    text += (
        f"\nstages, us/line over the first {s['lines']:,} lines in memory: read {s['read_us']:.2f},"
        f" parse_line {s['parse_line_us']:.2f}, redacted (Job.follow) {s['redacted_us']:.2f},"
        f" Tracker.apply {s['tracker_apply_us']:.2f}, "
        f"TextMonitor.feed {s['feed_text_us']:.2f}, WidgetMonitor.feed {s['feed_widget_us']:.2f}"
    )
    for name, ok in result["meets_target"].items():
        text += f"\n{names[name]}: {'MEETS' if ok else 'MISSES'} targets"
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
    ap.add_argument("--log-lines", type=int, default=1_000_000, help="plain log lines")
    ap.add_argument("--events", type=int, default=100_000, help="protocol events")
    ap.add_argument("--no-memory", action="store_true", help="skip the tracemalloc passes")
    ap.add_argument(
        "--what-if", action="store_true", help="also time a keyword gate in front of redact()"
    )
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args()
    result = run(args.log_lines, args.events, not args.no_memory, args.what_if)
    print(report(result))
    path = write_json(
        RESULTS_DIR / "monitor.json",
        {"machine": machine_info(), "git": git_state(), "monitor": result},
    )
    print(f"\nwrote {path.relative_to(REPO_ROOT)}")
    if args.check and not all(result["meets_target"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
