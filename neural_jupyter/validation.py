"""Small validators for arguments of the public API (and so of the magics that call it).

Each one returns the value (converted where that is unambiguous, e.g. ``"8888"`` → 8888) or
raises ``InvalidArgumentError`` naming the argument, the accepted range and the value given.
They run before anything is written or launched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from neural_jupyter.errors import InvalidArgumentError

MAX_LIMIT = 1_000_000  # rows a listing may ask for
MAX_EPOCHS = 1_000_000
MAX_BATCH_SIZE = 2**31 - 1
MAX_SEED = 2**32 - 1  # what numpy, torch and Python's random all accept
MAX_SECONDS = 28 * 24 * 3600.0  # 28 days: longer than any platform lets a run go
MAX_PORT = 65535
MAX_TRIALS = 100_000
MAX_SEEDS = 10_000
MAX_PARALLEL = 1024
MAX_GPUS = 64
MAX_NODES = 1024
MAX_PROCS_PER_NODE = 64


def _is_integral(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return False
    return isinstance(value, np.integer)


def integer(argument: str, value: Any, low: int, high: int) -> int:
    """A whole number from ``low`` to ``high`` (a numeric string is accepted)."""
    accepted = f"a whole number from {low} to {high}"
    if isinstance(value, str):
        text = value.strip()
        if not text.lstrip("+-").isdigit():
            raise InvalidArgumentError(argument, accepted, value)
        value = int(text)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if not _is_integral(value):
        raise InvalidArgumentError(argument, accepted, value)
    if not low <= int(value) <= high:
        raise InvalidArgumentError(argument, accepted, value)
    return int(value)


def optional_integer(argument: str, value: Any, low: int, high: int) -> int | None:
    return None if value is None else integer(argument, value, low, high)


def number(
    argument: str,
    value: Any,
    low: float,
    high: float,
    *,
    low_inclusive: bool = True,
    unit: str = "",
) -> float:
    """A finite number in ``[low, high]`` (``(low, high]`` without ``low_inclusive``)."""
    bracket = "[" if low_inclusive else "("
    accepted = f"a finite number{unit} in {bracket}{low:g}, {high:g}]"
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise InvalidArgumentError(argument, accepted, value) from None
    if isinstance(value, bool) or (not isinstance(value, (int, float)) and not _is_numpy(value)):
        raise InvalidArgumentError(argument, accepted, value)
    number_ = float(value)
    if not math.isfinite(number_):
        raise InvalidArgumentError(argument, accepted, value)
    if number_ < low or (not low_inclusive and number_ == low) or number_ > high:
        raise InvalidArgumentError(argument, accepted, value)
    return number_


def _is_numpy(value: Any) -> bool:
    return type(value).__module__ == "numpy" and hasattr(value, "dtype")


def seconds(argument: str, value: Any) -> float | None:
    """A duration in seconds: positive, finite, at most 28 days (None: no limit)."""
    if value is None:
        return None
    return number(
        argument, value, 0.0, MAX_SECONDS, low_inclusive=False, unit=" of seconds (28 days at most)"
    )


def port(argument: str, value: Any, *, allow_zero: bool = True) -> int:
    """A TCP port (0: any free port, where ``allow_zero``)."""
    return integer(argument, value, 0 if allow_zero else 1, MAX_PORT)


def limit(value: Any) -> int | None:
    """How many rows a listing returns (None: all)."""
    return optional_integer("--limit", value, 0, MAX_LIMIT)


def seed(value: Any) -> int | None:
    return optional_integer("--seed", value, 0, MAX_SEED)


def flag(argument: str, value: Any) -> bool:
    """An on/off switch: ``True`` or ``False``, nothing else (not 1, not "yes")."""
    if isinstance(value, bool):
        return value
    raise InvalidArgumentError(argument, "True or False", value)


def choice(argument: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise InvalidArgumentError(argument, "one of " + ", ".join(choices), value)
    return value


# platform options (``--set KEY=VALUE`` / ``extra=``) whose type follows from their name
_PORT_SUFFIXES = ("port",)
_SECONDS_SUFFIXES = ("_timeout", "_grace", "_seconds", "timeout")
_COUNT_SUFFIXES = ("_count", "_retries", "_workers", "nodes", "replicas")


def platform_options(extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check the typed platform options: ``port``/``*_port`` (1-65535), ``*_timeout``/
    ``*_grace``/``*_seconds`` (a positive number of seconds), ``*_count``/``*_retries``/
    ``nodes``/``replicas`` (whole numbers >= 0). Others pass through for the platform to read."""
    if extra is None:
        return {}
    if not isinstance(extra, Mapping):
        raise InvalidArgumentError("extra", "a mapping of option names to values", extra)
    checked: dict[str, Any] = {}
    for key, value in extra.items():
        if not isinstance(key, str) or not key.strip():
            raise InvalidArgumentError("--set", "KEY=VALUE with a non-empty KEY", key)
        name = key.strip().lower()
        argument = f"--set {key}"
        if value is None or isinstance(value, bool):
            checked[key] = value
        elif name.endswith(_PORT_SUFFIXES):
            checked[key] = port(argument, value, allow_zero=False)
        elif name.endswith(_SECONDS_SUFFIXES):
            checked[key] = seconds(argument, value)
        elif name.endswith(_COUNT_SUFFIXES):
            checked[key] = integer(argument, value, 0, 1_000_000)
        else:
            checked[key] = value
    return checked
