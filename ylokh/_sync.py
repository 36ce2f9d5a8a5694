"""The blocking face: :class:`Client` and its :class:`Stream`, on ``requests``.

Strategy: this module only moves bytes. An attempt (retried by the shared policy) sends
the request, hands the head to the call and reads until the first text delta; the
stream then reads whatever the socket has and feeds it to the call. ``requests``,
``urllib3`` and socket exceptions are named once, in :data:`FAILURES`.
"""

from __future__ import annotations

import http.client
import time
import weakref
from collections.abc import Callable, Generator, Iterator
from typing import Any

import requests
import urllib3
import urllib3.exceptions as u3

from . import _compat
from ._base import (
    FIRST_READ_SIZE,
    OS_FAILURES,
    READ_SIZE,
    BaseClient,
    BaseStream,
    Call,
    Completion,
    Inside,
    Table,
    translating,
)
from ._chunked import ChunkedDecoder
from ._errors import SOCKS_HINT, Failure, InvalidRequestError, YlokhError

#: requests/urllib3/socket exceptions -> what failed (``Inside``: a wrapper, look inside).
FAILURES: Table = {
    requests.ConnectTimeout: Failure.CONNECT_TIMEOUT,
    u3.ConnectTimeoutError: Failure.CONNECT_TIMEOUT,
    requests.ReadTimeout: Failure.READ_TIMEOUT,
    u3.ReadTimeoutError: Failure.READ_TIMEOUT,
    TimeoutError: Failure.READ_TIMEOUT,
    requests.exceptions.SSLError: Failure.TLS,
    u3.SSLError: Failure.TLS,
    requests.exceptions.ProxyError: Failure.PROXY,
    u3.ProxyError: Failure.PROXY,
    requests.exceptions.InvalidURL: Failure.INVALID,
    requests.exceptions.InvalidSchema: Failure.INVALID,
    requests.exceptions.InvalidHeader: Failure.INVALID,
    u3.LocationParseError: Failure.INVALID,
    http.client.RemoteDisconnected: Failure.RESET,
    http.client.IncompleteRead: Failure.RESET,
    u3.IncompleteRead: Failure.RESET,
    u3.InvalidChunkLength: Failure.PROTOCOL,  # a chunk size that is not hex
    http.client.HTTPException: Failure.PROTOCOL,
    u3.NewConnectionError: Failure.CONNECT,
    requests.ConnectionError: Inside(Failure.CONNECT),
    requests.exceptions.ChunkedEncodingError: Inside(Failure.RESET),
    u3.MaxRetryError: Inside(Failure.CONNECT),
    u3.ProtocolError: Inside(Failure.RESET),
    **OS_FAILURES,
}
_Opened = tuple[requests.Response, Callable[..., bytes], list[str]]


