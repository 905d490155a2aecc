"""A local fake of Azure Machine Learning for the real ``azure-ai-ml`` ``MLClient``.

What the SDK talks to, over the wire formats it expects:

* ARM (HTTPS, bearer token checked): the workspace, its discovery document, code assets
  (``versions?hash=``, ``startPendingUpload`` with a SAS URL, ``PUT`` of the version),
  ``PUT``/``GET`` of jobs (the stored body echoed back with ``status`` and the ``default``
  artifact output), ``POST .../jobs/NAME/cancel``, datastores and ``listSecrets``;
* run history (same host, from the discovery document): run details with ``logFiles`` SAS
  URLs and the run's error, and ``rundata``;
* Blob storage: SAS URLs on a plain-HTTP port (code upload, ``std_log.txt`` with range
  requests), and the workspace's storage account ``https://ACCOUNT.blob.<storage_endpoint>``
  reached through this fake as an HTTPS proxy (``CONNECT``, then TLS with a certificate from
  a throw-away CA), as ``jobs.download`` addresses it.

The SDK requires HTTPS for bearer tokens; ``FakeAzureML.client_options()`` gives the
``MLClient`` keywords (``cloud="LocalFake"``, ``cloud_metadata``, ``connection_verify``) and
``environment()`` the proxy/CA variables for the storage client the SDK builds itself.

A job runs a ``Script`` (statuses, log lines, outputs) or, with ``execute=True``, its real
command on this machine in the uploaded code folder (``python`` is this interpreter). A job
with ``resources.instanceCount`` N and a ``PyTorch`` distribution of P processes per
instance runs its command N × P times, each instance in a code folder of its own, with the
variables Azure ML sets (``MASTER_ADDR`` 127.0.0.1, ``MASTER_PORT``, ``NODE_RANK``, ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``) and a log per process (``user_logs/std_log_process_R.txt``);
a failed process fails the job and stops the others, cancel stops them all.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

PREFIX = (
    "/subscriptions/{sub}/resourceGroups/{rg}/providers/"
    "Microsoft.MachineLearningServices/workspaces/{ws}"
)
STORAGE_ENDPOINT = "storage.fake.invalid"  # never resolvable: only the proxy reaches it
ACCOUNT = "fakeaccount"
ARTIFACT_CONTAINER = "azureml"
PRE_RUN = ("NotStarted", "Queued", "Preparing", "Starting")


@dataclass
class Script:
    """A scripted job: waits through ``statuses``, prints ``lines``, exits ``exit_code``."""

    lines: list[str] = field(default_factory=list)
    exit_code: int = 0
    outputs: dict[str, bytes] = field(default_factory=dict)
    statuses: tuple[str, ...] = PRE_RUN
    hold: threading.Event | None = None
    line_seconds: float = 0.003


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    host: str = ""
    status: int = 0


@dataclass
class Failure:
    method: str
    pattern: str
    status: int
    code: str
    message: str
    times: int = 1
    after: bool = False


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 and the fake storage hosts."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "neural-jupyter test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [
        x509.DNSName("localhost"),
        x509.DNSName(f"*.blob.{STORAGE_ENDPOINT}"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(cert.public_bytes(pem))
    paths[2].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def fake_jwt(secret: str, tenant: str = "00000000-0000-0000-0000-00000000beef") -> str:
    """An (unsigned) token shaped like Entra ID's: the SDK reads the tenant id from it."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    claims = {"tid": tenant, "aud": "https://management.azure.com/", "nonce": secret}
    signature = base64.urlsafe_b64encode(secret.encode()).decode().rstrip("=")
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.{signature}"


