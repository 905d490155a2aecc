"""``JobDir``: the one owner of a job directory's file names.

Every layer that reads or writes a job's files (platforms, the job store's ``Job``, the
dashboard, sweeps) asks this object for the path instead of spelling it, so the layout can
change in one place:

    <job>/bundle/               the job bundle (train.py, job.json, data.npz, ...)
    <job>/bundle/output/        what train.py writes: model.pt, history.json, checkpoint.pt;
                                a user-code job's result.pkl and outputs/ (every file
                                under it comes back, see ``output_target``)
    <job>/stdout.log            event lines (JSON), as the local process or a log mirror wrote
    <job>/stderr.log            plain log lines
    <job>/remote.log            a remote log, every line with its stream (the log mirror)
    <job>/outputs_fetched.json  outputs were brought back (once) and which
    <job>/logs/node-R/          node R's stdout.log/stderr.log, for a job on several
                                machines whose node 0 writes the job's own logs (ssh)
    ...                         markers and records of the platform that ran it
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUNDLE = "bundle"
OUTPUT = "output"  # relative to the bundle; train.py's job.json "output_dir"
STREAMS = ("stdout", "stderr")

# Output files by what they are: artifact name -> file name in output/.
ARTIFACT_FILES = {"weights": "model.pt", "history": "history.json", "checkpoint": "checkpoint.pt"}
KERAS_WEIGHTS = "model.weights.h5"
_ARTIFACT_NAMES = {file: name for name, file in ARTIFACT_FILES.items()} | {KERAS_WEIGHTS: "weights"}
EXIT_RECORD = "status.json"  # train.py's own exit record in output/, not an artifact


def artifact_name(relative: str) -> str:
    """What an output file is (``model.pt`` -> ``weights``); other files keep their path."""
    return _ARTIFACT_NAMES.get(relative, relative)


def output_target(destination: Path, relative: str) -> Path | None:
    """Where the output file at ``relative`` (a ``/``-separated path under ``output/`` as a
    platform lists it) goes under ``destination``; None for train.py's exit record and for a
    path that would leave ``destination`` (absolute, ``..``, empty). Every platform brings
    back every other file: the set of outputs is whatever the job wrote."""
    parts = [part for part in str(relative).replace("\\", "/").split("/") if part not in ("", ".")]
    if not parts or ".." in parts or str(relative).startswith("/") or parts == [EXIT_RECORD]:
        return None
    return Path(destination).joinpath(*parts)


@dataclass(frozen=True)
class JobDir:
    """A job's local directory and the names of everything in it."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # --- the bundle and its outputs -------------------------------------------------------
    @property
    def bundle(self) -> Path:
        return self.root / BUNDLE

    @property
    def output(self) -> Path:
        return self.bundle / OUTPUT

    @property
    def spec(self) -> Path:
        return self.bundle / "spec.json"

    @property
    def model_source(self) -> Path:
        return self.bundle / "model.neural"

    @property
    def train_script(self) -> Path:
        return self.bundle / "train.py"

    @property
    def history(self) -> Path:
        return self.output / ARTIFACT_FILES["history"]

    def weights(self, framework: str = "pytorch") -> Path:
        return self.output / (KERAS_WEIGHTS if framework == "keras" else ARTIFACT_FILES["weights"])

    # --- logs -------------------------------------------------------------------------------
    def log(self, stream: str) -> Path:
        """``stdout.log`` or ``stderr.log``."""
        if stream not in STREAMS:
            raise ValueError(f"no log stream {stream!r}")
        return self.root / f"{stream}.log"

    @property
    def stdout(self) -> Path:
        return self.log("stdout")

    @property
    def stderr(self) -> Path:
        return self.log("stderr")

    @property
    def remote_log(self) -> Path:
        return self.root / "remote.log"

    def log_offset(self, stream: str) -> Path:
        """How far into the remote ``stream`` file a redacted mirror has read."""
        return self.root / f"{stream}.log.offset"

    @property
    def mirror_lock(self) -> Path:
        return self.root / ".mirror.lock"

    # --- markers and records ----------------------------------------------------------------
    @property
    def cancel_requested(self) -> Path:
        return self.root / "cancel_requested"

    @property
    def timed_out(self) -> Path:
        return self.root / "timed_out"

    @property
    def outputs_fetched(self) -> Path:
        return self.root / "outputs_fetched.json"

    @property
    def process(self) -> Path:
        """The local process record (pid, process group, start time)."""
        return self.root / "process.json"

    @property
    def process_exit(self) -> Path:
        """A local process's exit status, written by the process that reaped it when that
        is not the kernel (the warm worker)."""
        return self.root / "process_exit.json"

    @property
    def final_status(self) -> Path:
        """A status recorded when the platform can no longer tell (a deleted Job, a
        terminated instance)."""
        return self.root / "final_status.json"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    def node_logs(self, rank: int) -> Path:
        """Where node ``rank``'s logs are mirrored (a job on several machines)."""
        return self.root / "logs" / f"node-{int(rank)}"

    def scratch(self, name: str) -> Path:
        """A temporary file of a submit (an archive being uploaded...)."""
        return self.root / name

    def mark(self, marker: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        marker.touch()

    def read_json(self, path: Path) -> Any:
        """The JSON record at ``path``, or None if it is missing or unreadable."""
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def write_json(self, path: Path, record: Any) -> None:
        """Replace the record at ``path`` at once (never half written)."""
        self.write_text_atomic(path, json.dumps(record, indent=1, default=str))

    def write_text_atomic(self, path: Path, text: str) -> None:
        """Replace the file at ``path`` at once (never half written)."""
        self.root.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".tmp")
        partial.write_text(text)
        partial.replace(path)
