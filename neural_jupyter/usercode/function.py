"""``@neural_jupyter.remote``: calling the function runs it as a job and returns its value."""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from neural_jupyter.errors import ConfigurationError
from neural_jupyter.jobs.job import Job
from neural_jupyter.runtime.code_bundle import CodeSpec
from neural_jupyter.usercode import requirements as reqs
from neural_jupyter.usercode.launch import CodePlan, JobOptions, launch, plan
from neural_jupyter.usercode.payload import pickle_function

RequirementsArg = str | Path | Sequence[str] | None


class RemoteFunction:
    """A function that runs as a job when called. ``f(*args)`` waits (live monitor) and
    returns the value; ``f.submit(*args)`` returns the ``Job`` at once (``job.result()``
    waits for the value); ``f.dry_run(*args)`` shows the plan; ``f.local(*args)`` calls the
    plain function here.

    An exception inside the job raises ``RemoteError`` here (a ``JobFailed``): its message
    and ``remote_traceback`` show the remote frames, ``exc_type`` names the original type
    and the original exception is its ``__cause__`` (and ``.exception``) when it can be
    rebuilt in the notebook.
    """

    def __init__(self, function: Callable[..., Any], options: JobOptions, requirements: Any):
        if not callable(function):
            raise ConfigurationError(f"@remote needs a function, got {type(function).__name__}")
        self.function = function
        self.options = options
        self.requirements = requirements
        functools.update_wrapper(self, function)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        spec, found = self._spec(args, kwargs)
        return launch(spec, found, self.options, wait=True)

    def submit(self, *args: Any, **kwargs: Any) -> Job:
        spec, found = self._spec(args, kwargs)
        return launch(spec, found, self.options, wait=False)

    def dry_run(self, *args: Any, **kwargs: Any) -> CodePlan:
        spec, found = self._spec(args, kwargs)
        return plan(spec, found, self.options)

    def local(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    def options_with(self, **changes: Any) -> RemoteFunction:
        """The same function with other options, e.g. ``f.options_with(platform="ssh")``."""
        return RemoteFunction(self.function, replace(self.options, **changes), self.requirements)

    def __reduce__(self) -> tuple[Any, ...]:
        # Inside the job (recursion, or passed as an argument) it is the plain function.
        return operator.itemgetter(0), ((self.function,),)

    def __repr__(self) -> str:
        return f"<remote function {self.__qualname__} on {self.options.platform}>"

    def _spec(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[CodeSpec, Any]:
        payload = pickle_function(self.function, args, kwargs)
        name = getattr(self.function, "__name__", "function")
        found = resolve_requirements(
            self.requirements,
            lambda: (
                reqs.modules_of_function(self.function)
                | reqs.modules_of_values([*args, *kwargs.values()])
            ),
        )
        spec = CodeSpec(kind="function", name=name, payload=payload, requirements=found.lines)
        return spec, found


def resolve_requirements(
    value: RequirementsArg, modules: Callable[[], set[str]]
) -> reqs.Requirements:
    """``"auto"`` (default): pinned modules; a list or a file: as given; None: none. The
    runner's own need (cloudpickle) is always added."""
    if value is None:
        return reqs.explicit([], extra=reqs.RUNNER_NEEDS)
    if isinstance(value, str) and value == "auto":
        return reqs.pinned(modules(), extra=reqs.RUNNER_NEEDS)
    return reqs.explicit(value, extra=reqs.RUNNER_NEEDS)


def remote(
    function: Callable[..., Any] | None = None,
    *,
    platform: str = "local",
    instance: str | None = None,
    max_hours: float | None = None,
    requirements: RequirementsArg = "auto",
    gpus: int | None = None,
    gpu_type: str | None = None,
    timeout: float | None = None,
    spot: bool = False,
    region: str | None = None,
    extra: dict[str, Any] | None = None,
    yes: bool = False,
    new: bool = False,
    monitor: str = "auto",
    name: str | None = None,
    confirm_above: float | None = None,
) -> Any:
    """Run a function as a job: ``@remote`` or ``@remote(platform="ssh", ...)``.

    Arguments, the return value and exceptions travel with cloudpickle (functions and
    classes defined in the notebook by value). ``requirements="auto"`` pins the notebook's
    versions of the packages the function imports; a list or a requirements file
    overrides. The options are those of ``neural_jupyter.submit``.
    """
    options = JobOptions(
        platform=platform,
        instance=instance,
        gpus=gpus,
        gpu_type=gpu_type,
        max_hours=max_hours,
        timeout=timeout,
        spot=spot,
        region=region,
        extra=dict(extra or {}),
        yes=yes,
        new=new,
        monitor=monitor,
        name=name,
        **({"confirm_above": confirm_above} if confirm_above is not None else {}),
    )
    options.resources()  # validate now, at decoration time
    get_platform_check(platform)

    def wrap(inner: Callable[..., Any]) -> RemoteFunction:
        return RemoteFunction(inner, options, requirements)

    return wrap(function) if function is not None else wrap


def get_platform_check(platform: str) -> None:
    from neural_jupyter.backends import get_backend

    get_backend(platform)
