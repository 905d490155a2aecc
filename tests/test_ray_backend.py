"""The Ray platform through the real Ray Jobs SDK against a real Ray cluster: a head started
by the test on 127.0.0.1 (``ray_cluster.RayHead``: 4 CPUs, dashboard on a free port, usage
statistics off, nothing from the internet). Jobs run for real on it: the digits model trains
to SUCCEEDED with its events reaching the monitor and the job store, a job is cancelled and
its process is gone, a 4-trial sweep runs its trials at the same time, a job is re-attached
by its submission id, user code runs, and torchrun starts 2 processes (1 node × 2, and
2 "nodes" × 1 packed on this one machine) that meet in one gloo process group.

The cluster tests are ``slow`` and skip, saying why, only where Ray cannot start here.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

import neural_jupyter
from neural_jupyter import api
from neural_jupyter.backends import get_backend
from neural_jupyter.backends import ray as ray_platform
from neural_jupyter.backends.base import RemoteJob, ResourceSpec
from neural_jupyter.backends.log_mirror import LogMirror
from neural_jupyter.backends.ray import RayBackend, jobs_that_fit, submission_id_for
from neural_jupyter.compiler import compile_model
from neural_jupyter.errors import (
    ConfigurationError,
    JobCancelled,
    MissingDependencyError,
    PlatformConnectionError,
)
from neural_jupyter.jobs.job import Job
from neural_jupyter.jobs.store import JobStatus, JobStore
from neural_jupyter.runtime import data as data_module
from neural_jupyter.runtime.bundle import RunSettings, build_bundle
from neural_jupyter.runtime.events import Event

SMALL = """
network Small {
  input: (8, 8, 1)
  layers: Flatten() Dense(16, "relu") Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  optimizer: Adam(learning_rate=0.01)
  metrics: ["accuracy"]
  train { epochs: 3 batch_size: 64 validation_split: 0.2 seed: 3 }
}
"""

DDP_SCRIPT = """
import os, torch, torch.distributed as dist
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
total = torch.tensor([float(rank + 1)])
dist.all_reduce(total)
os.makedirs("outputs", exist_ok=True)
with open(f"outputs/rank{rank}.txt", "w") as handle:
    handle.write(f"{world} {total.item()} {os.environ['LOCAL_RANK']}")
print(f"rank {rank} of {world}: sum {total.item()} on node {os.environ['GROUP_RANK']}", flush=True)
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def head():
    from ray_cluster import RayHead, RayUnavailable

    cluster = RayHead(cpus=4)
    try:
        cluster.start()
    except RayUnavailable as exc:
        pytest.skip(f"Ray cannot start on this machine: {exc}")
    yield cluster
    cluster.stop()


@pytest.fixture
def ray(head, neural_home, monkeypatch):
    """The ray backend pointed at the test cluster (through RAY_ADDRESS, as a user would)."""
    monkeypatch.setenv("RAY_ADDRESS", head.address)
    backend = get_backend("ray")
    monkeypatch.setattr(backend, "poll_seconds", 0.2)
    monkeypatch.setattr(backend, "heartbeat_seconds", 0.05)
    backend._clients.clear()
    return backend


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" in status.read_text()


def jobs_client(head):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(head.address)


def kept_lines(job) -> list[str]:
    return [line for line, _ in LogMirror(job.directory).lines()]


def script_project(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "train.py").write_text(textwrap.dedent(DDP_SCRIPT))
    return root


def start_script(project: Path, resources: ResourceSpec) -> Job:
    """A script bundle started with ``resources`` (nodes × procs_per_node are not yet options
    of run_script: they come with the torchrun options of run and submit)."""
    from neural_jupyter.jobs.launch import start_bundle
    from neural_jupyter.runtime.code_bundle import CodeSpec, build_code_bundle

    spec = CodeSpec(
        kind="script", name="ddp", script="train.py", project=project, outputs="outputs"
    )
    return start_bundle(
        lambda directory, job_id: build_code_bundle(spec, directory, job_id=job_id),
        platform="ray",
        resources=resources,
        name="ddp",
        model_name="ddp",
        config={"kind": "script"},
    )


