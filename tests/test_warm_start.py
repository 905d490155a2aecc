"""Warm start of local jobs (runtime/warm.py, runtime/warm_server.py) with real torch: the
same results as a cold start, nothing carried from one job to the next, cancel and timeout by
process group, a worker that dies with its kernel and after its idle timeout, and a silent
cold start wherever the worker cannot serve a job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from neural_jupyter import api
from neural_jupyter.compiler import compile_model
from neural_jupyter.errors import JobTimeout
from neural_jupyter.jobs.job import Job
from neural_jupyter.jobs.store import JobStatus, JobStore
from neural_jupyter.runtime import warm

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(warm.unsupported() is not None, reason=str(warm.unsupported())),
]

SMALL = """
network Small {
  input: (8, 8, 1)
  layers:
    Conv2D(filters=8, kernel_size=3, padding="same", activation="relu")
    Flatten()
    Dense(32, "relu")
    Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  optimizer: Adam(learning_rate=0.003)
  metrics: ["accuracy"]
  train { epochs: 2 batch_size: 64 validation_split: 0.2 seed: 7 }
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

# pytest changes PYTEST_CURRENT_TEST for every test phase: not a reason to start cold
os.environ[warm.ENV_IGNORE] = "PYTEST_CURRENT_TEST"
START_SECONDS = 240.0  # importing torch on a loaded 2-core machine


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
    status = Path(f"/proc/{pid}/status")
    try:
        return "zombie" in status.read_text()
    except OSError:
        return True


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


@pytest.fixture(scope="module")
def worker():
    """This kernel's (the test process's) warm worker, started once for the module."""
    previous = os.environ.get(warm.ENV_MODE)
    os.environ[warm.ENV_MODE] = "auto"
    status = warm.start(wait=True, timeout=START_SECONDS)
    assert status.ready, str(status)
    yield status
    warm.stop()
    if previous is None:
        os.environ.pop(warm.ENV_MODE, None)
    else:
        os.environ[warm.ENV_MODE] = previous


@pytest.fixture
def ready(worker, monkeypatch):
    """A ready worker serving the current environment (restarted if a test ended it)."""
    monkeypatch.setenv(warm.ENV_MODE, "auto")
    status = warm.status()
    if not status.ready:
        status = warm.start(wait=True, timeout=START_SECONDS)
    assert status.ready, str(status)
    return status


def run_script(directory: Path, source: str, **job: str) -> tuple[str, dict]:
    """Run ``source`` as ``train.py`` through the warm worker, as the local platform does;
    its stdout, and its exit record."""
    directory.mkdir(parents=True)
    (directory / "train.py").write_text(textwrap.dedent(source))
    record = directory / "exit.json"
    with open(directory / "out.log", "wb") as out, open(directory / "err.log", "wb") as err:
        pid = warm.run_job(
            directory,
            {"kind": "model", "framework": "pytorch", **job},
            [sys.executable, "-u", "train.py"],
            warm.local_job_environment(),
            (out.fileno(), err.fileno()),
            record,
        )
    assert pid is not None, warm.status().last_job
    assert warm.status().last_job == "warm"
    assert wait_for(record.exists, timeout=60), (directory / "err.log").read_text()
    exit_record = json.loads(record.read_text())
    assert exit_record["pid"] == pid
    return (directory / "out.log").read_text(), exit_record


def report_of(directory: Path, source: str) -> tuple[dict, dict]:
    """``run_script``, and the JSON object the script printed last."""
    stdout, record = run_script(directory, source)
    lines = stdout.splitlines()
    assert lines, (directory / "err.log").read_text()
    return json.loads(lines[-1]), record


def history(run) -> list[dict]:
    return [dict(epoch) for epoch in run.history]


def started_warm(run) -> bool:
    return json.loads(Job.load(run.job_id).files.process.read_text())["warm"]


# --- results --------------------------------------------------------------------------------
def test_warm_runs_give_the_same_seeded_results_as_cold_runs(ready, neural_home, monkeypatch):
    model = compile_model(SMALL)
    warm_runs = [api.run(model, "digits", monitor="none")]
    assert warm.status().last_job == "warm"
    warm_runs.append(api.run(model, "digits", monitor="none"))
    assert warm.status().last_job == "warm"
    monkeypatch.setenv(warm.ENV_MODE, "off")
    cold_runs = [api.run(model, "digits", monitor="none") for _ in range(2)]
    assert warm.status().last_job == "cold: warm start is off"
    for run in warm_runs + cold_runs:
        assert run.status == "SUCCEEDED"
        assert len(run.history) == 2
    modes = [started_warm(run) for run in warm_runs + cold_runs]
    assert modes == [True, True, False, False]
    expected = history(cold_runs[0])
    assert expected[-1]["accuracy"] > 0.3  # it really trained
    assert [history(run) for run in warm_runs + cold_runs[1:]] == [expected] * 3


def test_warm_job_is_a_fresh_interpreter_in_its_own_group(ready, tmp_path):
    report, record = report_of(
        tmp_path / "job",
        """
        import json, os, sys
        import numpy
        print(json.dumps({
            "pid": os.getpid(), "pgid": os.getpgid(0), "sid": os.getsid(0),
            "cwd": os.getcwd(), "argv": sys.argv, "name": __name__, "file": __file__,
            "path0": sys.path[0], "neural": sorted(m for m in sys.modules
                                                   if m.startswith("neural_jupyter")),
            "unbuffered": sys.stdout.write_through,
            "seed": int(numpy.random.randint(0, 2**31)),
        }))
        """,
    )
    assert report["pid"] == report["pgid"] == report["sid"] == record["pid"]
    assert report["pgid"] != os.getpgid(ready.pid) and report["pgid"] != os.getpgid(0)
    assert report["cwd"] == str(tmp_path / "job")
    assert report["argv"] == ["train.py"]
    assert report["name"] == "__main__"
    assert report["file"] == str(tmp_path / "job" / "train.py")
    assert report["path0"] == str(tmp_path / "job")
    assert report["neural"] == []
    assert report["unbuffered"] is True
    assert record["exit_code"] == 0
    seed = "import json, numpy\nprint(json.dumps({'seed': int(numpy.random.randint(0, 2**31))}))"
    again, _ = report_of(tmp_path / "again", seed)
    assert again["seed"] != report["seed"]  # numpy's global generator is reseeded per job


LEAKY = """
import json, os, sys
import torch
import torch.nn.functional as F
fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
torch.leaked_by_first_job = True
F.relu = lambda x: x * 0
sys.modules["json"].leaked = True
ballast = bytearray(os.urandom(1024)) * (256 * 1024)  # 256 MiB, touched
torch._ballast = ballast
leak = open("leaked.txt", "w")
os.set_inheritable(leak.fileno(), True)
os.environ["LEAKED_BY_FIRST_JOB"] = "1"
torch.set_num_threads(1)
torch.manual_seed(123)
for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
        rss = int(line.split()[1]) * 1024
print(json.dumps({"fds": fds, "rss": rss, "leak_fd": leak.fileno()}))
"""

PROBE = """
import json, os, sys
import torch
import torch.nn.functional as F
fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
links = [f"/proc/self/fd/{fd}" for fd in fds]
targets = [os.readlink(link) for link in links if os.path.exists(link)]
for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
        rss = int(line.split()[1]) * 1024
print(json.dumps({
    "fds": fds, "targets": targets, "rss": rss,
    "patched": hasattr(torch, "leaked_by_first_job") or hasattr(torch, "_ballast"),
    "json_patched": hasattr(json, "leaked"),
    "relu": F.relu(torch.tensor([-1.0, 2.0])).tolist(),
    "env": "LEAKED_BY_FIRST_JOB" in os.environ,
    "threads": torch.get_num_threads(),
}))
"""


def test_a_job_that_leaks_globals_leaves_no_trace_in_the_next(ready, tmp_path):
    before = warm.status().resident_bytes
    leaky, _ = report_of(tmp_path / "leaky", LEAKY)
    probe, record = report_of(tmp_path / "probe", PROBE)
    assert record["exit_code"] == 0
    assert probe["patched"] is False and probe["json_patched"] is False
    assert probe["relu"] == [0.0, 2.0]
    assert probe["env"] is False
    assert probe["threads"] == torch_threads_of_a_fresh_process(tmp_path)
    assert probe["fds"] == leaky["fds"]  # the same descriptors as the first job had at start
    assert not any("leaked.txt" in target for target in probe["targets"])
    assert probe["rss"] < leaky["rss"] - 200 * 2**20  # the 256 MiB went with the first job
    after = warm.status().resident_bytes
    assert before and after and after < before + 32 * 2**20  # the worker did not grow


def torch_threads_of_a_fresh_process(tmp_path: Path) -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        capture_output=True,
        text=True,
        env=warm.local_job_environment(),
        cwd=tmp_path,
        timeout=START_SECONDS,
        check=True,
    )
    return int(done.stdout.strip())


