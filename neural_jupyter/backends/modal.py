"""Modal (``pip install "neural-jupyter[modal]"``): a job bundle runs in a Modal **Sandbox**
on a GPU of the type asked for, through the official ``modal`` SDK.

- The bundle (``bundle.tar.gz``) and its ``launcher.py`` travel as local files added to the
  sandbox's image (``Image.add_local_dir(..., copy=False)``: a mount uploaded at create,
  attached at ``/neural``, no image rebuild). The sandbox's command runs the launcher: it
  checks the archive's SHA-256, unpacks it in ``/root/job``, installs what the image lacks,
  runs ``python train.py`` (under torchrun with ``--procs-per-node P``) and prints the output
  files into the log, from which they come home.
- The image: ``--set image=REF`` (a registry image with Python; ``--set add_python=3.12`` if
  it has none), else the row of ``image_tables/modal.json`` for the job: Modal's
  ``debian_slim`` with that Python and the PyTorch wheel from PyPI (a function or cell gets
  the notebook's Python).
- One sandbox per idempotency key: it is named after the key inside the app
  (``--set app=``, default ``neural-jupyter``); a submit first looks the name up
  (``Sandbox.from_name``) and a create refused because the name is taken adopts the sandbox
  already there. Reattach: ``Sandbox.from_id`` with the id kept in the job store.
- Resources: ``--gpu-type T`` (or ``--instance T``: Modal's GPU names, ``T4`` ... ``H100``,
  ``B200``) and ``--gpus N`` become ``gpu="T:N"``; ``--set cpu=N`` and ``--set memory_gb=G``
  (or ``--cpus``/``--memory-gb`` where given) the sandbox's CPU and memory requests;
  ``--region`` its region; ``--max-hours``/``--timeout`` its ``timeout`` (default: Modal's
  longest, 24 hours). One machine only: ``--nodes`` above 1 is refused,
  ``--procs-per-node P`` runs torchrun with P processes on it.
- Logs: the sandbox's stdout (stderr is folded into it), followed live from its first line
  (a GPU sandbox's through ``SandboxGetLogs``, a CPU one's from the worker's stdio stream:
  the SDK picks) and kept in the job directory's log mirror.
- Cancel: ``Sandbox.terminate`` (Modal stops the container and everything in it).
- Credentials: Modal's own configuration (``MODAL_TOKEN_ID``/``MODAL_TOKEN_SECRET``, else
  the active profile of ``~/.modal.toml``); their values are masked in anything shown.

Sandbox result → neural-jupyter state: no result yet → RUNNING, exit code 0 → SUCCEEDED,
another exit code → FAILED, ``timeout`` (code 124) → FAILED (timed out), terminated (code
137) after a cancel → CANCELLED.

Options (``--set key=value``): ``app``, ``environment``, ``image``, ``add_python``,
``cpu``, ``memory_gb``, ``cloud``, ``log_artifacts_max_mb``, ``hourly_usd``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import math
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from neural_jupyter.backends import base, retry
from neural_jupyter.backends.base import State
from neural_jupyter.backends.log_artifacts import (
    DEFAULT_MAX_MB,
    decode_artifacts,
    is_artifact_line,
)
from neural_jupyter.backends.remote import (
    AsyncTail,
    CountedLog,
    LogReader,
    Look,
    RemotePlatform,
    StateTable,
    gone_look,
    remember,
)
from neural_jupyter.errors import ConfigurationError, JobError, PlatformAuthError
from neural_jupyter.pricing import lookup
from neural_jupyter.redaction import redact, register_secret
from neural_jupyter.runtime.bundle import LAUNCHER, Bundle, launcher_source

T = TypeVar("T")
PLATFORM = "modal"
DEFAULT_APP = "neural-jupyter"
ARCHIVE = "bundle.tar.gz"
MOUNT = "/neural"  # where the bundle's archive and launcher are in the sandbox
WORKDIR = "/root/job"  # where the launcher unpacks it
MAX_TIMEOUT_SECONDS = 24 * 3600  # Modal's longest sandbox lifetime
TIMED_OUT_EXIT = 124  # Modal's returncode of a sandbox stopped at its timeout
TERMINATED_EXIT = 137  # ... and of a terminated one
SETTLE_SECONDS = 1.0  # reading a running sandbox's log without following: until this quiet
CPU_OFFER = "cpu-core"  # the price table's row for one sandbox CPU core
STATES = StateTable(
    {
        "running": (State.RUNNING, "running (or starting its container)"),
        "succeeded": (State.SUCCEEDED, "succeeded"),
        "failed": (State.FAILED, "failed"),
        "timeout": (State.FAILED, "stopped at its timeout"),
        "terminated": (State.CANCELLED, "terminated (cancelled)"),
    }
)


def read_modal(exc: BaseException) -> retry.Failure:
    """The SDK's errors are ``modal.exception`` classes named after the gRPC status the
    server answered (``AuthError``, ``NotFoundError``, ``ResourceExhaustedError``...) whose
    text is the server's message; a server that does not answer is
    ``modal.exception.ConnectionError``. The class name is the platform's answer."""
    name = type(exc).__name__
    code = name if type(exc).__module__.startswith("modal") else ""
    return retry.Failure(exc, None, code, redact(str(exc).strip() or name))


