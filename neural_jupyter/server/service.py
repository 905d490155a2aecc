"""The server side of the sidebar: jobs, their progress, logs and cost, through the public
``neural_jupyter.jobs`` API only (the server keeps caches, never job state).

Everything that may block (SQLite, reading logs, asking a platform for a status, stopping a
process group) runs on a small thread pool, so the server's event loop never waits for it.

A job that is not finished is re-checked with ``Job.refresh()`` at most every
``refresh_seconds`` (local) or ``remote_refresh_seconds`` (other platforms): that is what
``job.status`` does in a kernel, and it is how a job whose kernel is gone still gets its final
state recorded. A platform the server cannot ask (its SDK or credentials missing here) leaves
the stored state as it is and says so in the job's ``note``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from neural_jupyter.redaction import redact
from neural_jupyter.server.live import FollowerCache, LiveState
from neural_jupyter.server.views import elapsed_hours, job_view

T = TypeVar("T")
REFRESH_WAIT_SECONDS = 2.0  # how long a list request waits for re-checks before answering


class JobService:
    """Answers the REST handlers; one per server."""

    def __init__(
        self,
        store_path: str | Path | None = None,
        refresh_seconds: float = 3.0,
        remote_refresh_seconds: float = 60.0,
        workers: int = 4,
    ) -> None:
        self.store_path = Path(store_path) if store_path else None
        self.refresh_seconds = refresh_seconds
        self.remote_refresh_seconds = remote_refresh_seconds
        self.followers = FollowerCache()
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, "neural-jupyter-server")
        self._store: Any = None
        self._store_lock = threading.Lock()
        self._checked: dict[str, float] = {}
        self._checking: dict[str, concurrent.futures.Future] = {}
        self._notes: dict[str, str] = {}
        self._lock = threading.Lock()

    # --- plumbing ---------------------------------------------------------------------------
    async def call(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    def store(self) -> Any:
        """The job store the kernels use (``NEURAL_JUPYTER_HOME``), opened on first use."""
        from neural_jupyter.jobs import JobStore

        with self._store_lock:
            if self._store is None:
                self._store = JobStore(self.store_path)
            return self._store

    def close(self) -> None:
        self.followers.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._store is not None:
            self._store.close()

    # --- queries ----------------------------------------------------------------------------
    async def list_jobs(
        self,
        status: list[str] | None = None,
        platform: str | None = None,
        limit: int | None = None,
        force_refresh: bool = False,
    ) -> list[dict[str, Any]]:
        """Views of the jobs, newest first; unfinished ones re-checked first (briefly)."""
        from neural_jupyter import jobs

        def query() -> list[Any]:
            store = self.store()
            return jobs.list(status=status or None, platform=platform, limit=limit, store=store)

        found = await self.call(query)
        pending = [
            self._recheck(job, force_refresh) for job in found if not job.record.status.is_terminal
        ]
        waiting = [future for future in pending if future is not None]
        if waiting:
            await asyncio.wait(
                [asyncio.wrap_future(f) for f in waiting], timeout=REFRESH_WAIT_SECONDS
            )
            found = await self.call(query)  # with what the re-checks recorded
        return await self.call(self._views, found)

    async def get_job(self, job_id: str) -> dict[str, Any]:
        """One job's view with its metrics history."""
        job = await self.call(self.load_job, job_id)
        future = self._recheck(job, force=True)
        if future is not None:
            await asyncio.wait([asyncio.wrap_future(future)], timeout=REFRESH_WAIT_SECONDS)
        return await self.call(self._detail, job)

    async def logs(self, job_id: str, tail: int, stream: str) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            job = self.load_job(job_id)
            return {"id": job.id, "stream": stream, "lines": job.logs(tail=tail, stream=stream)}

        return await self.call(read)

    async def cancel(self, job_id: str) -> dict[str, Any]:
        """Stop the job (``Job.cancel``: the process group, or the remote job)."""

        def stop() -> dict[str, Any]:
            job = self.load_job(job_id)
            before = job.record.status
            job.cancel()
            view = self._view(job)
            view["cancelled"] = not before.is_terminal and job.record.status.value == "CANCELLED"
            return view

        return await self.call(stop)

    # --- inside the pool --------------------------------------------------------------------
    def load_job(self, job_id: str) -> Any:
        from neural_jupyter.jobs import Job

        return Job.load(job_id, self.store())

    def _recheck(self, job: Any, force: bool = False) -> concurrent.futures.Future | None:
        """Start a ``Job.refresh()`` on the pool if the job is due one; the future, or None."""
        interval = (
            self.refresh_seconds if job.record.platform == "local" else self.remote_refresh_seconds
        )
        if interval <= 0:  # re-checks of this kind are turned off
            return None
        now = time.monotonic()
        with self._lock:
            running = self._checking.get(job.id)
            if running is not None and not running.done():
                return running
            if not force and now - self._checked.get(job.id, -1e9) < interval:
                return None
            self._checked[job.id] = now
            future = self._pool.submit(self._refresh, job)
            self._checking[job.id] = future
            return future

    def _refresh(self, job: Any) -> None:
        from neural_jupyter.errors import NeuralError

        try:
            job.refresh()
        except NeuralError as exc:
            note = f"status as last recorded; the server could not ask {job.record.platform}: "
            self._notes[job.id] = note + exc.message + (f" ({exc.hint})" if exc.hint else "")
        except Exception as exc:  # an SDK's own error: reported, never fatal to the list
            self._notes[job.id] = f"could not re-check the job: {type(exc).__name__}: {exc}"
        else:
            self._notes.pop(job.id, None)

    def _live(self, job: Any, detail: bool = False) -> LiveState | None:
        """The job's live state. A list follows unfinished jobs (and finished ones it followed
        before); it never starts reading the whole log of a job that has ended — a server
        started after many jobs would read them all. One job's detail always does."""
        create = detail or not job.record.status.is_terminal
        follower = self.followers.get(job, create=create)
        return follower.advance() if follower is not None else None

    def _views(self, found: Iterable[Any]) -> list[dict[str, Any]]:
        return [self._view(job) for job in found]

    def _view(self, job: Any, detail: bool = False) -> dict[str, Any]:
        record = job.record
        live = self._live(job, detail)
        cost, paid = job_cost(record, self.store())
        note = self._notes.get(job.id)
        return job_view(record, live=live, cost=cost, paid=paid, note=note and redact(note))

    def _detail(self, job: Any) -> dict[str, Any]:
        job.record = self.store().get(job.id)
        view = self._view(job, detail=True)
        follower = self.followers.get(job)
        if follower is not None:
            history = list(follower.state.history)
            view["history_truncated"] = follower.state.epochs_seen - len(history)
        else:
            history = stored_history(job)
            view["history_truncated"] = 0
        view["history"] = history
        view["config"] = {
            key: job.record.config.get(key)
            for key in ("framework", "data", "settings", "resources")
        }
        return view


