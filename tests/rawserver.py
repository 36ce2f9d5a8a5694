"""Test helpers on real loopback sockets: a raw HTTP server that writes exact bytes, a
``pproxy`` process, and small byte builders.

:class:`RawServer` is a thread with a listening socket. For every request it receives
(several per connection when the answer leaves the connection open), it records the
request and plays the next *script*: a list of steps, each ``bytes`` (sent as is), a
number (seconds to sleep), :data:`HOLD` (keep the connection open, sending nothing,
until the client closes it or the server stops) or :data:`CLOSE`. After the last step
the connection is closed when the answer said ``Connection: close`` or had no framing,
else the next request is read from it. The last script repeats.

Nothing here knows ylokh: the tests assert on what the client did (requests,
connections, when it closed them), not on how.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOLD = object()
CLOSE = object()

Step = Any  # bytes | float | HOLD | CLOSE


@dataclass
class RawRequest:
    method: str
    target: str
    headers: dict[str, str]  # names lower-cased; a repeated name keeps the last value
    body: bytes
    connection: int  # which connection (0, 1, ...) carried it


@dataclass
class Connection:
    number: int
    opened: float
    closed_by_client: float | None = None  # when the client closed it (EOF seen)
    send_failed: bool = False  # the client closed it while the server was still sending
    sent: int = 0  # body and head bytes written


@dataclass
class RawServer:
    scripts: Sequence[Sequence[Step]]
    requests: list[RawRequest] = field(default_factory=list)
    connections: list[Connection] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.request_seen = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    # -- what a test reads ----------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def wait_closed(self, number: int = 0, within: float = 5.0) -> float | None:
        """When the client closed connection ``number``, waiting up to ``within`` s."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.connections) > number:
                    conn = self.connections[number]
                    if conn.closed_by_client is not None or conn.send_failed:
                        return conn.closed_by_client or time.monotonic()
            time.sleep(0.02)
        return None

    # -- life -----------------------------------------------------------------------------
    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._accepter.join(5)
        for thread in self._threads:
            thread.join(5)
        self.sock.close()

    # -- internals --------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                record = Connection(len(self.connections), time.monotonic())
                self.connections.append(record)
            thread = threading.Thread(target=self._serve, args=(conn, record), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, record: Connection) -> None:
        conn.settimeout(0.2)
        buffer = b""
        try:
            while not self._stop.is_set():
                request, buffer = self._read_request(conn, record, buffer)
                if request is None:
                    return
                with self._lock:
                    number = len(self.requests)
                    self.requests.append(request)
                self.request_seen.set()
                script = self.scripts[min(number, len(self.scripts) - 1)]
                if not self._play(conn, record, script):
                    return
        finally:
            conn.close()

    def _read_request(
        self, conn: socket.socket, record: Connection, buffer: bytes
    ) -> tuple[RawRequest | None, bytes]:
        while b"\r\n\r\n" not in buffer:
            data = self._recv(conn, record)
            if not data:
                return None, b""
            buffer += data
        head, _, rest = buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = [*lines[0].split(" ", 2), "", ""][:3]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        while len(rest) < length:
            data = self._recv(conn, record)
            if not data:
                return None, b""
            rest += data
        body, rest = rest[:length], rest[length:]
        return RawRequest(method, target, headers, body, record.number), rest

    def _recv(self, conn: socket.socket, record: Connection) -> bytes:
        while not self._stop.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            if not data:
                record.closed_by_client = time.monotonic()
            return data
        return b""

    def _play(self, conn: socket.socket, record: Connection, script: Iterable[Step]) -> bool:
        """Play one answer; whether the connection stays open for another request."""
        sent = b""
        for step in script:
            if step is HOLD:
                while self._recv(conn, record):
                    pass  # discard whatever the client sends; wait for its close
                return False
            if step is CLOSE:
                return False
            if isinstance(step, (int, float)):
                if self._stop.wait(step):
                    return False
                continue
            try:
                conn.sendall(step)
            except OSError:
                record.send_failed = True
                record.closed_by_client = record.closed_by_client or time.monotonic()
                return False
            record.sent += len(step)
            sent += step[:4096] if len(sent) < 4096 else b""
        head = sent.split(b"\r\n\r\n", 1)[0].lower()
        framed = b"content-length:" in head or b"transfer-encoding:" in head
        return framed and b"connection: close" not in head


