"""Kaggle: the bundle runs as a private script kernel on Kaggle's free GPUs.

``submit`` pushes one Python script (``SaveKernel``, what ``kaggle kernels push`` sends) that
carries the bundle inside it (a base64 gzipped tar), unpacks it in ``/kaggle/working`` and runs
``train.py``; its outputs end up in the kernel's ``output/``. Data too big to embed comes from a
Kaggle dataset holding ``data.npz`` (``--set dataset=owner/slug``), attached to the kernel.

- Private always (``is_private``), GPU on (``enable_gpu``; ``--set enable_gpu=false`` for CPU),
  internet off unless ``--set internet=true``, ``session_timeout_seconds`` from ``--max-hours``.
- One kernel per idempotency key (its slug comes from the key). Before pushing, the backend asks
  for the kernel's status: a kernel already there is the one a previous try pushed, so a retried
  push can never queue a second run (a second push would be a new version: a second run).
- Status: ``GetKernelSessionStatus`` (queued, running, complete, error, cancelAcknowledged).
  Logs: Kaggle's live log stream while the session runs (server-sent events), then the
  persisted log from ``ListKernelSessionOutput`` (what ``kaggle kernels output`` saves), each
  line parsed with the event protocol. Outputs come back into the job's ``bundle/output``.
- Cancel: Kaggle's public API cannot stop a session (it does not expose session ids), so
  ``cancel`` raises with the kernel's URL (its "Stop session" button); the session timeout
  bounds every run.

Credentials: ``KAGGLE_USERNAME``/``KAGGLE_KEY``, else ``kaggle.json`` in ``KAGGLE_CONFIG_DIR``,
``~/.kaggle`` or ``~/.config/kaggle``; or an access token (``KAGGLE_API_TOKEN``, with
``--set username=...``). They are never printed or stored, and are registered for redaction.
``KAGGLE_API_ENDPOINT`` points the client at another API host (a proxy, or a test double).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from neural_jupyter.backends.base import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    UNKNOWN,
    Backend,
    CostEstimate,
    RemoteJob,
    RemoteStatus,
    ResourceSpec,
    StreamItem,
    Submission,
)
from neural_jupyter.backends.log_mirror import LogMirror
from neural_jupyter.backends.retry import TRANSIENT_HTTP_STATUS, call_with_retries
from neural_jupyter.errors import (
    ConfigurationError,
    JobError,
    MissingDependencyError,
    PlatformAuthError,
    PlatformConnectionError,
    PlatformError,
    QuotaError,
)
from neural_jupyter.redaction import register_secret
from neural_jupyter.runtime.bundle import Bundle
from neural_jupyter.runtime.events import Event, parse_line

PLATFORM = "kaggle"
EMBED_LIMIT = 1_000_000  # bytes of compressed bundle carried inside the kernel script
MAX_SESSION_SECONDS = 12 * 3600  # Kaggle stops GPU sessions after 12 hours
MACHINE_SHAPES = {"gpu-t4x2": "NvidiaTeslaT4", "gpu-p100": "NvidiaTeslaP100"}
ARTIFACT_NAMES = {"model.pt": "weights", "history.json": "history", "checkpoint.pt": "checkpoint"}

# Kaggle's KernelWorkerStatus -> ours (the table in docs/platforms/kaggle.md).
STATE_TABLE: dict[str, tuple[str, str]] = {
    "QUEUED": (PENDING, "queued"),
    "NEW_SCRIPT": (PENDING, "new script, waiting to start"),
    "RUNNING": (RUNNING, "running"),
    "CANCEL_REQUESTED": (RUNNING, "stopping (cancel requested)"),
    "COMPLETE": (SUCCEEDED, "complete"),
    "ERROR": (FAILED, "error"),
    "CANCEL_ACKNOWLEDGED": (CANCELLED, "cancelled"),
}

KERNEL_SCRIPT = r'''"""neural-jupyter job __JOB__ (__MODEL__): runs train.py of the bundle below."""
import base64, glob, io, os, shutil, subprocess, sys, tarfile

here = os.getcwd()
work = os.path.join(here, "neural_job")
os.makedirs(work, exist_ok=True)
with tarfile.open(fileobj=io.BytesIO(base64.b64decode(BUNDLE)), mode="r:gz") as archive:
    if hasattr(tarfile, "data_filter"):
        archive.extractall(work, filter="data")
    else:
        archive.extractall(work)
data = os.path.join(work, "data.npz")
if not os.path.exists(data):
    inputs = os.environ.get("KAGGLE_INPUT_DIR", "/kaggle/input")
    found = sorted(glob.glob(os.path.join(inputs, "**", "data.npz"), recursive=True))
    if not found:
        print("neural-jupyter: no data.npz in the bundle or the attached dataset", file=sys.stderr)
        sys.exit(2)
    shutil.copyfile(found[0], data)
sys.stdout.flush()
code = subprocess.call([sys.executable, "-u", "train.py"], cwd=work)
if os.path.isdir(os.path.join(work, "output")):
    shutil.rmtree(os.path.join(here, "output"), ignore_errors=True)
    shutil.move(os.path.join(work, "output"), os.path.join(here, "output"))
shutil.rmtree(work, ignore_errors=True)
sys.exit(code)
'''


def _sdk() -> Any:
    try:
        import kagglesdk  # the client the ``kaggle`` package talks through
        import requests  # noqa: F401
    except ImportError:
        raise MissingDependencyError("kaggle", "kaggle", "The Kaggle backend") from None
    return kagglesdk


def kernel_slug_for(key: str) -> str:
    """Kaggle kernel slug (and title) from the idempotency key: same key, same kernel."""
    slug = re.sub(r"[^a-z0-9-]+", "-", key.lower()).strip("-")
    if len(slug) > 46:
        slug = slug[:33].rstrip("-") + "-" + hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"nj-{slug}"


def kernel_script(bundle: Bundle, archive: bytes) -> str:
    """The kernel's one source file: the bootstrap with the bundle inside it."""
    encoded = base64.b64encode(archive).decode()
    lines = [encoded[i : i + 100] for i in range(0, len(encoded), 100)]
    literal = "BUNDLE = (\n" + "".join(f'    "{line}"\n' for line in lines) + ")\n"
    header, body = KERNEL_SCRIPT.split("\n", 1)
    header = header.replace("__JOB__", str(bundle.job.get("job_id", ""))).replace(
        "__MODEL__", str(bundle.job.get("model", ""))
    )
    return header + "\n" + literal + body


