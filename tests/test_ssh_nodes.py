"""One ssh job on several hosts (``--nodes 2 --set hosts=a,b``): a real torchrun rendezvous
across two "hosts" served by OpenSSH's ``sshd`` on 127.0.0.1, reached under two names
(``127.0.0.1`` and ``localhost``), each node in a job directory of its own. Gloo on the CPU,
digits, one process per node.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import test_ssh_backend
from sshd import free_port, known_hosts_line, live_processes, train_py_pids
from test_ssh_backend import DIGITS, USER, wait_for

from neural_jupyter import api
from neural_jupyter.backends import ssh, ssh_nodes
from neural_jupyter.backends.base import RemoteStatus
from neural_jupyter.errors import ConfigurationError
from neural_jupyter.jobs.job import Job
from neural_jupyter.jobs.store import JobStatus, JobStore
from neural_jupyter.jobs.tracker import Tracker

pytest.importorskip("paramiko")
pytest.importorskip("torch")

# the ssh backend tests' fixtures: a client key, OpenSSH's sshd, an isolated ~/.ssh
client_key = test_ssh_backend.client_key
sshd = test_ssh_backend.sshd
isolated_ssh = test_ssh_backend.isolated_ssh


@pytest.fixture
def nodes_extra(sshd, client_key, tmp_path) -> dict:
    """Two names of this machine (one sshd), a known_hosts line for each."""
    known = tmp_path / "known_hosts"
    known.write_text(
        known_hosts_line(sshd.port, sshd.public_key_line, "127.0.0.1")
        + known_hosts_line(sshd.port, sshd.public_key_line, "localhost")
    )
    return {
        "hosts": f"{USER}@127.0.0.1:{sshd.port},{USER}@localhost:{sshd.port}",
        "key_file": str(client_key),
        "known_hosts": str(known),
        "python": f"env OMP_NUM_THREADS=1 {sys.executable}",
        "workdir": str(tmp_path / "remote-jobs"),
        "master_port": free_port(),
        "cancel_grace": 3,
    }


def node_dirs(job: Job) -> list[Path]:
    return [Path(node["remote_dir"]) for node in job.record.config["remote"]["nodes"]]


def ranks_in(directory: Path) -> list[int]:
    """pids of the live train.py processes working in ``directory``."""
    return train_py_pids(directory)


def stream(job: Job) -> list[dict]:
    lines = job.files.stdout.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith('{"event"')]


def trained_an_epoch(directory: Path) -> bool:
    stdout = directory / "stdout.log"
    return stdout.exists() and '{"event": "epoch"' in stdout.read_text()


@pytest.fixture
def long_job(nodes_extra, neural_home):
    """A 500-epoch job on both "hosts", once both train (cancelled at the end, whatever
    the test did)."""
    job = api.submit(
        DIGITS, "digits", platform="ssh", nodes=2, epochs=500, extra=nodes_extra, wait=False,
        monitor="none",
    )  # fmt: skip
    dirs = node_dirs(job)
    try:
        started = wait_for(
            lambda: all(ranks_in(d) for d in dirs) and trained_an_epoch(dirs[0]), 180
        )
        logs = [(d / "stderr.log").read_text()[-2000:] for d in dirs if (d / "stderr.log").exists()]
        assert started, logs
        yield job
    finally:
        with contextlib.suppress(Exception):
            job.cancel()


# --- what each node runs ----------------------------------------------------------------------
def test_each_host_gets_its_node_rank_and_node_0_is_the_rendezvous(tmp_path, neural_home):
    extra = {"hosts": "alice@gpu-a:2222,bob@gpu-b", "master_port": 29411, "workdir": "/w"}
    plan = api.submit(
        DIGITS, "digits", platform="ssh", nodes=2, procs_per_node=3, extra=extra, dry_run=True
    ).request
    assert plan["hosts"] == ["alice@gpu-a:2222", "bob@gpu-b:22"]
    assert plan["rendezvous"] == "gpu-a:29411"
    first, second = plan["nodes"]
    assert first["remote_dir"] != second["remote_dir"]
    assert first["remote_dir"].endswith("-node0") and second["remote_dir"].endswith("-node1")
    for rank, node in enumerate(plan["nodes"]):
        assert node["command"].endswith(
            "launcher.py --packages job --nnodes 2 --nproc-per-node 3 "
            f"--node-rank {rank} --master-addr gpu-a --master-port 29411"
        ), node["command"]
    # another address for node 0 where the hosts reach it under another name
    resources = ssh.base.ResourceSpec(nodes=2, extra={**extra, "master_addr": "10.0.0.5"})
    assert ssh_nodes.rendezvous(resources.extra, ssh.target_from_extra({"host": "gpu-a"})) == (
        "10.0.0.5",
        29411,
    )
    script = ssh.runner_script(
        "/w/j-node1", "python3", None, 60, 1, ssh_nodes.node_arguments(resources, 1, "h0", 7)
    )
    assert "--nnodes 2 --nproc-per-node 1 --node-rank 1 --master-addr h0 --master-port 7" in (
        script
    )
    assert not JobStore().list()


def test_the_hosts_must_be_one_per_node(neural_home):
    def refused(**options) -> ConfigurationError:
        with pytest.raises(ConfigurationError) as caught:
            api.submit(DIGITS, "digits", platform="ssh", dry_run=True, **options)
        return caught.value

    error = refused(nodes=2, extra={"host": "gpu-a"})
    assert "--nodes 2" in error.message and "--set hosts=" in error.hint
    error = refused(nodes=3, extra={"hosts": "gpu-a,gpu-b"})
    assert "--nodes 3 does not match --set hosts=" in error.message, error.message
    assert "2 host(s)" in error.message
    error = refused(extra={"hosts": "gpu-a,gpu-b"})  # --nodes left at 1
    assert "--nodes 1 does not match" in error.message
    error = refused(nodes=2, extra={"hosts": "gpu-a,gpu-b", "provider": "lambda"})
    assert "rented instance" in error.message
    error = refused(nodes=2, extra={"hosts": "gpu-a,gpu-b", "host": "gpu-c"})
    assert "host=" in error.message and "hosts=" in error.message
    error = refused(nodes=2, extra={"hosts": " , "})
    assert "names no host" in error.message
    assert not JobStore().list()


def test_a_failed_nodes_error_is_the_jobs_error(neural_home):
    """The job's error is the failed node's (named, with its stderr), not node 0's stream."""
    store = JobStore()
    record = store.create(name="j", platform="ssh", config={})
    tracker = Tracker(store, record.id)
    tracker.stderr_tail = ["rank 0 failed: Connection closed by peer"]
    status = RemoteStatus(
        "FAILED", 1, "node 1 (b@host-b:22) failed: boom\nthe end of node 1's stderr:\nx",
        failed_node="b@host-b:22",
    )  # fmt: skip
    assert tracker.error_summary(status).startswith("node 1 (b@host-b:22) failed: boom")
    assert RemoteStatus.from_record(status.record()) == status


