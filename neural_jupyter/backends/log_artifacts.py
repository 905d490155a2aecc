"""Output files that come home through a job's log: after ``train.py`` ends, the launcher
(``launcher.py --print-outputs MAX_BYTES``) prints every file under ``output/`` base64-encoded
between ``##neural-artifact`` marker lines, for platforms whose log is the only way back
(Kubernetes pods, Ray jobs, Modal sandboxes). ``decode_artifacts`` rebuilds them here."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from neural_jupyter.runtime.jobdir import artifact_name, output_target

ARTIFACT_MARK = "##neural-artifact"  # the launcher's ARTIFACT_MARK
DEFAULT_MAX_MB = 8.0  # what a job may print into its log, unless a platform option says


def is_artifact_line(line: str) -> bool:
    return line.startswith(ARTIFACT_MARK)


def skipped(lines: Iterable[str]) -> list[str]:
    """The output files the launcher left out (over its byte budget), by path."""
    return [
        unquote(line.split(" ")[1])
        for line in lines
        if line.startswith(f"{ARTIFACT_MARK}-skipped") and len(line.split(" ")) > 1
    ]


def decode_artifacts(lines: Iterable[str], destination: Path) -> dict[str, Path]:
    """Rebuild the files of ``##neural-artifact`` log lines under ``destination`` (each one's
    SHA-256 checked, its path under ``output/`` kept); artifact name (``weights``,
    ``history``, or the path) -> path."""
    files: dict[str, dict[str, Any]] = {}
    for line in lines:
        if not line.startswith(ARTIFACT_MARK):
            continue
        tag, _, rest = line.partition(" ")
        if tag == f"{ARTIFACT_MARK}-begin":
            path, size, digest = rest.split(" ")
            files[path] = {"size": int(size), "sha256": digest, "parts": [], "done": False}
        elif tag == ARTIFACT_MARK:
            path, _, chunk = rest.partition(" ")
            if path in files:
                files[path]["parts"].append(base64.b64decode(chunk))
        elif tag == f"{ARTIFACT_MARK}-end" and rest in files:
            files[rest]["done"] = True
    found: dict[str, Path] = {}
    for path, record in files.items():
        blob = b"".join(record["parts"])
        if not record["done"] or hashlib.sha256(blob).hexdigest() != record["sha256"]:
            continue
        relative = unquote(path.removeprefix("output/"))  # the launcher quotes paths
        target = output_target(destination, relative)
        if target is None:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob)
        found[artifact_name(relative)] = target
    return found