def pack_bundle(bundle: Bundle, with_data: bool = True) -> bytes:
    return bundle.archive(exclude=() if with_data else ("data.npz",))


def _flag(extra: Mapping[str, Any], name: str, default: bool) -> bool:
    value = extra.get(name, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"--set {name} must be true or false, got {value!r}")


class KaggleCredentials:
    """Where the Kaggle credentials are (values stay inside; ``repr`` shows none)."""

    def __init__(self, username: str | None, key: str | None, token: str | None, source: str):
        self.username = username
        self.key = key
        self.token = token
        self.source = source
        for secret in (key, token):
            register_secret(secret)

    def __repr__(self) -> str:
        return f"<KaggleCredentials {self.username or '?'} from {self.source}>"


def find_credentials(username: str | None = None) -> KaggleCredentials:
    """Kaggle's own order: environment variables, then ``kaggle.json``; or an access token."""
    env_user, env_key = os.environ.get("KAGGLE_USERNAME"), os.environ.get("KAGGLE_KEY")
    if env_user and env_key:
        return KaggleCredentials(env_user, env_key, None, "KAGGLE_USERNAME/KAGGLE_KEY")
    for folder in _config_dirs():
        path = folder / "kaggle.json"
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            data = json.loads(path.read_text())
            if data.get("username") and data.get("key"):
                return KaggleCredentials(str(data["username"]), str(data["key"]), None, str(path))
    token = os.environ.get("KAGGLE_API_TOKEN")
    if token and Path(token).is_file():
        token = Path(token).read_text().strip()
    if not token:
        for folder in _config_dirs():
            with contextlib.suppress(OSError):
                token = (folder / "access_token").read_text().strip()
                if token:
                    break
    if token:
        user = username or env_user
        if not user:
            raise PlatformAuthError(
                "a Kaggle access token was found, but not the user name it belongs to",
                platform=PLATFORM,
                hint="--set username=YOUR_KAGGLE_NAME (or set KAGGLE_USERNAME)",
            )
        return KaggleCredentials(user, None, token, "access token")
    raise PlatformAuthError(
        "no Kaggle credentials found",
        platform=PLATFORM,
        hint="create an API token at https://www.kaggle.com/settings (API → Create New Token) "
        "and save it as ~/.kaggle/kaggle.json (chmod 600), or set KAGGLE_USERNAME and "
        "KAGGLE_KEY",
    )


