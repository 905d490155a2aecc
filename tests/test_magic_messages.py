"""Magic arguments, error positions and messages from issue 13 (points 6, 7 and 10), in a real
``InteractiveShell`` and, for the cell number, in a real kernel as JupyterLab drives it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from IPython.core.error import UsageError

from neural_jupyter.jobs.store import JobStatus, JobStore
from neural_jupyter.magics import split_arguments

SMALL = (
    "%%neural_compile --show none\n"
    'network Small { input: (4,) layers: Dense(4, "relu") Output(1) loss: "mse" '
    "train { epochs: 2 } }"
)


# --- point 10: shell quoting ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            '--set "setup=pip install x && y" --set python=.venv/bin/python',
            ["--set", "setup=pip install x && y", "--set", "python=.venv/bin/python"],
        ),
        ("--set 'a=b c'", ["--set", "a=b c"]),
        ("--set url=https://h/x#frag  # a comment", ["--set", "url=https://h/x#frag"]),
        ('--set "note=# not a comment"', ["--set", "note=# not a comment"]),
        ("--limit 3", ["--limit", "3"]),
        ("", []),
    ],
)
def test_arguments_are_split_like_a_shell_does(line, expected):
    assert split_arguments(line) == expected


def test_unbalanced_quotes_are_a_usage_error():
    with pytest.raises(UsageError, match="No closing quotation"):
        split_arguments('--set "setup=pip install x')


def test_a_quoted_setup_command_reaches_the_platform_whole(ip):
    """docs/platforms/ssh.md: the quotes were kept, so no command with spaces got through."""
    ip.run(SMALL)
    plan = ip.run(
        "%neural_submit Small --platform ssh --host gpu-box --data synthetic "
        '--set "setup=python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt" '
        "--set python=.venv/bin/python --dry-run"
    )
    text = str(plan)
    assert "python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt" in text
    assert '"setup=' not in text and "unknown ssh option" not in text


# --- point 6: the cell number the user sees ---------------------------------------------------
def test_errors_name_the_cell_by_its_prompt_number(ip):
    ip.run("x = 1")
    result = ip.shell.run_cell(
        '%%neural_compile\nnetwork B { input: (4,) layers: Dens(3) loss: "mse" }',
        store_history=True,
    )
    error = result.error_in_exec
    assert error is not None
    assert f"<cell In[{result.execution_count}]>, line 1" in str(error), (
        result.execution_count,
        str(error),
    )
    result = ip.shell.run_cell("%%neural_run --data synthetic\nnetwork C { input: (4,) }")
    assert f"<cell In[{result.execution_count}]>" in str(result.error_in_exec)


@pytest.mark.slow
def test_errors_name_the_cell_by_its_prompt_number_in_a_kernel(tmp_path):
    from tests.kernel_client import KernelSession

    kernel = KernelSession(tmp_path)
    try:
        kernel.run("%load_ext neural_jupyter")
        msg_id = kernel.execute(
            '%%neural_compile\nnetwork B { input: (4,) layers: Dens(3) loss: "mse" }'
        )
        reply = kernel.reply(msg_id, timeout=60)
        count = reply["content"]["execution_count"]
        assert f"<cell In[{count}]>, line 1" in kernel.text(), (count, kernel.text())
    finally:
        kernel.close()


# --- point 7: %neural_logs --------------------------------------------------------------------
def test_logs_show_what_a_finished_job_printed(ip, capsys):
    ip.run(SMALL)
    ip.run("%%neural_run --data synthetic --monitor none --as run\nSmall")
    job_id = ip.ns["run"].job_id if hasattr(ip.ns["run"], "job_id") else None
    job_id = job_id or JobStore().list(limit=1)[0].id
    capsys.readouterr()
    ip.run(f"%neural_logs {job_id}")
    out = capsys.readouterr().out
    assert out.startswith("start: Small on cpu")
    assert "epoch 1/2  loss" in out and "epoch 2/2  loss" in out
    assert "done in" in out
    ip.run(f"%neural_logs {job_id} --tail 1")
    assert capsys.readouterr().out.startswith("done in")


def test_logs_follow_a_running_job(ip, capsys):
    ip.run(SMALL.replace("epochs: 2", "epochs: 3000"))
    job = ip.run("%%neural_run --data synthetic --monitor none --no-wait\nSmall")
    try:
        deadline = time.monotonic() + 60
        out = ""
        while "epoch 1/3000" not in out:
            assert time.monotonic() < deadline, out
            time.sleep(0.5)
            ip.run(f"%neural_logs {job.id}")
            out = capsys.readouterr().out
        assert out.startswith("start: Small")
        assert job.status is JobStatus.RUNNING  # asks the backend: still going
    finally:
        job.cancel()


def test_logs_say_so_when_there_is_nothing_yet(ip, capsys, neural_home):
    store = JobStore()
    record = store.create(name="Quiet", platform="local", status=JobStatus.RUNNING)
    directory = Path(neural_home) / "jobs" / record.id
    directory.mkdir(parents=True)
    store.update(record.id, job_dir=str(directory))
    ip.run(f"%neural_logs {record.id}")
    assert capsys.readouterr().out.strip() == f"no log lines yet for job {record.id}"


# --- point 10: smaller messages ---------------------------------------------------------------
def test_submit_of_an_unknown_model_does_not_mention_a_cell(ip):
    ip.run(SMALL)
    error = ip.run_error("%neural_submit Smal --platform ssh --host h --data synthetic")
    text = str(error)
    assert "'Smal' is not a compiled model" in text
    assert "in the cell" not in text  # a line magic has no cell
    assert "compiled models here: Small" in text and "did you mean 'Small'" in text


def test_attach_to_an_unknown_job_points_at_neural_jobs(ip):
    error = ip.run_error("%neural_attach nj-00000000")
    assert "%neural_jobs" in str(error) and "JobStore.list" not in str(error)


def test_cancel_of_a_finished_job_says_what_to_do(ip, capsys):
    ip.run(SMALL)
    ip.run("%%neural_run --data synthetic --monitor none\nSmall")
    job_id = JobStore().list(limit=1)[0].id
    capsys.readouterr()
    ip.run(f"%neural_cancel {job_id}")
    out = capsys.readouterr().out
    assert "already ended (SUCCEEDED)" in out and "nothing to cancel" in out
    assert "%neural_jobs --status running" in out


def test_jobs_status_is_case_insensitive_and_says_so(ip, capsys):
    ip.run(SMALL)
    ip.run("%%neural_run --data synthetic --monitor none\nSmall")
    for spelling in ("succeeded", "SUCCEEDED", "Succeeded"):
        capsys.readouterr()
        ip.run(f"%neural_jobs --status {spelling}")
        assert "SUCCEEDED" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="invalid choice"):  # CellFailed
        ip.run("%neural_jobs --status done")
    from neural_jupyter.magics.jobs import JobsMagics

    status = next(a for a in JobsMagics.neural_jobs.parser._actions if a.dest == "status")
    assert "any case" in status.help


def test_job_table_shows_sub_second_durations():
    from types import SimpleNamespace

    from neural_jupyter.ui.tables import _duration

    record = SimpleNamespace(
        started_at="2025-01-01T10:00:00.000000+00:00",
        finished_at="2025-01-01T10:00:00.930000+00:00",
    )
    assert _duration(record) == "0.93 s"
    record.finished_at = "2025-01-01T10:00:12.400000+00:00"
    assert _duration(record) == "12 s"
    record.finished_at = "2025-01-01T10:01:05.000000+00:00"
    assert _duration(record) == "1:05"
