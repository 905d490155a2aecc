"""Sweeps: search spaces, a real grid on digits, resume after killing the coordinator,
Optuna with pruning, S3 storage against moto, failures that do not stop the sweep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from neural_jupyter import Sweep
from neural_jupyter.compiler import compile_model
from neural_jupyter.errors import ConfigurationError
from neural_jupyter.jobs.space import SearchSpace, parse_grid
from neural_jupyter.jobs.storage import LocalStorage, S3Storage
from neural_jupyter.jobs.store import JobStatus, JobStore

NET = """network SweepNet {
  input: (8, 8, 1)
  layers:
    Flatten()
    Dense(HPO(choice(16, 32)), "relu")
    Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  optimizer: Adam(learning_rate=HPO(log_range(0.0001, 0.01)))
  metrics: ["accuracy"]
  train { epochs: 3 batch_size: 64 validation_split: 0.2 }
}"""


def test_search_space_grid_random_and_errors():
    model = compile_model(NET)
    space = SearchSpace(model.search_space, parse_grid(["optimizer.learning_rate=0.001,0.01"]))
    grid = list(space.grid())
    assert len(grid) == 4 == space.grid_size()
    assert {g["dense_1.units"] for g in grid} == {16, 32}
    with pytest.raises(ConfigurationError, match="needs discrete values"):
        list(SearchSpace(model.search_space).grid())
    first = list(SearchSpace(model.search_space).random(5, seed=3))
    assert first == list(SearchSpace(model.search_space).random(5, seed=3))
    assert all(0.0001 <= c["optimizer.learning_rate"] <= 0.01 for c in first)
    with pytest.raises(ConfigurationError, match=r"did you mean 'dense_1\.units'"):
        SearchSpace(model.search_space, {"dense_1.unit": (1, 2)})
    with pytest.raises(ConfigurationError, match="KEY=V1"):
        parse_grid(["nothing"])


@pytest.mark.slow
def test_small_real_grid_on_digits(neural_home, tmp_path):
    sweep = Sweep(
        NET,
        "digits",
        grid={"optimizer.learning_rate": (0.01,)},
        seeds=2,
        parallel=2,
        metric="val_accuracy",
        storage=str(tmp_path / "results"),
    )
    result = sweep.run()
    assert [t.status for t in result.trials] == ["SUCCEEDED"] * 4
    assert len({(tuple(t.params.items()), t.seed) for t in result.trials}) == 4
    summary = result.summary()
    assert len(summary) == 2 and all(row["seeds"] == 2 for row in summary)
    assert summary[0]["mean"] >= summary[1]["mean"]  # mode max: best first
    assert all(0.5 < t.metric <= 1.0 for t in result.trials)
    assert result.best_config in [{k: v for k, v in t.params.items()} for t in result.trials]
    model = result.best_model()
    assert sum(p.numel() for p in model.parameters()) > 0
    stored = LocalStorage(tmp_path / "results").list(sweep.id)
    assert sum(key.endswith("model.pt") for key in stored) == 4
    assert any(key.endswith("results.json") for key in stored)
    assert {r.sweep_id for r in JobStore().list()} == {sweep.id}
    # running the same sweep again reuses every finished trial
    again = Sweep(
        NET,
        "digits",
        grid={"optimizer.learning_rate": (0.01,)},
        seeds=2,
        parallel=2,
        metric="val_accuracy",
        storage=str(tmp_path / "results"),
    ).run()
    assert all(t.reused for t in again.trials) and len(JobStore().list()) == 4


COORDINATOR = """
import sys
from neural_jupyter import Sweep
net = sys.argv[1]
Sweep(net, "digits", grid={"optimizer.learning_rate": (0.001, 0.01), "epochs": (6,)},
      seeds=1, parallel=1, metric="val_accuracy", name="resume-me").run()
