"""How to install neural-jupyter with an extra, in words that work today.

neural-jupyter is not on the Python package index yet, so install hints (missing-dependency
errors, the submit panel, the docs) install it straight from its repository, or, inside a
clone of it, from the clone. ``tests/test_install.py`` checks that both forms resolve.
"""

from __future__ import annotations

REPOSITORY = "https://github.com/neural-jupyter/neural-jupyter"  # pyproject's Homepage


def pip_command(*extras: str) -> str:
    """``pip install "neural-jupyter[a,b] @ git+https://github.com/..."``."""
    names = ",".join(extras)
    target = f"neural-jupyter[{names}]" if names else "neural-jupyter"
    return f'pip install "{target} @ git+{REPOSITORY}"'


def install_hint(*extras: str) -> str:
    """Both ways: from the repository, and from a clone."""
    names = ",".join(extras)
    return f'{pip_command(*extras)} (in a clone of the repository: pip install -e ".[{names}]")'