def test_a_failing_warm_job_reports_like_a_cold_one(ready, tmp_path):
    directory = tmp_path / "fails"
    stdout, record = run_script(directory, "print('before')\nraise ValueError('on purpose')\n")
    assert stdout == "before\n"
    assert record["exit_code"] == 1
    stderr = (directory / "err.log").read_text()
    assert stderr.startswith("Traceback (most recent call last):")
    assert 'train.py", line 2, in <module>' in stderr
    assert stderr.rstrip().endswith("ValueError: on purpose")
    assert "warm_server" not in stderr  # the traceback shows the script, not the worker


# --- cancel and timeout -----------------------------------------------------------------------
def test_cancel_kills_the_warm_jobs_whole_group(ready, neural_home):
    job = api.run(compile_model(SLOW), "synthetic", wait=False, monitor="none")
    assert wait_for(lambda: job.directory.joinpath("stdout.log").stat().st_size > 0, 60)
    info = json.loads((job.directory / "process.json").read_text())
    assert info["warm"] is True and info["pgid"] == info["pid"]
    assert group_members(info["pgid"]) == [info["pid"]]
    job.cancel()
    assert wait_for(lambda: not group_members(info["pgid"]), timeout=15)
    assert wait_for(lambda: job.store.get(job.id).status is JobStatus.CANCELLED, timeout=15)
    assert not pid_gone(ready.pid)  # the worker itself goes on serving
    assert warm.status().ready


