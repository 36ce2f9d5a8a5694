"""The one retry policy, built from tenacity's pieces and driven by both faces alike.

Strategy: an attempt covers sending the request, accepting the response head and
reading the body until its first text delta (or its end, for bodies only useful whole).
Nothing has reached the caller inside an attempt, so retrying one is safe; once it has
returned, text may reach the caller, and nothing is retried after that. The decision
(retry? how long to wait? stop?) is tenacity's ``retry | wait | stop`` pieces applied to
one :class:`tenacity.RetryCallState` per call, as ``BaseRetrying.iter`` applies them;
each face's driver is the same three-line loop around its attempt, as tenacity's own
``Retrying.__call__`` and ``AsyncRetrying.__call__`` are. This module (and tenacity) is
imported on a call's first failure only: a warm call never pays for it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import tenacity
from tenacity import RetryCallState

from ._errors import APIConnectionError, APIStatusError, IncompleteStreamError

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
FIRST_WAIT = 0.5
MAX_WAIT = 8.0
JITTER = 0.1  # share of a server-asked wait added at random, so clients do not retry in step


def is_retryable(error: BaseException) -> bool:
    """Whether a failed attempt may be tried again: connection failures, timeouts and
    the statuses 408, 409, 429, 500, 502, 503, 504 (as statuses, not as error objects
    inside a 200 answer). Nothing else."""
    if isinstance(error, IncompleteStreamError):
        return False  # text reached the caller: a retry would repeat it
    if isinstance(error, APIStatusError):
        return error.status_code in RETRY_STATUSES and not error.in_stream
    return isinstance(error, APIConnectionError)


class wait_server_or_backoff(tenacity.wait.wait_base):
    """The server's ``Retry-After`` plus a little jitter when it sent one, else
    exponential back-off with full jitter (capped)."""

    def __init__(self, rand: Callable[[], float] = random.random) -> None:
        self.rand = rand

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, APIStatusError) and error.retry_after is not None:
            return error.retry_after * (1 + JITTER * self.rand())
        return self.rand() * min(MAX_WAIT, FIRST_WAIT * 2.0 ** (retry_state.attempt_number - 1))


class Policy:
    """``stop_after_attempt(max_retries + 1) | stop_before_delay(total)``, the wait above
    and ``retry_if_exception(is_retryable)``: made once per settings."""

    __slots__ = ("attempts", "retry", "stop", "wait")

    def __init__(
        self,
        max_retries: int,
        total: float | None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.attempts = max_retries + 1
        stop: tenacity.stop.stop_base = tenacity.stop_after_attempt(self.attempts)
        if total is not None:
            stop = stop | tenacity.stop_before_delay(total)
        self.stop = stop
        self.wait = wait_server_or_backoff(rand)
        self.retry = tenacity.retry_if_exception(is_retryable)

    def next_wait(self, state: RetryCallState, error: BaseException) -> float | None:
        """Record ``error`` as the outcome of the current attempt; return the seconds
        to wait before the next one, or ``None`` to give up."""
        state.set_exception((type(error), error, error.__traceback__))
        if not self.retry(state):
            return None
        state.upcoming_sleep = self.wait(state)
        if self.stop(state):
            return None
        state.idle_for += state.upcoming_sleep
        state.prepare_for_next_attempt()
        return state.upcoming_sleep


def new_state() -> RetryCallState:
    """The retry state of one call (its clock starts now)."""
    return RetryCallState(None, None, (), {})  # type: ignore[arg-type]  # no Retrying object


__all__ = ["RETRY_STATUSES", "Policy", "is_retryable", "new_state", "wait_server_or_backoff"]
