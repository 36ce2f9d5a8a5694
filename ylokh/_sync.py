"""The blocking face: :class:`Client` and its :class:`Stream`, on ``requests``.

Strategy: this module only moves bytes. An attempt (retried by the shared policy)
sends the request, gives the head to the core's parser and reads the first bytes of the
body; then the stream reads whatever the socket has (``read1``: each delta reaches the
caller as soon as its bytes arrive, whatever the body framing) and feeds it to the
parser. ``requests``/``urllib3`` exceptions become ylokh errors here, once.
"""

from __future__ import annotations

import functools
import http.client
import socket
import time
import weakref
from collections.abc import Callable, Generator, Iterator
from typing import Any

import requests
import urllib3.exceptions

from ._base import BaseClient, BaseStream, Completion, Exchange, deadline_of
from ._config import Settings, redact_url
from ._errors import (
    APIConnectionError,
    APITimeoutError,
    InvalidRequestError,
    ProtocolError,
    YlokhError,
    redact,
)
from ._protocol import FIRST_READ_SIZE, Request, ResponseParser
from ._retry import is_retryable, replay, retrying
from ._stats import Stats

READ_SIZE = 1 << 16
_Opened = tuple[requests.Response, ResponseParser, list[str], bool]


class Client(BaseClient):
    """A blocking client that pools connections (one ``requests.Session``).

        with ylokh.Client(base_url="http://127.0.0.1:8080/v1") as client:
            for text in client.stream("Hello"):
                print(text, end="", flush=True)

    Arguments (each falls back to its ``YLOKH_*`` variable, then to the default):
    ``base_url``, ``api_key``, ``timeout`` (seconds of read timeout or a
    :class:`ylokh.Timeout`), ``max_retries``, ``proxy``, ``headers``, ``verify`` (``False``
    or the path of a CA bundle), ``model``.

    Raises:
        InvalidRequestError: a setting is invalid.
    """

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self._session: requests.Session | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._sleep: Callable[[float], None] = time.sleep

    @property
    def session(self) -> requests.Session:
        """The ``requests.Session`` behind this client, made on first use."""
        if self._session is None:
            session = requests.Session()
            session.trust_env = False  # proxies were resolved once, with the settings
            self._session = session
            self._finalizer = weakref.finalize(self, session.close)
        return self._session

    def close(self) -> None:
        """Close the pooled connections. The client can still be used afterwards."""
        if self._finalizer is not None:
            self._finalizer()
        self._session = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def stream(
        self, prompt_or_messages: object, *, model: str | None = None, **options: Any
    ) -> Stream:
        """Stream an answer: iterate the returned :class:`Stream` for text deltas.

        ``prompt_or_messages`` is a str (one user message) or a list of
        ``{"role", "content"}`` dicts. Setting names (``base_url``, ``timeout``...) apply
        to this call; every other keyword goes into the JSON payload (``None`` is left out).

        Raises:
            InvalidRequestError: bad input, before any network traffic.
        """
        settings, request = self._prepare(prompt_or_messages, model, True, options)
        return Stream(self, settings, request)

    def complete(
        self, prompt_or_messages: object, *, model: str | None = None, **options: Any
    ) -> Completion:
        """The whole answer as one :class:`Completion` (a ``str``), sent with ``stream: false``.

        Raises:
            InvalidRequestError: bad input, before any network traffic.
            APIError: as :meth:`stream`; the whole call is retried when that is safe.
        """
        settings, request = self._prepare(prompt_or_messages, model, False, options)
        exchange = Exchange(settings, request)
        for _ in _run(self, exchange):
            pass
        return Completion.of(exchange)

    # -- the I/O path ----------------------------------------------------------------------
    def _attempt(
        self, request: Request, settings: Settings, deadline: float | None, stats: Stats
    ) -> _Opened:
        stats.attempts += 1
        timeout = settings.timeout
        read = _remaining(timeout.read, deadline)
        proxy = settings.proxy
        if settings.verify is False:
            # the caller turned verification off on purpose: urllib3 need not warn per request
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        try:
            response = self.session.post(
                request.url,
                data=request.body,
                headers=request.headers,
                stream=True,
                timeout=(_remaining(timeout.connect, deadline), read),
                proxies={"http": proxy, "https": proxy} if proxy else None,
                verify=settings.verify,
            )
        except Exception as exc:
            raise _map_error(exc, request, settings, deadline) from exc
        stats.headers(time.monotonic())
        parser = ResponseParser(request.secrets)
        try:
            parser.start(response.status_code, response.headers)
            raw = response.raw
            if parser.buffered:
                parser.feed(_read_body(raw, parser.body_limit + 1, deadline, timeout.read))
                deltas = parser.close()
                _release(response)
                return response, parser, deltas, True
            first = raw.read1(FIRST_READ_SIZE, decode_content=True)
            if not first:
                deltas = parser.close()
                _release(response)
                return response, parser, deltas, True
            return response, parser, parser.feed(first), False
        except YlokhError:
            response.close()
            raise
        except Exception as exc:
            response.close()
            raise _map_error(exc, request, settings, deadline) from exc

    def _open(self, exchange: Exchange) -> _Opened:
        settings = exchange.settings
        deadline = deadline_of(settings)
        exchange.started = time.monotonic()
        stats = exchange.stats
        stats.started(exchange.started)
        try:
            opened = self._attempt(exchange.request, settings, deadline, stats)
        except YlokhError as exc:
            if not settings.max_retries or not is_retryable(exc):
                raise
            policy = retrying(
                exchange.request.url, settings.max_retries, deadline, sleep=self._sleep
            )
            opened = policy(replay(exc, self._attempt), exchange.request, settings, deadline, stats)
        exchange.parser = opened[1]
        exchange.first_byte = time.monotonic()
        stats.reads.append((exchange.first_byte, len(opened[2])))
        return opened