FAULTS = retry.FaultPolicy(
    PLATFORM,
    "Modal",
    read=read_modal,
    auth_hint="Modal refused the API token: make a new one with `modal token new` (or set "
    "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET; https://modal.com/settings/tokens)",
    quota_hint="Modal had no capacity (or your workspace's limit was reached) for this "
    "request: try another --gpu-type, fewer --gpus, or later",
    rules=(
        retry.Rule(retry.AUTH, types=("AuthError", "PermissionDeniedError")),
        retry.Rule(retry.QUOTA, types=("ResourceExhaustedError",)),
        # no retry=True here: the SDK retries these itself (a minute for a connection,
        # backoff over UNAVAILABLE/INTERNAL answers); a second layer would only multiply it
        retry.Rule(
            retry.UNAVAILABLE,
            types=("ConnectionError", "ServiceError", "InternalError", "TimeoutError"),
            hint="is the network up (MODAL_SERVER_URL, if set, must be Modal's API)?",
        ),
        retry.Rule(
            retry.OTHER,
            types=("ImageBuildError",),
            hint="the image did not build on Modal: its log is `modal image logs IMAGE_ID`; "
            "--set image= names another",
        ),
        retry.Rule(retry.INVALID, types=("InvalidError",)),
        retry.Rule(retry.OTHER, types=("NotFoundError",)),
    ),
)


def sandbox_name_for(key: str) -> str:
    """The sandbox name of the job with idempotency key ``key`` (same key, same name; Modal's
    object names: at most 64 of letters, digits, ``-``, ``_``, ``.``)."""
    return base.name_for(key, 64, allowed="A-Za-z0-9_.-", lower=False)


def gpu_spec(resources: base.ResourceSpec) -> str | None:
    """Modal's ``gpu=`` value: ``TYPE`` or ``TYPE:COUNT`` (None: no GPU; ``--instance
    cpu-core``, the price table's CPU row the submit panel offers, is no GPU too)."""
    kind = resources.gpu_type or resources.instance_type
    if kind == CPU_OFFER and not resources.gpu_type:
        kind = None
    if not kind:
        if resources.gpus:
            raise ConfigurationError(
                f"--gpus {resources.gpus}: Modal needs the GPU type too",
                hint="add --gpu-type, e.g. T4, L4, A10G, L40S, A100-80GB, H100, H200, B200 "
                "(https://modal.com/docs/guide/gpu)",
            )
        return None
    count = resources.gpus or 1
    return kind if count == 1 else f"{kind}:{count}"


def cpu_and_memory(resources: base.ResourceSpec) -> tuple[float | None, float | None]:
    """The sandbox's CPU cores and memory (GiB): ``--cpus``/``--memory-gb`` where the caller
    has them, else ``--set cpu=`` / ``--set memory_gb=``."""
    extra = resources.extra
    cpu = resources.cpus or (base.number_option(extra, "cpu", 0.0) if extra.get("cpu") else None)
    memory = resources.memory_gb or (
        base.number_option(extra, "memory_gb", 0.0) if extra.get("memory_gb") else None
    )
    for name, value in (("cpu", cpu), ("memory_gb", memory)):
        if value is not None and value <= 0:
            raise ConfigurationError(f"--set {name} must be positive, got {value:g}")
    return cpu, memory


