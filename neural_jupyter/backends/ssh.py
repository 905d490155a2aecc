"""Training on any machine you can ``ssh`` into (paramiko + SFTP).

A job lives on the remote host in ``<workdir>/<name derived from the idempotency key>/``:

    train.py job.json data.npz ...    the bundle (any kind, subfolders too), over SFTP
    launcher.py                       runtime/launcher.py: installs a user-code bundle's
                                      requirements, then runs train.py
    run.sh                            the detached wrapper: setup, time budget, exit code
    .launched/ process.json           "started once" guard; pid, pgid, session, start time
    stdout.log stderr.log             the event stream and the log
    exit_code                         written by the wrapper when training ends
    cancel_requested setup_failed     markers
    output/                           what train.py writes (model.pt, history.json, a user
                                      job's result.pkl and outputs/...), status.json

The wrapper runs ``setsid nohup sh run.sh`` (its own session and process group, no terminal),
so it outlives the SSH connection and the kernel; a new kernel finds it again from what
``submit`` returned. Events are read by tailing the remote logs over SFTP into
``job.directory/stdout.log`` and ``stderr.log`` (the local mirror: whole lines, redacted; the
remote offset read so far is kept in ``*.log.offset``), so a dropped connection resumes where
it stopped and ``Job.logs()`` works as for local jobs.

``--procs-per-node P`` above 1 runs the launcher with ``--nnodes 1 --nproc-per-node P``:
torchrun starts ``P`` processes on the host (a rendezvous of its own), rank 0 writes the
events and the outputs; cancel stops torchrun's process group, and torchrun stops its ranks
(each also ends with its parent). Several hosts (``--nodes N`` with ``--set
hosts=host-a,host-b``, one host per node) are one torchrun rendezvous at the first host:
``ssh_nodes`` starts a job directory per host and reads them as one job (node 0's events
and outputs, every node's status; a failed node fails the job and stops the others).

Host keys are checked against known_hosts (OpenSSH's files) by default; an unknown host is
an error that says how to trust it. A password is never stored or shown: it is kept in this
process only and registered with the redaction filter.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import json
import os
import posixpath
import re
import shlex
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from neural_jupyter.backends import base, ssh_instances, ssh_nodes
from neural_jupyter.backends.base import State
from neural_jupyter.backends.log_mirror import LogMirror
from neural_jupyter.backends.retry import ATTEMPTS, call_with_retries
from neural_jupyter.backends.ssh_providers import remote_name
from neural_jupyter.errors import (
    ConfigurationError,
    JobError,
    NeuralError,
    PlatformAuthError,
    PlatformConnectionError,
    PlatformError,
)
from neural_jupyter.redaction import redact, register_secret
from neural_jupyter.runtime.bundle import LAUNCHER, Bundle, launcher_source
from neural_jupyter.runtime.events import Event, parse_line
from neural_jupyter.runtime.jobdir import OUTPUT, artifact_name, output_target
from neural_jupyter.runtime.tail import LineTail

PLATFORM = "ssh"
EXIT_TIMEOUT = 124
DEFAULT_WORKDIR = "~/.neural-jupyter/jobs"
DEFAULT_PYTHON = "python3"
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
DEFAULT_SSH_CONFIG = "~/.ssh/config"
SYSTEM_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts",)
KILL_AFTER_SECONDS = 30
# files the wrapper, a cancel or a failed peer node leave in the job directory
MARKERS = ("cancel_requested", "timed_out", "setup_failed", "peer_failed")
_MARKER_WORDS = " ".join(MARKERS)
CANCEL_GRACE_SECONDS = 5.0
CONNECT_TIMEOUT = 15.0
COMMAND_TIMEOUT = 120.0
LAUNCH_RECORD_WAIT = 10.0  # seconds a retried submit waits for an earlier try's process.json
CHUNK = 4 * 2**20
LOGS = (("stdout.log", "stdout"), ("stderr.log", "stderr"))  # the remote job directory's
EXTRA_KEYS = frozenset(
    {
        "host",
        "user",
        "port",
        "key_file",
        "password",
        "python",
        "workdir",
        "setup",
        "trust_new_host",
        "known_hosts",
        "ssh_config",
        "connect_timeout",
        "cancel_grace",
        "reconnect_timeout",
        "hosts",  # several hosts, one node each (ssh_nodes)
        "master_addr",
        "master_port",
    }
)
# messages of paramiko.SSHException that mean "the connection broke", worth another try
_TRANSIENT_WORDS = ("banner", "reset", "closed", "eof", "timed out", "timeout", "dropped")
_TRANSIENT_WORDS += ("not active", "no existing session", "unable to connect", "broken pipe")


def _paramiko():
    return SSHBackend.sdk("paramiko")


class TransientConnectionError(PlatformConnectionError):
    """The connection failed in a way that may heal (refused, reset, timed out): retried."""


class UnknownHostKey(Exception):
    """Raised by the host-key policy when a host is not in known_hosts."""

    def __init__(self, hostname: str, key: Any) -> None:
        self.hostname = hostname
        self.key = key
        super().__init__(f"host {hostname} is not in known_hosts")


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TransientConnectionError)


# --- where to connect ---------------------------------------------------------------------------
_PASSWORDS: dict[str, str] = {}  # user@host:port -> password, for this process only


@dataclass(frozen=True)
class SSHTarget:
    """One SSH destination, resolved (alias → HostName, Port, User, IdentityFile)."""

    hostname: str
    port: int = 22
    user: str = ""
    key_files: tuple[str, ...] = ()
    known_hosts: str | None = None  # None: ~/.ssh/known_hosts
    trust_new_host: bool = False
    connect_timeout: float = CONNECT_TIMEOUT
    spec: str = ""  # the host as the user gave it
    proxy_command: str | None = None  # ProxyCommand / ProxyJump from ~/.ssh/config

    @property
    def address(self) -> str:
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return f"{self.user}@{host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The name OpenSSH (and paramiko) use for this host in known_hosts."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    @property
    def known_hosts_path(self) -> Path:
        return Path(self.known_hosts or DEFAULT_KNOWN_HOSTS).expanduser()

    def public(self) -> dict[str, Any]:
        """What is kept in the job store to reconnect later (never a password)."""
        return {
            "host": self.spec or self.address,
            "hostname": self.hostname,
            "port": self.port,
            "user": self.user,
            "key_files": list(self.key_files),
            "known_hosts": self.known_hosts,
            "connect_timeout": self.connect_timeout,
            "proxy_command": self.proxy_command,
        }

    @classmethod
    def from_details(cls, details: Mapping[str, Any]) -> SSHTarget:
        try:
            return cls(
                hostname=str(details["hostname"]),
                port=int(details.get("port") or 22),
                user=str(details.get("user") or getpass.getuser()),
                key_files=tuple(details.get("key_files") or ()),
                known_hosts=details.get("known_hosts"),
                connect_timeout=float(details.get("connect_timeout") or CONNECT_TIMEOUT),
                spec=str(details.get("host") or ""),
                proxy_command=details.get("proxy_command"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise JobError(
                f"this ssh job's record does not say where it runs ({exc}); was it submitted?"
            ) from None


def parse_host(
    spec: str,
    *,
    user: str | None = None,
    port: int | None = None,
    key_file: str | None = None,
    ssh_config: str | None = None,
) -> tuple[str, int, str, tuple[str, ...], str | None]:
    """``user@host:port`` or an ``~/.ssh/config`` alias → (hostname, port, user, key files,
    proxy command). ``ProxyCommand`` is used as is; ``ProxyJump`` runs ``ssh -W``.

    Explicit values (in the spec or as arguments) win over the config file, as with ``ssh``.
    """
    if not isinstance(spec, str) or not spec.strip() or any(c.isspace() for c in spec.strip()):
        raise ConfigurationError(
            f"the ssh host must be 'user@host', 'user@host:port' or an ~/.ssh/config alias, "
            f"got {spec!r}"
        )
    rest = spec.strip()
    spec_user = None
    if "@" in rest:
        spec_user, rest = rest.rsplit("@", 1)
    spec_port: int | None = None
    if rest.startswith("["):  # [ipv6]:port
        host, _, tail = rest[1:].partition("]")
        if tail.startswith(":"):
            spec_port = _port(tail[1:], spec)
    elif rest.count(":") == 1:
        host, _, text = rest.partition(":")
        spec_port = _port(text, spec)
    else:
        host = rest
    if not host:
        raise ConfigurationError(f"no host name in the ssh host {spec!r}")
    config = _ssh_config_entry(host, ssh_config)
    hostname = config.get("hostname", host)
    chosen_port = port or spec_port or int(config.get("port", 22))
    chosen_user = user or spec_user or config.get("user") or getpass.getuser()
    keys = [key_file] if key_file else list(config.get("identityfile", []))
    key_files = tuple(str(Path(k).expanduser()) for k in keys)
    if key_file and not Path(key_files[0]).is_file():
        raise ConfigurationError(f"the ssh key file {key_file!r} does not exist")
    proxy = config.get("proxycommand")
    if not proxy and config.get("proxyjump") and config["proxyjump"].lower() != "none":
        proxy = f"ssh -W {hostname}:{chosen_port} {config['proxyjump']}"
    return hostname, int(chosen_port), chosen_user, key_files, proxy


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigurationError(f"the port in the ssh host {spec!r} is not a number 1-65535")
    return int(text)


def _ssh_config_entry(host: str, path: str | None) -> dict[str, Any]:
    config_path = Path(path or DEFAULT_SSH_CONFIG).expanduser()
    if not config_path.is_file():
        if path:
            raise ConfigurationError(f"the ssh config file {path!r} does not exist")
        return {}
    paramiko = _paramiko()
    try:
        entry = paramiko.SSHConfig.from_path(str(config_path)).lookup(host)
    except Exception as exc:  # paramiko.ConfigParseError and friends
        raise ConfigurationError(f"cannot read the ssh config {config_path}: {exc}") from None
    return dict(entry)


def target_from_extra(extra: Mapping[str, Any]) -> SSHTarget:
    """The destination described by ``resources.extra`` (registers a password as a secret)."""
    host = extra.get("host")
    hosts = ssh_nodes.host_list(extra)
    if not host and len(hosts) == 1:  # --set hosts= with one host: that host
        host = hosts[0]
    if not host:
        raise ConfigurationError(
            "the ssh backend needs a host",
            hint="extra={'host': 'user@host:port'} or an alias from ~/.ssh/config",
        )
    port = extra.get("port")
    hostname, port, user, key_files, proxy = parse_host(
        str(host),
        user=extra.get("user"),
        port=int(port) if port else None,
        key_file=extra.get("key_file"),
        ssh_config=extra.get("ssh_config"),
    )
    known_hosts = extra.get("known_hosts")
    target = SSHTarget(
        hostname=hostname,
        port=port,
        user=user,
        key_files=key_files,
        known_hosts=str(Path(known_hosts).expanduser()) if known_hosts else None,
        trust_new_host=_flag(extra.get("trust_new_host")),
        connect_timeout=float(extra.get("connect_timeout") or CONNECT_TIMEOUT),
        spec=str(host),
        proxy_command=proxy,
    )
    password = extra.get("password")
    if password:
        register_secret(str(password))
        _PASSWORDS[target.address] = str(password)
    return target


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


# --- connecting -----------------------------------------------------------------------------
def fingerprint(key: Any) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _append_known_host(path: Path, hostname: str, key: Any) -> None:
    from paramiko.hostkeys import HostKeyEntry

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    line = HostKeyEntry([hostname], key).to_line()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as handle:
        handle.write(line)


def _host_key_policy(paramiko: Any, target: SSHTarget) -> Any:
    class Policy(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            if not target.trust_new_host:
                raise UnknownHostKey(hostname, key)
            client.get_host_keys().add(hostname, key.get_name(), key)
            _append_known_host(target.known_hosts_path, hostname, key)

    return Policy()


def translate(exc: BaseException, target: SSHTarget) -> BaseException:
    """A paramiko/socket error as one of ours, with the platform's own message."""
    if isinstance(exc, NeuralError):
        return exc
    paramiko = _paramiko()
    where = target.address
    detail = redact(str(exc) or type(exc).__name__)
    if isinstance(exc, UnknownHostKey):
        return PlatformAuthError(
            f"the host key of {exc.hostname} ({exc.key.get_name()} {fingerprint(exc.key)}) "
            f"is not in {target.known_hosts_path}; not connecting to an unverified host",
            platform=PLATFORM,
            hint="check the fingerprint with the host's owner, then trust it: "
            f"ssh-keyscan -p {target.port} {target.hostname} >> {target.known_hosts_path} "
            "(or connect once with `ssh`), or submit once with --set trust_new_host=true "
            "(extra={'trust_new_host': True}) to add it",
        )
    if isinstance(exc, paramiko.BadHostKeyException):
        return PlatformAuthError(
            f"the host key of {target.known_hosts_name} has CHANGED since it was saved in "
            f"known_hosts (now {fingerprint(exc.key)}); someone may be intercepting the "
            "connection, so it was refused",
            platform=PLATFORM,
            hint="if the host was reinstalled, remove the old key: "
            f"ssh-keygen -R '{target.known_hosts_name}' -f {target.known_hosts_path}",
        )
    if isinstance(exc, paramiko.AuthenticationException):
        return PlatformAuthError(
            f"{where} refused the login",
            platform=PLATFORM,
            response=detail,
            hint="put your public key in ~/.ssh/authorized_keys on the host and load it into "
            "ssh-agent, or pass extra={'key_file': '~/.ssh/id_ed25519'}",
        )
    if isinstance(exc, socket.gaierror):
        return PlatformConnectionError(
            f"cannot resolve the host name {target.hostname!r}",
            platform=PLATFORM,
            response=detail,
            hint="check the host, or the HostName of the alias in ~/.ssh/config",
        )
    if isinstance(exc, paramiko.SSHException) and not isinstance(exc, paramiko.ChannelException):
        lowered = detail.lower()
        if "authentication" in lowered:
            return PlatformAuthError(
                f"{where} refused the login", platform=PLATFORM, response=detail
            )
        if not any(word in lowered for word in _TRANSIENT_WORDS):
            return PlatformConnectionError(
                f"SSH with {where} failed", platform=PLATFORM, response=detail
            )
    if isinstance(exc, (OSError, EOFError, paramiko.SSHException)):
        return TransientConnectionError(
            f"lost or could not open the connection to {where}",
            platform=PLATFORM,
            response=detail,
            hint="check that the host is up and sshd listens on that port",
        )
    if type(exc).__module__.startswith("paramiko"):  # e.g. SFTPError
        return PlatformError(f"SSH with {where} failed", platform=PLATFORM, response=detail)
    return exc


