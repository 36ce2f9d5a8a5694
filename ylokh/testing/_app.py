"""The aiohttp application: OpenAI-compatible endpoints that answer deterministically or misbehave.

Every response is planned as a list of operations (bytes to write, pauses, a reset, a close) and
then played onto the socket by :func:`_play`, so wire-level faults (gzip, framing, truncation,
slow dribbling) are transformations of that list rather than special cases in each endpoint.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
import socket
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypedDict

from aiohttp import HttpVersion11, web

from .._compat import close_delimited
from ._fault import Fault
from ._latency import Latency, Pacer, llama_timings

__all__ = ["FAULT_FIELD", "FAULT_HEADER", "RecordedRequest", "make_app"]

FAULT_HEADER = "X-Ylokh-Fault"
FAULT_FIELD = "ylokh_fault"
DEFAULT_ANSWER = "Hello from ylokh."
THINKING = "Let me think. "
SPLIT_CHAR = " 日本"
TOOL_NAME = "get_weather"
TOOL_ARGUMENT_PIECES = ('{"city"', ': "Par', 'is"}')
MALFORMED_EVENT = '{"choices": [{"delta": {"content": "oops"'
IN_STREAM_ERROR = {
    "error": {
        "message": "injected in-stream error",
        "type": "server_error",
        "code": 500,
    }
}
# Disconnects and server shutdown are noticed by polling this often while waiting.
POLL_SECONDS = 0.02
STOP_POLL_SECONDS = 0.1  # how often a paced answer looks whether the server stops
# Long enough between the two halves of a split write for the client to see two reads.
SPLIT_PAUSE = 0.005
# Before an RST, give the kernel a moment to hand the already-written bytes to the client.
RESET_GRACE = 0.2
SLOW_PIECE = 8
UTF8_BOM = b"\xef\xbb\xbf"

_WORDS = re.compile(r"\S+\s*|\s+")
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def split_words(text: str) -> list[str]:
    """Split text into word chunks that keep trailing whitespace: joined, they give text back."""
    return _WORDS.findall(text)


@dataclass
class RecordedRequest:
    """One request as the server saw it, plus what happened to its response."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    fault: str | None = None
    disconnected: threading.Event = field(default_factory=threading.Event)
    completed: bool = False


@dataclass(frozen=True)
class _Options:
    fault: Fault
    chunks: int | None
    delay: float
    api_key: str | None
    model: str
    latency: Latency = field(default_factory=Latency)


class _State:
    """What one app shares with the thread that owns it: options, records, script, counters."""

    def __init__(self, options: _Options) -> None:
        self.options = options
        self.lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        self.script: deque[Fault] = deque()
        self.connections = 0
        self.stopping = False
        self.ids = itertools.count(1)
        self.rng = random.Random(0)  # latency jitter: varied, but the same run to run

    def record(self, rec: RecordedRequest) -> None:
        with self.lock:
            self.requests.append(rec)

    def next_scripted(self) -> Fault | None:
        with self.lock:
            return self.script.popleft() if self.script else None


STATE = web.AppKey("ylokh_state", _State)


# --- Operations a response is made of ---------------------------------------------------------


@dataclass(frozen=True)
class _Pause:
    seconds: float


@dataclass(frozen=True)
class _At:
    """Wait until this many seconds after the request arrived (known latencies)."""

    seconds: float


class _Reset:
    """Abort the connection with an RST."""


class _Close:
    """Close the connection (FIN) without finishing the response."""


RESET = _Reset()
CLOSE = _Close()
_Op = bytes | _Pause | _At | _Reset | _Close


def _split_utf8(data: bytes) -> list[_Op]:
    """Cut data inside its first multi-byte character so it arrives in two reads."""
    for i, byte in enumerate(data):
        if byte >= 0xC0:
            return [data[: i + 1], _Pause(SPLIT_PAUSE), data[i + 1 :]]
    return [data]


def _with_bom(ops: list[_Op]) -> list[_Op]:
    for i, op in enumerate(ops):
        if isinstance(op, bytes):
            return [*ops[:i], UTF8_BOM + op, *ops[i + 1 :]]
    return [UTF8_BOM, *ops]