def timeout_seconds(resources: base.ResourceSpec) -> int:
    """The sandbox's lifetime: the job's budget, else Modal's longest."""
    if resources.max_seconds is None:
        return MAX_TIMEOUT_SECONDS
    seconds = math.ceil(resources.max_seconds)
    if seconds > MAX_TIMEOUT_SECONDS:
        raise ConfigurationError(
            f"a Modal sandbox lives at most 24 hours; this job asks for {seconds / 3600:g}",
            hint="lower --max-hours / --timeout (train.py resumes from its checkpoint with "
            "--resume in a second job)",
        )
    return max(seconds, 10)


def credentials(sdk: Any) -> tuple[str, str]:
    """The token of Modal's configuration (env vars, else ``~/.modal.toml``), registered as
    secrets so no sink shows them."""
    config = sdk.config.config
    token_id, token_secret = config.get("token_id"), config.get("token_secret")
    if not token_id or not token_secret:
        raise PlatformAuthError(
            "no Modal token configured",
            platform=PLATFORM,
            hint="run `modal token new` (or `modal token set`), or set MODAL_TOKEN_ID and "
            "MODAL_TOKEN_SECRET",
        )
    register_secret(str(token_id))
    register_secret(str(token_secret))
    return str(token_id), str(token_secret)


