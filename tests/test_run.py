"""Local training end to end with real torch on tiny data, through the API and the magics."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from neural_jupyter import api
from neural_jupyter.compiler import compile_model
from neural_jupyter.errors import DataError, JobDetached, JobFailed, JobTimeout
from neural_jupyter.jobs.job import Job
from neural_jupyter.jobs.store import JobStatus, JobStore

DIGITS = """
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

SLOW = """
network Slow {
  input: (32,)
  layers:
    Dense(256, "relu") * 4
    Output(1)
  loss: "mse"
  train { epochs: 100000 batch_size: 8 }
}
"""


def wait_for(predicate, timeout=30.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = f"/proc/{pid}/status"
    return os.path.exists(status) and "zombie" in open(status).read()


@pytest.mark.slow
def test_magic_trains_digits_to_a_real_accuracy(ip, neural_home):
    run = ip.run(f"%%neural_run --data digits --monitor text --as trained\n{DIGITS}")
    assert run.status == "SUCCEEDED"
    assert len(run.history) == 8
    assert run.metrics["val_accuracy"] >= 0.85, run.metrics
    assert ip.ns["trained"] is run and ip.ns["_"] is run
    assert run.artifacts["weights"].exists()
    record = JobStore().get(run.job_id)
    assert record.status is JobStatus.SUCCEEDED
    assert record.exit_code == 0
    assert record.metrics["val_accuracy"] == pytest.approx(run.metrics["val_accuracy"])
    # the trained model reloads from its weights and predicts like it validated
    import torch

    from neural_jupyter.runtime.data import digits

    model = run.model()
    data = digits(compile_model(DIGITS).spec)
    with torch.no_grad():
        predicted = model(torch.as_tensor(data.x_train)).argmax(-1).numpy()
    assert (predicted == data.y_train).mean() >= 0.85


@pytest.mark.slow
def test_train_from_notebook_arrays_with_validation_set(ip, neural_home):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 4)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("float32")
    ip.ns.update(X=x[:150], Y=y[:150], XV=x[150:], YV=y[150:])
    ip.run(
        "%%neural_compile --show none\n"
        'network Binary { input: (4,) layers: Dense(16, "relu") Output(1, "sigmoid") '
        'loss: "binary_crossentropy" optimizer: Adam(learning_rate=0.05) metrics: ["accuracy"] '
        "train { epochs: 15 batch_size: 16 } }"
    )
    run = ip.run("%%neural_run --data X,Y --val XV,YV --monitor none\nBinary")
    assert run.metrics["val_accuracy"] >= 0.85
    assert "val_loss" in run.history[0]


def test_bad_data_fails_before_anything_starts(ip, neural_home):
    ip.ns["X"] = np.zeros((10, 64), dtype="float32")
    ip.ns["y"] = np.zeros(10, dtype="int64")
    error = ip.run_error(f"%%neural_run --data X,y\n{DIGITS}")
    assert isinstance(error, DataError)
    assert "X has shape (10, 64)" in str(error) and "(N, 8, 8, 1)" in str(error)
    assert "X.reshape(-1, 8, 8, 1)" in str(error)
    ip.ns["X"] = np.zeros((10, 8, 8, 1), dtype="float32")
    ip.ns["y"] = np.arange(10) + 3
    error = ip.run_error(f"%%neural_run --data X,y\n{DIGITS}")
    assert "labels from 3 to 12" in str(error) and "10 units" in str(error)
    ip.ns["X"][0, 0, 0, 0] = np.nan
    ip.ns["y"] = np.zeros(10, dtype="int64")
    assert "NaN" in str(ip.run_error(f"%%neural_run --data X,y\n{DIGITS}"))
    assert "not defined" in str(ip.run_error(f"%%neural_run --data nope,y\n{DIGITS}"))
    # nothing was recorded for runs that never started
    assert JobStore().list() == []


def test_cancel_stops_the_whole_process_tree(neural_home):
    model = compile_model(SLOW)
    job = api.run(model, "synthetic", wait=False, monitor="none")
    assert wait_for(lambda: job.directory.joinpath("stdout.log").stat().st_size > 0)
    info = json.loads((job.directory / "process.json").read_text())
    job.cancel()
    assert wait_for(lambda: pid_gone(info["pid"]), timeout=10)
    assert job.store.get(job.id).status is JobStatus.CANCELLED


