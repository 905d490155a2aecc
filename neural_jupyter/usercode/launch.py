"""Running user code as a job: the plan (what a dry run shows), the cost check, the start
through the jobs layer, and the wait with a live monitor — the same machinery as models."""

from __future__ import annotations

import hashlib
import json
import platform
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neural_jupyter.backends import get_backend
from neural_jupyter.backends.base import CostEstimate, RemoteJob, ResourceSpec
from neural_jupyter.jobs.job import Job
from neural_jupyter.jobs.launch import start_bundle
from neural_jupyter.jobs.store import JobStore
from neural_jupyter.paths import jobs_dir
from neural_jupyter.redaction import redact
from neural_jupyter.runtime.bundle import Bundle
from neural_jupyter.runtime.code_bundle import CodeSpec, build_code_bundle, bundle_listing
from neural_jupyter.usercode.requirements import Requirements

COST_CONFIRM_THRESHOLD = 5.0  # USD, as for models


@dataclass(frozen=True)
class JobOptions:
    """Where and how a user-code job runs (the same options as ``submit`` for models).

    On ``local`` every call starts a new job. Elsewhere the same code, inputs, requirements
    and resources make the same idempotency key, so running a cell again shows the job it
    started before instead of paying for a second one (``new=True`` starts another).
    """

    platform: str = "local"
    instance: str | None = None
    gpus: int | None = None
    gpu_type: str | None = None
    max_hours: float | None = None
    timeout: float | None = None
    spot: bool = False
    region: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    yes: bool = False
    new: bool = False
    monitor: str = "auto"
    name: str | None = None
    confirm_above: float = COST_CONFIRM_THRESHOLD
    store: JobStore | None = None

    def resources(self) -> ResourceSpec:
        return ResourceSpec(
            instance_type=self.instance,
            gpus=self.gpus or 0,
            gpu_type=self.gpu_type,
            max_runtime_hours=self.max_hours,
            timeout_seconds=self.timeout,
            spot=self.spot,
            region=self.region,
            extra=dict(self.extra),
        ).validated()


@dataclass
class CodePlan:
    """What running the code as a job would do: the request (redacted), the requirements
    the job installs, the cost. Nothing has been sent."""

    kind: str
    name: str
    platform: str
    requirements: Requirements
    request: dict[str, Any]
    cost: CostEstimate | None
    idempotency_key: str
    payload_bytes: int
    notes: list[str] = field(default_factory=list)
    existing_job: str | None = None
    bundle: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        origin = {
            "auto": "auto: the notebook's versions of what the code imports",
            "list": "as given",
            "file": "from the file given",
        }[self.requirements.origin]
        where = (
            "nothing (the notebook's own Python runs the job)"
            if self.platform == "local"
            else "what the platform's image lacks or has at another version (its own torch, "
            "TensorFlow or JAX build is kept)"
        )
        lines = [
            f"Dry run: {self.kind} {self.name} on {self.platform} (nothing was sent)",
            f"  requirements ({origin}):",
            *(f"    {line}" for line in self.requirements.describe() or ["(none)"]),
            f"  installed in the job: {where}",
        ]
        if self.requirements.local:
            lines.append(
                "  imported but not an installed package: "
                + ", ".join(self.requirements.local)
                + (" (sent by value)" if self.kind == "function" else "")
            )
        lines += [f"  note: {note}" for note in self.notes]
        if self.bundle:
            lines.append(f"  bundle: {', '.join(self.bundle)}")
        if self.payload_bytes:
            lines.append(f"  payload: {self.payload_bytes:,} bytes")
        lines.append(f"  idempotency key: {self.idempotency_key}")
        if self.existing_job:
            lines.append(f"  already submitted as job {self.existing_job}")
        lines.append(f"  cost: {self.cost if self.cost else 'no platform charge'}")
        lines.append("  request:")
        lines += [
            "    " + line for line in json.dumps(self.request, indent=2, default=str).splitlines()
        ]
        return redact("\n".join(lines))

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))


