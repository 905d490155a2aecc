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

MIGRATIONS: tuple[str, ...] = (V1_JOBS, V2_INSTANCES)