def _off_loop(func: Callable[[], T]) -> T:
    """``func()``, in a worker thread when this thread runs an event loop (a notebook cell):
    the SDK's blocking calls are meant for threads without one."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return func()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="neural-modal") as pool:
        return pool.submit(func).result()


class ModalBackend(RemotePlatform):
    """Jobs in Modal Sandboxes."""

    name = PLATFORM
    label = "Modal"
    extra = "modal"
    sdk_modules: ClassVar[Mapping[str, str]] = {"modal": "modal"}
    faults = FAULTS
    paid = True
    price_table = PLATFORM
    poll_seconds = 2.0
    max_nodes = 1

    def __init__(self) -> None:
        self._clients: dict[tuple[str, str, str], Any] = {}
        self._lock = threading.Lock()
        self._artifact_lines: dict[str, list[str]] = {}  # job id -> what a stream saw

    def call(self, action: str, func: Callable[[], T]) -> T:
        return super().call(action, lambda: _off_loop(func))

    # --- connection -----------------------------------------------------------------------
    def client(self) -> Any:
        """A client of the configured server with the configured token (one per server and
        token: a token changed in the environment gets a client of its own)."""
        sdk = self.sdk()
        token_id, token_secret = credentials(sdk)
        secret_digest = hashlib.sha256(token_secret.encode()).hexdigest()[:16]
        key = (str(sdk.config.config.get("server_url")), token_id, secret_digest)
        with self._lock:
            if key in self._clients:
                return self._clients[key]
        made = self.call(
            "connecting to Modal",
            lambda: sdk.Client.from_credentials(token_id, token_secret),
        )
        with self._lock:
            return self._clients.setdefault(key, made)

    def _sandbox(self, sid: str) -> Any:
        """The sandbox ``sid`` (its result read), or None when Modal has no such sandbox."""
        sdk, client = self.sdk(), self.client()

        def find() -> Any:
            try:
                return sdk.Sandbox.from_id(sid, client=client)
            except sdk.exception.NotFoundError:
                return None

        return self.call("reading the Modal sandbox", find)

    @staticmethod
    def _sid(job: base.RemoteJob) -> str:
        return str(job.remote_id or job.details.get("sandbox_id") or "")

    # --- the request ------------------------------------------------------------------------
    def command(
        self, resources: base.ResourceSpec, digest: str = "(the archive's SHA-256)"
    ) -> list[str]:
        """The sandbox's command: the launcher, stderr folded into stdout."""
        budget = base.number_option(resources.extra, "log_artifacts_max_mb", DEFAULT_MAX_MB)
        launcher = ["python", "-u", f"{MOUNT}/{LAUNCHER}", "--bundle", f"{MOUNT}/{ARCHIVE}"]
        launcher += ["--sha256", digest, "--work", WORKDIR, "--install-missing"]
        launcher += ["--print-outputs", str(int(budget * 2**20))]
        if resources.max_seconds:
            launcher.append("--budget-margin")
        if resources.procs_per_node > 1:
            launcher += ["--nnodes", "1", "--nproc-per-node", str(resources.procs_per_node)]
        return ["sh", "-c", 'exec "$0" "$@" 2>&1', *launcher]

    def image_spec(self, job: base.RemoteJob, resources: base.ResourceSpec) -> dict[str, Any]:
        """What the sandbox's image is made of (before the bundle's files are added)."""
        extra = resources.extra
        if extra.get("image"):
            spec: dict[str, Any] = {"from_registry": str(extra["image"])}
            if extra.get("add_python"):
                spec["add_python"] = str(extra["add_python"])
            return spec
        row = self.image_row(job)
        return {
            "debian_slim": row["python"],
            "pip_install": [f"torch=={row['torch']}", "numpy"],
            "table_row": f"PyTorch {row.framework_version}, Python {row.python}",
        }

    def request(self, job: base.RemoteJob, resources: base.ResourceSpec) -> dict[str, Any]:
        """The arguments of ``modal.Sandbox.create`` (the image described, not built)."""
        extra = resources.extra
        request: dict[str, Any] = {
            "args": self.command(resources),
            "app": str(extra.get("app") or DEFAULT_APP),
            "name": sandbox_name_for(job.idempotency_key),
            "image": self.image_spec(job, resources),
            "mounts": {MOUNT: [ARCHIVE, LAUNCHER]},
            "timeout": timeout_seconds(resources),
            "tags": {"neural_jupyter_job": str(job.id)},
        }
        gpu = gpu_spec(resources)
        if gpu:
            request["gpu"] = gpu
        cpu, memory = cpu_and_memory(resources)
        if cpu:
            request["cpu"] = float(cpu)
        if memory:
            request["memory"] = int(memory * 1024)  # MiB
        if resources.region:
            request["region"] = resources.region
        if extra.get("cloud"):
            request["cloud"] = str(extra["cloud"])
        if extra.get("environment"):
            request["environment"] = str(extra["environment"])
        return request

    def plan(self, job: base.RemoteJob, resources: base.ResourceSpec) -> dict[str, Any]:
        return {
            "backend": self.name,
            "job": job.id,
            "resources": resources.public(),
            "Sandbox.create": self.request(job, resources),
        }

    def estimate_cost(self, resources: base.ResourceSpec) -> base.CostEstimate | None:
        """List price × the sandbox's timeout: its GPUs plus its CPU cores (``--set cpu``,
        else 1) at the sandbox rate (memory is billed on top: a few cents per GiB-hour)."""
        hours = timeout_seconds(resources) / 3600
        gpu = gpu_spec(resources)
        cores = cpu_and_memory(resources)[0] or 1
        label = gpu or f"{cores:g} CPU core(s)"
        if resources.extra.get("hourly_usd") is not None:
            hourly = base.number_option(resources.extra, "hourly_usd", 0.0)
            return base.CostEstimate(self.name, label, hourly, hours, source="--set hourly_usd")
        cpu = lookup(self.name, CPU_OFFER)
        if cpu is None:
            return None
        hourly = cpu.hourly_usd * float(cores)
        source, date, note = cpu.source, cpu.date, cpu.note
        if gpu:
            kind, _, count = gpu.partition(":")
            offer = lookup(self.name, kind.upper())
            if offer is None:
                from neural_jupyter.pricing import instance_types

                known = [o.instance_type for o in instance_types(self.name) if o.gpus]
                raise ConfigurationError(
                    f"no price known for GPU {kind} on Modal",
                    hint="known: " + ", ".join(sorted(known)) + "; or give the hourly price "
                    "with --set hourly_usd=PRICE (https://modal.com/pricing)",
                )
            hourly += offer.hourly_usd * int(count or 1)
            source, date, note = offer.source, offer.date, offer.note
        return base.CostEstimate(
            self.name, label, hourly, hours, source=source, date=date, note=note
        )

    # --- contract ---------------------------------------------------------------------------
    def check_layout(self, resources: base.ResourceSpec, framework: str | None = None) -> None:
        if resources.nodes > 1:
            raise ConfigurationError(
                f"--nodes {resources.nodes}: a Modal sandbox is one machine; Modal's "
                "multi-node clusters are for Functions (@modal.experimental.clustered), "
                "not Sandboxes",
                hint="use --procs-per-node P with --gpus P (torchrun on one machine with "
                "up to 8 GPUs), or the ray/kubernetes/sagemaker platforms for several nodes",
            )
        super().check_layout(resources, framework)
        if resources.gpus and resources.procs_per_node > resources.gpus:
            raise ConfigurationError(
                f"--procs-per-node {resources.procs_per_node} on {resources.gpus} GPU(s): "
                "each process trains on a GPU of its own (NCCL)",
                hint=f"--gpus {resources.procs_per_node}, or fewer processes",
            )

    @staticmethod
    def _check_bundle(bundle: Bundle, resources: base.ResourceSpec) -> None:
        if resources.world_size == 1:
            return
        if bundle.trains_under_torchrun:
            return
        raise ConfigurationError(
            f"--procs-per-node {resources.procs_per_node}: this {bundle.kind} bundle's "
            "train.py does not train under torchrun",
            hint="run it as one process, or run your own DDP script with "
            "run_script / %neural_script, which torchrun starts on every process",
        )

    def _image(self, sdk: Any, spec: Mapping[str, Any]) -> Any:
        if "from_registry" in spec:
            return sdk.Image.from_registry(spec["from_registry"], add_python=spec.get("add_python"))
        return sdk.Image.debian_slim(python_version=spec["debian_slim"]).pip_install(
            *spec["pip_install"]
        )

    def submit(
        self, bundle: Bundle, job: base.RemoteJob, resources: base.ResourceSpec
    ) -> base.Submission:
        self.check_layout(resources, bundle.job.get("framework"))
        self._check_bundle(bundle, resources)
        sdk = self.sdk()
        client = self.client()
        request = self.request(job, resources)
        name, app_name = request["name"], request["app"]
        environment = request.get("environment")
        app = self.call(
            f"looking up the Modal app {app_name}",
            lambda: sdk.App.lookup(
                app_name, create_if_missing=True, environment_name=environment, client=client
            ),
        )
        archive = bundle.archive(exclude=(LAUNCHER,), compresslevel=1)
        digest = hashlib.sha256(archive).hexdigest()
        options = {
            key: request[key]
            for key in ("gpu", "cpu", "memory", "region", "cloud", "timeout", "tags")
            if key in request
        }

        def find() -> Any:
            try:
                return sdk.Sandbox.from_name(
                    app_name, name, environment_name=environment, client=client
                )
            except sdk.exception.NotFoundError:
                return None

        with tempfile.TemporaryDirectory(prefix="neural-jupyter-modal-") as staging:
            folder = Path(staging)
            (folder / ARCHIVE).write_bytes(archive)
            (folder / LAUNCHER).write_text(launcher_source(), encoding="utf-8")
            image = self._image(sdk, request["image"]).add_local_dir(folder, MOUNT)
            sandbox, how = self.submit_once(
                "creating the Modal sandbox",
                lambda: sdk.Sandbox.create(
                    *self.command(resources, digest),
                    app=app,
                    name=name,
                    image=image,
                    client=client,
                    **options,
                ),
                find=find,
                exists=lambda exc: type(exc).__name__ == "AlreadyExistsError",
            )
        if sandbox is None:  # a create refused as taken, whose sandbox then ended
            raise JobError(
                f"a Modal sandbox named {name} already existed and is gone; submit again",
                hint="--new submits it under a new name",
            )
        sid = str(sandbox.object_id)
        details = {"sandbox_id": sid, "app": app_name, "name": name, "submitted": how}
        if environment:
            details["environment"] = environment
        return base.Submission(sid, details)

    def look(self, job: base.RemoteJob) -> Look:
        sid = self._sid(job)
        sandbox = self._sandbox(sid)
        if sandbox is None:
            return gone_look(
                job, "gone", f"Modal has no sandbox {sid} (another workspace or environment?)"
            )
        code = sandbox.returncode
        if code is None:
            words = "running"
        elif code == 0:
            words = "succeeded"
        elif code == TIMED_OUT_EXIT:
            words = "timeout"
        elif code == TERMINATED_EXIT and job.files.cancel_requested.exists():
            words = "terminated"
        else:
            words = "failed"
        state, meaning = STATES.lookup(words)
        if words == "timeout":
            status = base.RemoteStatus(State.FAILED, code, "stopped at its timeout", True)
        elif words == "failed":
            why = "killed (out of memory?)" if code == TERMINATED_EXIT else f"exit code {code}"
            status = base.RemoteStatus(State.FAILED, code, why)
        else:
            status = base.RemoteStatus(state, code, None if code is not None else meaning)
        if status.is_terminal:
            remember(job, status)
        announce = f"Modal sandbox {sid} {meaning}" if not status.is_terminal else None
        return Look(status, words, announce, {"state": state}, raw=sandbox)

    def log_reader(self, job: base.RemoteJob) -> LogReader:
        return _SandboxLog(self, job)

    def cancel(self, job: base.RemoteJob) -> None:
        job.files.mark(job.files.cancel_requested)
        sandbox = self._sandbox(self._sid(job))
        if sandbox is not None:
            self.call("terminating the Modal sandbox", sandbox.terminate)

    def fetch_artifacts(self, job: base.RemoteJob, destination: Path) -> dict[str, Path]:
        """Decoded from the sandbox's log: the lines a stream of this process kept, else the
        whole log read again (while Modal keeps the sandbox)."""
        lines = self._artifact_lines.pop(job.id, None)
        if lines is None:
            sid = self._sid(job)
            sandbox = self._sandbox(sid)
            if sandbox is None:
                raise JobError(
                    f"Modal no longer has sandbox {sid}, nor its log with the outputs",
                    job_id=job.id,
                )
            lines = [line for line in self._read_all(sandbox) if is_artifact_line(line)]
        return decode_artifacts(lines, destination)

    def _read_all(self, sandbox: Any) -> list[str]:
        tail = _tail(sandbox)
        try:
            found = [str(item).rstrip("\n") for item in tail.items()]
        finally:
            tail.stop()
        if tail.error is not None:
            raise self.faults.translate(tail.error, "reading the Modal sandbox's log")
        return found

    def check_credentials(self) -> None:
        credentials(self.sdk())


