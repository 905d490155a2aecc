"""The SQLite job store: every job started from this machine, on any platform, and the paid
cloud instances those jobs launched.

One file (``home()/jobs.sqlite`` by default) is shared by every kernel of the user. Each
operation opens its own short-lived connection, so one ``JobStore`` can be used from a
monitor thread and the main thread at once, and several processes (two kernels) can write
the same file: WAL journal mode lets readers run while a writer commits, ``busy_timeout``
makes a writer wait for the other instead of failing, and every read-modify-write runs in
``BEGIN IMMEDIATE``, which takes the write lock before reading, so two writers never
interleave (and never meet the deadlock SQLite reports when two readers both try to become
writers).

Speed: the store also keeps one idle connection open for its lifetime. Without it each
operation's connection would be the last one to close, and SQLite checkpoints and deletes
the WAL then, which costs fsyncs (about 100x slower). ``synchronous=NORMAL`` (the usual WAL
setting) means a commit survives a crash of the process, but the last commits before a power
cut or OS crash may be lost; recording a paid instance is committed with ``FULL``.

The file is precious (it is how a forgotten paid instance is found again), so a file this
code cannot read safely (not a SQLite database, damaged, or written by a newer
neural-jupyter) is reported with a ``JobStoreError`` and never modified or recreated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import os
import random
import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from neural_jupyter import paths, validation
from neural_jupyter.deprecation import alias_property, renamed_parameters
from neural_jupyter.errors import JobStoreError
from neural_jupyter.jobs.migrations import MIGRATIONS
from neural_jupyter.redaction import redact, redact_value

SCHEMA_VERSION = len(MIGRATIONS)
STORE_FILENAME = "jobs.sqlite"
BUSY_TIMEOUT_S = 10.0
ID_PREFIX = "nj-"
MAX_ERROR_CHARS = 4000

_SQLITE_MAGIC = b"SQLite format 3\x00"
_CHECKED: set[tuple[int, str]] = set()  # (process, store file) already checked and migrated
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


class JobStatus(str, enum.Enum):
    """Where a job is in its life. ``UNKNOWN``: contact with the job was lost."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"

    @property
    def is_terminal(self) -> bool:
        """The job has finished for good; its status never changes again."""
        return self in _TERMINAL

    def __str__(self) -> str:
        return self.value


_TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class JobNotFoundError(JobStoreError, LookupError):
    """No job has this id (or id prefix)."""

    def __init__(self, job_id: str, *, hint: str | None = None) -> None:
        self.job_id = job_id
        super().__init__(f"no job with id {job_id!r} in the job store", hint=hint)


class AmbiguousJobIdError(JobStoreError, LookupError):
    """An id prefix matches more than one job."""

    def __init__(self, job_id: str, candidates: list[str]) -> None:
        self.job_id = job_id
        self.candidates = candidates
        super().__init__(
            f"job id prefix {job_id!r} matches {len(candidates)} jobs: {', '.join(candidates)}",
            hint="type more characters of the job id",
        )


class DuplicateIdempotencyKeyError(JobStoreError):
    """A job with this idempotency key exists already."""

    def __init__(self, key: str, existing: JobRecord | None) -> None:
        self.idempotency_key = key
        self.existing = existing
        which = f": {existing.id} ({existing.name}, {existing.status})" if existing else ""
        super().__init__(
            f"a job with idempotency key {key!r} already exists{which}",
            hint="JobStore.create_or_get() returns the existing job instead of a second one",
        )


@dataclasses.dataclass(frozen=True)
class JobRecord:
    """One row of the job store. Timestamps are ISO-8601 UTC strings."""

    id: str
    name: str
    platform: str  # where it runs: local, ssh, sagemaker, ... (column ``backend``)
    status: JobStatus
    created_at: str
    updated_at: str
    started_at: str | None = None
    finished_at: str | None = None
    remote_id: str | None = None
    idempotency_key: str | None = None
    job_dir: str | None = None
    model_name: str | None = None
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    artifacts: dict[str, str] = dataclasses.field(default_factory=dict)
    exit_code: int | None = None
    error: str | None = None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    sweep_id: str | None = None
    host: str | None = None
    # why this row could not be read in full (a column that is not JSON, a missing column,
    # an unknown status); None for a sound row. Never stored: found when reading.
    damage: str | None = None

    backend = alias_property("backend", "platform")  # the old word for the platform