def connect(target: SSHTarget, *, attempts: int = ATTEMPTS) -> Any:
    """A connected ``paramiko.SSHClient`` (transient failures tried again, up to ``attempts``)."""
    return call_with_retries(lambda: _connect_once(target), is_transient, attempts=attempts)


def _connect_once(target: SSHTarget) -> Any:
    paramiko = _paramiko()
    client = paramiko.SSHClient()
    try:
        for path in SYSTEM_KNOWN_HOSTS:
            if Path(path).is_file():
                client.load_system_host_keys(path)
        if target.known_hosts_path.is_file():
            client.load_host_keys(str(target.known_hosts_path))
        client.set_missing_host_key_policy(_host_key_policy(paramiko, target))
        sock = paramiko.ProxyCommand(target.proxy_command) if target.proxy_command else None
        client.connect(
            target.hostname,
            target.port,
            username=target.user,
            password=_PASSWORDS.get(target.address),
            key_filename=list(target.key_files) or None,
            look_for_keys=not target.key_files,
            allow_agent=True,
            timeout=target.connect_timeout,
            banner_timeout=target.connect_timeout,
            auth_timeout=target.connect_timeout,
            sock=sock,
        )
    except BaseException as exc:
        client.close()
        error = translate(exc, target)
        if error is exc:
            raise
        raise error from exc
    return client