def _dribble(ops: list[_Op], seconds: float) -> list[_Op]:
    out: list[_Op] = []
    for op in ops:
        if not isinstance(op, bytes):
            out.append(op)
            continue
        for start in range(0, len(op), SLOW_PIECE):
            if out:
                out.append(_Pause(seconds))
            out.append(op[start : start + SLOW_PIECE])
    return out


def _gzip(ops: list[_Op]) -> list[_Op]:
    # A sync flush after every write keeps the compressed stream streaming.
    compressor = zlib.compressobj(wbits=31)
    out: list[_Op] = []
    for op in ops:
        if isinstance(op, bytes):
            out.append(compressor.compress(op) + compressor.flush(zlib.Z_SYNC_FLUSH))
        else:
            out.append(op)
    out.append(compressor.flush(zlib.Z_FINISH))
    return out


def _cut_in_half(ops: list[_Op]) -> tuple[list[_Op], int]:
    """Keep the first half of the bytes and then close; return the ops and the full length."""
    total = sum(len(op) for op in ops if isinstance(op, bytes))
    budget = total // 2
    out: list[_Op] = []
    for op in ops:
        if isinstance(op, bytes):
            if budget <= 0:
                break
            out.append(op[:budget])
            budget -= len(op)
        elif not isinstance(op, _Reset):
            out.append(op)
    out.append(CLOSE)
    return out, total


# --- Playing a response onto the socket --------------------------------------------------------


