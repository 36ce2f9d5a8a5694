"""Where the recorded streams live, for the tests and the benchmarks alike.

The recordings ship in the repository (``tests/data/streams``, see its README), so a fresh
clone runs every test; ``$YLOKH_RECORDED_STREAMS`` points at another folder of recordings.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["STREAMS", "recording"]

STREAMS = Path(
    os.environ.get("YLOKH_RECORDED_STREAMS") or Path(__file__).resolve().parent / "data" / "streams"
)


def recording(name: str) -> bytes:
    """The bytes of the recorded response body ``name`` (a file in :data:`STREAMS`)."""
    return (STREAMS / name).read_bytes()