"""


@pytest.mark.slow
def test_resume_after_killing_the_coordinator(neural_home):
    env = {**os.environ, "NEURAL_JUPYTER_HOME": str(neural_home)}
    coordinator = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(COORDINATOR), NET], env=env, start_new_session=True
    )
    store = JobStore()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any(r.status is JobStatus.SUCCEEDED for r in store.list()):
            break
        time.sleep(0.2)
    os.killpg(coordinator.pid, signal.SIGKILL)  # the coordinator dies mid-sweep
    coordinator.wait()
    finished_before = {r.id for r in store.list() if r.status is JobStatus.SUCCEEDED}
    assert finished_before
    result = Sweep(
        NET,
        "digits",
        grid={"optimizer.learning_rate": (0.001, 0.01), "epochs": (6,)},
        seeds=1,
        parallel=1,
        metric="val_accuracy",
        name="resume-me",
    ).run()
    assert [t.status for t in result.trials] == ["SUCCEEDED"] * 4
    reused = {t.job_id for t in result.trials if t.reused}
    assert finished_before <= reused  # nothing that had finished ran again
    keys = [r.idempotency_key for r in store.list()]
    assert len(keys) == len(set(keys))
    succeeded_per_trial = {}
    for record in store.list(status="SUCCEEDED"):
        base = record.idempotency_key.split("-r")[0]
        succeeded_per_trial[base] = succeeded_per_trial.get(base, 0) + 1
    assert set(succeeded_per_trial.values()) == {1}


@pytest.mark.slow
def test_failing_trial_does_not_stop_the_sweep(neural_home):
    result = Sweep(
        NET,
        "digits",
        grid={"dense_1.units": (16,), "epochs": (1, 0), "optimizer.learning_rate": (0.01,)},
        metric="val_accuracy",
    ).run()
    statuses = sorted(t.status for t in result.trials)
    assert statuses == ["FAILED", "SUCCEEDED"]
    failed = next(t for t in result.trials if t.status == "FAILED")
    assert "epochs" in failed.error
    assert result.best.params["epochs"] == 1


@pytest.mark.slow
def test_optuna_prunes_bad_trials(neural_home):
    pytest.importorskip("optuna")
    net = NET.replace("HPO(log_range(0.0001, 0.01))", "HPO(log_range(0.0000001, 0.05))")
    sweep = Sweep(
        net,
        "digits",
        strategy="optuna",
        trials=8,
        metric="val_accuracy",
        grid={"epochs": (4,), "dense_1.units": (16,)},
        sampler_seed=2,
    )
    result = sweep.run()
    statuses = [t.status for t in result.trials]
    assert "PRUNED" in statuses and "SUCCEEDED" in statuses, statuses
    pruned = [t for t in result.trials if t.status == "PRUNED"]
    best = result.best
    assert all(
        t.params["optimizer.learning_rate"] < best.params["optimizer.learning_rate"] for t in pruned
    )
    assert all(JobStore().get(t.job_id).status is JobStatus.CANCELLED for t in pruned)


def test_s3_storage_against_moto(tmp_path):
    boto3 = pytest.importorskip("boto3")
    moto = pytest.importorskip("moto")
    with moto.mock_aws():
        client = boto3.client(
            "s3",
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket="sweeps")
        storage = S3Storage("s3://sweeps/team/a", client=client)
        weights = tmp_path / "model.pt"
        weights.write_bytes(b"weights")
        assert storage.put_file("sw/t1/model.pt", weights) == "s3://sweeps/team/a/sw/t1/model.pt"
        storage.put_json("sw/results.json", {"best": 0.9})
        assert storage.get_json("sw/results.json") == {"best": 0.9}
        assert storage.get_json("sw/missing.json") is None
        assert storage.list("sw") == ["sw/results.json", "sw/t1/model.pt"]
        body = client.get_object(Bucket="sweeps", Key="team/a/sw/t1/model.pt")["Body"].read()
        assert body == b"weights"
    with pytest.raises(ConfigurationError, match=r"'\.' or '\.\.'"):
        LocalStorage(tmp_path).put_json("../escape.json", {})


@pytest.mark.slow
def test_sweep_magic(ip, neural_home, capsys):
    ip.run(f"%%neural_compile --show none\n{NET}")
    result = ip.run(
        "%neural_sweep SweepNet --data digits --grid optimizer.learning_rate=0.01 "
        "--grid dense_1.units=16 --grid epochs=1 --seeds 2 --metric val_accuracy "
        "--monitor text --as sw"
    )
    assert ip.ns["sw"] is result and len(result.trials) == 2
    out = capsys.readouterr().out
    assert out.count("SUCCEEDED") >= 2 and "trial 1" in out
    assert json.dumps(result.to_json())
