"""Data-parallel training on this machine: the generated train.py under torchrun
(``procs_per_node=2``: two processes, one gloo group on the CPU). It trains digits to the
one-process accuracy band with one event stream and one checkpoint, resumes from that
checkpoint, stops every rank on cancel, and fails with the error of a rank that dies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neural_jupyter import api
from neural_jupyter.errors import ConfigurationError, InvalidArgumentError
from neural_jupyter.jobs.job import Job
from neural_jupyter.jobs.store import JobStatus, JobStore
from neural_jupyter.runtime.torchrun import first_failure

pytest.importorskip("torch")

DIGITS = """
network Digits {
  input: (8, 8, 1)
  layers: Flatten() Dense(64, "relu") Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  optimizer: Adam(learning_rate=0.01)
  metrics: ["accuracy"]
  train { epochs: 6 batch_size: 32 validation_split: 0.2 seed: 7 }
}
"""


def events(job: Job) -> list[dict]:
    found = []
    for line in job.files.stdout.read_text().splitlines():
        if line.startswith('{"event"'):
            found.append(json.loads(line))
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its ranks in sessions of their own,
    so the process group alone does not find them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def rank_of(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    values = dict(item.split(b"=", 1) for item in environ if b"=" in item)
    return int(values[b"RANK"]) if b"RANK" in values else None


def ranks(job: Job) -> dict[int, int]:
    """rank -> pid of the job's training processes."""
    pid = json.loads(job.files.process.read_text())["pid"]
    found = {}
    for child in descendants(pid):
        rank = rank_of(child)
        if rank is not None and "train.py" in Path(f"/proc/{child}/cmdline").read_text():
            found[rank] = child
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def wait_for(predicate, timeout: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def started_training(job: Job, count: int = 2) -> bool:
    return any(e["event"] == "epoch" for e in events(job)) and len(ranks(job)) == count


@pytest.mark.slow
def test_two_processes_train_digits_with_one_stream_and_one_checkpoint(neural_home):
    run = api.run(DIGITS, "digits", procs_per_node=2, monitor="none")
    assert run.metrics["val_accuracy"] >= 0.85, run.history
    job = Job.load(run.job_id)
    stream = events(job)
    kinds = [event["event"] for event in stream]
    assert kinds.count("start") == 1 and kinds.count("done") == 1 and kinds.count("epoch") == 6
    start = stream[kinds.index("start")]
    assert start["world_size"] == 2 and start["train_samples"] == 1438
    # each process 719 samples in batches of 32: 23 steps, not the 45 of one process
    assert start["steps_per_epoch"] == 23
    stderr = job.files.stderr.read_text()
    assert "data parallel: 2 processes (gloo), 2 on this node" in stderr
    output = Path(job.record.job_dir) / "bundle" / "output"
    assert sorted(p.name for p in output.iterdir() if "checkpoint" in p.name) == ["checkpoint.pt"]
    # the weights are the plain model's (no DistributedDataParallel "module." prefix)
    assert sum(p.numel() for p in run.model().parameters()) == 64 * 64 + 64 + 64 * 10 + 10
    assert JobStore().get(run.job_id).config["resources"]["procs_per_node"] == 2

    # resume: two more epochs from rank 0's checkpoint, under torchrun again
    bundle = output.parent
    settings = json.loads((bundle / "job.json").read_text())
    settings["epochs"] = 8
    (bundle / "job.json").write_text(json.dumps(settings))
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone"),
        *("--nproc-per-node", "2", "train.py", "--job", "job.json", "--resume"),
    ]
    done = subprocess.run(command, cwd=bundle, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = [json.loads(x) for x in done.stdout.splitlines() if x.startswith('{"event"')]
    assert [e["resumed_from"] for e in resumed if e["event"] == "start"] == [6]
    assert [e["epoch"] for e in resumed if e["event"] == "epoch"] == [7, 8]
    history = json.loads((output / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, 9))
    assert history[-1]["val_accuracy"] >= 0.85


@pytest.mark.slow
def test_cancel_leaves_no_rank_alive(neural_home):
    job = api.run(DIGITS, "digits", epochs=500, procs_per_node=2, wait=False, monitor="none")
    assert wait_for(lambda: started_training(job)), job.files.stderr.read_text()[-2000:]
    pids = list(ranks(job).values())
    torchrun_pid = json.loads(job.files.process.read_text())["pid"]
    job.cancel()
    assert wait_for(lambda: not any(alive(pid) for pid in [*pids, torchrun_pid]), 30)
    assert job.refresh().status is JobStatus.CANCELLED


@pytest.mark.slow
def test_a_rank_killed_mid_run_fails_the_job_with_its_error(neural_home):
    job = api.run(DIGITS, "digits", epochs=500, procs_per_node=2, wait=False, monitor="none")
    assert wait_for(lambda: started_training(job)), job.files.stderr.read_text()[-2000:]
    pids = ranks(job)
    os.kill(pids[1], signal.SIGKILL)
    job.wait(timeout=120)
    record = job.refresh()
    assert record.status is JobStatus.FAILED
    assert record.error.startswith("rank 1 (local rank 1"), record.error
    assert "SIGKILL" in record.error, record.error
    assert wait_for(lambda: not alive(pids[0]), 30), "rank 0 outlived the failed job"


@pytest.mark.slow
def test_the_magic_option_reaches_the_run(ip):
    ip.run(
        "%%neural_run --data digits --epochs 1 --procs-per-node 2 --monitor none --as r\n" + DIGITS
    )
    start = next(e for e in events(Job.load(ip.ns["r"].job_id)) if e["event"] == "start")
    assert start["world_size"] == 2


def test_layouts_a_platform_cannot_run_are_refused_before_anything_starts(neural_home):
    from neural_jupyter.compiler import compile_model

    model = compile_model(DIGITS, framework="keras")
    with pytest.raises(ConfigurationError, match="data-parallel training is for the pytorch"):
        api.run(model, "digits", procs_per_node=2, monitor="none")
    with pytest.raises(InvalidArgumentError, match="--procs-per-node"):
        api.run(DIGITS, "digits", procs_per_node=0, monitor="none")
    with pytest.raises(ConfigurationError, match="at most 1 machine"):
        api.submit(DIGITS, "digits", platform="local", nodes=2, dry_run=True)
    with pytest.raises(ConfigurationError, match="kaggle platform does not launch"):
        api.submit(DIGITS, "digits", platform="kaggle", procs_per_node=2, dry_run=True)
    assert JobStore().list() == []


def test_torchrun_report_gives_the_first_failed_rank():
    report = """
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
train.py FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-04_19:00:01
  host      : box
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 11)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 11
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-04_19:00:00
  host      : box
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 12)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 12
============================================================
""".splitlines()
    failed = first_failure(report)
    assert failed is not None and (failed.rank, failed.exit_code) == (1, -9)
    assert failed.describe() == (
        "rank 1 (local rank 1 on box) failed: Signal 9 (SIGKILL) received by PID 12"
    )
    assert first_failure(report[:8]) is None