def test_timeout_kills_the_warm_job(ready, neural_home):
    with pytest.raises(JobTimeout):
        api.run(compile_model(SLOW), "synthetic", timeout=3, monitor="none")
    record = JobStore().list()[0]
    assert record.status is JobStatus.FAILED and record.exit_code == 124
    info = json.loads(Job.load(record.id).files.process.read_text())
    assert info["warm"] is True
    assert wait_for(lambda: not group_members(info["pgid"]), timeout=15)


# --- falling back to a cold start ------------------------------------------------------------
def test_jobs_the_worker_cannot_serve_start_cold(ready, tmp_path):
    env = warm.local_job_environment()
    command = [sys.executable, "-u", "train.py"]
    cases = [
        (
            {"kind": "model", "framework": "keras"},
            {**env, "KERAS_BACKEND": "tensorflow"},
            "KERAS_BACKEND=torch",
        ),
        (
            {"kind": "model", "framework": "keras"},
            {**env, "KERAS_BACKEND": "torch"},
            "serves pytorch, not keras",
        ),
        (
            {"kind": "model", "framework": "pytorch"},
            {**env, "OMP_NUM_THREADS": "3"},
            "environment changed",
        ),
        ({"kind": "cell", "framework": "pytorch"}, env, "user code"),
    ]
    for job, job_env, reason in cases:
        before = set(os.listdir(tmp_path))
        pid = warm.run_job(tmp_path, job, command, job_env, (1, 2), tmp_path / "exit.json")
        assert pid is None
        assert warm.status().last_job.startswith("cold: ")
        assert reason in warm.status().last_job, warm.status().last_job
        assert set(os.listdir(tmp_path)) == before  # nothing ran
    assert warm.status().ready  # refusing a job does not end the worker


def test_a_gone_worker_means_a_cold_start_then_a_new_worker(ready, neural_home):
    os.kill(ready.pid, signal.SIGKILL)
    assert wait_for(lambda: warm.status().state == "exited", timeout=10)
    run = api.run(compile_model(SMALL), "digits", monitor="none")
    assert run.status == "SUCCEEDED"
    assert warm.status().last_job.startswith("cold: the warm worker has exited")
    assert started_warm(run) is False
    assert warm.status().state in ("starting", "ready")  # replaced in the background
    assert warm.status().pid != ready.pid
    assert wait_for(lambda: warm.status().ready, timeout=START_SECONDS)
    again = api.run(compile_model(SMALL), "digits", monitor="none")
    assert warm.status().last_job == "warm"
    assert history(again) == history(run)


