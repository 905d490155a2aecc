"""Failures that say what failed and leave a state some magic can clear: a full disk during a
launch, a damaged row, a dropped column, rows in every state cancelled and removed."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import time
import uuid

import numpy as np
import pytest

from neural_jupyter import api, jobs
from neural_jupyter.errors import JobError, JobStoreError, LaunchError
from neural_jupyter.jobs.store import JobStatus, JobStore
from neural_jupyter.runtime import bundle as bundle_module

TINY = """network Tiny {
  input: (8,)
  layers: Dense(4, "relu") Output(2, "softmax")
  loss: "sparse_categorical_crossentropy"
  train { epochs: 1 batch_size: 64 }
}"""
SLOW = """network Slow {
  input: (8,)
  layers: Dense(64, "relu") Dense(64, "relu") Output(2, "softmax")
  loss: "sparse_categorical_crossentropy"
  train { epochs: 400 batch_size: 8 }
}"""


def gone(pid: int) -> bool:
    """The process has exited (an unreaped zombie counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def big_data(megabytes: int) -> tuple[np.ndarray, np.ndarray]:
    rows = megabytes * 2**20 // (8 * 4)
    rng = np.random.default_rng(0)
    return rng.random((rows, 8), dtype=np.float32), rng.integers(0, 2, rows)


# --- a full disk ----------------------------------------------------------------------------------
@pytest.fixture
def tiny_disk(neural_home, tmp_path, monkeypatch):
    """NEURAL_JUPYTER_HOME on a 3 MB tmpfs (needs mount rights: root in a container that
    allows it); skipped cleanly where the test cannot make one."""
    mount_point = tmp_path / "tiny-disk"
    mount_point.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("making a tiny file system needs root and mount(8)")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip() or made.returncode}")
    home = mount_point / "home"
    monkeypatch.setenv("NEURAL_JUPYTER_HOME", str(home))
    yield home
    subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_a_full_disk_fails_the_launch_with_the_real_cause(tiny_disk, ip):
    x, y = big_data(8)  # does not fit: data.npz fails half way
    ip.ns.update(x_big=x, y_big=y)
    ip.run(f"%%neural_compile --show none\n{TINY}")
    error = ip.run_error("%%neural_run --data x_big,y_big --monitor none\nTiny")
    assert isinstance(error, LaunchError), f"{type(error).__name__}: {error}"
    assert "no space left on device writing" in str(error) and "data.npz" in str(error)
    (record,) = JobStore().list()
    assert record.status is JobStatus.FAILED
    assert "no space left on device writing" in record.error and "data.npz" in record.error
    assert not (tiny_disk / "jobs" / record.id / "bundle").exists()  # the space came back
    ip.run(f"%neural_rm {record.id}")
    assert JobStore().list() == []


def test_a_failing_write_is_reported_even_when_the_store_cannot_record_it(
    neural_home, monkeypatch, ip
):
    """The narrowest boundary: the data file's write fails with ENOSPC, and so does the job
    store's next write (as SQLite's would on a full disk)."""

    def full(path, **arrays):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(bundle_module.np, "savez", full)
    original = JobStore.set_status
    calls = []

    def store_full(self, job_id, status, **kwargs):
        calls.append(status)
        if len(calls) == 1:
            raise JobStoreError(f"job store {self.path}: database or disk is full")
        return original(self, job_id, status, **kwargs)

    monkeypatch.setattr(JobStore, "set_status", store_full)
    with pytest.raises(LaunchError) as caught:
        api.run(TINY, "synthetic", monitor="none")
    text = str(caught.value)
    assert "no space left on device writing" in text and "data.npz" in text
    assert "could not record the failure" in text  # said, but not in place of the cause
    (record,) = JobStore().list()
    assert record.status is JobStatus.PENDING  # the store could not write; the launch is over
    monkeypatch.setattr(JobStore, "set_status", original)
    ip.run("%neural_jobs")  # listing reconciles: the launch in this kernel has ended
    record = JobStore().get(record.id)
    assert record.status is JobStatus.FAILED and "stopped before the job started" in record.error
    ip.run(f"%neural_rm {record.id}")
    assert JobStore().list() == []


# --- damaged rows -------------------------------------------------------------------------------
def three_jobs() -> list[str]:
    store = JobStore()
    ids = []
    for name in ("first", "second", "third"):
        record = store.create(name=name, platform="local", config={"a": 1})
        store.set_status(record.id, JobStatus.SUCCEEDED, metrics={"loss": 0.5})
        ids.append(record.id)
    return ids


