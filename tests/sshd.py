"""Real SSH servers on 127.0.0.1 for the ssh backend tests (nothing leaves the machine).

* ``AsyncSSHServer``: an asyncssh server in a thread of the test process; commands really run
  (``/bin/sh -c`` in a subprocess, output streamed back), SFTP serves the real file system.
  Starts in milliseconds; counts connections and password attempts.
* ``OpenSSHServer``: ``/usr/sbin/sshd`` with a throw-away config, for real sessions, process
  groups and dropped connections (``kill_sessions``).
* ``FlakyProxy``: a TCP forwarder that resets its first connections (transient faults).
* ``fake_bundle``: a bundle whose ``train.py`` speaks the event protocol with the standard
  library only (fast, scriptable: epochs, delay, child processes, failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from neural_jupyter.runtime.bundle import Bundle

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_client_key(directory: Path, name: str = "id_ed25519") -> Path:
    """An unencrypted ed25519 key pair (``name`` and ``name.pub``) in OpenSSH format."""
    import asyncssh

    directory.mkdir(parents=True, exist_ok=True)
    key = asyncssh.generate_private_key("ssh-ed25519", comment="neural-jupyter-test")
    path = directory / name
    key.write_private_key(str(path))
    key.write_public_key(str(path) + ".pub")
    path.chmod(0o600)
    return path


def known_hosts_line(port: int, public_key_line: str, host: str = "127.0.0.1") -> str:
    fields = public_key_line.split()
    return f"[{host}]:{port} {fields[0]} {fields[1]}\n"


# --- asyncssh ---------------------------------------------------------------------------------
class AsyncSSHServer:
    """An in-process SSH server whose commands run for real (see the module docstring)."""

    def __init__(self, directory: Path, authorized_keys: Path, passwords: dict | None = None):
        import asyncssh

        self.directory = directory
        self.authorized_keys = authorized_keys
        self.passwords = dict(passwords or {})
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.connections = 0
        self.password_attempts = 0
        self.commands: list[str] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server = None

    @property
    def public_key_line(self) -> str:
        return self.host_key.export_public_key().decode()

    def known_hosts_line(self) -> str:
        return known_hosts_line(self.port, self.public_key_line)

    def start(self) -> AsyncSSHServer:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        self._server = future.result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _start(self):
        import asyncssh

        owner = self

        class Server(asyncssh.SSHServer):
            def connection_made(self, conn) -> None:
                owner.connections += 1

            def password_auth_supported(self) -> bool:
                return bool(owner.passwords)

            def validate_password(self, username: str, password: str) -> bool:
                owner.password_attempts += 1
                return owner.passwords.get(username) == password

        return await asyncssh.create_server(
            Server,
            "127.0.0.1",
            0,
            server_host_keys=[self.host_key],
            authorized_client_keys=str(self.authorized_keys),
            process_factory=self._run,
            sftp_factory=True,
            encoding=None,
            allow_scp=False,
        )

    async def _run(self, process) -> None:
        command = process.command or "true"
        self.commands.append(command)
        child = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(self.directory),
        )

        async def pump(reader, writer) -> None:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                writer.write(chunk)

        await asyncio.gather(pump(child.stdout, process.stdout), pump(child.stderr, process.stderr))
        process.exit(await child.wait())

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


# --- OpenSSH ----------------------------------------------------------------------------------
class OpenSSHServer:
    """``sshd -D`` on a free port with its own host key and authorized key (see TESTING.md)."""

    def __init__(self, directory: Path, authorized_key: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.host_key = directory / "ssh_host_ed25519_key"
        self.log = directory / "sshd.log"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)],
            check=True,
        )
        authorized = directory / "authorized_keys"
        shutil.copy(str(authorized_key) + ".pub", authorized)
        authorized.chmod(0o600)
        self.config = directory / "sshd_config"
        self.config.write_text(
            textwrap.dedent(f"""\
                Port {self.port}
                ListenAddress 127.0.0.1
                HostKey {self.host_key}
                AuthorizedKeysFile {authorized}
                PasswordAuthentication no
                KbdInteractiveAuthentication no
                PubkeyAuthentication yes
                PermitRootLogin prohibit-password
                UsePAM no
                StrictModes no
                Subsystem sftp internal-sftp
                PidFile {directory / "sshd.pid"}
                LogLevel VERBOSE
                MaxStartups 100
                MaxSessions 100
                """)
        )
        self.process: subprocess.Popen | None = None

    @property
    def public_key_line(self) -> str:
        return Path(str(self.host_key) + ".pub").read_text()

    def known_hosts_line(self) -> str:
        return known_hosts_line(self.port, self.public_key_line)

    def start(self) -> OpenSSHServer:
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [SSHD, "-D", "-f", str(self.config), "-E", str(self.log)],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log.read_text()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock,
            ):
                if sock.recv(64).startswith(b"SSH-"):
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"sshd did not start: {self.log.read_text()}")

    def kill_sessions(self) -> int:
        """SIGKILL every process serving a connection (the listener stays): every client's
        connection drops at once. Returns how many processes were killed."""
        assert self.process is not None
        victims = descendants(self.process.pid)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(victims)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill_sessions()
            self.process.terminate()
            self.process.wait(5)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def live_processes(session: int) -> list[str]:
    """``ps`` lines of the live (non-zombie) processes of a session or process group."""
    out = subprocess.run(
        ["ps", "-eo", "pid=,pgid=,sid=,stat=,args="], capture_output=True, text=True, check=True
    ).stdout
    lines = []
    for line in out.splitlines():
        fields = line.split(None, 4)
        member = len(fields) >= 4 and session in (int(fields[1]), int(fields[2]))
        if member and not fields[3].startswith("Z"):
            lines.append(line)
    return lines


# --- a flaky network ----------------------------------------------------------------------------
class FlakyProxy:
    """Forwards 127.0.0.1:port to ``target``; resets the first ``failures`` connections."""

    def __init__(self, target_port: int, failures: int = 0) -> None:
        self.target_port = target_port
        self.failures = failures
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            if self.connections <= self.failures:
                # RST instead of FIN: what a dropped route or a restarting daemon looks like
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()


# --- bundles ----------------------------------------------------------------------------------
FAKE_TRAIN = '''\
"""A stand-in train.py: the event protocol with the standard library only."""
import json, signal, subprocess, sys, time
from pathlib import Path

job = json.loads(Path(sys.argv[sys.argv.index("--job") + 1]).read_text())
out = Path(job.get("output_dir", "output"))
out.mkdir(exist_ok=True)
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append("TERM"))
if job.get("runs_file"):
    with open(job["runs_file"], "a") as handle:
        handle.write(f"{Path.cwd()}\\n")


def emit(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


def finish(code):
    (out / "status.json").write_text(json.dumps({"exit_code": code}))
    sys.exit(code)


children = [
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    for _ in range(job.get("children", 0))
]
emit("start", epochs=job["epochs"], pid=__import__("os").getpid())
history = []
started = time.monotonic()
for epoch in range(1, job["epochs"] + 1):
    if time.monotonic() - started > 120:  # never outlive a failed test by long
        finish(3)
    if stop:
        print("stopping on SIGTERM", file=sys.stderr, flush=True)
        finish(143)
    time.sleep(job.get("delay", 0.0))
    if job.get("fail_at") == epoch:
        emit("error", type="RuntimeError", message="boom at epoch %d" % epoch)
        print("Traceback: RuntimeError: boom", file=sys.stderr, flush=True)
        finish(1)
    metrics = {"loss": round(1.0 / epoch, 4)}
    history.append({"epoch": epoch, **metrics})
    emit("epoch", epoch=epoch, epochs=job["epochs"], metrics=metrics)
    print(f"epoch {epoch} done", file=sys.stderr, flush=True)
(out / "model.pt").write_bytes(b"weights" * 100)
(out / "history.json").write_text(json.dumps(history))
for name, file in (("weights", "model.pt"), ("history", "history.json")):
    emit("artifact", name=name, path=f"output/{file}", bytes=(out / file).stat().st_size)
emit("done", metrics=history[-1] if history else {})
finish(0)
'''


def fake_bundle(directory: Path, **job) -> Bundle:
    """A bundle whose train.py runs ``job["epochs"]`` fake epochs (``delay`` s each)."""
    directory.mkdir(parents=True, exist_ok=True)
    settings = {"epochs": 3, "delay": 0.0, "output_dir": "output", **job}
    (directory / "train.py").write_text(FAKE_TRAIN)
    (directory / "job.json").write_text(json.dumps(settings))
    (directory / "requirements.txt").write_text("\n")
    return Bundle(directory, settings)


PYTHON = sys.executable


def train_py_pids(directory: Path, *, below: bool = False) -> list[int]:
    """pids of live (not zombie) ``train.py`` processes whose working directory is
    ``directory`` (or, with ``below``, any directory under it): the ranks a job runs there."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if "train.py" not in (entry / "cmdline").read_text():
                continue
            cwd = Path(os.readlink(entry / "cwd"))
            if not (cwd.is_relative_to(directory) if below else cwd == directory):
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(entry.name))
        except OSError:
            continue
    return found
