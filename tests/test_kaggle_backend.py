"""The Kaggle backend through the real ``kagglesdk`` client (the transport of the ``kaggle``
package and CLI), against a local fake of Kaggle's kernels API
(``fakes.kaggle_api.FakeKaggle``: the ``/v1/kernels.KernelsApiService/*`` wire format with
basic auth, Kaggle's lower-case statuses, the live SSE log stream, output file URLs, every
request recorded, injectable faults).

The narrowest boundary: kagglesdk has no public endpoint setting (its hosts are fixed per
environment), so the backend's ``KAGGLE_API_ENDPOINT`` sets the client's base URL; every
request is still built, authenticated, sent and parsed by kagglesdk itself.
"""

from __future__ import annotations

import base64
import io
import json
import re
import sqlite3
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
from fakes.kaggle_api import SERVICE, FakeKaggle, Script

import neural_jupyter
from neural_jupyter import api
from neural_jupyter.backends import get_backend
from neural_jupyter.backends import retry as retry_module
from neural_jupyter.backends.base import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    RemoteJob,
    ResourceSpec,
)
from neural_jupyter.backends.kaggle import (
    STATE_TABLE,
    KaggleBackend,
    find_credentials,
    kernel_slug_for,
    parse_log,
)
from neural_jupyter.compiler import compile_model
from neural_jupyter.errors import (
    ConfigurationError,
    MissingDependencyError,
    PlatformAuthError,
    PlatformError,
    QuotaError,
)
from neural_jupyter.jobs.job import Job
from neural_jupyter.jobs.store import JobStatus, JobStore
from neural_jupyter.runtime import data as data_module
from neural_jupyter.runtime.bundle import RunSettings, build_bundle
from neural_jupyter.runtime.events import Event, LogLine

KEY = "kaggle-0123456789abcdef0123"
API_KEY = "f00dfacecafe0123456789abcdef4242"

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

LINES = [
    ("stdout", '{"event": "start", "epochs": 2, "steps_per_epoch": 3}'),
    ("stderr", "UserWarning: something on stderr"),
    ("stdout", '{"event": "epoch", "epoch": 1, "epochs": 2, "metrics": {"loss": 0.9}}'),
    ("stdout", '{"event": "epoch", "epoch": 2, "epochs": 2, "metrics": {"loss": 0.5}}'),
    ("stdout", '{"event": "done", "metrics": {"loss": 0.5}, "best_epoch": 2}'),
]


@pytest.fixture
def kaggle(tmp_path, monkeypatch, neural_home):
    monkeypatch.setattr(retry_module, "BASE_WAIT", 0.0)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("KAGGLE_CONFIG_DIR", "KAGGLE_API_TOKEN", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    with FakeKaggle(username="alice", key=API_KEY) as fake:
        monkeypatch.setenv("KAGGLE_API_ENDPOINT", fake.url)
        monkeypatch.setenv("KAGGLE_USERNAME", "alice")
        monkeypatch.setenv("KAGGLE_KEY", API_KEY)
        backend = get_backend("kaggle")
        monkeypatch.setattr(backend, "poll_seconds", 0.02)
        monkeypatch.setattr(backend, "heartbeat_seconds", 0.01)
        fake.backend = backend
        yield fake


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    model = compile_model(SMALL)
    dataset = data_module.resolve(model.spec, "digits")
    directory = tmp_path_factory.mktemp("bundle")
    return build_bundle(
        model.spec, dataset, directory / "bundle", RunSettings.from_spec(model.spec), job_id="j1"
    )


def remote_job(tmp_path: Path, submission=None) -> RemoteJob:
    directory = tmp_path / "job"
    (directory / "bundle").mkdir(parents=True, exist_ok=True)
    details = {"idempotency_key": KEY, **(submission.details if submission else {})}
    return RemoteJob("j1", directory, submission.remote_id if submission else None, details)


def submit(kaggle, tmp_path, bundle, **resources):
    submission = kaggle.backend.submit(bundle, remote_job(tmp_path), ResourceSpec(**resources))
    return remote_job(tmp_path, submission), submission


def collect(backend, job, follow=True, timeout=20.0):
    items, deadline = [], time.monotonic() + timeout
    for item in backend.events(job, follow=follow):
        if item is not None:
            items.append(item)
        assert time.monotonic() < deadline, "the event stream did not end"
    return items


def embedded_names(text: str) -> set[str]:
    """The files of the bundle carried inside the kernel script."""
    literal = re.search(r"BUNDLE = \(\n(.*?)\n\)", text, re.S).group(1)
    encoded = "".join(re.findall(r'"([^"]*)"', literal))
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(encoded)), mode="r:gz") as tar:
        return set(tar.getnames())