# --- without a cluster ----------------------------------------------------------------------
def test_missing_sdk_names_the_extra(monkeypatch, neural_home):
    monkeypatch.setitem(sys.modules, "ray.job_submission", None)
    with pytest.raises(MissingDependencyError) as caught:
        api.submit(SMALL, "digits", platform="ray", dry_run=True)
    assert "neural-jupyter[ray]" in str(caught.value)
    with pytest.raises(MissingDependencyError, match=r"neural-jupyter\[ray\]"):
        RayBackend().client("http://127.0.0.1:9")


def test_no_cluster_given_is_a_clear_error(monkeypatch, tmp_path, neural_home):
    for name in ray_platform.ADDRESS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigurationError, match="no Ray cluster given") as caught:
        api.submit(SMALL, "digits", platform="ray", monitor="none")
    assert "--set address" in caught.value.hint
    # nothing was left half-started: the job row says why it never ran
    (record,) = JobStore().list()
    assert record.status is JobStatus.FAILED and "no Ray cluster given" in record.error


def test_unreachable_dashboard_is_a_connection_error(monkeypatch, neural_home):
    monkeypatch.setattr(ray_platform.retry, "BASE_WAIT", 0.0)
    with pytest.raises(PlatformConnectionError) as caught:
        api.submit(SMALL, "digits", platform="ray", extra={"address": "http://127.0.0.1:9"})
    assert "127.0.0.1:9" in str(caught.value)


def test_dry_run_shows_the_job_request(neural_home):
    plan = api.submit(
        SMALL,
        "digits",
        platform="ray",
        gpus=1,
        gpu_type="A100",
        max_hours=0.5,
        dry_run=True,
        extra={"address": "http://head:8265"},
    )
    request = plan.request["submit_job"]
    assert plan.cost is None and plan.request["address"] == "http://head:8265"
    assert request["submission_id"] == submission_id_for(plan.idempotency_key)
    assert request["entrypoint_num_gpus"] == 1.0 and request["entrypoint_num_cpus"] == 1.0
    assert request["entrypoint_resources"] == {"accelerator_type:A100": 0.001}
    assert request["entrypoint"].startswith("timeout --kill-after=30 1800 python -u launcher.py")
    assert "--print-outputs 8388608" in request["entrypoint"]


def test_torchrun_layout_goes_through_the_driver():
    backend = RayBackend()
    job = RemoteJob("j", Path("/nowhere"), details={"idempotency_key": "k"})
    resources = ResourceSpec(
        nodes=2, procs_per_node=4, gpus=4, extra={"placement_strategy": "spread"}
    ).validated()
    request = backend.request(job, resources)
    entry = request["entrypoint"]
    assert entry.startswith("python -u ray_driver.py --nodes 2 --procs-per-node 4 --gpus 4")
    assert "--strategy SPREAD -- --bundle bundle.tar.gz" in entry
    assert "entrypoint_num_cpus" not in request  # the placement group holds the slots
    with pytest.raises(ConfigurationError, match="--procs-per-node"):
        ResourceSpec(procs_per_node=0).validated()
    with pytest.raises(ConfigurationError, match="--nodes"):
        ResourceSpec(nodes=2.5).validated()


def test_only_a_bundle_whose_train_py_runs_under_torchrun_gets_several_processes(tmp_path):
    model = compile_model(SMALL, framework="keras")
    dataset = data_module.resolve(model.spec, "digits")
    settings = RunSettings.from_spec(model.spec)
    bundle = build_bundle(
        model.spec, dataset, tmp_path / "b", settings, job_id="j", framework="keras"
    )
    job = RemoteJob("j", tmp_path / "job", details={"idempotency_key": "k"})
    with pytest.raises(ConfigurationError, match="does not train under torchrun yet"):
        RayBackend().submit(bundle, job, ResourceSpec(procs_per_node=2, extra={"address": "x"}))
    with pytest.raises(ConfigurationError, match="data-parallel training is for the pytorch"):
        api.submit(model, "digits", platform="ray", procs_per_node=2, extra={"address": "x"})
    torch_bundle = build_bundle(model.spec, dataset, tmp_path / "t", settings, job_id="j")
    assert torch_bundle.job["torchrun"] is True


