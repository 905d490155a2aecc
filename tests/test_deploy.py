"""Serving a trained model: ``TrainingRun.predict``, exports (reloaded and compared), the local
endpoint over real HTTP (token, batching, port freed), the endpoint records in the job store
(idempotent create, a dead kernel reconciled, max_hours), the cost guard and the magics in a
real ``InteractiveShell``. The digits model is trained for real (2 epochs) once per module."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("tornado")

import neural_jupyter
from neural_jupyter import api
from neural_jupyter.deploy import lifecycle
from neural_jupyter.deploy.base import Created, DeployRequest, Look, ServingPlatform
from neural_jupyter.deploy.local import LocalPlatform
from neural_jupyter.errors import ConfigurationError, DataError, PlatformError
from neural_jupyter.jobs.endpoints import EndpointStatus, EndpointStore
from neural_jupyter.jobs.store import JobStore
from neural_jupyter.runtime.data import digits
from tests.conftest import Shell

DIGITS = """
network DigitNet {
  input: (8, 8, 1)
  layers:
    Conv2D(filters=8, kernel_size=3, padding="same", activation="relu")
    Flatten()
    Dense(32, "relu")
    Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  optimizer: Adam(learning_rate=0.003)
  metrics: ["accuracy"]
  train { epochs: 2 batch_size: 64 validation_split: 0.2 seed: 1 }
}
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("deploy-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NEURAL_JUPYTER_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def run(home):
    return api.run(DIGITS, "digits", monitor="none")


@pytest.fixture(scope="module")
def x(run):
    return digits(run.spec()).x_train[:40]


@pytest.fixture
def cleanup():
    made = []
    yield made
    for endpoint in made:
        endpoint.delete()


# --- predict and export --------------------------------------------------------------------
def test_predict_takes_channels_last_batches_samples_and_frames(run, x):
    import pandas as pd
    import torch

    probabilities = run.predict(x)
    assert probabilities.shape == (40, 10) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)  # softmax applied
    network = run.model()
    with torch.no_grad():
        logits = network(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(
        probabilities, torch.softmax(torch.from_numpy(logits), -1), atol=1e-6
    )
    assert (probabilities.argmax(1) == digits(run.spec()).y_train[:40]).mean() > 0.6
    np.testing.assert_array_equal(run.predict(pd.DataFrame(x.reshape(40, 64))), probabilities)
    np.testing.assert_allclose(run.predict(x[0]), probabilities[:1], atol=1e-6)
    with pytest.raises(DataError, match=r"\(N, 8, 8, 1\)"):
        run.predict(np.zeros((3, 8, 8)))


def test_torchscript_and_onnx_exports_compute_what_predict_does(run, x, tmp_path):
    import torch

    scripted = run.export("torchscript", tmp_path / "m.pt")
    assert scripted.max_abs_diff <= 1e-5 and scripted.metadata["input_shape"] == [8, 8, 1]
    reloaded = torch.jit.load(str(scripted.path))
    with torch.no_grad():
        np.testing.assert_allclose(reloaded(torch.from_numpy(x)).numpy(), run.predict(x), atol=1e-6)
    pytest.importorskip("onnxruntime")
    import onnxruntime

    exported = run.export("onnx", tmp_path / "m.onnx")
    session = onnxruntime.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x})
    np.testing.assert_allclose(got, run.predict(x), atol=1e-5)  # a batch size not traced with
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["neural_jupyter.json"])["output_activation"] == "softmax"
    with pytest.raises(ConfigurationError, match="cannot be exported as keras"):
        run.export("keras")
    with pytest.raises(ConfigurationError, match="unknown export format"):
        run.export("pickle")


def test_an_export_that_disagrees_with_predict_is_refused(run, tmp_path, monkeypatch):
    from neural_jupyter.errors import ExportError
    from neural_jupyter.jobs import export as export_module

    original = export_module._load_torchscript
    monkeypatch.setattr(
        export_module, "_load_torchscript", lambda path: lambda batch: original(path)(batch) + 0.01
    )
    with pytest.raises(ExportError, match="does not compute what predict"):
        run.export("torchscript", tmp_path / "bad.pt")