# -- bytes ------------------------------------------------------------------------------------
def chunk_event(text: str | None = None, *, finish: str | None = None, **extra: Any) -> bytes:
    """One SSE event holding a chat.completion.chunk (``text`` as its delta)."""
    delta = {} if text is None else {"content": text}
    obj = {
        "id": "chatcmpl-raw",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def sse_body(*texts: str, done: bool = True) -> bytes:
    """An event stream with one event per text, a final ``stop`` chunk, then ``[DONE]``."""
    body = b"".join(chunk_event(t) for t in texts)
    if done:
        body += chunk_event(finish="stop") + DONE
    return body


def completion_body(text: str) -> bytes:
    obj = {
        "id": "chatcmpl-raw",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
    }
    return json.dumps(obj).encode()


def chunked(*pieces: bytes, end: bool = True) -> bytes:
    """Well-formed chunked framing: one HTTP chunk per piece, then the last chunk."""
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p)
    return out + (b"0\r\n\r\n" if end else b"")


def head(
    status: int = 200,
    *,
    content_type: str | None = "text/event-stream",
    length: int | None = None,
    chunked: bool = False,
    close: bool = False,
    extra: Sequence[tuple[str, str]] = (),
    reason: str | None = None,
) -> bytes:
    """A response head."""
    reasons = {200: "OK", 301: "Moved Permanently", 302: "Found", 303: "See Other"}
    reasons |= {307: "Temporary Redirect", 308: "Permanent Redirect", 401: "Unauthorized"}
    reasons |= {503: "Service Unavailable"}
    lines = [f"HTTP/1.1 {status} {reason or reasons.get(status, 'Whatever')}"]
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    if close:
        lines.append("Connection: close")
    lines += [f"{name}: {value}" for name, value in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def response(
    body: bytes,
    status: int = 200,
    *,
    content_type: str | None = "text/event-stream",
    extra: Sequence[tuple[str, str]] = (),
    close: bool = False,
) -> bytes:
    """A whole response with a Content-Length."""
    return head(status, content_type=content_type, length=len(body), extra=extra, close=close) + (
        body
    )


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data)


# -- a real proxy -----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PROXY_USER, PROXY_PASSWORD = "proxyuser", "proxy-pw-7f3a9c"


class Proxy:
    """A ``pproxy`` process on loopback; ``log`` holds its verbose output, line by line.

    Ready when it accepts a connection (bounded wait); a proxy that does not become ready
    is killed before the error is raised, so no process outlives its test.
    """

    def __init__(self, scheme: str, auth: bool, ready_within: float = 15.0) -> None:
        self.port = free_port()
        self.auth = auth
        creds = f"#{PROXY_USER}:{PROXY_PASSWORD}" if auth else ""
        listen = f"{scheme}://127.0.0.1:{self.port}{creds}"
        pproxy = Path(sys.executable).with_name("pproxy")
        self.log: list[str] = []
        self.process = subprocess.Popen(
            [str(pproxy), "-l", listen, "-v", "--auth", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()
            deadline = time.monotonic() + ready_within
            while True:  # ready when it accepts connections
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                    break
                except OSError:
                    if self.process.poll() is not None:
                        raise RuntimeError(f"pproxy exited: {self.log}") from None
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"pproxy did not start: {self.log}") from None
                    time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line.rstrip())

    def url(self, scheme: str, password: str = PROXY_PASSWORD) -> str:
        creds = f"{PROXY_USER}:{password}@" if self.auth else ""
        return f"{scheme}://{creds}127.0.0.1:{self.port}"

    def forwarded(self, port: int, count: int = 1, within: float = 5.0) -> list[str]:
        """The log lines of connections forwarded to ``127.0.0.1:port``, once there are
        ``count`` of them or ``within`` seconds have passed (``within=0``: now). Give each
        test its own target port, so that no other test's line can count."""
        deadline = time.monotonic() + within
        while True:
            found = [line for line in self.log if line.endswith(f"-> 127.0.0.1:{port}")]
            if len(found) >= count or time.monotonic() >= deadline:
                return found
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the process (terminate, then kill); safe to call twice."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.join(2)
        if self.process.stdout is not None:
            self.process.stdout.close()
