"""The SQLite job store: records, status transitions, migrations, damaged files, concurrency."""

from __future__ import annotations

import hashlib
import itertools
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neural_jupyter import paths
from neural_jupyter.errors import JobStoreError, NeuralError
from neural_jupyter.jobs import store as store_module
from neural_jupyter.jobs.migrations import MIGRATIONS
from neural_jupyter.jobs.store import (
    SCHEMA_VERSION,
    AmbiguousJobIdError,
    DuplicateIdempotencyKeyError,
    JobNotFoundError,
    JobRecord,
    JobStatus,
    JobStore,
    sql_statements,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite")


@pytest.fixture
def fixed_ids(monkeypatch):
    """Make job ids predictable: each create takes the next of the hex strings given."""

    def use(*hexes: str) -> None:
        it = iter(hexes)
        monkeypatch.setattr(store_module.secrets, "token_hex", lambda n: next(it))

    return use


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


# --------------------------------------------------------------------------------- paths


def test_home_comes_from_the_environment_at_call_time(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURAL_JUPYTER_HOME", str(tmp_path / "a"))
    assert paths.home() == tmp_path / "a"
    monkeypatch.setenv("NEURAL_JUPYTER_HOME", str(tmp_path / "b" / "c"))
    assert paths.home() == tmp_path / "b" / "c"
    assert paths.home().is_dir()
    assert paths.jobs_dir() == tmp_path / "b" / "c" / "jobs"
    assert paths.jobs_dir().is_dir()
    if os.name == "posix":
        assert (tmp_path / "b" / "c").stat().st_mode & 0o077 == 0


def test_home_defaults_to_the_platform_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("NEURAL_JUPYTER_HOME", raising=False)
    seen = []

    def fake(appname):
        seen.append(appname)
        return str(tmp_path / "platform")

    monkeypatch.setattr(paths.platformdirs, "user_data_dir", fake)
    assert paths.home() == tmp_path / "platform"
    assert seen == ["neural-jupyter"]


def test_default_store_lives_in_home(neural_home):
    store = JobStore()
    assert store.path == neural_home / "jobs.sqlite"
    assert store.path.is_file()


# ------------------------------------------------------------------------ create / get


def test_create_and_get(store):
    job = store.create(
        name="DigitNet", platform="local", model_name="DigitNet", job_dir=Path("/tmp/j")
    )
    assert job.id.startswith("nj-") and len(job.id) == 11
    int(job.id[3:], 16)
    assert job.status is JobStatus.PENDING
    assert job.created_at == job.updated_at
    assert job.created_at.endswith("+00:00")
    assert (job.started_at, job.finished_at, job.exit_code, job.error) == (None,) * 4
    assert job.job_dir == "/tmp/j"
    assert job.metrics == {} and job.artifacts == {} and job.config == {}
    assert store.get(job.id) == job
    # a second JobStore on the same file sees the same record
    assert JobStore(store.path).get(job.id) == job


def test_ids_are_unique(store):
    ids = {store.create(name=f"n{i}", platform="local").id for i in range(200)}
    assert len(ids) == 200


def test_id_collision_draws_again(store, fixed_ids):
    fixed_ids("0000aaaa", "0000aaaa", "0000bbbb")
    assert store.create(name="a", platform="local").id == "nj-0000aaaa"
    assert store.create(name="b", platform="local").id == "nj-0000bbbb"


def test_get_by_unique_prefix_with_or_without_nj(store, fixed_ids):
    fixed_ids("abc00001", "abc00002", "fff00000")
    a, b, f = (store.create(name=n, platform="local") for n in "abf")
    assert store.get("nj-f") == f
    assert store.get("fff") == f
    assert store.get("abc00001") == a
    assert store.get("  nj-abc00002 ") == b


def test_ambiguous_prefix_lists_candidates(store, fixed_ids):
    fixed_ids("abc00001", "abc00002", "fff00000")
    for n in "abf":
        store.create(name=n, platform="local")
    with pytest.raises(AmbiguousJobIdError) as info:
        store.get("nj-abc")
    assert isinstance(info.value, JobStoreError)
    assert info.value.candidates == ["nj-abc00001", "nj-abc00002"]
    assert "nj-abc00001" in str(info.value) and "nj-abc00002" in str(info.value)
    with pytest.raises(AmbiguousJobIdError):
        store.get("nj-")


@pytest.mark.parametrize("ref", ["nj-deadbeef", "zzz", "", "   "])
def test_unknown_id(store, ref):
    store.create(name="x", platform="local")
    with pytest.raises(JobNotFoundError) as info:
        store.get(ref)
    assert isinstance(info.value, NeuralError) and isinstance(info.value, LookupError)
    if ref.strip():
        assert repr(ref) in str(info.value)


def test_create_validates_fields(store):
    with pytest.raises(TypeError):
        store.create(name="", platform="local")
    with pytest.raises(TypeError):
        store.create(name="x", platform=None)
    with pytest.raises(ValueError, match="unknown job status"):
        store.create(name="x", platform="local", status="DONE")
    with pytest.raises(TypeError, match="config"):
        store.create(name="x", platform="local", config=[1, 2])
    with pytest.raises(TypeError, match="JSON"):
        store.create(name="x", platform="local", config={"f": object()})
    assert store.list() == []


def test_create_with_initial_status_sets_timestamps(store):
    running = store.create(name="r", platform="ssh", status="running")
    assert running.status is JobStatus.RUNNING and running.started_at == running.created_at
    done = store.create(name="d", platform="ssh", status=JobStatus.FAILED)
    assert done.finished_at == done.created_at


# --------------------------------------------------------------------- update / status


def test_update_sets_fields_and_updated_at(store):
    job = store.create(name="n", platform="sagemaker", config={"lr": 0.1})
    updated = store.update(
        job.id[:6],
        remote_id="arn:aws:sagemaker:job/abc",
        host="ip-10-0-0-1",
        artifacts={"model": Path("/out/model.pt")},
        config={"epochs": 3},
    )
    assert updated.id == job.id
    assert updated.remote_id == "arn:aws:sagemaker:job/abc"
    assert updated.host == "ip-10-0-0-1"
    assert updated.artifacts == {"model": "/out/model.pt"}
    assert updated.config == {"epochs": 3}  # replaced, not merged
    assert updated.created_at == job.created_at
    assert updated.updated_at > job.updated_at
    assert store.get(job.id) == updated


def test_update_rejects_unknown_and_read_only_fields(store):
    job = store.create(name="n", platform="local")
    with pytest.raises(TypeError, match="colour"):
        store.update(job.id, colour="red")
    with pytest.raises(TypeError, match="set_status"):
        store.update(job.id, status="SUCCEEDED")
    for field in ("id", "created_at", "updated_at"):
        with pytest.raises(TypeError):
            store.update(job.id, **{field: "x"})
    with pytest.raises(TypeError, match="exit_code"):
        store.update(job.id, exit_code="1")
    with pytest.raises(JobNotFoundError):
        store.update("nj-00000000", host="h")
    assert store.get(job.id) == job


def test_update_to_a_taken_idempotency_key_fails(store):
    store.create(name="a", platform="local", idempotency_key="k1")
    b = store.create(name="b", platform="local", idempotency_key="k2")
    with pytest.raises(DuplicateIdempotencyKeyError, match="k1"):
        store.update(b.id, idempotency_key="k1")
    assert store.get(b.id).idempotency_key == "k2"


def test_status_transitions_and_timestamps(store):
    job = store.create(name="n", platform="local")
    running = store.set_status(job.id, JobStatus.RUNNING)
    assert running.status is JobStatus.RUNNING
    assert running.started_at is not None and running.finished_at is None
    assert running.updated_at == running.started_at > job.updated_at

    lost = store.set_status(job.id, "UNKNOWN")
    again = store.set_status(job.id, "RUNNING", metrics={"loss": 1.0})
    assert lost.status is JobStatus.UNKNOWN
    assert again.started_at == running.started_at  # first start is kept
    assert again.metrics == {"loss": 1.0}

    done = store.set_status(job.id, "SUCCEEDED", exit_code=0, metrics={"acc": 0.9})
    assert done.status is JobStatus.SUCCEEDED and done.status.is_terminal
    assert done.finished_at is not None and done.finished_at >= done.started_at
    assert done.exit_code == 0
    assert done.metrics == {"loss": 1.0, "acc": 0.9}  # merged


@pytest.mark.parametrize("final", [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED])
def test_terminal_status_is_final(store, final):
    job = store.create(name="n", platform="local")
    store.set_status(job.id, "RUNNING")
    finished = store.set_status(job.id, final, exit_code=3, error="boom")
    for late in JobStatus:
        assert store.set_status(job.id, late, exit_code=9, metrics={"x": 1}) == finished
    assert store.get(job.id) == finished
    assert finished.exit_code == 3 and finished.error == "boom"


def test_is_terminal():
    assert {s for s in JobStatus if s.is_terminal} == {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.CANCELLED,
    }
    assert [s.value for s in JobStatus] == [s.name for s in JobStatus]
    assert str(JobStatus.RUNNING) == "RUNNING" and JobStatus.RUNNING == "RUNNING"


def test_error_summary_is_redacted_and_short(store):
    job = store.create(name="n", platform="local")
    failed = store.set_status(
        job.id, "FAILED", exit_code=1, error="login failed password=hunter2secret\n" + "x" * 9000
    )
    assert "hunter2secret" not in failed.error
    assert len(failed.error) <= store_module.MAX_ERROR_CHARS


# ------------------------------------------------------------------------------ list


def test_list_newest_first_with_filters_and_limit(store):
    made = []
    for i, (platform, sweep) in enumerate(
        itertools.islice(itertools.cycle([("local", "s1"), ("ssh", None), ("local", None)]), 9)
    ):
        made.append(store.create(name=f"j{i}", platform=platform, sweep_id=sweep))
    store.set_status(made[0].id, "RUNNING")
    store.set_status(made[4].id, "FAILED")
    store.set_status(made[8].id, "RUNNING")

    assert [j.id for j in store.list()] == [j.id for j in reversed(made)]
    assert [j.name for j in store.list(limit=2)] == ["j8", "j7"]
    assert store.list(limit=0) == []
    assert [j.name for j in store.list(platform="ssh")] == ["j7", "j4", "j1"]
    assert [j.name for j in store.list(sweep_id="s1")] == ["j6", "j3", "j0"]
    assert [j.name for j in store.list(status="RUNNING")] == ["j8", "j0"]
    assert [j.name for j in store.list(status=JobStatus.FAILED, platform="ssh")] == ["j4"]
    assert [j.name for j in store.list(status=[JobStatus.RUNNING, "FAILED"], limit=2)] == [
        "j8",
        "j4",
    ]
    assert store.list(platform="vertex") == []
    with pytest.raises(ValueError):
        store.list(status="DONE")
    with pytest.raises(ValueError):
        store.list(limit=-1)


def test_delete(store):
    a = store.create(name="a", platform="local")
    b = store.create(name="b", platform="local")
    store.delete(a.id)
    with pytest.raises(JobNotFoundError):
        store.get(a.id)
    with pytest.raises(JobNotFoundError):
        store.delete(a.id)
    assert store.list() == [b]


# ---------------------------------------------------------------------- idempotency


def test_idempotency_key_is_unique(store):
    first = store.create(name="a", platform="sagemaker", idempotency_key="cell-1")
    with pytest.raises(DuplicateIdempotencyKeyError) as info:
        store.create(name="b", platform="sagemaker", idempotency_key="cell-1")
    assert isinstance(info.value, JobStoreError)
    assert "cell-1" in str(info.value) and first.id in str(info.value)
    assert info.value.existing == first
    assert store.list() == [first]
    # jobs without a key never collide
    store.create(name="c", platform="local")
    store.create(name="d", platform="local")
    assert len(store.list()) == 3


def test_create_or_get(store):
    job, created = store.create_or_get(
        idempotency_key="k", name="n", platform="local", config={"lr": 0.1}, status="RUNNING"
    )
    assert created and job.config == {"lr": 0.1} and job.status is JobStatus.RUNNING
    again, created_again = store.create_or_get(idempotency_key="k", name="other", platform="ssh")
    assert not created_again and again == job
    assert store.find("k") == job
    assert store.find("nope") is None
    assert len(store.list()) == 1
    with pytest.raises(TypeError):
        store.create_or_get(idempotency_key="k2", name="n", platform="local", colour="red")
    with pytest.raises(JobStoreError):
        store.create_or_get(idempotency_key="", name="n", platform="local")


# ------------------------------------------------------------------------ JSON fields

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=12,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    metrics=st.dictionaries(st.text(), json_values, max_size=5),
    artifacts=st.dictionaries(st.text(), st.text(), max_size=5),
    config=st.dictionaries(st.text(), json_values, max_size=5),
)
def test_json_fields_round_trip(store, metrics, artifacts, config):
    job = store.create(name="n", platform="local", config=config)
    store.update(job.id, metrics=metrics, artifacts=artifacts)
    back = store.get(job.id)
    assert (back.metrics, back.artifacts, back.config) == (metrics, artifacts, config)


def test_numpy_values_and_nan_are_stored(store):
    job = store.create(name="n", platform="local")
    back = store.set_status(
        job.id,
        "SUCCEEDED",
        metrics={"loss": np.float32(0.5), "history": np.arange(3), "nan": float("nan")},
    )
    assert back.metrics["loss"] == 0.5 and back.metrics["history"] == [0, 1, 2]
    assert back.metrics["nan"] != back.metrics["nan"]


# -------------------------------------------------------------------------- instances


def test_instances(store):
    job = store.create(name="n", platform="ssh")
    other = store.create(name="o", platform="ssh")
    a = store.add_instance(job.id, provider="lambda", instance_id="i-1", hourly_price=1.29)
    b = store.add_instance(other.id, provider="aws", instance_id="i-2", status="running")
    assert a.job_id == job.id and a.terminated_at is None and a.hourly_price == 1.29
    assert store.live_instances() == [a, b]
    assert store.live_instances(job.id) == [a]

    a2 = store.update_instance(a.id, address="10.0.0.5", status="running")
    assert (a2.address, a2.status, a2.created_at) == ("10.0.0.5", "running", a.created_at)
    with pytest.raises(TypeError):
        store.update_instance(a.id, job_id=other.id)
    with pytest.raises(JobStoreError):
        store.update_instance(12345, status="x")

    with pytest.raises(JobStoreError, match="live cloud instances"):
        store.delete(job.id)
    gone = store.terminate_instance(a.id)
    assert gone.terminated_at is not None and gone.status == "terminated"
    assert store.terminate_instance(a.id, status="stopped") == gone  # idempotent
    assert store.live_instances() == [b]

    store.delete(job.id)
    with raw(store.path) as conn:
        assert conn.execute("SELECT count(*) FROM instances").fetchone()[0] == 1


def test_instance_needs_a_known_job(store):
    with pytest.raises(JobNotFoundError):
        store.add_instance("nj-00000000", provider="aws", instance_id="i-1")


# ------------------------------------------------------------------ file, migrations


def test_wal_mode_and_schema_version(store):
    conn = raw(store.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    finally:
        conn.close()


def test_sql_statements_splits_scripts():
    assert list(sql_statements("CREATE TABLE a (x);\n-- c;\nCREATE TABLE b (y);\n")) == [
        "CREATE TABLE a (x);",
        "-- c;\nCREATE TABLE b (y);",
    ]
    with pytest.raises(ValueError):
        list(sql_statements("CREATE TABLE a (x)"))
    assert all(list(sql_statements(script)) for script in MIGRATIONS)


def test_migration_from_v1_keeps_data(tmp_path):
    path = tmp_path / "jobs.sqlite"
    conn = raw(path)
    conn.executescript(MIGRATIONS[0])
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO jobs (id, name, backend, status, created_at, updated_at, metrics,"
        " artifacts, config, idempotency_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            "nj-0123abcd",
            "Old",
            "local",
            "SUCCEEDED",
            "2024-01-01T00:00:00.000000+00:00",
            "2024-01-01T00:00:01.000000+00:00",
            '{"loss": 0.25}',
            '{"model": "/m.pt"}',
            '{"epochs": 2}',
            "old-key",
        ),
    )
    conn.close()

    store = JobStore(path)
    old = store.get("0123")
    assert old == JobRecord(
        id="nj-0123abcd",
        name="Old",
        platform="local",
        status=JobStatus.SUCCEEDED,
        created_at="2024-01-01T00:00:00.000000+00:00",
        updated_at="2024-01-01T00:00:01.000000+00:00",
        idempotency_key="old-key",
        metrics={"loss": 0.25},
        artifacts={"model": "/m.pt"},
        config={"epochs": 2},
    )
    assert store.find("old-key") == old
    conn = raw(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"jobs", "instances", "endpoints"} <= tables
    finally:
        conn.close()
    assert store.add_instance(old.id, provider="aws", instance_id="i-9").job_id == old.id
    assert JobStore(path).live_instances()[0].instance_id == "i-9"  # reopening is a no-op


def test_failed_migration_rolls_back(tmp_path, monkeypatch):
    path = tmp_path / "jobs.sqlite"
    conn = raw(path)
    conn.executescript(MIGRATIONS[0])
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    broken = (MIGRATIONS[0], "CREATE TABLE instances (id INTEGER);\nNOT SQL AT ALL;\n")
    monkeypatch.setattr(store_module, "MIGRATIONS", (*broken, *MIGRATIONS[2:]))
    with pytest.raises(JobStoreError, match=f"schema version 1 to {SCHEMA_VERSION}"):
        JobStore(path)
    conn = raw(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "instances" not in tables
    finally:
        conn.close()


def test_newer_schema_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "jobs.sqlite"
    with JobStore(path) as store:
        store.create(name="future", platform="local")
    conn = raw(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = digest(path)
    for _ in range(2):
        with pytest.raises(JobStoreError) as info:
            JobStore(path)
        message = str(info.value)
        assert "newer neural-jupyter" in message and "not modified" in message
        assert str(path) in message
        assert digest(path) == before


def _damaged_files(tmp_path: Path) -> dict[str, bytes]:
    healthy = tmp_path / "healthy.sqlite"
    store = JobStore(healthy)
    for i in range(300):
        store.create(name=f"job-{i}", platform="local", config={"padding": "x" * 200})
    store.close()
    data = healthy.read_bytes()  # all connections closed, so the WAL is checkpointed
    assert len(data) > 16 * 4096
    return {
        "random": np.random.default_rng(0).bytes(8192),
        "text": b"this is not a database\n",
        "truncated": data[: len(data) // 2],
        "header_only": data[:100],
        # readable, but PRAGMA quick_check reports a problem instead of raising
        "bad_freelist": data[:36] + (1).to_bytes(4, "big") + data[40:],
    }


@pytest.mark.parametrize("kind", ["random", "text", "truncated", "header_only", "bad_freelist"])
def test_damaged_file_is_refused_and_left_alone(tmp_path, kind):
    path = tmp_path / "jobs.sqlite"
    path.write_bytes(_damaged_files(tmp_path)[kind])
    before = digest(path)
    for _ in range(2):
        with pytest.raises(JobStoreError) as info:
            JobStore(path)
        message = str(info.value)
        assert str(path) in message
        assert "left untouched" in message and "mv " in message
        assert digest(path) == before


def test_empty_file_becomes_a_new_store(tmp_path):
    path = tmp_path / "jobs.sqlite"
    path.touch()
    store = JobStore(path)
    assert store.get(store.create(name="n", platform="local").id).name == "n"


# ------------------------------------------------------------------------ concurrency


def test_close_and_reuse(tmp_path):
    path = tmp_path / "jobs.sqlite"
    with JobStore(path) as store:
        job = store.create(name="n", platform="local")
    assert not Path(f"{path}-wal").exists()  # last connection closed: WAL checkpointed
    assert store.get(job.id) == job  # a closed store still works
    store.close()
    store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_store_used_across_fork(store):
    store.create(name="parent", platform="local")
    pid = os.fork()
    if pid == 0:  # child: use the inherited store, then leave without pytest's teardown
        code = 1
        try:
            store.set_status(store.create(name="child", platform="local").id, "RUNNING")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    store.create(name="parent2", platform="local")
    assert [j.name for j in store.list()] == ["parent2", "child", "parent"]
    assert store.list(status="RUNNING")[0].name == "child"


def test_threads_share_a_store(store):
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(tag: int) -> None:
        try:
            for i in range(40):
                job = store.create(name=f"t{tag}-{i}", platform="local")
                store.set_status(job.id, "RUNNING")
                store.create_or_get(idempotency_key=f"shared-{i % 10}", name="s", platform="l")
                store.set_status(job.id, "SUCCEEDED", metrics={"i": i})
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            while not stop.is_set():
                store.list(status="RUNNING")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    monitor = threading.Thread(target=reader)
    monitor.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    monitor.join()
    assert errors == []
    jobs = store.list()
    assert len([j for j in jobs if j.name.startswith("t")]) == 240
    assert {j.status for j in jobs if j.name.startswith("t")} == {JobStatus.SUCCEEDED}
    assert len([j for j in jobs if j.idempotency_key]) == 10


WORKER = r"""
import sys
import time
from pathlib import Path
from neural_jupyter.jobs.store import JobStore

path, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
store = JobStore(Path(path))  # both processes may create and migrate the file at once
print("opened", flush=True)
sys.stdin.readline()  # start writing together
started = time.time()
created_shared = 0
for i in range(count):
    job = store.create(name=f"{tag}-{i}", platform="local", idempotency_key=f"{tag}-{i}")
    store.set_status(job.id, "RUNNING")
    _, created = store.create_or_get(idempotency_key=f"shared-{i % 50}", name="s", platform="l")
    created_shared += created
    store.update(job.id, host=tag, metrics={"i": i})
    store.set_status(job.id, "SUCCEEDED", exit_code=0)
print(started, time.time(), created_shared, flush=True)
"""


def test_two_processes_write_the_same_file(tmp_path):
    path = tmp_path / "jobs.sqlite"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *sys.path])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path), tag, "200"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for tag in ("A", "B")
    ]
    try:
        for step in ("ready", "opened"):
            for p in procs:
                assert p.stdout.readline().strip() == step, p.stderr.read()
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
        results = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
        assert err == ""
    spans = [[float(x) for x in out.split()] for out, _ in results]
    assert sum(int(created) for _, _, created in spans) == 50  # create_or_get is atomic
    # the two processes really wrote at the same time (one waited on the other's lock)
    assert max(start for start, _, _ in spans) < min(end for _, end, _ in spans)

    jobs = JobStore(path).list()
    own = [j for j in jobs if j.name[0] in "AB"]
    assert len({j.id for j in own}) == len(own) == 400
    assert {j.name for j in own} == {f"{t}-{i}" for t in "AB" for i in range(200)}
    assert all(j.status is JobStatus.SUCCEEDED and j.host == j.name[0] for j in own)
    assert len([j for j in jobs if j.name == "s"]) == 50


OPENER = r"""
import sys
from pathlib import Path
from neural_jupyter.jobs.store import JobStore

directory, tag = Path(sys.argv[1]), sys.argv[2]
print("ready", flush=True)
sys.stdin.readline()
for n in range(30):  # the workers race to create and migrate each new file
    JobStore(directory / f"{n}.sqlite").create(name=tag, platform="local")
"""


def test_processes_create_a_new_store_together(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *sys.path])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, str(tmp_path), str(tag)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for tag in range(4)
    ]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    for n in range(30):
        jobs = JobStore(tmp_path / f"{n}.sqlite").list()
        assert sorted(j.name for j in jobs) == ["0", "1", "2", "3"]
