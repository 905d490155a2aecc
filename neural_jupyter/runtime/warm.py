"""Warm start for local jobs: a worker with the framework imported, forked once per job.

A fresh ``python train.py`` spends most of its first seconds importing the framework
(``import torch`` and the ``torch._dynamo`` its first optimizer pulls in). The warm worker
(``runtime/warm_server.py``) pays that once: the local platform asks it to fork a child per
job, and the child runs ``train.py`` as a fresh interpreter would, in its own session and
process group, with the job's directory, environment and output pipes. The local platform's
contract is unchanged (``process.json``, cancel and timeout by process group, the redacting
log relay); the worker writes the exit record the kernel would otherwise read from its own
``Popen``.

When the worker cannot serve a job exactly as a cold start would, the job starts cold, and
``status().last_job`` says why: not Linux, not a generated training script (user code starts
cold), another framework, Keras on a backend other than torch, the environment or CPU
affinity changed since the worker started, the framework's files changed on disk (an
upgrade), the worker still importing, exited or gone, or it found itself unsafe to fork
(more than one thread, CUDA initialised).

When it starts (``configure(mode=...)``, ``%config WarmMagics.warm_start``, or the
``NEURAL_JUPYTER_WARM_START`` variable): ``auto`` (default) after the first local run of a
model, in the background, so the next runs are warm; ``on`` also as soon as the mode is
switched on; ``off`` never (and a running worker is stopped). Never when the extension
loads. It stops with the kernel and after ``idle_timeout`` seconds without a job
(``NEURAL_JUPYTER_WARM_IDLE``, default 900); one worker per kernel at most.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neural_jupyter.runtime import warm_server as protocol
from neural_jupyter.runtime.gpu_settings import job_environment

MODES = ("auto", "on", "off")
ENV_MODE = "NEURAL_JUPYTER_WARM_START"
ENV_IDLE = "NEURAL_JUPYTER_WARM_IDLE"
# comma-separated names of variables the framework does not read at import, so a job whose
# value differs from the worker's can still start warm (the job gets its own value)
ENV_IGNORE = "NEURAL_JUPYTER_WARM_IGNORE_ENV"
DEFAULT_IDLE_SECONDS = 900.0
REPLY_SECONDS = 10.0
STOP_SECONDS = 2.0
SERVER = Path(__file__).with_name("warm_server.py")
# ``python -u -c BOOT SERVER ...``: run the server without putting a directory on sys.path
BOOT = (
    "import sys; del sys.path[0]; __file__ = sys.argv[1]; "
    "exec(compile(open(__file__, 'rb').read(), __file__, 'exec'))"
)
# Variables a job may have that the worker did not: read only when a job first uses a GPU
# (never at import), or only by neural_jupyter (which the worker does not import).
LAZY_VARIABLES = frozenset({"CUDA_VISIBLE_DEVICES"})
OWN_PREFIX = "NEURAL_JUPYTER_"


class WarmUnavailable(Exception):
    """The worker cannot serve this job (the reason is the message); it starts cold."""


def local_job_environment(gpus: str | None = None) -> dict[str, str]:
    """The environment of a local job's process, cold or warm: the kernel's, the GPU
    settings, unbuffered output and no bytecode files in the bundle."""
    env = dict(os.environ)
    env.update(job_environment(gpus))
    env.update(PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def unsupported() -> str | None:
    """Why this machine cannot have a warm worker (None: it can)."""
    if not sys.platform.startswith("linux"):
        return "warm start needs Linux (fork); jobs start cold here"
    if not hasattr(socket, "send_fds") or not hasattr(os, "waitid"):
        return "this Python lacks socket.send_fds or os.waitid; jobs start cold"
    return None


def framework_refusal(framework: str, env: Mapping[str, str]) -> str | None:
    """Why the worker cannot serve ``framework`` with ``env`` (None: it can)."""
    if framework == "pytorch":
        return None
    if framework == "keras":
        if env.get("KERAS_BACKEND", "").strip() == "torch":
            return None
        return (
            "Keras is warm-started only with KERAS_BACKEND=torch "
            "(TensorFlow and JAX are not fork-safe)"
        )
    return f"no warm start for {framework}"


def environment_difference(worker: Mapping[str, str], job: Mapping[str, str]) -> list[str]:
    """Names of variables that differ between the worker's environment and a job's and may
    have been read while the framework was imported."""
    names = set(worker) ^ set(job)
    names |= {name for name in set(worker) & set(job) if worker[name] != job[name]}
    ignored = LAZY_VARIABLES | {n.strip() for n in os.environ.get(ENV_IGNORE, "").split(",")}
    return sorted(n for n in names if n not in ignored and not n.startswith(OWN_PREFIX))


def relative_pythonpath(env: Mapping[str, str]) -> bool:
    """A relative PYTHONPATH entry resolves against the directory a process starts in."""
    entries = env.get("PYTHONPATH", "").split(os.pathsep)
    return any(entry and not os.path.isabs(entry) for entry in entries)


def current_umask() -> int | None:
    """This process's umask, read without changing it (Linux 4.7+)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return None


