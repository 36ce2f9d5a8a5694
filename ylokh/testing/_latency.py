"""Known latencies for the test server: time to first token, inter-chunk delay, jitter.

Strategy: a streamed answer with latencies is played against absolute times measured from
the arrival of the request (chunk ``k`` is due at ``ttft + k * itl``, each term jittered),
not as a chain of relative pauses, so the server's own write time and a late event loop do
not add up over an answer. A benchmark can then check what it measures against the truth.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass

__all__ = ["Latency", "add_latency_flags", "llama_timings"]


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