# --- the local endpoint ------------------------------------------------------------------------
def test_local_endpoint_serves_over_http_like_run_predict(run, x, cleanup):
    endpoint = neural_jupyter.deploy(run)
    cleanup.append(endpoint)
    assert endpoint.status == "IN_SERVICE" and endpoint.url.startswith("http://127.0.0.1:")
    np.testing.assert_allclose(endpoint.predict(x), run.predict(x), atol=1e-6)
    np.testing.assert_allclose(endpoint.predict(x.reshape(40, 64)), run.predict(x), atol=1e-6)
    # without the token: 403, and the body says nothing about the model
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        request = urllib.request.Request(
            endpoint.url, data=b'{"instances": []}', method="POST", headers=headers
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        assert refused.value.code == 403
    # a bad input is the caller's error, with what was expected
    with pytest.raises(DataError, match=r"\(N, 8, 8, 1\)"):
        endpoint.predict(np.zeros((2, 5)))
    token = LocalPlatform().server(endpoint.record).token
    assert token not in repr(endpoint) and token not in json.dumps(endpoint.record.details)
    logs = "\n".join(endpoint.logs())
    assert "403" in logs and "200 POST" in logs and token not in logs


def test_concurrent_requests_are_batched(run, x, cleanup):
    endpoint = neural_jupyter.deploy(run, name="batched", extra={"batch_wait_ms": 300})
    cleanup.append(endpoint)
    server = LocalPlatform().server(endpoint.record)
    results: dict[int, np.ndarray] = {}
    barrier = threading.Barrier(8)

    def call(i: int) -> None:
        barrier.wait()
        results[i] = endpoint.predict(x[i * 5 : i * 5 + 5])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    stats = server.batcher.stats()
    assert stats["requests"] == 8 and stats["samples"] == 40
    assert stats["batches"] < 8 and stats["largest_batch"] > 5, stats
    expected = run.predict(x)
    for i in range(8):  # each request got its own rows back
        np.testing.assert_allclose(results[i], expected[i * 5 : i * 5 + 5], atol=1e-6)


def test_delete_frees_the_port_and_the_record_says_deleted(run, x):
    endpoint = neural_jupyter.deploy(run, name="short-lived")
    port = endpoint.record.details["port"]
    endpoint.delete()
    probe = socket.socket()
    assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listens
    probe.close()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))  # free for the next server
    listener.close()
    record = EndpointStore().get(endpoint.id)
    assert record.status is EndpointStatus.DELETED and record.deleted_at
    with pytest.raises(ConfigurationError, match="was deleted"):
        endpoint.predict(x)


def test_redeploying_finds_the_endpoint_instead_of_a_second(run, cleanup, capsys):
    first = neural_jupyter.deploy(run, name="again")
    cleanup.append(first)
    second = neural_jupyter.deploy(run, name="again")
    assert second.id == first.id and "already deployed" in capsys.readouterr().out
    assert [e.id for e in neural_jupyter.deploy.endpoints() if e.name == "again"] == [first.id]
    plan = neural_jupyter.deploy(run, name="again", dry_run=True)
    assert plan.existing == first.id and "already deployed" in str(plan)


def test_an_endpoint_whose_kernel_died_is_reconciled(run, home):
    """A kernel killed without its exit hooks leaves a live record; the next look marks it."""
    code = (
        "import sys, time, neural_jupyter\n"
        "from neural_jupyter.jobs import get\n"
        f"run = get({run.job_id!r}).result()\n"
        "endpoint = neural_jupyter.deploy(run, name='orphan')\n"
        "print(endpoint.id, flush=True)\n"
        "time.sleep(600)\n"
    )
    env = {**os.environ, "NEURAL_JUPYTER_HOME": str(home), "PYTHONPATH": os.getcwd()}
    kernel = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        endpoint_id = kernel.stdout.readline().split()[-1]
        store = EndpointStore()
        assert store.get(endpoint_id).status is EndpointStatus.IN_SERVICE
        assert lifecycle.housekeeping(store) == []  # its kernel runs: nothing to do
    finally:
        kernel.kill()  # SIGKILL: no exit hooks run, as when a kernel dies
        kernel.wait(30)
    assert store.get(endpoint_id).status is EndpointStatus.IN_SERVICE  # what it left behind
    lines = lifecycle.housekeeping(store)
    assert any("orphan" in line and "kernel ended" in line for line in lines)
    record = store.get(endpoint_id)
    assert record.status is EndpointStatus.DELETED and not record.live


def test_kernel_exit_closes_local_endpoints_and_records_it(run, home):
    code = (
        "import neural_jupyter\n"
        "from neural_jupyter.jobs import get\n"
        f"endpoint = neural_jupyter.deploy(get({run.job_id!r}).result(), name='exits')\n"
        "print(endpoint.id, endpoint.record.details['port'], flush=True)\n"
    )
    env = {**os.environ, "NEURAL_JUPYTER_HOME": str(home), "PYTHONPATH": os.getcwd()}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    endpoint_id, _port = out.stdout.split()[-2:]
    record = EndpointStore().get(endpoint_id)
    assert record.status is EndpointStatus.DELETED and record.error == "its kernel exited"


