"""A local fake of Modal's control plane: a gRPC server (grpclib) speaking the protocol
stubs the ``modal`` SDK ships (``modal_proto.api_grpc.ModalClientBase``), spoken to by the
real SDK through ``MODAL_SERVER_URL=http://127.0.0.1:PORT``.

What it serves, and only that (any other RPC answers ``UNIMPLEMENTED`` and is listed in
``unexpected``):

* ``ClientHello``, ``EnvironmentGetOrCreate`` (the image builder version),
  ``AppGetOrCreate`` (apps by name);
* images: ``ImageGetOrCreate`` then ``ImageJoinStreaming`` (a build log line, then the
  result; ``image_build_error`` makes builds fail);
* local files added to an image: ``MountBatchedCheckExistence``, ``MountPutFile`` (inline
  data, or a blob uploaded first with ``BlobCreate`` and an HTTP ``PUT`` to this fake's
  blob store), ``MountGetOrCreate``;
* sandboxes: ``SandboxCreate`` (names unique among an app's running sandboxes:
  ``ALREADY_EXISTS``; unknown GPU types: ``INVALID_ARGUMENT``; types in ``no_capacity``:
  ``RESOURCE_EXHAUSTED``), ``SandboxGetTaskId``, ``SandboxWait`` (long poll),
  ``SandboxGetLogs`` (a server stream: output as it comes, in the chunks the process wrote
  them, resumable by ``last_entry_id``, ``eof`` at the end; the stream is held at most
  ``log_hold_seconds`` so the client's reconnects are exercised), ``SandboxTerminate``,
  ``SandboxGetFromName``.

A sandbox really runs: like a worker whose image is this machine's Python, the fake writes
the mounts' files under a folder of its own that stands for the container's filesystem and
runs the sandbox's command there as a subprocess (``python`` is this interpreter; absolute
paths under a mount or ``/root`` are mapped into the folder; Modal's client token is not in
its environment). Its stdout and stderr are the sandbox's logs; its exit code the result;
``timeout_secs`` stops it (``TIMEOUT``), ``SandboxTerminate`` kills its process group
(``TERMINATED``).

Every request is checked for the token (``x-modal-token-id``/``-secret`` metadata:
``UNAUTHENTICATED`` otherwise), recorded (``calls(rpc)``), and ``fail(rpc, status, ...)``
injects gRPC errors.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server
from modal_proto import api_grpc, api_pb2, task_command_router_grpc, task_command_router_pb2

from .base import FakeServer, Request, Response

GPU_TYPES = frozenset(
    {"T4", "L4", "A10", "A10G", "A100", "A100-40GB", "A100-80GB", "L40S", "H100", "H100!"}
    | {"H200", "B200", "B200+", "RTX-PRO-6000", "ANY"}
)
OK = api_pb2.GenericResult.GENERIC_STATUS_SUCCESS
FAILURE = api_pb2.GenericResult.GENERIC_STATUS_FAILURE
TIMEOUT = api_pb2.GenericResult.GENERIC_STATUS_TIMEOUT
TERMINATED = api_pb2.GenericResult.GENERIC_STATUS_TERMINATED
STDOUT, STDERR = api_pb2.FILE_DESCRIPTOR_STDOUT, api_pb2.FILE_DESCRIPTOR_STDERR


ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def new_id(prefix: str, length: int = 22) -> str:
    """An object id as Modal writes them: a prefix and 22 base-62 characters (a sandbox id of
    that shape is a "V1" sandbox to the SDK; any other shape a "V2" one)."""
    digits = [secrets.choice(ALPHABET) for _ in range(length)]
    return f"{prefix}-{''.join(digits)}"


@dataclass
class Call:
    """One RPC as received."""

    rpc: str
    request: Any
    metadata: dict[str, str]
    time: float = field(default_factory=time.monotonic)


@dataclass
class Fault:
    rpc: str
    status: Status
    message: str
    times: int
    after: bool  # act first, then answer with the error (only the response is lost)


class FakeSandbox:
    """One sandbox: its definition, its process, its logs and its result."""

    def __init__(
        self, sandbox_id: str, app_id: str, definition: Any, tags: dict[str, str], version: int
    ) -> None:
        self.id = sandbox_id
        self.version = version  # 1: GPU sandboxes (logs through the API); 2: the others
        self.app_id = app_id
        self.definition = definition
        self.tags = tags
        self.name = definition.name or None
        self.task_id: str = ""
        self.logs: dict[int, list[str]] = {STDOUT: [], STDERR: []}  # chunks, as written
        self.data: dict[int, bytearray] = {STDOUT: bytearray(), STDERR: bytearray()}
        self.result: api_pb2.GenericResult | None = None
        self.process: subprocess.Popen | None = None
        self.lock = threading.Lock()
        self.root: Path | None = None  # the container's filesystem, here
        self.pumps: list[threading.Thread] = []

    @property
    def running(self) -> bool:
        return self.result is None

    def write(self, fd: int, text: str, raw: bytes) -> None:
        with self.lock:
            if text:
                self.logs[fd].append(text)
            self.data[fd].extend(raw)

    @property
    def ended(self) -> bool:
        """The result is in and every byte of output is stored."""
        return self.result is not None and not any(p.is_alive() for p in self.pumps)

    def finish(self, result: api_pb2.GenericResult) -> bool:
        with self.lock:
            if self.result is not None:
                return False
            self.result = result
            return True

    def output(self, fd: int = STDOUT) -> str:
        with self.lock:
            return "".join(self.logs[fd])


class _BlobStore(FakeServer):
    """Where ``BlobCreate``'s upload URLs point: ``PUT /blob/ID`` keeps the bytes and answers
    with their MD5 as ``ETag``, as S3 does."""

    def __init__(self) -> None:
        super().__init__()
        self.blobs: dict[str, bytes] = {}

    def route(self, request: Request) -> Response:
        found = re.fullmatch(r"/blob/([\w-]+)", request.path)
        if request.method == "PUT" and found:
            self.blobs[found.group(1)] = request.body
            etag = hashlib.md5(request.body).hexdigest()
            return Response(200, b"", {"ETag": f'"{etag}"'})
        return Response(404, b"no such blob")


def jwt(claims: dict[str, Any]) -> str:
    """An (unsigned) JWT: the SDK reads its ``exp`` to know when to fetch a new one."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.c2ln"