def resident_bytes(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return None


def _affinity() -> frozenset[int] | None:
    getter = getattr(os, "sched_getaffinity", None)
    return frozenset(getter(0)) if getter else None


@dataclass(frozen=True)
class WarmStatus:
    """The warm worker of this kernel, as ``%neural_warm`` and ``%neural_env`` show it."""

    mode: str
    state: str  # unsupported, stopped, starting, ready, failed, exited
    framework: str | None = None
    pid: int | None = None
    resident_bytes: int | None = None
    preload_seconds: float | None = None
    idle_timeout: float = DEFAULT_IDLE_SECONDS
    message: str = ""
    last_job: str = ""  # "warm", or "cold: <why>"

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def summary(self) -> str:
        """One line: state, framework, pid and memory."""
        if self.state == "ready":
            memory = (
                f"{self.resident_bytes / 2**20:.0f} MiB resident"
                if self.resident_bytes is not None
                else "memory unknown"
            )
            idle = f"{self.idle_timeout / 60:g} min" if self.idle_timeout > 0 else "never"
            return (
                f"ready: {self.framework}, pid {self.pid}, {memory} (imported in "
                f"{self.preload_seconds:.1f} s; stops with the kernel, or after {idle} idle)"
            )
        if self.state == "starting":
            return f"starting: importing {self.framework} (pid {self.pid})"
        if self.state in ("failed", "exited", "unsupported"):
            return f"{self.state}: {self.message}"
        hint = {
            "auto": "starts after the first local run",
            "on": "starts when switched on, or after the first local run",
            "off": "warm start is off",
        }[self.mode]
        return f"not running ({hint})"

    def __str__(self) -> str:
        lines = [f"warm worker: {self.summary()}", f"mode: {self.mode}"]
        if self.last_job:
            lines.append(f"last local job: {self.last_job}")
        return "\n".join(lines)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("WarmStatus(...)" if cycle else str(self))


class _Worker:
    """One started worker process and the kernel's end of its control socket."""

    def __init__(self, framework: str, env: Mapping[str, str], idle_timeout: float) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-u",
                    "-c",
                    BOOT,
                    str(SERVER),
                    "--control",
                    str(theirs.fileno()),
                    "--framework",
                    framework,
                    "--idle",
                    str(idle_timeout),
                    "--parent",
                    str(os.getpid()),
                ],
                env=dict(env),
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,  # the kernel's interrupts are not the worker's
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.control = ours
        self.framework = framework
        self.env = dict(env)
        self.affinity = _affinity()
        self.owner = os.getpid()
        self.hello: dict[str, Any] = {}
        self.error: str | None = None
        self.ready = threading.Event()
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        waiter = threading.Thread(target=self._await_ready, name="neural-warm-start", daemon=True)
        waiter.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _await_ready(self) -> None:
        try:
            message, _ = protocol.receive_message(self.control)
        except (EOFError, OSError, ValueError):
            self.error = "the worker exited while importing the framework"
        else:
            if message.get("op") == "ready":
                self.hello = message
            else:
                self.error = str(message.get("error") or "the worker could not start")
        finally:
            self.ready.set()

    def alive(self) -> bool:
        return self.process.poll() is None

    def changed_module(self) -> str | None:
        """A preloaded package whose files changed since the worker imported it."""
        for name, info in (self.hello.get("modules") or {}).items():
            try:
                mtime = os.stat(info["file"]).st_mtime_ns
            except OSError:
                return name
            if mtime != info.get("mtime_ns"):
                return name
        return None

    def run(self, request: dict[str, Any], fds: Sequence[int]) -> int:
        """Fork a child for ``request``; its pid. ``WarmUnavailable`` if the worker refused
        or failed (then nothing runs: a refused or unconfirmed child never starts)."""
        with self.lock:
            request_id = next(self.ids)
            self.control.settimeout(REPLY_SECONDS)
            try:
                protocol.send_message(self.control, {**request, "op": "run", "id": request_id}, fds)
                while True:
                    reply, _ = protocol.receive_message(self.control)
                    if reply.get("id") == request_id:
                        break
                if not reply.get("ok"):
                    raise WarmUnavailable(str(reply.get("reason") or "the worker refused"))
                protocol.send_message(self.control, {"op": "go", "id": request_id})
                return int(reply["pid"])
            except WarmUnavailable:
                raise
            except (OSError, EOFError, ValueError, KeyError) as exc:
                self.stop()
                raise WarmUnavailable(f"the warm worker did not answer ({exc})") from None
            except BaseException:  # interrupted mid-exchange: the stream may be out of step
                self.stop()
                raise

    def stop(self) -> None:
        """Ask the worker to exit (it never stops running jobs), then make sure it does."""
        with contextlib.suppress(OSError):
            self.control.settimeout(0.5)
            protocol.send_message(self.control, {"op": "stop"})
        with contextlib.suppress(OSError):
            self.control.close()
        try:
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)  # the worker alone: jobs have
            with contextlib.suppress(subprocess.TimeoutExpired):  # their own sessions
                self.process.wait(timeout=STOP_SECONDS)

    def fits(self, framework: str, env: Mapping[str, str]) -> str | None:
        """Why this worker cannot serve a ``framework`` job with ``env`` (None: it can)."""
        if not self.alive():
            return self.error or "the warm worker has exited (idle timeout, or killed)"
        if not self.ready.is_set():
            return f"the warm worker is still importing {self.framework}"
        if self.error:
            return self.error
        if self.framework != framework:
            return f"the warm worker serves {self.framework}, not {framework}"
        changed = environment_difference(self.env, env)
        if changed:
            names = ", ".join(changed[:5]) + (", ..." if len(changed) > 5 else "")
            return f"the environment changed since the warm worker started ({names})"
        if _affinity() != self.affinity:
            return "the CPU affinity changed since the warm worker started"
        module = self.changed_module()
        if module:
            return f"{module} changed on disk since the warm worker imported it"
        return None