def _config_dirs() -> list[Path]:
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return [Path(os.environ["KAGGLE_CONFIG_DIR"])]
    home = Path.home()
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    return [home / ".kaggle", xdg / "kaggle"]


class KaggleBackend(Backend):
    name = PLATFORM
    label = "Kaggle (free GPU quota)"
    extra = "kaggle"

    poll_seconds = 5.0  # between status checks (Kaggle rate-limits its API)
    heartbeat_seconds = 0.25

    # --- client -------------------------------------------------------------------------------
    def client(self, username: str | None = None) -> tuple[Any, KaggleCredentials]:
        kagglesdk = _sdk()
        from kagglesdk.kaggle_env import KaggleEnv

        credentials = find_credentials(username)
        client = kagglesdk.KaggleClient(
            env=KaggleEnv.PROD,
            username=credentials.username if credentials.key else None,
            password=credentials.key,
            api_token=credentials.token,
            user_agent="neural-jupyter",
        )
        endpoint = os.environ.get("KAGGLE_API_ENDPOINT", "").rstrip("/")
        if endpoint:
            http = client.http_client()
            if not hasattr(http, "_endpoint"):
                raise ConfigurationError(
                    "KAGGLE_API_ENDPOINT is set, but this kagglesdk has no endpoint to change"
                )
            http._endpoint = endpoint
        return client, credentials

    @staticmethod
    def _call(func: Callable[[], Any]) -> Any:
        try:
            return call_with_retries(func, _is_transient)
        except Exception as exc:
            raise _platform_error(exc) from None

    def _kernel(self, job: RemoteJob) -> tuple[str, str]:
        details = job.details
        owner = details.get("owner")
        slug = details.get("slug")
        if not owner or not slug:
            remote = str(job.remote_id or "")
            owner, _, slug = remote.partition("/")
        if not owner or not slug:
            raise JobError(f"job {job.id} has no Kaggle kernel recorded", job_id=job.id)
        return str(owner), str(slug)

    # --- requests -----------------------------------------------------------------------------
    def save_request(self, owner: str, slug: str, text: str, resources: ResourceSpec) -> Any:
        from kagglesdk.kernels.types.kernels_api_service import ApiSaveKernelRequest

        extra = resources.extra
        request = ApiSaveKernelRequest()
        request.slug = f"{owner}/{slug}"
        request.new_title = slug
        request.text = text
        request.language = "python"
        request.kernel_type = "script"
        request.is_private = True
        request.enable_gpu = _flag(extra, "enable_gpu", True)
        request.enable_tpu = False
        request.enable_internet = _flag(extra, "internet", False)
        request.dataset_data_sources = [str(extra["dataset"])] if extra.get("dataset") else []
        shape = extra.get("machine_shape") or MACHINE_SHAPES.get(resources.instance_type or "")
        if resources.instance_type and not shape:
            raise ConfigurationError(
                f"unknown Kaggle accelerator {resources.instance_type!r}",
                hint="--instance gpu-t4x2 or gpu-p100, or --set machine_shape=NAME",
            )
        if shape:
            request.machine_shape = str(shape)
        seconds = resources.max_seconds
        if seconds:
            if seconds > MAX_SESSION_SECONDS:
                raise ConfigurationError(
                    f"--max-hours {seconds / 3600:g} is more than Kaggle's 12-hour session limit"
                )
            request.session_timeout_seconds = max(60, int(seconds))
        return request

    def plan(self, job: RemoteJob, resources: ResourceSpec) -> dict[str, Any]:
        owner = str(resources.extra.get("username") or os.environ.get("KAGGLE_USERNAME") or "")
        if not owner:
            with contextlib.suppress(PlatformAuthError):
                owner = find_credentials().username or ""
        slug = kernel_slug_for(job.idempotency_key)
        request = self.save_request(owner or "<you>", slug, "<kernel script>", resources)
        return {
            "backend": self.name,
            "job": job.id,
            "resources": resources.public(),
            "SaveKernel": request.to_dict(),
        }

    # --- contract -----------------------------------------------------------------------------
    def check_credentials(self) -> None:
        """Credentials exist (a token's user name may still come from ``--set username``)."""
        find_credentials(username="-")

    def submit(self, bundle: Bundle, job: RemoteJob, resources: ResourceSpec) -> Submission:
        extra = resources.extra
        dataset = extra.get("dataset")
        if dataset is not None and not re.fullmatch(r"[\w.-]+/[\w.-]+", str(dataset)):
            raise ConfigurationError(f"--set dataset must be OWNER/DATASET-SLUG, got {dataset!r}")
        archive = pack_bundle(bundle, with_data=not dataset)
        if len(archive) > EMBED_LIMIT:
            raise ConfigurationError(
                f"the bundle is {len(archive) / 2**20:.1f} MiB compressed, too big to carry "
                "inside a Kaggle kernel",
                hint=f"upload {bundle.path / 'data.npz'} as a private Kaggle dataset "
                "(kaggle datasets create) and pass --set dataset=OWNER/SLUG",
            )
        client, credentials = self.client(extra.get("username"))
        owner = str(credentials.username)
        slug = kernel_slug_for(job.idempotency_key)
        request = self.save_request(owner, slug, kernel_script(bundle, archive), resources)

        def push() -> dict[str, Any]:
            existing = self._session_status(client, owner, slug)
            if existing is not None:  # pushed by an earlier try or run: never push twice
                return {"adopted": True, "status": existing}
            response = client.kernels.kernels_api_client.save_kernel(request)
            if response.error:
                raise _save_error(response.error)
            return {
                "adopted": False,
                "url": response.url,
                "version": response.version_number,
                "kernel_id": response.kernel_id,
            }

        pushed = self._call(push)
        details = {
            "owner": owner,
            "slug": slug,
            "url": pushed.get("url") or f"https://www.kaggle.com/code/{owner}/{slug}",
            "version": pushed.get("version"),
            "kernel_id": pushed.get("kernel_id"),
            "dataset": dataset,
            "session_timeout_seconds": request.session_timeout_seconds,
        }
        if extra.get("username"):
            details["username"] = str(extra["username"])
        return Submission(f"{owner}/{slug}", {k: v for k, v in details.items() if v is not None})

    def _session_status(self, client: Any, owner: str, slug: str) -> Any:
        """The kernel's session status, or None while no such kernel exists (404/403)."""
        import requests
        from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelSessionStatusRequest

        request = ApiGetKernelSessionStatusRequest()
        request.user_name = owner
        request.kernel_slug = slug
        try:
            return client.kernels.kernels_api_client.get_kernel_session_status(request)
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else None
            if code in (403, 404):  # Kaggle answers 403 for a kernel that does not exist
                return None
            raise

    def status(self, job: RemoteJob) -> RemoteStatus:
        owner, slug = self._kernel(job)
        client, _ = self.client(job.details.get("username"))
        response = self._call(lambda: self._session_status(client, owner, slug))
        if response is None:
            return RemoteStatus(UNKNOWN, message=f"kernel {owner}/{slug} not found")
        return status_from(response.status.name, response.failure_message)

    def events(self, job: RemoteJob, *, follow: bool = True) -> Iterator[StreamItem]:
        owner, slug = self._kernel(job)
        client, _ = self.client(job.details.get("username"))
        mirror = LogMirror(job.directory)
        counter = LineCounter()
        last = None
        live: _LiveLog | None = None
        next_check = 0.0
        try:
            while True:
                if time.monotonic() >= next_check:  # the status every poll; the log as it comes
                    next_check = time.monotonic() + self.poll_seconds
                    state = self.status(job)
                    if state.message != last and not state.is_terminal:
                        last = state.message
                        yield Event("status", {"state": state.state, "message": f"Kaggle: {last}"})
                    if follow and state.state == RUNNING and live is None:
                        live = _LiveLog(client, owner, slug)
                if live is not None:
                    for entry in live.entries():
                        for line, stream in counter.feed(entry):
                            mirror.add(line, counter.count, stream)
                            yield parse_line(line, stream)
                if state.is_terminal or not follow:
                    if state.is_terminal or state.state == RUNNING:
                        yield from self._final_log(client, owner, slug, counter, mirror)
                    if state.state == SUCCEEDED:
                        yield from self.bring_back_outputs(job)
                    return
                yield None
                time.sleep(self.heartbeat_seconds)
        finally:
            if live is not None:
                live.close()

    def _output(self, client: Any, owner: str, slug: str) -> tuple[list[Any], str | None]:
        """Every output file (all pages) and the session's log."""
        from kagglesdk.kernels.types.kernels_api_service import (
            ApiListKernelSessionOutputRequest,
        )

        files: list[Any] = []
        log = None
        token = None
        while True:
            request = ApiListKernelSessionOutputRequest()
            request.user_name = owner
            request.kernel_slug = slug
            request.page_size = 100
            if token:
                request.page_token = token
            response = self._call(
                lambda r=request: client.kernels.kernels_api_client.list_kernel_session_output(r)
            )
            files.extend(response.files or [])
            log = log or response.log
            token = response.next_page_token
            if not token:
                return files, log

    def _final_log(
        self, client: Any, owner: str, slug: str, counter: LineCounter, mirror: LogMirror
    ) -> Iterator[StreamItem]:
        """The persisted log (the lines not streamed live); the local copy if Kaggle has none."""
        _, log = self._output(client, owner, slug)
        if log:
            replay = LineCounter()
            lines = [pair for entry in parse_log(log) for pair in replay.feed(entry)]
            lines.extend(replay.flush())
            for number, (line, stream) in enumerate(lines, 1):
                if number > counter.count:
                    counter.count = number
                    mirror.add(line, number, stream)
                    yield parse_line(line, stream)
            return
        if counter.count == 0:
            for line, stream in mirror.lines():
                yield parse_line(line, stream)

    def fetch_artifacts(self, job: RemoteJob, destination: Path) -> dict[str, Path]:
        """Download the kernel's ``output/`` files into ``destination``."""
        import requests

        owner, slug = self._kernel(job)
        client, _ = self.client(job.details.get("username"))
        files, _ = self._output(client, owner, slug)
        found: dict[str, Path] = {}
        for item in files:
            name = str(item.file_name or "")
            parts = Path(name).parts
            if not name or ".." in parts or parts[0] != "output" or not item.url:
                continue
            if parts[-1] == "status.json":  # train.py's own exit record, not an artifact
                continue

            def download(url: str = str(item.url)) -> bytes:
                response = requests.get(url, timeout=300)
                response.raise_for_status()
                return response.content

            data = self._call(download)
            target = destination.joinpath(*parts[1:])
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            found[ARTIFACT_NAMES.get(target.name, target.name)] = target
        return found

    def cancel(self, job: RemoteJob) -> None:
        owner, slug = self._kernel(job)
        url = job.details.get("url") or f"https://www.kaggle.com/code/{owner}/{slug}"
        raise PlatformError(
            "Kaggle's public API cannot stop a running session (it does not expose session "
            "ids); nothing was changed",
            platform=PLATFORM,
            hint=f"open {url} and use 'Stop session' (Kaggle then reports it as cancelled); "
            "every run also stops at its session timeout (--max-hours, at most 12 h)",
        )

    def estimate_cost(self, resources: ResourceSpec) -> CostEstimate | None:
        if not resources.instance_type:
            return None
        return super().estimate_cost(resources)


