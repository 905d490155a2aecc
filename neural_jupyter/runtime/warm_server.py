"""The warm worker: a process with the framework imported that forks one child per job.

The kernel (``runtime/warm.py``) starts it as

    python -u -c BOOT warm_server.py --control FD --framework pytorch --idle S --parent PID

with the environment a local job gets. It imports the framework (``preload``), then waits on
``FD``, one end of a socket pair whose other end only the kernel holds, for requests to run
a job. For each it forks: the child becomes the job (its own session and process group, the
job's stdout/stderr pipes, directory, environment and ``__main__``) and runs ``train.py``
exactly as ``python -u train.py`` would; the worker itself never runs job code, so every job
starts from the same pristine copy and nothing one job does (a patched module, memory, open
files) reaches the next.

Fork safety. The worker forks only while it is single-threaded and before CUDA is
initialised, and checks both before every fork (a refusal sends the job back to a cold
start). Importing the framework starts no CUDA context; torch's intra-op (OpenMP) and
inter-op pools start at the first parallel operation, which the worker never runs. The one
pool an import does start, OpenBLAS's (numpy), shuts itself down before a fork (its
``pthread_atfork`` handler); a probe fork after the imports lets it do so once, so every
later fork happens with one thread. Each child starts its own pools on first use, sized by
the same environment, as a fresh process would.

The worker exits when the kernel goes (end of file on the control socket, or its parent
changing), after ``--idle`` seconds without a job (running jobs keep it), or on a ``stop``
request. It never stops a job: jobs live in their own sessions and outlive it, as cold jobs
outlive the kernel. When a child ends, the worker writes its exit status (as
``subprocess.Popen.returncode`` reads it) to the exit record the kernel named, then reaps it.

Standard library only, and never imports neural_jupyter: a job's child is a copy of this
process, and must not find anything in ``sys.modules`` that a fresh interpreter lacks
besides the framework.
"""

import builtins
import contextlib
import gc
import importlib
import importlib.machinery
import io
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
import types
from collections.abc import Sequence
from typing import Any

HEADER = struct.Struct("!I")
MAX_MESSAGE = 64 * 2**20
GO_SECONDS = 10.0  # how long a forked child waits for the kernel's go-ahead
POLL_SECONDS = 1.0
SERVED = {
    # framework -> modules imported before the first fork: what a generated train.py imports,
    # and torch._dynamo, which the first torch.optim optimizer imports (~1 s).
    "pytorch": (
        "numpy",
        "torch",
        "torch.nn",
        "torch.nn.functional",
        "torch.optim",
        "torch._dynamo",
    ),
    "keras": ("numpy", "torch", "torch._dynamo", "keras"),
}


# --- messages: a 4-byte length, then JSON; file descriptors ride on the first bytes -------------
def send_message(sock: socket.socket, message: dict, fds: Sequence[int] = ()) -> None:
    data = json.dumps(message).encode("utf-8")
    frame = HEADER.pack(len(data)) + data
    sent = socket.send_fds(sock, [frame], list(fds)) if fds else sock.send(frame)
    if sent < len(frame):
        sock.sendall(frame[sent:])


def _receive_exactly(sock: socket.socket, size: int, fds: list[int] | None) -> bytes:
    chunks, remaining = [], size
    while remaining:
        if fds is not None and not chunks:
            data, received, _flags, _address = socket.recv_fds(sock, remaining, 8)
            fds.extend(received)
        else:
            data = sock.recv(remaining)
        if not data:
            raise EOFError("the other end closed the connection")
        chunks.append(data)
        remaining -= len(data)
    return b"".join(chunks)


def receive_message(sock: socket.socket, with_fds: bool = False) -> tuple[dict, list[int]]:
    """The next message and the file descriptors sent with it."""
    fds = [] if with_fds else None
    (size,) = HEADER.unpack(_receive_exactly(sock, HEADER.size, fds))
    if size > MAX_MESSAGE:
        raise EOFError(f"message of {size} bytes refused")
    message = json.loads(_receive_exactly(sock, size, None).decode("utf-8"))
    return message, fds or []