# --- the lifecycle with a scripted platform -------------------------------------------------
class Scripted(ServingPlatform):
    """A paid platform whose states follow a script (the lifecycle's own logic under test)."""

    name = "scripted"
    label = "Scripted"
    default_instance = "big"
    poll_seconds = 0.01

    def __init__(self, states, price=2.0):
        self.states = list(states)
        self.price = price
        self.created: list[str] = []
        self.deleted: list[str] = []

    def hourly_price(self, instance, replicas):
        from neural_jupyter.pricing import CostEstimate

        return (
            CostEstimate("scripted", instance, self.price * replicas, 1.0) if self.price else None
        )

    def plan(self, request: DeployRequest):
        return {"CreateThing": {"name": request.name, "instance": request.instance}}

    def create(self, request, record):
        self.created.append(request.name)
        return Created(f"thing/{request.name}", f"https://scripted/{request.name}")

    def look(self, record):
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        if isinstance(state, tuple):
            return Look(state[0], state[1])
        return Look(state)

    def invoke(self, record, batch):
        return np.zeros((len(batch), 10), dtype=np.float32)

    def delete(self, record):
        self.deleted.append(record.name)


@pytest.fixture
def scripted(monkeypatch):
    from neural_jupyter.deploy import base

    def install(states, price=2.0):
        fake = Scripted(states, price)
        monkeypatch.setitem(base.PLATFORMS, "scripted", "x:y")
        monkeypatch.setitem(base._instances, "scripted", fake)
        return fake

    return install


def test_cost_guard_asks_for_yes_above_the_daily_threshold(run, scripted):
    fake = scripted([EndpointStatus.IN_SERVICE], price=2.0)  # $48 a day
    with pytest.raises(ConfigurationError, match=r"\$48.00 per day") as refused:
        neural_jupyter.deploy(run, platform="scripted")
    assert "--yes" in refused.value.hint and fake.created == []
    # a short max_hours keeps the day's cost under the threshold
    with pytest.warns(lifecycle.MaxHoursWarning, match="enforced by neural-jupyter"):
        endpoint = neural_jupyter.deploy(run, platform="scripted", max_hours=2)
    assert fake.created and endpoint.record.expires_at
    endpoint.delete()
    unknown = scripted([EndpointStatus.IN_SERVICE], price=None)
    with pytest.raises(ConfigurationError, match="no list price is known"):
        neural_jupyter.deploy(run, platform="scripted", name="unpriced")
    endpoint = neural_jupyter.deploy(run, platform="scripted", name="unpriced", yes=True)
    assert unknown.created == ["unpriced"]
    endpoint.delete()


def test_dry_run_shows_the_requests_and_price_and_sends_nothing(run, scripted):
    fake = scripted([EndpointStatus.IN_SERVICE])
    plan = neural_jupyter.deploy(run, platform="scripted", replicas=2, dry_run=True)
    text = str(plan)
    assert "CreateThing" in text and "$4.000/h" in text and "$96.00 per day" in text
    assert fake.created == [] and EndpointStore().find(plan.idempotency_key) is None


def test_a_failed_deployment_raises_with_the_reason_and_leaves_nothing_live(run, scripted):
    fake = scripted([EndpointStatus.CREATING, (EndpointStatus.FAILED, "health check failed")])
    with pytest.raises(PlatformError, match="health check failed") as failed:
        neural_jupyter.deploy(run, platform="scripted", name="broken", yes=True)
    assert "deleted" in failed.value.hint and fake.deleted == ["broken"]
    record = EndpointStore().get("broken")
    assert record.status is EndpointStatus.DELETED and record.error == "health check failed"


def test_max_hours_is_enforced_when_the_package_looks(run, scripted):
    fake = scripted([EndpointStatus.IN_SERVICE], price=0.01)
    with pytest.warns(lifecycle.MaxHoursWarning):
        endpoint = neural_jupyter.deploy(run, platform="scripted", name="timed", max_hours=1)
    store = EndpointStore()
    past = (datetime.now(timezone.utc) - timedelta(minutes=1)).isoformat()
    store.update(endpoint.id, expires_at=past)
    lines = lifecycle.housekeeping(store)
    assert any("timed" in line and "max_hours reached" in line for line in lines)
    assert fake.deleted == ["timed"] and store.get(endpoint.id).error == "max_hours reached"


