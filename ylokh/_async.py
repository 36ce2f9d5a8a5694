"""The asyncio face: :class:`AsyncClient` and its :class:`AsyncStream`, on ``aiohttp``.

The twin of ``_sync``, by hand where ``await`` or aiohttp's API differs: the same attempt
(send, head to the call, read until the first delta), the same read loop (``readany``:
each delta as soon as its bytes arrive), the same policy. aiohttp and asyncio exceptions
are named once, in :data:`FAILURES`. Imported only when an async API is first used.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import ssl
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp

from . import _compat
from ._base import (
    FIRST_READ_SIZE,
    OS_FAILURES,
    BaseClient,
    BaseStream,
    Call,
    Completion,
    Inside,
    translating,
)
from ._errors import SOCKS_HINT, Failure, InvalidRequestError, YlokhError

#: aiohttp/asyncio/socket exceptions -> what failed (``Inside``: a wrapper, look inside).
FAILURES: dict[type, Failure | Inside] = {
    aiohttp.ConnectionTimeoutError: Failure.CONNECT_TIMEOUT,
    aiohttp.SocketTimeoutError: Failure.READ_TIMEOUT,
    aiohttp.ServerTimeoutError: Failure.READ_TIMEOUT,
    asyncio.TimeoutError: Failure.TOTAL_TIMEOUT,  # the call refines it by its deadlines
    aiohttp.ClientSSLError: Failure.TLS,
    aiohttp.ClientProxyConnectionError: Failure.PROXY,
    aiohttp.ClientHttpProxyError: Failure.PROXY,
    aiohttp.InvalidURL: Failure.INVALID,
    aiohttp.TooManyRedirects: Failure.REDIRECTS,
    aiohttp.ServerDisconnectedError: Failure.RESET,
    aiohttp.ClientPayloadError: Failure.RESET,  # a body cut short
    # raised bare by aiohttp's pure-Python parser, or found by the watchdog (_Watch)
    aiohttp.http_exceptions.HttpProcessingError: Failure.PROTOCOL,
    aiohttp.ClientResponseError: Failure.PROTOCOL,
    aiohttp.ClientConnectorError: Failure.CONNECT,
    aiohttp.ClientOSError: Inside(Failure.CONNECT),  # a reset once connected is inside
    aiohttp.ClientConnectionError: Failure.CONNECT,
    **OS_FAILURES,
}
_Opened = tuple[aiohttp.ClientResponse, list[str]]


class AsyncClient(BaseClient):
    """An asyncio client that pools connections (one ``aiohttp.ClientSession``, made
    lazily inside the running event loop).

        async with ylokh.AsyncClient(base_url="http://127.0.0.1:8080/v1") as client:
            async for text in client.stream("Hello"):
                print(text, end="", flush=True)

    Takes the same arguments as :class:`ylokh.Client`. A client belongs to the event
    loop of its first call; after ``aclose()`` it may be used again, in any loop.

    Raises:
        InvalidRequestError: a setting is invalid.
    """

    def _setup(self) -> None:
        self._sessions: dict[object, aiohttp.ClientSession] = {}
        self._ssl: dict[object, ssl.SSLContext | bool] = {}
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self._loop: asyncio.AbstractEventLoop | None = None
        self._keeper: AsyncGenerator[None, None] | None = None
        self._keeper_loop: asyncio.AbstractEventLoop | None = None

    def session_for(self, proxy: str | None) -> aiohttp.ClientSession:
        """The ``aiohttp.ClientSession`` for calls through ``proxy`` (SOCKS proxies live in
        the connector, so each has its own session), made on first use in this loop.

        Raises:
            YlokhError: the client is used from another event loop than its sessions'.
        """
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None and not self._loop.is_closed() and self._sessions:
                raise YlokhError(
                    "this AsyncClient belongs to another event loop that is still running; "
                    "use one client per loop, or aclose() it first"
                )
            for old in self._sessions.values():  # the old loop is gone: so are they
                _compat.drop_session(old)
            self._sessions.clear()
            self._loop = loop
            _close_with_loop(self)
        key = proxy if proxy and proxy.startswith("socks") else None
        session = self._sessions.get(key)
        if session is None or session.closed:
            session = self._sessions[key] = aiohttp.ClientSession(
                connector=_connector(key),
                trust_env=False,  # proxies were resolved once, with the settings
                auto_decompress=False,  # the core decodes content codings, on both faces
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return session

    @property
    def session(self) -> aiohttp.ClientSession:
        """The ``aiohttp.ClientSession`` behind this client's direct calls."""
        return self.session_for(self.settings.proxy)

    async def aclose(self) -> None:
        """Close the pooled connections. The client can still be used afterwards."""
        sessions = list(self._sessions.values())
        self._sessions.clear()
        self._loop = None
        for session in sessions:
            await session.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def stream(
        self, prompt_or_messages: object, *, model: str | None = None, **options: Any
    ) -> AsyncStream:
        """Stream an answer: ``async for`` over the returned :class:`AsyncStream`.

        Arguments as :meth:`ylokh.Client.stream`.

        Raises:
            InvalidRequestError: bad input, before any network traffic.
        """
        stream = options.pop("stream", True)
        call = self._call(prompt_or_messages, model, stream is not False, options)
        return AsyncStream(self, call)

    async def complete(
        self, prompt_or_messages: object, *, model: str | None = None, **options: Any
    ) -> Completion:
        """The whole answer as one :class:`Completion` (a ``str``), sent with ``stream: false``.

        Raises:
            InvalidRequestError: bad input, before any network traffic.
            APIError: as :meth:`stream`; the whole call is retried when that is safe.
        """
        if options.pop("stream", False) is not False:
            raise InvalidRequestError(
                "complete() always sends stream: false; use stream() to stream"
            )
        call = self._call(prompt_or_messages, model, False, options)
        async for _ in _run(self, call):
            pass
        return Completion.of(call)

    # -- the I/O path: open (retried), then read --------------------------------------------
    def _ssl_for(self, verify: bool | str) -> ssl.SSLContext | bool:
        if isinstance(verify, bool):
            return verify
        context = self._ssl.get(verify)
        if context is None:
            try:
                context = self._ssl[verify] = ssl.create_default_context(cafile=verify)
            except (OSError, ssl.SSLError) as exc:
                raise InvalidRequestError(f"cannot load the CA bundle {verify!r}: {exc}") from None
        return context

    async def _open(self, call: Call) -> _Opened:
        call.begin()
        while True:
            try:
                first = call.settings.timeout.first_token
                if first is None:
                    return await self._attempt(call)
                return await asyncio.wait_for(self._attempt(call), first)
            except YlokhError as exc:
                await self._sleep(call.retry_wait(exc))
            except asyncio.TimeoutError as exc:  # the first-token timeout above
                error = call.error(Failure.FIRST_TOKEN_TIMEOUT, exc)
                await self._sleep(call.retry_wait(error))

    async def _attempt(self, call: Call) -> _Opened:
        call.attempt()
        settings = call.settings
        proxy, proxy_headers = _split_proxy(settings.proxy)
        with translating(call, FAILURES):
            session = self.session_for(settings.proxy)
            ssl_context = self._ssl_for(settings.verify)
            while True:
                headers = call.headers
                if proxy_headers and not call.url.startswith("https:"):
                    headers = {**headers, **proxy_headers}  # plain HTTP: the proxy reads it
                connect, _ = call.timeouts()
                response = await session.post(
                    call.url,
                    data=call.request.body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(
                        total=call.remaining(),
                        sock_connect=connect,
                        sock_read=settings.timeout.read,  # the first token: wait_for in _open
                    ),
                    proxy=proxy,
                    proxy_headers=proxy_headers,
                    ssl=ssl_context,
                    allow_redirects=False,
                )
                if call.accept(response.status, response.headers, response.close):
                    break  # else a redirect: follow it
        call.close = _Watch(call, response).close
        try:
            with translating(call, FAILURES):
                content = response.content
                data = await content.read(FIRST_READ_SIZE)  # waits for some, not for all
                deltas = call.feed(data or _end(call), not data)
                while not deltas and not call.answer.ended:
                    data = await content.readany()
                    deltas = call.feed(data or _end(call), not data)
        except BaseException:
            call.close()  # the watchdog too: a retry must not meet it
            call.close = None
            raise
        call.opened()
        return response, deltas


