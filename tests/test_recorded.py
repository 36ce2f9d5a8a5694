"""Streams recorded from a real llama.cpp server, through the parser and through both faces.

The files (``tests/data/streams``, or ``$YLOKH_RECORDED_STREAMS``) are response bodies
of llama-cpp-python 0.3.36 serving Gemma 3 270M: role-only first delta, one delta per
token, ``: ping`` comments on a long stream, and a stream interrupted by a second request
(``[DONE]`` with no ``finish_reason``, then the connection dropped).
"""

from __future__ import annotations

import json
import random
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from parsing import Parser as ResponseParser
from recordings import STREAMS

HEAD = {"content-type": "text/event-stream"}
FILES = {
    # name: (finish_reason, number of text deltas, start of the text)
    "llamacpp_gemma_stream.sse": ("length", 16, "Name three colors. 衣装\nName three"),
    "llamacpp_gemma_stream_with_ping.sse": ("length", None, "Tell a story about a ship."),
    "llamacpp_gemma_interrupted.sse": (None, None, "Tell a story about a ship."),
}


def body(name: str) -> bytes:
    path = STREAMS / name
    if not path.exists():
        pytest.skip(f"recorded stream {path} is not available")
    return path.read_bytes()


def reference(data: bytes) -> tuple[list[str], str | None]:
    """The deltas and finish_reason, read naively line by line (independent of ylokh)."""
    deltas: list[str] = []
    finish = None
    for line in data.decode().split("\n"):
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        choice = json.loads(line[6:])["choices"][0]
        if choice["delta"].get("content"):
            deltas.append(choice["delta"]["content"])
        finish = choice["finish_reason"] or finish
    return deltas, finish


def parse(data: bytes, cuts: list[int]) -> tuple[list[str], ResponseParser]:
    parser = ResponseParser()
    parser.start(200, HEAD)
    deltas: list[str] = []
    start = 0
    for end in [*cuts, len(data)]:
        deltas += parser.feed(data[start:end])
        start = end
    deltas += parser.close()
    return deltas, parser


def every_n(data: bytes, n: int) -> list[int]:
    return list(range(n, len(data), n))


@pytest.mark.parametrize("name", sorted(FILES))
def test_recorded_stream_through_the_parser(name: str) -> None:
    data = body(name)
    expected, finish = reference(data)
    want_finish, count, start = FILES[name]
    deltas, parser = parse(data, [])
    assert deltas == expected
    assert parser.text == "".join(expected)
    assert parser.text.startswith(start)
    assert parser.finish_reason == finish == want_finish
    assert parser.done  # [DONE] was seen: the stream is complete
    assert parser.usage is None  # llama.cpp sends no usage while streaming
    assert parser.reasoning == ""
    assert parser.tool_calls == []
    if count is not None:
        assert len(deltas) == count


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_way_of_cutting_gives_the_same_deltas(name: str) -> None:
    data = body(name)
    whole, _ = parse(data, [])
    rng = random.Random(name)
    cuttings = [
        every_n(data, 1),
        every_n(data, 7),
        every_n(data, 4096),
        sorted(rng.sample(range(1, len(data)), 200)),
    ]
    for cuts in cuttings:
        deltas, parser = parse(data, cuts)
        assert "".join(deltas) == "".join(whole)
        assert parser.finish_reason == FILES[name][0]


def test_pings_are_ignored() -> None:
    data = body("llamacpp_gemma_stream_with_ping.sse")
    assert data.count(b"\n: ping - ") == 3
    deltas, _ = parse(data, [])
    assert not any("ping" in d for d in deltas)
    without_pings = b"".join(
        line for line in data.splitlines(keepends=True) if not line.startswith(b": ping")
    )
    assert parse(without_pings, [])[0] == deltas


def test_interrupted_stream_is_accepted_as_complete() -> None:
    data = body("llamacpp_gemma_interrupted.sse")
    deltas, parser = parse(data, [])
    assert deltas
    assert parser.finish_reason is None
    assert parser.done
    assert data.rstrip().endswith(b"data: [DONE]")


def test_recorded_stream_in_crlf_and_single_newline_framing() -> None:
    """The same bytes as gateways re-frame them give the same text."""
    data = body("llamacpp_gemma_stream.sse")
    expected, _ = parse(data, [])
    for framed in (data.replace(b"\n", b"\r\n"), data.replace(b"\n\n", b"\n")):
        for cuts in ([], every_n(framed, 5)):
            deltas, parser = parse(framed, cuts)
            assert "".join(deltas) == "".join(expected)
            assert parser.finish_reason == "length"


# -- the recorded bytes through both faces, over a real socket ------------------------------
class Replay:
    """A loopback HTTP server that answers every POST with a recorded body, as
    llama.cpp frames it (chunked, one HTTP chunk per event); ``drop`` closes the
    connection after the body without the chunked terminator."""

    def __init__(self) -> None:
        self.body = b""
        self.drop = False
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = conn.recv(65536)
            if not chunk:
                return
            received += chunk
        head, _, rest = received.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(rest) < length:
            rest += conn.recv(65536)
        out = [
            b"HTTP/1.1 200 OK\r\nserver: uvicorn\r\ncache-control: no-store\r\n"
            b"connection: close\r\nx-accel-buffering: no\r\n"
            b"content-type: text/event-stream; charset=utf-8\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        ]
        for event in self.body.split(b"\n\n"):
            if event:
                piece = event + b"\n\n"
                out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
        if not self.drop:
            out.append(b"0\r\n\r\n")
        conn.sendall(b"".join(out))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def replay() -> Iterator[Replay]:
    server = Replay()
    yield server
    server.close()


@pytest.mark.parametrize("name", sorted(FILES))
def test_recorded_stream_through_both_faces(face: Any, replay: Replay, name: str) -> None:
    replay.body = body(name)
    replay.drop = False
    expected, finish = reference(replay.body)
    out = face.stream("Name three colors.", base_url=replay.base_url, max_retries=0)
    assert out.error is None, out.error
    assert out.deltas == expected
    assert out.stream.finish_reason == finish
    assert out.stream.usage is None
    done = face.complete("Name three colors.", base_url=replay.base_url, max_retries=0)
    # a stream answered to a non-streamed request: still read as the whole answer
    assert done.error is None, done.error
    assert done.result == "".join(expected)


def test_connection_dropped_after_done_is_still_complete(face: Any, replay: Replay) -> None:
    """The interrupted recording ends with [DONE] and then the connection drops without
    the chunked terminator: the answer was announced complete, so no error."""
    replay.body = body("llamacpp_gemma_interrupted.sse")
    replay.drop = True
    expected, _ = reference(replay.body)
    out = face.stream("Tell me a story.", base_url=replay.base_url, max_retries=0)
    assert out.error is None, out.error
    assert out.deltas == expected
    assert out.stream.completed
