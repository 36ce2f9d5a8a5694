"""Performance regression guards that hold on a noisy machine: counts, never times.

- the parser makes (almost) no Python-level call per chunk when fed large buffers, and a
  bounded few when fed one event at a time (counted with ``sys.setprofile``);
- a whole sync stream, transport included, stays within a call budget per chunk (urllib3's
  one-HTTP-chunk-per-``read1`` path costs some thirty calls per chunk; ours reads in bulk);
- the sync path never imports ``aiohttp`` (checked in a fresh process);
- 100 sequential calls use one TCP connection, module-level functions included;
- the bulk de-chunker of the sync face gives back exactly the body, however it is cut.

Timings live in ``python -m benchmarks``.
"""

from __future__ import annotations

import asyncio
import json
import socketserver
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ylokh
from ylokh._answer import Answer
from ylokh._readers import reader_for
from ylokh.testing import Server

ROOT = Path(__file__).resolve().parent.parent

# A llama.cpp-shaped chunk (as recorded from llama-cpp-python's server).
_CHUNK = (
    '{"id": "chatcmpl-e7a5", "model": "gemma", "created": 1795782147, '
    '"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": '
    '{"content": "%s"}, "logprobs": null, "finish_reason": null}]}'
)
_FIRST = _CHUNK.replace('{"content": "%s"}', '{"role": "assistant"}')
_LAST = _CHUNK.replace('{"content": "%s"}', "{}").replace(
    '"finish_reason": null', '"finish_reason": "stop"'
)


def _events(n: int) -> tuple[list[bytes], str]:
    words = [f" w{i}" for i in range(n)]
    events = [b"data: " + _FIRST.encode() + b"\n\n"]
    events += [b"data: " + (_CHUNK % w).encode() + b"\n\n" for w in words]
    events += [b"data: " + _LAST.encode() + b"\n\n", b"data: [DONE]\n\n"]
    return events, "".join(words)


_JSON_DIR = str(Path(json.__file__).parent)


def _in_json(frame: Any) -> bool:
    """Whether a frame decodes JSON with the stdlib: without the ``fast`` extra that costs
    a call or two per chunk (ylokh's ``loads`` and, rarely, the ``json`` package's), which
    are not what these guards watch."""
    code = frame.f_code
    return code.co_filename.startswith(_JSON_DIR) or (
        code.co_name == "loads" and code.co_filename.endswith("_protocol.py")
    )


def _count_calls(fn: Callable[[], Any]) -> tuple[int, Any]:
    """How many Python-level function calls ``fn()`` makes (C calls not counted)."""
    calls = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call" and not _in_json(frame):
            calls += 1

    sys.setprofile(profile)
    try:
        result = fn()
    finally:
        sys.setprofile(None)
    return calls, result


def _parse(pieces: list[bytes]) -> Answer:
    """The pieces through the reader a face would use, as a face feeds it."""
    answer = Answer()
    feed = reader_for(answer, 200, {"content-type": "text/event-stream"}).feed
    for piece in pieces:
        feed(piece)
    feed(b"", True)
    return answer


# -- the core ---------------------------------------------------------------------------------
def test_parser_makes_no_call_per_chunk_on_large_buffers() -> None:
    n = 2000
    events, text = _events(n)
    body = b"".join(events)
    blocks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    calls, parser = _count_calls(lambda: _parse(blocks))
    assert parser.text == text
    assert parser.finish_reason == "stop"
    assert calls / n <= 0.1, f"{calls / n:.2f} Python calls per chunk (expected ~0.02)"


def test_parser_calls_per_event_fed_alone_are_bounded() -> None:
    n = 1000
    events, text = _events(n)
    calls, parser = _count_calls(lambda: _parse(events))
    assert parser.text == text
    # feed -> SSEDecoder.feed -> _blocks -> _on_events: 4 per feed, none per chunk inside
    assert calls / n <= 5, f"{calls / n:.2f} Python calls per chunk (expected ~4)"


