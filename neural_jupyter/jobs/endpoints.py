"""Endpoint records: every model deployed from this machine, on any platform, in the job store
(table ``endpoints``, schema version 3), so a running endpoint is never forgotten.

A record is live until ``deleted_at`` is set. Among live records the idempotency key (model
artifact + platform + name) and the name on a platform are unique, and ``create_or_get`` is
atomic across threads and kernels: running a deploy cell twice finds the endpoint of the first
run. Everything written is redacted; nothing secret (keys, tokens) is ever stored.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import secrets
import sqlite3
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from neural_jupyter.errors import JobStoreError
from neural_jupyter.jobs.store import JobStore, utc_now
from neural_jupyter.redaction import redact, redact_value

ID_PREFIX = "ne-"
MAX_ERROR_CHARS = 4000


class EndpointStatus(str, enum.Enum):
    """Where an endpoint is in its life. ``UNKNOWN``: its platform could not be asked."""

    CREATING = "CREATING"
    IN_SERVICE = "IN_SERVICE"
    UPDATING = "UPDATING"
    FAILED = "FAILED"
    DELETING = "DELETING"
    DELETED = "DELETED"
    UNKNOWN = "UNKNOWN"

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class EndpointRecord:
    """One row of ``endpoints``. Timestamps are ISO-8601 UTC strings."""

    id: str
    name: str
    platform: str
    status: EndpointStatus
    idempotency_key: str
    created_at: str
    updated_at: str
    job_id: str | None = None
    model_name: str | None = None
    artifact: str | None = None
    artifact_digest: str | None = None
    remote_id: str | None = None
    url: str | None = None
    instance_type: str | None = None
    replicas: int = 1
    hourly_price: float | None = None
    in_service_at: str | None = None
    last_invoked_at: str | None = None
    deleted_at: str | None = None
    expires_at: str | None = None
    owner_pid: int | None = None
    owner_host: str | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None

    @property
    def live(self) -> bool:
        return self.deleted_at is None

    def hours(self, now: datetime | None = None) -> float:
        """Hours from creation to deletion (or now): what the platform bills."""
        end = _parse(self.deleted_at) if self.deleted_at else (now or _now())
        return max(0.0, (end - _parse(self.created_at)).total_seconds() / 3600)

    def cost_so_far(self, now: datetime | None = None) -> float | None:
        if self.hourly_price is None:
            return None
        return self.hourly_price * self.replicas * self.hours(now)


FIELDS = tuple(f.name for f in dataclasses.fields(EndpointRecord))
UPDATABLE = frozenset(FIELDS) - {"id", "idempotency_key", "created_at", "updated_at"}


class EndpointNotFoundError(JobStoreError, LookupError):
    """No endpoint has this name or id."""


class EndpointStore:
    """The ``endpoints`` table of a ``JobStore`` file."""

    def __init__(self, store: JobStore | None = None) -> None:
        self.store = store or JobStore()

    def create_or_get(
        self, *, idempotency_key: str, name: str, platform: str, **fields: Any
    ) -> tuple[EndpointRecord, bool]:
        """The live endpoint with ``idempotency_key``, else a new one (status CREATING).

        Returns ``(record, created)``. A live endpoint of another model holding ``name`` on
        ``platform`` is an error naming it.
        """
        with self.store._write(durable=True) as conn:
            existing = _one(conn, "idempotency_key = ? AND deleted_at IS NULL", idempotency_key)
            if existing is not None:
                return existing, False
            clash = _one(conn, "platform = ? AND name = ? AND deleted_at IS NULL", platform, name)
            if clash is not None:
                raise JobStoreError(
                    f"an endpoint named {name!r} is already live on {platform} "
                    f"({clash.id}, serving {clash.model_name})",
                    hint=f"pick another name (name=...), or %neural_undeploy {name} first",
                )
            now = utc_now()
            values = {
                "name": name,
                "platform": platform,
                "idempotency_key": idempotency_key,
                "status": EndpointStatus.CREATING.value,
                "created_at": now,
                "updated_at": now,
            }
            values.update({k: _encode(k, v) for k, v in fields.items()})
            while True:
                values["id"] = ID_PREFIX + secrets.token_hex(4)
                if _one(conn, "id = ?", values["id"]) is None:
                    break
            columns = ", ".join(values)
            conn.execute(
                f"INSERT INTO endpoints ({columns}) VALUES ({', '.join('?' * len(values))})",
                list(values.values()),
            )
            return _one(conn, "id = ?", values["id"]), True  # type: ignore[return-value]

    def update(self, endpoint_id: str, **fields: Any) -> EndpointRecord:
        """Set fields (``status`` too: DELETED sets ``deleted_at``, IN_SERVICE
        ``in_service_at`` once). ``details`` is merged into the stored one."""
        unknown = set(fields) - UPDATABLE
        if unknown:
            raise ValueError(f"endpoint fields that cannot be updated: {sorted(unknown)}")
        with self.store._write(durable=True) as conn:
            current = _one(conn, "id = ?", endpoint_id)
            if current is None:
                raise EndpointNotFoundError(f"no endpoint with id {endpoint_id!r}")
            now = utc_now()
            if "details" in fields:
                fields["details"] = {**current.details, **dict(fields["details"])}
            status = fields.get("status")
            if status is not None:
                status = EndpointStatus(status)
                fields["status"] = status
                if status is EndpointStatus.DELETED and current.deleted_at is None:
                    fields.setdefault("deleted_at", now)
                if status is EndpointStatus.IN_SERVICE and current.in_service_at is None:
                    fields.setdefault("in_service_at", now)
            values = {k: _encode(k, v) for k, v in fields.items()}
            values["updated_at"] = now
            assignments = ", ".join(f"{k} = ?" for k in values)
            conn.execute(
                f"UPDATE endpoints SET {assignments} WHERE id = ?", [*values.values(), endpoint_id]
            )
            return _one(conn, "id = ?", endpoint_id)  # type: ignore[return-value]

    def invoked(self, endpoint_id: str) -> None:
        """Note a prediction (the idle flag of ``%neural_endpoints`` reads it)."""
        with self.store._write() as conn:
            conn.execute(
                "UPDATE endpoints SET last_invoked_at = ? WHERE id = ?", (utc_now(), endpoint_id)
            )

    def get(self, ref: str, *, live_only: bool = False) -> EndpointRecord:
        """The endpoint whose id or name is ``ref`` (a live one first; the newest by name)."""
        with self.store._read() as conn:
            found = _one(conn, "id = ?", ref) or _one(
                conn,
                "name = ? ORDER BY (deleted_at IS NULL) DESC, created_at DESC LIMIT 1",
                ref,
            )
        if found is None or (live_only and not found.live):
            known = ", ".join(r.name for r in self.list()) or "none"
            raise EndpointNotFoundError(
                f"no {'live ' if live_only else ''}endpoint named {ref!r} in the job store",
                hint=f"%neural_endpoints lists them (live: {known})",
            )
        return found

    def find(self, idempotency_key: str) -> EndpointRecord | None:
        with self.store._read() as conn:
            return _one(conn, "idempotency_key = ? AND deleted_at IS NULL", idempotency_key)

    def list(self, *, include_deleted: bool = False, limit: int | None = None) -> list[Any]:
        query = "SELECT * FROM endpoints"
        if not include_deleted:
            query += " WHERE deleted_at IS NULL"
        query += " ORDER BY created_at DESC"
        if limit:
            query += f" LIMIT {int(limit)}"
        with self.store._read() as conn:
            return [_record(row) for row in conn.execute(query).fetchall()]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _one(conn: sqlite3.Connection, where: str, *args: Any) -> EndpointRecord | None:
    row = conn.execute(f"SELECT * FROM endpoints WHERE {where}", args).fetchone()
    return _record(row) if row is not None else None


def _record(row: sqlite3.Row) -> EndpointRecord:
    values = {name: row[name] for name in FIELDS}
    values["details"] = json.loads(values["details"] or "{}")
    try:
        values["status"] = EndpointStatus(values["status"])
    except ValueError:
        values["status"] = EndpointStatus.UNKNOWN
    return EndpointRecord(**values)


def _encode(name: str, value: Any) -> Any:
    if name == "details":
        if not isinstance(value, Mapping):
            raise TypeError(f"endpoint details must be a dict, not {type(value).__name__}")
        return json.dumps(redact_value(dict(value)), sort_keys=True, default=str)
    if name == "status":
        return EndpointStatus(value).value
    if name == "error" and value is not None:
        return redact(str(value))[:MAX_ERROR_CHARS]
    if name in ("replicas", "owner_pid"):
        return None if value is None else int(value)
    if name == "hourly_price":
        return None if value is None else float(value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return redact(value) if isinstance(value, str) else value
