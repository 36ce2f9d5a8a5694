"""A tiny OpenAI-compatible SSE server for the benchmarks: raw asyncio, pre-encoded bytes.

``POST /v1/chat/completions`` answers an event stream of ``max_tokens`` content chunks
(default 16) shaped like llama.cpp's (a role-only first delta, one delta per token, a last
``delta: {}`` with ``finish_reason``, then ``data: [DONE]``), HTTP/1.1 keep-alive, chunked,
one HTTP chunk per event as real servers write them. The whole response is encoded once
per chunk count and cached, so the server costs one ``write`` per request. ``GET /stats``
answers ``{"connections": ..., "requests": ...}`` (connections that sent a POST).

Run: ``python -m benchmarks.server [--port N]``; prints ``PORT <n>`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from tests.recordings import STREAMS

_FALLBACK_TOKENS = ["Hello", ",", " world", "!", " How", " are", " you", " today", "?", " é日本"]


def tokens() -> list[str]:
    """Content deltas of the recorded llama.cpp stream (or a fixed list without it)."""
    path = STREAMS / "llamacpp_gemma_stream.sse"
    found: list[str] = []
    try:
        text = path.read_bytes()
    except OSError:
        return _FALLBACK_TOKENS
    for line in text.split(b"\n"):
        if line.startswith(b"data: {"):
            delta = json.loads(line[6:])["choices"][0]["delta"]
            if delta.get("content"):
                found.append(delta["content"])
    return found or _FALLBACK_TOKENS


TOKENS = tokens()


def expected_text(n: int) -> str:
    """The text a correct client assembles from a stream of ``n`` chunks."""
    return "".join(TOKENS[i % len(TOKENS)] for i in range(n))


def _chunk(delta: dict[str, str], finish: str | None) -> bytes:
    obj = {
        "id": "chatcmpl-e7a5ef43-a953-469b-b1a3-d5ebf69e7897",
        "model": "gemma",
        "created": 1795782147,
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def events(n: int) -> list[bytes]:
    """The SSE events of a stream with ``n`` content chunks."""
    out = [_chunk({"role": "assistant"}, None)]
    out += [_chunk({"content": TOKENS[i % len(TOKENS)]}, None) for i in range(n)]
    out.append(_chunk({}, "stop"))
    out.append(b"data: [DONE]\n\n")
    return out


def body(n: int) -> bytes:
    """The SSE body of a stream with ``n`` content chunks (no HTTP framing)."""
    return b"".join(events(n))


_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream; charset=utf-8\r\n"
    b"Cache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"\r\n"
)


class _Stats:
    connections = 0
    requests = 0


_cache: dict[int, bytes] = {}


def response(n: int) -> bytes:
    """The whole HTTP response for ``n`` chunks, encoded once."""
    cached = _cache.get(n)
    if cached is None:
        framed = [b"%x\r\n%s\r\n" % (len(e), e) for e in events(n)]
        cached = _cache[n] = _HEAD + b"".join(framed) + b"0\r\n\r\n"
        if len(_cache) > 64:
            _cache.clear()
    return cached


def _plain(status: bytes, payload: bytes, ctype: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: "
        + ctype
        + b"\r\nContent-Length: "
        + str(len(payload)).encode()
        + b"\r\n\r\n"
        + payload
    )


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.counted = False  # counted at its first POST, so /stats calls never count

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            lines = head.split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            payload = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            self._answer(method, path, payload)

    def _answer(self, method: str, path: str, payload: bytes) -> None:
        assert self.transport is not None
        if method == "GET" and path.startswith("/stats"):
            stats = {"connections": _Stats.connections, "requests": _Stats.requests}
            self.transport.write(_plain(b"200 OK", json.dumps(stats).encode()))
            return
        if method != "POST" or not path.endswith("/chat/completions"):
            self.transport.write(_plain(b"404 Not Found", b'{"error": "not found"}'))
            return
        _Stats.requests += 1
        if not self.counted:
            self.counted = True
            _Stats.connections += 1
        try:
            n = int(json.loads(payload).get("max_tokens") or 16)
        except (ValueError, AttributeError):
            self.transport.write(_plain(b"400 Bad Request", b'{"error": "bad json"}'))
            return
        self.transport.write(response(n))


async def serve(port: int) -> None:
    """Listen on 127.0.0.1:``port`` until cancelled; print ``PORT <n>`` when ready."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Protocol, "127.0.0.1", port, backlog=1024)
    sockets = server.sockets
    print(f"PORT {sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
