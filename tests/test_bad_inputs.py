"""Every bad input is refused before anything launches, with a ``NeuralError`` subclass that
names the argument (and, for a range, the accepted range).

Table-driven: each case is a magic line (run in a real ``InteractiveShell``) or a Python API
call. After each one: no new job row, no new job directory, no new child process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from neural_jupyter import api, jobs
from neural_jupyter.errors import (
    DataError,
    DSLError,
    InvalidArgumentError,
    NeuralError,
    PlatformAuthError,
)
from neural_jupyter.jobs.store import JobStore

SMALL = """network Small {
  input: (8, 8, 1)
  layers: Flatten() Dense(8, "relu") Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  train { epochs: 1 batch_size: 64 }
}"""
TINY = """network Tiny {
  input: (2,)
  layers: Dense(4, "relu") Output(2, "softmax")
  loss: "sparse_categorical_crossentropy"
  train { epochs: 1 }
}"""
HUGE_LITERAL = "x" * 1_000_000


@dataclass(frozen=True)
class Bad:
    id: str
    call: str  # a magic line/cell (starts with %) or a Python expression using the namespace
    error: type[NeuralError]
    says: tuple[str, ...]  # all of these appear in the message


def _files(tmp: Path) -> dict[str, str]:
    np.save(tmp / "objects.npy", np.array([[1, 2], [3]], dtype=object), allow_pickle=True)
    np.save(tmp / "y.npy", np.zeros(2, dtype="int64"))
    np.save(tmp / "x.npy", np.zeros((2, 2), dtype="float32"))
    (tmp / "ragged.csv").write_text("a,b,y\n1,2,0\n3,1\n")
    (tmp / "header_only.csv").write_text("a,b,y\n")
    (tmp / "empty.csv").write_text("")
    (tmp / "duplicate.csv").write_text("a,y,y\n1,0,1\n2,1,0\n")
    (tmp / "not_npy.npy").write_text("this is not a numpy file")
    return {name: str(tmp / name) for name in os.listdir(tmp)}


CASES = [
    # --- issue item 8: raw exceptions before ----------------------------------------------------
    Bad("jobs limit -1", "%neural_jobs --limit -1", InvalidArgumentError, ("--limit", "0 to")),
    Bad(
        "jobs limit overflow",
        "%neural_jobs --limit 99999999999999999999",
        InvalidArgumentError,
        ("--limit", "1000000"),
    ),
    Bad("jobs limit bool", "jobs.list(limit=True)", InvalidArgumentError, ("--limit",)),
    Bad(
        "set port=abc",
        "%neural_submit Small --platform ssh --host u@example.invalid --set port=abc --data digits",
        InvalidArgumentError,
        ("--set port", "1 to 65535", "'abc'"),
    ),
    Bad(
        "s3 storage without credentials",
        "%neural_sweep Small --data digits --storage s3://x",
        PlatformAuthError,
        ("--storage s3://x", "credentials"),
    ),
    Bad(
        "object-dtype npy",
        "api.run(Tiny, files['objects.npy'] + ',' + files['y.npy'], monitor='none')",
        DataError,
        ("objects.npy", "dtype object"),
    ),
    Bad(
        "npy that is not numpy",
        "api.run(Tiny, files['not_npy.npy'] + ',' + files['y.npy'], monitor='none')",
        DataError,
        ("not_npy.npy",),
    ),
    Bad(
        "ragged csv",
        "api.run(Tiny, files['ragged.csv'], target='y', monitor='none')",
        DataError,
        ("ragged.csv", "Line #3"),
    ),
    Bad(
        "header-only csv",
        "api.run(Tiny, files['header_only.csv'], target='y', monitor='none')",
        DataError,
        ("header_only.csv", "no data rows"),
    ),
    Bad(
        "empty csv",
        "api.run(Tiny, files['empty.csv'], target='y', monitor='none')",
        DataError,
        ("empty.csv",),
    ),
    Bad(
        "duplicated label column (csv)",
        "api.run(Tiny, files['duplicate.csv'], target='y', monitor='none')",
        DataError,
        ("duplicate.csv", "2 columns named 'y'"),
    ),
    Bad(
        "duplicated label column (data frame)",
        "api.run(Tiny, frame_with_two_y, target='y', monitor='none')",
        DataError,
        ("2 columns named 'y'",),
    ),
    # --- issue item 9: launched and failed later before -----------------------------------------
    Bad(
        "sparse labels shaped (N, 1)",
        "api.run(Tiny, (np.ones((8, 2)), np.zeros((8, 1))), monitor='none')",
        DataError,
        ("shape (8, 1)", "(N,)"),
    ),
    Bad(
        "complex-valued X",
        "api.run(Tiny, (np.ones((8, 2)) + 1j, np.zeros(8)), monitor='none')",
        DataError,
        ("complex",),
    ),
    Bad(
        "timeout nan",
        "%%neural_run --data digits --timeout nan --monitor none\nSmall",
        InvalidArgumentError,
        ("--timeout", "finite"),
    ),
    Bad(
        "seed overflow",
        "%%neural_run --data digits --seed 99999999999999999999999 --monitor none\nSmall",
        InvalidArgumentError,
        ("--seed", "0 to 4294967295"),
    ),
    Bad(
        "dashboard port 99999",
        "%neural_dashboard --port 99999 --tunnel none",
        InvalidArgumentError,
        ("--port", "0 to 65535"),
    ),
    # --- issue item 10: a 1 MB string literal ----------------------------------------------------
    Bad(
        "1 MB string literal",
        '%%neural_compile\nnetwork Big {\n  input: (8,)\n  layers: Dense(4, "'
        + HUGE_LITERAL
        + '") Output(2, "softmax")\n  loss: "mse"\n}',
        DSLError,
        ("activation", "1,000,002 characters"),
    ),
    # --- more of our own ----------------------------------------------------------------------
    Bad(
        "timeout inf",
        "api.run(Small, 'digits', timeout=float('inf'))",
        InvalidArgumentError,
        ("--timeout",),
    ),
    Bad("timeout 0", "api.run(Small, 'digits', timeout=0)", InvalidArgumentError, ("--timeout",)),
    Bad("timeout -5", "api.run(Small, 'digits', timeout=-5)", InvalidArgumentError, ("--timeout",)),
    Bad(
        "timeout 100 days",
        "api.run(Small, 'digits', timeout=100 * 86400)",
        InvalidArgumentError,
        ("--timeout", "28 days"),
    ),
    Bad(
        "epochs 0",
        "%%neural_run --data digits --epochs 0\nSmall",
        InvalidArgumentError,
        ("--epochs", "1 to"),
    ),
    Bad("epochs -3", "api.run(Small, 'digits', epochs=-3)", InvalidArgumentError, ("--epochs",)),
    Bad(
        "epochs 10**7",
        "api.run(Small, 'digits', epochs=10**7)",
        InvalidArgumentError,
        ("--epochs", "1000000"),
    ),
    Bad("epochs 2.5", "api.run(Small, 'digits', epochs=2.5)", InvalidArgumentError, ("--epochs",)),
    Bad(
        "batch size 0",
        "api.run(Small, 'digits', batch_size=0)",
        InvalidArgumentError,
        ("--batch-size",),
    ),
    Bad("seed -1", "api.run(Small, 'digits', seed=-1)", InvalidArgumentError, ("--seed",)),
    Bad(
        "precision fp8",
        "api.run(Small, 'digits', precision='fp8')",
        InvalidArgumentError,
        ("--precision", "fp32"),
    ),
    Bad(
        "debug every 0",
        "api.run(Small, 'digits', debug=True, debug_every=-2)",
        InvalidArgumentError,
        ("--debug-every",),
    ),
    Bad("dashboard port -1", "%neural_dashboard --port -1", InvalidArgumentError, ("--port",)),
    Bad(
        "dashboard port 65536", "%neural_dashboard --port 65536", InvalidArgumentError, ("--port",)
    ),
    Bad(
        "set port=70000",
        "api.submit(Small, 'digits', platform='ssh', extra={'host': 'u@h', 'port': 70000})",
        InvalidArgumentError,
        ("--set port", "65535"),
    ),
    Bad(
        "set port=0",
        "api.submit(Small, 'digits', platform='ssh', extra={'host': 'u@h', 'port': 0})",
        InvalidArgumentError,
        ("--set port",),
    ),
    Bad(
        "set connect_timeout=nan",
        "%neural_submit Small --platform ssh --host u@h --set connect_timeout=nan --data digits",
        InvalidArgumentError,
        ("--set connect_timeout", "finite"),
    ),
    Bad(
        "max hours nan",
        "%neural_submit Small --platform ssh --host u@h --max-hours nan --data digits",
        InvalidArgumentError,
        ("--max-hours", "finite"),
    ),
    Bad(
        "max hours -1",
        "api.submit(Small, 'digits', platform='ssh', extra={'host': 'u@h'}, max_hours=-1)",
        InvalidArgumentError,
        ("--max-hours",),
    ),
    Bad(
        "gpus 1000",
        "api.submit(Small, 'digits', platform='ssh', extra={'host': 'u@h'}, gpus=1000)",
        InvalidArgumentError,
        ("--gpus", "0 to 64"),
    ),
    Bad(
        "confirm_above nan",
        "api.submit(Small, 'digits', platform='ssh', extra={'host': 'u@h'}, "
        "confirm_above=float('nan'))",
        InvalidArgumentError,
        ("confirm_above",),
    ),
    Bad(
        "sweep parallel 0",
        "%neural_sweep Small --data digits --parallel 0",
        InvalidArgumentError,
        ("--parallel",),
    ),
    Bad(
        "sweep seeds 0",
        "%neural_sweep Small --data digits --seeds 0",
        InvalidArgumentError,
        ("--seeds",),
    ),
    Bad(
        "sweep trials -1",
        "%neural_sweep Small --data digits --strategy random --trials -1",
        InvalidArgumentError,
        ("--trials",),
    ),
    Bad(
        "sweep timeout nan",
        "%neural_sweep Small --data digits --timeout-per-trial nan",
        InvalidArgumentError,
        ("--timeout-per-trial",),
    ),
    Bad("logs tail -5", "%neural_logs {job} --tail -5", InvalidArgumentError, ("--tail",)),
    Bad(
        "x with inf",
        "api.run(Tiny, (np.array([[1.0, np.inf]] * 4), np.zeros(4)), monitor='none')",
        DataError,
        ("x", "infinite"),
    ),
    Bad(
        "y with nan",
        "api.run(Tiny, (np.ones((4, 2)), np.array([0, 1, np.nan, 0])), monitor='none')",
        DataError,
        ("y", "NaN"),
    ),
    Bad(
        "empty x",
        "api.run(Tiny, (np.ones((0, 2)), np.zeros(0)), monitor='none')",
        DataError,
        ("empty",),
    ),
    Bad(
        "label out of range",
        "api.run(Tiny, (np.ones((4, 2)), np.array([0, 1, 2, 0])), monitor='none')",
        DataError,
        ("labels from 0 to 2", "2 units"),
    ),
    Bad(
        "strings as x",
        "api.run(Tiny, (np.array([['a', 'b']] * 4), np.zeros(4)), monitor='none')",
        DataError,
        ("dtype",),
    ),
    Bad(
        "x and y lengths differ",
        "api.run(Tiny, (np.ones((4, 2)), np.zeros(3)), monitor='none')",
        DataError,
        ("4 samples", "3"),
    ),
    Bad(
        "data URL with a password",
        "api.run(Tiny, 'https://u:SECRETPASS123@host/x.npz', monitor='none')",
        DataError,
        ("https://u:****@host", "is a URL"),
    ),
    Bad(
        "unknown platform",
        "api.run(Small, 'digits', platform='nowhere')",
        NeuralError,
        ("nowhere",),
    ),
    Bad("gpu ids text", "api.run(Small, 'digits', gpu_ids='zero')", NeuralError, ("--gpu-ids",)),
    Bad("gpus negative", "api.run(Small, 'digits', gpus=-1)", InvalidArgumentError, ("--gpus",)),
    Bad(
        "gpus and gpu ids",
        "api.run(Small, 'digits', gpus=1, gpu_ids='0')",
        NeuralError,
        ("--gpus", "--gpu-ids", "not both"),
    ),
    Bad(
        "gpu ids on a remote platform",
        "api.run(Small, 'digits', platform='ray', gpu_ids='0')",
        NeuralError,
        ("--gpu-ids", "this machine", "--gpus N"),
    ),
    Bad(
        "seed in the model too large",
        '%%neural_compile\nnetwork S { input: (2,) layers: Dense(2) Output(2) loss: "mse" '
        "train { seed: 99999999999 } }",
        DSLError,
        ("seed", "4294967295"),
    ),
]


def _children() -> set[int]:
    """Pids of this process's children (a launched job or relay would be one)."""
    me = str(os.getpid())
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == me and fields[0] != "Z":
            found.add(int(entry.name))
    return found