# --- the state a fresh interpreter starts with ---------------------------------------------------
def open_fds() -> set[int]:
    """The process's open file descriptors (without the one listing them)."""
    listing = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    try:
        return {int(name) for name in os.listdir(listing)} - {listing}
    finally:
        os.close(listing)


def thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


class Pristine:
    """What the worker looked like before it changed anything: signal handlers, sys.path
    (without the entry ``-c`` adds, which BOOT removed), file descriptors. Captured first
    thing, restored in every child."""

    def __init__(self) -> None:
        self.signals: dict[int, Any] = {}
        for signum in signal.valid_signals():
            try:
                handler = signal.getsignal(signum)
            except (ValueError, OSError):
                continue
            if handler is not None:
                self.signals[signum] = handler
        self.path = list(sys.path)
        self.fds = open_fds()
        self.library_fds: set[int] = (
            set()
        )  # opened by the framework's import: a fresh process has them

    def preloaded(self) -> None:
        self.library_fds = open_fds() - self.fds


def preload(framework: str) -> str | None:
    """Import the framework; the error text if that fails."""
    for name in SERVED[framework]:
        try:
            importlib.import_module(name)
        except BaseException as exc:
            return f"import {name} failed: {type(exc).__name__}: {exc}"
    return None


def cuda_initialised() -> bool:
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except Exception:
        return True


def module_files() -> dict[str, dict[str, Any]]:
    """Where each preloaded top-level package was loaded from, with its version and mtime:
    the kernel compares them before each job (a package upgraded since: go cold)."""
    found: dict[str, dict[str, Any]] = {}
    for name in ("numpy", "torch", "keras"):
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if not path:
            continue
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            mtime = None
        found[name] = {
            "file": path,
            "mtime_ns": mtime,
            "version": str(getattr(module, "__version__", "")),
        }
    return found


