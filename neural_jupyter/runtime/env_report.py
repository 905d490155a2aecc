"""One report of where we run and on what: what ``%neural_env`` displays.

Building it imports no framework: versions come from installed package metadata.
"""

from __future__ import annotations

import html
import importlib.metadata
import os
import platform as _platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from neural_jupyter.redaction import redact
from neural_jupyter.runtime.accelerators import Accelerators, Runner, detect_accelerators
from neural_jupyter.runtime.environment import PathExists, Platform, ReadText, detect_platform
from neural_jupyter.runtime.gpu_settings import job_environment

NOT_INSTALLED = "not installed"

# framework -> distributions that provide it, first found wins
FRAMEWORK_DISTRIBUTIONS: Mapping[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tf-nightly"),
    "keras": ("keras",),
    "jax": ("jax",),
}


def framework_versions(version: Callable[[str], str] | None = None) -> dict[str, str]:
    """Installed version of each framework, or ``"not installed"``, without importing it."""
    version = importlib.metadata.version if version is None else version
    found = {}
    for framework, distributions in FRAMEWORK_DISTRIBUTIONS.items():
        found[framework] = NOT_INSTALLED
        for distribution in distributions:
            try:
                found[framework] = version(distribution)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return found


def _mib(value: int | None) -> str:
    return "? MiB" if value is None else f"{value} MiB"


def _gib(value: int | None) -> str:
    return "unknown" if value is None else f"{value / 2**30:.1f} GiB"


@dataclass(frozen=True)
class EnvironmentReport:
    """Platform, accelerators, framework versions, Python and the job settings that apply."""

    platform: Platform
    accelerators: Accelerators
    frameworks: Mapping[str, str] = field(hash=False)
    python: str = ""
    settings: Mapping[str, str] = field(default_factory=dict, hash=False)
    warm_start: str = ""  # the warm worker of local jobs: state, pid, resident memory

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs, in display order; shared by the text and HTML views."""
        acc = self.accelerators
        gpus = "; ".join(
            f"{g.index}: {g.name} ({_mib(g.memory_used_mb)} used of {_mib(g.memory_total_mb)})"
            for g in acc.gpus
        )
        rows = [
            ("Platform", self.platform.label),
            ("Evidence", "; ".join(self.platform.evidence) or "no platform markers found"),
            ("GPUs", f"{gpus} [{acc.source}]" if gpus else "none"),
            ("TPU", acc.tpu or "none"),
            ("Apple MPS", "yes" if acc.mps else "no"),
            ("CPUs", str(acc.cpu_count)),
            ("RAM", _gib(acc.ram_bytes)),
            ("Python", self.python),
            ("Frameworks", ", ".join(f"{k} {v}" for k, v in self.frameworks.items())),
            (
                "Job settings",
                ", ".join(f"{k}={v}" for k, v in self.settings.items())
                or "none needed (already set in this environment)",
            ),
        ]
        if self.warm_start:
            rows.append(("Warm start", self.warm_start))
        rows += [("Note", note) for note in acc.notes]
        return [(label, redact(value)) for label, value in rows]

    def __str__(self) -> str:
        return "\n".join(f"{label + ':':<14}{value}" for label, value in self.rows())

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("EnvironmentReport(...)" if cycle else str(self))

    def _repr_html_(self) -> str:
        cells = "".join(
            f"<tr><th style='text-align:left'>{html.escape(label)}</th>"
            f"<td style='text-align:left'>{html.escape(value)}</td></tr>"
            for label, value in self.rows()
        )
        return f"<table class='neural-env'>{cells}</table>"


def environment_report(
    environ: Mapping[str, str] | None = None,
    path_exists: PathExists | None = None,
    run: Runner | None = None,
    *,
    modules: Mapping[str, Any] | None = None,
    read_text: ReadText | None = None,
    version: Callable[[str], str] | None = None,
    warm_start: str | None = None,
) -> EnvironmentReport:
    """Detect everything and build the report; every outside input is injectable."""
    environ = os.environ if environ is None else environ
    if warm_start is None:
        from neural_jupyter.runtime import warm

        warm_start = warm.status().summary()
    return EnvironmentReport(
        platform=detect_platform(environ, path_exists, read_text=read_text),
        accelerators=detect_accelerators(
            environ, path_exists, run, modules=modules, read_text=read_text
        ),
        frameworks=framework_versions(version),
        python=f"{_platform.python_version()} ({_platform.python_implementation()})",
        settings=job_environment(base=environ),
        warm_start=warm_start,
    )