class _Pool:
    """One live connection per destination, shared by the threads of this process."""

    def __init__(self) -> None:
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, target: SSHTarget, attempts: int = ATTEMPTS) -> Any:
        with self._lock:
            client = self._clients.get(target.address)
            transport = client.get_transport() if client is not None else None
            if transport is not None and transport.is_active():
                return client
            if client is not None:
                client.close()
            client = connect(target, attempts=attempts)
            self._clients[target.address] = client
            return client

    def drop(self, target: SSHTarget) -> None:
        with self._lock:
            client = self._clients.pop(target.address, None)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def close_all(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()


def run_command(client: Any, script: str, timeout: float = COMMAND_TIMEOUT) -> tuple[int, str, str]:
    """Run a POSIX ``sh`` script on the host; (exit code, stdout, stderr)."""
    stdin, stdout, stderr = client.exec_command("sh -c " + shlex.quote(script), timeout=timeout)
    stdin.close()
    out = stdout.read().decode("utf-8", errors="replace")
    err = stderr.read().decode("utf-8", errors="replace")
    return stdout.channel.recv_exit_status(), out, err


# --- remote layout and scripts --------------------------------------------------------------
def shell_path(path: str) -> str:
    """``path`` quoted for sh, with a leading ``~`` left to expand to ``$HOME``."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def python_command(python: str) -> str:
    """The interpreter as shell words (``python3``, ``~/venv/bin/python``, ``conda run ...``)."""
    words = shlex.split(python) if python.strip() else [DEFAULT_PYTHON]
    return " ".join(shell_path(word) for word in words)


def train_command(
    python: str,
    max_seconds: float | None,
    procs_per_node: int = 1,
    torchrun: Sequence[str] = (),
) -> str:
    """The launcher's command line; ``torchrun``: its options for one node of several
    (``ssh_nodes.node_arguments``), else torchrun on this host alone above one process."""
    # packages a user-code job needs go into its own folder: the host's Python stays as it was
    command = f"{python_command(python)} -u {LAUNCHER} --packages job"
    if torchrun:
        command += " " + " ".join(shlex.quote(str(word)) for word in torchrun)
    elif procs_per_node > 1:  # torchrun on this host alone
        command += f" --nnodes 1 --nproc-per-node {int(procs_per_node)}"
    if max_seconds:
        limit = f"timeout --signal=TERM --kill-after={KILL_AFTER_SECONDS} {max_seconds:g}"
        return f"{limit} {command}"
    return command


def runner_script(
    job_dir: str,
    python: str,
    setup: str | None,
    max_seconds: float | None,
    procs_per_node: int = 1,
    torchrun: Sequence[str] = (),
) -> str:
    """``run.sh``: setup, training under its time budget, the exit code written at the end.

    The launcher installs what a user-code bundle needs, then runs ``train.py`` (under
    torchrun with ``procs_per_node`` processes). SIGTERM to the group stops training
    (train.py saves and exits); the trap lets the wrapper outlive it long enough to record
    the exit code.
    """
    limited = train_command(python, max_seconds, procs_per_node, torchrun)
    plain = train_command(python, None, procs_per_node, torchrun)
    setup_block = ""
    if setup:
        setup_block = (
            f"( {setup}\n) || {{\n"
            "  code=$?\n"
            '  echo "neural-jupyter: the setup command failed with exit code $code" >&2\n'
            "  : > setup_failed\n"
            '  finish "$code"\n'
            "}\n"
        )
    timed = (
        f"if command -v timeout >/dev/null 2>&1; then\n  {limited}\nelse\n  {plain}\nfi\n"
        if max_seconds
        else f"{plain}\n"
    )
    return (
        "#!/bin/sh\n"
        "# neural-jupyter job runner (generated); started as: setsid nohup sh run.sh\n"
        f"JOB_DIR={shlex.quote(job_dir)}\n"
        'cd "$JOB_DIR" || exit 1\n'
        "trap 'stopping=1' TERM INT HUP\n"
        "export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1\n"
        'finish() { echo "$1" > exit_code.tmp && mv exit_code.tmp exit_code; exit "$1"; }\n'
        f"{setup_block}"
        f"{timed}"
        'finish "$?"\n'
    )


def launch_script(job_dir: str) -> str:
    """Start ``run.sh`` detached, at most once per job directory; print its process record."""
    wait_steps = int(LAUNCH_RECORD_WAIT * 10)
    return f"""cd {shlex.quote(job_dir)} || exit 97
if ! mkdir .launched 2>/dev/null; then
  i=0
  while [ ! -s process.json ] && [ "$i" -lt {wait_steps} ]; do sleep 0.1; i=$((i+1)); done
  echo EXISTING; cat process.json 2>/dev/null; exit 0
fi
if command -v setsid >/dev/null 2>&1; then
  setsid nohup sh run.sh > stdout.log 2> stderr.log < /dev/null &
else  # macOS and other hosts without util-linux
  perl -MPOSIX -e 'POSIX::setsid(); exec @ARGV' nohup sh run.sh \\
    > stdout.log 2> stderr.log < /dev/null &
fi
pid=$!
# a background job of a shell without job control is no group leader, so setsid makes it
# the leader of a new session and process group in place: pid = pgid = sid (wait for that)
i=0
while [ "$(ps -o sid= -p "$pid" 2>/dev/null | tr -d ' ')" != "$pid" ] && [ "$i" -lt 40 ]; do
  sleep 0.05; i=$((i+1))
done
start=$(cut -d' ' -f22 /proc/"$pid"/stat 2>/dev/null)
printf '{{"pid": %s, "pgid": %s, "sid": %s, "start_time": "%s", "started": %s}}\\n' \\
  "$pid" "$pid" "$pid" "$start" "$(date +%s)" > process.json.tmp
mv process.json.tmp process.json
echo STARTED; cat process.json
"""


def probe_script(job_dir: str, pid: int, sid: int) -> str:
    return f"""d={shlex.quote(job_dir)}
[ -d "$d" ] || {{ echo nodir; exit 0; }}
cd "$d"
if [ -r /proc/{pid}/stat ]; then echo "stat $(cat /proc/{pid}/stat)"
elif kill -0 {pid} 2>/dev/null; then echo "ps $(ps -o stat= -p {pid})"; fi
n=$(ps -eo sid=,stat= 2>/dev/null | awk '$1=={sid} && $2 !~ /^Z/' | wc -l)
echo "members $n"
[ -f exit_code ] && echo "exit $(cat exit_code)"
for m in {_MARKER_WORDS}; do [ -f "$m" ] && echo "$m"; done
[ -f output/status.json ] && echo "status $(cat output/status.json)"
true
"""


def cancel_script(
    job_dir: str, pgid: int, sid: int, grace: float, marker: str = "cancel_requested"
) -> str:
    """TERM every process group of the job's session, KILL what is left after ``grace``
    (``marker`` says why: the user's cancel, or ``peer_failed``: another node failed)."""
    steps = max(1, int(grace * 10))
    return f"""cd {shlex.quote(job_dir)} 2>/dev/null || {{ echo nodir; exit 0; }}
members() {{ ps -eo pid=,pgid=,sid=,stat= 2>/dev/null |
  awk '($3=={sid} || $2=={pgid}) && $4 !~ /^Z/ {{print $2}}'; }}
groups() {{ members | sort -u; }}
if [ -z "$(members)" ] && ! kill -0 -{pgid} 2>/dev/null; then echo notrunning; exit 0; fi
: > {shlex.quote(marker)}
for g in {pgid} $(groups); do kill -TERM -"$g" 2>/dev/null; done
i=0
while [ -n "$(members)" ] && [ "$i" -lt {steps} ]; do sleep 0.1; i=$((i+1)); done
for g in {pgid} $(groups); do kill -KILL -"$g" 2>/dev/null; done
sleep 0.2
echo "left $(members | wc -l)"
"""


@dataclass(frozen=True)
class Probe:
    """What one look at the remote job directory showed."""

    exists: bool
    alive: bool = False
    exit_code: int | None = None
    markers: frozenset[str] = frozenset()

    def status(self) -> base.RemoteStatus:
        if not self.exists:  # final: nothing on the host can tell more
            return base.RemoteStatus(
                State.FAILED, None, "the job's directory is gone from the host"
            )
        if self.alive:
            return base.RemoteStatus(State.RUNNING)
        code = self.exit_code
        if code == EXIT_TIMEOUT or "timed_out" in self.markers:
            return base.RemoteStatus(
                State.FAILED, code, "stopped at its time limit", timed_out=True
            )
        if "cancel_requested" in self.markers:
            return base.RemoteStatus(State.CANCELLED, code, "cancelled")
        if "peer_failed" in self.markers:
            return base.RemoteStatus(State.CANCELLED, code, "stopped: another node failed")
        if "setup_failed" in self.markers:
            return base.RemoteStatus(
                State.FAILED,
                code,
                f"the setup command failed (exit code {code}); see the job's log",
            )
        if code == 0:
            return base.RemoteStatus(State.SUCCEEDED, 0)
        if code is None:
            return base.RemoteStatus(
                State.FAILED,
                None,
                "the remote process ended without reporting (killed, or rebooted?)",
            )
        if code > 128:
            return base.RemoteStatus(State.FAILED, code, f"killed by signal {code - 128}")
        return base.RemoteStatus(State.FAILED, code, f"exited with code {code}")


def parse_probe(output: str, start_time: str | None) -> Probe:
    if output.strip() == "nodir":
        return Probe(exists=False)
    alive = False
    members = 0
    code: int | None = None
    status_code: int | None = None
    markers: set[str] = set()
    for line in output.splitlines():
        word, _, rest = line.partition(" ")
        if word == "stat":
            fields = rest.rsplit(")", 1)[-1].split()
            state, started = (fields[0], fields[19]) if len(fields) > 19 else ("?", None)
            alive = state not in ("Z", "X") and (not start_time or started == start_time)
        elif word == "ps":
            alive = bool(rest.strip()) and not rest.strip().startswith("Z")
        elif word == "members":
            members = int(rest or 0) if rest.strip().isdigit() else 0
        elif word == "exit":
            code = _int(rest)
        elif word == "status":
            with contextlib.suppress(ValueError, TypeError, KeyError):
                status_code = int(json.loads(rest)["exit_code"])
        elif word in MARKERS:
            markers.add(word)
    if code is not None:  # the wrapper has finished: its record is the truth
        alive = False
    else:
        alive = alive or members > 0
        code = None if alive else status_code
    return Probe(True, alive, code, frozenset(markers))


def _int(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else None


# --- the backend ----------------------------------------------------------------------------
class SSHBackend(base.Backend):
    """Runs the bundle on a machine reachable over SSH (optionally a rented GPU instance)."""

    name = "ssh"
    label = "A machine over SSH"
    extra = "ssh"
    sdk_modules: ClassVar[Mapping[str, str]] = {"paramiko": "paramiko"}
    max_nodes = 100  # one host per node (--set hosts=...), procs_per_node processes on each

    poll_seconds = 0.5
    reconnect_max_wait = 5.0
    reconnect_timeout = 600.0

    def __init__(self) -> None:
        self._pool = _Pool()

    @classmethod
    def is_paid(cls, resources: base.ResourceSpec) -> bool:
        return bool(resources.extra.get("provider"))  # a rented instance bills by the hour

    target = SSHTarget  # how ssh_instances names a machine it launched
    # what ssh_nodes uses to start one node on each host
    target_from_extra = staticmethod(target_from_extra)
    train_command = staticmethod(train_command)
    default_workdir = DEFAULT_WORKDIR
    default_python = DEFAULT_PYTHON

    def run(self, target: SSHTarget, script: str) -> tuple[int, str, str]:
        """Run ``script`` on ``target``: (exit code, stdout, stderr)."""
        with self._translated(target):
            return run_command(self._pool.get(target), script)

    # --- submit -----------------------------------------------------------------------------
    def submit(
        self, bundle: Bundle, job: base.RemoteJob, resources: base.ResourceSpec
    ) -> base.Submission:
        _paramiko()
        extra = check_extra(resources.extra)
        if extra.get("provider"):
            ssh_nodes.check_hosts(resources)  # a rented instance is one machine
            return ssh_instances.submit_on_instance(self, bundle, job, resources)
        if ssh_nodes.wants_nodes(resources):
            return ssh_nodes.submit(self, bundle, job, resources)
        return self.submit_to(target_from_extra(extra), bundle, job, resources)

    def check_layout(self, resources: base.ResourceSpec, framework: str | None = None) -> None:
        super().check_layout(resources, framework)
        ssh_nodes.check_hosts(resources)

    def submit_to(
        self, target: SSHTarget, bundle: Bundle, job: base.RemoteJob, resources: base.ResourceSpec
    ) -> base.Submission:
        """Upload and start ``bundle`` on ``target``; idempotent per ``job.idempotency_key``."""
        job_dir = self.stage(target, bundle, resources, remote_name(job.idempotency_key))
        record = self.start(target, job_dir)
        details = self.node_details(target, job_dir, record, resources.extra)
        return base.Submission(f"{target.address}:{job_dir}", details)

    def stage(
        self,
        target: SSHTarget,
        bundle: Bundle,
        resources: base.ResourceSpec,
        name: str,
        torchrun: Sequence[str] = (),
    ) -> str:
        """The job directory ``name`` on ``target`` with the bundle and ``run.sh`` in it
        (unless a run was started there before); its absolute path."""
        extra = resources.extra
        python = str(extra.get("python") or DEFAULT_PYTHON)
        setup = extra.get("setup") or None
        workdir = str(extra.get("workdir") or DEFAULT_WORKDIR)

        def attempt() -> str:
            with self._translated(target):
                client = self._pool.get(target)
                job_dir, launched = self._prepare(client, workdir, name)
                if not launched:
                    script = runner_script(
                        job_dir,
                        python,
                        setup,
                        resources.max_seconds,
                        resources.procs_per_node,
                        torchrun,
                    )
                    self._upload(client, bundle.path, job_dir, script)
            return job_dir

        return call_with_retries(attempt, is_transient)

    def start(self, target: SSHTarget, job_dir: str) -> dict[str, Any]:
        """Start the staged ``job_dir`` on ``target`` (at most once); its process record."""

        def attempt() -> dict[str, Any]:
            with self._translated(target):
                return self._launch(self._pool.get(target), job_dir)

        return call_with_retries(attempt, is_transient)

    @staticmethod
    def node_details(
        target: SSHTarget, job_dir: str, record: Mapping[str, Any], extra: Mapping[str, Any]
    ) -> dict[str, Any]:
        """What the job store keeps to find a started run again (never a password)."""
        details = {
            **target.public(),
            "remote_dir": job_dir,
            "python": redact(str(extra.get("python") or DEFAULT_PYTHON)),
            "pid": int(record["pid"]),
            "pgid": int(record.get("pgid") or record["pid"]),
            "sid": int(record.get("sid") or record["pid"]),
            "start_time": str(record.get("start_time") or "") or None,
            "started": record.get("started"),
        }
        for key in ("cancel_grace", "reconnect_timeout"):
            if extra.get(key) is not None:
                details[key] = float(extra[key])
        return details

    def _prepare(self, client: Any, workdir: str, name: str) -> tuple[str, bool]:
        """Create the job directory; its absolute path and whether a run was started there."""
        script = (
            f"mkdir -p {shell_path(workdir)}/{shlex.quote(name)} && "
            f'cd {shell_path(workdir)}/{shlex.quote(name)} && echo "JOBDIR $(pwd)" && '
            "if [ -d .launched ]; then echo LAUNCHED; fi"
        )
        code, out, err = run_command(client, script)
        # a login shell may print its own lines (a banner from ~/.bashrc): look for ours
        lines = out.splitlines()
        found = [line[7:] for line in lines if line.startswith("JOBDIR /")]
        if code != 0 or not found:
            raise PlatformError(
                f"cannot create the job directory {workdir}/{name} on the host",
                platform=PLATFORM,
                response=(err or out).strip()[-500:],
                hint="check extra={'workdir': ...} (a writable directory on the host)",
            )
        return found[-1].strip(), "LAUNCHED" in lines

    def _upload(self, client: Any, local: Path, job_dir: str, script: str) -> None:
        sftp = client.open_sftp()
        try:
            for path in sorted(local.rglob("*")):
                remote = posixpath.join(job_dir, path.relative_to(local).as_posix())
                if path.is_dir():
                    with contextlib.suppress(OSError):
                        sftp.mkdir(remote)
                else:
                    sftp.put(str(path), remote)
            with sftp.open(posixpath.join(job_dir, LAUNCHER), "w") as handle:
                handle.write(launcher_source())
            with sftp.open(posixpath.join(job_dir, "run.sh"), "w") as handle:
                handle.write(script)
        finally:
            sftp.close()

    def _launch(self, client: Any, job_dir: str) -> dict[str, Any]:
        code, out, err = run_command(client, launch_script(job_dir))
        lines = out.strip().splitlines()
        marks = [i for i, line in enumerate(lines) if line in ("STARTED", "EXISTING")]
        record = None
        if code == 0 and marks and marks[-1] + 1 < len(lines):
            with contextlib.suppress(ValueError):
                record = json.loads(lines[marks[-1] + 1])
        if not isinstance(record, dict) or not record.get("pid"):
            raise PlatformError(
                "the training process could not be started on the host"
                + (" (an earlier try left no process record)" if "EXISTING" in lines else ""),
                platform=PLATFORM,
                response=(err or out).strip()[-500:],
                hint=f"look in {job_dir} on the host (stderr.log, run.sh)",
            )
        return record

    # --- status -----------------------------------------------------------------------------
    def status(self, job: base.RemoteJob) -> base.RemoteStatus:
        final = ssh_instances.final_status(job)
        if final is not None:
            return final
        if not job.details.get("remote_dir"):
            return base.RemoteStatus(
                State.UNKNOWN, message="no remote process was recorded for this job"
            )
        try:
            return self.look(job).status()
        except (PlatformError, JobError) as exc:
            return base.RemoteStatus(
                State.UNKNOWN, message=f"no contact with the host: {exc.message}"
            )

    def look(self, job: base.RemoteJob) -> Probe | ssh_nodes.NodesProbe:
        """One look at the job: its one host, or every node of a job on several."""
        if ssh_nodes.is_multi(job.details):
            return ssh_nodes.look(self, job)
        return self._probe(SSHTarget.from_details(job.details), job.details)

    def _probe(self, target: SSHTarget, details: Mapping[str, Any], attempts: int = 1) -> Probe:
        pid = int(details["pid"])
        script = probe_script(str(details["remote_dir"]), pid, int(details.get("sid") or pid))
        with self._translated(target):
            client = self._pool.get(target, attempts=attempts)
            _, out, _ = run_command(client, script, timeout=target.connect_timeout * 2)
        return parse_probe(out, details.get("start_time"))

    # --- events -----------------------------------------------------------------------------
    def events(self, job: base.RemoteJob, *, follow: bool = True) -> Iterator[base.StreamItem]:
        job.directory.mkdir(parents=True, exist_ok=True)
        tails = [(LineTail(job.files.log(stream)), stream) for _, stream in LOGS]
        details = job.details
        if not details.get("remote_dir") or ssh_instances.final_status(job) is not None:
            yield from _drain(tails)
            return
        target = SSHTarget.from_details(details)
        give_up = float(details.get("reconnect_timeout") or self.reconnect_timeout)
        lost_since: float | None = None
        failures = 0
        sftp = None
        while True:
            try:
                probe = self.look(job)
                sftp = sftp if _sftp_alive(sftp) else self._open_sftp(target)
                self._sync_logs(sftp, job)
            except TransientConnectionError as exc:
                sftp = None
                self._pool.drop(target)
                if ssh_instances.final_status(job) is not None or not follow:
                    yield from _drain(tails)
                    return
                failures += 1
                now = time.monotonic()
                if lost_since is None:
                    lost_since = now
                    yield Event("status", {"message": f"{exc.message}; reconnecting"})
                if now - lost_since > give_up:
                    raise PlatformConnectionError(
                        f"no connection to {target.address} for {give_up:g} s",
                        platform=PLATFORM,
                        hint=f"the job keeps running there; %neural_attach {job.id} follows "
                        "it again once the host is reachable",
                    ) from exc
                yield from base.heartbeats(min(self.reconnect_max_wait, 0.25 * 2**failures), 0.5)
                continue
            if lost_since is not None:
                lost_since, failures = None, 0
                yield Event("status", {"message": f"reconnected to {target.address}"})
            progressed = False
            for tail, stream in tails:
                for line in tail.read():
                    progressed = True
                    yield parse_line(line, stream)
            if progressed:
                continue
            if not (follow and probe.alive):
                if not probe.alive and sftp is not None:  # a last line without its newline
                    with contextlib.suppress(TransientConnectionError):
                        self._sync_logs(sftp, job, final=True)
                yield from _drain(tails)
                if sftp is not None:
                    sftp.close()
                status = probe.status()
                if status.is_terminal:  # outputs home (also a failed run's checkpoint)
                    yield from self.bring_back_outputs(job)
                    ssh_instances.job_ended(self, job, status)
                return
            yield from base.heartbeats(self.poll_seconds, 0.5)

    def open_sftp(self, target: SSHTarget) -> Any:
        return self._open_sftp(target)

    def _open_sftp(self, target: SSHTarget) -> Any:
        with self._translated(target):
            return self._pool.get(target, attempts=1).open_sftp()

    def _sync_logs(self, sftp: Any, job: base.RemoteJob, *, final: bool = False) -> None:
        """Append the whole lines the remote logs gained to the local mirror, redacted (with
        ``final``, a last line without its newline too)."""
        self.sync_logs(sftp, job.details, job.directory, final=final)

    def sync_logs(
        self, sftp: Any, details: Mapping[str, Any], directory: Path, *, final: bool = False
    ) -> None:
        """``_sync_logs`` for the run ``details`` describes, mirrored into ``directory``."""
        remote_dir = str(details["remote_dir"])
        mirror = LogMirror(directory)
        with mirror.exclusive(), self._translated(SSHTarget.from_details(details)):
            for file, stream in LOGS:
                offset = mirror.source_offset(stream)
                try:
                    handle = sftp.open(posixpath.join(remote_dir, file), "rb")
                except FileNotFoundError:
                    continue
                with handle:
                    handle.seek(offset)
                    data = handle.read(CHUNK)
                if data:
                    mirror.copy_bytes(stream, offset, data, whole=final or len(data) >= CHUNK)

    def final_sync(self, job: base.RemoteJob) -> None:
        """Mirror the logs and bring the outputs home one last time (before an instance
        goes)."""
        sftp = self._open_sftp(SSHTarget.from_details(job.details))
        try:
            mirror = LogMirror(job.directory)
            for _ in range(64):  # bounded: a job still running keeps writing
                before = mirror.total_size()
                self._sync_logs(sftp, job)
                if mirror.total_size() == before:
                    break
            self._sync_logs(sftp, job, final=True)
        finally:
            sftp.close()
        for _ in self.bring_back_outputs(job):
            pass

    # --- cancel -----------------------------------------------------------------------------
    def cancel(self, job: base.RemoteJob) -> None:
        details = job.details
        if not details.get("remote_dir"):
            raise JobError(f"job {job.id} has no remote process to cancel", job_id=job.id)
        if ssh_instances.final_status(job) is not None:
            return
        if ssh_nodes.is_multi(details):
            ssh_nodes.cancel(self, job)
            return
        try:
            self.stop(details, f"job {job.id}")
        except PlatformError:
            if ssh_instances.is_instance_job(job):  # the instance goes anyway
                ssh_instances.job_ended(
                    self, job, base.RemoteStatus(State.CANCELLED, None, "cancelled")
                )
                return
            raise
        if ssh_instances.is_instance_job(job):
            ssh_instances.job_ended(
                self, job, base.RemoteStatus(State.CANCELLED, None, "cancelled")
            )

    def stop(
        self, details: Mapping[str, Any], label: str, marker: str = "cancel_requested"
    ) -> None:
        """Stop the run ``details`` describes: every process group of its session (TERM,
        then KILL after the grace time); ``marker`` records why."""
        target = SSHTarget.from_details(details)
        pid = int(details["pid"])
        grace = float(details.get("cancel_grace") or CANCEL_GRACE_SECONDS)
        script = cancel_script(
            str(details["remote_dir"]),
            int(details.get("pgid") or pid),
            int(details.get("sid") or pid),
            grace,
            marker,
        )
        with self._translated(target):
            client = self._pool.get(target)
            _, out, err = run_command(client, script, timeout=grace + COMMAND_TIMEOUT)
        match = re.search(r"left (\d+)", out)
        if match and int(match.group(1)) > 0:
            raise PlatformError(
                f"{match.group(1)} process(es) of {label} survived SIGKILL on the host",
                platform=PLATFORM,
                response=err.strip()[-300:] or None,
            )

    # --- artifacts --------------------------------------------------------------------------
    def fetch_artifacts(
        self, job: base.RemoteJob, destination: Path | None = None
    ) -> dict[str, Path]:
        """SFTP every file under the remote ``output/`` into ``destination`` (default the
        job's ``bundle/output``, where results are looked for)."""
        destination = Path(destination or job.files.output)
        if job.details.get("remote_dir") is None:
            return {}
        target = SSHTarget.from_details(job.details)
        try:
            return self._fetch(job, target, destination, None)
        except TransientConnectionError:
            local = _local_outputs(destination)
            if local:  # e.g. a terminated instance, fetched before it went
                return local
            raise

    def _fetch(self, job: base.RemoteJob, target: SSHTarget, destination: Path, sftp: Any) -> dict:
        remote_output = posixpath.join(str(job.details["remote_dir"]), OUTPUT)
        destination.mkdir(parents=True, exist_ok=True)
        found: dict[str, Path] = {}
        with self._translated(target):
            own = sftp is None or not _sftp_alive(sftp)
            if own:
                sftp = self._pool.get(target).open_sftp()
            try:
                for relative, size in _remote_files(sftp, remote_output):
                    local = output_target(destination, relative)
                    if local is None:
                        continue
                    if not (local.exists() and local.stat().st_size == size):
                        local.parent.mkdir(parents=True, exist_ok=True)
                        partial = local.with_name(local.name + ".part")
                        sftp.get(posixpath.join(remote_output, relative), str(partial))
                        partial.replace(local)
                    found[artifact_name(relative)] = local
            finally:
                if own:
                    sftp.close()
        return found

    # --- plan and cost ----------------------------------------------------------------------
    def estimate_cost(self, resources: base.ResourceSpec) -> base.CostEstimate | None:
        """None for your own machine; a rented instance's budget with a provider."""
        if not resources.extra.get("provider"):
            return None
        return ssh_instances.estimate(resources)

    def plan(self, job: base.RemoteJob, resources: base.ResourceSpec) -> dict[str, Any]:
        extra = check_extra(resources.extra)
        workdir = str(extra.get("workdir") or DEFAULT_WORKDIR)
        job_dir = posixpath.join(workdir, remote_name(job.idempotency_key))
        python = str(extra.get("python") or DEFAULT_PYTHON)
        setup = extra.get("setup")
        plan: dict[str, Any] = {
            "backend": self.name,
            "job": job.id,
            "remote_dir": job_dir,
            "setup": redact(str(setup)) if setup else None,
            "command": redact(
                f"cd {job_dir} && setsid nohup sh run.sh  # runs: "
                + train_command(python, resources.max_seconds, resources.procs_per_node)
            ),
            "upload": _upload_listing(job),
            "resources": {k: v for k, v in resources.public().items() if "password" not in k},
        }
        if extra.get("provider"):
            plan.update(ssh_instances.plan(resources))
            return plan
        if ssh_nodes.wants_nodes(resources):
            plan.update(ssh_nodes.plan(self, job, resources))
            return plan
        target = target_from_extra(extra)
        plan["host"] = target.address
        plan["known_hosts"] = str(target.known_hosts_path)
        plan["auth"] = (
            "password (not shown)"
            if extra.get("password")
            else f"key {', '.join(target.key_files)}"
            if target.key_files
            else "ssh-agent / default keys"
        )
        return plan

    def check_credentials(self) -> None:
        """paramiko must be there; keys and host keys are checked when connecting."""
        self.require_sdk()

    # --- plumbing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _translated(self, target: SSHTarget) -> Iterator[None]:
        """paramiko/socket errors → ours; a broken pooled connection is dropped."""
        try:
            yield
        except NeuralError as exc:
            if isinstance(exc, TransientConnectionError):
                self._pool.drop(target)
            raise
        except Exception as exc:
            error = translate(exc, target)
            if error is exc:
                raise
            if isinstance(error, TransientConnectionError):
                self._pool.drop(target)
            raise error from exc

    def close(self) -> None:
        """Close this process's SSH connections (jobs keep running)."""
        self._pool.close_all()


def _drain(tails: list[tuple[LineTail, str]]) -> Iterator[base.StreamItem]:
    for tail, stream in tails:
        for line in tail.read():
            yield parse_line(line, stream)
    for tail, stream in tails:
        for line in tail.flush():
            yield parse_line(line, stream)


def _sftp_alive(sftp: Any) -> bool:
    if sftp is None:
        return False
    channel = sftp.get_channel()
    return channel is not None and not channel.closed and channel.get_transport().is_active()


def _upload_listing(job: base.RemoteJob) -> list[dict[str, Any]]:
    """The bundle's top-level entries (with sizes once it exists), the launcher, run.sh."""
    bundle = job.files.bundle
    listing = []
    for name in dict.fromkeys([*job.bundle_files, LAUNCHER, "run.sh"]):
        path = bundle / name.rstrip("/")
        if path.is_dir():
            size: int | None = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        else:
            size = path.stat().st_size if path.exists() else None
        listing.append({"file": name, "bytes": size})
    return listing


def _remote_files(sftp: Any, root: str) -> Iterator[tuple[str, int]]:
    """(path relative to ``root``, size) of every file under the remote folder ``root``."""
    import stat

    folders = [""]
    while folders:
        folder = folders.pop()
        try:
            entries = sftp.listdir_attr(posixpath.join(root, folder) if folder else root)
        except FileNotFoundError:
            continue
        for entry in sorted(entries, key=lambda e: e.filename):
            relative = posixpath.join(folder, entry.filename) if folder else entry.filename
            if stat.S_ISDIR(entry.st_mode or 0):
                folders.append(relative)
            elif stat.S_ISREG(entry.st_mode or 0):
                yield relative, int(entry.st_size or 0)


def _local_outputs(destination: Path) -> dict[str, Path]:
    """The outputs already brought home into ``destination``."""
    found = {}
    for path in sorted(destination.rglob("*")) if destination.is_dir() else []:
        relative = path.relative_to(destination).as_posix()
        partial = path.name.endswith(".part")
        if path.is_file() and not partial and output_target(destination, relative):
            found[artifact_name(relative)] = path
    return found


def check_extra(extra: Mapping[str, Any]) -> Mapping[str, Any]:
    """``extra`` if every key is an option of this backend (a typo is an error, not ignored)."""
    known = EXTRA_KEYS | _provider_keys()
    unknown = sorted(set(extra) - known)
    if unknown:
        from neural_jupyter.dsl.suggest import did_you_mean

        raise ConfigurationError(
            f"unknown ssh option(s): {', '.join(unknown)}",
            hint=did_you_mean(unknown[0], known) or "known: " + ", ".join(sorted(known)),
        )
    return extra


def _provider_keys() -> frozenset[str]:
    return ssh_instances.EXTRA_KEYS
