"""Retries for transient platform faults only (tenacity): at most 3 tries, exponential
backoff with jitter. Permanent errors (auth, validation, quota) are raised at once.

Every submit is keyed by an idempotency key stored before the first try, so a retried or
re-run submit can never start a second paid job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from neural_jupyter.errors import MissingDependencyError

T = TypeVar("T")

ATTEMPTS = 3
BASE_WAIT = 0.5  # seconds; waits are random in [0, BASE_WAIT * 2**n], capped at MAX_WAIT
MAX_WAIT = 8.0
TRANSIENT_HTTP_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


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