class Client(BaseClient):
    """A blocking client that pools connections (one ``requests.Session``).

        with ylokh.Client(base_url="http://127.0.0.1:8080/v1") as client:
            for text in client.stream("Hello"):
                print(text, end="", flush=True)

    Arguments (each falls back to its ``YLOKH_*`` variable, then to the default):
    ``base_url`` (one URL, or several: a list or a str separated by commas), ``api_key``,
    ``timeout`` (seconds of read timeout or a :class:`ylokh.Timeout`), ``max_retries``,
    ``proxy``, ``headers``, ``verify`` (``False`` or the path of a CA bundle), ``model``.

    Raises:
        InvalidRequestError: a setting is invalid.
    """

    def _setup(self) -> None:
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
        to this call; every other keyword goes into the JSON payload (``None`` is left
        out). ``stream=False`` asks for the whole answer, yielded once.

        Raises:
            InvalidRequestError: bad input, before any network traffic.
        """
        stream = options.pop("stream", True)
        return Stream(self, self._call(prompt_or_messages, model, stream is not False, options))

    def complete(
        self, prompt_or_messages: object, *, model: str | None = None, **options: Any
    ) -> Completion:
        """The whole answer as one :class:`Completion` (a ``str``), sent with ``stream: false``.

        Raises:
            InvalidRequestError: bad input, before any network traffic.
            APIError: as :meth:`stream`; the whole call is retried when that is safe.
        """
        call = self._call(prompt_or_messages, model, False, _no_stream(options))
        for _ in _run(self, call):
            pass
        return Completion.of(call)

    # -- the I/O path: open (retried), then read --------------------------------------------
    def _open(self, call: Call) -> _Opened:
        call.begin()
        while True:
            try:
                return self._attempt(call)
            except YlokhError as exc:
                self._sleep(call.retry_wait(exc))

    def _attempt(self, call: Call) -> _Opened:
        call.attempt()
        settings = call.settings
        proxy = settings.proxy
        if proxy and proxy.startswith("socks"):
            _need_socks()
        if settings.verify is False:
            # the caller turned verification off on purpose: urllib3 need not warn per request
            urllib3.disable_warnings(u3.InsecureRequestWarning)
        with translating(call, FAILURES):
            while True:
                response = self.session.post(
                    call.url,
                    data=call.request.body,
                    headers=call.headers,
                    stream=True,
                    timeout=call.timeouts(),
                    proxies={"http": proxy, "https": proxy} if proxy else None,
                    verify=settings.verify,
                    allow_redirects=False,
                )
                if call.accept(response.status_code, response.headers, response.close):
                    break  # else a redirect: follow it
        try:
            with translating(call, FAILURES):
                raw = response.raw
                _bound(raw, call)
                read = _reader(raw)
                deltas = _feed(call, read(FIRST_READ_SIZE))
                while not deltas and not call.answer.ended:
                    _bound(raw, call)
                    deltas = _feed(call, read())
        except BaseException:
            response.close()
            raise
        call.opened()
        return response, read, deltas


def _need_socks() -> None:
    try:
        import socks  # type: ignore[import-untyped,unused-ignore]  # noqa: F401  (pysocks)
    except ImportError:
        raise InvalidRequestError(SOCKS_HINT) from None


def _no_stream(options: dict[str, Any]) -> dict[str, Any]:
    if options.pop("stream", False) is not False:
        raise InvalidRequestError("complete() always sends stream: false; use stream() to stream")
    return options


def _feed(call: Call, data: bytes) -> list[str]:
    return call.feed(data, not data)


class Stream(BaseStream):
    """A streamed answer: iterate it for text deltas (``str``).

    Nothing is sent until the first iteration. Also a context manager; leaving the loop
    early, ``close()`` or an exception closes the HTTP response at once. After the end,
    ``text``, ``finish_reason``, ``usage``, ``tool_calls`` and ``reasoning`` hold the results.
    """

    def __init__(self, client: Client, call: Call) -> None:
        super().__init__(call)
        self._iterator = _run(client, call)

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
        self._closed = True
        self._iterator.close()


def _loop(iterator: Generator[str, None, None]) -> Generator[str, None, None]:
    """One ``for`` loop over a stream. A loop left early (``break``, an exception) drops
    this generator, and ``yield from`` then closes the stream's own generator, which
    closes the response at once, even while the caller still holds the stream."""
    yield from iterator


def _run(client: Client, call: Call) -> Generator[str, None, None]:
    """Read one answer: open it (retried), then hand out deltas as bytes arrive."""
    with call.running():
        response, read, deltas = client._open(call)
        call.close = response.close
        yield from deltas
        answer = call.answer
        raw = response.raw
        with translating(call, FAILURES):
            while not answer.ended:
                if call.deadline is not None:
                    _bound(raw, call)
                data = read()
                yield from call.feed(data, not data)
        call.finish()
        _finish(response, read)


def _finish(response: requests.Response, read: Callable[..., bytes]) -> None:
    """The answer is whole: give the connection back once the body has ended too (the
    chunked terminator usually comes with ``[DONE]``, else a moment later); a server that
    keeps the body open gets its connection closed instead, and never holds the caller."""
    raw = response.raw
    if not raw.isclosed():
        sock = _compat.socket_of(raw)
        if sock is not None:
            sock.settimeout(DRAIN_SECONDS)
        try:
            for _ in range(4):
                if not read():
                    break
        except (OSError, http.client.HTTPException, u3.HTTPError):
            return  # the body is of no more use; the connection is closed
    if raw.isclosed():
        raw.release_conn()


DRAIN_SECONDS = 0.25


def _reader(raw: Any) -> Callable[..., bytes]:
    """The read function of the stream loop: whatever the socket has, as soon as it has it.

    Raw bytes: the core decodes content codings. A chunked body (the usual event stream)
    is read by a :class:`_Dechunker`, many HTTP chunks per read; urllib3's ``read1`` hands
    over one HTTP chunk (one event, for most servers) per call, at some thirty Python
    calls each.
    """
    fp = _compat.chunked_file(raw)
    if fp is not None:
        return _Dechunker(fp).read

    def read1(size: int = READ_SIZE) -> bytes:
        return raw.read1(size, decode_content=False)  # type: ignore[no-any-return]

    return read1


class _Dechunker:
    """Reads a chunked body from the socket's buffered file, many HTTP chunks per read:
    the core's :class:`~ylokh._chunked.ChunkedDecoder` removes the framing. It takes over
    wherever ``http.client`` left off (mid-chunk included)."""

    __slots__ = ("_decoder", "_file", "_response")

    def __init__(self, response: http.client.HTTPResponse):
        self._response = response
        self._file = response.fp
        self._decoder = ChunkedDecoder(response.chunk_left)

    def read(self, size: int = READ_SIZE) -> bytes:
        """The body bytes that arrived (waiting for some); ``b""`` at the end."""
        decoder = self._decoder
        while not decoder.done:
            data = self._file.read1(size)
            if not data:
                decoder.end()  # raises unless the body was in its trailer
            else:
                out = decoder.feed(data)
                if out:
                    return out
        self._response.close()  # the body is read: http.client lets the connection go
        return b""


def _bound(raw: Any, call: Call) -> None:
    """Set the socket timeout of the next read: ``read`` within the call's deadlines."""
    sock = _compat.socket_of(raw)
    if sock is not None:
        sock.settimeout(call.read_timeout())
