"""One error hierarchy for the whole package.

Every error renders in a notebook as one short message (``_render_traceback_``, which IPython
uses instead of a traceback of our internals) while staying a real, catchable exception for
Python API users. Errors are always raised, never only printed, so nbval and papermill fail.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from neural_jupyter.install import install_hint
from neural_jupyter.redaction import redact

MAX_QUOTED_CHARS = 80  # a long unbroken value (a 1 MB string literal) is cut to this many chars
LONG_QUOTED_CHARS = 300  # what counts as long (paths, URLs, commands stay whole)
MAX_MESSAGE_CHARS = 2000  # and a whole message or detail line up to this long
MAX_SNIPPET_CHARS = 120  # a source line shown under a DSL error: a window around the column

_LONG_WORD = re.compile(rf"\S{{{LONG_QUOTED_CHARS + 1},}}")


def shorten(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` with long unbroken runs (a quoted literal, a blob) cut, their length said, and
    the whole capped at ``limit`` characters, so a 1 MB string literal makes a short message."""
    if len(text) <= LONG_QUOTED_CHARS:
        return text

    def cut_word(match: re.Match[str]) -> str:
        word = match.group(0)
        return f"{word[:MAX_QUOTED_CHARS]}… ({len(word):,} characters)"

    text = _LONG_WORD.sub(cut_word, text)
    if len(text) > limit:
        text = text[:limit] + f"… ({len(text) - limit:,} more characters)"
    return text


class NeuralError(Exception):
    """Base class of every error neural-jupyter raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = redact(shorten(str(message)))
        self.hint = redact(shorten(str(hint))) if hint else None
        super().__init__(self.message)

    def details(self) -> list[str]:
        """Lines shown under the headline (snippet, stderr tail, ...)."""
        return []

    def __str__(self) -> str:
        lines = [self.message, *(redact(shorten(line)) for line in self.details())]
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)

    def _render_traceback_(self) -> list[str]:
        text = f"{type(self).__name__}: {self}"
        return redact(text).splitlines()


class MissingDependencyError(NeuralError, ImportError):
    """An optional extra is needed for this feature and is not installed."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{feature} needs the '{package}' package, which is not installed.",
            hint=install_hint(extra),
        )


class DSLError(NeuralError):
    """A problem in model-language source, with its place in that source."""

    def __init__(
        self,
        message: str,
        *,
        line: int | None = None,
        column: int | None = None,
        end_column: int | None = None,
        source: str | None = None,
        source_name: str = "<cell>",
        hint: str | None = None,
    ) -> None:
        self.line = line
        self.column = column
        self.end_column = end_column
        self.source_name = source_name
        self.source_line = _source_line(source, line)
        location = source_name
        if line is not None:
            location += f", line {line}"
            if column is not None:
                location += f", column {column}"
        self.location = location
        super().__init__(f"{location}: {message}", hint=hint)

    def details(self) -> list[str]:
        if self.source_line is None or self.column is None:
            return []
        width = 1
        if self.end_column is not None and self.end_column > self.column:
            width = self.end_column - self.column
        width = max(1, min(width, len(self.source_line) - self.column + 1))
        line, column, width = _window(self.source_line, self.column, width)
        return ["    " + line, "    " + " " * (column - 1) + "^" * width]


class DSLSyntaxError(DSLError):
    """The source does not follow the grammar."""


class DSLValidationError(DSLError):
    """The source parses but describes an invalid network."""


class CompilationError(NeuralError):
    """Code generation failed for a valid network (a bug or an unsupported combination)."""


class DataError(NeuralError):
    """Training data does not fit the network (shape, labels, dtype, NaN)."""


class ConfigurationError(NeuralError):
    """A setting or argument has an invalid value."""


class InvalidArgumentError(ConfigurationError, ValueError):
    """An argument is out of its accepted range; names the argument, the range and the value
    (raised before anything is launched)."""

    def __init__(
        self, argument: str, accepted: str, value: object, *, hint: str | None = None
    ) -> None:
        self.argument = argument
        self.accepted = accepted
        self.value = value
        super().__init__(f"{argument} must be {accepted}, got {value!r}", hint=hint)


class ExportError(NeuralError):
    """A trained model could not be exported, or its export does not compute what it should."""


class SeveralNetworksError(DSLValidationError, ConfigurationError):
    """The source defines several networks and the call did not name one (it is both: a
    place in the source and an argument to add)."""


