"""Several servers of one model behind one client: choice, failover and cool-downs.

Strategy: a client with one base URL has no :class:`Endpoints` at all, so the usual path
pays nothing. With several, each attempt asks :meth:`Endpoints.pick` for the available
endpoint with the fewest calls in flight from this client (round robin among equals).
Two failures in a row take an endpoint out for a cool-down (the server's
``Retry-After``, else 1 s doubling to 30 s); when it is over, one trial call goes to it
(half-open) and its outcome restores it or cools it again. One lock guards the counts:
the sync face is shared by threads; an async client is used from one loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from ._config import chat_url

FIRST_COOL_DOWN = 1.0
MAX_COOL_DOWN = 30.0
FAILURES_TO_COOL = 2


class Endpoint:
    """One server: its URLs and its health as this client has seen it."""

    __slots__ = ("base_url", "chat_url", "cool_for", "cool_until", "failures", "in_flight", "trial")

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.chat_url = chat_url(base_url)
        self.in_flight = 0
        self.failures = 0  # in a row
        self.cool_until = 0.0
        self.cool_for = 0.0
        self.trial = False  # a trial call after a cool-down is in flight

    def state(self, now: float) -> str:
        """``up``, ``cooling`` (for how long) or ``trial``."""
        if self.trial:
            return "trial"
        if self.cool_until > now:
            return f"cooling {self.cool_until - now:.1f} s"
        return "up"


class Endpoints:
    """The endpoints of one client, shared by its calls."""

    def __init__(self, base_urls: Iterable[str], clock: Callable[[], float] = time.monotonic):
        self.all = [Endpoint(url) for url in base_urls]
        self.clock = clock
        self._lock = threading.Lock()
        self._turn = 0

    def __repr__(self) -> str:
        now = self.clock()
        return ", ".join(f"{e.base_url} ({e.state(now)})" for e in self.all)

    def pick(
        self, avoid: Endpoint | None = None, prefer: Endpoint | None = None
    ) -> tuple[Endpoint | None, float]:
        """The endpoint for the next attempt, counted in flight at once; ``avoid`` (the
        one that just failed) is taken only when no other is available, ``prefer`` (a
        conversation's) whenever it is. With none available: ``(None, seconds until the
        first comes back)``."""
        with self._lock:
            now = self.clock()
            ready = [e for e in self.all if e.cool_until <= now and not e.trial]
            if avoid is not None and len(ready) > 1 and avoid in ready:
                ready.remove(avoid)
            if not ready:
                return None, max(min(e.cool_until for e in self.all) - now, 0.001)
            if prefer is not None and prefer in ready:
                chosen = prefer
            else:
                fewest = min(e.in_flight for e in ready)
                tied = [e for e in ready if e.in_flight == fewest]
                self._turn += 1
                chosen = tied[self._turn % len(tied)]
            chosen.in_flight += 1
            if chosen.failures >= FAILURES_TO_COOL:
                chosen.trial = True  # back from a cool-down: this call is its trial
            return chosen, 0.0

    def soonest(self, avoid: Endpoint | None = None) -> float:
        """Seconds until an endpoint (other than ``avoid``, when there is another) is
        available: 0 when one is now."""
        with self._lock:
            now = self.clock()
            others = [e for e in self.all if e is not avoid] or self.all
            return max(min(e.cool_until for e in others) - now, 0.0)

    def succeeded(self, endpoint: Endpoint) -> None:
        """A call on ``endpoint`` got its answer under way: it is healthy."""
        with self._lock:
            endpoint.failures = 0
            endpoint.cool_for = 0.0
            endpoint.trial = False

    def failed(self, endpoint: Endpoint, retry_after: float | None = None) -> None:
        """An attempt on ``endpoint`` failed in a way that would be retried (the server's
        or the network's fault): two in a row, or a failed trial, cool it down."""
        with self._lock:
            endpoint.failures += 1
            if endpoint.trial or endpoint.failures >= FAILURES_TO_COOL:
                if retry_after is not None:
                    endpoint.cool_for = max(retry_after, 0.0)
                else:
                    endpoint.cool_for = min(
                        endpoint.cool_for * 2 if endpoint.cool_for else FIRST_COOL_DOWN,
                        MAX_COOL_DOWN,
                    )
                endpoint.cool_until = self.clock() + endpoint.cool_for
            endpoint.trial = False

    def done(self, endpoint: Endpoint) -> None:
        """A call (or a failed attempt) on ``endpoint`` is no longer in flight."""
        with self._lock:
            endpoint.in_flight -= 1
            endpoint.trial = False
