"""The measurements of one answer: :class:`Stats`, filled in by the transports as bytes arrive.

Strategy: the transports record raw monotonic times and counts only, with C-level calls on
the hot path (``time.monotonic`` and ``list.append`` once per socket read, never per
delta); everything a reader wants (times relative to the start, token counts, tokens per
second, inter-token gaps) is a property derived from those raw fields when asked. So a
stream that is never measured pays one append per read and nothing else.

The recording interface, in call order::

    stats.started(t)             # the call began (first iteration of a stream)
    stats.attempts += 1          # each request sent (1 + retries)
    stats.headers(t)             # a response head arrived (the last one counts)
    stats.reads.append((t, n))   # once per socket read that gave n text deltas
    stats.ended(t, usage, timings)   # the answer ended, whole or not

:meth:`read` is the same as the append, spelled as a method, for callers off the hot path.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

__all__ = ["Stats"]


class Stats:
    """Measurements of one streamed answer or completion (``stream.stats``).

    Times are seconds from the start of the call, on a monotonic clock; they are ``None``
    until known. The object is filled in as the answer arrives and is final once it ends.

    Attributes:
        base_url: the endpoint that gave the answer.
        attempts: requests sent (1 + retries).
        server_timings: what the server reported about itself (llama.cpp's ``timings``),
            else ``None``.
        usage: the server's ``usage`` object, else ``None``.
        reads: raw ``(monotonic time, text deltas)`` pairs, one per socket read.
    """

    __slots__ = (
        "_end",
        "_headers",
        "_start",
        "attempts",
        "base_url",
        "reads",
        "server_timings",
        "usage",
    )

    def __init__(self, base_url: str | None = None) -> None:
        self.base_url = base_url
        self.attempts = 0
        self.reads: list[tuple[float, int]] = []
        self.usage: dict[str, Any] | None = None
        self.server_timings: dict[str, Any] | None = None
        self._start: float | None = None
        self._headers: float | None = None
        self._end: float | None = None

    # -- recording (called by the transports) ---------------------------------------------------
    def started(self, t: float) -> None:
        """The call began at monotonic time ``t``."""
        self._start = t

    def headers(self, t: float) -> None:
        """A response head arrived at monotonic time ``t`` (a retry's head replaces it)."""
        self._headers = t

    def read(self, t: float, n_deltas: int) -> None:
        """One socket read at monotonic time ``t`` gave ``n_deltas`` text deltas."""
        self.reads.append((t, n_deltas))

    def ended(
        self,
        t: float,
        usage: Mapping[str, Any] | None = None,
        timings: Mapping[str, Any] | None = None,
    ) -> None:
        """The answer ended (whole, broken or abandoned) at monotonic time ``t``, with the
        server's ``usage`` and ``timings`` when it sent them. Only the first end counts."""
        if self._end is not None:
            return
        self._end = t
        if self._start is None:
            self._start = t
        self.usage = dict(usage) if usage else None
        self.server_timings = dict(timings) if timings else None

    # -- derived values ---------------------------------------------------------------------------
    def _since(self, t: float | None) -> float | None:
        if t is None or self._start is None:
            return None
        return max(t - self._start, 0.0)

    @property
    def time_to_headers(self) -> float | None:
        """Seconds until the accepted response head arrived."""
        return self._since(self._headers)

    @property
    def time_to_first_token(self) -> float | None:
        """Seconds until the first text delta reached the caller; ``None`` if none did."""
        for t, n in self.reads:
            if n:
                return self._since(t)
        return None

    @property
    def duration(self) -> float | None:
        """Seconds until the answer ended (or failed); ``None`` while it streams."""
        return self._since(self._end)

    @property
    def chunks(self) -> int:
        """Content-bearing chunks received (text deltas)."""
        return sum(n for _, n in self.reads)

    @property
    def token_times(self) -> list[float]:
        """The arrival time of each text delta (deltas of one socket read share a time)."""
        start = self._start
        if start is None:
            return []
        return [t - start for t, n in self.reads for _ in range(n)]

    @property
    def inter_token_latencies(self) -> list[float]:
        """The gaps between consecutive text deltas, in seconds (the differences of
        :attr:`token_times`; deltas of one read are ``0.0`` apart). Built per read, not per
        delta: a read of ``n`` deltas adds its gap and ``n - 1`` shared zeros."""
        start = self._start
        if start is None:
            return []
        gaps: list[float] = []
        last: float | None = None
        for t, n in self.reads:
            if n:
                at = t - start
                if last is not None:
                    gaps.append(at - last)
                if n > 1:
                    gaps.extend(itertools.repeat(0.0, n - 1))
                last = at
        return gaps

    @property
    def output_tokens(self) -> int | None:
        """Tokens generated: ``usage.completion_tokens``, else the server's timings
        (llama.cpp ``predicted_n``), else ``None``."""
        sources = ((self.usage, "completion_tokens"), (self.server_timings, "predicted_n"))
        for source, key in sources:
            value = source.get(key) if source else None
            if type(value) is int and value >= 0:
                return value
        return None

    @property
    def tokens_estimated(self) -> bool:
        """Whether the server gave no token count, so counts here are text deltas."""
        return self.output_tokens is None

    @property
    def tokens(self) -> int:
        """``output_tokens``, or the number of text deltas when the server gave no count."""
        tokens = self.output_tokens
        return self.chunks if tokens is None else tokens

    @property
    def time_per_output_token(self) -> float | None:
        """Seconds per token after the first: ``(duration - ttft) / (tokens - 1)``."""
        ttft, duration, tokens = self.time_to_first_token, self.duration, self.tokens
        if ttft is None or duration is None or tokens < 2:
            return None
        return (duration - ttft) / (tokens - 1)

    @property
    def tokens_per_second(self) -> float | None:
        """Generation speed: after the first token (``1 / time_per_output_token``) when the
        text came in several reads, else tokens over the whole duration (a completion).
        Counts text deltas when the server gave no token count (see ``tokens_estimated``)."""
        if sum(1 for _, n in self.reads if n) > 1:  # text over time, not all in one read
            tpot = self.time_per_output_token
            return 1 / tpot if tpot else None
        duration, tokens = self.duration, self.tokens
        return tokens / duration if duration and tokens else None

    # -- output ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The measurements as plain JSON-ready values."""
        return {
            "base_url": self.base_url,
            "attempts": self.attempts,
            "time_to_headers": self.time_to_headers,
            "time_to_first_token": self.time_to_first_token,
            "duration": self.duration,
            "chunks": self.chunks,
            "token_times": self.token_times,
            "output_tokens": self.output_tokens,
            "tokens_estimated": self.tokens_estimated,
            "tokens_per_second": self.tokens_per_second,
            "server_timings": self.server_timings,
        }

    def summary(self) -> str:
        """One line for people: ``ttft 0.21 s, 48 tokens, 31.2 tok/s``."""
        ttft = self.time_to_first_token
        parts = ["ttft " + ("-" if ttft is None else f"{ttft:.2f} s")]
        tokens = self.tokens
        parts.append(f"{'~' if self.tokens_estimated else ''}{tokens} tokens")
        speed = self.tokens_per_second
        if speed is not None:
            parts.append(f"{speed:.1f} tok/s")
        return ", ".join(parts)

    def __repr__(self) -> str:
        def sec(value: float | None) -> str:
            return "None" if value is None else f"{value:.3f}"

        return (
            f"Stats(base_url={self.base_url!r}, attempts={self.attempts}, "
            f"time_to_headers={sec(self.time_to_headers)}, "
            f"time_to_first_token={sec(self.time_to_first_token)}, "
            f"duration={sec(self.duration)}, chunks={self.chunks}, "
            f"output_tokens={self.output_tokens}, tokens_per_second="
            f"{'None' if self.tokens_per_second is None else f'{self.tokens_per_second:.1f}'})"
        )
