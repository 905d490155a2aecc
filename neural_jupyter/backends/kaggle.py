"""Kaggle: the bundle runs as a private script kernel on Kaggle's free GPUs.

``submit`` pushes one Python script (``SaveKernel``, what ``kaggle kernels push`` sends): the
bundle's ``launcher.py`` (``runtime/launcher.py``) with the bundle inside it (a base64 gzipped
tar); it unpacks it, runs ``train.py`` and copies its outputs to the kernel's ``output/``.
Data too big to embed comes from a Kaggle dataset holding ``data.npz``
(``--set dataset=owner/slug``), attached to the kernel.

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
import dataclasses
import json
import os
import queue
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from neural_jupyter.backends import base, retry
from neural_jupyter.backends.base import State
from neural_jupyter.backends.log_mirror import LogMirror
from neural_jupyter.backends.remote import LogReader, Look, RemotePlatform, StateTable
from neural_jupyter.errors import (
    ConfigurationError,
    JobError,
    PlatformAuthError,
    PlatformError,
    QuotaError,
)
from neural_jupyter.redaction import register_secret
from neural_jupyter.runtime.bundle import LAUNCHER, Bundle, launcher_source
from neural_jupyter.runtime.events import parse_line
from neural_jupyter.runtime.jobdir import artifact_name, output_target

PLATFORM = "kaggle"
EMBED_LIMIT = 1_000_000  # bytes of compressed bundle carried inside the kernel script
MAX_SESSION_SECONDS = 12 * 3600  # Kaggle stops GPU sessions after 12 hours
MACHINE_SHAPES = {"gpu-t4x2": "NvidiaTeslaT4"}
# Kaggle retired its P100s: a session asking for them runs on T4s.
RETIRED_SHAPES = {"gpu-p100": "gpu-t4x2"}
DATA_SEARCH = "$KAGGLE_INPUT_DIR:/kaggle/input"  # attached data sets
KERNEL_ARGS = ["--bundle", "embedded", "--outputs", "output", "--data-search", DATA_SEARCH]

# Kaggle's KernelWorkerStatus -> ours (the table in docs/platforms/kaggle.md).
STATE_TABLE = StateTable(
    {
        "QUEUED": (State.PENDING, "queued"),
        "NEW_SCRIPT": (State.PENDING, "new script, waiting to start"),
        "RUNNING": (State.RUNNING, "running"),
        "CANCEL_REQUESTED": (State.RUNNING, "stopping (cancel requested)"),
        "COMPLETE": (State.SUCCEEDED, "complete"),
        "ERROR": (State.FAILED, "error"),
        "CANCEL_ACKNOWLEDGED": (State.CANCELLED, "cancelled"),
    }
)


def _read_http(exc: BaseException):
    """A ``requests`` error: the answer's status and Kaggle's ``message``."""
    failure = retry.read_plain(exc)
    response = getattr(exc, "response", None)
    if response is not None:
        with contextlib.suppress(ValueError, AttributeError):
            body = response.json()
            if isinstance(body, dict) and body.get("message"):
                return type(failure)(exc, failure.status, "", str(body["message"]))
        with contextlib.suppress(Exception):
            if response.text:
                return type(failure)(exc, failure.status, "", str(response.text)[:500])
    return failure


FAULTS = retry.FaultPolicy(
    PLATFORM,
    "Kaggle",
    read=_read_http,
    rules=(
        retry.Rule(
            retry.AUTH,
            statuses=(401, 403),
            message="{text}",
            hint="check the Kaggle API token (https://www.kaggle.com/settings → API); "
            "a new token replaces ~/.kaggle/kaggle.json",
        ),
        retry.Rule(retry.QUOTA, statuses=(429,), retry=True, message="{text}"),
        retry.Rule(retry.QUOTA, words=("quota",), message="{text}"),
        retry.Rule(
            retry.UNAVAILABLE, statuses=retry.TRANSIENT_HTTP_STATUS, retry=True, message="{text}"
        ),
        retry.CONNECTION,
        retry.Rule(types=("HTTPError",), message="{text}"),
    ),
)


def kernel_slug_for(key: str) -> str:
    """Kaggle kernel slug (and title) from the idempotency key: same key, same kernel."""
    return base.name_for(key, 49)


def kernel_script(bundle: Bundle, archive: bytes, internet: bool = False) -> str:
    """The kernel's one source file: the launcher, with the bundle and its arguments in it
    (without internet, ``--offline``: the launcher says what it cannot install)."""
    args = KERNEL_ARGS if internet else [*KERNEL_ARGS, "--offline"]
    encoded = base64.b64encode(archive).decode()
    lines = [encoded[i : i + 100] for i in range(0, len(encoded), 100)]
    literal = "BUNDLE = (\n" + "".join(f'    "{line}"\n' for line in lines) + ")"
    header = f"# neural-jupyter job {bundle.job.get('job_id', '')} ({bundle.job.get('model', '')})"
    text = launcher_source()
    for placeholder, value in (
        ('BUNDLE = ""', literal),
        ("ARGS: list[str] = []", f"ARGS = {args!r}"),
    ):
        line = next(x for x in text.splitlines() if x.startswith(placeholder))
        text = text.replace(line, value, 1)
    return header + "\n" + text


def pack_bundle(bundle: Bundle, with_data: bool = True) -> bytes:
    return bundle.archive(exclude=(LAUNCHER,) if with_data else (LAUNCHER, "data.npz"))


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


class KaggleBackend(RemotePlatform):
    name = PLATFORM
    label = "Kaggle (free GPU quota)"
    extra = "kaggle"
    sdk_modules: ClassVar[Mapping[str, str]] = {"kagglesdk": "kaggle", "requests": "kaggle"}
    price_table = PLATFORM
    max_parallel = 1  # Kaggle runs few GPU sessions of an account at once; one is safe
    faults = FAULTS
    poll_seconds = 5.0  # between status checks (Kaggle rate-limits its API)

    # --- client -------------------------------------------------------------------------------
    def client(self, username: str | None = None) -> tuple[Any, KaggleCredentials]:
        self.require_sdk()
        kagglesdk = self.sdk("kagglesdk")
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

    def _call(self, func: Callable[[], Any]) -> Any:
        return self.call("Kaggle", func)

    def _kernel(self, job: base.RemoteJob) -> tuple[str, str]:
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
    def save_request(self, owner: str, slug: str, text: str, resources: base.ResourceSpec) -> Any:
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
        instance = resources.instance_type or ""
        if instance in RETIRED_SHAPES:
            warnings.warn(
                f"Kaggle retired its P100 GPUs: --instance {instance} runs on "
                f"{RETIRED_SHAPES[instance]}",
                DeprecationWarning,
                stacklevel=2,
            )
            instance = RETIRED_SHAPES[instance]
        shape = extra.get("machine_shape") or MACHINE_SHAPES.get(instance)
        if instance and not shape:
            raise ConfigurationError(
                f"unknown Kaggle accelerator {resources.instance_type!r}",
                hint="--instance gpu-t4x2, or --set machine_shape=NAME",
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

    def plan(self, job: base.RemoteJob, resources: base.ResourceSpec) -> dict[str, Any]:
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

    def submit(
        self, bundle: Bundle, job: base.RemoteJob, resources: base.ResourceSpec
    ) -> base.Submission:
        extra = resources.extra
        dataset = extra.get("dataset")
        if dataset is not None and not re.fullmatch(r"[\w.-]+/[\w.-]+", str(dataset)):
            raise ConfigurationError(f"--set dataset must be OWNER/DATASET-SLUG, got {dataset!r}")
        archive = pack_bundle(bundle, with_data=not dataset)
        if len(archive) > EMBED_LIMIT:
            hint = (
                f"upload {bundle.path / 'data.npz'} as a private Kaggle dataset "
                "(kaggle datasets create) and pass --set dataset=OWNER/SLUG"
                if bundle.kind == "model"
                else "ship less with the code: upload the data folder as a private Kaggle "
                "dataset, attach it with --set dataset=OWNER/SLUG and read it from "
                "/kaggle/input/SLUG in the job"
            )
            raise ConfigurationError(
                f"the bundle is {len(archive) / 2**20:.1f} MiB compressed, too big to carry "
                "inside a Kaggle kernel",
                hint=hint,
            )
        client, credentials = self.client(extra.get("username"))
        owner = str(credentials.username)
        slug = kernel_slug_for(job.idempotency_key)
        script = kernel_script(bundle, archive, internet=_flag(extra, "internet", False))
        request = self.save_request(owner, slug, script, resources)

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
        return base.Submission(
            f"{owner}/{slug}", {k: v for k, v in details.items() if v is not None}
        )

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

    def look(self, job: base.RemoteJob) -> Look:
        owner, slug = self._kernel(job)
        client, _ = self.client(job.details.get("username"))
        response = self._call(lambda: self._session_status(client, owner, slug))
        if response is None:
            return Look(
                base.RemoteStatus(State.UNKNOWN, message=f"kernel {owner}/{slug} not found")
            )
        state = status_from(response.status.name, response.failure_message)
        announce = None if state.is_terminal else f"Kaggle: {state.message}"
        return Look(state, str(state.message), announce, {"state": state.state})

    def log_reader(self, job: base.RemoteJob) -> LogReader:
        return _KernelLog(self, job)

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

    def fetch_artifacts(self, job: base.RemoteJob, destination: Path) -> dict[str, Path]:
        """Download the kernel's ``output/`` files into ``destination``."""
        import requests

        owner, slug = self._kernel(job)
        client, _ = self.client(job.details.get("username"))
        files, _ = self._output(client, owner, slug)
        found: dict[str, Path] = {}
        for item in files:
            name = str(item.file_name or "").replace("\\", "/")
            folder, _, relative = name.partition("/")
            target = output_target(destination, relative)
            if folder != "output" or target is None or not item.url:
                continue

            def download(url: str = str(item.url)) -> bytes:
                response = requests.get(url, timeout=300)
                response.raise_for_status()
                return response.content

            data = self._call(download)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            found[artifact_name(relative)] = target
        return found

    def cancel(self, job: base.RemoteJob) -> None:
        owner, slug = self._kernel(job)
        url = job.details.get("url") or f"https://www.kaggle.com/code/{owner}/{slug}"
        raise PlatformError(
            "Kaggle's public API cannot stop a running session (it does not expose session "
            "ids); nothing was changed",
            platform=PLATFORM,
            hint=f"open {url} and use 'Stop session' (Kaggle then reports it as cancelled); "
            "every run also stops at its session timeout (--max-hours, at most 12 h)",
        )

    def estimate_cost(self, resources: base.ResourceSpec) -> base.CostEstimate | None:
        if not resources.instance_type:
            return None
        instance = RETIRED_SHAPES.get(resources.instance_type, resources.instance_type)
        return super().estimate_cost(dataclasses.replace(resources, instance_type=instance))


