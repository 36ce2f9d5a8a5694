"""Scenario (b) in a fresh process: ``streams`` concurrent async streams, ``batches`` times.

A fresh process per measurement makes peak RSS (``ru_maxrss``) mean something. Prints
one JSON object: seconds per batch, peak RSS, RSS once imported and warmed up.

    python -m benchmarks._worker NAME BASE_URL STREAMS CHUNKS BATCHES
"""

from __future__ import annotations

import os
import sys

if os.environ.get("YLOKH_BENCH_NO_ORJSON"):
    sys.modules["orjson"] = None  # type: ignore[assignment]

import asyncio
import json
import resource
import time

from .contenders import BUILDERS
from .server import expected_text


def _status_kib(field: str) -> int:
    # VmHWM, not ru_maxrss: ru_maxrss keeps the parent's RSS across fork + exec
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def _run(name: str, base_url: str, streams: int, chunks: int, batches: int) -> dict:
    contender = BUILDERS[name](base_url)
    expected = expected_text(chunks)
    text = await contender.consume(4)  # imports done, client made, one connection warm
    assert text == expected_text(4), (name, text)
    rss_ready = _status_kib("VmRSS")
    times = []
    for _ in range(batches):
        t0 = time.perf_counter()
        texts = await asyncio.gather(*(contender.consume(chunks) for _ in range(streams)))
        times.append(time.perf_counter() - t0)
        bad = [t for t in texts if t != expected]
        if bad:
            raise SystemExit(f"{name}: {len(bad)} streams returned the wrong text")
    await contender.close()
    return {
        "times": times,
        "rss_ready_kib": rss_ready,
        "rss_peak_kib": _status_kib("VmHWM"),
    }


def main() -> None:
    name, base_url, streams, chunks, batches = sys.argv[1:6]
    result = asyncio.run(_run(name, base_url, int(streams), int(chunks), int(batches)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
