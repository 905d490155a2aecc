"""The Modal platform through the real ``modal`` SDK against a local gRPC server that speaks
the protocol stubs the SDK ships (``fakes.modal_api.FakeModal``): the SDK's own client code
builds the images, uploads the bundle as a mount (inline, or as a blob over HTTP), creates
the sandbox, streams its logs, waits for it and terminates it.

The fake runs each sandbox's command on this machine (this interpreter as the image's
Python), so ``launcher.py`` and ``train.py`` really run: the model really trains, the log
the backend streams is what it printed, the outputs come back through that log. GPU
sandboxes are "V1" sandboxes to the SDK (logs through ``SandboxGetLogs``), CPU ones "V2"
(logs from the worker's task command router); both paths are exercised.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest
from fakes.modal_api import TERMINATED, FakeModal

import neural_jupyter
from neural_jupyter import api
from neural_jupyter.backends import get_backend
from neural_jupyter.backends import retry as retry_module
from neural_jupyter.backends.base import RemoteJob, ResourceSpec
from neural_jupyter.backends.log_mirror import LogMirror
from neural_jupyter.backends.modal import ModalBackend, sandbox_name_for
from neural_jupyter.compiler import compile_model
from neural_jupyter.errors import (
    ConfigurationError,
    JobCancelled,
    MissingDependencyError,
    PlatformAuthError,
    PlatformConnectionError,
    PlatformError,
    QuotaError,
)
from neural_jupyter.jobs.job import Job
from neural_jupyter.jobs.store import JobStatus, JobStore
from neural_jupyter.runtime import data as data_module
from neural_jupyter.runtime.bundle import RunSettings, build_bundle
from neural_jupyter.runtime.events import Event, LogLine

TOKEN_ID = "ak-modal-token-id-never-shown-0123"
TOKEN_SECRET = "as-modal-token-secret-that-must-never-leak-4567"

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

STEPS_SCRIPT = """
import os, sys, time
print("first line", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
os.makedirs("outputs", exist_ok=True)
with open("outputs/done.txt", "w") as handle:
    handle.write("released")
print("second line", flush=True)
"""


@pytest.fixture
def modal_api(neural_home, monkeypatch):
    """The fake, and the SDK pointed at it through the environment, as a user's would be."""
    monkeypatch.setattr(retry_module, "BASE_WAIT", 0.0)
    with FakeModal(TOKEN_ID, TOKEN_SECRET) as fake:
        for key, value in fake.environment().items():
            monkeypatch.setenv(key, value)
        backend = get_backend("modal")
        backend._clients.clear()
        monkeypatch.setattr(backend, "poll_seconds", 0.1)
        monkeypatch.setattr(backend, "heartbeat_seconds", 0.02)
        fake.backend = backend
        yield fake
        backend._clients.clear()
        assert fake.unexpected == [], f"RPCs the fake does not serve: {fake.unexpected}"


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    model = compile_model(SMALL)
    dataset = data_module.resolve(model.spec, "digits")
    directory = tmp_path_factory.mktemp("bundle")
    return build_bundle(
        model.spec, dataset, directory / "bundle", RunSettings.from_spec(model.spec), job_id="j1"
    )


def remote_job(tmp_path: Path, key: str = "modal-0123456789abcdef", submission=None) -> RemoteJob:
    directory = tmp_path / "job"
    directory.mkdir(exist_ok=True)
    details = {"idempotency_key": key, **(submission.details if submission else {})}
    return RemoteJob("j1", directory, submission.remote_id if submission else None, details)


def wait_for(predicate, timeout=60.0) -> bool:
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


def kept_lines(job) -> list[str]:
    return [line for line, _ in LogMirror(job.directory).lines()]


def everything_written(root: Path) -> str:
    """Every file under ``root`` (job folders, the job store), as text."""
    texts = []
    for path in root.rglob("*"):
        if path.is_file():
            texts.append(path.read_bytes().decode("utf-8", errors="replace"))
    return "\n".join(texts)


def mount_files(fake: FakeModal, sandbox) -> dict[str, bytes]:
    return {
        f.filename: fake.files[f.sha256_hex]
        for mount_id in sandbox.definition.mount_ids
        for f in fake.mounts[mount_id]
    }


# --- without a server -----------------------------------------------------------------------
def test_missing_sdk_names_the_extra(monkeypatch, neural_home):
    monkeypatch.setitem(sys.modules, "modal", None)
    with pytest.raises(MissingDependencyError) as caught:
        api.submit(SMALL, "digits", platform="modal", dry_run=True)
    assert "neural-jupyter[modal]" in str(caught.value)
    with pytest.raises(MissingDependencyError, match=r"neural-jupyter\[modal\]"):
        ModalBackend().client()


def test_sandbox_names_are_stable_modal_object_names():
    name = sandbox_name_for("modal-0123456789abcdef")
    assert name == sandbox_name_for("modal-0123456789abcdef") == "nj-modal-0123456789abcdef"
    long = sandbox_name_for("modal-" + "x/" * 60)
    assert len(long) <= 64 and "/" not in long
    assert sandbox_name_for("a" * 80) != sandbox_name_for("a" * 81)


def test_layouts_modal_cannot_run_are_refused_before_anything_starts(tmp_path, neural_home):
    backend = ModalBackend()
    with pytest.raises(ConfigurationError, match="a Modal sandbox is one machine") as caught:
        backend.check_layout(ResourceSpec(nodes=2, gpus=1, gpu_type="H100"), "pytorch")
    assert "--procs-per-node" in caught.value.hint
    with pytest.raises(ConfigurationError, match="a GPU of its own"):
        backend.check_layout(ResourceSpec(procs_per_node=4, gpus=2, gpu_type="H100"), "pytorch")
    plan = api.submit(
        SMALL,
        "digits",
        platform="modal",
        procs_per_node=2,
        gpus=2,
        gpu_type="A10G",
        dry_run=True,
    )
    assert plan.request["Sandbox.create"]["gpu"] == "A10G:2"  # one GPU per process: fine
    keras = compile_model(SMALL, framework="keras")
    with pytest.raises(ConfigurationError, match="data-parallel training is for the pytorch"):
        api.submit(keras, "digits", platform="modal", procs_per_node=2, dry_run=True)
    with pytest.raises(ConfigurationError, match="needs the GPU type"):
        api.submit(SMALL, "digits", platform="modal", gpus=1, dry_run=True)
    with pytest.raises(ConfigurationError, match="at most 24 hours"):
        api.submit(SMALL, "digits", platform="modal", max_hours=30, dry_run=True)


def test_dry_run_shows_the_sandbox_request_and_its_cost(modal_api, capsys):
    plan = api.submit(
        SMALL,
        "digits",
        platform="modal",
        gpus=2,
        gpu_type="H100",
        max_hours=0.5,
        procs_per_node=2,
        dry_run=True,
        extra={"app": "my-app", "cloud": "aws"},
    )
    print(plan)
    assert modal_api.rpcs() == []  # nothing was sent
    request = plan.request["Sandbox.create"]
    assert request["gpu"] == "H100:2" and request["timeout"] == 1800
    assert request["app"] == "my-app" and request["cloud"] == "aws"
    assert request["name"] == sandbox_name_for(plan.idempotency_key)
    args = request["args"]
    assert args[:3] == ["sh", "-c", 'exec "$0" "$@" 2>&1']
    assert args[3:6] == ["python", "-u", "/neural/launcher.py"]
    assert "--print-outputs" in args and "--budget-margin" in args
    assert args[-4:] == ["--nnodes", "1", "--nproc-per-node", "2"]
    assert request["image"]["pip_install"] == ["torch==2.13.0", "numpy"]
    # 2 × H100 + 1 CPU core at the sandbox rate, for the half hour the sandbox may live
    assert plan.cost.total_usd == pytest.approx((2 * 3.9492 + 0.1419) * 0.5, rel=1e-3)
    assert TOKEN_SECRET not in capsys.readouterr().out
    with pytest.raises(ConfigurationError, match="no price known for GPU Z100") as caught:
        api.submit(SMALL, "digits", platform="modal", gpu_type="Z100", dry_run=True)
    assert "H100" in caught.value.hint and "hourly_usd" in caught.value.hint
    priced = api.submit(
        SMALL,
        "digits",
        platform="modal",
        gpu_type="Z100",
        max_hours=2,
        dry_run=True,
        extra={"hourly_usd": "1.5"},
    )
    assert priced.cost.total_usd == pytest.approx(3.0)
    # the submit panel offers the price table's rows as instances: cpu-core is no GPU
    cpu = api.submit(
        SMALL, "digits", platform="modal", instance="cpu-core", max_hours=1, dry_run=True
    )
    assert "gpu" not in cpu.request["Sandbox.create"]
    assert cpu.cost.total_usd == pytest.approx(0.1419, rel=1e-3)


def test_no_token_is_an_auth_error_naming_the_fix(modal_api, monkeypatch):
    import modal.config

    monkeypatch.delenv("MODAL_TOKEN_ID")
    monkeypatch.delenv("MODAL_TOKEN_SECRET")
    monkeypatch.setattr(modal.config, "_user_config", {})
    with pytest.raises(PlatformAuthError, match="no Modal token") as caught:
        api.submit(SMALL, "digits", platform="modal", max_hours=0.5, monitor="none")
    assert "modal token new" in caught.value.hint
    assert modal_api.rpcs() == []


# --- against the fake -----------------------------------------------------------------------
@pytest.mark.slow
def test_a_model_trains_in_a_gpu_sandbox_and_comes_back(modal_api, neural_home, capsys):
    modal_api.log_hold_seconds = 0.3  # log streams end early: the SDK resumes them
    run = api.submit(
        SMALL, "digits", platform="modal", gpu_type="T4", max_hours=0.5, monitor="text"
    )
    out = capsys.readouterr().out
    assert "epoch 3/3" in out and "Modal sandbox sb-" in out
    assert run.status == "SUCCEEDED" and len(run.history) == 3
    record = JobStore().get(run.job_id)
    assert record.status is JobStatus.SUCCEEDED and record.metrics["val_accuracy"] > 0.6
    assert run.artifacts["weights"].exists()  # decoded from the sandbox's log
    assert sum(p.numel() for p in run.model().parameters()) > 0

    sandbox = modal_api.sandbox(record.remote_id)
    definition = sandbox.definition
    assert sandbox.version == 1  # a GPU sandbox: logs through SandboxGetLogs
    assert definition.resources.gpu_config.gpu_type == "T4"
    assert definition.resources.gpu_config.count == 1
    assert definition.timeout_secs == 1800 and definition.name == sandbox_name_for(
        record.idempotency_key
    )
    files = mount_files(modal_api, sandbox)
    assert set(files) == {"/neural/bundle.tar.gz", "/neural/launcher.py"}
    images = [modal_api.images[definition.image_id], *modal_api.images.values()]
    commands = "\n".join(c for image in images for c in image.dockerfile_commands)
    assert "torch==2.13.0" in commands  # debian_slim + the table's PyTorch
    assert sandbox.tags["neural_jupyter_job"] == run.job_id
    rpcs = modal_api.rpcs()
    assert rpcs.count("SandboxCreate") == 1 and "SandboxGetLogs" in rpcs
    resumed = [r.last_entry_id for r in modal_api.calls("SandboxGetLogs") if r.last_entry_id]
    assert resumed, "the log stream was never resumed"

    job = Job.load(run.job_id)
    lines = kept_lines(job)
    epochs = [line for line in lines if line.startswith('{"event": "epoch"')]
    assert len(epochs) == 3  # each line once, across the resumed streams
    assert not any(line.startswith("##neural-artifact") for line in lines)
    # the same submission again is the same job: no second sandbox
    again = api.submit(
        SMALL, "digits", platform="modal", gpu_type="T4", max_hours=0.5, monitor="none"
    )
    assert again.job_id == run.job_id and modal_api.rpcs().count("SandboxCreate") == 1
    # a kernel restart: a new backend finds the sandbox by its id alone and reads its whole
    # stream, outputs included, from Modal
    fresh = ModalBackend()
    remote = RemoteJob(job.id, job.directory, record.remote_id, {"idempotency_key": "x"})
    assert fresh.status(remote).state == "SUCCEEDED"
    items = [item for item in fresh.events(remote, follow=False) if item is not None]
    kinds = [item.kind for item in items if isinstance(item, Event)]
    assert kinds.count("epoch") == 3 and "done" in kinds
    fetched = fresh.fetch_artifacts(remote, job.directory / "again")
    assert fetched["weights"].read_bytes() == run.artifacts["weights"].read_bytes()
    # the token went nowhere: not in the job folder, the store, the output, the request
    written = everything_written(neural_home) + out + str(definition)
    assert TOKEN_SECRET not in written and TOKEN_ID not in written


def test_a_cpu_sandbox_streams_its_log_while_it_runs(modal_api, tmp_path):
    """Lines arrive while the sandbox runs (it waits for a file only this test writes after
    it saw the first line), through the worker's stdio stream of a V2 sandbox."""
    script = tmp_path / "steps.py"
    script.write_text(textwrap.dedent(STEPS_SCRIPT))
    release = tmp_path / "release"
    job = neural_jupyter.run_script(
        script, [str(release)], platform="modal", monitor="none", wait=False
    )
    seen: list[str] = []
    sandbox = None
    for item in get_backend("modal").events(job.remote(), follow=True):
        if isinstance(item, LogLine):
            seen.append(item.text)
            if item.text == "first line":
                sandbox = modal_api.sandbox(job.record.remote_id)
                assert sandbox.running  # streamed live, not after the end
                release.write_text("go")
    assert sandbox is not None and sandbox.version == 2
    assert seen.index("first line") < seen.index("second line")
    assert "SandboxStdioReadV2" in modal_api.rpcs()
    job.wait()
    assert job.refresh().status is JobStatus.SUCCEEDED
    assert (job.files.output / "outputs" / "done.txt").read_text() == "released"


def test_cancel_terminates_the_sandbox_and_its_process(modal_api, tmp_path):
    from usercode_jobs import sleeper

    marker = tmp_path / "pid"
    job = neural_jupyter.remote(platform="modal", monitor="none")(sleeper).submit(str(marker))
    assert wait_for(marker.exists, 90), "the function never started"
    pid = int(marker.read_text())
    sandbox = modal_api.sandbox(job.record.remote_id)
    # re-attach by id while it runs: the stream so far, then it would follow
    fresh = ModalBackend()
    remote = RemoteJob(job.id, job.directory, job.record.remote_id, {"idempotency_key": "x"})
    assert fresh.status(remote).state == "RUNNING"
    started = [i for i in fresh.events(remote, follow=False) if isinstance(i, Event)]
    assert "start" in [event.kind for event in started]
    # a function pickled here runs under this notebook's Python
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    commands = [c for image in modal_api.images.values() for c in image.dockerfile_commands]
    assert any(python in command for command in commands), commands
    neural_jupyter.cancel(job.id)
    assert wait_for(lambda: pid_gone(pid), 30), "the function's process outlived the cancel"
    assert modal_api.calls("SandboxTerminate") or modal_api.calls("SandboxTerminateV2")
    assert sandbox.result is not None and sandbox.result.status == TERMINATED
    assert Job.load(job.id).refresh().status is JobStatus.CANCELLED
    with pytest.raises(JobCancelled):
        job.result()


def test_a_failing_job_surfaces_its_error(modal_api):
    from usercode_jobs import check_raised, outer

    with pytest.raises(neural_jupyter.RemoteError) as caught:
        neural_jupyter.remote(platform="modal", monitor="none")(outer)(41)
    check_raised(caught.value)
    record = JobStore().get(caught.value.job_id)
    assert record.status is JobStatus.FAILED
    assert modal_api.sandbox(record.remote_id).result.exitcode != 0


@pytest.mark.slow
def test_a_model_trains_data_parallel_in_one_sandbox(modal_api):
    run = api.submit(SMALL, "digits", platform="modal", procs_per_node=2, monitor="none")
    assert run.status == "SUCCEEDED" and len(run.history) == 3
    lines = kept_lines(Job.load(run.job_id))
    starts = [line for line in lines if line.startswith('{"event": "start"')]
    assert len(starts) == 1 and '"world_size": 2' in starts[0]
    assert any("data parallel: 2 processes (gloo)" in line for line in lines)
    assert run.artifacts["weights"].exists()


def test_a_bundle_over_4_mib_travels_as_a_blob(modal_api, tmp_path):
    """Files of 4 MiB and more go to blob storage first (BlobCreate, then an HTTP PUT to the
    URL it gave) and the mount names the blob."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "weights.bin").write_bytes(os.urandom(5 * 2**20))  # does not compress
    (project / "main.py").write_text(
        "import hashlib, os\n"
        "digest = hashlib.sha256(open('weights.bin', 'rb').read()).hexdigest()\n"
        "os.makedirs('outputs', exist_ok=True)\n"
        "open('outputs/digest.txt', 'w').write(digest)\n"
    )
    result = neural_jupyter.run_script(project, platform="modal", monitor="none")
    assert modal_api.calls("BlobCreate") and modal_api.blob_store.calls("PUT", r"^/blob/")
    import hashlib

    expected = hashlib.sha256((project / "weights.bin").read_bytes()).hexdigest()
    assert (result.outputs / "digest.txt").read_text() == expected


def test_a_lost_create_reply_never_starts_a_second_sandbox(modal_api, tmp_path, small_bundle):
    """The create went through but its reply was lost: the SDK tries again, Modal refuses the
    taken name (ALREADY_EXISTS), the submit adopts the sandbox already there."""
    modal_api.fail("SandboxCreate", "UNAVAILABLE", "connection reset", after=True)
    job = remote_job(tmp_path)
    submission = modal_api.backend.submit(small_bundle, job, ResourceSpec(gpu_type="L4"))
    assert len(modal_api.sandboxes) == 1
    (only,) = modal_api.sandboxes
    assert submission.remote_id == only and submission.details["submitted"] == "submitted before"
    assert len(modal_api.calls("SandboxCreate")) == 2
    # and a submit of the same key while it runs finds it by name before creating anything
    again = modal_api.backend.submit(small_bundle, job, ResourceSpec(gpu_type="L4"))
    assert again.remote_id == only and len(modal_api.calls("SandboxCreate")) == 2
    modal_api.backend.cancel(remote_job(tmp_path, submission=submission))


def test_sdk_errors_become_the_projects_errors(modal_api, tmp_path, small_bundle, monkeypatch):
    job = remote_job(tmp_path)
    backend = modal_api.backend
    # a token Modal refuses: an auth error with Modal's words, and no token in it
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-wrong-secret-also-never-shown")
    with pytest.raises(PlatformAuthError, match="Token ID or secret is invalid") as caught:
        backend.submit(small_bundle, job, ResourceSpec(gpu_type="T4"))
    assert "modal token new" in caught.value.hint
    assert "as-wrong-secret" not in str(caught.value) + str(caught.value.hint)
    monkeypatch.setenv("MODAL_TOKEN_SECRET", TOKEN_SECRET)  # a client of its own again
    # a GPU type Modal does not know: Modal's INVALID_ARGUMENT is a configuration error
    with pytest.raises(ConfigurationError, match="Unknown GPU type: Z100"):
        backend.submit(small_bundle, job, ResourceSpec(gpu_type="Z100"))
    # no capacity: a quota error
    modal_api.no_capacity.add("H100")
    with pytest.raises(QuotaError, match="No capacity for 8 x H100") as caught:
        backend.submit(small_bundle, job, ResourceSpec(gpu_type="H100", gpus=8))
    assert "--gpu-type" in caught.value.hint
    # an image that does not build
    modal_api.image_build_error = "pip: No matching distribution found for torch==2.13.0"
    with pytest.raises(PlatformError, match="No matching distribution") as caught:
        backend.submit(small_bundle, job, ResourceSpec(gpu_type="T4"))
    assert "modal image logs" in caught.value.hint
    modal_api.image_build_error = None
    assert modal_api.sandboxes == {}  # none of them started anything


@pytest.mark.slow
def test_an_unreachable_server_is_a_connection_error(
    modal_api, tmp_path, small_bundle, monkeypatch
):
    """After the SDK's own retries (about a minute), once: no second layer of retries."""
    monkeypatch.setenv("MODAL_SERVER_URL", "http://127.0.0.1:9")
    modal_api.backend._clients.clear()
    started = time.monotonic()
    with pytest.raises(PlatformConnectionError, match="unreachable") as caught:
        modal_api.backend.submit(small_bundle, remote_job(tmp_path), ResourceSpec(gpu_type="T4"))
    assert "Could not connect to the Modal server" in str(caught.value)
    assert time.monotonic() - started < 100


def test_a_sandbox_stopped_at_its_timeout_is_a_timed_out_failure(modal_api, tmp_path):
    from usercode_jobs import sleeper

    from neural_jupyter.errors import JobTimeout

    marker = tmp_path / "pid"
    job = neural_jupyter.remote(platform="modal", monitor="none")(sleeper).submit(str(marker))
    assert wait_for(marker.exists, 90)
    sandbox = modal_api.sandbox(job.record.remote_id)
    modal_api._expire(sandbox)  # what Modal does when the sandbox's timeout passes
    with pytest.raises(JobTimeout):
        job.result()
    status = modal_api.backend.status(job.remote())
    assert status.state == "FAILED" and status.timed_out and status.exit_code == 124


@pytest.mark.slow
def test_a_sandbox_modal_forgot_reads_from_what_was_kept(modal_api, tmp_path, small_bundle):
    job = remote_job(tmp_path)
    submission = modal_api.backend.submit(small_bundle, job, ResourceSpec(gpu_type="T4"))
    job = remote_job(tmp_path, submission=submission)
    items = [i for i in modal_api.backend.events(job) if i is not None]
    assert modal_api.backend.status(job).state == "SUCCEEDED"
    modal_api.forget(submission.remote_id)
    look = modal_api.backend.look(job)
    assert look.gone and look.status.state == "SUCCEEDED"  # the state last seen, kept here
    again = [i for i in modal_api.backend.events(job, follow=False) if i is not None]
    epochs = [i for i in again if isinstance(i, Event) and i.kind == "epoch"]
    assert len(epochs) == 3 and len(again) >= len(epochs)
    assert items
    job.files.final_status.unlink()  # nothing kept either
    look = modal_api.backend.look(job)
    assert look.gone and look.status.state == "UNKNOWN" and "no sandbox" in look.status.message


def test_reads_and_waits_run_off_a_running_event_loop(modal_api, tmp_path, small_bundle):
    """In a notebook, cells run while the kernel's event loop runs: the SDK's blocking calls
    go to a worker thread there (no AsyncUsageWarning, no deadlock)."""
    import asyncio
    import warnings

    job = remote_job(tmp_path)

    async def in_a_cell():
        return modal_api.backend.submit(small_bundle, job, ResourceSpec(gpu_type="T4"))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        submission = asyncio.run(in_a_cell())
    assert submission.remote_id in modal_api.sandboxes
    modal_api.backend.cancel(remote_job(tmp_path, submission=submission))