# --- pure parts ---------------------------------------------------------------------------------
def test_kernel_slugs_are_stable_and_valid():
    slug = kernel_slug_for(KEY)
    assert slug == kernel_slug_for(KEY) and slug.startswith("nj-")
    for candidate in (slug, kernel_slug_for("kaggle-" + "Ab_" * 40)):
        assert len(candidate) <= 50 and re.fullmatch(r"[a-z0-9-]+", candidate)


def test_state_table_covers_kaggles_statuses():
    assert {name: state for name, (state, _) in STATE_TABLE.items()} == {
        "QUEUED": PENDING,
        "NEW_SCRIPT": PENDING,
        "RUNNING": RUNNING,
        "CANCEL_REQUESTED": RUNNING,
        "COMPLETE": SUCCEEDED,
        "ERROR": FAILED,
        "CANCEL_ACKNOWLEDGED": CANCELLED,
    }


def test_persisted_log_format_is_parsed():
    text = json.dumps([{"stream_name": "stdout", "time": 1.0, "data": "a\nb\n"}])
    assert parse_log(text)[0]["data"] == "a\nb\n"
    assert parse_log("plain text") == [{"stream_name": "stdout", "data": "plain text"}]


def test_missing_sdk_names_the_extra(monkeypatch, tmp_path, small_bundle):
    monkeypatch.setitem(sys.modules, "kagglesdk", None)
    with pytest.raises(MissingDependencyError) as caught:
        KaggleBackend().client()
    assert "neural-jupyter[kaggle]" in str(caught.value)


def test_credentials_come_from_env_or_kaggle_json(kaggle, monkeypatch, tmp_path):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    with pytest.raises(PlatformAuthError) as caught:
        kaggle.backend.check_credentials()
    assert "kaggle.json" in caught.value.hint
    folder = tmp_path / "home" / ".kaggle"
    folder.mkdir(parents=True)
    (folder / "kaggle.json").write_text(json.dumps({"username": "alice", "key": API_KEY}))
    found = find_credentials()
    assert found.username == "alice" and API_KEY not in repr(found)
    kaggle.backend.check_credentials()


# --- submit -------------------------------------------------------------------------------------
def test_submit_pushes_a_private_gpu_script_kernel(kaggle, tmp_path, small_bundle):
    _job, submission = submit(
        kaggle, tmp_path, small_bundle, instance_type="gpu-t4x2", max_runtime_hours=2
    )
    slug = kernel_slug_for(KEY)
    assert submission.remote_id == f"alice/{slug}"
    calls = [r.path.rsplit("/", 1)[1] for r in kaggle.requests]
    assert calls == ["GetKernelSessionStatus", "SaveKernel"]  # looked first: never push twice
    body = kaggle.calls("POST", "SaveKernel$")[0].json
    assert body["slug"] == f"alice/{slug}" and body["newTitle"] == slug
    assert body["isPrivate"] is True and body["enableGpu"] is True
    assert body["enableInternet"] is False and body["kernelType"] == "script"
    assert body["language"] == "python" and body["machineShape"] == "NvidiaTeslaT4"
    assert body["sessionTimeoutSeconds"] == 7200
    assert {"train.py", "job.json", "data.npz"} <= embedded_names(body["text"])
    assert API_KEY not in repr([r.body for r in kaggle.requests])
    assert submission.details["url"] == f"https://www.kaggle.com/code/alice/{slug}"


def test_data_from_a_dataset_is_not_embedded(kaggle, tmp_path, small_bundle, monkeypatch):
    import neural_jupyter.backends.kaggle as kaggle_module

    monkeypatch.setattr(kaggle_module, "EMBED_LIMIT", 20_000)
    with pytest.raises(ConfigurationError) as caught:
        submit(kaggle, tmp_path, small_bundle)
    assert "--set dataset=OWNER/SLUG" in caught.value.hint and kaggle.requests == []
    submit(kaggle, tmp_path, small_bundle, extra={"dataset": "alice/digits-npz"})
    body = kaggle.calls("POST", "SaveKernel$")[0].json
    assert body["datasetDataSources"] == ["alice/digits-npz"]
    assert "data.npz" not in embedded_names(body["text"])


def test_settings_are_checked_before_anything_is_sent(kaggle, tmp_path, small_bundle):
    with pytest.raises(ConfigurationError, match="12-hour"):
        submit(kaggle, tmp_path, small_bundle, max_runtime_hours=13)
    with pytest.raises(ConfigurationError, match="gpu-t4x2"):
        submit(kaggle, tmp_path, small_bundle, instance_type="a100")
    with pytest.raises(ConfigurationError, match="OWNER/DATASET"):
        submit(kaggle, tmp_path, small_bundle, extra={"dataset": "no slash"})
    assert kaggle.requests == []