def _tail(sandbox: Any) -> AsyncTail:
    """The sandbox's stdout from its first line (``SandboxGetLogs``), line by line."""
    return AsyncTail(lambda: sandbox.stdout, "neural-modal-log", join_seconds=5)


class _SandboxLog(CountedLog):
    """The sandbox's log from its first line: followed while it runs, read to its end once
    it ended."""

    backend: ModalBackend

    def __init__(self, backend: ModalBackend, job: base.RemoteJob) -> None:
        super().__init__(backend, job)
        self.complete = False  # read to the end of the log

    def _stream(self, sandbox: Any, settle: float | None) -> Iterator[base.StreamItem]:
        """Lines of a new read from the start; with ``settle``: until that long without a
        new line (a running sandbox's log so far), else to the end."""
        tail = self.tail = _tail(sandbox)
        count, quiet_since = 0, time.monotonic()
        try:
            for item in tail.items(self.backend.heartbeat_seconds):
                if item is None:
                    if settle is not None and time.monotonic() - quiet_since > settle:
                        return
                    yield None
                    continue
                quiet_since = time.monotonic()
                count += 1
                yield from self._numbered([(count, str(item).rstrip("\n"))])
        finally:
            tail.stop()
            self.tail = None
        if tail.error is not None:
            raise self.backend.faults.translate(tail.error, "reading the Modal sandbox's log")
        self.complete = tail.ended

    def read(self, look: Look, follow: bool) -> Iterator[base.StreamItem]:
        if look.gone or self.complete or look.raw is None:
            return
        running = not look.status.is_terminal
        yield from self._stream(look.raw, SETTLE_SECONDS if running and not follow else None)

    def finish(self, look: Look) -> Iterator[base.StreamItem]:
        if look.gone and not self.read_any:  # Modal forgot the sandbox: what is kept here
            yield from self.mirror.events()
            return
        if not look.status.is_terminal:
            return
        yield from self.hand_over_artifacts()
