"""The runner: the entry point of a bundle that runs the user's own code.

A user-code bundle is started like any bundle (``python train.py --job job.json``); its
``train.py`` is this file. It needs the standard library only, plus ``cloudpickle`` for a
function or a cell (the bundle's ``requirements.txt`` names it), and runs one of:

- ``function``: ``payload.pkl`` holds the function and its arguments; the return value, or the
  exception with its traceback, goes to ``output/result.pkl``.
- ``cell``: ``cell.py`` runs with the inputs from ``payload.pkl`` defined; the named outputs go
  to ``output/result.pkl`` (a name the cell did not define is an error naming it).
- ``script``: ``project/<script> ARGS`` runs in a child process with ``project/`` as its working
  directory, ``NEURAL_DATA_DIR`` (the shipped data folder) and ``NEURAL_OUTPUT_DIR`` (its
  outputs folder, copied to ``output/<outputs>`` at the end).

Around it the runner speaks the job protocol on stdout (``start``, ``artifact``, ``done`` or
``error``), copies the code's output through ``neural_jupyter_progress`` (progress bars become
plain lines; recognized progress lines of Keras, tqdm, Lightning, ... become ``epoch`` and
``batch`` events) and makes ``neural_jupyter.report`` importable even where neural-jupyter is
not installed.
"""

from __future__ import annotations

import argparse
import builtins
import codecs
import importlib.util
import json
import linecache
import os
import pickle
import platform
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUTPUT = "output"
RESULT = "result.pkl"
PAYLOAD = "payload.pkl"
CELL = "cell.py"
PROJECT = "project"
DATA = "data"
IDLE_SECONDS = 0.5  # a progress bar redrawn in place is passed on after this long
DRAIN_SECONDS = 5.0  # how long output of leftover child processes is awaited at the end
EXIT_TIME_LIMIT = 124
CHILDREN: list[subprocess.Popen] = []

sys.path.insert(0, str(HERE))
from neural_jupyter_report import JOB_ENV, emit  # noqa: E402  (shipped beside this file)


# --- output: progress bars to lines, recognized progress to events ---------------------------
class OutputCopier:
    """Copies what the job writes to fds 1 and 2 through pipes, line by line.

    Works at the file-descriptor level, so output of C extensions and child processes is
    seen too. Each line goes to the stream it came from; the events recognized in it go to
    stdout after it.
    """

    def __init__(self) -> None:
        try:
            from neural_jupyter_progress import ProgressDispatcher, TerminalLines
        except ImportError:  # a bundle without the recognizers still runs
            self.dispatcher = None
            self.lines_class = None
        else:
            self.dispatcher = ProgressDispatcher()
            self.lines_class = TerminalLines
        self.lock = threading.Lock()
        self.saved: dict[int, int] = {}
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        if self.lines_class is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        for fd in (1, 2):
            self.saved[fd] = os.dup(fd)
            read, write = os.pipe()
            os.dup2(write, fd)
            os.close(write)
            thread = threading.Thread(target=self._pump, args=(read, fd), daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self) -> None:
        """Restore fds 1 and 2, pass on what is left and the events still held back."""
        if not self.saved:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in self.saved.items():
            os.dup2(saved, fd)  # closes our copy of the pipe's writing end
        for thread in self.threads:
            thread.join(DRAIN_SECONDS)  # the pumps end at the pipes' end of file
        saved, self.saved = self.saved, {}
        for fd in saved.values():
            os.close(fd)
        if self.dispatcher is not None:
            with self.lock:
                for event in self.dispatcher.flush():
                    emit(event)

    def _pump(self, read: int, fd: int) -> None:
        lines = self.lines_class()
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        target = self.saved[fd]
        while True:
            ready, _, _ = select.select([read], [], [], IDLE_SECONDS)
            if not ready:
                self._write(target, lines.idle())
                continue
            chunk = os.read(read, 65536)
            if not chunk:
                break
            self._write(target, lines.feed(decoder.decode(chunk)))
        self._write(target, lines.feed(decoder.decode(b"", final=True)) + lines.close())
        os.close(read)

    def _write(self, target: int, lines: list[str]) -> None:
        if not lines:
            return
        with self.lock:
            for line in lines:
                _write_all(target, (line + "\n").encode("utf-8", "replace"))
                for event in self.dispatcher.feed(line):
                    _write_all(self.saved.get(1, 1), (json.dumps(event) + "\n").encode())


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