def test_one_damaged_row_is_shown_as_damaged_while_the_rest_list(neural_home, ip, capsys):
    first, second, third = three_jobs()
    with sqlite3.connect(JobStore().path) as conn:
        conn.execute("UPDATE jobs SET metrics = '{not json' WHERE id = ?", (second,))
        conn.execute("UPDATE jobs SET status = 'EXPLODED', config = '[1]' WHERE id = ?", (third,))
    listed = {job.id: job.record for job in jobs.list()}
    assert set(listed) == {first, second, third}
    assert listed[first].damage is None and listed[first].metrics == {"loss": 0.5}
    assert "metrics is not a JSON object" in listed[second].damage
    assert "unknown status 'EXPLODED'" in listed[third].damage
    assert "config is not a JSON object" in listed[third].damage
    ip.run("%neural_jobs")
    out = capsys.readouterr().out
    assert out.count("DAMAGED") == 2 and first in out and "SUCCEEDED" in out
    ip.run(f"%neural_cancel {third}")
    assert "CANCELLED" in capsys.readouterr().out
    ip.run(f"%neural_rm {second}")
    ip.run(f"%neural_rm {third}")
    assert [job.id for job in jobs.list()] == [first]


@pytest.mark.skipif(sqlite3.sqlite_version_info < (3, 35), reason="DROP COLUMN needs SQLite 3.35")
def test_a_dropped_column_lists_every_row_as_damaged(neural_home, ip, capsys):
    ids = three_jobs()
    with sqlite3.connect(JobStore().path) as conn:
        conn.execute("ALTER TABLE jobs DROP COLUMN metrics")
    listed = jobs.list()
    assert sorted(job.id for job in listed) == sorted(ids)
    assert all("column metrics is missing" in job.record.damage for job in listed)
    ip.run("%neural_jobs")
    assert capsys.readouterr().out.count("DAMAGED") == 3
    error = ip.run_error(f"%%neural_run --data synthetic --monitor none\n{TINY}")
    assert isinstance(error, JobStoreError) and "metrics" in str(error)
    assert "column of the job store was dropped" in str(error)
    ip.run(f"%neural_rm {ids[0]}")
    assert len(jobs.list()) == 2


# --- every state can be cleared -----------------------------------------------------------------
def test_every_row_in_any_state_can_be_cancelled_and_removed(neural_home, ip, capsys):
    store = JobStore()
    live_other = {"pid": 1, "host": os.uname().nodename, "start_time": None}
    rows = {
        "pending, never started": store.create(name="a", platform="local"),
        "pending, launcher alive": store.create(
            name="b", platform="ssh", config={"launcher": live_other}
        ),
        "running without a process": store.create(
            name="c", platform="local", status=JobStatus.RUNNING
        ),
        "unknown": store.create(name="d", platform="sagemaker", status=JobStatus.UNKNOWN),
        "failed": store.create(name="e", platform="local", status=JobStatus.FAILED),
        "succeeded": store.create(name="f", platform="local", status=JobStatus.SUCCEEDED),
    }
    store.update(rows["running without a process"].id, remote_id="pid:999999999")
    for label, record in rows.items():
        ip.run(f"%neural_cancel {record.id}")
        out = capsys.readouterr().out
        status = store.get(record.id).status
        assert status.is_terminal, (label, out)
        if not record.status.is_terminal:
            assert status is JobStatus.CANCELLED, label
    for record in rows.values():
        ip.run(f"%neural_rm {record.id}")
    assert store.list() == []


def test_removing_a_running_job_needs_force_and_stops_it(neural_home, ip):
    job = api.run(SLOW, "synthetic", wait=False, monitor="none")
    pid = int(job.record.remote_id.split(":")[1])
    deadline = time.monotonic() + 60
    while job.refresh().status is not JobStatus.RUNNING and time.monotonic() < deadline:
        time.sleep(0.2)
    error = ip.run_error(f"%neural_rm {job.id}")
    assert isinstance(error, JobError) and "--force" in str(error)
    assert JobStore().get(job.id)
    ip.run(f"%neural_rm {job.id} --force")
    with pytest.raises(LookupError):
        JobStore().get(job.id)
    assert not (neural_home / "jobs" / job.id).exists()
    deadline = time.monotonic() + 10
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone(pid)


def test_a_row_cancelled_while_its_launch_runs_stops_what_started(neural_home, monkeypatch):
    """Another kernel cancels the row between the row's creation and the job's start: the
    launch stops the job it just started instead of leaving it running."""
    from neural_jupyter.backends.local import LocalBackend

    original = LocalBackend.submit

    def submit_and_get_cancelled(self, bundle, remote, resources):
        JobStore().set_status(remote.id, JobStatus.CANCELLED, error="cancelled elsewhere")
        return original(self, bundle, remote, resources)

    monkeypatch.setattr(LocalBackend, "submit", submit_and_get_cancelled)
    job = api.run(SLOW, "synthetic", wait=False, monitor="none", name=f"c-{uuid.uuid4().hex}")
    pid = int(job.record.remote_id.split(":")[1])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if gone(pid):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the job of a cancelled row kept running")
    assert JobStore().get(job.id).status is JobStatus.CANCELLED