class Stream(BaseStream):
    """A streamed answer: iterate it for text deltas (``str``).

    Nothing is sent until the first iteration. Also a context manager; leaving the loop
    early, ``close()`` or an exception closes the HTTP response at once. After the end,
    ``text``, ``finish_reason``, ``usage``, ``tool_calls`` and ``reasoning`` hold the results.
    """

    def __init__(self, client: Client, settings: Settings, request: Request) -> None:
        super().__init__(settings, request)
        self._iterator = _run(client, self._exchange)

    def __iter__(self) -> Iterator[str]:
        return _loop(self._iterator)

    def __next__(self) -> str:
        return next(self._iterator)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading and close the HTTP response (idempotent)."""
        self._iterator.close()


def _loop(iterator: Generator[str, None, None]) -> Generator[str, None, None]:
    """One ``for`` loop over a stream. A loop left early (``break``, an exception) drops
    this generator, and ``yield from`` then closes the stream's own generator, which
    closes the response at once, even while the caller still holds the stream."""
    yield from iterator


def _run(client: Client, exchange: Exchange) -> Generator[str, None, None]:
    """Read one answer: open it (retried), then hand out deltas as bytes arrive."""
    stats = exchange.stats
    try:
        response, parser, deltas, ended = client._open(exchange)
    except BaseException:
        stats.ended(time.monotonic())
        raise
    settings = exchange.settings
    try:
        yield from deltas
        if not ended:
            raw = response.raw
            read = _reader(raw)
            mark = stats.reads.append  # one C call per socket read: no Python call per chunk
            now = time.monotonic
            total = settings.timeout.total
            deadline = None if total is None else exchange.started + total
            while parser.pending is None:
                if deadline is not None:
                    _bound_read(raw, deadline, settings.timeout.read)
                try:
                    data = read()
                except (OSError, urllib3.exceptions.HTTPError, requests.RequestException):
                    if not parser.whole:
                        raise
                    response.close()
                    data = b""
                if not data:
                    break
                deltas = parser.feed(data)
                mark((now(), len(deltas)))
                yield from deltas
            else:  # an error came with deltas: they went out first, now the error
                raise parser.pending
            last = parser.close()
            _release(response)
            if last:
                mark((now(), len(last)))
            yield from last
        if parser.pending is not None:
            raise parser.pending
        exchange.complete()
    except YlokhError as exc:
        error = parser.fail(exc)
        if error is exc:
            raise
        raise error from exc
    except (OSError, urllib3.exceptions.HTTPError, requests.RequestException) as exc:
        total = settings.timeout.total
        deadline = None if total is None else exchange.started + total
        error = _map_error(exc, exchange.request, settings, deadline)
        if parser.yielded:  # the cause of the IncompleteStreamError is the ylokh error
            error.__cause__ = exc
            raise parser.fail(error) from error
        raise error from exc
    finally:
        response.close()
        stats.ended(time.monotonic(), parser.usage, parser.timings)
        exchange.log_end()


def _reader(raw: urllib3.BaseHTTPResponse) -> Callable[[], bytes]:
    """The read function of the stream loop: whatever the socket has, as soon as it has it.

    A chunked body that needs no decoding (the usual event stream) is read by a
    :class:`_Dechunker`, many HTTP chunks per read; urllib3's ``read1`` hands over one HTTP
    chunk (one event, for most servers) per call, at some thirty Python calls each.
    """
    fp = getattr(raw, "_fp", None)
    if (
        isinstance(fp, http.client.HTTPResponse)
        and fp.chunked
        and fp.fp is not None
        and getattr(raw, "_decoder", True) is None
        and not len(getattr(raw, "_decoded_buffer", b"?"))
        and not raw.headers.get("content-encoding")
    ):
        return _Dechunker(raw, fp).read
    return functools.partial(raw.read1, READ_SIZE, decode_content=True)


class _Dechunker:
    """Reads a chunked body from the socket's buffered file and removes the framing in
    bulk: one ``read1`` of up to :data:`READ_SIZE` bytes gives back the data of every HTTP
    chunk in it. It takes over wherever ``http.client`` left off (mid-chunk included) and
    runs under urllib3's own error catcher, so failures, timeouts and the release of the
    connection at the end are exactly urllib3's.
    """

    __slots__ = ("_done", "_file", "_left", "_raw", "_response", "_rest", "_trailer")

    def __init__(self, raw: urllib3.BaseHTTPResponse, response: http.client.HTTPResponse):
        self._raw = raw
        self._response = response
        self._file = response.fp
        left = response.chunk_left
        self._left = 0 if left is None else left + 2  # data still due, and its CRLF
        self._rest = b""  # an unfinished chunk-size or trailer line
        self._trailer = False
        self._done = False

    def read(self) -> bytes:
        """The body bytes that arrived (waiting for some); ``b""`` at the end."""
        if self._done:
            return b""
        with self._raw._error_catcher():  # type: ignore[attr-defined]
            while True:
                data = self._file.read1(READ_SIZE)
                if not data:
                    if not self._trailer:
                        raise http.client.IncompleteRead(b"")
                    self._finish()  # as http.client, an end inside the trailer is an end
                    return b""
                out = self._decode(data)
                if out or self._done:
                    return out

    def _decode(self, data: bytes) -> bytes:
        if self._rest:
            data = self._rest + data
            self._rest = b""
        out: list[bytes] = []
        pos = 0
        end = len(data)
        left = self._left
        while pos < end:
            if left:  # inside a chunk: its data, then its CRLF
                take = min(left, end - pos)
                if left > 2:
                    out.append(data[pos : pos + min(take, left - 2)])
                left -= take
                pos += take
                continue
            newline = data.find(b"\n", pos)
            if newline < 0:
                self._rest = data[pos:]
                if len(self._rest) > 65536:
                    raise http.client.LineTooLong("chunk size")
                break
            line = data[pos : newline + 1]
            pos = newline + 1
            if self._trailer:
                if line in (b"\r\n", b"\n"):
                    self._finish()
                    break
                continue
            try:
                size = int(line.split(b";", 1)[0], 16)
            except ValueError:
                raise http.client.IncompleteRead(b"") from None
            if size < 0:
                raise http.client.IncompleteRead(b"")
            if size == 0:
                self._trailer = True
            else:
                left = size + 2
        self._left = left
        return out[0] if len(out) == 1 else b"".join(out)

    def _finish(self) -> None:
        self._done = True
        self._response._close_conn()  # type: ignore[attr-defined]  # as http.client does


def _remaining(limit: float | None, deadline: float | None) -> float | None:
    if deadline is None:
        return limit
    left = max(deadline - time.monotonic(), 0.001)
    return left if limit is None else min(limit, left)


def _read_body(
    raw: urllib3.BaseHTTPResponse, limit: int, deadline: float | None, read: float | None
) -> bytes:
    """A whole (bounded) body, each read within the total deadline."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        if deadline is not None:
            _bound_read(raw, deadline, read)
        data = raw.read1(min(READ_SIZE, limit - size), decode_content=True)
        if not data:
            break
        parts.append(data)
        size += len(data)
    return b"".join(parts)