class JobStoreError(NeuralError):
    """The job store cannot be opened or written safely."""


class JobError(NeuralError):
    """A training job did not finish successfully."""

    def __init__(self, message: str, *, job_id: str | None = None, hint: str | None = None):
        self.job_id = job_id
        super().__init__(message, hint=hint)


class LaunchError(JobError):
    """The job could not be started (its bundle could not be written, ...); its row in the
    job store is FAILED with this message."""


class JobFailed(JobError):
    """The training process exited with an error."""

    def __init__(
        self,
        message: str,
        *,
        job_id: str | None = None,
        stderr_tail: Sequence[str] = (),
        dsl_location: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.stderr_tail = [redact(line) for line in stderr_tail]
        self.dsl_location = dsl_location
        super().__init__(message, job_id=job_id, hint=hint)

    def details(self) -> list[str]:
        lines = []
        if self.dsl_location:
            lines.append(f"  from the model source at {self.dsl_location}")
        if self.stderr_tail:
            lines.append("  last lines of the job's output:")
            lines.extend("    " + line for line in self.stderr_tail)
        return lines


class RemoteError(JobFailed):
    """The user's code raised inside a job (``@remote`` function or ``%%neural_remote`` cell).

    ``exception`` is the original exception when it could be rebuilt here (it is also this
    error's ``__cause__``), ``exc_type`` its type's name, ``remote_traceback`` the traceback
    as the job printed it, with the frames of the user's code.
    """

    def __init__(
        self,
        message: str,
        *,
        job_id: str | None = None,
        exc_type: str = "Exception",
        remote_traceback: str = "",
        exception: BaseException | None = None,
        hint: str | None = None,
    ) -> None:
        self.exc_type = exc_type
        self.remote_traceback = redact(remote_traceback)
        self.exception = exception
        super().__init__(message, job_id=job_id, hint=hint)

    def details(self) -> list[str]:
        if not self.remote_traceback.strip():
            return []
        lines = ["  remote traceback:"]
        lines.extend("    " + line for line in self.remote_traceback.rstrip().splitlines())
        return lines


class JobDetached(JobError):
    """Waiting stopped (Ctrl-C or Detach); the job itself keeps running."""

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"stopped watching job {job_id}; it keeps running.",
            job_id=job_id,
            hint=f"%neural_attach {job_id} to watch it again, %neural_cancel {job_id} to "
            "stop it (Python: neural_jupyter.jobs.get(id).result() / .cancel())",
        )


class JobTimeout(JobError):
    """The job ran past its time budget and was stopped."""


class JobCancelled(JobError):
    """The job was cancelled."""


class PlatformError(NeuralError):
    """A remote platform refused or failed a request."""

    def __init__(
        self,
        message: str,
        *,
        platform: str | None = None,
        response: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.platform = platform
        self.response = redact(response) if response else None
        prefix = f"[{platform}] " if platform else ""
        super().__init__(prefix + message, hint=hint)

    def details(self) -> list[str]:
        return [f"  platform response: {self.response}"] if self.response else []


class PlatformConnectionError(PlatformError):
    """The platform could not be reached (network, DNS, refused connection)."""


class PlatformAuthError(PlatformError):
    """Credentials are missing, expired or lack a permission."""


class QuotaError(PlatformError):
    """The platform refused for quota or capacity reasons."""


def _window(line: str, column: int, width: int) -> tuple[str, int, int]:
    """At most ``MAX_SNIPPET_CHARS`` of ``line`` around ``column`` (1-based), with ``…`` where
    it was cut; returns the shown text, the column in it and the caret width."""
    if len(line) <= MAX_SNIPPET_CHARS:
        return line, column, width
    start = max(0, min(column - 1 - MAX_SNIPPET_CHARS // 3, len(line) - MAX_SNIPPET_CHARS))
    end = start + MAX_SNIPPET_CHARS
    shown = line[start:end]
    prefix = "…" if start > 0 else ""
    suffix = f"… ({len(line):,} characters)" if end < len(line) else ""
    column = column - start + len(prefix)
    width = max(1, min(width, len(shown) + len(prefix) - column + 1))
    return prefix + shown + suffix, column, width


def _source_line(source: str | None, line: int | None) -> str | None:
    if source is None or line is None:
        return None
    lines = source.splitlines()
    if 1 <= line <= len(lines):
        return lines[line - 1].replace("\t", " ")
    return None
