"""Old spellings kept as deprecated aliases: one place that warns about them and resolves them.

"backend" used to name both the framework (pytorch, keras) and the platform (local, ssh,
sagemaker, ...); the public words are now ``framework`` and ``platform``. An old keyword
argument, attribute or flag still works and warns with ``NeuralDeprecationWarning`` (a
``FutureWarning``, so notebooks show it) naming the new word; giving the old and the new
spelling together is a ``ConfigurationError``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from neural_jupyter.errors import ConfigurationError

F = TypeVar("F", bound=Callable[..., Any])


class NeuralDeprecationWarning(FutureWarning):
    """An old spelling that still works and will be removed; the message names the new one."""


def warn(old: str, new: str, note: str = "", *, stacklevel: int = 2) -> None:
    """Warn that ``old`` is deprecated in favour of ``new`` (``note``: what else to know)."""
    message = f"{old} is deprecated; use {new}" + (f" ({note})" if note else "")
    warnings.warn(message, NeuralDeprecationWarning, stacklevel=stacklevel + 1)


def renamed_parameters(**renames: str) -> Callable[[F], F]:
    """Accept old keyword names: ``@renamed_parameters(backend="platform")`` lets callers
    still write ``backend=...`` (with a warning); ``backend=`` and ``platform=`` together is a
    ``ConfigurationError``. Positional calls are unaffected."""

    def decorate(function: F) -> F:
        where = function.__qualname__.replace(".__init__", "")

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise ConfigurationError(
                            f"{where}() got both {new}= and its old name {old}=",
                            hint=f"pass only {new}=",
                        )
                    warn(f"{where}({old}=...)", f"{new}=", stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def alias_property(old: str, new: str, *, settable: bool = False) -> property:
    """A class attribute ``old`` that reads (and, if ``settable``, writes) ``new``, warning."""

    def get(self: Any) -> Any:
        warn(f"{type(self).__name__}.{old}", f".{new}", stacklevel=2)
        return getattr(self, new)

    def set_(self: Any, value: Any) -> None:
        warn(f"{type(self).__name__}.{old}", f".{new}", stacklevel=2)
        setattr(self, new, value)

    return property(get, set_ if settable else None, doc=f"Deprecated: use ``{new}``.")


def alias_method(old: str, new: str) -> Callable[..., Any]:
    """A method ``old`` that calls the method ``new``, warning."""

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        warn(f"{type(self).__name__}.{old}()", f".{new}()", stacklevel=2)
        return getattr(self, new)(*args, **kwargs)

    method.__name__ = old
    method.__doc__ = f"Deprecated: use ``{new}()``."
    return method