# --- real runs on two "hosts" -------------------------------------------------------------------
@pytest.mark.slow
def test_two_hosts_train_as_one_job(nodes_extra, neural_home):
    run = api.submit(
        DIGITS, "digits", platform="ssh", nodes=2, epochs=2, extra=nodes_extra, monitor="none"
    )
    assert run.status == "SUCCEEDED", JobStore().get(run.job_id).error
    assert len(run.history) == 2
    job = Job.load(run.job_id)
    events = stream(job)
    starts = [e for e in events if e["event"] == "start"]
    assert len(starts) == 1 and starts[0]["world_size"] == 2
    assert [e["event"] for e in events].count("done") == 1
    stderr = job.files.stderr.read_text()
    assert "data parallel: 2 processes (gloo), 1 on this node" in stderr
    # outputs came back once, from node 0; node 1 wrote none
    assert run.artifacts["weights"].exists() and run.artifacts["weights"].is_relative_to(
        neural_home
    )
    fetched = json.loads(job.files.outputs_fetched.read_text())
    assert "weights" in fetched
    node0, node1 = node_dirs(job)
    assert (node0 / "output" / "model.pt").exists()
    assert not (node1 / "output" / "model.pt").exists()
    # node 1's logs are mirrored beside the job's own
    mirrored = job.files.node_logs(1)
    assert (mirrored / "stderr.log").read_bytes() == (node1 / "stderr.log").read_bytes() != b""
    stdout = mirrored / "stdout.log"  # empty there: rank 1 writes no events
    assert (stdout.read_bytes() if stdout.exists() else b"") == (node1 / "stdout.log").read_bytes()
    assert (node1 / "exit_code").read_text().strip() == "0"
    record = JobStore().get(run.job_id)
    assert record.status is JobStatus.SUCCEEDED
    assert [n["host"] for n in record.config["remote"]["nodes"]] == nodes_extra["hosts"].split(",")


@pytest.mark.slow
def test_a_node_killed_mid_run_fails_the_job_naming_it(long_job):
    job = long_job
    node1 = job.record.config["remote"]["nodes"][1]
    ranks0 = ranks_in(node_dirs(job)[0])
    os.killpg(int(node1["pgid"]), signal.SIGKILL)  # node 1's machine "dies": no exit code
    job.wait(timeout=120)
    record = job.refresh()
    assert record.status is JobStatus.FAILED
    assert record.error.startswith(f"node 1 ({USER}@localhost:"), record.error
    assert "ended without reporting" in record.error, record.error
    # node 0 does not train on alone: it failed with its peer or was stopped
    assert wait_for(lambda: not any(ranks_in(d) for d in node_dirs(job)), 30)
    assert not any(Path(f"/proc/{pid}").exists() and pid in ranks_in(node_dirs(job)[0])
                   for pid in ranks0)  # fmt: skip


