"""Session-wide test setup: the whole run (notebooks under nbval included) uses a throwaway
NEURAL_JUPYTER_HOME, so tests never touch the user's job store."""

from __future__ import annotations

import os
import tempfile


def pytest_configure(config):
    if "NEURAL_JUPYTER_HOME" not in os.environ:
        os.environ["NEURAL_JUPYTER_HOME"] = tempfile.mkdtemp(prefix="neural-jupyter-tests-")
    os.environ.setdefault("KERAS_BACKEND", "torch")


# fixtures shared by the deploy tests (a digits model trained once per session)
pytest_plugins = ("tests.deploy_support",)
