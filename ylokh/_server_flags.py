"""The bundled server's command-line flags, defined once for ``ylokh serve`` and
``python -m ylokh.testing``.

It imports argparse only (not aiohttp), so building the ``ylokh`` parser stays cheap; the
server itself is imported when it is run.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Callable

__all__ = ["add_server_flags", "run_server"]


def _non_negative(kind: type[float] | type[int]) -> Callable[[str], float | int]:
    def convert(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in its messages
    return convert


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--host --port --fault --chunks --delay --api-key --model`` and the known
    latencies ``--ttft --itl --jitter --tokens`` to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any)")
    parser.add_argument("--fault", help='default fault spec, e.g. "status=503" or "stall=5"')
    parser.add_argument(
        "--chunks", type=_non_negative(int), help="exact number of content chunks per answer"
    )
    parser.add_argument(
        "--delay", type=_non_negative(float), default=0.0, help="seconds between chunks"
    )
    parser.add_argument("--api-key", help="require this key (Authorization: Bearer KEY)")
    parser.add_argument("--model", default="ylokh-echo", help="the model name to report")
    group = parser.add_argument_group("latency (known latencies, to check a benchmark)")
    group.add_argument(
        "--ttft", type=_non_negative(float), default=0.0, help="seconds to the first chunk"
    )
    group.add_argument(
        "--itl", type=_non_negative(float), default=0.0, help="seconds between content chunks"
    )
    group.add_argument(
        "--jitter", type=_non_negative(float), default=0.0,
        help="vary each latency by up to this fraction (0 to 1)",
    )  # fmt: skip
    group.add_argument(
        "--tokens", type=_non_negative(int), help="content chunks per answer (one token each)"
    )


def run_server(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Check the flags (a bad one is ``parser.error``, exit 2), then serve until Ctrl-C.

    Returns 0 after Ctrl-C, 1 when the address cannot be bound (one line on stderr).
    """
    from .testing import Fault, serve
    from .testing._latency import Latency

    try:
        Fault.parse(args.fault)
    except ValueError as exc:
        parser.error(f"--fault: {exc}")
    try:
        latency = Latency(args.ttft, args.itl, args.jitter)
    except ValueError as exc:
        parser.error(f"--ttft/--itl/--jitter: {exc}")
    try:
        serve(
            args.host,
            args.port,
            fault=args.fault,
            chunks=args.chunks if args.tokens is None else args.tokens,
            delay=args.delay,
            api_key=args.api_key,
            model=args.model,
            ttft=latency.ttft,
            itl=latency.itl,
            jitter=latency.jitter,
        )
    except OSError as exc:
        reason = "the port is in use" if exc.errno == errno.EADDRINUSE else exc.strerror or exc
        print(f"{parser.prog}: error: cannot listen on {args.host}:{args.port}: {reason}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0  # Ctrl-C is how a server is meant to stop