def status_from(name: str, failure: str | None = None) -> RemoteStatus:
    state, text = STATE_TABLE.get(name.upper(), (UNKNOWN, name.lower()))
    if state == FAILED:
        return RemoteStatus(FAILED, None, failure or "the kernel ended with an error")
    if state == SUCCEEDED:
        return RemoteStatus(SUCCEEDED, 0, text)
    return RemoteStatus(state, None, text)


def parse_log(text: str) -> list[dict[str, Any]]:
    """Kaggle's persisted log: a JSON array of ``{stream_name, time, data}``; plain text is
    taken as stdout."""
    with contextlib.suppress(ValueError):
        data = json.loads(text)
        if isinstance(data, list):
            return [entry for entry in data if isinstance(entry, dict)]
    return [{"stream_name": "stdout", "data": text}]


class LineCounter:
    """Splits log entries into lines (per stream; an entry may hold part of a line) and
    counts them, so a stream replayed from its start skips what was already shown."""

    def __init__(self) -> None:
        self.count = 0
        self._partial: dict[str, str] = {}

    def feed(self, entry: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        stream = "stderr" if entry.get("stream_name") == "stderr" else "stdout"
        text = self._partial.pop(stream, "") + str(entry.get("data") or "")
        *lines, rest = text.split("\n")
        if rest:
            self._partial[stream] = rest
        for line in lines:
            self.count += 1
            yield line.rstrip("\r"), stream

    def flush(self) -> Iterator[tuple[str, str]]:
        """Lines the log ended without a newline."""
        for stream, rest in sorted(self._partial.items()):
            self.count += 1
            yield rest.rstrip("\r"), stream
        self._partial.clear()


_END = object()


class _LiveLog:
    """Kaggle's live log stream (server-sent events while the session runs, the persisted
    log after it), read in a thread; ``entries()`` returns what arrived so far. A dropped
    connection reconnects; the server replays from the start, so entries seen are skipped."""

    def __init__(self, client: Any, owner: str, slug: str) -> None:
        self.client, self.owner, self.slug = client, owner, slug
        self.inbox: queue.Queue = queue.Queue()
        self.closed = threading.Event()
        self.response: Any = None
        self.thread = threading.Thread(target=self._run, name="neural-kaggle-log", daemon=True)
        self.thread.start()

    def _open(self) -> Any:
        http = self.client.http_client()
        http._init_session()
        url = f"{http._endpoint}/v1/kernels/logs/stream/{self.owner}/{self.slug}"
        headers = {k: v for k, v in http._session.headers.items() if k != "Content-Type"}
        headers["Accept"] = "text/event-stream, */*"
        response = http._session.get(url, stream=True, headers=headers, timeout=(10, 600))
        response.raise_for_status()
        return response

    def _run(self) -> None:
        seen = 0
        for _ in range(5):
            if self.closed.is_set():
                break
            try:
                self.response = self._open()
            except Exception:  # no live stream here (old API, 404...): the final log will do
                break
            index = 0
            ended = False
            try:
                for entry in _stream_entries(self.response):
                    if entry is None:
                        ended = True
                        break
                    index += 1
                    if index > seen:
                        seen = index
                        self.inbox.put(entry)
                else:
                    ended = True
            except Exception:
                ended = False
            finally:
                with contextlib.suppress(Exception):
                    self.response.close()
            if ended:
                break
            time.sleep(1.0)
        self.inbox.put(_END)

    def entries(self) -> list[dict[str, Any]]:
        out = []
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return out
            if item is not _END:
                out.append(item)

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(Exception):
            if self.response is not None:
                self.response.close()


def _stream_entries(response: Any) -> Iterable[dict[str, Any] | None]:
    """Entries of the live log: SSE ``data:`` lines (``END_OF_LOG`` ends it, yielded as None)
    or, once the session is over, the persisted JSON array."""
    kind = (response.headers.get("Content-Type") or "").lower()
    if not kind.startswith("text/event-stream"):
        yield from parse_log(response.text)
        return
    for raw in response.iter_lines(decode_unicode=True):
        if not raw or not raw.startswith("data:"):
            continue
        payload = raw[len("data:") :].lstrip()
        if payload == "END_OF_LOG":
            yield None
            return
        try:
            entry = json.loads(payload)
        except ValueError:
            entry = {"data": payload + "\n"}
        yield entry if isinstance(entry, dict) else {"data": str(entry)}


def _save_error(message: str) -> PlatformError:
    if "quota" in message.lower():
        return QuotaError(message, platform=PLATFORM)
    return PlatformError(message, platform=PLATFORM)


def _is_transient(exc: BaseException) -> bool:
    import requests

    if isinstance(exc, requests.HTTPError):
        response = exc.response
        return response is not None and response.status_code in TRANSIENT_HTTP_STATUS
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError))


