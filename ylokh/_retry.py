"""The one retry policy, shared by both faces: pure decisions plus tenacity builders.

Strategy: an attempt covers sending the request, accepting the response head and
reading the first bytes of the body (or the whole body when it is only useful whole).
Whatever fails inside an attempt is a ylokh error already; this module decides from the
error alone whether another attempt is safe and how long to wait. Once an attempt has
returned, text may reach the caller, and nothing is retried after that.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import tenacity
    from tenacity import RetryCallState

from ._errors import APIConnectionError, APIStatusError, IncompleteStreamError, YlokhError

logger = logging.getLogger("ylokh")
T = TypeVar("T")

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
FIRST_WAIT = 0.5
MAX_WAIT = 8.0


def is_retryable(error: BaseException) -> bool:
    """Whether a failed attempt may be tried again: connection failures, timeouts and
    the statuses 408, 409, 429, 500, 502, 503, 504 (as statuses, not as error objects
    inside a 200 answer). Nothing else."""
    if isinstance(error, IncompleteStreamError):
        return False  # text reached the caller: a retry would repeat it
    if isinstance(error, APIStatusError):
        return error.status_code in RETRY_STATUSES and not error.in_stream
    return isinstance(error, APIConnectionError)


def backoff(attempt: int, error: BaseException | None, rand: Callable[[], float]) -> float:
    """Seconds to wait before attempt ``attempt + 1``: the server's ``Retry-After`` when
    it sent one (already capped), else exponential back-off with full jitter."""
    if isinstance(error, APIStatusError) and error.retry_after is not None:
        return error.retry_after
    return rand() * min(MAX_WAIT, FIRST_WAIT * 2.0 ** (attempt - 1))


class _Policy:
    """The stop, wait and retry decisions, as the plain callables tenacity accepts (so
    tenacity itself is imported only when a first attempt has failed)."""

    def __init__(self, attempts: int, deadline: float | None, rand: Callable[[], float]):
        self.attempts = attempts
        self.deadline = deadline
        self.rand = rand

    def stop(self, retry_state: RetryCallState) -> bool:
        """Stop after ``attempts``, or when the next wait would pass the total deadline."""
        if retry_state.attempt_number >= self.attempts:
            return True
        upcoming = retry_state.upcoming_sleep or 0.0
        return self.deadline is not None and time.monotonic() + upcoming >= self.deadline

    def wait(self, retry_state: RetryCallState) -> float:
        """The back-off before the next attempt."""
        return backoff(retry_state.attempt_number, _error(retry_state), self.rand)

    @staticmethod
    def retry(retry_state: RetryCallState) -> bool:
        """Whether the failure of the last attempt may be retried."""
        error = _error(retry_state)
        return error is not None and is_retryable(error)


def _error(retry_state: RetryCallState) -> BaseException | None:
    outcome = retry_state.outcome
    return outcome.exception() if outcome is not None and outcome.failed else None


def replay(error: BaseException, attempt: Callable[..., T]) -> Callable[..., T]:
    """``attempt``, except that its first call raises ``error``.

    The faces make the first attempt outside tenacity (building a policy costs more than
    a warm request's whole client overhead) and hand a failure to the policy this way, so
    the policy decides, waits and counts attempts as if it had made the first one.
    """
    pending = [error]

    def call(*args: Any, **kwargs: Any) -> T:
        if pending:
            raise pending.pop()
        return attempt(*args, **kwargs)

    return call


def areplay(
    error: BaseException, attempt: Callable[..., Awaitable[T]]
) -> Callable[..., Awaitable[T]]:
    """:func:`replay` for a coroutine function (tenacity awaits only those)."""
    pending = [error]

    async def call(*args: Any, **kwargs: Any) -> T:
        if pending:
            raise pending.pop()
        return await attempt(*args, **kwargs)

    return call


def _log_retry(url: str, max_attempts: int) -> Callable[[RetryCallState], None]:
    def log(retry_state: RetryCallState) -> None:
        error = _error(retry_state)
        logger.warning(
            "retrying POST %s in %.2f s (attempt %d of %d) after: %s",
            url,
            retry_state.upcoming_sleep,
            retry_state.attempt_number + 1,
            max_attempts,
            error,
        )

    return log


def _policy(
    url: str, max_retries: int, deadline: float | None, rand: Callable[[], float]
) -> dict[str, Any]:
    policy = _Policy(max_retries + 1, deadline, rand)
    return {
        "stop": policy.stop,
        "wait": policy.wait,
        "retry": policy.retry,
        "before_sleep": _log_retry(url, policy.attempts),
        "reraise": True,
    }


def retrying(
    url: str,
    max_retries: int,
    deadline: float | None,
    *,
    sleep: Callable[[float], None] | None = None,
    rand: Callable[[], float] = random.random,
) -> tenacity.Retrying:
    """The policy for blocking code; ``sleep`` may be injected (tests record waits)."""
    import tenacity

    return tenacity.Retrying(sleep=sleep or time.sleep, **_policy(url, max_retries, deadline, rand))


def async_retrying(
    url: str,
    max_retries: int,
    deadline: float | None,
    *,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    rand: Callable[[], float] = random.random,
) -> tenacity.AsyncRetrying:
    """The same policy for asyncio code."""
    import tenacity

    if sleep is None:
        return tenacity.AsyncRetrying(**_policy(url, max_retries, deadline, rand))
    return tenacity.AsyncRetrying(sleep=sleep, **_policy(url, max_retries, deadline, rand))


__all__ = ["RETRY_STATUSES", "YlokhError", "async_retrying", "backoff", "is_retryable", "retrying"]
