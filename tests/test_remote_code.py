"""User code as jobs on the local platform, end to end: @remote functions, %%neural_remote
cells and run_script folders through the real job machinery (subprocess, job store,
monitor, cancel, dry run, cost guard)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import neural_jupyter
from neural_jupyter.errors import ConfigurationError, JobCancelled, RemoteError
from neural_jupyter.jobs.store import JobStatus, JobStore

RUNS = Path(__file__).parent / "progress_runs"
# an image with the notebook's Python (AWS's own may have another: see test_sagemaker_backend)
IMAGE = {"image": f"123456789012.dkr.ecr.us-east-1.amazonaws.com/torch:py3{sys.version_info[1]}"}


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" in status.read_text()


# --- functions ---------------------------------------------------------------------------------
def scaled(values, factor=2.0):
    return {"pid": os.getpid(), "values": np.asarray(values) * factor}


def test_function_value_is_computed_in_another_process(neural_home, capsys):
    train = neural_jupyter.remote(monitor="text")(scaled)
    out = train([1.0, 2.0], factor=3.0)
    assert out["pid"] != os.getpid()
    np.testing.assert_array_equal(out["values"], [3.0, 6.0])
    record = JobStore().list()[0]
    assert record.status is JobStatus.SUCCEEDED and record.config["kind"] == "function"
    assert "scaled on local: function started" in capsys.readouterr().out


def inner_failure(x):
    raise KeyError(f"no row {x}")


def outer(x):
    return inner_failure(x + 1)


def test_exception_is_raised_here_with_the_remote_frames(neural_home):
    with pytest.raises(RemoteError) as caught:
        neural_jupyter.remote(monitor="none")(outer)(41)
    error = caught.value
    assert error.exc_type == "KeyError"
    assert isinstance(error.exception, KeyError) and error.__cause__ is error.exception
    text = error.remote_traceback
    assert "in outer\n    return inner_failure(x + 1)" in text
    assert 'in inner_failure\n    raise KeyError(f"no row {x}")' in text
    assert "runner.py" not in text and "train.py" not in text  # only the user's frames
    assert "KeyError: 'no row 42'" in str(error)
    assert JobStore().get(error.job_id).status is JobStatus.FAILED


def test_submit_returns_the_job_and_magics_see_it(ip, neural_home, capsys):
    job = neural_jupyter.remote(monitor="none")(scaled).submit([1.0])
    assert isinstance(job, neural_jupyter.jobs.Job)
    np.testing.assert_array_equal(job.result()["values"], [2.0])
    ip.run("%neural_jobs")
    assert job.id in capsys.readouterr().out
    again = ip.run(f"%neural_attach {job.id} --monitor none")
    np.testing.assert_array_equal(again["values"], [2.0])


def sleeper(path):
    Path(path).write_text(str(os.getpid()))
    time.sleep(120)


def test_cancel_stops_a_running_function(neural_home, tmp_path):
    marker = tmp_path / "pid"
    job = neural_jupyter.remote(monitor="none")(sleeper).submit(str(marker))
    assert wait_for(marker.exists)
    pid = int(marker.read_text())
    neural_jupyter.cancel(job.id)
    assert wait_for(lambda: pid_gone(pid), 15)
    assert JobStore().get(job.id).status is JobStatus.CANCELLED
    with pytest.raises(JobCancelled):
        job.result()


def test_dry_run_shows_the_notebooks_versions_of_what_the_function_imports(neural_home):
    import importlib.metadata as md

    def uses_pandas(frame):
        import json as stdlib_json  # standard library: nothing to install

        return stdlib_json.dumps(float(np.mean(frame.values)))

    plan = neural_jupyter.remote(uses_pandas).dry_run(pd.DataFrame({"a": [1]}))
    text = str(plan)
    assert f"numpy=={md.version('numpy')}" in text
    assert f"pandas=={md.version('pandas')}" in text  # from the argument's type
    assert f"cloudpickle=={md.version('cloudpickle')}" in text
    assert "json" not in plan.requirements.lines
    assert "nothing was sent" in text and not JobStore().list()
    explicit = neural_jupyter.remote(uses_pandas, requirements=["polars>=1"]).dry_run(1)
    assert explicit.requirements.lines[0] == "polars>=1" and explicit.requirements.origin == "list"


def test_cost_confirmation_guards_paid_platforms(neural_home, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("NEURAL_JUPYTER_SAGEMAKER_ROLE", "arn:aws:iam::123456789012:role/SM")
    expensive = neural_jupyter.remote(
        scaled, platform="sagemaker", instance="ml.p4d.24xlarge", max_hours=10, extra=IMAGE
    )
    assert expensive.dry_run([1]).cost.total_usd > 5
    with pytest.raises(ConfigurationError, match="confirmation threshold"):
        expensive([1])
    assert not JobStore().list()


def report_epochs(n):
    from neural_jupyter import report

    for epoch in range(1, n + 1):
        report(epoch=epoch, epochs=n, loss=1.0 / epoch, val_loss=2.0 / epoch)
        print(f"Epoch {epoch}/{n} - loss: 9.0")  # recognizable, but report() is used
    return n


def test_report_reaches_the_monitor_and_the_store(neural_home, capsys):
    assert neural_jupyter.remote(report_epochs, monitor="text")(3) == 3
    out = capsys.readouterr().out
    assert "epoch 3/3  loss 0.3333  val_loss 0.6667" in out
    assert "loss 9.0000" not in out
    record = JobStore().list()[0]
    assert record.metrics == {"loss": pytest.approx(1 / 3), "val_loss": pytest.approx(2 / 3)}


def test_report_is_one_function_in_notebook_and_job(monkeypatch, capsys):
    import neural_jupyter_report

    assert neural_jupyter.report is neural_jupyter_report.report
    monkeypatch.delenv(neural_jupyter_report.JOB_ENV, raising=False)
    event = neural_jupyter.report(epoch=2, epochs=4, loss=np.float32(0.5))
    assert event == {"event": "epoch", "epoch": 2, "metrics": {"loss": 0.5}, "epochs": 4}
    assert capsys.readouterr().out == ""  # outside a job: nothing printed
    monkeypatch.setenv(neural_jupyter_report.JOB_ENV, "nj-1")
    neural_jupyter.report(batch=3, batches=10, epoch=1, loss=0.25)
    line = json.loads(capsys.readouterr().out)
    assert line["event"] == "batch" and line["loss"] == 0.25 and line["batches"] == 10
    monkeypatch.setenv("RANK", "1")
    neural_jupyter.report(epoch=1)
    assert capsys.readouterr().out == ""  # only rank 0 reports
    with pytest.raises(TypeError, match="metric 'acc' must be a number"):
        neural_jupyter.report(epoch=1, acc=[1])


def test_report_works_in_a_job_without_neural_jupyter_installed(neural_home, tmp_path):
    """The runner's stand-in package makes ``neural_jupyter.report`` importable."""
    script = tmp_path / "uses_report.py"
    script.write_text(
        "import sys\nimport neural_jupyter\nfrom neural_jupyter import report\n"
        "report(epoch=1, epochs=1, loss=0.5)\nprint(neural_jupyter.__doc__)\n"
    )
    env_python = tmp_path / "python"
    # the job's interpreter without this checkout or site-packages on its path
    env_python.write_text(f'#!/bin/sh\nexec {sys.executable} -S -E "$@"\n')
    env_python.chmod(0o755)
    bundle = _bundle_of(neural_jupyter.run_script(script, monitor="none"))
    import subprocess

    done = subprocess.run(
        [str(env_python), "train.py", "--job", "job.json"],
        cwd=bundle,
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert '{"event": "epoch", "epoch": 1, "metrics": {"loss": 0.5}, "epochs": 1}' in done.stdout
    assert "Stand-in inside a job" in done.stdout


def _bundle_of(result) -> Path:
    return result.directory


# --- cells -------------------------------------------------------------------------------------
def test_cell_round_trips_an_array_and_a_dataframe(ip, neural_home, capsys):
    ip.run("import numpy as np, pandas as pd\nx = np.arange(6.0).reshape(2, 3)")
    ip.run("df = pd.DataFrame({'a': [1, 2], 'b': ['u', 'v']})")
    ip.run(
        "%%neural_remote --inputs x,df --outputs y,df2 --monitor none\n"
        "import os\ny = x.T @ x\ndf2 = df.assign(c=df.a * 10, pid=os.getpid())"
    )
    x = ip.ns["x"]
    np.testing.assert_array_equal(ip.ns["y"], x.T @ x)
    expected = pd.DataFrame({"a": [1, 2], "b": ["u", "v"], "c": [10, 20]})
    pd.testing.assert_frame_equal(ip.ns["df2"].drop(columns="pid"), expected)
    assert int(ip.ns["df2"].pid[0]) != os.getpid()
    assert "brought back: y, df2" in capsys.readouterr().out


def test_cell_output_it_did_not_define_is_a_clear_error(ip, neural_home):
    ip.run("x = 1")
    error = ip.run_error("%%neural_remote --inputs x --outputs y,z --monitor none\ny = x + 1")
    assert isinstance(error, RemoteError) and error.exc_type == "MissingOutputError"
    assert "did not define 'z'" in str(error) and "it defined: y" in str(error)
    assert "z" not in ip.ns and "y" not in ip.ns  # nothing half-assigned


def test_cell_sees_only_its_inputs_and_dry_run_says_so(ip, neural_home):
    ip.run("secret_table = 3")
    plan = ip.run("%%neural_remote --outputs y --dry-run\nimport numpy\ny = secret_table + 1")
    text = str(plan)
    assert "reads secret_table from the notebook without --inputs" in text
    assert "numpy==" in text and not JobStore().list()
    error = ip.run_error("%%neural_remote --outputs y --monitor none\ny = secret_table + 1")
    assert error.exc_type == "NameError" and "--inputs" in error.hint
    bad = ip.run_error("%%neural_remote --inputs nope\ny = 1")
    assert isinstance(bad, ConfigurationError) and "'nope' not defined" in str(bad)
    magic = ip.run_error("%%neural_remote\n%time y = 1")
    assert isinstance(magic, ConfigurationError) and "not plain Python" in str(magic)


# --- scripts -----------------------------------------------------------------------------------
def make_project(root: Path) -> tuple[Path, Path]:
    project, data = root / "project", root / "dataset"
    (project / "lib").mkdir(parents=True)
    (project / "lib" / "__init__.py").write_text("")
    (project / "lib" / "stats.py").write_text("def total(xs):\n    return sum(xs)\n")
    (project / "train.py").write_text(
        textwrap.dedent(
            """
            import argparse, os, pathlib
            from lib.stats import total
            parser = argparse.ArgumentParser()
            parser.add_argument("--epochs", type=int)
            epochs = parser.parse_args().epochs
            numbers = (pathlib.Path(os.environ["NEURAL_DATA_DIR"]) / "n.txt").read_text()
            for epoch in range(1, epochs + 1):
                print(f"Epoch {epoch}/{epochs} - loss: {1 / epoch:.3f}")
            out = pathlib.Path("outputs")
            (out / "weights").mkdir(parents=True, exist_ok=True)
            (out / "weights" / "best.txt").write_text(str(total(map(float, numbers.split()))))
            """
        )
    )
    data.mkdir()
    (data / "n.txt").write_text("1 2 3.5")
    return project, data


def test_script_folder_with_data_args_and_outputs_brought_back(ip, neural_home, tmp_path):
    project, data = make_project(tmp_path)
    run = ip.run(f"%neural_script --data {data} --monitor none --as trained {project} --epochs 3")
    assert run is ip.ns["trained"] and run.status == "SUCCEEDED"
    assert [p.relative_to(run.outputs).as_posix() for p in run.files()] == ["weights/best.txt"]
    assert run.files()[0].read_text() == "6.5"
    assert [h["epoch"] for h in run.history] == [1, 2, 3]
    assert run.metrics == {"loss": 0.333}
    assert JobStore().get(run.job_id).artifacts["outputs"] == "output/outputs"
    assert (project / "outputs").exists() is False  # the user's folder is left alone


def test_script_failure_names_the_exit_code_and_keeps_stderr(neural_home, tmp_path):
    script = tmp_path / "fails.py"
    script.write_text("import sys\nprint('bad input', file=sys.stderr)\nsys.exit(3)\n")
    with pytest.raises(neural_jupyter.JobFailed) as caught:
        neural_jupyter.run_script(script, monitor="none")
    assert "fails.py exited with code 3" in str(caught.value)
    assert "bad input" in caught.value.stderr_tail
    assert JobStore().list()[0].exit_code == 3


def test_script_requirements_come_from_its_own_file_or_its_imports(neural_home, tmp_path):
    project, _ = make_project(tmp_path)
    (project / "extra.py").write_text("import numpy\nimport lib.stats\n")
    auto = neural_jupyter.run_script(project, dry_run=True)
    assert [line.split("==")[0] for line in auto.requirements.lines] == ["numpy"]
    (project / "requirements.txt").write_text("numpy>=1.24\n# comment\nultralytics\n")
    own = neural_jupyter.run_script(project, dry_run=True)
    assert own.requirements.lines == ["numpy>=1.24", "ultralytics"]
    assert own.requirements.origin == "file"


# --- progress from real libraries, through the job to the monitor and the store --------------
@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "args", "last_epoch", "metric"),
    [
        ("xgboost_train.py", [], 4, "eval-logloss"),
        ("lightgbm_train.py", [], None, "valid_l2"),
        ("keras_fit.py", ["1"], 3, "val_accuracy"),
        ("tqdm_loop.py", [], 3, "loss"),
    ],
)
def test_library_progress_reaches_monitor_and_store(
    neural_home, tmp_path, capsys, script, args, last_epoch, metric
):
    record = tmp_path / "record.json"
    run = neural_jupyter.run_script(RUNS / script, [str(record), *args], monitor="text")
    out = capsys.readouterr().out
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert epochs, out
    if last_epoch:
        assert epochs[-1].startswith(f"epoch {last_epoch}/")
        assert run.history[-1]["epoch"] == last_epoch
    stored = JobStore().get(run.job_id).metrics
    assert stored[metric] == pytest.approx(run.history[-1][metric])
    assert f"{metric} " in epochs[-1]


def test_idempotency_key_is_stable_off_local_and_new_on_local(neural_home, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("NEURAL_JUPYTER_SAGEMAKER_ROLE", "arn:aws:iam::123456789012:role/SM")
    paid = neural_jupyter.remote(scaled, platform="sagemaker", instance="ml.m5.xlarge", extra=IMAGE)
    first, again, other = paid.dry_run([1.0]), paid.dry_run([1.0]), paid.dry_run([2.0])
    assert first.idempotency_key == again.idempotency_key != other.idempotency_key
    forced = paid.options_with(new=True).dry_run([1.0])
    assert forced.idempotency_key != first.idempotency_key
    local = neural_jupyter.remote(scaled)
    assert local.dry_run([1.0]).idempotency_key != local.dry_run([1.0]).idempotency_key


def test_timeout_stops_a_function_at_its_budget(neural_home):
    with pytest.raises(neural_jupyter.JobTimeout):
        neural_jupyter.remote(time.sleep, timeout=1, monitor="none")(60)
    record = JobStore().list()[0]
    assert record.status is JobStatus.FAILED and record.exit_code == 124