# --- what every kind shares ------------------------------------------------------------------
def report_shim() -> str | None:
    """A folder with a stand-in ``neural_jupyter`` package (just ``report``) when the real one
    is not installed, so code written in the notebook runs unchanged; else None."""
    if importlib.util.find_spec("neural_jupyter") is not None:
        return None
    folder = Path(tempfile.mkdtemp(prefix="neural-jupyter-shim-"))
    (folder / "neural_jupyter").mkdir()
    (folder / "neural_jupyter" / "__init__.py").write_text(
        '"""Stand-in inside a job: only report()."""\n'
        "from neural_jupyter_report import report  # noqa: F401\n"
    )
    sys.path.append(str(folder))
    return str(folder)


def error_record(exc: BaseException, skip: int = 1) -> dict[str, Any]:
    """The exception as plain data: type, message, and the traceback without our frames."""
    tb = exc.__traceback__
    for _ in range(skip):
        tb = tb.tb_next if tb is not None else None
    lines = traceback.format_exception(type(exc), exc, tb)
    return {
        "type": type(exc).__name__,
        "qualname": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": str(exc),
        "traceback": "".join(lines),
    }


def write_result(record: dict[str, Any]) -> None:
    """Pickle ``record`` to output/result.pkl; what cannot be pickled is dropped, not fatal."""
    import cloudpickle

    path = HERE / OUTPUT / RESULT
    try:
        data = cloudpickle.dumps(record)
    except Exception as exc:
        if record.get("ok"):
            raise RuntimeError(
                f"the result could not be pickled to send it back: {type(exc).__name__}: {exc}"
            ) from exc
        record = {k: v for k, v in record.items() if k != "exception"}
        data = cloudpickle.dumps(record)
    path.write_bytes(data)
    emit({"event": "artifact", "name": "result", "path": f"{OUTPUT}/{RESULT}"})


def load_payload(job: dict[str, Any]) -> Any:
    try:
        import cloudpickle  # noqa: F401  (pickled functions refer to it)
    except ImportError as exc:
        raise RuntimeError(
            "this job needs the cloudpickle package (listed in the bundle's requirements.txt)"
        ) from exc
    expected = job.get("python")
    running = platform.python_version()
    try:
        with (HERE / PAYLOAD).open("rb") as handle:
            payload = pickle.load(handle)
    except Exception as exc:
        if expected and expected.rsplit(".", 1)[0] != running.rsplit(".", 1)[0]:
            raise RuntimeError(
                f"the payload was pickled by Python {expected} and cannot be loaded by "
                f"Python {running}: run the job with the notebook's Python version"
            ) from exc
        raise
    for filename, lines in payload.get("sources", {}).items():
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
    if "function" in payload:
        restore_file_names(payload["function"], payload.get("code_files", {}))
    return payload


DYNAMIC = "<dynamic-code>"  # cloudpickle's file name for code sent by value


def restore_file_names(function: Any, files: dict[str, str]) -> None:
    """Give code sent by value its notebook file names back, so tracebacks show its lines."""
    seen: set[int] = set()

    def fixed(code: types.CodeType) -> types.CodeType:
        consts = tuple(fixed(c) if isinstance(c, types.CodeType) else c for c in code.co_consts)
        name = files.get(f"{code.co_name}:{code.co_firstlineno}")
        if code.co_filename == DYNAMIC and name:
            return code.replace(co_consts=consts, co_filename=name)
        return code.replace(co_consts=consts)

    def visit(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, type):
            for member in vars(obj).values():
                visit(getattr(member, "__func__", member))
        elif isinstance(obj, types.FunctionType) and obj.__code__.co_filename == DYNAMIC:
            obj.__code__ = fixed(obj.__code__)
            for name in obj.__code__.co_names:
                visit(obj.__globals__.get(name))
            for cell in obj.__closure__ or ():
                try:
                    visit(cell.cell_contents)
                except ValueError:
                    continue

    visit(function)


# --- the kinds ---------------------------------------------------------------------------------
def run_function(job: dict[str, Any]) -> int:
    payload = load_payload(job)
    function = payload["function"]
    try:
        value = function(*payload.get("args", ()), **payload.get("kwargs", {}))
    except BaseException as exc:
        record = error_record(exc)
        write_result({"ok": False, **record, "exception": exc})
        raise Reported(record) from None
    write_result({"ok": True, "value": value})
    return 0


