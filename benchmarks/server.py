"""A tiny OpenAI-compatible SSE server for the benchmarks: raw asyncio, pre-encoded bytes.

``POST /v1/chat/completions`` answers an event stream of ``max_tokens`` (or
``max_completion_tokens``) content chunks, ``--tokens`` (default 16) when the request
names neither, shaped like llama.cpp's (a role-only first delta, one delta per token, a
last ``delta: {}`` with ``finish_reason``, then ``data: [DONE]``), HTTP/1.1 keep-alive,
chunked, one HTTP chunk per event as real servers write them. Every chunk names the
request's ``model``; with ``stream_options.include_usage`` a last chunk before ``[DONE]``
carries ``usage`` (``choices: []``, as OpenAI sends it), so every client counts the same
output tokens (one per chunk) without a tokenizer. The whole response is encoded once per
(chunks, model, usage, prompt size) and cached, so the server costs one ``write`` per
request. ``GET /v1/models`` lists the model; ``GET /stats`` answers ``{"connections": ...,
"requests": ...}`` (connections that sent a POST) and, with latencies, ``"late_ms"`` (how late
its paced chunks were written: p50, p99, max), ``"ttft_ms"`` and ``"itl_ms"`` (the latencies
it really played, from its own write times: the truth a client's figures are held to);
``/stats?reset`` starts them anew; a ``HEAD`` gets the head alone.

With ``--ttft``/``--itl`` (``--jitter``) it plays answers at known latencies, the truth the
bench's accuracy is checked against: content chunk ``k`` is written at ``arrived + ttft +
k * itl``, where ``arrived`` is when the request's first bytes were read, by
:class:`ylokh.testing._latency.Pacer` (one ``transport.write`` per chunk from a timer
callback, absolute deadlines; the head and role chunk at once, the end with the last chunk).

Run: ``python -m benchmarks.server [--port N] [--tokens N] [--ttft S --itl S]``; prints
``PORT <n>`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import selectors
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.recordings import STREAMS
from ylokh.testing._latency import Latency, Pacer

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


MODEL = "gemma"


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _chunk(delta: dict[str, str], finish: str | None, model: str) -> bytes:
    return _event(
        {
            "id": "chatcmpl-e7a5ef43-a953-469b-b1a3-d5ebf69e7897",
            "model": model,
            "created": 1795782147,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
    )


def events(n: int, model: str = MODEL, prompt_tokens: int | None = None) -> list[bytes]:
    """The SSE events of a stream with ``n`` content chunks; with ``prompt_tokens`` (the
    client asked for ``include_usage``) a usage chunk before ``[DONE]``."""
    out = [_chunk({"role": "assistant"}, None, model)]
    out += [_chunk({"content": TOKENS[i % len(TOKENS)]}, None, model) for i in range(n)]
    out.append(_chunk({}, "stop", model))
    if prompt_tokens is not None:
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                 "total_tokens": prompt_tokens + n}  # fmt: skip
        out.append(
            _event(
                {
                    "id": "chatcmpl-e7a5ef43-a953-469b-b1a3-d5ebf69e7897",
                    "model": model,
                    "created": 1795782147,
                    "object": "chat.completion.chunk",
                    "choices": [],
                    "usage": usage,
                }
            )
        )
    out.append(b"data: [DONE]\n\n")
    return out


def body(n: int, model: str = MODEL, prompt_tokens: int | None = None) -> bytes:
    """The SSE body of a stream with ``n`` content chunks (no HTTP framing)."""
    return b"".join(events(n, model, prompt_tokens))


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
    default_tokens = 16  # chunks of an answer whose request names no max_tokens
    latency = Latency()  # known latencies (--ttft, --itl, --jitter); none by default
    rng = random.Random(0)  # their jitter: varied, but the same run to run
    late: list[float] = []  # how late each paced chunk was written (GET /stats reports it)
    ttfts: list[float] = []  # what the server did: arrival to first content chunk written
    gaps: list[float] = []  # and between the writes of consecutive content chunks

    @classmethod
    def played(cls, arrived: float, at: list[float], late: list[float]) -> None:
        """An answer was played: keep how late, and the latencies it really had."""
        cls.late += late
        if len(late) == len(at):
            written = [t + d for t, d in zip(at, late, strict=True)]
            cls.ttfts.append(written[0] - arrived)
            cls.gaps += [b - a for a, b in itertools.pairwise(written)]


_cache: dict[tuple[int, str, int | None], tuple[bytes, list[bytes]]] = {}


def parts(
    n: int, model: str = MODEL, prompt_tokens: int | None = None
) -> tuple[bytes, list[bytes]]:
    """The HTTP response for ``n`` chunks, encoded once: the whole of it, and in the
    pieces a paced answer writes (the head with the role chunk, each content chunk, the
    last of them with the end: finish, usage, ``[DONE]``, the last HTTP chunk)."""
    key = (n, model, prompt_tokens)
    cached = _cache.get(key)
    if cached is None:
        framed = [b"%x\r\n%s\r\n" % (len(e), e) for e in events(n, model, prompt_tokens)]
        tail = b"".join(framed[n + 1 :]) + b"0\r\n\r\n"
        pieces = [_HEAD + framed[0], *framed[1 : n + 1]]
        pieces[-1] += tail
        if len(_cache) >= 64:
            _cache.clear()
        cached = _cache[key] = (b"".join(pieces), pieces)
    return cached


def response(n: int, model: str = MODEL, prompt_tokens: int | None = None) -> bytes:
    """The whole HTTP response for ``n`` chunks, encoded once."""
    return parts(n, model, prompt_tokens)[0]


def _prompt_tokens(messages: Any) -> int:
    """A rough prompt size (words of the messages' text): the same prompt, the same count."""
    words = 0
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        if isinstance(content, str):
            words += len(content.split())
    return max(words, 1)


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


def _head_only(response: bytes) -> bytes:
    return response[: response.index(b"\r\n\r\n") + 4]


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.counted = False
        self.arrived = 0.0  # when the first bytes of the request being read came
        self.player: Pacer | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.counted = False  # counted at its first POST, so /stats calls never count

    def connection_lost(self, exc: Exception | None) -> None:
        if self.player is not None:
            self.player.cancel()

    def data_received(self, data: bytes) -> None:
        if not self.buf:
            self.arrived = asyncio.get_running_loop().time()
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
            if self.buf:
                self.arrived = asyncio.get_running_loop().time()

    def _answer(self, method: str, path: str, payload: bytes) -> None:
        assert self.transport is not None
        if method == "POST" and path.endswith("/chat/completions"):
            found = self._stream(payload)
            if isinstance(found, bytes):
                self.transport.write(found)
            else:
                pieces, at = found
                late: list[float] = []
                self.player = Pacer(self.transport, pieces, at, late)
                arrived = self.arrived
                self.player.finished.add_done_callback(lambda _: _Stats.played(arrived, at, late))
            return
        if path.startswith("/stats"):
            stats: dict[str, Any] = {"connections": _Stats.connections, "requests": _Stats.requests}
            for key, values in (("late_ms", _Stats.late), ("ttft_ms", _Stats.ttfts),
                                ("itl_ms", _Stats.gaps)):  # fmt: skip
                ranked = sorted(values)
                if ranked:
                    stats[key] = {
                        "n": len(ranked),
                        "p50": 1000 * ranked[len(ranked) // 2],
                        "p99": 1000 * ranked[min(len(ranked) - 1, int(0.99 * len(ranked)))],
                        "max": 1000 * ranked[-1],
                    }
            if path.endswith("reset"):
                for values in (_Stats.late, _Stats.ttfts, _Stats.gaps):
                    values.clear()
            answer = _plain(b"200 OK", json.dumps(stats).encode())
        elif path.endswith("/models"):
            model = {"id": MODEL, "object": "model", "created": 0, "owned_by": "benchmarks"}
            answer = _plain(b"200 OK", json.dumps({"object": "list", "data": [model]}).encode())
        else:
            answer = _plain(b"404 Not Found", b'{"error": "not found"}')
        self.transport.write(_head_only(answer) if method == "HEAD" else answer)

    def _stream(self, payload: bytes) -> bytes | tuple[list[bytes], list[float]]:
        """The whole response, or with latencies its pieces and when each is due."""
        _Stats.requests += 1
        if not self.counted:
            self.counted = True
            _Stats.connections += 1
        try:
            request = json.loads(payload)
            limit = request.get("max_tokens") or request.get("max_completion_tokens")
            n = int(limit or _Stats.default_tokens)
            model = str(request.get("model") or MODEL)
            options = request.get("stream_options")
            usage = isinstance(options, dict) and options.get("include_usage") is True
        except (ValueError, AttributeError, TypeError):
            return _plain(b"400 Bad Request", b'{"error": "bad json"}')
        whole, pieces = parts(n, model, _prompt_tokens(request.get("messages")) if usage else None)
        latency = _Stats.latency
        if not latency.active or n < 1:
            return whole
        arrived = self.arrived
        return pieces, [arrived + t for t in latency.schedule(n, _Stats.rng)]


async def serve(port: int) -> None:
    """Listen on 127.0.0.1:``port`` until cancelled; print ``PORT <n>`` when ready."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Protocol, "127.0.0.1", port, backlog=1024)
    sockets = server.sockets
    print(f"PORT {sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def spawn(flags: Sequence[str], *, pin: bool) -> tuple[subprocess.Popen[str], int]:
    """This server in a process of its own (on core 1 when ``pin``), and its port."""
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "benchmarks.server", *flags]
    if pin:
        cmd = ["taskset", "-c", "1", *cmd]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=root, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise SystemExit(f"the benchmark server did not start: {line!r}")
    return proc, int(line.split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=16, help="chunks without max_tokens")
    parser.add_argument("--ttft", type=float, default=0.0, help="seconds to the first chunk")
    parser.add_argument("--itl", type=float, default=0.0, help="seconds between chunks")
    parser.add_argument("--jitter", type=float, default=0.0, help="vary each by this fraction")
    args = parser.parse_args()
    _Stats.default_tokens = args.tokens
    _Stats.latency = Latency(args.ttft, args.itl, args.jitter)
    try:
        if _Stats.latency.active:
            _keep_time()
            loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
            try:
                loop.run_until_complete(serve(args.port))
            finally:
                loop.close()
        else:
            asyncio.run(serve(args.port))
    except KeyboardInterrupt:
        sys.exit(0)


def _keep_time() -> None:
    """For known latencies, wake as close to each deadline as the machine lets: epoll
    waits whole milliseconds (rounded up, so a timer is 0-1 ms late, 0.5 on average, and
    gaps between chunks spread by +-1 ms), ``select`` waits microseconds; and a higher
    scheduling priority where allowed, so a busy core delays the truth less (the server
    needs little CPU; without the permission it runs as it is)."""
    with contextlib.suppress(OSError):
        os.nice(-10)


if __name__ == "__main__":
    main()
