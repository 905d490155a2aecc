"""Job-store schema versions, as data.

``MIGRATIONS[n - 1]`` turns a store at schema version ``n - 1`` into version ``n``; the
version lives in ``PRAGMA user_version`` (0 for a new file). The store applies the pending
scripts in one transaction when it opens a file. Never edit a released script: append a new
one. Scripts hold plain statements separated by ``;`` (no ``BEGIN``/``COMMIT`` and no
``PRAGMA user_version``: the store adds those). JSON columns are TEXT. Nothing secret is
stored, so there are no credential columns.
"""

from __future__ import annotations

V1_JOBS = """
CREATE TABLE jobs (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    backend         TEXT NOT NULL,
    status          TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    started_at      TEXT,
    finished_at     TEXT,
    remote_id       TEXT,
    idempotency_key TEXT UNIQUE,
    job_dir         TEXT,
    model_name      TEXT,
    metrics         TEXT NOT NULL DEFAULT '{}',
    artifacts       TEXT NOT NULL DEFAULT '{}',
    exit_code       INTEGER,
    error           TEXT,
    config          TEXT NOT NULL DEFAULT '{}',
    sweep_id        TEXT,
    host            TEXT
);
CREATE INDEX jobs_created_at ON jobs (created_at);
CREATE INDEX jobs_status ON jobs (status);
CREATE INDEX jobs_sweep_id ON jobs (sweep_id);
"""

V2_INSTANCES = """
-- paid cloud instances a job launched, so none is forgotten running
CREATE TABLE instances (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id        TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    provider      TEXT NOT NULL,
    instance_id   TEXT NOT NULL,
    address       TEXT,
    status        TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    terminated_at TEXT,
    hourly_price  REAL
);
CREATE INDEX instances_job_id ON instances (job_id);
CREATE INDEX instances_live ON instances (terminated_at);
"""

V3_ENDPOINTS = """
-- deployed models (neural_jupyter.deploy), so none is forgotten billing. A live endpoint has
-- no deleted_at; its idempotency key (model artifact + platform + name) and its name on its
-- platform are unique among the live ones, so a re-run cell finds it instead of a second.
CREATE TABLE endpoints (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    platform        TEXT NOT NULL,
    status          TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    job_id          TEXT,
    model_name      TEXT,
    artifact        TEXT,
    artifact_digest TEXT,
    remote_id       TEXT,
    url             TEXT,
    instance_type   TEXT,
    replicas        INTEGER NOT NULL DEFAULT 1,
    hourly_price    REAL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    in_service_at   TEXT,
    last_invoked_at TEXT,
    deleted_at      TEXT,
    expires_at      TEXT,
    owner_pid       INTEGER,
    owner_host      TEXT,
    details         TEXT NOT NULL DEFAULT '{}',
    error           TEXT
);
CREATE UNIQUE INDEX endpoints_live_key ON endpoints (idempotency_key) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX endpoints_live_name ON endpoints (platform, name) WHERE deleted_at IS NULL;
CREATE INDEX endpoints_created_at ON endpoints (created_at);
"""

MIGRATIONS: tuple[str, ...] = (V1_JOBS, V2_INSTANCES, V3_ENDPOINTS)
