"""Command line for the test server: ``python -m ylokh.testing --port N [--fault SPEC]``."""

from __future__ import annotations

import argparse
import sys

from .._server_flags import add_server_flags, run_server


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and serve until Ctrl-C; return the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m ylokh.testing",
        description="Run the ylokh OpenAI-compatible test server (deterministic echo answers).",
    )
    add_server_flags(parser)
    return run_server(parser, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