def _message(exc: Any) -> str:
    response = getattr(exc, "response", None)
    if response is not None:
        with contextlib.suppress(ValueError, AttributeError):
            body = response.json()
            if isinstance(body, dict) and body.get("message"):
                return str(body["message"])
        with contextlib.suppress(Exception):
            if response.text:
                return str(response.text)[:500]
    return str(exc)


def _platform_error(exc: BaseException) -> Exception:
    if isinstance(exc, PlatformError | ConfigurationError | JobError):
        return exc
    import requests

    if isinstance(exc, requests.HTTPError):
        status = exc.response.status_code if exc.response is not None else None
        message = _message(exc)
        if status in (401, 403):
            return PlatformAuthError(
                message,
                platform=PLATFORM,
                response=f"HTTP {status}",
                hint="check the Kaggle API token (https://www.kaggle.com/settings → API); "
                "a new token replaces ~/.kaggle/kaggle.json",
            )
        if status == 429 or "quota" in message.lower():
            return QuotaError(message, platform=PLATFORM, response=f"HTTP {status}")
        if status in TRANSIENT_HTTP_STATUS:
            return PlatformConnectionError(message, platform=PLATFORM, response=f"HTTP {status}")
        return PlatformError(message, platform=PLATFORM, response=f"HTTP {status}")
    if _is_transient(exc):
        return PlatformConnectionError(
            f"Kaggle could not be reached: {type(exc).__name__}", platform=PLATFORM
        )
    return PlatformError(f"{type(exc).__name__}: {exc}", platform=PLATFORM)