def _servicer(base: type) -> Any:
    """An instance of a generated servicer base with every RPC declared (they all go through
    ``_Dispatch``, which answers UNIMPLEMENTED for what the fake does not serve)."""

    async def unimplemented(self: Any, stream: Any) -> None:  # pragma: no cover - replaced
        raise GRPCError(Status.UNIMPLEMENTED)

    names = sorted(base.__abstractmethods__)
    return type("_Servicer", (base,), dict.fromkeys(names, unimplemented))()


class FakeModal:
    """Modal's API on ``http://127.0.0.1:PORT`` (``url``), for tokens ``token_id`` /
    ``token_secret``."""

    def __init__(
        self,
        token_id: str = "ak-fake-token-id-0123",
        token_secret: str = "as-fake-token-secret-0123",
    ) -> None:
        self.token_id, self.token_secret = token_id, token_secret
        self.calls_: list[Call] = []
        self.faults: list[Fault] = []
        self.unexpected: list[str] = []
        self.lock = threading.RLock()
        self.apps: dict[tuple[str, str], str] = {}  # (environment, name) -> app id
        self.images: dict[str, Any] = {}  # image id -> api_pb2.Image
        self.image_build_error: str | None = None  # builds fail with this message
        self.files: dict[str, bytes] = {}  # sha256 -> content (the mount file store)
        self.mounts: dict[str, list[Any]] = {}  # mount id -> [api_pb2.MountFile]
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.no_capacity: set[str] = set()  # GPU types without capacity
        self.log_hold_seconds = 55.0  # a SandboxGetLogs stream ends after this long
        self.auth_tokens: set[str] = set()  # issued by AuthTokenGet (V2 sandbox calls)
        self.router_jwts: set[str] = set()  # for the task command router (V2 stdio)
        self.workdir = Path(tempfile.mkdtemp(prefix="fake-modal-"))
        self.blob_store = _BlobStore()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # --- lifecycle --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        """What points the SDK here (as a user's environment would point it at Modal)."""
        return {
            "MODAL_SERVER_URL": self.url,
            "MODAL_TOKEN_ID": self.token_id,
            "MODAL_TOKEN_SECRET": self.token_secret,
        }

    def start(self) -> FakeModal:
        self.blob_store.start()
        started = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._server = Server(
                [
                    _Dispatch(self, _servicer(api_grpc.ModalClientBase), self._check_token),
                    _Dispatch(
                        self,
                        _servicer(task_command_router_grpc.TaskCommandRouterBase),
                        self._check_router,
                    ),
                ]
            )
            loop.run_until_complete(self._server.start("127.0.0.1", 0))
            self.port = self._server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            started.set()
            loop.run_forever()
            with contextlib.suppress(Exception):
                loop.run_until_complete(self._server.wait_closed())
            loop.close()

        self._thread = threading.Thread(target=serve, name="fake-modal", daemon=True)
        self._thread.start()
        started.wait(10)
        return self

    def stop(self) -> None:
        for sandbox in list(self.sandboxes.values()):
            self._kill(sandbox)
        loop, server = self._loop, self._server
        if loop is not None and server is not None:

            def close() -> None:
                server.close()
                loop.call_later(0.2, loop.stop)

            loop.call_soon_threadsafe(close)
        if self._thread is not None:
            self._thread.join(5)
        self.blob_store.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> FakeModal:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what tests ask ---------------------------------------------------------------------
    def fail(
        self, rpc: str, status: str, message: str = "", *, times: int = 1, after: bool = False
    ) -> None:
        """Answer the next ``times`` calls of ``rpc`` with gRPC status ``status`` (its name,
        e.g. ``UNAUTHENTICATED``), after acting on them if ``after``."""
        with self.lock:
            self.faults.append(Fault(rpc, Status[status], message, times, after))

    def calls(self, rpc: str) -> list[Any]:
        """The requests of ``rpc``, in order."""
        with self.lock:
            return [c.request for c in self.calls_ if c.rpc == rpc]

    def rpcs(self) -> list[str]:
        with self.lock:
            return [c.rpc for c in self.calls_]

    def sandbox(self, sandbox_id: str | None = None) -> FakeSandbox:
        """The sandbox ``sandbox_id`` (default: the only one)."""
        if sandbox_id is None:
            (only,) = self.sandboxes.values()
            return only
        return self.sandboxes[sandbox_id]

    def forget(self, sandbox_id: str) -> None:
        """Modal no longer knows the sandbox (its record expired)."""
        with self.lock:
            sandbox = self.sandboxes.pop(sandbox_id)
        self._kill(sandbox)

    # --- dispatch ---------------------------------------------------------------------------
    def _fault(self, rpc: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.times > 0 and fault.rpc == rpc:
                    fault.times -= 1
                    return fault
        return None

    def _check_token(self, rpc: str, metadata: dict[str, str]) -> None:
        """The client's token on every call; V2 sandbox calls also carry an auth token."""
        if (
            metadata.get("x-modal-token-id") != self.token_id
            or metadata.get("x-modal-token-secret") != self.token_secret
        ):
            raise GRPCError(Status.UNAUTHENTICATED, "Token ID or secret is invalid")
        v2 = rpc.endswith("V2") or rpc == "SandboxGetCommandRouterAccess"
        if v2 and metadata.get("x-modal-auth-token") not in self.auth_tokens:
            raise GRPCError(Status.UNAUTHENTICATED, "missing or unknown auth token")

    def _check_router(self, rpc: str, metadata: dict[str, str]) -> None:
        """The task command router (a worker) takes the JWT the control plane handed out."""
        bearer = metadata.get("authorization", "").removeprefix("Bearer ")
        if bearer not in self.router_jwts:
            raise GRPCError(Status.UNAUTHENTICATED, "invalid router token")

    def _router_access(self, sandbox: FakeSandbox) -> Any:
        token = jwt({"task_id": sandbox.task_id, "exp": int(time.time()) + 3600})
        with self.lock:
            self.router_jwts.add(token)
        return api_pb2.CommandRouterAccess(url=self.url, jwt=token)

    # --- apps, environments, images ---------------------------------------------------------
    async def ClientHello(self, request: Any) -> Any:
        return api_pb2.ClientHelloResponse()

    async def AuthTokenGet(self, request: Any) -> Any:
        token = jwt({"sub": self.token_id, "exp": int(time.time()) + 3600})
        with self.lock:
            self.auth_tokens.add(token)
        return api_pb2.AuthTokenGetResponse(token=token)

    async def EnvironmentGetOrCreate(self, request: Any) -> Any:
        settings = api_pb2.EnvironmentSettings(image_builder_version="2025.06")
        return api_pb2.EnvironmentGetOrCreateResponse(
            environment_id="en-fake",
            metadata=api_pb2.EnvironmentMetadata(
                name=request.deployment_name or "main", settings=settings
            ),
        )

    async def AppGetOrCreate(self, request: Any) -> Any:
        key = (request.environment_name or "main", request.app_name)
        with self.lock:
            app_id = self.apps.setdefault(key, new_id("ap"))
        return api_pb2.AppGetOrCreateResponse(app_id=app_id)

    async def ImageGetOrCreate(self, request: Any) -> Any:
        image_id = new_id("im")
        with self.lock:
            self.images[image_id] = request.image
        return api_pb2.ImageGetOrCreateResponse(image_id=image_id)  # no result: being built

    async def ImageJoinStreaming(self, request: Any):
        log = api_pb2.TaskLogs(data=f"building image {request.image_id}\n", file_descriptor=1)
        yield api_pb2.ImageJoinStreamingResponse(task_logs=[log], entry_id="1")
        if self.image_build_error:
            result = api_pb2.GenericResult(status=FAILURE, exception=self.image_build_error)
        else:
            result = api_pb2.GenericResult(status=OK)
        yield api_pb2.ImageJoinStreamingResponse(result=result, entry_id="2", eof=True)

    # --- local files ------------------------------------------------------------------------
    async def MountBatchedCheckExistence(self, request: Any) -> Any:
        with self.lock:
            missing = [h for h in request.sha256_hex_hashes if h not in self.files]
        return api_pb2.MountBatchedCheckExistenceResponse(missing_sha256_hex_hashes=missing)

    async def BlobCreate(self, request: Any) -> Any:
        blob_id = new_id("bl")
        url = f"{self.blob_store.url}/blob/{blob_id}"
        return api_pb2.BlobCreateResponse(
            blob_ids=[blob_id], upload_urls=api_pb2.UploadUrlList(items=[url])
        )

    async def MountPutFile(self, request: Any) -> Any:
        if request.data_blob_id:
            data = self.blob_store.blobs.get(request.data_blob_id)
            if data is None:
                raise GRPCError(Status.NOT_FOUND, f"no blob {request.data_blob_id}")
        else:
            data = request.data
        if hashlib.sha256(data).hexdigest() != request.sha256_hex:
            raise GRPCError(Status.INVALID_ARGUMENT, "sha256 does not match the data")
        with self.lock:
            self.files[request.sha256_hex] = data
        return api_pb2.MountPutFileResponse(exists=True)

    async def MountGetOrCreate(self, request: Any) -> Any:
        with self.lock:
            missing = [f.filename for f in request.files if f.sha256_hex not in self.files]
            if missing:
                raise GRPCError(Status.FAILED_PRECONDITION, f"files never uploaded: {missing}")
            mount_id = new_id("mo")
            self.mounts[mount_id] = list(request.files)
        return api_pb2.MountGetOrCreateResponse(mount_id=mount_id)

    # --- sandboxes --------------------------------------------------------------------------
    def _get(self, sandbox_id: str) -> FakeSandbox:
        with self.lock:
            sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is None:
            raise GRPCError(Status.NOT_FOUND, f"Sandbox {sandbox_id} not found")
        return sandbox

    def _create(self, request: Any, version: int) -> FakeSandbox:
        definition = request.definition
        gpu = definition.resources.gpu_config
        if gpu.gpu_type and gpu.gpu_type.upper() not in GPU_TYPES:
            raise GRPCError(Status.INVALID_ARGUMENT, f"Unknown GPU type: {gpu.gpu_type}")
        if gpu.gpu_type and gpu.gpu_type.upper() in self.no_capacity:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"No capacity for {gpu.count} x {gpu.gpu_type} right now in this workspace",
            )
        if definition.image_id not in self.images:
            raise GRPCError(Status.NOT_FOUND, f"Image {definition.image_id} not found")
        tags = {t.tag_name: t.tag_value for t in request.tags}
        with self.lock:
            if definition.name and any(
                s.name == definition.name and s.app_id == request.app_id and s.running
                for s in self.sandboxes.values()
            ):
                raise GRPCError(
                    Status.ALREADY_EXISTS,
                    f"Sandbox with name '{definition.name}' already exists in the app",
                )
            sandbox_id = new_id("sb") if version == 1 else new_id("sb", 26)
            sandbox = FakeSandbox(sandbox_id, request.app_id, definition, tags, version)
            sandbox.task_id = new_id("ta")
            self.sandboxes[sandbox.id] = sandbox
        threading.Thread(
            target=self._run, args=(sandbox,), name=f"fake-modal-{sandbox.id}", daemon=True
        ).start()
        return sandbox

    async def SandboxCreate(self, request: Any) -> Any:
        return api_pb2.SandboxCreateResponse(sandbox_id=self._create(request, 1).id)

    async def SandboxCreateV2(self, request: Any) -> Any:
        if request.definition.resources.gpu_config.count:
            raise GRPCError(Status.INVALID_ARGUMENT, "V2 sandboxes have no GPUs")
        sandbox = self._create(request, 2)
        return api_pb2.SandboxCreateV2Response(
            sandbox_id=sandbox.id,
            task_id=sandbox.task_id,
            command_router_access=self._router_access(sandbox),
        )

    async def SandboxGetTaskId(self, request: Any) -> Any:
        sandbox = self._get(request.sandbox_id)
        deadline = time.monotonic() + 5
        while sandbox.process is None and sandbox.running and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if sandbox.process is None and sandbox.result is not None:
            return api_pb2.SandboxGetTaskIdResponse(task_result=sandbox.result)
        if sandbox.process is None:
            return api_pb2.SandboxGetTaskIdResponse()  # not scheduled yet: asked again
        return api_pb2.SandboxGetTaskIdResponse(task_id=sandbox.task_id)

    SandboxGetTaskIdV2 = SandboxGetTaskId

    async def SandboxGetCommandRouterAccess(self, request: Any) -> Any:
        if request.sandbox_id:
            sandbox = self._get(request.sandbox_id)
        else:
            with self.lock:
                found = [s for s in self.sandboxes.values() if s.task_id == request.task_id]
            if not found:
                raise GRPCError(Status.NOT_FOUND, f"Task {request.task_id} not found")
            sandbox = found[0]
        access = self._router_access(sandbox)
        return api_pb2.SandboxGetCommandRouterAccessResponse(url=access.url, jwt=access.jwt)

    async def SandboxWait(self, request: Any) -> Any:
        sandbox = self._get(request.sandbox_id)
        deadline = time.monotonic() + min(request.timeout, 10.0)
        while sandbox.result is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if sandbox.result is None:
            return api_pb2.SandboxWaitResponse()
        return api_pb2.SandboxWaitResponse(result=sandbox.result)

    SandboxWaitV2 = SandboxWait

    async def SandboxGetLogs(self, request: Any):
        sandbox = self._get(request.sandbox_id)
        fd = request.file_descriptor or STDOUT
        sent = int(request.last_entry_id or 0)
        hold = min(request.timeout or 55.0, self.log_hold_seconds)
        deadline = time.monotonic() + hold
        while True:
            ended = sandbox.ended
            with sandbox.lock:
                entries = sandbox.logs[fd][sent:]
            if entries:
                sent += len(entries)
                items = [api_pb2.TaskLogs(data=text, file_descriptor=fd) for text in entries]
                yield api_pb2.TaskLogsBatch(
                    entry_id=str(sent), items=items, task_id=sandbox.task_id
                )
                continue
            if ended:
                yield api_pb2.TaskLogsBatch(entry_id=str(sent), eof=True)
                return
            if time.monotonic() > deadline:
                return  # the client asks again from last_entry_id
            await asyncio.sleep(0.02)

    async def SandboxTerminate(self, request: Any) -> Any:
        sandbox = self._get(request.sandbox_id)
        existing = sandbox.result
        if sandbox.finish(api_pb2.GenericResult(status=TERMINATED)):
            self._kill(sandbox)
        return api_pb2.SandboxTerminateResponse(existing_result=existing)

    SandboxTerminateV2 = SandboxTerminate

    async def SandboxGetFromName(self, request: Any, version: int = 1) -> Any:
        app_id = self.apps.get((request.environment_name or "main", request.app_name))
        with self.lock:
            found = [
                s
                for s in self.sandboxes.values()
                if s.name == request.sandbox_name
                and s.app_id == app_id
                and s.running
                and s.version == version
            ]
        if not found:
            raise GRPCError(
                Status.NOT_FOUND,
                f"Sandbox with name '{request.sandbox_name}' not found in app '{request.app_name}'",
            )
        return api_pb2.SandboxGetFromNameResponse(sandbox_id=found[0].id)

    async def SandboxGetFromNameV2(self, request: Any) -> Any:
        return await self.SandboxGetFromName(request, version=2)

    # --- the task command router (a worker's own API) ---------------------------------------
    async def SandboxStdioReadV2(self, request: Any):
        """A V2 sandbox's stdout or stderr from byte ``offset``, live until it ends."""
        with self.lock:
            found = [s for s in self.sandboxes.values() if s.task_id == request.task_id]
        if not found:
            raise GRPCError(Status.NOT_FOUND, f"Task {request.task_id} not found")
        sandbox = found[0]
        stderr = task_command_router_pb2.SANDBOX_STDIO_FILE_DESCRIPTOR_STDERR
        fd = STDERR if request.file_descriptor == stderr else STDOUT
        offset = request.offset
        while True:
            ended = sandbox.ended
            with sandbox.lock:
                chunk = bytes(sandbox.data[fd][offset:])
            if chunk:
                yield task_command_router_pb2.SandboxStdioReadV2Response(
                    data=chunk, starting_offset=offset
                )
                offset += len(chunk)
                continue
            if ended:
                return
            await asyncio.sleep(0.02)

    # --- running a sandbox ------------------------------------------------------------------
    def _run(self, sandbox: FakeSandbox) -> None:
        """Like a worker: the container's filesystem (the mounts' files) in a folder, the
        command run there with this machine's Python."""
        definition = sandbox.definition
        root = sandbox.root = self.workdir / sandbox.id
        (root / "root").mkdir(parents=True)
        tops = {"/root"}
        for mount_id in definition.mount_ids:
            for mount_file in self.mounts[mount_id]:
                path = root / mount_file.filename.lstrip("/")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(self.files[mount_file.sha256_hex])
                if mount_file.mode:
                    path.chmod(mount_file.mode & 0o777)
                tops.add("/" + mount_file.filename.lstrip("/").split("/")[0])

        def local(arg: str) -> str:
            if arg == "python":
                return sys.executable
            if any(arg == top or arg.startswith(top + "/") for top in tops):
                return str(root / arg.lstrip("/"))
            return arg

        command = [local(arg) for arg in definition.entrypoint_args]
        environ = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
        environ.update(
            HOME=str(root / "root"),
            MODAL_SANDBOX_ID=sandbox.id,
            MODAL_TASK_ID=sandbox.task_id,
            PYTHONUNBUFFERED="1",
        )
        workdir = local(definition.workdir) if definition.workdir else str(root / "root")
        if sandbox.result is not None:  # terminated before it started
            return
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        sandbox.process = process
        sandbox.pumps = [
            threading.Thread(target=self._pump, args=(sandbox, process.stdout, STDOUT)),
            threading.Thread(target=self._pump, args=(sandbox, process.stderr, STDERR)),
        ]
        for pump in sandbox.pumps:
            pump.daemon = True
            pump.start()
        timer = None
        if definition.timeout_secs:
            timer = threading.Timer(definition.timeout_secs, self._expire, args=(sandbox,))
            timer.daemon = True
            timer.start()
        code = process.wait()
        for pump in sandbox.pumps:
            pump.join(10)
        if timer is not None:
            timer.cancel()
        status = OK if code == 0 else FAILURE
        sandbox.finish(api_pb2.GenericResult(status=status, exitcode=code))

    @staticmethod
    def _pump(sandbox: FakeSandbox, pipe: Any, fd: int) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            chunk = os.read(pipe.fileno(), 4096)
            if not chunk:
                break
            sandbox.write(fd, decoder.decode(chunk), chunk)
        sandbox.write(fd, decoder.decode(b"", final=True), b"")

    def _expire(self, sandbox: FakeSandbox) -> None:
        if sandbox.finish(api_pb2.GenericResult(status=TIMEOUT, exception="Sandbox timed out")):
            self._kill(sandbox)

    @staticmethod
    def _kill(sandbox: FakeSandbox) -> None:
        process = sandbox.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)