def resident_bytes() -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def probe_fork() -> None:
    """Fork once and let the child exit: fork-aware pools (OpenBLAS) stop their threads."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


# --- the worker -----------------------------------------------------------------------------
class Worker:
    def __init__(
        self,
        control: socket.socket,
        framework: str,
        idle_seconds: float,
        parent: int,
        pristine: Pristine,
    ) -> None:
        self.control = control
        self.framework = framework
        self.idle_seconds = idle_seconds
        self.parent = parent
        self.pristine = pristine
        self.children: dict[int, str] = {}  # pid -> exit record path
        self.last_activity = time.monotonic()
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)
        self.selector = selectors.DefaultSelector()
        self.pending: tuple[dict, list[int]] | None = (
            None  # a message read while waiting for a go-ahead
        )

    def serve(self) -> dict | None:
        """Answer requests until told or made to stop; returns a job only in a forked child."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the kernel's interrupts are not ours
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(self.wake_write, warn_on_full_buffer=False)
        self.selector.register(self.control, selectors.EVENT_READ)
        self.selector.register(self.wake_read, selectors.EVENT_READ)
        while True:
            if self.pending is None:
                ready = self.selector.select(POLL_SECONDS)
                self._drain_wakeups()
                self._reap()
                if os.getppid() != self.parent:
                    return None  # the kernel is gone
                if self._idle_expired():
                    return None
                if not any(key.fileobj is self.control for key, _ in ready):
                    continue
            try:
                message, fds = self._next_message()
            except (EOFError, OSError, ValueError):
                return None  # the kernel closed its end (or died)
            self.last_activity = time.monotonic()
            op = message.get("op")
            if op == "run":
                job = self._run(message, fds)
                if job is not None:
                    return job  # in the child
            else:
                for fd in fds:
                    os.close(fd)
                if op == "stop":
                    return None

    def _next_message(self) -> tuple[dict, list[int]]:
        if self.pending is not None:
            message, self.pending = self.pending, None
            return message
        return receive_message(self.control, with_fds=True)

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_read, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _idle_expired(self) -> bool:
        idle = time.monotonic() - self.last_activity
        return not self.children and self.idle_seconds > 0 and idle > self.idle_seconds

    def _reap(self) -> None:
        """Record each ended child's exit status, then reap it (the record exists before its
        pid disappears, so the kernel never sees it gone without one)."""
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            pid = info.si_pid
            exited = info.si_code == os.CLD_EXITED
            code = info.si_status if exited else -info.si_status
            record = self.children.pop(pid, None)
            if record:
                _write_record(record, {"exit_code": code, "pid": pid, "ended": time.time()})
                self.last_activity = time.monotonic()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)

    def _refusal(self, message: dict) -> str | None:
        if message.get("framework") != self.framework:
            return f"the worker serves {self.framework}, not {message.get('framework')}"
        if message.get("executable") != sys.executable:
            return "the job uses another Python executable"
        if thread_count() != 1:
            return f"the worker has {thread_count()} threads: forking it is not safe"
        if cuda_initialised():
            return "CUDA is initialised in the worker: forking it is not safe"
        return None

    def _run(self, message: dict, fds: list[int]) -> dict | None:
        request_id = message.get("id")
        refusal = self._refusal(message) if len(fds) == 2 else "the job's output pipes are missing"
        if refusal:
            for fd in fds:
                os.close(fd)
            send_message(self.control, {"id": request_id, "ok": False, "reason": refusal})
            if "safe" in refusal:
                raise SystemExit(3)  # no longer pristine: let the kernel start a fresh one
            return None
        go_read, go_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(go_write)
            return self._become_job(message, fds, go_read)
        os.close(go_read)
        for fd in fds:
            os.close(fd)
        send_message(self.control, {"id": request_id, "ok": True, "pid": pid})
        if self._go_ahead(request_id):
            self.children[pid] = message["exit_record"]
            os.write(go_write, b"g")
        os.close(go_write)  # without a "g" the child exits without running anything
        return None

    def _go_ahead(self, request_id: Any) -> bool:
        """Wait for the kernel to confirm it recorded the job (it may have been interrupted)."""
        self.control.settimeout(GO_SECONDS)
        try:
            message, fds = receive_message(self.control, with_fds=True)
        except TimeoutError:
            return False
        except (EOFError, OSError, ValueError):
            return False
        finally:
            self.control.settimeout(None)
        if message.get("op") == "go" and message.get("id") == request_id:
            return True
        self.pending = (message, fds)  # a new request: this job was abandoned
        return False

    # --- in the child ---------------------------------------------------------------------
    def _become_job(self, message: dict, fds: list[int], go_read: int) -> dict:
        for signum, handler in self.pristine.signals.items():
            try:
                if signal.getsignal(signum) is not handler:
                    signal.signal(signum, handler)
            except (OSError, ValueError):
                pass
        signal.set_wakeup_fd(-1)
        os.setsid()  # own session and process group, as start_new_session=True gives
        go = b""
        with contextlib.suppress(OSError):
            go = os.read(go_read, 1)
        if go != b"g":
            os._exit(0)
        os.close(go_read)
        self.selector.close()
        self.control.close()
        os.close(self.wake_read)
        os.close(self.wake_write)
        stdout_fd, stderr_fd = fds
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(stdout_fd, 1)
        os.dup2(stderr_fd, 2)
        keep = {0, 1, 2} | self.pristine.library_fds
        for fd in open_fds() - keep:
            with contextlib.suppress(OSError):
                os.close(fd)
        return message


def _write_record(path: str, record: dict) -> None:
    partial = path + ".tmp"
    try:
        with open(partial, "w") as handle:
            json.dump(record, handle)
        os.replace(partial, path)
    except OSError:
        pass  # the job's directory is gone (removed): nobody will ask