def test_capacity_counts_the_jobs_that_fit_on_live_nodes():
    nodes = [
        {"state": "ALIVE", "resources_total": {"CPU": 8.0, "GPU": 2.0, "accelerator_type:A10G": 1}},
        {"state": "ALIVE", "resources_total": {"CPU": 4.0}},
        {"state": "DEAD", "resources_total": {"CPU": 64.0, "GPU": 8.0}},
    ]
    assert jobs_that_fit(nodes, ResourceSpec()) == 12
    assert jobs_that_fit(nodes, ResourceSpec(cpus=3)) == 3
    assert jobs_that_fit(nodes, ResourceSpec(gpus=1)) == 2
    assert jobs_that_fit(nodes, ResourceSpec(gpus=1, gpu_type="A10G")) == 2
    assert jobs_that_fit(nodes, ResourceSpec(gpus=1, gpu_type="H100")) == 0
    # 2 nodes × 2 processes: 2 CPUs per slot, 2 slots per job
    assert jobs_that_fit(nodes, ResourceSpec(nodes=2, procs_per_node=2)) == 3


# --- on a real cluster ----------------------------------------------------------------------
@pytest.mark.slow
def test_a_model_trains_on_the_cluster_and_comes_back(ray, head, capsys):
    run = api.submit(SMALL, "digits", platform="ray", monitor="text")
    out = capsys.readouterr().out
    assert "epoch 3/3" in out and "running" in out
    assert run.status == "SUCCEEDED" and len(run.history) == 3
    record = JobStore().get(run.job_id)
    assert record.status is JobStatus.SUCCEEDED and record.metrics["val_accuracy"] > 0.6
    assert record.remote_id == submission_id_for(record.idempotency_key)
    assert run.artifacts["weights"].exists()  # decoded from the job's log
    assert sum(p.numel() for p in run.model().parameters()) > 0
    job = Job.load(run.job_id)
    lines = kept_lines(job)
    assert any(line.startswith('{"event": "epoch"') for line in lines)
    assert not any(line.startswith("##neural-artifact") for line in lines)
    info = jobs_client(head).get_job_info(record.remote_id)
    assert info.status == "SUCCEEDED" and info.metadata["neural_jupyter_job"] == run.job_id
    # the same submission again is the same job: no second Ray job
    again = api.submit(SMALL, "digits", platform="ray", monitor="none")
    assert again.job_id == run.job_id
    ours = [j for j in jobs_client(head).list_jobs() if j.submission_id == record.remote_id]
    assert len(ours) == 1
    # a kernel restart: a new backend finds the job by its submission id alone and reads
    # its whole stream, outputs included, from the cluster
    fresh = RayBackend()
    remote = RemoteJob(job.id, job.directory, record.remote_id, {"idempotency_key": "x"})
    assert fresh.status(remote).state == "SUCCEEDED"
    items = [item for item in fresh.events(remote, follow=False) if item is not None]
    kinds = [item.kind for item in items if isinstance(item, Event)]
    assert kinds.count("epoch") == 3 and "done" in kinds
    fetched = fresh.fetch_artifacts(remote, job.directory / "again")
    assert fetched["weights"].read_bytes() == run.artifacts["weights"].read_bytes()


@pytest.mark.slow
def test_cancel_stops_the_job_and_its_process(ray, head, tmp_path):
    from usercode_jobs import sleeper

    marker = tmp_path / "pid"
    job = neural_jupyter.remote(platform="ray", monitor="none")(sleeper).submit(str(marker))
    assert wait_for(marker.exists, 90), "the function never started"
    pid = int(marker.read_text())
    # re-attach from its id while it runs: the stream so far, then it follows
    fresh = RayBackend()
    remote = RemoteJob(job.id, job.directory, job.record.remote_id, {"idempotency_key": "x"})
    assert fresh.status(remote).state == "RUNNING"
    started = [i for i in fresh.events(remote, follow=False) if isinstance(i, Event)]
    assert "start" in [event.kind for event in started]
    neural_jupyter.cancel(job.id)
    assert wait_for(lambda: pid_gone(pid), 30), "the function's process outlived the cancel"
    assert wait_for(
        lambda: jobs_client(head).get_job_info(job.record.remote_id).status == "STOPPED", 30
    )
    assert Job.load(job.id).refresh().status is JobStatus.CANCELLED
    with pytest.raises(JobCancelled):
        job.result()