class _Dispatch:
    """The servicer grpclib serves: every RPC of Modal's API, each call recorded, checked
    for the token and for injected faults, then answered by ``FakeModal``'s method of the
    same name (an ``async def`` for unary answers, an async generator for streams)."""

    def __init__(self, fake: FakeModal, servicer: Any, check: Any) -> None:
        self.fake = fake
        self.check = check
        self.mapping = {
            path: self._wrap(path.rsplit("/", 1)[1], handler)
            for path, handler in servicer.__mapping__().items()
        }

    def __mapping__(self) -> dict[str, Handler]:
        return self.mapping

    def _wrap(self, rpc: str, handler: Handler) -> Handler:
        fake = self.fake
        streaming_in = handler.cardinality in (Cardinality.STREAM_UNARY, Cardinality.STREAM_STREAM)

        async def serve(stream: Any) -> None:
            request = None if streaming_in else await stream.recv_message()
            metadata = {k: v for k, v in (stream.metadata or {}).items() if isinstance(v, str)}
            with fake.lock:
                fake.calls_.append(Call(rpc, request, metadata))
            self.check(rpc, metadata)
            method = getattr(fake, rpc, None)
            if method is None or streaming_in:
                with fake.lock:
                    fake.unexpected.append(rpc)
                raise GRPCError(Status.UNIMPLEMENTED, f"the fake Modal API does not serve {rpc}")
            fault = fake._fault(rpc)
            if fault is not None and not fault.after:
                raise GRPCError(fault.status, fault.message)
            if handler.cardinality is Cardinality.UNARY_STREAM:
                async for reply in method(request):
                    await stream.send_message(reply)
            else:
                reply = await method(request)
                if fault is not None:
                    raise GRPCError(fault.status, fault.message)
                await stream.send_message(reply)

        return Handler(serve, handler.cardinality, handler.request_type, handler.reply_type)
