"""One call wrapper for every platform request: retries for transient faults only (tenacity:
at most 3 tries, exponential backoff with jitter, bounded), then one translation of what
went wrong into our errors.

What a platform's exceptions mean is data: a ``FaultPolicy`` reads an SDK exception into a
``Failure`` (HTTP status, error code, message, class names) and a table of ``Rule`` rows,
first match wins, says whether to try again and which error it is: ``AUTH`` →
``PlatformAuthError``, ``QUOTA`` → ``QuotaError``, ``UNAVAILABLE`` →
``PlatformConnectionError``, ``INVALID`` → ``ConfigurationError``, anything else →
``PlatformError`` with the platform's own response. Rules name exception classes by name, so
no SDK is imported to classify its errors.

Every submit is keyed by an idempotency key stored before the first try, so a retried or
re-run submit can never start a second paid job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from neural_jupyter.errors import (
    ConfigurationError,
    MissingDependencyError,
    NeuralError,
    PlatformAuthError,
    PlatformConnectionError,
    PlatformError,
    QuotaError,
)
from neural_jupyter.redaction import redact

T = TypeVar("T")
log = logging.getLogger(__name__)

ATTEMPTS = 3
BASE_WAIT = 0.5  # seconds; waits are random in [0, BASE_WAIT * 2**n], capped at MAX_WAIT
MAX_WAIT = 8.0
TRANSIENT_HTTP_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Exceptions (by class name, of any library) that mean the request did not get through.
CONNECTION_TYPES = frozenset({"ConnectionError", "Timeout", "TimeoutError", "TransportError"})

AUTH, QUOTA, UNAVAILABLE, INVALID, OTHER = "auth", "quota", "unavailable", "invalid", "other"


def call_with_retries(
    func: Callable[[], T],
    is_transient: Callable[[BaseException], bool],
    *,
    attempts: int = ATTEMPTS,
    on_retry: Callable[[int, BaseException], None] | None = None,
) -> T:
    """``func()``, tried again (up to ``attempts`` in all) while it fails transiently."""
    try:
        from tenacity import (
            Retrying,
            retry_if_exception,
            stop_after_attempt,
            wait_random_exponential,
        )
    except ImportError:
        raise MissingDependencyError("tenacity", "retry", "Retrying platform calls") from None

    def before_sleep(state) -> None:
        if on_retry is not None and state.outcome is not None:
            on_retry(state.attempt_number, state.outcome.exception())

    for attempt in Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait_random_exponential(multiplier=BASE_WAIT, max=MAX_WAIT),
        retry=retry_if_exception(is_transient),
        before_sleep=before_sleep,
        reraise=True,
    ):
        with attempt:
            return func()
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class Failure:
    """An SDK exception, read once: what the platform answered."""

    exc: BaseException
    status: int | None = None  # HTTP status, when there was an answer
    code: str = ""  # the platform's error code (``ThrottlingException``, ``QUOTA_EXCEEDED``)
    message: str = ""

    @property
    def types(self) -> frozenset[str]:
        return frozenset(cls.__name__ for cls in type(self.exc).__mro__)

    @property
    def text(self) -> str:
        message = self.message or str(self.exc) or type(self.exc).__name__
        return redact(
            f"{self.code}: {message}" if self.code and self.code not in message else message
        )

    @property
    def response(self) -> str | None:
        if self.status is None and not self.code:
            return None
        return f"HTTP {self.status}" if self.status is not None else self.code


def read_plain(exc: BaseException) -> Failure:
    """A reader for SDKs whose exceptions carry ``status``/``status_code``/``code``."""
    status = getattr(exc, "status_code", None) or getattr(exc, "status", None)
    response = getattr(exc, "response", None)
    if status is None and response is not None:
        status = getattr(response, "status_code", None)
    code = getattr(exc, "code", None)
    if isinstance(code, int) and status is None:
        status, code = code, None
    return Failure(
        exc,
        status if isinstance(status, int) else None,
        str(code or ""),
        str(getattr(exc, "message", None) or exc),
    )


@dataclass(frozen=True)
class Rule:
    """One row of a fault table: which failures it covers (every given field must match),
    whether to try again, and what error it becomes."""

    kind: str = OTHER
    types: Iterable[str] = ()  # class names anywhere in the exception's class hierarchy
    exact_types: Iterable[str] = ()  # class names of the exception itself
    statuses: Iterable[int] = ()
    codes: Iterable[str] = ()
    words: Iterable[str] = ()  # any of them in the message (lower case)
    retry: bool = False
    hint: str | None = None
    message: str | None = None  # our own wording ({action}, {text}); else the default

    def matches(self, failure: Failure) -> bool:
        text = f"{failure.code} {failure.message}".lower()
        checks = (
            (self.types, lambda: bool(set(self.types) & failure.types)),
            (self.exact_types, lambda: type(failure.exc).__name__ in set(self.exact_types)),
            (self.statuses, lambda: failure.status in set(self.statuses)),
            (self.codes, lambda: failure.code in set(self.codes)),
            (self.words, lambda: any(word in text for word in self.words)),
        )
        given = [check for values, check in checks if values]
        return bool(given) and all(check() for check in given)


TRANSIENT_HTTP = Rule(UNAVAILABLE, statuses=TRANSIENT_HTTP_STATUS, retry=True)
CONNECTION = Rule(UNAVAILABLE, types=CONNECTION_TYPES, retry=True)


@dataclass(frozen=True)
class FaultPolicy:
    """How one platform's failures read (``rules``, first match wins) and what they become."""

    platform: str
    label: str  # for messages: "Vertex AI"
    rules: tuple[Rule, ...]
    read: Callable[[BaseException], Failure] = read_plain
    auth_hint: str | None = None
    quota_hint: str | None = None
    passthrough: tuple[type[BaseException], ...] = field(default=(NeuralError,))

    def rule(self, exc: BaseException) -> tuple[Rule | None, Failure]:
        failure = self.read(exc)
        return next((r for r in self.rules if r.matches(failure)), None), failure

    def is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, self.passthrough):
            return False
        rule, _ = self.rule(exc)
        return rule is not None and rule.retry

    def translate(self, exc: BaseException, action: str, *, retried: bool = False) -> Exception:
        """``exc`` as one of our errors, with the platform's own words."""
        if isinstance(exc, self.passthrough):
            return exc
        rule, failure = self.rule(exc)
        kind = rule.kind if rule else OTHER
        text = failure.text
        if rule is not None and rule.message:
            headline = rule.message.format(action=action, text=text, label=self.label)
        elif kind in (AUTH, QUOTA):
            headline = f"{action} was refused: {text}"
        elif kind == UNAVAILABLE:
            headline = f"{action} failed: {self.label} is unreachable or unavailable ({text})"
        else:
            headline = f"{action} failed: {text}"
        if retried and rule is not None and rule.retry:
            headline += " (still failing after retries; the service may be busy)"
        hint = rule.hint if rule and rule.hint else None
        kwargs = {"platform": self.platform, "response": failure.response}
        if kind == AUTH:
            return PlatformAuthError(headline, hint=hint or self.auth_hint, **kwargs)
        if kind == QUOTA:
            return QuotaError(headline, hint=hint or self.quota_hint, **kwargs)
        if kind == UNAVAILABLE:
            return PlatformConnectionError(headline, hint=hint or "try again in a minute", **kwargs)
        if kind == INVALID:
            return ConfigurationError(headline, hint=hint)
        return PlatformError(headline, hint=hint, **kwargs)

    def call(self, action: str, func: Callable[[], T], *, attempts: int = ATTEMPTS) -> T:
        """``func()`` with retries for transient faults; failures become our errors."""

        def on_retry(attempt: int, exc: BaseException) -> None:
            log.info("%s: transient %s, trying again (%d)", action, type(exc).__name__, attempt + 1)

        try:
            return call_with_retries(func, self.is_transient, attempts=attempts, on_retry=on_retry)
        except self.passthrough:
            raise
        except Exception as exc:
            raise self.translate(exc, action, retried=attempts > 1) from None
