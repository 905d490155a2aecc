"""Shared fixtures: a real IPython shell that raises when a cell fails, isolated job homes."""

from __future__ import annotations

import os

import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

os.environ.setdefault("KERAS_BACKEND", "torch")
# every other test starts its jobs cold; tests/test_warm_start.py switches warm start on
os.environ.setdefault("NEURAL_JUPYTER_WARM_START", "off")


class CellFailed(AssertionError):
    """A cell that was expected to succeed raised; carries the original exception."""


class Shell:
    """A real ``InteractiveShell`` with the extension loaded.

    ``run`` raises ``CellFailed`` if the cell fails, so a test cannot pass by swallowing an
    error; ``run_error`` returns the exception a cell raised (and fails if it raised none).
    """

    def __init__(self) -> None:
        config = Config()
        config.HistoryManager.hist_file = ":memory:"
        config.InteractiveShell.colors = "NoColor"
        self.shell = InteractiveShell(config=config)
        self.run("%load_ext neural_jupyter")

    @property
    def ns(self) -> dict:
        return self.shell.user_ns

    def run(self, cell: str):
        result = self.shell.run_cell(cell, store_history=True)
        error = result.error_before_exec or result.error_in_exec
        if error is not None:
            raise CellFailed(f"cell failed: {type(error).__name__}: {error}") from error
        return result.result

    def run_error(self, cell: str) -> BaseException:
        result = self.shell.run_cell(cell, store_history=True)
        error = result.error_before_exec or result.error_in_exec
        if error is None:
            raise AssertionError("the cell was expected to fail but succeeded")
        return error


@pytest.fixture(autouse=True)
def _no_custom_layers_left():
    """Layers a test (or a docs page) registers do not leak into the next test."""
    yield
    from neural_jupyter.dsl.custom import registered_layers, unregister_layer

    for name in registered_layers():
        unregister_layer(name)


@pytest.fixture(autouse=True)
def _no_warm_settings_left():
    """Warm-start settings a test (or a docs page: ``%config WarmMagics...``) changes do not
    leak into the next test: the mode and idle timeout go back to the environment's."""
    yield
    from neural_jupyter.runtime import warm

    warm._pool._mode = None
    warm._pool._idle = None


@pytest.fixture
def neural_home(tmp_path, monkeypatch):
    """An empty NEURAL_JUPYTER_HOME (job store, job directories) for one test."""
    home = tmp_path / "neural-home"
    monkeypatch.setenv("NEURAL_JUPYTER_HOME", str(home))
    return home


@pytest.fixture
def ip(neural_home):
    shell = Shell()
    yield shell
    shell.shell.cleanup() if hasattr(shell.shell, "cleanup") else None