class AsyncStream(BaseStream):
    """A streamed answer: ``async for`` it for text deltas (``str``).

    Nothing is sent until the first iteration. Also an async context manager; leaving
    the ``async with`` block, ``aclose()`` or an exception closes the HTTP response at
    once. After the end, ``text``, ``finish_reason``, ``usage``, ``tool_calls`` and
    ``reasoning`` hold the results.
    """

    def __init__(self, client: AsyncClient, call: Call) -> None:
        super().__init__(call)
        self._iterator = _run(client, call)

    def __aiter__(self) -> AsyncIterator[str]:
        if self._call.left:  # a loop was left early: the response is closed, as on _sync
            return _Loop(_nothing(), self._call)
        return _Loop(self._iterator, self._call)

    def __anext__(self) -> Awaitable[str]:
        return self._iterator.__anext__()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop reading and close the HTTP response (idempotent)."""
        self._closed = True
        await self._iterator.aclose()


class _Loop:
    """One ``async for`` loop over a stream. An async generator cannot be closed
    synchronously, so when a loop left early (``break``, an exception) drops this object,
    it closes the HTTP response itself (aiohttp's ``close`` is synchronous): at once, even
    while the caller still holds the stream."""

    __slots__ = ("_call", "_next")

    def __init__(self, iterator: AsyncGenerator[str, None], call: Call) -> None:
        self._next = iterator.__anext__
        self._call = call

    def __aiter__(self) -> _Loop:
        return self

    def __anext__(self) -> Awaitable[str]:
        return self._next()

    def __del__(self) -> None:
        close = self._call.close
        if close is not None:
            self._call.left = True
            close()


async def _nothing() -> AsyncGenerator[str, None]:
    return
    yield  # an async generator that ends at once


async def _run(client: AsyncClient, call: Call) -> AsyncGenerator[str, None]:
    """Read one answer: open it (retried), then hand out deltas as bytes arrive."""
    with call.running():
        response, deltas = await client._open(call)
        for text in deltas:
            yield text
        answer = call.answer
        readany = response.content.readany
        with translating(call, FAILURES):
            while not answer.ended:
                data = await readany()
                for text in call.feed(data or _end(call), not data):
                    yield text
        call.finish()
        await _finish(response)


class _Watch:
    """Watch a body for what aiohttp's parser cannot end: on a malformed chunked body the
    parser closes the connection but leaves the body waiting for ever. Every
    :data:`TICK` seconds (no cost per read) this looks for the parser's error and ends
    the body, so the reader meets the error (:func:`_end`) after what had arrived.
    :meth:`close` stops the watch and hangs up the connection; it also lets go of the
    call and the timer, so that a finished call leaves no reference cycle for the
    garbage collector (whose pauses would show in a benchmark's latencies)."""

    __slots__ = ("_call", "_failure", "_handle", "_response")

    def __init__(self, call: Call, response: aiohttp.ClientResponse) -> None:
        self._call: Call | None = call
        self._response = response
        self._failure = _compat.parse_failure(response)
        self._handle: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            TICK, self._check
        )

    def _check(self) -> None:
        content, call = self._response.content, self._call
        self._handle = None
        if content.is_eof() or call is None:
            return
        call.broken = self._failure()
        if call.broken is not None:
            content.feed_eof()  # wakes the reader: it reads what arrived, then the error
        else:
            self._handle = asyncio.get_running_loop().call_later(TICK, self._check)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._call = None
        _hang_up(self._response)


TICK = 0.1


def _end(call: Call) -> bytes:
    """At the end of a body: raise the parser's error if it is why the body ended."""
    if call.broken is not None:
        raise call.broken
    return b""


def _hang_up(response: aiohttp.ClientResponse) -> None:
    """Close the response and its connection now. aiohttp closes the socket on the event
    loop's next turn, which never comes when Ctrl-C stops the loop: so shut it down first
    (a connection given back to the pool is not touched)."""
    connection = response.connection
    transport = connection.transport if connection is not None else None
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    response.close()


async def _finish(response: aiohttp.ClientResponse) -> None:
    """The answer is whole: give the connection back once the body has ended too; a
    server that keeps the body open gets its connection closed instead (as ``_sync``)."""
    content = response.content
    if not content.at_eof():
        with contextlib.suppress(asyncio.TimeoutError, aiohttp.ClientError, OSError):
            await asyncio.wait_for(content.read(1 << 16), DRAIN_SECONDS)
    if content.at_eof():
        response.release()


DRAIN_SECONDS = 0.25


def _close_with_loop(client: AsyncClient) -> None:
    """Close ``client``'s sessions when the running loop shuts down (``asyncio.run``
    closes the async generators still alive; this one closes the sessions), so a client
    used from several ``asyncio.run`` calls never leaves a session open."""
    ref = weakref.ref(client)
    loop = asyncio.get_running_loop()
    if client._keeper_loop is loop:
        return  # this loop closes the client already
    client._keeper_loop = loop

    async def keeper() -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            alive = ref()
            if alive is not None and alive._keeper_loop is loop:
                alive._keeper_loop = None
                if alive._loop is loop:
                    await alive.aclose()

    client._keeper = gen = keeper()  # the loop holds it weakly: the client holds it
    with contextlib.suppress(StopIteration):
        gen.asend(None).send(None)  # to its first yield: now the loop knows it


def _connector(socks: str | None) -> aiohttp.BaseConnector:
    if socks:
        try:
            from aiohttp_socks import ProxyConnector
        except ImportError:
            raise InvalidRequestError(SOCKS_HINT) from None
        _socks_failures()
        connector: aiohttp.BaseConnector = ProxyConnector.from_url(
            socks, limit=0, keepalive_timeout=KEEPALIVE_SECONDS
        )
        return connector
    return aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_SECONDS)


#: How long an idle pooled connection is kept: less than the 5 s after which common
#: servers (uvicorn, so vLLM and llama-cpp-python; Node) close theirs, so a call does not
#: meet a connection the server is closing (aiohttp's 15 s did, under load).
KEEPALIVE_SECONDS = 4.0


def _socks_failures() -> None:
    """python-socks names its failures with its own classes: they are proxy failures."""
    import python_socks

    for name in ("ProxyError", "ProxyConnectionError", "ProxyTimeoutError"):
        cls = getattr(python_socks, name, None)
        if cls is not None:
            FAILURES.setdefault(cls, Failure.PROXY)


def _split_proxy(proxy: str | None) -> tuple[str | None, dict[str, str] | None]:
    """aiohttp wants proxy credentials apart from the URL, as a ``Proxy-Authorization``
    header (``proxy_auth=`` is deprecated); SOCKS goes in the connector."""
    if not proxy or proxy.startswith("socks"):
        return None, None
    from yarl import URL

    url = URL(proxy)
    if url.user is None:
        return proxy, None
    token = base64.b64encode(f"{url.user}:{url.password or ''}".encode()).decode("ascii")
    return str(url.with_user(None)), {"Proxy-Authorization": f"Basic {token}"}