class StandInCredential:
    """A ``TokenCredential`` handing out a fixed token (what ``DefaultAzureCredential`` would
    get from Entra ID)."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        from azure.core.credentials import AccessTokenInfo

        self.scopes.append(scopes)
        return AccessTokenInfo(self.token, int(time.time()) + 3600)


class FakeJob:
    def __init__(self, name: str, body: dict[str, Any]) -> None:
        self.name = name
        self.body = body
        self.status = "NotStarted"
        self.log = bytearray()  # std_log.txt, or process 0's log in a distributed job
        self.logs: dict[str, bytearray] = {}  # log file name -> its bytes (distributed)
        self.error: dict[str, Any] | None = None
        self.cancelled = threading.Event()
        self.process: subprocess.Popen | None = None
        self.processes: list[subprocess.Popen] = []  # every process of every instance
        self.observed = 0

    @property
    def distribution(self) -> dict[str, Any] | None:
        return self.body["properties"].get("distribution")

    def log_files(self) -> list[str]:
        return list(self.logs) if self.logs else ["user_logs/std_log.txt"]

    def log_of(self, name: str) -> bytes:
        return bytes(self.logs[name]) if name in self.logs else bytes(self.log)


class FakeAzureML:
    def __init__(self, secret: str = "fake-aad-signature-0123456789") -> None:
        self.token = fake_jwt(secret)
        self.sub, self.rg, self.ws = "sub-0001", "rg-ml", "ws"
        self.prefix = PREFIX.format(sub=self.sub, rg=self.rg, ws=self.ws)
        self.execute = False
        self.script = Script(lines=['{"event": "start", "epochs": 1}'])
        self.requests: list[Recorded] = []
        self.failures: list[Failure] = []
        self.jobs: dict[str, FakeJob] = {}
        self.codes: dict[str, dict[str, Any]] = {}
        self.blobs: dict[tuple[str, str, str], tuple[bytes, dict[str, str]]] = {}
        self.lock = threading.RLock()
        self.workdir = Path(tempfile.mkdtemp(prefix="fake-azureml-"))
        self.ca, cert, key = make_certificates(self.workdir)
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(cert, key)
        handler = self._handler()
        tls = self.tls

        class TLSServer(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> tuple[socket.socket, Any]:
                sock, address = super().get_request()
                return tls.wrap_socket(sock, server_side=True), address

        self.arm = TLSServer(("127.0.0.1", 0), handler)
        self.plain = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.plain.daemon_threads = True
        self.threads = [
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            for s in (self.arm, self.plain)
        ]

    # --- lifecycle and wiring -----------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.arm.server_address[1]}"

    @property
    def plain_url(self) -> str:
        return f"http://127.0.0.1:{self.plain.server_address[1]}"

    def __enter__(self) -> FakeAzureML:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        for job in self.jobs.values():
            job.cancelled.set()
            for process in job.processes:
                if process.poll() is None:
                    process.kill()
        for server in (self.arm, self.plain):
            server.shutdown()
            server.server_close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def client_options(self) -> dict[str, Any]:
        endpoint = self.endpoint + "/"
        return {
            # the SDK keeps clouds in a process-wide table and never overwrites one: a fresh
            # name per fake, so a later fake's endpoints are not shadowed by an earlier one's
            "cloud": f"LocalFake{self.arm.server_address[1]}",
            "cloud_metadata": {
                "azure_portal": endpoint,
                "resource_manager": endpoint,
                "active_directory": endpoint,
                "aml_resource_id": endpoint,
                "storage_endpoint": STORAGE_ENDPOINT,
                "registry_discovery_endpoint": endpoint,
            },
            "connection_verify": str(self.ca),
        }

    def environment(self) -> dict[str, str]:
        """For the storage client the SDK makes on its own: this fake as its HTTPS proxy."""
        return {
            "HTTPS_PROXY": self.plain_url,
            "https_proxy": self.plain_url,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "REQUESTS_CA_BUNDLE": str(self.ca),
        }

    def fail(
        self,
        method: str,
        pattern: str,
        status: int,
        message: str,
        *,
        code: str = "UserError",
        times: int = 1,
        after: bool = False,
    ) -> None:
        self.failures.append(Failure(method, pattern, status, code, message, times, after))

    def calls(self, method: str, pattern: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    def cancel_from_studio(self, name: str) -> None:
        self._cancel(self.jobs[name], None)

    # --- jobs ---------------------------------------------------------------------------------
    def _job_json(self, job: FakeJob) -> dict[str, Any]:
        body = json.loads(json.dumps(job.body))
        props = body.setdefault("properties", {})
        props["status"] = job.status
        props.setdefault("outputs", {})
        props["outputs"]["default"] = {
            "jobOutputType": "uri_folder",
            "mode": "ReadWriteMount",
            "uri": f"azureml://datastores/workspaceartifactstore/ExperimentRun/dcid.{job.name}",
        }
        props["services"] = {
            "Studio": {
                "jobServiceType": "Studio",
                "endpoint": f"https://ml.azure.com/runs/{job.name}?wsid={self.prefix}",
            }
        }
        body.update(
            id=f"{self.prefix}/jobs/{job.name}",
            name=job.name,
            type="Microsoft.MachineLearningServices/workspaces/jobs",
        )
        return body

    def _start(self, job: FakeJob) -> None:
        target = self._execute if self.execute else self._run_script
        threading.Thread(target=target, args=(job,), daemon=True).start()

    def _advance(self, job: FakeJob, statuses: tuple[str, ...]) -> bool:
        """Walk the pre-run statuses, each lasting until a client has seen it once."""
        for status in statuses:
            if job.cancelled.is_set():
                return False
            job.status = status
            seen = job.observed
            while job.observed == seen and not job.cancelled.is_set():
                time.sleep(0.005)
        return not job.cancelled.is_set()

    def _timeout(self, job: FakeJob) -> float | None:
        seconds = (job.body["properties"].get("limits") or {}).get("timeout")
        if isinstance(seconds, str):  # ISO 8601 "PT30M" / "PT1H" / "PT90S"
            match = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?", seconds)
            if match:
                h, m, s = (float(g) if g else 0.0 for g in match.groups())
                seconds = h * 3600 + m * 60 + s
        return time.monotonic() + float(seconds) if seconds else None

    def _finish(self, job: FakeJob, code: int, outputs: dict[str, bytes]) -> None:
        if job.cancelled.is_set():
            return
        job.status = "Finalizing"
        prefix = f"ExperimentRun/dcid.{job.name}"
        with self.lock:
            for name in job.log_files():
                self.blobs[(ACCOUNT, ARTIFACT_CONTAINER, f"{prefix}/{name}")] = (
                    job.log_of(name),
                    {},
                )
            for name, data in outputs.items():
                self.blobs[(ACCOUNT, ARTIFACT_CONTAINER, f"{prefix}/outputs/{name}")] = (data, {})
        time.sleep(0.02)
        if code == 0:
            job.status = "Completed"
        else:
            job.error = {
                "code": "UserError",
                "message": f"Execution failed. User process 'python' exited with status code "
                f"{code}. Please check log file 'user_logs/std_log.txt' for error details.",
            }
            job.status = "Failed"

    def _run_script(self, job: FakeJob) -> None:
        script = self.script
        if not self._advance(job, script.statuses):
            return
        job.status = "Running"
        deadline = self._timeout(job)
        for line in script.lines:
            if job.cancelled.is_set():
                return
            job.log.extend(line.encode() + b"\n")
            time.sleep(script.line_seconds)
        while script.hold is not None and not script.hold.is_set():
            if job.cancelled.is_set():
                return
            if deadline and time.monotonic() > deadline:
                self._cancel(
                    job, "The job exceeded its timeout limit (limits.timeout) and was canceled"
                )
                return
            time.sleep(0.01)
        self._finish(job, script.exit_code, dict(script.outputs))

    def _execute(self, job: FakeJob) -> None:
        """Run the job's command in the uploaded code folder (python = this interpreter):
        once, or once per process of every instance of a distributed job."""
        if not self._advance(job, PRE_RUN):
            return
        code_id = job.body["properties"]["codeId"]
        code = self.codes[code_id.split("/codes/", 1)[1].split("/versions/")[0]]
        uri = code["properties"]["codeUri"]
        _, account, container, prefix = urlsplit(uri).path.split("/", 3)
        with self.lock:
            files = {
                path[len(prefix) + 1 :]: data
                for (acc, con, path), (data, _) in self.blobs.items()
                if acc == account and con == container and path.startswith(prefix + "/")
            }
        props = job.body["properties"]
        instances = int((props.get("resources") or {}).get("instanceCount") or 1)
        per_instance = int((job.distribution or {}).get("processCountPerInstance") or 1)
        world = instances * per_instance
        folders = [self.workdir / "runs" / job.name]
        if instances > 1:
            folders = [self.workdir / "runs" / job.name / f"node-{i}" for i in range(instances)]
        for folder in folders:
            for relative, data in files.items():
                target = folder / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        env = {**os.environ, **(props.get("environmentVariables") or {})}
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        port = free_port()
        job.status = "Running"
        pumps = []
        for rank in range(world if job.distribution else 1):
            node, local = divmod(rank, per_instance)
            own = dict(env)
            if job.distribution:
                own.update(
                    MASTER_ADDR="127.0.0.1",
                    MASTER_PORT=str(port),
                    NODE_RANK=str(node),
                    RANK=str(rank),
                    LOCAL_RANK=str(local),
                    WORLD_SIZE=str(world),
                )
                log = job.logs.setdefault(f"user_logs/std_log_process_{rank}.txt", bytearray())
            else:
                log = job.log
            process = subprocess.Popen(
                ["bash", "-c", props["command"]],
                cwd=folders[node],
                env=own,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            job.processes.append(process)
            job.process = job.process or process
            pumps.append(threading.Thread(target=_pump, args=(process, log), daemon=True))
        if job.distribution:
            job.log = job.logs["user_logs/std_log_process_0.txt"]
        for pump in pumps:
            pump.start()
        failed = 0
        running = list(job.processes)
        while running:
            for process in list(running):
                code = process.poll()
                if code is None:
                    continue
                running.remove(process)
                if code and not failed:
                    failed = code
                    for other in running:  # a failed process ends the job
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(other.pid, 15)
            time.sleep(0.05)
        for pump in pumps:
            pump.join()
        outputs: dict[str, bytes] = {}
        for folder in reversed(folders):  # every instance's outputs/, instance 0's last
            outputs.update(
                {
                    str(p.relative_to(folder / "outputs")): p.read_bytes()
                    for p in sorted((folder / "outputs").rglob("*"))
                    if p.is_file()
                }
            )
        self._finish(job, failed, outputs)

    def _cancel(self, job: FakeJob, reason: str | None) -> None:
        job.cancelled.set()
        job.status = "CancelRequested"
        for process in job.processes:  # every process of every instance
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, 9)
        if reason:
            job.error = {"code": "UserError", "message": reason}

        def settle() -> None:
            time.sleep(0.05)
            job.status = "Canceled"

        threading.Thread(target=settle, daemon=True).start()

    def _datastore(self, name: str, default: bool) -> dict[str, Any]:
        return {
            "id": f"{self.prefix}/datastores/{name}",
            "name": name,
            "properties": {
                "datastoreType": "AzureBlob",
                "accountName": ACCOUNT,
                "containerName": ARTIFACT_CONTAINER,
                "endpoint": STORAGE_ENDPOINT,
                "protocol": "https",
                "credentials": {"credentialsType": "Sas"},
                "isDefault": default,
            },
        }

    # --- HTTP ---------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return None

            def _send(
                self, status: int, body: Any = b"", kind: str = "application/json", **headers
            ) -> None:
                data = json.dumps(body).encode() if not isinstance(body, bytes) else body
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("x-ms-request-id", str(uuid.uuid4()))
                for name, value in headers.items():
                    self.send_header(name.replace("_", "-"), value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                if fake.requests:
                    fake.requests[-1].status = status

            def _arm_error(self, status: int, code: str, message: str) -> None:
                self._send(status, {"error": {"code": code, "message": message}})

            def do_CONNECT(self) -> None:
                """The HTTPS proxy: a tunnel to the storage account, answered by this fake."""
                self.send_response(200, "Connection established")
                self.end_headers()
                self.wfile.flush()
                self.connection = fake.tls.wrap_socket(self.connection, server_side=True)
                self.rfile = self.connection.makefile("rb", self.rbufsize)
                self.wfile = self.connection.makefile("wb", 0)
                self.close_connection = False

            def _dispatch(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                host = (self.headers.get("Host") or "").split(":")[0]
                kind = self.headers.get("Content-Type") or ""
                body: Any = raw
                if raw and "json" in kind:
                    body = json.loads(raw)
                record = Recorded(self.command, url.path, parse_qs(url.query), body, host)
                fake.requests.append(record)
                if host.endswith(f".blob.{STORAGE_ENDPOINT}") or url.path.startswith(
                    f"/{ACCOUNT}/"
                ):
                    return self._blob(host, url, raw)
                if url.path.startswith("/logs/"):
                    return self._log_file(url)
                if url.path == "/discovery":  # fetched without a token, as Azure serves it
                    return self._arm(url, body)
                if self.headers.get("Authorization") != f"Bearer {fake.token}":
                    return self._arm_error(
                        401,
                        "InvalidAuthenticationToken",
                        "The access token is invalid or has expired.",
                    )
                for failure in fake.failures:
                    if (
                        failure.times > 0
                        and failure.method == self.command
                        and re.search(failure.pattern, url.path)
                    ):
                        failure.times -= 1
                        if failure.after:
                            self._arm(url, body, reply=False)
                        return self._arm_error(failure.status, failure.code, failure.message)
                self._arm(url, body)

            do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = _dispatch

            # --- ARM and run history ----------------------------------------------------------
            def _arm(self, url: Any, body: Any, reply: bool = True) -> None:
                path = url.path
                send = self._send if reply else (lambda *a, **k: None)
                error = self._arm_error if reply else (lambda *a: None)
                if path == "/discovery":
                    base = fake.endpoint
                    return send(
                        200,
                        {
                            k: base
                            for k in (
                                "api",
                                "catalog",
                                "experimentation",
                                "history",
                                "hyperdrive",
                                "labeling",
                                "modelmanagement",
                                "pipelines",
                            )
                        },
                    )
                if path == fake.prefix:
                    return send(
                        200,
                        {
                            "id": fake.prefix,
                            "name": fake.ws,
                            "location": "eastus",
                            "type": "Microsoft.MachineLearningServices/workspaces",
                            "properties": {
                                "discoveryUrl": f"{fake.endpoint}/discovery",
                                "workspaceId": "00000000-0000-0000-0000-000000000001",
                                "mlFlowTrackingUri": "azureml://eastus.api.azureml.ms/mlflow",
                            },
                        },
                    )
                history = f"/history/v1.0{fake.prefix}"
                m = re.fullmatch(re.escape(history) + r"/runs/([^/]+)/details", path)
                if m:
                    job = fake.jobs.get(m.group(1))
                    if job is None:
                        return error(404, "RunNotFound", f"run {m.group(1)} not found")
                    details: dict[str, Any] = {"runId": job.name, "status": job.status}
                    if job.status not in ("NotStarted", "Queued", "Preparing"):
                        logs = f"{fake.plain_url}/logs/{job.name}"
                        details["logFiles"] = {
                            name: f"{logs}/{name}?sv=2021-08-06&sr=b&sig=fakesig"
                            for name in job.log_files()
                        }
                    if job.error:
                        details["error"] = {"error": job.error}
                    return send(200, details)
                if path == history + "/rundata":
                    run = (body or {}).get("runId")
                    return send(200, {"runMetadata": {"runId": run, "outputs": {}}})
                if not path.startswith(fake.prefix + "/"):
                    return error(404, "NotFound", f"no resource at {path}")
                rest = path[len(fake.prefix) + 1 :]
                m = re.fullmatch(r"jobs/([^/]+)(/cancel)?", rest)
                if m:
                    name, cancel = m.groups()
                    job = fake.jobs.get(name)
                    if cancel:
                        if job is None:
                            return error(404, "UserError", f"job {name} not found")
                        fake._cancel(job, None)
                        return send(202, b"", "application/json")
                    if self.command == "PUT":
                        if job is not None:
                            return error(400, "UserError", f"A job with name {name} already exists")
                        job = FakeJob(name, body)
                        with fake.lock:
                            fake.jobs[name] = job
                        fake._start(job)
                        return send(201, fake._job_json(job))
                    if job is None:
                        return error(
                            404,
                            "UserError",
                            f"The specified resource name {name} was not found",
                        )
                    job.observed += 1
                    return send(200, fake._job_json(job))
                m = re.fullmatch(r"codes/([^/]+)/versions(?:/([^/]+)(/startPendingUpload)?)?", rest)
                if m:
                    name, version, pending = m.groups()
                    if version is None:
                        return send(200, {"value": []})
                    if pending:
                        folder = f"LocalUpload/{uuid.uuid4().hex}"
                        blob = f"{fake.plain_url}/{ACCOUNT}/code-{fake.ws}/{folder}"
                        return send(
                            200,
                            {
                                "blobReferenceForConsumption": {
                                    "blobUri": blob,
                                    "credential": {
                                        "credentialType": "SAS",
                                        "sasUri": blob + "?sv=2021-08-06&sr=c&sig=fakesas",
                                    },
                                },
                                "pendingUploadId": str(uuid.uuid4()),
                                "pendingUploadType": "TemporaryBlobReference",
                            },
                        )
                    if self.command == "PUT":
                        stored = {
                            **body,
                            "id": f"{fake.prefix}/codes/{name}/versions/{version}",
                            "name": version,
                            "type": "Microsoft.MachineLearningServices/workspaces/codes/versions",
                        }
                        fake.codes[name] = stored
                        return send(200, stored)
                    if name in fake.codes:
                        return send(200, fake.codes[name])
                    return error(404, "NotFound", f"code {name} not found")
                if rest == "datastores":  # the SDK looks up the default one (isDefault=true)
                    return send(200, {"value": [fake._datastore("workspaceblobstore", True)]})
                m = re.fullmatch(r"datastores/([^/]+)(/listSecrets)?", rest)
                if m:
                    name, secrets = m.groups()
                    if secrets:
                        return send(200, {"secretsType": "Sas", "sasToken": "sv=2021&sig=fakesas"})
                    return send(200, fake._datastore(name, name == "workspaceblobstore"))
                return error(404, "NotFound", f"no resource at {path}")

            # --- storage ----------------------------------------------------------------------
            def _log_file(self, url: Any) -> None:
                _, _, name, file = url.path.split("/", 3)
                job = fake.jobs.get(name)
                if job is None or job.status in ("NotStarted", "Queued", "Preparing"):
                    return self._send(404, b"", "application/xml", x_ms_error_code="BlobNotFound")
                data = job.log_of(file)
                wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if wanted:
                    start = int(wanted.group(1))
                    if start >= len(data):
                        return self._send(416, b"", "application/xml")
                    return self._send(
                        206,
                        data[start:],
                        "text/plain",
                        Content_Range=f"bytes {start}-{len(data) - 1}/{len(data)}",
                    )
                return self._send(200, data, "text/plain")

            def _blob(self, host: str, url: Any, raw: bytes) -> None:
                query = parse_qs(url.query)
                parts = unquote(url.path).lstrip("/").split("/")
                if host.endswith(f".blob.{STORAGE_ENDPOINT}"):
                    account = host.split(".")[0]
                else:
                    account, parts = parts[0], parts[1:]
                container, path = parts[0], "/".join(parts[1:])
                key = (account, container, path)
                stamp = formatdate(usegmt=True)
                if query.get("comp") == ["list"]:
                    return self._listing(account, container, query)
                if self.command == "PUT":
                    if query.get("comp") == ["metadata"]:
                        data, _ = fake.blobs.get(key, (b"", {}))
                        meta = {
                            k[len("x-ms-meta-") :]: v
                            for k, v in self.headers.items()
                            if k.lower().startswith("x-ms-meta-")
                        }
                        fake.blobs[key] = (data, meta)
                        return self._send(
                            200, b"", "application/xml", ETag='"0x1"', Last_Modified=stamp
                        )
                    fake.blobs[key] = (raw, {})
                    return self._send(
                        201, b"", "application/xml", ETag='"0x1"', Last_Modified=stamp
                    )
                if key not in fake.blobs:
                    return self._send(404, b"", "application/xml", x_ms_error_code="BlobNotFound")
                data, _ = fake.blobs[key]
                headers = {
                    "ETag": '"0x1"',
                    "Last_Modified": stamp,
                    "x_ms_blob_type": "BlockBlob",
                    "x_ms_version": "2021-08-06",
                }
                wanted = re.fullmatch(
                    r"bytes=(\d+)-(\d+)?",
                    self.headers.get("x-ms-range") or self.headers.get("Range") or "",
                )
                if wanted and not data:  # as the service: an empty blob has no range
                    return self._send(416, b"", "application/xml", x_ms_error_code="InvalidRange")
                if wanted and data:
                    start = int(wanted.group(1))
                    end = min(int(wanted.group(2) or len(data) - 1), len(data) - 1)
                    headers["Content_Range"] = f"bytes {start}-{end}/{len(data)}"
                    return self._send(
                        206, data[start : end + 1], "application/octet-stream", **headers
                    )
                return self._send(200, data, "application/octet-stream", **headers)

            def _listing(self, account: str, container: str, query: dict) -> None:
                prefix = (query.get("prefix") or [""])[0]
                stamp = formatdate(usegmt=True)
                items = sorted(
                    (path, data)
                    for (acc, con, path), (data, _) in fake.blobs.items()
                    if acc == account and con == container and path.startswith(prefix)
                )
                blobs = "".join(
                    f"<Blob><Name>{escape(path)}</Name><Properties>"
                    f"<Last-Modified>{stamp}</Last-Modified><Etag>0x1</Etag>"
                    f"<Content-Length>{len(data)}</Content-Length>"
                    f"<Content-Type>application/octet-stream</Content-Type>"
                    f"<BlobType>BlockBlob</BlobType></Properties><Metadata /></Blob>"
                    for path, data in items
                )
                xml = (
                    '<?xml version="1.0" encoding="utf-8"?><EnumerationResults '
                    f'ServiceEndpoint="https://{account}.blob.{STORAGE_ENDPOINT}/" '
                    f'ContainerName="{container}"><Prefix>{escape(prefix)}</Prefix>'
                    f"<Blobs>{blobs}</Blobs><NextMarker /></EnumerationResults>"
                )
                self._send(200, xml.encode(), "application/xml")

        return Handler


def _pump(process: subprocess.Popen, log: bytearray) -> None:
    assert process.stdout is not None
    for line in iter(process.stdout.readline, b""):
        log.extend(line)


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