# --- the worker's lifetime -------------------------------------------------------------------
KERNEL = """
import os, sys, time
from neural_jupyter import warm
status = warm.start(wait=True, timeout=float(sys.argv[1]))
print(status.pid if status.ready else "failed: " + str(status), flush=True)
time.sleep(600)
"""


def test_the_worker_dies_with_its_kernel(tmp_path):
    env = {**os.environ, warm.ENV_MODE: "auto", warm.ENV_IDLE: "0"}
    kernel = subprocess.Popen(
        [sys.executable, "-c", KERNEL, str(START_SECONDS)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        line = kernel.stdout.readline().strip()
        assert line.isdigit(), line
        worker_pid = int(line)
        assert not pid_gone(worker_pid)
        kernel.kill()  # SIGKILL: no atexit, no goodbye on the socket
        kernel.wait(10)
        assert wait_for(lambda: pid_gone(worker_pid), timeout=15)
    finally:
        if kernel.poll() is None:
            kernel.kill()
            kernel.wait(10)


def test_the_worker_exits_after_its_idle_timeout():
    pool = warm.WarmPool()
    pool.configure(mode="auto", idle_timeout=1.0)
    try:
        status = pool.start(wait=True, timeout=START_SECONDS)
        assert status.ready, str(status)
        assert status.resident_bytes and status.resident_bytes > 50 * 2**20  # torch is in it
        assert "MiB resident" in status.summary()
        assert wait_for(lambda: pool.status().state == "exited", timeout=15)
        assert pid_gone(status.pid)
    finally:
        pool.stop()


def test_load_ext_starts_no_worker_and_imports_nothing_heavy(tmp_path):
    code = textwrap.dedent(
        """
        import os, sys
        from IPython.core.interactiveshell import InteractiveShell
        shell = InteractiveShell.instance()
        shell.run_line_magic("load_ext", "neural_jupyter")
        from neural_jupyter import warm
        def parent(pid):  # None for a process that ended since /proc was listed
            try:
                return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[2]
            except OSError:
                return None
        children = [p for p in os.listdir("/proc") if p.isdigit()
                    and parent(p) == str(os.getpid())]
        heavy = sorted(m for m in ("torch", "tensorflow", "keras", "jax", "ipywidgets")
                       if m in sys.modules)
        print(heavy, warm.status().state, children)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != warm.ENV_MODE}
    env["NEURAL_JUPYTER_HOME"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[] stopped []"


# --- control: %neural_warm, WarmMagics options, %neural_env ---------------------------------
@pytest.fixture
def settings_restored():
    yield
    warm._pool._mode = None
    warm._pool._idle = None


def test_neural_warm_magic_options_and_env_report(ready, ip, capsys, settings_restored):
    status = ip.run("%neural_warm")
    assert status.ready and status.pid == ready.pid
    assert f"pid {ready.pid}" in str(status) and "MiB resident" in str(status)
    assert ip.run("%neural_warm start --wait").pid == ready.pid  # a fitting worker is kept
    capsys.readouterr()
    ip.run("%neural_env")
    report = capsys.readouterr().out
    assert f"Warm start:   ready: pytorch, pid {ready.pid}, " in report
    assert "MiB resident" in report
    ip.run("%neural_warm stop")
    assert capsys.readouterr().out == "warm worker stopped\n"
    assert pid_gone(ready.pid) and warm.status().state == "stopped"
    ip.run("%neural_warm stop")
    assert capsys.readouterr().out == "no warm worker was running\n"
    ip.run("%config WarmMagics.idle_timeout = 60")
    assert warm.status().idle_timeout == 60
    ip.run('%config WarmMagics.warm_start = "off"')
    assert warm.status().mode == "off"
    assert "warm start is off" in str(ip.run("%neural_warm status"))
    ip.run('%config WarmMagics.warm_start = "sometimes"')  # %config logs the TraitError
    assert warm.status().mode == "off"
    assert "invalid choice" in str(ip.run_error("%neural_warm restart"))