def stored_history(job: Any) -> list[dict[str, Any]]:
    """A remote job's history where its kernel brought the outputs back (else empty)."""
    from neural_jupyter.jobs import TrainingRun

    if not job.record.job_dir:  # never given a directory (not started)
        return []
    from neural_jupyter.jobs import code_result

    if code_result.is_code_job(job.record):  # user code: the epochs it reported
        return code_result.epoch_history(job.directory / "stdout.log")
    try:
        return list(TrainingRun.from_directory(job.record, job.bundle_dir).history)
    except (OSError, ValueError):
        return []


def job_cost(record: Any, store: Any) -> tuple[dict[str, Any] | None, bool]:
    """Cost so far at list price, and whether the job is on a paid platform.

    The platform's hourly price (from the instance type the job was submitted with) × the
    time since it started (to its end), plus any rented instance still recorded as running.
    An estimate for a glance, not a bill: the platform's billing is the truth.
    """
    from neural_jupyter.backends import is_paid
    from neural_jupyter.backends.base import ResourceSpec

    now = datetime.now(timezone.utc)
    resources = record.config.get("resources") or {}
    total, hourly = 0.0, 0.0
    priced = False
    extra = {k.removeprefix("extra."): v for k, v in resources.items() if k.startswith("extra.")}
    paid = is_paid(record.platform, ResourceSpec(extra=extra))
    if paid:
        price = platform_hourly_price(record.platform, resources)
        if price is not None:
            priced = True
            hourly += price
            total += price * elapsed_hours(
                record.started_at or record.created_at, record.finished_at, now
            )
    instances = store.live_instances(record.id) if not record.status.is_terminal else []
    for instance in instances:
        if instance.hourly_price is None:
            continue
        paid = priced = True
        hourly += instance.hourly_price
        total += instance.hourly_price * elapsed_hours(instance.created_at, None, now)
    if not paid:
        return None, False
    if not priced:
        instance_type = resources.get("instance_type") or "its instance"
        return {
            "usd": None,
            "hourly_usd": None,
            "note": f"no list price known for {instance_type}",
        }, True
    return {
        "usd": round(total, 4),
        "hourly_usd": round(hourly, 4),
        "running": not record.status.is_terminal,
        "note": "list price × time since the job started; the platform's bill is the truth",
    }, True


def platform_hourly_price(platform: str, resources: dict[str, Any]) -> float | None:
    """The list price per hour of the resources a job was submitted with, or None."""
    from neural_jupyter.backends import get_backend
    from neural_jupyter.backends.base import ResourceSpec
    from neural_jupyter.errors import NeuralError

    if not resources.get("instance_type"):
        return None
    spec = ResourceSpec(
        instance_type=resources["instance_type"],
        gpus=int(resources.get("gpus") or 0),
        spot=bool(resources.get("spot")),
        max_runtime_hours=1.0,
        extra={k[len("extra.") :]: v for k, v in resources.items() if k.startswith("extra.")},
    )
    try:
        estimate = get_backend(platform).estimate_cost(spec)
    except NeuralError:
        return None
    return estimate.hourly_usd if estimate is not None else None
