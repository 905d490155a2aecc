"""A local job's output, redacted before it reaches the disk.

The training process writes into two pipes; this small relay process (its own session, so it
outlives the kernel like the job does, and is not stopped with the job's process group)
reads them, masks secrets line by line (``redaction.redact``: patterns, the secret-looking
environment variables it inherits and the values the kernel had registered, handed over on
its stdin) and appends the lines to ``stdout.log``/``stderr.log``. Readers of those files
(``LineTail``, ``Job.logs``, the dashboard) therefore never see a secret the job printed.

It exits when both pipes are closed, or, once the training process has gone, when nothing
more arrived for ``DRAIN_SECONDS`` (a daemon the job left behind cannot keep it alive).
A line longer than ``MAX_LINE`` bytes is written in pieces; a partial line (a progress bar
redrawn with ``\\r``) is written after ``PARTIAL_SECONDS`` without news.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from neural_jupyter.runtime.processes import pid_alive

MAX_LINE = 1 << 20
PARTIAL_SECONDS = 1.0
DRAIN_SECONDS = 2.0
POLL_SECONDS = 0.5


class _Stream:
    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.partial = b""
        self.last = time.monotonic()
        self.open = True

    def feed(self, data: bytes) -> None:
        self.last = time.monotonic()
        data = self.partial + data
        cut = data.rfind(b"\n") + 1
        complete, self.partial = data[:cut], data[cut:]
        if len(self.partial) > MAX_LINE:
            complete, self.partial = complete + self.partial + b"\n", b""
        if complete:
            text = complete.decode("utf-8", errors="replace")
            lines = text.split("\n")[:-1]
            self._write("".join(_masked(line) + "\n" for line in lines))

    def flush_partial(self, *, final: bool = False) -> None:
        if self.partial and (final or time.monotonic() - self.last > PARTIAL_SECONDS):
            text = self.partial.decode("utf-8", errors="replace")
            self.partial = b""
            self._write(_masked(text) + ("\n" if final else ""))

    def _write(self, text: str) -> None:
        data = text.encode("utf-8")
        while data:
            try:
                written = os.write(self.out, data)
            except OSError:  # a full disk: drop the line, keep draining (the job must not
                return  # block or die on a broken pipe because its log cannot grow)
            data = data[written:]


def _masked(text: str) -> str:
    """A line as it may be written: redacted, or withheld if redaction itself failed."""
    from neural_jupyter.redaction import redact

    try:
        return redact(text)
    except Exception:  # never write what could not be checked, never stop relaying
        return "[neural-jupyter: line withheld: it could not be checked for secrets]"


def relay(stdout_fd: int, stderr_fd: int, stdout_path: Path, stderr_path: Path) -> None:
    """Copy both pipes to their files, redacted, until they close (see the module docstring)."""
    from neural_jupyter.redaction import register_secret

    handover = json.loads(sys.stdin.read() or "{}")
    for value in handover.get("secrets", []):
        register_secret(value)
    job_pid = handover.get("pid")
    streams = {
        stdout_fd: _Stream(stdout_fd, stdout_path),
        stderr_fd: _Stream(stderr_fd, stderr_path),
    }
    selector = selectors.DefaultSelector()
    for fd in streams:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    gone_since: float | None = None
    while any(s.open for s in streams.values()):
        for key, _ in selector.select(POLL_SECONDS):
            stream = streams[key.fd]
            try:
                data = os.read(key.fd, 1 << 16)
            except BlockingIOError:
                continue
            if data:
                stream.feed(data)
                gone_since = None
            else:
                stream.open = False
                stream.flush_partial(final=True)
                selector.unregister(key.fd)
        for stream in streams.values():
            stream.flush_partial()
        if job_pid and not pid_alive(int(job_pid)):
            now = time.monotonic()
            gone_since = gone_since or now
            if now - gone_since > DRAIN_SECONDS and all(
                now - s.last > DRAIN_SECONDS for s in streams.values()
            ):
                break
    for stream in streams.values():
        stream.flush_partial(final=True)
        os.close(stream.out)


@contextlib.contextmanager
def relayed_output(
    stdout_path: Path, stderr_path: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[int, int, RelayHandle]]:
    """Start a relay writing to the two files; yields the write ends of its pipes (give them to
    the job as stdout and stderr) and a handle to tell it the job's pid. ``env`` is the job's
    environment (the relay masks the values of its secret-looking variables). The parent's
    copies of the pipe ends are closed on exit."""
    from neural_jupyter.redaction import registered_secrets

    for path in (stdout_path, stderr_path):  # they exist as soon as the job does
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    package_root = str(Path(__file__).resolve().parents[2])
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from neural_jupyter.runtime.log_relay import main; main(sys.argv[2:])"
    )
    try:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                code,
                package_root,
                str(out_read),
                str(err_read),
                str(stdout_path),
                str(stderr_path),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(out_read, err_read),
            start_new_session=True,
            env=env,
        )
    except BaseException:
        for fd in (out_read, out_write, err_read, err_write):
            os.close(fd)
        raise
    os.close(out_read)
    os.close(err_read)
    handle = RelayHandle(process, registered_secrets())
    try:
        yield out_write, err_write, handle
    finally:
        os.close(out_write)
        os.close(err_write)
        handle.start()


class RelayHandle:
    def __init__(self, process: subprocess.Popen, secrets: list[str]) -> None:
        self.process = process
        self.secrets = secrets
        self.job_pid: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self) -> None:
        """Hand over the job's pid and the registered secrets (through the relay's stdin)."""
        assert self.process.stdin is not None
        with contextlib.suppress(BrokenPipeError, OSError):
            self.process.stdin.write(
                json.dumps({"pid": self.job_pid, "secrets": self.secrets}).encode()
            )
        with contextlib.suppress(BrokenPipeError, OSError):
            self.process.stdin.close()


def main(argv: list[str]) -> None:
    stdout_fd, stderr_fd, stdout_path, stderr_path = argv
    relay(int(stdout_fd), int(stderr_fd), Path(stdout_path), Path(stderr_path))


if __name__ == "__main__":
    main(sys.argv[1:])
