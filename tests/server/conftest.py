"""pytest-jupyter's server fixtures (``jp_fetch``, ``jp_serverapp``...) for the tests in this
folder only: their autouse fixtures give each test a throwaway Jupyter home and event loop,
which the rest of the suite does not want."""

from __future__ import annotations

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F403  (fixtures and async-test hooks)


@pytest.fixture
def jp_server_config(neural_home):
    """A server with only our extension enabled, reading the test's job store."""
    return {"ServerApp": {"jpserver_extensions": {"neural_jupyter.server": True}}}