# --- status, events, artifacts ------------------------------------------------------------------
def test_status_and_live_log_through_to_success(kaggle, tmp_path, small_bundle):
    hold = threading.Event()
    kaggle.script = Script(
        lines=LINES,
        outputs={"output/model.pt": b"weights", "output/history.json": b"[]"},
        hold=hold,
    )
    job, _ = submit(kaggle, tmp_path, small_bundle)
    assert kaggle.backend.status(job).state == PENDING
    items = []
    for item in kaggle.backend.events(job):
        if isinstance(item, Event) and item.kind == "done":
            assert kaggle.backend.status(job).state == RUNNING  # streamed live
            hold.set()
        if item is not None:
            items.append(item)
    statuses = [i.get("message") for i in items if isinstance(i, Event) and i.kind == "status"]
    assert "Kaggle: running" in statuses and statuses[0] in ("Kaggle: queued", "Kaggle: running")
    assert statuses[-1].startswith("outputs brought back to")
    kinds = [i.kind for i in items if isinstance(i, Event) and i.kind != "status"]
    assert kinds == ["start", "epoch", "epoch", "done"]  # the final log adds no duplicates
    assert LogLine("UserWarning: something on stderr", "stderr") in items
    assert kaggle.backend.status(job).state == SUCCEEDED
    assert [r.method for r in kaggle.requests if "logs/stream" in r.path] == ["GET"]
    output = job.directory / "bundle" / "output"
    assert (output / "model.pt").read_bytes() == b"weights"
    assert "UserWarning" in (job.directory / "stderr.log").read_text()
    fetched = kaggle.backend.fetch_artifacts(job, tmp_path / "elsewhere")
    assert set(fetched) == {"weights", "history"}
    assert fetched["weights"].read_bytes() == b"weights"
    # a later replay (no live stream: the session is over) reads the persisted log once
    replay = [i for i in collect(kaggle.backend, job, follow=False) if isinstance(i, Event)]
    assert [i.kind for i in replay if i.kind != "status"] == ["start", "epoch", "epoch", "done"]


def test_error_session_is_failed_with_kaggles_message(kaggle, tmp_path, small_bundle):
    kaggle.script = Script(
        lines=[
            ("stdout", '{"event": "start", "epochs": 2}'),
            ("stdout", '{"event": "error", "type": "ValueError", "message": "bad shapes"}'),
        ],
        error="Your notebook hit an unhandled error while rendering",
    )
    job, _ = submit(kaggle, tmp_path, small_bundle)
    items = collect(kaggle.backend, job)
    assert any(isinstance(i, Event) and i.kind == "error" for i in items)
    status = kaggle.backend.status(job)
    assert status.state == FAILED and "unhandled error" in status.message
    assert not (job.directory / "bundle" / "output").exists()


def test_cancel_explains_what_to_do_and_a_website_stop_is_cancelled(kaggle, tmp_path, small_bundle):
    kaggle.script = Script(lines=LINES[:2], hold=threading.Event())
    job, submission = submit(kaggle, tmp_path, small_bundle)
    before = len(kaggle.requests)
    with pytest.raises(PlatformError) as caught:
        kaggle.backend.cancel(job)
    assert submission.details["url"] in caught.value.hint and "Stop session" in caught.value.hint
    assert len(kaggle.requests) == before  # nothing was deleted or changed
    kaggle.cancel_from_the_website(submission.remote_id)
    assert kaggle.backend.status(job).state == CANCELLED
    collect(kaggle.backend, job)  # the stream ends


# --- errors and retries -------------------------------------------------------------------------
def test_bad_key_is_an_auth_error_with_kaggles_message(kaggle, tmp_path, small_bundle, monkeypatch):
    monkeypatch.setenv("KAGGLE_KEY", "revoked-key-0000000000000000")
    with pytest.raises(PlatformAuthError) as caught:
        submit(kaggle, tmp_path, small_bundle)
    text = str(caught.value) + "".join(caught.value._render_traceback_())
    assert "Unauthenticated: the API key is invalid or revoked" in text
    assert "revoked-key-0000000000000000" not in text
    assert len(kaggle.requests) == 1 and kaggle.kernels == {}  # not retried, nothing pushed