def test_timeout_stops_the_job(neural_home):
    started = time.monotonic()
    with pytest.raises(JobTimeout):
        api.run(compile_model(SLOW), "synthetic", timeout=3, monitor="none")
    assert time.monotonic() - started < 30
    job = api.jobs_list()[0] if hasattr(api, "jobs_list") else None
    record = JobStore().list()[0]
    assert record.status is JobStatus.FAILED
    assert record.exit_code == 124
    assert job is None or job.id == record.id


def test_failure_raises_jobfailed_with_stderr_and_dsl_line(neural_home, monkeypatch):
    from neural_jupyter.codegen import pytorch_training as bundle_module

    original = bundle_module.generate_training_script

    def broken(spec):
        # a runtime fault inside the layer that DSL line 8 defines
        return original(spec).replace("x = self.dense_1(x)", "x = self.dense_1(x[:, :3])")

    monkeypatch.setattr(bundle_module, "generate_training_script", broken)
    with pytest.raises(JobFailed) as caught:
        api.run(compile_model(DIGITS), "digits", monitor="none")
    error = caught.value
    assert "RuntimeError" in str(error)
    assert error.dsl_location == "line 8 (layer dense_1)"  # DIGITS starts with a newline
    assert "Traceback" not in "".join(error._render_traceback_()[:1])
    record = JobStore().get(error.job_id)
    assert record.status is JobStatus.FAILED and record.exit_code == 1


def test_ctrl_c_detaches_and_reattach_from_a_fresh_shell(neural_home, monkeypatch):
    from tests.conftest import Shell

    model = compile_model(DIGITS.replace("epochs: 8", "epochs: 30"))
    job = api.run(model, "digits", wait=False, monitor="none")
    original_follow = Job.follow

    def interrupted(self):
        for item in original_follow(self):
            if item is not None:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(Job, "follow", interrupted)
    with pytest.raises(JobDetached) as caught:
        api.watch(job, "none")
    assert f"%neural_attach {job.id}" in str(caught.value)
    assert job.refresh().status in (JobStatus.PENDING, JobStatus.RUNNING)
    monkeypatch.setattr(Job, "follow", original_follow)
    fresh = Shell()  # a new kernel: same job store, no memory of the job
    run = fresh.run(f"%neural_attach {job.id[:6]} --monitor none")
    assert run.job_id == job.id and run.status == "SUCCEEDED"
    assert len(run.history) == 30


def test_jobs_logs_and_cancel_magics(ip, neural_home, capsys):
    job = api.run(compile_model(SLOW), "synthetic", wait=False, monitor="none")
    assert wait_for(lambda: job.refresh().status is JobStatus.RUNNING)
    ip.run("%neural_jobs --status running")
    out = capsys.readouterr().out
    assert job.id in out and "RUNNING" in out
    ip.run(f"%neural_cancel {job.id}")
    assert "CANCELLED" in capsys.readouterr().out
    ip.run("%neural_jobs --status CANCELLED --limit 5")
    assert job.id in capsys.readouterr().out
    ip.run(f"%neural_logs {job.id} --tail 5")
    assert '{"event"' not in capsys.readouterr().out
    assert isinstance(ip.run_error("%neural_attach nj-doesnotexist"), LookupError)


def test_training_script_resumes_from_its_checkpoint(neural_home, tmp_path):
    import subprocess
    import sys

    from neural_jupyter.runtime.bundle import RunSettings, build_bundle
    from neural_jupyter.runtime.data import digits

    spec = compile_model(DIGITS).spec
    settings = RunSettings.from_spec(spec, epochs=2)
    bundle = build_bundle(spec, digits(spec), tmp_path / "b", settings, job_id="t1")
    first = subprocess.run(
        [sys.executable, "train.py"], cwd=bundle.path, capture_output=True, text=True, check=True
    )
    assert first.stdout.count('"event": "epoch"') == 2
    job = json.loads((bundle.path / "job.json").read_text())
    job["epochs"] = 4
    (bundle.path / "job.json").write_text(json.dumps(job))
    second = subprocess.run(
        [sys.executable, "train.py", "--resume"],
        cwd=bundle.path,
        capture_output=True,
        text=True,
        check=True,
    )
    events = [json.loads(line) for line in second.stdout.splitlines() if line.startswith("{")]
    assert events[0]["event"] == "start" and events[0]["resumed_from"] == 2
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [3, 4]
    history = json.loads((bundle.path / "output" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