def _bound_read(raw: urllib3.BaseHTTPResponse, deadline: float, read: float | None) -> None:
    """Shorten the socket timeout so the next read cannot run past the total deadline."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise APITimeoutError("the call ran past its total timeout while reading the stream")
    if read is None or left < read:
        sock = getattr(raw.connection, "sock", None)
        if isinstance(sock, socket.socket):
            sock.settimeout(left)


def _release(response: requests.Response) -> None:
    """Give a fully read connection back to the pool."""
    response.raw.release_conn()


def _map_error(
    exc: BaseException, request: Request, settings: Settings, deadline: float | None = None
) -> YlokhError:
    """The ylokh error for a ``requests``/``urllib3``/socket exception (secrets removed).
    ``deadline`` tells a socket timeout shortened to meet ``Timeout.total`` from its own."""
    if isinstance(exc, YlokhError):
        return exc
    url = request.url
    detail = redact(_describe(exc), request.secrets)
    timeout = settings.timeout
    timed_out = _is_read_timeout(exc) or isinstance(
        exc, (requests.Timeout, urllib3.exceptions.TimeoutError, socket.timeout)
    )
    if timed_out and deadline is not None and time.monotonic() >= deadline - 0.01:
        return APITimeoutError(f"the call to {url} ran past its total timeout ({timeout.total} s)")
    if isinstance(exc, requests.ConnectTimeout):
        return APITimeoutError(
            f"timed out connecting to {url} (connect timeout {timeout.connect} s)"
        )
    if isinstance(
        exc, (requests.ReadTimeout, urllib3.exceptions.ReadTimeoutError, socket.timeout)
    ) or _is_read_timeout(exc):
        return APITimeoutError(
            f"the server at {url} sent nothing for {timeout.read} s (read timeout)"
        )
    if isinstance(exc, (requests.exceptions.SSLError, urllib3.exceptions.SSLError)):
        return APIConnectionError(f"TLS verification or handshake with {url} failed: {detail}")
    if isinstance(exc, requests.exceptions.ProxyError):
        proxy = redact_url(settings.proxy or "")
        return APIConnectionError(f"the proxy {proxy} failed for {url}: {detail}")
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema)):
        return InvalidRequestError(f"invalid URL or proxy: {detail}")
    if isinstance(exc, (urllib3.exceptions.DecodeError, requests.exceptions.ContentDecodingError)):
        return ProtocolError(f"the server at {url} sent a body that cannot be decoded: {detail}")
    if isinstance(exc, requests.TooManyRedirects):
        return ProtocolError(f"too many redirects from {url}")
    return APIConnectionError(f"connection to {url} failed: {detail}")


def _is_read_timeout(exc: BaseException) -> bool:
    inner = exc.args[0] if exc.args else None
    return isinstance(inner, urllib3.exceptions.ReadTimeoutError)


def _describe(exc: BaseException) -> str:
    """The useful part of a requests/urllib3 error, which nests it several wrappers deep
    (``ConnectionError(MaxRetryError(reason=NewConnectionError(...)))``)."""
    inner = exc
    for _ in range(6):
        reason = getattr(inner, "reason", None)
        if not isinstance(reason, BaseException) and inner.args:
            reason = inner.args[0]
        if not isinstance(reason, BaseException):
            break
        inner = reason
    text = str(inner)
    if isinstance(inner, urllib3.exceptions.NewConnectionError):
        text = text.rsplit(": ", 1)[-1]  # drop "<HTTPConnection object at 0x...>: ..."
    return text or type(inner).__name__
