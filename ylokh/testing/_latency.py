"""Known latencies for the test server: time to first token, inter-chunk delay, jitter.

Strategy: a streamed answer with latencies is played against absolute times measured from
the arrival of the request (chunk ``k`` is due at ``ttft + k * itl``, each term jittered),
not as a chain of relative pauses, so the server's own write time and a late event loop do
not add up over an answer. A benchmark can then check what it measures against the truth.

:class:`Pacer` plays such a schedule on an asyncio transport as tightly as an event loop
can: each piece is written by one ``transport.write`` from a timer callback at its
absolute loop time (no coroutine, no ``drain``, no await between the clock and the
socket; asyncio sets ``TCP_NODELAY``, so no Nagle delay), and what is overdue when it
wakes goes out in that one write. What remains is the loop's timer granularity (epoll
waits whole milliseconds, rounded up: a wake-up is 0-1 ms late) and the machine's.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Latency", "Pacer", "add_latency_flags", "llama_timings"]


@dataclass(frozen=True)
class Latency:
    """Per-request latencies of a streamed answer.

    ``ttft``: seconds from the request to the first content chunk; ``itl``: seconds between
    content chunks; ``jitter``: each of those varies uniformly by up to this fraction
    (``0.1`` is +-10%). All zero: no latency (the answer is written at once).
    """

    ttft: float = 0.0
    itl: float = 0.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        for name in ("ttft", "itl", "jitter"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"{name} must not be negative, got {value}")
        if self.jitter > 1:
            raise ValueError(f"jitter is a fraction from 0 to 1, got {self.jitter}")

    @property
    def active(self) -> bool:
        """Whether any latency is set."""
        return self.ttft > 0 or self.itl > 0

    def schedule(self, n: int, rng: random.Random) -> list[float]:
        """When each of ``n`` content chunks is due, in seconds from the request."""
        jitter = self.jitter

        def vary(seconds: float) -> float:
            return seconds * (1 + jitter * (2 * rng.random() - 1)) if jitter else seconds

        times: list[float] = []
        t = vary(self.ttft)
        for _ in range(n):
            times.append(t)
            t += vary(self.itl)
        return times


class Pacer:
    """Write ``pieces[0]`` now and ``pieces[k + 1]`` at loop time ``at[k]`` on ``transport``.

    ``at`` are absolute :meth:`asyncio.AbstractEventLoop.time` values, ascending, one per
    piece after the first (for an answer: the head and role chunk first, then each content
    chunk at ``arrived + due[k]`` with ``due`` from :meth:`Latency.schedule` and
    ``arrived`` when the request's first bytes were read). Call :meth:`cancel` when the
    connection is lost; ``done`` tells the last piece was written, and the future
    ``finished`` resolves then, on :meth:`cancel` or when the transport closed. ``late``,
    when given, gets how late each timed piece was written (what the truth missed by).
    """

    __slots__ = (
        "_at", "_handle", "_index", "_late", "_loop", "_pieces", "_transport", "done", "finished",
    )  # fmt: skip

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        pieces: Sequence[bytes],
        at: Sequence[float],
        late: list[float] | None = None,
    ) -> None:
        if len(pieces) != len(at) + 1:
            raise ValueError(f"{len(pieces)} pieces need {len(pieces) - 1} times, got {len(at)}")
        self._loop = asyncio.get_running_loop()
        self._transport = transport
        self._pieces = pieces
        self._at = at
        self._index = 0
        self._late = late
        self._handle: asyncio.TimerHandle | None = None
        self.done = False
        self.finished: asyncio.Future[None] = self._loop.create_future()
        transport.write(pieces[0])
        if at:
            self._handle = self._loop.call_at(at[0], self._step)
        else:
            self._finish(True)

    def _finish(self, done: bool) -> None:
        self._handle = None
        self.done = done
        if not self.finished.done():
            self.finished.set_result(None)

    def _step(self) -> None:
        now, at, k = self._loop.time(), self._at, self._index
        if self._transport.is_closing():
            self._finish(False)  # the client went away: nothing more to write
            return
        end = k + 1
        while end < len(at) and at[end] <= now:
            end += 1  # overdue too: in the same write
        self._index = end
        self._transport.write(b"".join(self._pieces[k + 1 : end + 1]))
        if self._late is not None:
            self._late.extend(now - at[i] for i in range(k, end))
        if end < len(at):
            self._handle = self._loop.call_at(at[end], self._step)
        else:
            self._finish(True)

    def cancel(self) -> None:
        """Write nothing more (the connection is gone)."""
        if self._handle is not None:
            self._handle.cancel()
        self._finish(self.done)


def llama_timings(prompt_tokens: int, tokens: int, latency: Latency) -> dict[str, float | int]:
    """A llama.cpp-shaped ``timings`` object for an answer played with ``latency``."""
    prompt_ms = latency.ttft * 1000
    predicted_ms = latency.itl * 1000 * max(tokens - 1, 0)
    return {
        "prompt_n": prompt_tokens,
        "prompt_ms": prompt_ms,
        "prompt_per_second": prompt_tokens / latency.ttft if latency.ttft else 0.0,
        "predicted_n": tokens,
        "predicted_ms": predicted_ms,
        "predicted_per_second": tokens / (predicted_ms / 1000) if predicted_ms else 0.0,
    }


def add_latency_flags(parser: argparse.ArgumentParser) -> None:
    """The ``--ttft``, ``--itl``, ``--jitter`` and ``--tokens`` flags of the server commands."""
    group = parser.add_argument_group("latency (known latencies, to check a benchmark)")
    group.add_argument(
        "--ttft", type=float, default=0.0, help="seconds from a request to its first chunk"
    )
    group.add_argument("--itl", type=float, default=0.0, help="seconds between content chunks")
    group.add_argument(
        "--jitter", type=float, default=0.0, help="vary each latency by up to this fraction"
    )
    group.add_argument(
        "--tokens", type=int, default=None, help="content chunks per answer (one token each)"
    )


def latency_of(args: argparse.Namespace) -> Latency:
    """The :class:`Latency` the flags of :func:`add_latency_flags` ask for.

    Raises:
        ValueError: a negative value or a jitter above 1.
    """
    return Latency(args.ttft, args.itl, args.jitter)