def fingerprint(spec: CodeSpec) -> str:
    """A digest of everything the job runs (code, payload, files, requirements)."""
    digest = hashlib.sha256()
    for part in (spec.kind, spec.name, spec.source, spec.script, str(spec.outputs)):
        digest.update(part.encode() + b"\0")
    digest.update(spec.payload)
    digest.update(json.dumps([list(spec.args), list(spec.requirements)]).encode())
    for folder in (spec.project, spec.data):
        if folder is not None:
            digest.update(_tree_digest(folder).encode())
    return digest.hexdigest()


def _tree_digest(root: Path) -> str:
    """Names, sizes and times of the files under ``root`` (contents would be slow for data)."""
    digest = hashlib.sha256()
    paths = sorted(root.rglob("*")) if root.is_dir() else [root]
    for path in paths:
        if path.is_file():
            stat = path.stat()
            digest.update(
                f"{path.relative_to(root.parent)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode()
            )
    return digest.hexdigest()


def plan(
    spec: CodeSpec, requirements: Requirements, options: JobOptions, notes: list[str] | None = None
) -> CodePlan:
    runner = get_backend(options.platform)
    resources = options.resources()
    if options.platform == "local" or options.new:
        key = f"{options.platform}-{uuid.uuid4().hex[:20]}"
    else:
        where = json.dumps(resources.public(), sort_keys=True, default=str)
        payload = f"{options.platform}|{fingerprint(spec)}|{where}"
        key = f"{options.platform}-{hashlib.sha256(payload.encode()).hexdigest()[:20]}"
    existing = (options.store or JobStore()).find(key)
    details = {
        "idempotency_key": key,
        "bundle_files": bundle_listing(spec),
        "kind": spec.kind,
        "python": platform.python_version(),
    }
    remote = RemoteJob("(new job)", jobs_dir() / "(new job)", None, details)
    from neural_jupyter.api import redact_mapping

    return CodePlan(
        kind=spec.kind,
        name=spec.name,
        platform=options.platform,
        requirements=requirements,
        request=redact_mapping(runner.plan(remote, resources)),
        cost=runner.estimate_cost(resources),
        idempotency_key=key,
        payload_bytes=len(spec.payload) + len(spec.source.encode()),
        notes=list(notes or []),
        existing_job=existing.id if existing else None,
        bundle=list(details["bundle_files"]),
    )


def launch(
    spec: CodeSpec,
    requirements: Requirements,
    options: JobOptions,
    *,
    wait: bool = True,
    notes: list[str] | None = None,
) -> Any:
    """Start ``spec`` as a job (or find the one started before); with ``wait`` follow it
    with a live monitor and return its result, else return the ``Job``."""
    from neural_jupyter import api

    the_plan = plan(spec, requirements, options, notes)
    api.check_cost(
        the_plan.cost,
        the_plan.existing_job,
        options.platform,
        options.instance,
        options.yes,
        options.confirm_above,
        options.resources(),
    )
    runner = get_backend(options.platform)
    runner.check_credentials()
    resources = options.resources()
    spec = _with_budget(spec, resources.max_seconds)
    config = {
        "kind": spec.kind,
        "requirements": list(requirements.lines),
        "resources": resources.public(),
        **({"outputs": str(spec.outputs)} if spec.kind == "script" else {}),
        **({"script": spec.script, "args": list(spec.args)} if spec.kind == "script" else {}),
    }

    def build(directory: Path, job_id: str) -> Bundle:
        return build_code_bundle(spec, directory, job_id=job_id)

    job = start_bundle(
        build,
        platform=options.platform,
        resources=resources,
        name=options.name or spec.name,
        model_name=spec.name,
        config=config,
        idempotency_key=the_plan.idempotency_key,
        store=options.store,
    )
    if the_plan.existing_job:
        print(
            f"{spec.name} was already submitted as job {job.id} ({job.refresh().status.value}); "
            "showing it (new=True / --new starts another)"
        )
    if not wait:
        if options.monitor != "none":
            api.watch_in_background(job, options.monitor)
        return job
    return api.watch(job, options.monitor)


def _with_budget(spec: CodeSpec, max_seconds: float | None) -> CodeSpec:
    if max_seconds is None:
        return spec
    from dataclasses import replace

    return replace(spec, max_seconds=max_seconds)


__all__ = ["CodePlan", "Job", "JobOptions", "launch", "plan"]