@pytest.mark.parametrize("lost_reply", [False, True])
def test_transient_503_is_retried_into_exactly_one_run(kaggle, tmp_path, small_bundle, lost_reply):
    kaggle.fail("POST", "SaveKernel", 503, "The service is unavailable", after=lost_reply)
    _job, submission = submit(kaggle, tmp_path, small_bundle)
    ref = submission.remote_id
    assert kaggle.kernels[ref]["version"] == 1 and len(kaggle.sessions) == 1
    saves = len(kaggle.calls("POST", "SaveKernel$"))
    assert saves == (1 if lost_reply else 2)  # a push that went through is never repeated
    again = kaggle.backend.submit(small_bundle, remote_job(tmp_path), ResourceSpec())
    assert again.remote_id == ref and kaggle.kernels[ref]["version"] == 1


def test_permanent_errors_are_not_retried(kaggle, tmp_path, small_bundle):
    kaggle.fail("POST", "SaveKernel", 400, "Invalid machine shape 'NvidiaH999'")
    with pytest.raises(PlatformError, match="Invalid machine shape") as caught:
        submit(kaggle, tmp_path, small_bundle, extra={"machine_shape": "NvidiaH999"})
    assert not isinstance(caught.value, PlatformAuthError)
    assert len(kaggle.calls("POST", "SaveKernel$")) == 1
    kaggle.fail("POST", "SaveKernel", 400, "You have exceeded your weekly GPU quota")
    with pytest.raises(QuotaError):
        submit(kaggle, tmp_path, small_bundle)
    assert len(kaggle.calls("POST", "SaveKernel$")) == 2


# --- through the API ----------------------------------------------------------------------------
def test_dry_run_shows_the_push_and_sends_nothing(kaggle):
    with pytest.warns(DeprecationWarning, match="retired"):  # Kaggle's P100s are gone
        plan = api.submit(SMALL, "digits", platform="kaggle", instance="gpu-p100", dry_run=True)
    assert kaggle.requests == []
    push = plan.request["SaveKernel"]
    assert push["isPrivate"] is True and push["machineShape"] == "NvidiaTeslaT4"
    assert plan.cost.total_usd == 0.0


def test_full_run_through_the_api(kaggle, capsys):
    """The fake runs the pushed kernel script for real: it unpacks the embedded bundle in a
    scratch /kaggle/working and runs train.py; its log and outputs come back."""
    kaggle.execute = True
    run = api.submit(SMALL, "digits", platform="kaggle", instance="gpu-t4x2", monitor="text")
    out = capsys.readouterr().out
    assert "epoch 3/3" in out and run.status == "SUCCEEDED"
    record = JobStore().get(run.job_id)
    assert record.status is JobStatus.SUCCEEDED and record.metrics["val_accuracy"] > 0.6
    assert record.remote_id == f"alice/{kernel_slug_for(record.idempotency_key)}"
    assert len(run.history) == 3 and run.artifacts["weights"].exists()
    assert sum(p.numel() for p in run.model().parameters()) > 0
    again = api.submit(SMALL, "digits", platform="kaggle", instance="gpu-t4x2", monitor="none")
    assert again.job_id == run.job_id and len(kaggle.calls("POST", "SaveKernel$")) == 1
    # the API key is nowhere we write or show
    job = Job.load(run.job_id)
    texts = [out, capsys.readouterr().out]
    with sqlite3.connect(JobStore().path) as conn:
        texts.extend(json.dumps(row) for row in conn.execute("SELECT * FROM jobs"))
    for path in job.directory.rglob("*"):
        if path.is_file() and path.suffix not in (".pt", ".npz"):
            texts.append(path.read_text(errors="replace"))
    texts.extend(r.body.decode("utf-8", "replace") for r in kaggle.requests)
    assert API_KEY not in "\n".join(texts)
    assert all(
        SERVICE in r.path or "/files/" in r.path or "logs" in r.path for r in kaggle.requests
    )


# --- user code --------------------------------------------------------------------------------
def test_a_decorated_function_runs_as_a_kernel(kaggle, neural_home):
    """The user-code bundle embedded in the kernel script; its value comes back among the
    kernel's output files."""
    import numpy as np
    from usercode_jobs import scaled

    kaggle.execute = True
    remote_scaled = neural_jupyter.remote(platform="kaggle", monitor="none")(scaled)
    out = remote_scaled([1.0, 2.0], factor=3.0)
    np.testing.assert_array_equal(out["values"], [3.0, 6.0])
    (push,) = kaggle.calls("POST", "SaveKernel$")
    names = embedded_names(push.json["text"])
    assert {"train.py", "payload.pkl", "neural_jupyter_progress/__init__.py"} <= names
    assert "launcher.py" not in names  # the kernel script is the launcher itself
    record = JobStore().list(platform="kaggle")[0]
    assert record.status is JobStatus.SUCCEEDED and record.config["kind"] == "function"