@pytest.mark.slow
def test_a_function_runs_on_the_cluster(ray):
    import numpy as np
    from usercode_jobs import check_raised, outer, scaled

    out = neural_jupyter.remote(platform="ray", monitor="none")(scaled)([1.0, 2.0], factor=3.0)
    np.testing.assert_array_equal(out["values"], [3.0, 6.0])
    assert out["pid"] != os.getpid()
    with pytest.raises(neural_jupyter.RemoteError) as caught:
        neural_jupyter.remote(platform="ray", monitor="none")(outer)(41)
    check_raised(caught.value)
    assert JobStore().get(caught.value.job_id).status is JobStatus.FAILED


@pytest.mark.slow
def test_a_sweep_runs_its_trials_at_once_up_to_the_cluster_capacity(ray, head):
    from neural_jupyter import Sweep

    sweep = Sweep(
        SMALL, "digits", platform="ray", grid=["epochs=1,2", "batch_size=32,64"], metric="val_loss"
    )
    assert sweep.parallel == 4  # 4 CPUs, 1 per trial: the cluster's capacity
    result = sweep.run()
    assert [t.status for t in result.trials] == ["SUCCEEDED"] * 4
    client = jobs_client(head)
    spans = []
    for trial in result.trials:
        info = client.get_job_info(JobStore().get(trial.job_id).remote_id)
        spans.append((info.start_time, info.end_time))
    # the largest number of trials running at one moment on the cluster
    at_once = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert at_once >= 3, spans


@pytest.mark.slow
def test_torchrun_starts_two_processes_in_one_group(ray, tmp_path):
    job = start_script(script_project(tmp_path / "p"), ResourceSpec(procs_per_node=2, cpus=2))
    job.wait()
    assert job.refresh().status is JobStatus.SUCCEEDED, "\n".join(kept_lines(job))
    outputs = job.files.output / "outputs"
    assert sorted(p.name for p in outputs.iterdir()) == ["rank0.txt", "rank1.txt"]
    assert (outputs / "rank0.txt").read_text() == "2 3.0 0"
    assert (outputs / "rank1.txt").read_text() == "2 3.0 1"


@pytest.mark.slow
def test_a_model_trains_data_parallel_on_the_cluster(ray):
    run = api.submit(SMALL, "digits", platform="ray", procs_per_node=2, monitor="none")
    assert run.status == "SUCCEEDED" and len(run.history) == 3
    lines = kept_lines(Job.load(run.job_id))
    starts = [line for line in lines if line.startswith('{"event": "start"')]
    assert len(starts) == 1 and '"world_size": 2' in starts[0]
    assert any("data parallel: 2 processes (gloo)" in line for line in lines)
    assert run.artifacts["weights"].exists()


@pytest.mark.slow
def test_two_nodes_meet_at_node_zero(ray, tmp_path):
    """2 nodes × 1 process, both slots packed on this one-machine cluster (SPREAD): two
    launchers, one rendezvous at node 0; node 0's outputs come back, node 1's lines are
    in the log, marked."""
    resources = ResourceSpec(nodes=2, cpus=1, extra={"placement_strategy": "SPREAD"})
    job = start_script(script_project(tmp_path / "p"), resources)
    job.wait()
    lines = kept_lines(job)
    assert job.refresh().status is JobStatus.SUCCEEDED, lines
    text = "\n".join(lines)
    assert any("2 node(s) \\u00d7 1 process(es) reserved (SPREAD)" in line for line in lines), text
    assert any(line.startswith("[node 1] ") and "sum 3.0 on node 1" in line for line in lines), text
    assert any(line.startswith("rank 0 of 2: sum 3.0 on node 0") for line in lines), text
    outputs = job.files.output / "outputs"
    assert sorted(p.name for p in outputs.iterdir()) == ["rank0.txt"]
