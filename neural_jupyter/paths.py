"""Where neural-jupyter keeps its own files (job store, job directories).

``NEURAL_JUPYTER_HOME`` overrides the platform's user data directory. It is read on every
call, not at import, so tests and users can change it within one process.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

ENV_HOME = "NEURAL_JUPYTER_HOME"


def home() -> Path:
    """The neural-jupyter home directory, created (mode 0o700) if it does not exist yet.

    The job store records which paid cloud instances exist and where job outputs are, so
    the directory is private to the user.
    """
    configured = os.environ.get(ENV_HOME, "").strip()
    path = (
        Path(configured).expanduser()
        if configured
        else Path(platformdirs.user_data_dir("neural-jupyter"))
    )
    return _ensure_dir(path)


def cache_dir() -> Path:
    """Files that can be rebuilt at any time (the grammar's parser tables): ``cache/`` under
    ``NEURAL_JUPYTER_HOME`` when that is set, else the platform's user cache directory."""
    configured = os.environ.get(ENV_HOME, "").strip()
    if configured:
        return _ensure_dir(Path(configured).expanduser() / "cache")
    return _ensure_dir(Path(platformdirs.user_cache_dir("neural-jupyter")))


def jobs_dir() -> Path:
    """The directory under which each job gets its own sub-directory, created on demand."""
    return _ensure_dir(home() / "jobs")


def _ensure_dir(path: Path) -> Path:
    # mode applies to the last component only; an existing directory keeps its permissions
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path
