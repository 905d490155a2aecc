"""IPython magics: thin classes, one module per concern, that parse arguments (shell-style),
call the public API and display. Each magic's ``@argument`` help strings are its documentation
(``%neural_compile?``) and feed the generated magics reference (``docs/magics.md``).

Options are validated traitlets: ``%config NeuralMagics.default_framework = "keras"`` (shared by
the ``%neural_*`` magics), ``DeployMagics.*`` and ``WarmMagics.*``. Nothing heavy is imported
here: each magic imports what it uses when it runs.
"""

from __future__ import annotations

from typing import Any

from neural_jupyter.magics.arguments import parse_arguments, split_arguments
from neural_jupyter.magics.base import NeuralMagics
from neural_jupyter.magics.compile import CompileMagics
from neural_jupyter.magics.deploy import DeployMagics
from neural_jupyter.magics.env import EnvMagics
from neural_jupyter.magics.jobs import JobsMagics
from neural_jupyter.magics.remote import RemoteMagics
from neural_jupyter.magics.run import RunMagics
from neural_jupyter.magics.submit import SubmitMagics
from neural_jupyter.magics.sweep import SweepMagics
from neural_jupyter.magics.warm import WarmMagics

__all__ = [
    "CONFIGURABLES",
    "MAGIC_CLASSES",
    "NeuralMagics",
    "parse_arguments",
    "register",
    "split_arguments",
    "unregister",
]

# every magics class %load_ext registers, in the order docs/magics.md lists their options
MAGIC_CLASSES: tuple[type, ...] = (
    CompileMagics,
    RunMagics,
    SubmitMagics,
    JobsMagics,
    SweepMagics,
    EnvMagics,
    RemoteMagics,
    DeployMagics,
    WarmMagics,
)
# the classes whose options %config sets
CONFIGURABLES: tuple[type, ...] = (NeuralMagics, DeployMagics, WarmMagics)


def register(shell: Any) -> None:
    """Register every magic (and the shared options) with ``shell``."""
    NeuralMagics.of(shell)
    for cls in MAGIC_CLASSES:
        shell.register_magics(cls(shell=shell))


def unregister(shell: Any) -> None:
    """Remove our magics and options from ``shell``."""
    manager = shell.magics_manager
    for kind in ("line", "cell"):
        table = manager.magics[kind]
        for name in [
            n for n, fn in table.items() if isinstance(getattr(fn, "__self__", None), MAGIC_CLASSES)
        ]:
            del table[name]
    ours = (*CONFIGURABLES, *MAGIC_CLASSES)
    shell.configurables = [c for c in shell.configurables if not isinstance(c, ours)]