def run_cell(job: dict[str, Any]) -> int:
    payload = load_payload(job)
    source = (HERE / CELL).read_text(encoding="utf-8")
    filename = job.get("cell_name") or "<cell>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    namespace.update(payload.get("inputs", {}))
    try:
        exec(compile(source, filename, "exec"), namespace)
    except BaseException as exc:
        record = error_record(exc)
        write_result({"ok": False, **record, "exception": exc})
        raise Reported(record) from None
    wanted = job.get("outputs", [])
    missing = [name for name in wanted if name not in namespace]
    if missing:
        defined = sorted(
            name
            for name in namespace
            if not name.startswith("_") and name not in payload.get("inputs", {})
        )
        record = {
            "type": "MissingOutputError",
            "qualname": "MissingOutputError",
            "message": f"the cell did not define {', '.join(map(repr, missing))}"
            + (f" (it defined: {', '.join(defined)})" if defined else ""),
            "traceback": "",
            "missing": missing,
        }
        write_result({"ok": False, **record})
        raise Reported(record)
    write_result({"ok": True, "outputs": {name: namespace[name] for name in wanted}})
    return 0


def run_script(job: dict[str, Any], shim: str | None) -> int:
    project = HERE / PROJECT
    outputs = project / job.get("outputs", "outputs")
    outputs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    paths = [str(HERE), *([shim] if shim else []), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env["NEURAL_OUTPUT_DIR"] = str(outputs)
    if (HERE / DATA).exists():
        env["NEURAL_DATA_DIR"] = str(HERE / DATA)
    command = [sys.executable, "-u", str(project / job["script"]), *job.get("args", [])]
    child = subprocess.Popen(command, cwd=project, env=env)
    CHILDREN.append(child)
    code = child.wait()
    if any(outputs.iterdir()):
        destination = HERE / OUTPUT / Path(job.get("outputs", "outputs")).name
        shutil.copytree(outputs, destination, dirs_exist_ok=True)
        emit({"event": "artifact", "name": "outputs", "path": str(destination.relative_to(HERE))})
    if code != 0:
        raise Reported(
            {
                "type": "ScriptError",
                "qualname": "ScriptError",
                "message": f"{job['script']} exited with code {code}",
                "traceback": "",
            },
            exit_code=code if 0 < code < 256 else 1,
        )
    return 0


class Reported(Exception):
    """The user's code failed; ``record`` says how (already written where it belongs)."""

    def __init__(self, record: dict[str, Any], exit_code: int = 1) -> None:
        super().__init__(record.get("message"))
        self.record = record
        self.exit_code = exit_code


def time_limit(seconds: float, copier: OutputCopier) -> threading.Timer:
    """Stop the job (exit code 124) when its budget is spent, saying so."""

    def expire() -> None:
        event = {
            "event": "error",
            "type": "TimeLimit",
            "qualname": "TimeLimit",
            "message": f"stopped at its time limit ({seconds:g} s)",
            "traceback": "",
        }
        _write_all(copier.saved.get(1, 1), (json.dumps(event) + "\n").encode())
        for child in CHILDREN:
            child.kill()
        os._exit(EXIT_TIME_LIMIT)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


# --- main --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the user's code of a job bundle.")
    parser.add_argument("--job", default="job.json")
    args, _ = parser.parse_known_args(argv)
    job = json.loads((HERE / args.job).read_text(encoding="utf-8"))
    os.environ[JOB_ENV] = str(job.get("job_id", "job"))
    os.environ.setdefault("TTY_COMPATIBLE", "1")  # Rich (Lightning's bar) redraws live
    (HERE / OUTPUT).mkdir(exist_ok=True)
    shim = report_shim()
    copier = OutputCopier()
    copier.start()
    if job.get("max_seconds"):
        time_limit(float(job["max_seconds"]), copier)
    began = time.time()
    kind = job.get("kind")
    emit(
        {
            "event": "start",
            "runner": kind,
            "name": job.get("name"),
            "python": platform.python_version(),
            "host": platform.node(),
            "pid": os.getpid(),
        }
    )
    code, record = 0, None
    try:
        if kind == "function":
            code = run_function(job)
        elif kind == "cell":
            code = run_cell(job)
        elif kind == "script":
            code = run_script(job, shim)
        else:
            raise RuntimeError(f"this runner does not know bundles of kind {kind!r}")
    except Reported as failure:
        code, record = failure.exit_code, failure.record
    except BaseException as exc:  # the runner itself failed (payload, result, ...)
        code, record = 1, error_record(exc, skip=0)
    finally:
        copier.stop()
    if record is not None:
        sys.stderr.write(record.get("traceback") or record["message"] + "\n")
        sys.stderr.flush()
        emit({"event": "error", **record})
    else:
        emit({"event": "done", "wall_time": round(time.time() - began, 3), "runner": kind})
    return code


if __name__ == "__main__":
    sys.exit(main())