@pytest.mark.slow
def test_cancel_from_another_process_stops_every_node(long_job, neural_home):
    job = long_job
    nodes = job.record.config["remote"]["nodes"]
    # a new process finds both hosts from the job's record alone
    script = (
        "import neural_jupyter, sys\n"
        "from neural_jupyter.jobs.job import Job\n"
        f"assert Job.load({job.id!r}).refresh().status.value == 'RUNNING'\n"
        f"neural_jupyter.cancel({job.id!r})\n"
    )
    env = {**os.environ, "NEURAL_JUPYTER_HOME": str(neural_home)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for node, directory in zip(nodes, node_dirs(job), strict=True):
        assert live_processes(int(node["sid"])) == [], node["host"]
        assert ranks_in(directory) == [], node["host"]
        assert (directory / "cancel_requested").exists()
    assert job.refresh().status is JobStatus.CANCELLED


# --- choosing the failed node (no hosts needed) -------------------------------------------------
class FakeNodes:
    """The parts of the ssh backend ssh_nodes.look uses: canned probes, no connections."""

    target = ssh.SSHTarget

    def __init__(self, probes: list[list[ssh.Probe]]) -> None:
        self.looks = probes  # one list of probes per look
        self.stopped: list[tuple[str, str]] = []
        self.count = 0

    def _probe(self, target, node):
        rank = int(node["rank"])
        self.count += rank == 0  # a new look starts at node 0
        return self.looks[min(self.count, len(self.looks)) - 1][rank]

    def open_sftp(self, target):
        return io.BytesIO()  # closed after use, as an SFTP client

    def sync_logs(self, sftp, node, directory, *, final=False):
        return None

    def stop(self, node, label, marker="cancel_requested"):
        self.stopped.append((node["host"], marker))


def fake_job(tmp_path: Path, logs: dict[int, tuple[str, str]]) -> ssh.base.RemoteJob:
    nodes = [
        {"host": f"u@h{r}:22", "hostname": f"h{r}", "rank": r, "remote_dir": f"/j{r}", "pid": 1}
        for r in range(2)
    ]
    job = ssh.base.RemoteJob("j", tmp_path / "job", "id", {**nodes[0], "nodes": nodes})
    for rank, (stdout, stderr) in logs.items():
        directory = job.files.root if rank == 0 else job.files.node_logs(rank)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "stdout.log").write_text(stdout)
        (directory / "stderr.log").write_text(stderr)
    return job


RUNNING = ssh.Probe(True, True)
DONE = ssh.Probe(True, False, 0)
FAILED = ssh.Probe(True, False, 1)
KILLED = ssh.Probe(True, False, None)  # no exit code: the wrapper was killed


def test_the_node_that_failed_first_is_named_not_the_one_that_lost_it(tmp_path, monkeypatch):
    monkeypatch.setattr(ssh_nodes, "SETTLE_STEP", 0.01)
    lost = '{"event": "error", "type": "RuntimeError", "message": "Connection closed by peer"}\n'
    report = (
        "Root Cause (first observed failure):\n[0]:\n  host      : h1\n"
        "  rank      : 1 (local_rank: 0)\n  exitcode  : -9 (pid: 5)\n"
        "  traceback : Signal 9 (SIGKILL) received by PID 5\n=====\n"
    )
    job = fake_job(tmp_path, {0: (lost, "rank 0 lost its peer\n"), 1: ("", report)})
    # node 0 fails first with a knock-on error; node 1, which caused it, ends a look later
    backend = FakeNodes([[FAILED, RUNNING], [FAILED, FAILED]])
    status = ssh_nodes.look(backend, job).status()
    assert status.state == "FAILED" and status.failed_node == "u@h1:22"
    assert status.message.startswith(
        "node 1 (u@h1:22) failed: rank 1 (local rank 0 on h1) failed: Signal 9 (SIGKILL)"
    ), status.message
    assert "the end of node 1's stderr:" in status.message
    # a node that fails on its own fails the job at once, and the others are stopped
    job = fake_job(tmp_path / "2", {1: ("", "Traceback ...\nValueError: bad shard\n")})
    backend = FakeNodes([[RUNNING, FAILED]])
    probe = ssh_nodes.look(backend, job)
    assert probe.status().failed_node == "u@h1:22" and not probe.alive
    assert "ValueError: bad shard" in probe.status().message
    assert backend.stopped == [("u@h0:22", "peer_failed")]
    job = fake_job(tmp_path / "3", {})
    assert (
        ssh_nodes.look(FakeNodes([[RUNNING, KILLED]]), job)
        .status()
        .message.startswith("node 1 (u@h1:22) failed: the remote process ended without reporting")
    )


def test_the_job_runs_while_any_node_runs_and_a_cancel_wins(tmp_path):
    job = fake_job(tmp_path, {})
    assert ssh_nodes.look(FakeNodes([[DONE, RUNNING]]), job).status().state == "RUNNING"
    assert ssh_nodes.look(FakeNodes([[DONE, DONE]]), job).status().state == "SUCCEEDED"
    cancelled = ssh.Probe(True, False, 143, frozenset({"cancel_requested"}))
    # node 1 failed as node 0 was cancelled under it: the job was cancelled, not failed
    backend = FakeNodes([[cancelled, FAILED]])
    assert ssh_nodes.look(backend, job).status().state == "CANCELLED"
    assert backend.stopped == []
