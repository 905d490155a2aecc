"""torchrun as this package uses it: the command that starts ``train.py`` on several
processes, and the first failed rank read back from torchrun's closing report.

When a process dies, torchrun stops the others and prints a report whose "Root Cause (first
observed failure)" names the rank, its exit code and its traceback (or the signal that killed
it). The job's error is that rank's, not the connection errors of the ranks it left behind.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass

_FIELD = re.compile(r"^\s*(time|host|rank|exitcode|error_file|traceback)\s*:\s*(.*)$")
_RANK = re.compile(r"(\d+)\s*\(local_rank:\s*(\d+)\)")


def local_command(procs_per_node: int, script: str = "train.py") -> list[str]:
    """``python -m torch.distributed.run`` for ``procs_per_node`` processes on this machine
    (a standalone rendezvous on a free local port)."""
    return [
        sys.executable,
        "-u",
        *("-m", "torch.distributed.run", "--standalone", "--nnodes", "1"),
        *("--nproc-per-node", str(procs_per_node), script),
    ]


@dataclass(frozen=True)
class FailedRank:
    rank: int
    local_rank: int
    exit_code: int | None
    host: str
    cause: str

    def describe(self) -> str:
        where = f" on {self.host}" if self.host else ""
        return f"rank {self.rank} (local rank {self.local_rank}{where}) failed: {self.cause}"


def first_failure(lines: Sequence[str]) -> FailedRank | None:
    """The root cause of torchrun's closing report in ``lines`` (the job's last stderr
    lines), or None where there is none."""
    start = next((i for i, line in enumerate(lines) if "Root Cause" in line), None)
    if start is None:
        return None
    fields: dict[str, str] = {}
    for line in lines[start + 1 :]:
        if line.startswith("====="):
            break
        match = _FIELD.match(line)
        if match:
            fields.setdefault(match.group(1), match.group(2).strip())
    rank = _RANK.search(fields.get("rank", ""))
    if rank is None:
        return None
    code = re.match(r"-?\d+", fields.get("exitcode", ""))
    exit_code = int(code.group()) if code else None
    cause = fields.get("traceback", "")
    if not cause or cause.startswith("To enable traceback"):
        cause = f"exit code {exit_code}" if exit_code is not None else "it ended"
    return FailedRank(
        int(rank.group(1)), int(rank.group(2)), exit_code, fields.get("host", ""), cause
    )