# -- the transports ---------------------------------------------------------------------------
class _BulkServer(socketserver.ThreadingTCPServer):
    """Answers every POST on a kept-alive connection with one ``sendall`` of a pre-encoded,
    chunked event stream (one HTTP chunk per event, as llama.cpp frames them). The bundled
    server writes event by event, so how many events one read gets would depend on the
    machine's load; here the bytes are all there at once, and the counts are repeatable."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, n: int) -> None:
        events, self.text = _events(n)
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
        self.response = head + body
        super().__init__(("127.0.0.1", 0), _BulkHandler)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _BulkHandler(socketserver.StreamRequestHandler):
    server: _BulkServer

    def handle(self) -> None:
        while True:
            length = 0
            while (line := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if not line:
                return
            self.rfile.read(length)
            self.wfile.write(self.server.response)


@pytest.fixture(scope="module")
def big_server() -> Iterator[_BulkServer]:
    server = _BulkServer(2000)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_sync_stream_reads_in_bulk(big_server: _BulkServer) -> None:
    with ylokh.Client(base_url=big_server.base_url) as client:
        "".join(client.stream("warm up"))  # imports, session, connection

        def run() -> ylokh.Stream:
            stream = client.stream("count the calls")
            for _ in stream:
                pass
            return stream

        calls, stream = _count_calls(run)
    assert stream.completed
    # urllib3's read1 hands over one HTTP chunk per call (~30 Python calls per chunk);
    # the bulk de-chunker and the parser's block path cost well under 1 per chunk.
    assert calls / 2000 <= 3, f"{calls / 2000:.2f} Python calls per chunk"


def test_async_stream_calls_per_chunk_are_bounded(big_server: _BulkServer) -> None:
    async def main() -> tuple[int, int]:
        async with ylokh.AsyncClient(base_url=big_server.base_url) as client:
            async for _ in client.stream("warm up"):
                pass

            async def consume() -> int:
                count = 0
                async for _ in client.stream("count the calls"):
                    count += 1
                return count

            calls = 0
            counted: list[int] = []

            def profile(frame: Any, event: str, arg: Any) -> None:
                nonlocal calls
                if event == "call" and not _in_json(frame):
                    calls += 1

            sys.setprofile(profile)
            try:
                counted.append(await consume())
            finally:
                sys.setprofile(None)
            return calls, counted[0]

    calls, deltas = asyncio.run(main())
    assert deltas > 0
    # aiohttp itself spends ~7 calls per HTTP chunk; ylokh adds none per chunk
    assert calls / 2000 <= 15, f"{calls / 2000:.2f} Python calls per chunk"


def test_sync_path_never_imports_aiohttp() -> None:
    with Server() as srv:
        code = textwrap.dedent(
            f"""
            import sys
            import ylokh
            assert "aiohttp" not in sys.modules, "import ylokh"
            with ylokh.Client(base_url={srv.base_url!r}) as client:
                text = "".join(client.stream("hi"))
                client.complete("hi")
            "".join(ylokh.stream("hi", base_url={srv.base_url!r}))
            ylokh.complete("hi", base_url={srv.base_url!r})
            ylokh.Chat(base_url={srv.base_url!r}).complete("hi")
            loaded = sorted(m for m in sys.modules if m.split(".")[0] == "aiohttp")
            print(text and "ok", loaded)
            """
        )
        env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok []", proc.stdout


# -- connection reuse -------------------------------------------------------------------------
@pytest.mark.parametrize("caller", ["client", "module"])
def test_one_connection_for_100_sync_calls(
    server: Server, monkeypatch: pytest.MonkeyPatch, caller: str
) -> None:
    monkeypatch.setenv("YLOKH_BASE_URL", server.base_url)
    server.reset()
    with ylokh.Client() as client:
        api: Any = client if caller == "client" else ylokh
        for i in range(100):
            if i % 2:
                assert api.complete("hi")
            else:
                assert "".join(api.stream("hi"))
    assert server.connections == 1


def test_one_connection_for_100_async_calls(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> tuple[int, int]:
        async with ylokh.AsyncClient(base_url=server.base_url) as client:
            for i in range(100):
                if i % 2:
                    assert await client.complete("hi")
                else:
                    assert "".join([t async for t in client.stream("hi")])
        with_client = server.connections
        server.reset()
        monkeypatch.setenv("YLOKH_BASE_URL", server.base_url)
        for i in range(100):
            if i % 2:
                assert await ylokh.acomplete("hi")
            else:
                assert "".join([t async for t in ylokh.astream("hi")])
        return with_client, server.connections

    with_client, module_level = asyncio.run(main())
    assert with_client == 1
    assert module_level == 1


# -- the bulk de-chunker (sync face) ----------------------------------------------------------
def _dechunker() -> Any:
    from ylokh._chunked import ChunkedDecoder

    return ChunkedDecoder()


def test_dechunker_gives_the_body_back_however_it_is_cut() -> None:
    events, _ = _events(3)
    body = b"".join(events)
    framed = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(e), e) for e in events[:2])
    framed += b"%X\r\n%s\r\n" % (len(b"".join(events[2:])), b"".join(events[2:]))
    framed += b"0\r\nX-Trailer: 1\r\n\r\n"
    cuts = range(1, len(framed))
    for a in cuts:
        for b in (a + 1, a + 7, a + 300):
            decoder = _dechunker()
            pieces = [framed[:a], framed[a:b], framed[b:]]
            out = b"".join(decoder.feed(p) for p in pieces if p)
            assert out == body, (a, b)
            assert decoder.done


@pytest.mark.parametrize(
    "framed",
    [
        b"zz\r\ndata: x\r\n",  # a chunk size that is not hex
        b"3\r\nabcXY",  # chunk data not followed by CRLF
        b"3\nabc\r\n",  # a size line ended by LF alone
    ],
)
def test_dechunker_rejects_malformed_framing(framed: bytes) -> None:
    import http.client

    with pytest.raises(http.client.HTTPException):
        _dechunker().feed(framed)


def test_sync_stream_is_identical_through_the_bulk_reader(big_server: Server) -> None:
    with ylokh.Client(base_url=big_server.base_url) as client:
        stream = client.stream("same text")
        text = "".join(stream)
        completion = client.complete("same text")
    assert text == str(completion)
    assert stream.finish_reason == completion.finish_reason