@pytest.fixture
def world(ip, neural_home, tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    ip.run(f"%%neural_compile --show none\n{SMALL}")
    ip.run(f"%%neural_compile --show none\n{TINY}")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame([[1.0, 0, 1], [2.0, 1, 0]], columns=["a", "y", "y"])
    # one job row exists (for %neural_logs); cases must not add any
    existing = JobStore().create(name="existing", platform="local")
    ip.ns.update(api=api, jobs=jobs, np=np, files=_files(data_dir), frame_with_two_y=frame)
    return ip, existing.id


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_before_launch(world, neural_home, bad):
    ip, existing = world
    store = JobStore()
    rows_before = [r.id for r in store.list()]
    dirs_before = (
        set(os.listdir(neural_home / "jobs")) if (neural_home / "jobs").exists() else set()
    )
    children_before = _children()
    call = bad.call.replace("{job}", existing)
    if call.startswith("%"):
        error: Any = ip.run_error(call)
    else:
        with pytest.raises(NeuralError) as caught:
            eval(call, ip.ns)
        error = caught.value
    assert isinstance(error, bad.error), f"{type(error).__name__}: {error}"
    message = str(error)
    for words in bad.says:
        assert words in message, message
    assert len(message) < 2500  # quoted source is capped
    assert [r.id for r in store.list()] == rows_before  # no job row
    dirs_after = set(os.listdir(neural_home / "jobs")) if (neural_home / "jobs").exists() else set()
    assert dirs_after == dirs_before  # no job directory
    assert _children() <= children_before  # no process


def test_the_table_covers_the_issue_and_more():
    assert len(CASES) >= 50