@dataclasses.dataclass(frozen=True)
class InstanceRecord:
    """A paid cloud instance a job launched; live while ``terminated_at`` is None."""

    id: int
    job_id: str
    provider: str
    instance_id: str
    address: str | None
    status: str
    created_at: str
    terminated_at: str | None
    hourly_price: float | None


JOB_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(JobRecord) if f.name != "damage"
)
# a field whose column has another name: the platform's column keeps its first name (no
# migration of users' stores for a word)
_COLUMNS = {"platform": "backend"}
_JSON_FIELDS = frozenset({"metrics", "artifacts", "config"})
_REQUIRED_TEXT = frozenset({"name", "platform"})
_CREATE_FIELDS = frozenset(
    {"name", "platform", "job_dir", "model_name", "config", "sweep_id", "status"}
)
# status goes through set_status (timestamps, terminal protection); ids and creation are fixed
UPDATABLE_FIELDS = frozenset(JOB_FIELDS) - {"id", "created_at", "updated_at", "status"}
UPDATABLE_INSTANCE_FIELDS = frozenset(
    {"instance_id", "address", "status", "terminated_at", "hourly_price"}
)


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string (sorts as text in time order)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class JobStore:
    """Jobs and their cloud instances in one SQLite file (see the module docstring)."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else paths.home() / STORE_FILENAME
        self._idle_pid: int | None = None
        self._idle_lock = threading.Lock()
        self._idle_finalizer: weakref.finalize | None = None
        self._ready = False  # opened, checked and migrated
        self._open()

    def __repr__(self) -> str:
        return f"JobStore({str(self.path)!r})"

    def close(self) -> None:
        """Close the idle connection the store keeps between operations (see the module
        docstring). Later operations still work; they open it again."""
        with self._idle_lock:
            if self._idle_finalizer is not None:
                self._idle_finalizer()
            self._idle_pid = self._idle_finalizer = None

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------- jobs

    @renamed_parameters(backend="platform")
    def create(
        self,
        *,
        name: str,
        platform: str,
        idempotency_key: str | None = None,
        job_dir: str | os.PathLike[str] | None = None,
        model_name: str | None = None,
        config: Mapping[str, Any] | None = None,
        sweep_id: str | None = None,
        status: JobStatus | str = JobStatus.PENDING,
    ) -> JobRecord:
        """Add a job with a new id (``nj-`` + 8 hex digits).

        Raises ``DuplicateIdempotencyKeyError`` (a ``JobStoreError``) if a job with the same
        ``idempotency_key`` exists; ``create_or_get`` returns that job instead.
        """
        fields = {
            "name": name,
            "platform": platform,
            "idempotency_key": idempotency_key,
            "job_dir": job_dir,
            "model_name": model_name,
            "config": config or {},
            "sweep_id": sweep_id,
        }
        with self._write() as conn:
            self._check_columns(conn)
            if idempotency_key is not None:
                existing = _select_one(conn, "idempotency_key", idempotency_key)
                if existing is not None:
                    raise DuplicateIdempotencyKeyError(idempotency_key, existing)
            return _insert_job(conn, fields, _coerce_status(status))

    @renamed_parameters(backend="platform")
    def create_or_get(self, *, idempotency_key: str, **fields: Any) -> tuple[JobRecord, bool]:
        """The job with ``idempotency_key``, created from ``fields`` if there is none yet.

        Returns ``(record, created)``. Atomic across threads and processes: a cell run twice,
        or two kernels racing, get one job. ``fields`` are ``create``'s keyword arguments;
        they are ignored when the job exists already.
        """
        if not isinstance(idempotency_key, str) or not idempotency_key:
            raise JobStoreError("create_or_get needs a non-empty idempotency_key string")
        unknown = set(fields) - _CREATE_FIELDS
        if unknown:
            raise TypeError(f"create_or_get() got unexpected field(s): {sorted(unknown)}")
        with self._write() as conn:
            self._check_columns(conn)
            existing = _select_one(conn, "idempotency_key", idempotency_key)
            if existing is not None:
                return existing, False
            status = _coerce_status(fields.pop("status", JobStatus.PENDING))
            values = {"config": {}, **fields, "idempotency_key": idempotency_key}
            if values["config"] is None:
                values["config"] = {}
            return _insert_job(conn, values, status), True

    def get(self, job_id: str) -> JobRecord:
        """The job with this id, or with the one id that starts with ``job_id``.

        The ``nj-`` prefix may be left out. Raises ``JobNotFoundError`` or
        ``AmbiguousJobIdError`` (both ``JobStoreError``).
        """
        with self._read() as conn:
            return _resolve(conn, job_id)

    def find(self, idempotency_key: str) -> JobRecord | None:
        """The job created with this idempotency key, or None."""
        with self._read() as conn:
            return _select_one(conn, "idempotency_key", idempotency_key)

    @renamed_parameters(backend="platform")
    def update(self, job_id: str, **fields: Any) -> JobRecord:
        """Set some fields of a job (see ``UPDATABLE_FIELDS``) and ``updated_at``.

        JSON fields (``metrics``, ``artifacts``, ``config``) are replaced, not merged. The
        status changes only through ``set_status``.
        """
        unknown = set(fields) - UPDATABLE_FIELDS
        if unknown:
            hint = " (use set_status to change the status)" if "status" in unknown else ""
            raise TypeError(
                f"JobStore.update() got unknown or read-only field(s) {sorted(unknown)}{hint}; "
                f"updatable: {', '.join(sorted(UPDATABLE_FIELDS))}"
            )
        values = {name: _encode(name, value) for name, value in fields.items()}
        with self._write() as conn:
            record = _resolve(conn, job_id)
            if not values:
                return record
            values["updated_at"] = utc_now()
            try:
                _update_row(conn, record.id, values)
            except sqlite3.IntegrityError as exc:
                key = fields.get("idempotency_key")
                if key is not None and "idempotency_key" in str(exc):
                    raise DuplicateIdempotencyKeyError(
                        key, _select_one(conn, "idempotency_key", key)
                    ) from exc
                raise
            return _get_by_id(conn, record.id)

    def set_status(
        self,
        job_id: str,
        status: JobStatus | str,
        *,
        exit_code: int | None = None,
        error: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        at: str | None = None,
        started_at: str | None = None,
    ) -> JobRecord:
        """Move a job to ``status``; sets ``started_at`` on entering RUNNING (first time only)
        and ``finished_at`` on entering a terminal state.

        ``at`` is when the change happened (default: now) — the job's own event time, so a
        job whose events are read long after it ended still gets its real times;
        ``started_at`` (an event time too) corrects the start recorded earlier.

        A terminal status is final: any later change (a late RUNNING from a slow monitor, a
        second terminal status from a racing cancel) leaves the record as it is and returns
        it, so the call is idempotent. ``metrics`` are merged into the stored metrics;
        ``exit_code`` and ``error`` are set when given.
        """
        new = _coerce_status(status)
        with self._write() as conn:
            record = _resolve(conn, job_id)
            if record.status.is_terminal:
                return record
            now = utc_now()
            when = at or now
            values: dict[str, Any] = {"status": new.value, "updated_at": now}
            if new is JobStatus.RUNNING and record.started_at is None:
                values["started_at"] = when
            if started_at is not None:
                values["started_at"] = started_at
            if new.is_terminal:
                values["finished_at"] = when
            if exit_code is not None:
                values["exit_code"] = _encode("exit_code", exit_code)
            if error is not None:
                values["error"] = _encode("error", error)
            if metrics:
                values["metrics"] = _encode("metrics", {**record.metrics, **metrics})
            _update_row(conn, record.id, values)
            return _get_by_id(conn, record.id)

    @renamed_parameters(backend="platform")
    def list(
        self,
        status: JobStatus | str | Iterable[JobStatus | str] | None = None,
        platform: str | None = None,
        limit: int | None = None,
        sweep_id: str | None = None,
    ) -> list[JobRecord]:
        """Jobs, newest first, optionally only those with a status (or any of several
        statuses), a platform or a sweep; at most ``limit`` of them."""
        clauses: list[str] = []
        params: list[Any] = []
        if status is not None:
            wanted = [status] if isinstance(status, (str, JobStatus)) else list(status)
            statuses = [_coerce_status(s).value for s in wanted]
            clauses.append(f"status IN ({', '.join('?' * len(statuses))})")
            params.extend(statuses)
        if platform is not None:
            clauses.append(f"{_COLUMNS['platform']} = ?")
            params.append(platform)
        if sweep_id is not None:
            clauses.append("sweep_id = ?")
            params.append(sweep_id)
        sql = "SELECT * FROM jobs"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        # rowid breaks ties between jobs created in the same microsecond
        sql += " ORDER BY created_at DESC, rowid DESC"
        limit = validation.limit(limit)
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._read() as conn:
            return [_record(row) for row in conn.execute(sql, params)]

    def delete(self, job_id: str) -> None:
        """Remove a job (and its terminated instances).

        Refused while one of its cloud instances is live: the row is how that paid instance
        would be found again.
        """
        with self._write() as conn:
            record = _resolve(conn, job_id)
            live = conn.execute(
                "SELECT provider, instance_id FROM instances"
                " WHERE job_id = ? AND terminated_at IS NULL",
                (record.id,),
            ).fetchall()
            if live:
                names = ", ".join(f"{row['provider']}:{row['instance_id']}" for row in live)
                raise JobStoreError(
                    f"job {record.id} still has live cloud instances ({names}); not deleted",
                    hint="terminate them (and record it with terminate_instance) first",
                )
            conn.execute("DELETE FROM jobs WHERE id = ?", (record.id,))

    # ------------------------------------------------------------------------ instances

    def add_instance(
        self,
        job_id: str,
        *,
        provider: str,
        instance_id: str,
        address: str | None = None,
        status: str = "pending",
        hourly_price: float | None = None,
    ) -> InstanceRecord:
        """Record a paid cloud instance launched for a job (call it before waiting for the
        instance to boot, so a crash cannot forget it)."""
        with self._write(durable=True) as conn:
            record = _resolve(conn, job_id)
            cursor = conn.execute(
                "INSERT INTO instances"
                " (job_id, provider, instance_id, address, status, created_at, hourly_price)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    _text("provider", provider, required=True),
                    _text("instance_id", instance_id, required=True),
                    _text("address", address),
                    _text("status", status, required=True),
                    utc_now(),
                    _price(hourly_price),
                ),
            )
            return _get_instance(conn, cursor.lastrowid)

    def update_instance(self, instance_pk: int, **fields: Any) -> InstanceRecord:
        """Set fields of an instance row (``UPDATABLE_INSTANCE_FIELDS``) by its store id."""
        unknown = set(fields) - UPDATABLE_INSTANCE_FIELDS
        if unknown:
            raise TypeError(
                f"JobStore.update_instance() got unknown field(s) {sorted(unknown)}; "
                f"updatable: {', '.join(sorted(UPDATABLE_INSTANCE_FIELDS))}"
            )
        values = {
            name: _price(value)
            if name == "hourly_price"
            else _text(name, value, required=name in {"instance_id", "status"})
            for name, value in fields.items()
        }
        with self._write() as conn:
            current = _get_instance(conn, instance_pk)
            if values:
                _update_instance_row(conn, current.id, values)
            return _get_instance(conn, current.id)

    def terminate_instance(self, instance_pk: int, *, status: str = "terminated") -> InstanceRecord:
        """Record that an instance was terminated (``terminated_at`` is set once; idempotent)."""
        with self._write() as conn:
            current = _get_instance(conn, instance_pk)
            if current.terminated_at is None:
                _update_instance_row(
                    conn,
                    current.id,
                    {"status": _text("status", status, required=True), "terminated_at": utc_now()},
                )
            return _get_instance(conn, current.id)

    def live_instances(self, job_id: str | None = None) -> list[InstanceRecord]:
        """Instances not recorded as terminated (of one job, or of all), oldest first."""
        sql = "SELECT * FROM instances WHERE terminated_at IS NULL"
        params: tuple[Any, ...] = ()
        with self._read() as conn:
            if job_id is not None:
                sql += " AND job_id = ?"
                params = (_resolve(conn, job_id).id,)
            rows = conn.execute(sql + " ORDER BY created_at, id", params).fetchall()
            return [_instance(row) for row in rows]

    # ---------------------------------------------------------------- opening, migrating

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        checked = (os.getpid(), str(self.path.resolve()))
        if checked not in _CHECKED and self.path.exists() and self.path.stat().st_size > 0:
            # Once per process and file: reading the header opens and closes the file outside
            # SQLite, and on POSIX closing any descriptor of a file drops every lock this
            # process holds on it, those of its open SQLite connections included. Another
            # kernel could then take itself for the last user, checkpoint and unlink the WAL
            # under this process, which would go on reading a stale copy.
            self._check_existing()
        self._migrate()
        _CHECKED.add(checked)
        self._ready = True
        with self._connect():  # opens the idle connection
            pass

    def _check_existing(self) -> None:
        """Refuse, without writing a byte, a file that is damaged or from a newer version.

        The check uses a read-only connection: a read-write one could roll back a journal
        or checkpoint a WAL into the file when it closes.
        """
        try:
            with self.path.open("rb") as file:
                header = file.read(100)
        except OSError as exc:
            raise JobStoreError(f"cannot read the job store {self.path}: {exc}") from exc
        if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
            raise self._corrupt("it is not a SQLite database")
        try:
            conn = sqlite3.connect(
                self.path.resolve().as_uri() + "?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S
            )
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise self._newer(version)
                problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            if _is_corruption(exc):
                raise self._corrupt(str(exc)) from exc
            raise JobStoreError(f"cannot open the job store {self.path}: {exc}") from exc
        if problems != ["ok"]:
            raise self._corrupt("; ".join(problems[:3]))

    def _migrate(self) -> None:
        with self._connect() as conn:
            _enable_wal(conn)
            if _user_version(conn) == SCHEMA_VERSION:
                return
            conn.execute("BEGIN IMMEDIATE")
            version = 0
            try:
                version = _user_version(conn)  # another process may have migrated meanwhile
                if version > SCHEMA_VERSION:
                    raise self._newer(version)
                for number in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in sql_statements(MIGRATIONS[number - 1]):
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise JobStoreError(
                        f"could not upgrade the job store {self.path} from schema version "
                        f"{version} to {SCHEMA_VERSION}: {exc}; the file was left as it was"
                    ) from exc
                raise

    def _check_columns(self, conn: sqlite3.Connection) -> None:
        """Refuse to record a new job in a store that lost a column (it could not follow the
        job to its end); existing rows still list, shown as damaged."""
        present = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
        missing = [_column(name) for name in JOB_FIELDS if _column(name) not in present]
        if missing:
            raise JobStoreError(
                f"the job store {self.path} has no column {', '.join(missing)}; no new job "
                "is recorded (or started) in it",
                hint="a column of the job store was dropped; move the file aside (a new store "
                "is created on next use) or restore it from a backup",
            )

    def _newer(self, version: int) -> JobStoreError:
        return JobStoreError(
            f"the job store {self.path} was written by a newer neural-jupyter (schema version "
            f"{version}; this version knows up to {SCHEMA_VERSION}); it was not modified",
            hint="upgrade neural-jupyter (pip install -U neural-jupyter), or point "
            f"{paths.ENV_HOME} at another directory",
        )

    def _corrupt(self, reason: str) -> JobStoreError:
        moved = [self.path] + [
            p for p in (Path(f"{self.path}-wal"), Path(f"{self.path}-shm")) if p.exists()
        ]
        command = "; ".join(f'mv "{p}" "{p}.broken"' for p in moved)
        return JobStoreError(
            f"the job store {self.path} is damaged or is not a neural-jupyter job store "
            f"({reason}); the file was left untouched",
            hint=f"move it aside and a new, empty store is created on next use: {command}",
        )

    # ------------------------------------------------------------------------- plumbing

    def _keep_open(self) -> None:
        """Hold one idle connection (per process: one inherited through fork is never used
        or closed in the child) so closing an operation's connection stays cheap."""
        pid = os.getpid()
        if self._idle_pid == pid:
            return
        with self._idle_lock:
            if self._idle_pid == pid:
                return
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            # a first read maps the WAL index; the connection then holds it, and no lock
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            self._idle_pid = pid
            self._idle_finalizer = weakref.finalize(self, _close_in_owner, conn, pid)

    @contextlib.contextmanager
    def _connect(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """A fresh connection for one operation; sqlite errors become ``JobStoreError``."""
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as exc:
            raise JobStoreError(f"cannot open the job store {self.path}: {exc}") from exc
        try:
            if self._ready:
                self._keep_open()
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            yield conn
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            hint = f"another process held it for more than {BUSY_TIMEOUT_S:g} s" if busy else None
            if "disk is full" in str(exc) or "disk I/O error" in str(exc):
                hint = f"free some space on the disk holding {self.path.parent}"
            elif "no such column" in str(exc) or "has no column" in str(exc):
                hint = (
                    "a column of the job store was dropped; move the file aside (a new store "
                    "is created on next use) or restore it from a backup"
                )
            raise JobStoreError(f"job store {self.path}: {exc}", hint=hint) from exc
        except sqlite3.Error as exc:
            raise JobStoreError(f"job store {self.path}: {exc}") from exc
        finally:
            conn.close()

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            yield conn

    @contextlib.contextmanager
    def _write(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection inside a write transaction, committed if the block succeeds."""
        with self._connect(durable=durable) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")


def sql_statements(script: str) -> Iterator[str]:
    """Split a migration script into single statements (``execute`` takes one at a time;
    ``executescript`` would commit the surrounding transaction)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    rest = "\n".join(
        line for line in buffer.splitlines() if line.strip() and not line.strip().startswith("--")
    )
    if rest:
        raise ValueError(f"incomplete SQL statement at the end of a migration: {rest!r}")


# ------------------------------------------------------------------------ row helpers


def _close_in_owner(conn: sqlite3.Connection, pid: int) -> None:
    if os.getpid() == pid:
        conn.close()


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL mode (persistent in the file, so usually already done).

    The switch needs an exclusive lock and SQLite reports "locked" at once, without waiting
    the busy timeout, while another process holds the file (two kernels opening a new
    store together), so retry here. Where WAL is impossible (some network file systems)
    SQLite keeps the rollback journal, which is slower but still safe.
    """
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
        return
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.005, 0.05))


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc)
    return "malformed" in text or "not a database" in text


def _insert_job(
    conn: sqlite3.Connection, fields: Mapping[str, Any], status: JobStatus
) -> JobRecord:
    now = utc_now()
    values = {_column(name): _encode(name, value) for name, value in fields.items()}
    values.update(status=status.value, created_at=now, updated_at=now)
    if status is JobStatus.RUNNING:
        values["started_at"] = now
    if status.is_terminal:
        values["finished_at"] = now
    while True:  # under the write lock, so the check cannot race
        job_id = ID_PREFIX + secrets.token_hex(4)
        if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
            break
    values["id"] = job_id
    columns = ", ".join(values)
    marks = ", ".join("?" * len(values))
    conn.execute(f"INSERT INTO jobs ({columns}) VALUES ({marks})", list(values.values()))
    return _get_by_id(conn, job_id)


def _update_row(conn: sqlite3.Connection, job_id: str, values: Mapping[str, Any]) -> None:
    # column names come from the JOB_FIELDS whitelist, never from user text
    assignments = ", ".join(f"{_column(name)} = ?" for name in values)
    conn.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", [*values.values(), job_id])


def _column(field: str) -> str:
    """The jobs table's column for a ``JobRecord`` field."""
    return _COLUMNS.get(field, field)


def _update_instance_row(conn: sqlite3.Connection, pk: int, values: Mapping[str, Any]) -> None:
    assignments = ", ".join(f"{name} = ?" for name in values)
    conn.execute(f"UPDATE instances SET {assignments} WHERE id = ?", [*values.values(), pk])


def _select_one(conn: sqlite3.Connection, column: str, value: Any) -> JobRecord | None:
    row = conn.execute(f"SELECT * FROM jobs WHERE {column} = ?", (value,)).fetchone()
    return _record(row) if row is not None else None


def _get_by_id(conn: sqlite3.Connection, job_id: str) -> JobRecord:
    record = _select_one(conn, "id", job_id)
    if record is None:
        raise JobNotFoundError(job_id)
    return record


def _resolve(conn: sqlite3.Connection, job_id: str) -> JobRecord:
    """The job whose id is ``job_id`` or uniquely starts with it (``nj-`` optional)."""
    if not isinstance(job_id, str) or not job_id.strip():
        raise JobNotFoundError(str(job_id), hint="give a job id such as nj-1a2b3c4d")
    ref = job_id.strip()
    exact = _select_one(conn, "id", ref)
    if exact is not None:
        return exact
    prefixes = {ref, ID_PREFIX + ref}
    matches: list[sqlite3.Row] = []
    for prefix in prefixes:
        matches += conn.execute(
            "SELECT * FROM jobs WHERE substr(id, 1, ?) = ? ORDER BY id LIMIT 11",
            (len(prefix), prefix),
        ).fetchall()
    ids = sorted({row["id"] for row in matches})
    if not ids:
        raise JobNotFoundError(
            ref, hint="%neural_jobs lists the jobs there are (Python: neural_jupyter.jobs.list())"
        )
    if len(ids) > 1:
        raise AmbiguousJobIdError(ref, ids[:10] + (["..."] if len(ids) > 10 else []))
    return _get_by_id(conn, ids[0])


def _get_instance(conn: sqlite3.Connection, pk: int | None) -> InstanceRecord:
    row = conn.execute("SELECT * FROM instances WHERE id = ?", (pk,)).fetchone()
    if row is None:
        raise JobStoreError(f"no cloud instance with store id {pk!r} in the job store")
    return _instance(row)


def _record(row: sqlite3.Row) -> JobRecord:
    """A row as a ``JobRecord``; a damaged row (a JSON column that is not JSON, a missing
    column, an unknown status) still gives one, with ``damage`` saying what is wrong, so one
    bad row never hides the others."""
    present = set(row.keys())
    problems: list[str] = []
    values: dict[str, Any] = {}
    for name in JOB_FIELDS:
        if _column(name) in present:
            values[name] = row[_column(name)]
        else:
            problems.append(f"column {_column(name)} is missing")
            values[name] = None
    for name in ("id", "name", "platform", "created_at", "updated_at"):
        if not isinstance(values[name], str):
            if _column(name) in present:
                problems.append(f"{_column(name)} is not text")
            values[name] = str(values[name]) if values[name] is not None else "?"
    for name in _JSON_FIELDS:
        raw = values[name]
        try:
            parsed = json.loads(raw) if raw else {}
        except (TypeError, ValueError):
            parsed = None
        if not isinstance(parsed, dict):
            if name in present:
                problems.append(f"{name} is not a JSON object")
            parsed = {}
        values[name] = parsed
    try:
        values["status"] = JobStatus(values["status"])
    except ValueError:
        problems.append(f"unknown status {str(values['status'])[:20]!r}")
        values["status"] = JobStatus.UNKNOWN
    if values["exit_code"] is not None and not isinstance(values["exit_code"], int):
        problems.append("exit_code is not a number")
        values["exit_code"] = None
    return JobRecord(**values, damage="; ".join(problems) or None)


def _instance(row: sqlite3.Row) -> InstanceRecord:
    return InstanceRecord(**{f.name: row[f.name] for f in dataclasses.fields(InstanceRecord)})


def _coerce_status(status: JobStatus | str) -> JobStatus:
    try:
        return JobStatus(status.upper() if isinstance(status, str) else status)
    except ValueError:
        names = ", ".join(s.value for s in JobStatus)
        raise ValueError(f"unknown job status {status!r}; expected one of {names}") from None


# Fields the library makes itself (paths, ids, keys): stored as they are. Every other text
# and JSON field is redacted here, the one write path of the store, so no secret reaches the
# file (its pages or its WAL) whatever a caller passes.
_STRUCTURAL = frozenset({"job_dir", "remote_id", "idempotency_key", "artifacts", "sweep_id"})


def _encode(name: str, value: Any) -> Any:
    """A job field's value as stored in its column, checked for type and redacted."""
    if name in _JSON_FIELDS:
        if not isinstance(value, Mapping):
            raise TypeError(f"job field {name!r} must be a dict, not {type(value).__name__}")
        if name == "artifacts":
            value = {str(k): os.fspath(v) for k, v in value.items()}
        try:
            # a round trip through JSON first: numpy values and paths become plain values
            plain = json.loads(json.dumps(dict(value), default=_json_default))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"job field {name!r} is not JSON-serialisable: {exc}") from exc
        if name not in _STRUCTURAL:
            plain = redact_value(plain)
        return json.dumps(plain, sort_keys=True)
    if name == "exit_code":
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"exit_code must be an int or None, not {value!r}")
        return value
    if name == "error" and value is not None:
        # a short summary, never a secret from a log line
        return redact(_text(name, value))[:MAX_ERROR_CHARS]
    if name == "job_dir" and value is not None:
        return os.fspath(value)
    text = _text(name, value, required=name in _REQUIRED_TEXT)
    if text is not None and name not in _STRUCTURAL and name != "platform":
        text = redact(text)
    return text


def _text(name: str, value: Any, *, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise TypeError(f"{name!r} must be a non-empty string, not {value!r}")
    return value


def _price(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise TypeError(f"hourly_price must be a non-negative number or None, not {value!r}")
    return float(value)


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays (common in metrics) and paths; anything else is an error."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} value {value!r}")