@dataclass
class _Exchange:
    """One request being answered: where it came from and which fault applies."""

    request: web.Request
    state: _State
    rec: RecordedRequest
    fault: Fault
    arrived: float = 0.0  # the loop time the request arrived (0: unknown)

    def client_gone(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()

    async def wait(self, seconds: float) -> bool:
        """Sleep, but return False early if the client goes away or the server stops."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            if self.client_gone():
                self.rec.disconnected.set()
                return False
            if self.state.stopping:
                return False
            remaining = deadline - loop.time()
            if remaining <= 0:
                return True
            await asyncio.sleep(min(POLL_SECONDS, remaining))

    def abort(self) -> None:
        """Reset the connection: SO_LINGER 0 makes close() send RST instead of FIN."""
        transport = self.request.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        transport.abort()


async def _play(
    ex: _Exchange,
    status: int,
    content_type: str | None,
    ops: list[_Op],
    framing: str,
    headers: Iterable[tuple[str, str]] = (),
) -> web.StreamResponse:
    """Apply the connection-level faults to ops and write them; return the response to finish."""
    fault = ex.fault
    arrived = ex.arrived or asyncio.get_running_loop().time()
    # Returned when the connection is already gone: aiohttp's own writes then fail quietly.
    dead = web.Response()
    if fault.reset:
        ex.abort()
        return dead
    if fault.stalls_before_headers and not await ex.wait(fault.stall_seconds):
        ex.abort()
        return dead

    if fault.bom:
        ops = _with_bom(ops)
    if fault.slow is not None:
        ops = _dribble(ops, fault.slow)
    if fault.gzip:
        ops = _gzip(ops)
    declared: int | None = None
    framing = fault.framing or framing
    if fault.truncate:
        ops, declared = _cut_in_half(ops)
        framing = "length"
    elif framing == "length":
        declared = sum(len(op) for op in ops if isinstance(op, bytes))
    if framing == "chunked" and ex.request.version < HttpVersion11:
        framing = "close"  # HTTP/1.0 has no chunked encoding

    resp = web.StreamResponse(status=status)
    if framing == "close":
        close_delimited(resp)  # the one private switch, isolated in ylokh._compat
    if content_type is not None:
        resp.headers["Content-Type"] = content_type
    if fault.gzip:
        resp.headers["Content-Encoding"] = "gzip"
    if fault.retry_after is not None:
        resp.headers["Retry-After"] = fault.retry_after
    if fault.retry_after_ms is not None:
        resp.headers["retry-after-ms"] = fault.retry_after_ms
    for name, value in headers:
        resp.headers[name] = value
    replaced: set[str] = set()
    for name, value in fault.headers:
        # The first header=Name:Value replaces a default header; repeats add more lines.
        if name.lower() in replaced:
            resp.headers.add(name, value)
        else:
            resp.headers[name] = value
            replaced.add(name.lower())
    if framing == "chunked":
        resp.enable_chunked_encoding()
    elif framing == "length":
        resp.content_length = declared
    else:
        resp.force_close()

    try:
        writer = await resp.prepare(ex.request)
        assert writer is not None
        paced = _paced(ops) if framing == "chunked" else None
        if paced is not None:
            if not await _pace(ex, resp, arrived, *paced):
                return resp
            ops = []
        for op in ops:
            if isinstance(op, bytes):
                if op:
                    await resp.write(op)
                    await writer.drain()
            elif isinstance(op, _Pause):
                if not await ex.wait(op.seconds):
                    ex.abort()
                    return resp
            elif isinstance(op, _At):
                due = arrived + op.seconds - asyncio.get_running_loop().time()
                if due > 0 and not await ex.wait(due):
                    ex.abort()
                    return resp
            elif isinstance(op, _Reset):
                await writer.drain()
                await asyncio.sleep(RESET_GRACE)
                ex.abort()
                return resp
            else:
                transport = ex.request.transport
                if transport is not None:
                    transport.close()
                return resp
        # Set before the last write so a client that has read everything also sees it set.
        ex.rec.completed = True
        await resp.write_eof()
    except ConnectionError:
        ex.rec.completed = False
        ex.rec.disconnected.set()
    return resp


def _paced(ops: list[_Op]) -> tuple[bytes, list[bytes], list[float]] | None:
    """A streamed answer whose only waits are known latencies, as what :func:`_pace` plays:
    the bytes before the first due time, then each due time's bytes in chunked framing.
    ``None`` for anything else (pauses, resets, closes: played op by op)."""
    first: list[bytes] = []
    pieces: list[bytes] = []
    due: list[float] = []
    for op in ops:
        if isinstance(op, bytes):
            if not due:
                first.append(op)
            elif op:
                pieces[-1] += b"%x\r\n%b\r\n" % (len(op), op)
        elif isinstance(op, _At):
            due.append(op.seconds)
            pieces.append(b"")
        else:
            return None
    head = b"".join(first)
    return (head, pieces, due) if due and head else None


async def _pace(
    ex: _Exchange, resp: web.StreamResponse, arrived: float, head: bytes,
    pieces: list[bytes], due: list[float],
) -> bool:  # fmt: skip
    """Play a timed answer by :class:`Pacer`: each chunk one transport write from a timer
    at its absolute due time, no coroutine between the clock and the socket (a write and a
    drain per chunk would make the 64th of 64 answers due at once a few ms late). The
    head goes through aiohttp, which sends the response head with it. False: the client
    went away."""
    await resp.write(head)
    transport = ex.request.transport
    if transport is None or transport.is_closing():
        ex.rec.disconnected.set()
        return False
    pacer = Pacer(transport, [b"", *pieces], [arrived + t for t in due])
    try:
        while not pacer.finished.done() and not ex.state.stopping:
            await asyncio.wait((pacer.finished,), timeout=STOP_POLL_SECONDS)
    finally:
        pacer.cancel()
    if not pacer.done:
        ex.rec.disconnected.set()
    return pacer.done


# --- Bodies ------------------------------------------------------------------------------------


def _dumps(obj: Any) -> str:
    # Raw UTF-8 (not \u escapes) so multi-byte characters really cross the wire as bytes.
    return json.dumps(obj, ensure_ascii=False)


def _error_json(message: str, type_: str, code: Any) -> bytes:
    return _dumps(
        {"error": {"message": message, "type": type_, "param": None, "code": code}}
    ).encode()


async def _send_error(
    ex: _Exchange, status: int, message: str, type_: str, code: Any
) -> web.StreamResponse:
    return await _play(
        ex, status, "application/json", [_error_json(message, type_, code)], "length"
    )


def _injected_error(fault: Fault, status: int, auth: str | None) -> tuple[str, bytes]:
    message = f"injected error {status}"
    if fault.echo_auth:
        message += f" (Authorization: {auth or '<none>'})"
    shape = fault.error_shape
    if shape == "text":
        return "text/plain; charset=utf-8", message.encode()
    if shape == "html":
        return "text/html; charset=utf-8", _html_page(f"{status} Error", message)
    body: Any
    if shape == "string":
        body = {"error": message}
    elif shape == "message":
        body = {"message": message}
    elif shape == "detail":
        body = {"detail": message}
    else:
        type_ = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "api_error")
        body = {"error": {"message": message, "type": type_, "param": None, "code": status}}
    return "application/json", _dumps(body).encode()


def _html_page(title: str, text: str) -> bytes:
    return (
        f"<!DOCTYPE html>\n<html><head><title>{title}</title></head>\n"
        f"<body><h1>{title}</h1><p>{text}</p></body></html>\n"
    ).encode()


def _text_of(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return "".join(p for p in parts if isinstance(p, str))
    return None


@dataclass
class _Answer:
    """The deterministic answer to one chat request, and everything derived from the payload."""

    model: str
    pieces: list[str]
    finish_reason: str
    prompt_tokens: int
    include_usage: bool
    id: str
    created: int
    timings: dict[str, Any] | None = None

    @classmethod
    def build(cls, payload: dict[str, Any], ex: _Exchange) -> _Answer:
        fault, options = ex.fault, ex.state.options
        messages = payload.get("messages")
        messages = messages if isinstance(messages, list) else []
        user_text: str | None = None
        prompt_tokens = 0
        for message in messages:
            if not isinstance(message, dict):
                continue
            text = _text_of(message.get("content"))
            prompt_tokens += len(split_words(text or ""))
            if message.get("role") == "user":
                user_text = text
        answer = user_text or DEFAULT_ANSWER
        if fault.split_utf8 and answer.isascii():
            answer += SPLIT_CHAR
        pieces = split_words(answer)
        count = fault.chunks if fault.chunks is not None else options.chunks
        if count is not None:
            # Benchmarks want an exact chunk count: cycle the words, keeping them space-separated.
            words = [p if p[-1].isspace() else p + " " for p in pieces]
            pieces = [words[i % len(words)] for i in range(count)]
        finish = "stop"
        max_tokens = payload.get("max_tokens")
        if type(max_tokens) is int and 0 <= max_tokens < len(pieces):
            pieces = pieces[:max_tokens]
            finish = "length"
        if fault.tools:
            finish = "tool_calls"
        stream_options = payload.get("stream_options")
        include_usage = (
            isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        )
        model = payload.get("model")
        return cls(
            model=model if isinstance(model, str) and model else options.model,
            pieces=pieces,
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            include_usage=include_usage,
            id=f"chatcmpl-ylokh{next(ex.state.ids):08d}",
            created=int(time.time()),
        )

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces)

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def _completion_body(answer: _Answer, fault: Fault) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": "".join(answer.pieces)}
    if fault.reasoning:
        message["reasoning_content"] = THINKING
    if fault.tools:
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": "call_ylokh_0",
                "type": "function",
                "function": {
                    "name": TOOL_NAME,
                    "arguments": "".join(TOOL_ARGUMENT_PIECES),
                },
            }
        ]
    choice: dict[str, Any] = {
        "index": 0,
        "message": message,
        "finish_reason": answer.finish_reason,
    }
    body: dict[str, Any] = {
        "id": answer.id,
        "object": "chat.completion",
        "created": answer.created,
        "model": answer.model,
        "choices": [choice],
        "usage": answer.usage(),
    }
    if fault.extra_fields:
        choice["logprobs"] = None
        choice["x_ylokh_choice_extra"] = True
        body["system_fingerprint"] = "fp_ylokh"
        body["x_ylokh_extra"] = {"note": "unknown field"}
    return _dumps(body).encode()


class _StreamPlan:
    """Builds the SSE events of one streamed answer and renders them with the fault's quirks."""

    _DELTA = "\x00delta\x00"

    def __init__(
        self, answer: _Answer, fault: Fault, delay: float, due: list[float] | None = None
    ) -> None:
        self.answer = answer
        self.fault = fault
        self.delay = delay
        self.due = due or []  # known latencies: when each content chunk is due
        self.eol = fault.eol
        self.sep = fault.eol if fault.single_newline else fault.eol * 2
        self.prefix = "data:" if fault.no_space else "data: "
        # Pre-render the chunk around a placeholder delta once; each chunk is then two joins.
        head, _, tail = _dumps(self._chunk(self._DELTA, None)).partition(_dumps(self._DELTA))
        self.head, self.tail = head, tail
        self.ops: list[_Op] = []
        self.sent = 0

    def _chunk(self, delta: Any, finish: str | None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        chunk: dict[str, Any] = {
            "id": self.answer.id,
            "object": "chat.completion.chunk",
            "created": self.answer.created,
            "model": self.answer.model,
            "choices": [choice],
        }
        if self.fault.extra_fields:
            choice["logprobs"] = None
            choice["x_ylokh_choice_extra"] = True
            chunk["system_fingerprint"] = "fp_ylokh"
            chunk["x_ylokh_extra"] = {"note": "unknown field"}
        return chunk

    def delta(self, delta: dict[str, Any]) -> str:
        return self.head + _dumps(delta) + self.tail

    def events(self) -> list[tuple[str, str]]:
        """The events as (kind, data); kind is pre, content, filler or post."""
        fault, answer = self.fault, self.answer
        events: list[tuple[str, str]] = []
        role: dict[str, Any] = {} if fault.no_role else {"role": "assistant"}
        if fault.long_line is not None:
            # Pad the content so that the whole "data: ..." line is exactly long_line bytes.
            short = len((self.prefix + self.delta({**role, "content": ""})).encode())
            events.append(
                (
                    "pre",
                    self.delta({**role, "content": "x" * (fault.long_line - short)}),
                )
            )
        elif role:
            events.append(("pre", self.delta(role)))
        if fault.reasoning:
            events += [("pre", self.delta({"reasoning_content": w})) for w in split_words(THINKING)]
        if fault.tools:
            call = {"index": 0, "id": "call_ylokh_0", "type": "function"}
            first = {**call, "function": {"name": TOOL_NAME, "arguments": ""}}
            events.append(("content", self.delta({"tool_calls": [first]})))
            for piece in TOOL_ARGUMENT_PIECES:
                more = {"index": 0, "function": {"arguments": piece}}
                events.append(("content", self.delta({"tool_calls": [more]})))
        else:
            for piece in answer.pieces:
                events.append(("content", self.delta({"content": piece})))
                if fault.null_content:
                    events.append(("filler", self.delta({"content": None})))
        if not fault.no_finish:
            last = self._chunk({}, answer.finish_reason)
            if answer.timings is not None:
                last["timings"] = answer.timings  # as llama.cpp's server sends them
            events.append(("post", _dumps(last)))
        if answer.include_usage or fault.usage_chunk:
            usage = {**self._chunk({}, None), "choices": [], "usage": answer.usage()}
            events.append(("post", _dumps(usage)))
        if not fault.no_done:
            events.append(("post", "[DONE]"))
        return events

    def triggers(self) -> list[tuple[int, str]]:
        """The after-k faults, earliest first (same k: table order)."""
        fault = self.fault
        table = (
            ("malformed", 0 if fault.malformed else fault.malformed_after),
            ("stall", fault.stall_after),
            ("error", fault.error_after),
            ("reset", fault.reset_after),
            ("truncate", fault.truncate_after),
        )
        return sorted(((k, name) for name, k in table if k is not None), key=lambda t: t[0])

    def emit(self, data: str, *, raw: bool = False) -> None:
        if self.ops and self.delay > 0:
            self.ops.append(_Pause(self.delay))
        text = ""
        if self.fault.comments and self.ops:
            text += ": ping" + self.sep
        if self.fault.fields and not raw:
            text += f"event: message{self.eol}id: {self.sent}{self.eol}retry: 1000{self.eol}"
        text += self.prefix + data + self.sep
        data_bytes = text.encode()
        self.ops += _split_utf8(data_bytes) if self.fault.split_utf8 else [data_bytes]
        self.sent += 1

    def build(self) -> list[_Op]:
        """Render every event, striking each after-k fault before content chunk k."""
        pending = self.triggers()
        content = 0
        for kind, data in self.events():
            while pending and ((kind == "content" and content >= pending[0][0]) or kind == "post"):
                _, name = pending.pop(0)
                if name == "malformed":
                    self.emit(MALFORMED_EVENT, raw=True)
                elif name == "stall":
                    self.ops.append(_Pause(self.fault.stall_seconds))
                elif name == "reset":
                    # Keep rendering: the rest is never sent, but counts for Content-Length.
                    self.ops.append(RESET)
                elif name == "error":
                    self.emit(_dumps(IN_STREAM_ERROR))
                    self.emit("[DONE]")
                    return self.ops
                else:  # truncate: end the body cleanly right here
                    return self.ops
            if kind == "content" and content < len(self.due):
                self.ops.append(_At(self.due[content]))
            self.emit(data)
            if kind == "content":
                content += 1
        return self.ops


# --- Handlers ----------------------------------------------------------------------------------


def _select_fault(request: web.Request, payload: Any, state: _State) -> Fault:
    """Header, then payload field, then the script, then the server default."""
    header = request.headers.get(FAULT_HEADER)
    if header is not None:
        return Fault.parse(header)
    if isinstance(payload, dict) and isinstance(payload.get(FAULT_FIELD), str):
        return Fault.parse(payload[FAULT_FIELD])
    scripted = state.next_scripted()
    return scripted if scripted is not None else state.options.fault


async def _begin(
    request: web.Request, payload: Any, arrived: float = 0.0
) -> tuple[_Exchange, web.StreamResponse | None]:
    """Record the request, check the API key and pick the fault; maybe answer right away."""
    state = request.app[STATE]
    rec = RecordedRequest(
        method=request.method,
        path=request.path,
        headers={k.lower(): v for k, v in request.headers.items()},
        json=payload,
    )
    state.record(rec)
    ex = _Exchange(request, state, rec, Fault(), arrived)
    api_key = state.options.api_key
    if api_key is not None and request.headers.get("Authorization") != f"Bearer {api_key}":
        message = "Incorrect API key provided."
        return ex, await _send_error(ex, 401, message, "invalid_request_error", "invalid_api_key")
    try:
        ex.fault = _select_fault(request, payload, state)
    except ValueError as exc:
        message = f"invalid ylokh fault spec: {exc}"
        return ex, await _send_error(ex, 400, message, "invalid_request_error", None)
    rec.fault = ex.fault.spec or None
    if ex.fault.status is not None:
        content_type, body = _injected_error(
            ex.fault, ex.fault.status, request.headers.get("Authorization")
        )
        return ex, await _play(ex, ex.fault.status, content_type, [body], "length")
    if ex.fault.html:
        page = _html_page("ylokh", "This is an HTML page, not an API response.")
        return ex, await _play(ex, 200, "text/html; charset=utf-8", [page], "length")
    return ex, None


def _halve(body: bytes) -> bytes:
    return body[: max(1, len(body) // 2)]


class Stamping(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection and notes when data last arrived
    (``arrived``, loop time): a handler that has read its whole request then knows when
    it came, before the queue of other requests' handlers that it waited behind."""

    __slots__ = ("_inner", "arrived")

    def __init__(self, inner: asyncio.Protocol) -> None:
        self._inner = inner
        self.arrived = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.arrived = asyncio.get_running_loop().time()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def _arrived(request: web.Request) -> float:
    """When the last bytes of ``request`` arrived (loop time), else now."""
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    arrived = protocol.arrived if isinstance(protocol, Stamping) else 0.0
    return arrived or asyncio.get_running_loop().time()


async def _chat(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    # Known latencies count from the request's arrival, not from this handler's start:
    # 64 requests arriving at once enter their handlers up to tens of ms apart.
    arrived = _arrived(request)
    payload: Any = None
    bad_json: str | None = None
    if raw:
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            bad_json = f"The request body is not valid JSON: {exc}"
    ex, done = await _begin(request, payload, arrived)
    if done is not None:
        return done
    if bad_json is not None or not isinstance(payload, dict):
        message = bad_json or "The request body must be a JSON object."
        return await _send_error(ex, 400, message, "invalid_request_error", None)
    fault, options = ex.fault, ex.state.options
    streaming = payload.get("stream") is True and not fault.json_stream
    content_type = "text/event-stream" if streaming else "application/json"
    if fault.empty:
        return await _play(ex, 200, content_type, [], "chunked" if streaming else "length")
    answer = _Answer.build(payload, ex)
    if not streaming:
        body = _completion_body(answer, fault)
        if fault.malformed:
            body = _halve(body)
        ops: list[_Op] = _split_utf8(body) if fault.split_utf8 else [body]
        return await _play(ex, 200, content_type, ops, "length")
    delay = fault.delay if fault.delay is not None else options.delay
    latency = _latency(fault, options.latency)
    due = latency.schedule(len(answer.pieces), ex.state.rng) if latency.active else None
    if fault.timings:
        answer.timings = llama_timings(answer.prompt_tokens, len(answer.pieces), latency)
    ops = _StreamPlan(answer, fault, delay, due).build()
    sse_headers = (("Cache-Control", "no-cache"),)
    return await _play(ex, 200, "text/event-stream", ops, "chunked", sse_headers)


def _latency(fault: Fault, default: Latency) -> Latency:
    """The server's latencies with the fault's overrides (``ttft=``, ``itl=``, ``jitter=``)."""
    if fault.ttft is None and fault.itl is None and fault.jitter is None:
        return default
    return Latency(
        default.ttft if fault.ttft is None else fault.ttft,
        default.itl if fault.itl is None else fault.itl,
        default.jitter if fault.jitter is None else fault.jitter,
    )


async def _models(request: web.Request) -> web.StreamResponse:
    ex, done = await _begin(request, None)
    if done is not None:
        return done
    model = {
        "id": ex.state.options.model,
        "object": "model",
        "created": 0,
        "owned_by": "ylokh",
    }
    body = _dumps({"object": "list", "data": [model]}).encode()
    if ex.fault.malformed:
        body = _halve(body)
    return await _play(ex, 200, "application/json", [body], "length")


async def _not_found(request: web.Request) -> web.StreamResponse:
    await request.read()
    ex, done = await _begin(request, None)
    if done is not None:
        return done
    message = f"Unknown request URL: {request.method} {request.path}"
    return await _send_error(ex, 404, message, "invalid_request_error", "unknown_url")


async def _on_shutdown(app: web.Application) -> None:
    app[STATE].stopping = True  # ends stalls and pauses so shutdown is quick


class AppOptions(TypedDict, total=False):
    """The keyword arguments of :func:`make_app`, which :class:`~ylokh.testing.Server` and
    :func:`~ylokh.testing.serve` pass on (the defaults are make_app's)."""

    fault: str | Fault | None
    chunks: int | None
    delay: float
    api_key: str | None
    model: str
    ttft: float
    itl: float
    jitter: float


def make_app(
    *,
    fault: str | Fault | None = None,
    chunks: int | None = None,
    delay: float = 0.0,
    api_key: str | None = None,
    model: str = "ylokh-echo",
    ttft: float = 0.0,
    itl: float = 0.0,
    jitter: float = 0.0,
) -> web.Application:
    """Build the aiohttp application (for ``web.run_app`` or an aiohttp test client).

    ``ttft``, ``itl`` and ``jitter`` give every streamed answer known latencies (see
    :class:`~ylokh.testing.Latency`)."""
    if chunks is not None and chunks < 0:
        raise ValueError(f"chunks must not be negative, got {chunks}")
    if delay < 0:
        raise ValueError(f"delay must not be negative, got {delay}")
    latency = Latency(ttft, itl, jitter)
    options = _Options(Fault.parse(fault), chunks, delay, api_key, model, latency)
    app = web.Application()
    app[STATE] = _State(options)
    # Only under /v1, as real servers: a base URL missing its /v1 must fail here too (404).
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/v1/models", _models)
    app.router.add_route("*", "/{tail:.*}", _not_found)
    app.on_shutdown.append(_on_shutdown)
    return app