class WarmPool:
    """This kernel's warm worker (at most one) and the rules for using it."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._worker: _Worker | None = None
        self._mode: str | None = None
        self._idle: float | None = None
        self._failed: tuple[str, tuple[tuple[str, str], ...]] | None = None
        self.last_job = ""

    # --- settings ---------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        if self._mode is not None:
            return self._mode
        value = os.environ.get(ENV_MODE, "").strip().lower()
        return value if value in MODES else "auto"

    @property
    def idle_timeout(self) -> float:
        if self._idle is not None:
            return self._idle
        with contextlib.suppress(ValueError):
            return max(0.0, float(os.environ.get(ENV_IDLE, "")))
        return DEFAULT_IDLE_SECONDS

    def configure(self, mode: str | None = None, idle_timeout: float | None = None) -> None:
        from neural_jupyter import validation

        if mode is not None:
            validation.choice("warm_start", mode, MODES)
            self._mode = mode
            if mode == "off":
                self.stop()
            elif mode == "on":
                self.prepare("pytorch")
        if idle_timeout is not None:
            validation.number("warm_idle_timeout", idle_timeout, 0.0, 7 * 24 * 3600.0)
            self._idle = float(idle_timeout)

    # --- the worker -------------------------------------------------------------------------
    def _current(self) -> _Worker | None:
        worker = self._worker
        if worker is not None and worker.owner != os.getpid():
            self._worker = None  # a fork of the kernel: the worker is the kernel's, not ours
            return None
        return worker

    def start(
        self,
        framework: str = "pytorch",
        *,
        env: Mapping[str, str] | None = None,
        wait: bool = False,
        timeout: float = 300.0,
    ) -> WarmStatus:
        """Start a worker for ``framework`` (replacing one that cannot serve it); returns at
        once unless ``wait``. Raises ``ConfigurationError`` where none can run."""
        from neural_jupyter.errors import ConfigurationError

        env = local_job_environment() if env is None else dict(env)
        reason = unsupported() or framework_refusal(framework, env)
        if reason:
            raise ConfigurationError(reason)
        with self._lock:
            worker = self._current()
            if (
                worker is None
                or (worker.ready.is_set() and worker.fits(framework, env))
                or worker.framework != framework
            ):
                worker = self._replace(framework, env)
        if wait:
            worker.ready.wait(timeout)
        return self.status()

    def _replace(self, framework: str, env: Mapping[str, str]) -> _Worker:
        if self._worker is not None:
            self._worker.stop()
        self._worker = _Worker(framework, env, self.idle_timeout)
        return self._worker

    def stop(self) -> bool:
        """Stop the worker; True if one was running. Running jobs go on."""
        with self._lock:
            worker, self._worker = self._current(), None
        if worker is None:
            return False
        running = worker.alive()
        worker.stop()
        return running

    def status(self) -> WarmStatus:
        common = {"mode": self.mode, "idle_timeout": self.idle_timeout, "last_job": self.last_job}
        reason = unsupported()
        if reason:
            return WarmStatus(state="unsupported", message=reason, **common)
        worker = self._current()
        if worker is None:
            return WarmStatus(state="stopped", **common)
        where = {"framework": worker.framework, "pid": worker.pid}
        if not worker.alive():
            message = worker.error or "the worker exited (idle timeout, or killed)"
            state = "failed" if worker.error else "exited"
            return WarmStatus(state=state, message=message, **where, **common)
        if not worker.ready.is_set():
            return WarmStatus(state="starting", **where, **common)
        if worker.error:
            return WarmStatus(state="failed", message=worker.error, **where, **common)
        return WarmStatus(
            state="ready",
            resident_bytes=resident_bytes(worker.pid),
            preload_seconds=worker.hello.get("preload_seconds"),
            **where,
            **common,
        )

    # --- hooks of the local platform --------------------------------------------------------
    def run(
        self,
        bundle: Path,
        job: Mapping[str, Any],
        command: Sequence[str],
        env: Mapping[str, str],
        output_fds: Sequence[int],
        exit_record: Path,
    ) -> int | None:
        """Start ``command`` (``python -u train.py ...`` in ``bundle``) in a child of the
        warm worker; its pid, or None when the job must start cold (``last_job`` says why)."""
        reason = self._refusal(job, command, env)
        worker = self._current()
        if reason is None and worker is not None:
            request = {
                "framework": job.get("framework", "pytorch"),
                "executable": sys.executable,
                "script": command[2],
                "args": list(command[3:]),
                "cwd": str(bundle),
                "env": dict(env),
                "umask": current_umask(),
                "exit_record": str(exit_record),
            }
            try:
                pid = worker.run(request, output_fds)
            except WarmUnavailable as exc:
                reason = str(exc)
            else:
                self.last_job = "warm"
                return pid
        self.last_job = f"cold: {reason}"
        return None

    def _refusal(
        self, job: Mapping[str, Any], command: Sequence[str], env: Mapping[str, str]
    ) -> str | None:
        if self.mode == "off":
            return "warm start is off"
        reason = unsupported()
        if reason:
            return reason
        if job.get("kind", "model") != "model":
            return "user code (a cell, function or script) always starts cold"
        if list(command[:2]) != [sys.executable, "-u"] or len(command) < 3:
            return "not a plain `python -u script` command"
        framework = str(job.get("framework", "pytorch"))
        reason = framework_refusal(framework, env)
        if reason:
            return reason
        if relative_pythonpath(env):
            return "PYTHONPATH has relative entries"
        if current_umask() is None:
            return "the umask cannot be read"
        worker = self._current()
        if worker is None:
            return "no warm worker was running" + (
                " (it starts now, for the next run)" if self.mode != "off" else ""
            )
        return worker.fits(framework, env)

    def after_cold_start(self, job: Mapping[str, Any], env: Mapping[str, str]) -> None:
        """After a job started cold: start (or replace) the worker in the background so the
        next run of this kind can be warm; nothing if warm start is off or cannot help."""
        framework = str(job.get("framework", "pytorch"))
        if self.mode == "off" or job.get("kind", "model") != "model":
            return
        if unsupported() or framework_refusal(framework, env) or relative_pythonpath(env):
            return
        key = (framework, tuple(sorted(env.items())))
        with self._lock:
            worker = self._current()
            if worker is not None and worker.alive() and not worker.ready.is_set():
                if worker.framework == framework and not environment_difference(worker.env, env):
                    return  # already on its way
            elif worker is not None and worker.fits(framework, env) is None:
                return
            if self._failed == key:
                return  # it failed with exactly these; do not try on every run
            self._replace(framework, env)
            threading.Thread(
                target=self._note_failure, args=(self._worker, key), daemon=True
            ).start()

    def _note_failure(self, worker: _Worker, key: tuple[str, Any]) -> None:
        worker.ready.wait()
        if worker.error:
            self._failed = key

    def prepare(self, framework: str) -> None:
        """With mode ``on``: start a worker for ``framework`` now (in the background) unless
        one is running or starting."""
        if self.mode != "on":
            return
        worker = self._current()
        if worker is not None and worker.alive():
            return
        env = local_job_environment()
        if unsupported() or framework_refusal(framework, env):
            return
        self.after_cold_start({"framework": framework, "kind": "model"}, env)

    def _forget_after_fork(self) -> None:
        self._lock = threading.RLock()
        self._worker = None


_pool = WarmPool()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_pool._forget_after_fork)


def start(framework: str = "pytorch", *, wait: bool = False, timeout: float = 300.0) -> WarmStatus:
    """Start this kernel's warm worker for ``framework`` (``pytorch``, or ``keras`` with
    ``KERAS_BACKEND=torch``) in the background; with ``wait``, return when it is ready."""
    return _pool.start(framework, wait=wait, timeout=timeout)


def stop() -> bool:
    """Stop the warm worker (jobs it started go on); True if one was running."""
    return _pool.stop()


def status() -> WarmStatus:
    """The warm worker's state, memory and why the last local job started cold, if it did."""
    return _pool.status()


def configure(mode: str | None = None, idle_timeout: float | None = None) -> None:
    """``mode``: ``auto`` (start after the first local run), ``on`` (also right away, in the
    background), ``off`` (never; stops a running worker). ``idle_timeout``: seconds without a
    job before the worker exits (0: only with the kernel); applies to workers started later."""
    _pool.configure(mode, idle_timeout)


def prepare(framework: str) -> None:
    """Start a worker for ``framework`` in the background if the mode is ``on``."""
    _pool.prepare(framework)


def run_job(
    bundle: Path,
    job: Mapping[str, Any],
    command: Sequence[str],
    env: Mapping[str, str],
    output_fds: Sequence[int],
    exit_record: Path,
) -> int | None:
    """The local platform's hook: the warm child's pid, or None to start ``command`` cold."""
    return _pool.run(bundle, job, command, env, output_fds, exit_record)


def after_cold_start(job: Mapping[str, Any], env: Mapping[str, str]) -> None:
    """The local platform's hook after a cold start (see ``WarmPool.after_cold_start``)."""
    _pool.after_cold_start(job, env)
