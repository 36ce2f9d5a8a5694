"""Scenario (e): the sans-I/O core alone, fed a recorded llama.cpp stream.

The recorded events are repeated to make a long body; the parser is fed it the two
ways transports hand it over: one event per ``feed`` (a chunked body read by
``read1``) and 64 KiB buffers. Compared with ``json.loads`` (and ``orjson.loads``) of
the same ``data:`` payloads, and nothing else.
"""

from __future__ import annotations

import json
import statistics
import time

from .server import STREAMS

RECORDING = "llamacpp_gemma_stream.sse"


def recorded_events(name: str = RECORDING) -> list[bytes]:
    """The events (``data: ...\\n\\n``) of a recording, ``[DONE]`` left out."""
    raw = (STREAMS / name).read_bytes().replace(b"\r\n", b"\n")
    return [e + b"\n\n" for e in raw.split(b"\n\n") if e.startswith(b"data: {")]


def make_body(target_chunks: int, name: str = RECORDING) -> tuple[list[bytes], int]:
    """The events of a long stream made by repeating a recording's chunk events (the
    first, role-only one and the last, ``finish_reason`` one once), then ``[DONE]``."""
    events = recorded_events(name)
    middle = events[1:-1]
    body = [events[0]]
    while len(body) < target_chunks:
        body.extend(middle)
    body.append(events[-1])
    body.append(b"data: [DONE]\n\n")
    return body, len(body) - 1


def _best_median(fn: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(chunks: int, repeats: int) -> dict[str, float]:
    """µs per chunk for the parser (per-event feeds and 64 KiB feeds) and for loads alone."""
    from ylokh import _protocol

    events, n = make_body(chunks)
    body = b"".join(events)
    blocks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    payloads = [e[6:-2] for e in events[:-1]]
    expected = "".join(json.loads(p)["choices"][0]["delta"].get("content") or "" for p in payloads)

    def parse(pieces: list[bytes]) -> None:
        parser = _protocol.ResponseParser()
        parser.start(200, {"content-type": "text/event-stream"})
        feed = parser.feed
        for piece in pieces:
            feed(piece)
        parser.close()
        assert parser.text == expected

    def loads_only(loads: object) -> None:
        for p in payloads:
            loads(p)  # type: ignore[operator]

    out = {
        "chunks": float(n),
        "parser_per_event_us": _best_median(lambda: parse(events), repeats) / n * 1e6,
        "parser_64k_us": _best_median(lambda: parse(blocks), repeats) / n * 1e6,
        "json_loads_us": _best_median(lambda: loads_only(json.loads), repeats) / n * 1e6,
        "library_loads_us": _best_median(lambda: loads_only(_protocol.loads), repeats) / n * 1e6,
    }
    try:
        import orjson

        out["orjson_loads_us"] = _best_median(lambda: loads_only(orjson.loads), repeats) / n * 1e6
    except ImportError:
        pass
    out["uses_orjson"] = float(_protocol.loads is not json.loads)
    return out
