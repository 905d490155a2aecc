"""Progress recognizers on what real libraries print here, compared with each library's own
record of the same run; transformers and Ultralytics on samples of real runs (too heavy to
install for the tests: see tests/fixtures/progress/README.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from neural_jupyter.runtime.progress import ProgressDispatcher, TerminalLines, plain, recognize

RUNS = Path(__file__).parent / "progress_runs"
SAMPLES = Path(__file__).parent / "fixtures" / "progress"


def lines_of(raw: bytes) -> list[str]:
    terminal = TerminalLines()
    return terminal.feed(raw.decode("utf-8", "replace")) + terminal.close()


def run(script: str, tmp_path: Path, *args: str, env: dict | None = None) -> tuple[list, dict]:
    """Run a progress_runs script; its output through the terminal cleaner and the
    dispatcher (stdout then stderr), and the library's own record."""
    record = tmp_path / "record.json"
    done = subprocess.run(
        [sys.executable, str(RUNS / script), str(record), *args],
        capture_output=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    events = recognize(lines_of(done.stdout) + lines_of(done.stderr))
    return events, json.loads(record.read_text())


def epochs(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] == "epoch"]


# --- the terminal cleaner -------------------------------------------------------------------
def test_terminal_lines_split_redraws_apply_backspaces_and_drop_escape_codes():
    terminal = TerminalLines()
    assert terminal.feed("\rEpoch 1:  10%|█ | 1/10\rEpoch 1:  20%|") == ["Epoch 1:  10%|█ | 1/10"]
    assert terminal.idle() == ["Epoch 1:  20%|"]  # a redraw in progress is passed on when idle
    assert terminal.feed("done\n") == ["done"]
    assert plain("\x1b[1m3/3\x1b[0m \x1b[32m━━\x1b[0m loss: 0.5\b\b\b0.4") == "3/3 ━━ loss: 0.4"
    assert terminal.feed("partial") == [] and terminal.idle() == []  # not a redraw: waits
    assert terminal.close() == ["partial"]


def test_report_events_suppress_recognized_ones_of_the_same_kind():
    dispatcher = ProgressDispatcher()
    assert dispatcher.feed("Epoch 2/5 - loss: 0.4")[0]["epoch"] == 2
    assert dispatcher.feed('{"event": "epoch", "epoch": 1, "metrics": {}}') == []
    assert dispatcher.feed("Epoch 3/5 - loss: 0.3") == []


def test_generic_epoch_lines():
    lines = ["Epoch: 5/10", "epoch 5/10 loss=0.41 acc: 0.9", "Epoch 6 of 10 - loss: 0.3"]
    events = recognize(lines)
    assert events[0] == {
        "event": "batch",
        "batch": 0,
        "epoch": 5,
        "epochs": 10,
        "source": "generic",
    }
    assert [(e["epoch"], e["metrics"]) for e in epochs(events)] == [
        (5, {"loss": 0.41, "acc": 0.9}),
        (6, {"loss": 0.3}),
    ]


# --- real runs here ----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("verbose", ["1", "2"])
def test_keras_fit(tmp_path, verbose):
    events, record = run("keras_fit.py", tmp_path, verbose, env={"KERAS_BACKEND": "torch"})
    history = record["history"]
    found = epochs(events)
    assert [e["epoch"] for e in found] == [1, 2, 3]  # evaluate() afterwards is no epoch
    assert all(e["epochs"] == 3 and e["source"] == "keras" for e in found)
    for index, event in enumerate(found):
        for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert event["metrics"][name] == pytest.approx(history[name][index], abs=6e-5)
    if verbose == "1":
        batches = [e for e in events if e["event"] == "batch" and e["batch"]]
        assert batches and all(e["batches"] == 3 and "loss" in e for e in batches)


@pytest.mark.slow
def test_tqdm_epoch_bars(tmp_path):
    events, record = run("tqdm_loop.py", tmp_path)
    found = epochs(events)
    assert [e["epoch"] for e in found] == [1, 2, 3]
    assert [e["metrics"]["loss"] for e in found] == [record["losses"][k] for k in "123"]
    batches = [e for e in events if e["event"] == "batch"]
    assert {e["batches"] for e in batches} == {5} and max(e["batch"] for e in batches) == 5


@pytest.mark.slow
def test_xgboost_evaluation_lines(tmp_path):
    events, record = run("xgboost_train.py", tmp_path)
    found = epochs(events)
    assert [e["epoch"] for e in found] == [1, 2, 3, 4]
    for index, event in enumerate(found):
        for data, metrics in record["record"].items():
            for metric, values in metrics.items():
                value = event["metrics"][f"{data}-{metric}"]
                assert value == pytest.approx(values[index], abs=1e-5)


@pytest.mark.slow
def test_lightgbm_evaluation_lines_without_the_repeated_best(tmp_path):
    events, record = run("lightgbm_train.py", tmp_path)
    found = epochs(events)
    values = record["record"]["valid"]["l2"]
    printed = [i for i in range(1, len(values) + 1) if i % 2 == 0]  # log_evaluation(2)
    assert [e["epoch"] for e in found] == printed  # the "best iteration" repeat is left out
    for event in found:
        assert event["metrics"]["valid_l2"] == pytest.approx(values[event["epoch"] - 1], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("bar", ["tqdm", "rich"])
def test_lightning_progress_bars(tmp_path, bar):
    events, record = run("lightning_fit.py", tmp_path, bar, env={"TTY_COMPATIBLE": "1"})
    found = epochs(events)
    assert [e["epoch"] for e in found] == [1, 2, 3]  # Lightning counts from 0
    assert all(e["source"] == "lightning" for e in found)
    shown = [e["metrics"]["val_loss"] for e in found]
    assert shown == pytest.approx(record["val_loss"], abs=6e-4)  # printed with 3 decimals
    assert all("v_num" not in e["metrics"] for e in found)


# --- samples of real runs too heavy to install for the tests ------------------------------------
def test_transformers_trainer_log_dicts():
    sample = SAMPLES / "transformers-5.25.0.stdout"
    events = recognize(lines_of(sample.read_bytes()))
    found = epochs(events)
    assert [e["epoch"] for e in found] == [1, 2, 3]
    assert [e["metrics"]["val_loss"] for e in found] == [0.6932, 0.6932, 0.6931]
    assert [e["metrics"]["loss"] for e in found] == [0.6949, 0.6936, 0.6938]
    assert not any("val_runtime" in e["metrics"] for e in found)
    assert [e["loss"] for e in events if e["event"] == "batch"] == [0.6926, 0.6942, 0.6939]


def test_ultralytics_yolo_epochs():
    sample = SAMPLES / "ultralytics-8.4.190.stdout"
    events = recognize(lines_of(sample.read_bytes()))
    found = epochs(events)
    assert [(e["epoch"], e["epochs"]) for e in found] == [(1, 3), (2, 3), (3, 3)]
    assert found[0]["metrics"] == {
        "box_loss": 0.0718,
        "cls_loss": 0.1862,
        "dfl_loss": 0.04326,
        "precision": 0.0,
        "recall": 0.0,
        "mAP50": 0.0,
        "mAP50-95": 0.0,
    }
    batches = [e for e in events if e["event"] == "batch"]
    assert batches[0] == {
        "event": "batch",
        "batch": 1,
        "batches": 2,
        "epoch": 1,
        "epochs": 3,
        "loss": 0.0718,
        "source": "ultralytics",
    }