class _KernelLog(LogReader):
    """Kaggle's live log while the session runs (read between status looks), then the
    persisted log; every line kept once in the job's log mirror."""

    def __init__(self, backend: KaggleBackend, job: base.RemoteJob) -> None:
        self.backend = backend
        self.owner, self.slug = backend._kernel(job)
        self.client, _ = backend.client(job.details.get("username"))
        self.mirror = LogMirror(job.directory)
        self.counter = LineCounter()
        self.live: _LiveLog | None = None

    def _drain(self) -> Iterator[base.StreamItem]:
        for entry in self.live.entries() if self.live is not None else ():
            for line, stream in self.counter.feed(entry):
                self.mirror.add(line, self.counter.count, stream)
                yield parse_line(line, stream)

    def read(self, look: Look, follow: bool) -> Iterator[base.StreamItem]:
        if follow and look.status.state == State.RUNNING and self.live is None:
            self.live = _LiveLog(self.client, self.owner, self.slug)
        yield from self._drain()

    def pause(self, look: Look, seconds: float, step: float) -> Iterator[base.StreamItem]:
        for beat in base.heartbeats(seconds, step):  # the status every poll, the log as it comes
            yield from self._drain()
            yield beat

    def finish(self, look: Look) -> Iterator[base.StreamItem]:
        """The persisted log (the lines not streamed live); the local copy if Kaggle has none."""
        if not (look.status.is_terminal or look.status.state == State.RUNNING):
            return
        _, log = self.backend._output(self.client, self.owner, self.slug)
        if log:
            replay = LineCounter()
            lines = [pair for entry in parse_log(log) for pair in replay.feed(entry)]
            lines.extend(replay.flush())
            for number, (line, stream) in enumerate(lines, 1):
                if number > self.counter.count:
                    self.counter.count = number
                    self.mirror.add(line, number, stream)
                    yield parse_line(line, stream)
        elif self.counter.count == 0:
            yield from self.mirror.events()

    def close(self) -> None:
        if self.live is not None:
            self.live.close()


def status_from(name: str, failure: str | None = None) -> base.RemoteStatus:
    state, text = STATE_TABLE.get(name.upper(), (State.UNKNOWN, name.lower()))
    if state == State.FAILED:
        return base.RemoteStatus(State.FAILED, None, failure or "the kernel ended with an error")
    if state == State.SUCCEEDED:
        return base.RemoteStatus(State.SUCCEEDED, 0, text)
    return base.RemoteStatus(state, None, text)


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