def _standard_stream(fd: int, old: Any) -> io.TextIOWrapper:
    """A text stream on ``fd`` as ``python -u`` makes it (unbuffered, write-through)."""
    raw = io.FileIO(fd, "wb", closefd=False)
    stream = io.TextIOWrapper(
        raw,
        encoding=old.encoding,
        errors=old.errors,
        newline="\n",
        line_buffering=False,
        write_through=True,
    )
    stream.mode = "w"
    return stream


def become_fresh_interpreter(job: dict, pristine: Pristine) -> tuple[str, types.ModuleType]:
    """Everything ``python -u SCRIPT ARGS`` would have in its own process: directory,
    environment, umask, argv, sys.path, standard streams, random seeds, a new __main__."""
    os.chdir(job["cwd"])
    os.umask(int(job["umask"]))
    os.environ.clear()
    os.environ.update(job["env"])
    script = os.path.join(os.getcwd(), job["script"])
    sys.argv = [job["script"], *job["args"]]
    sys.orig_argv = [sys.executable, "-u", *sys.argv]
    sys.path[:] = [os.path.dirname(os.path.realpath(script)), *pristine.path]
    sys.stdout = sys.__stdout__ = _standard_stream(1, sys.__stdout__)
    sys.stderr = sys.__stderr__ = _standard_stream(2, sys.__stderr__)
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()  # numpy seeds its global generator from entropy at import
    main = types.ModuleType("__main__")
    main.__file__ = script
    main.__cached__ = None
    main.__builtins__ = builtins
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", script)
    sys.modules["__main__"] = main
    return script, main


def run_as_main(script: str, main: types.ModuleType) -> None:
    """Run ``script`` as the interpreter runs a script; an uncaught exception is printed and
    ends the process as it would (exit 1; KeyboardInterrupt: by SIGINT)."""
    with open(script, "rb") as handle:
        code = compile(handle.read(), script, "exec", dont_inherit=True)
    try:
        exec(code, main.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:
        traceback = exc.__traceback__
        while traceback is not None and traceback.tb_frame.f_code.co_filename != script:
            traceback = traceback.tb_next  # this module's frames: a cold run has none
        # the hook prints the exception's own __traceback__ when it has one
        sys.excepthook(type(exc), exc.with_traceback(traceback), traceback)
        if isinstance(exc, KeyboardInterrupt):
            import atexit

            atexit._run_exitfuncs()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        raise SystemExit(1) from None


def parse_args(argv: list[str]) -> tuple[int, str, float, int]:
    options = {}
    for flag, value in zip(argv[::2], argv[1::2], strict=False):
        options[flag.lstrip("-")] = value
    return (
        int(options["control"]),
        options["framework"],
        float(options.get("idle", "0")),
        int(options["parent"]),
    )


def main(argv: list[str]) -> int:
    pristine = Pristine()
    control_fd, framework, idle_seconds, parent = parse_args(argv)
    control = socket.socket(fileno=control_fd)
    pristine.fds.discard(control_fd)
    started = time.monotonic()
    error = preload(framework) if framework in SERVED else f"{framework} is not served"
    if error is None:
        pristine.preloaded()
        probe_fork()
        if thread_count() != 1:
            error = f"{thread_count()} threads after the framework's import: forking is not safe"
        elif cuda_initialised():
            error = "importing the framework initialised CUDA: forking is not safe"
    if error is not None:
        send_message(control, {"op": "failed", "error": error})
        return 2
    gc.freeze()  # objects of the pristine image stay out of the children's collections
    send_message(
        control,
        {
            "op": "ready",
            "pid": os.getpid(),
            "executable": sys.executable,
            "python": sys.version,
            "framework": framework,
            "modules": module_files(),
            "preload_seconds": round(time.monotonic() - started, 3),
            "resident_bytes": resident_bytes(),
        },
    )
    worker = Worker(control, framework, idle_seconds, parent, pristine)
    job = worker.serve()
    if job is None:
        return 0
    del worker, control
    script, main_module = become_fresh_interpreter(job, pristine)
    del job, pristine
    run_as_main(script, main_module)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[2:] if sys.argv[:1] == ["-c"] else sys.argv[1:]))
