"""Command line for the test server: ``python -m ylokh.testing --port N [--fault SPEC]``."""

from __future__ import annotations

import argparse
import sys

from ._fault import Fault
from ._latency import add_latency_flags, latency_of
from ._server import serve


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and serve until Ctrl-C; return the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m ylokh.testing",
        description="Run the ylokh OpenAI-compatible test server (deterministic echo answers).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000, 0 = any)")
    parser.add_argument("--fault", default=None, help='default fault spec, e.g. "status=503"')
    parser.add_argument("--chunks", type=int, default=None, help="exact number of content chunks")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between chunks")
    parser.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY")
    parser.add_argument("--model", default="ylokh-echo", help="model name to report")
    add_latency_flags(parser)
    args = parser.parse_args(argv)
    try:
        Fault.parse(args.fault)
        latency = latency_of(args)
    except ValueError as exc:
        parser.error(str(exc))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