# --- magics ------------------------------------------------------------------------------------
def test_magics_deploy_list_and_undeploy(run, x, home, scripted):
    shell = Shell()
    shell.ns["trained"] = run
    endpoint = shell.run("%neural_deploy trained --name from-magic --as ep")
    assert shell.ns["ep"] is endpoint and endpoint.status == "IN_SERVICE"
    np.testing.assert_allclose(endpoint.predict(x), run.predict(x), atol=1e-6)
    fake = scripted([EndpointStatus.IN_SERVICE], price=0.5)
    refused = shell.run_error("%neural_deploy trained --platform scripted --name paid")
    assert isinstance(refused, ConfigurationError) and "per day" in str(refused)
    shell.run("%config DeployMagics.confirm_cost_above = 100")
    shell.run("%neural_deploy trained --platform scripted --name paid")
    plan = shell.run(f"%neural_deploy {run.job_id} --platform scripted --name other --dry-run")
    assert "Dry run" in str(plan) and fake.created == ["paid"]
    shell.run("%config DeployMagics.idle_hours = 0")
    table = shell.run("%neural_endpoints")
    rows = {row["name"]: row for row in table}
    assert {"from-magic", "paid"} <= set(rows)
    assert rows["paid"]["hourly_usd"] == 0.5 and rows["paid"]["cost_usd"] >= 0
    assert any(flag.startswith("idle") for flag in rows["paid"]["flags"])
    text = str(table)
    assert "from-magic" in text and "local" in text and "0.500" in text
    shell.run("%neural_undeploy paid")
    shell.run("%neural_undeploy from-magic")
    assert fake.deleted == ["paid"]
    assert not {"from-magic", "paid"} & {row["name"] for row in shell.run("%neural_endpoints")}
    assert "no live endpoint" in str(shell.run_error("%neural_undeploy nothing-here"))


def test_deploying_an_unfinished_or_unknown_thing_is_a_clear_error(home):
    with pytest.raises(ConfigurationError, match="cannot deploy a dict"):
        neural_jupyter.deploy({})
    with pytest.raises(Exception, match="no job with id"):
        neural_jupyter.deploy("nj-00000000")
    with pytest.raises(ConfigurationError, match="cannot deploy to 'sagemakr'") as wrong:
        neural_jupyter.deploy("nj-00000000", platform="sagemakr")
    assert "sagemaker" in wrong.value.hint
    record = JobStore().create(name="pending", platform="local")
    with pytest.raises(Exception, match="only a finished training run"):
        neural_jupyter.deploy(record.id)


def test_deploy_from_a_torchscript_file_a_job_id_and_a_job(run, x, tmp_path, cleanup):
    from neural_jupyter.jobs import get as get_job

    exported = run.export("torchscript", tmp_path / "served.pt")
    from_file = neural_jupyter.deploy(exported.path, name="from-file")
    cleanup.append(from_file)
    assert from_file.record.model_name == "DigitNet" and from_file.record.job_id == run.job_id
    np.testing.assert_allclose(from_file.predict(x), run.predict(x), atol=1e-6)
    # a job id and a Job serve the same trained model: the same endpoint (same digest)
    by_id = neural_jupyter.deploy(run.job_id, name="by-id")
    cleanup.append(by_id)
    assert neural_jupyter.deploy(get_job(run.job_id), name="by-id").id == by_id.id
    not_torchscript = tmp_path / "weights.bin"
    not_torchscript.write_bytes(b"\0" * 10)
    with pytest.raises(ConfigurationError, match="not a TorchScript file"):
        neural_jupyter.deploy(not_torchscript)


KERAS_NET = """
network Tiny {
  input: (4,)
  layers: Dense(8, "relu") Output(3, "softmax")
  loss: "sparse_categorical_crossentropy"
  train { epochs: 1 batch_size: 16 }
}
"""


@pytest.mark.slow
def test_keras_runs_export_as_keras_and_serve_locally(home, tmp_path, cleanup):
    pytest.importorskip("keras")
    rng = np.random.default_rng(0)
    features = rng.standard_normal((64, 4)).astype("float32")
    labels = rng.integers(0, 3, 64)
    trained = api.run(
        neural_jupyter.compile_model(KERAS_NET, "keras"), (features, labels), monitor="none"
    )
    probabilities = trained.predict(features[:5])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    exported = trained.export("keras", tmp_path / "tiny.keras")
    assert exported.max_abs_diff <= 1e-5 and (tmp_path / "tiny.json").exists()
    with pytest.raises(ConfigurationError, match="keras model cannot be exported as onnx"):
        trained.export("onnx")
    endpoint = neural_jupyter.deploy(trained, name="keras-local")
    cleanup.append(endpoint)
    np.testing.assert_allclose(endpoint.predict(features[:5]), probabilities, atol=1e-6)
    with pytest.raises(ConfigurationError, match="serves the TorchScript export"):
        neural_jupyter.deploy(trained, platform="sagemaker", name="keras-cloud", yes=True)
