"""The asyncio face: :class:`AsyncClient` and its :class:`AsyncStream`, on ``aiohttp``.

The twin of ``_sync``, by hand: the same attempt (send, head to the parser, first
bytes), the same read loop (``readany``: each delta as soon as its bytes arrive), the
same policy. This module is imported only when an async API is first used.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp

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
from ._retry import areplay, async_retrying, is_retryable
from ._stats import Stats

_Opened = tuple[aiohttp.ClientResponse, ResponseParser, list[str], bool]


class AsyncClient(BaseClient):
    """An asyncio client that pools connections (one ``aiohttp.ClientSession``, made
    lazily inside the running event loop).

        async with ylokh.AsyncClient(base_url="http://127.0.0.1:8080/v1") as client:
            async for text in client.stream("Hello"):
                print(text, end="", flush=True)

    Takes the same arguments as :class:`ylokh.Client`.

    Raises:
        InvalidRequestError: a setting is invalid.
    """

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self._session: aiohttp.ClientSession | None = None
        self._ssl: dict[object, ssl.SSLContext | bool] = {}
        self._sleep: Callable[[float], Awaitable[None]] | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The ``aiohttp.ClientSession`` behind this client, made on first use."""
        if self._session is None or self._session.closed:
            connector = _connector(self.settings)
            self._session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,  # proxies were resolved once, with the settings
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def aclose(self) -> None:
        """Close the pooled connections. The client can still be used afterwards."""
        if self._session is not None:
            await self._session.close()
            self._session = None

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
        settings, request = self._prepare(prompt_or_messages, model, True, options)
        return AsyncStream(self, settings, request)

    async def complete(
        self, prompt_or_messages: object, *, model: str | None = None, **options: Any
    ) -> Completion:
        """The whole answer as one :class:`Completion` (a ``str``), sent with ``stream: false``.

        Raises:
            InvalidRequestError: bad input, before any network traffic.
            APIError: as :meth:`stream`; the whole call is retried when that is safe.
        """
        settings, request = self._prepare(prompt_or_messages, model, False, options)
        exchange = Exchange(settings, request)
        async for _ in _run(self, exchange):
            pass
        return Completion.of(exchange)

    # -- the I/O path ----------------------------------------------------------------------
    def _ssl_for(self, settings: Settings) -> ssl.SSLContext | bool:
        verify = settings.verify
        if verify is True:
            return True
        if verify is False:
            return False
        context = self._ssl.get(verify)
        if context is None:
            try:
                context = self._ssl[verify] = ssl.create_default_context(cafile=verify)
            except (OSError, ssl.SSLError) as exc:
                raise InvalidRequestError(f"cannot load the CA bundle {verify!r}: {exc}") from None
        return context

    async def _attempt(
        self, request: Request, settings: Settings, deadline: float | None, stats: Stats
    ) -> _Opened:
        stats.attempts += 1
        timeout = settings.timeout
        total = None if deadline is None else max(deadline - time.monotonic(), 0.001)
        proxy, proxy_headers = _split_proxy(settings.proxy)
        headers = request.headers
        if proxy_headers and not request.url.startswith("https:"):
            headers = {**headers, **proxy_headers}  # plain HTTP: the proxy reads the request
        try:
            response = await self.session.post(
                request.url,
                data=request.body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(
                    total=total, sock_connect=timeout.connect, sock_read=timeout.read
                ),
                proxy=proxy,
                proxy_headers=proxy_headers,
                ssl=self._ssl_for(settings),
            )
        except Exception as exc:
            raise _map_error(exc, request, settings) from exc
        stats.headers(time.monotonic())
        parser = ResponseParser(request.secrets)
        try:
            parser.start(response.status, response.headers)
            content = response.content
            if parser.buffered:
                limit = parser.body_limit + 1
                body = bytearray()
                while len(body) < limit:
                    data = await content.readany()
                    if not data:
                        break
                    body += data
                parser.feed(bytes(body))
                deltas = parser.close()
                response.release()
                return response, parser, deltas, True
            first = await content.read(FIRST_READ_SIZE)  # waits for some, not for all
            if not first:
                deltas = parser.close()
                response.release()
                return response, parser, deltas, True
            return response, parser, parser.feed(first), False
        except YlokhError:
            response.close()
            raise
        except BaseException as exc:
            response.close()
            if isinstance(exc, Exception):
                raise _map_error(exc, request, settings) from exc
            raise

    async def _open(self, exchange: Exchange) -> _Opened:
        settings = exchange.settings
        deadline = deadline_of(settings)
        exchange.started = time.monotonic()
        stats = exchange.stats
        stats.started(exchange.started)
        try:
            opened = await self._attempt(exchange.request, settings, deadline, stats)
        except YlokhError as exc:
            if not settings.max_retries or not is_retryable(exc):
                raise
            policy = async_retrying(
                exchange.request.url, settings.max_retries, deadline, sleep=self._sleep
            )
            attempt = areplay(exc, self._attempt)
            opened = await policy(attempt, exchange.request, settings, deadline, stats)
        exchange.parser = opened[1]
        exchange.first_byte = time.monotonic()
        stats.reads.append((exchange.first_byte, len(opened[2])))
        return opened


class AsyncStream(BaseStream):
    """A streamed answer: ``async for`` it for text deltas (``str``).

    Nothing is sent until the first iteration. Also an async context manager; leaving
    the ``async with`` block, ``aclose()`` or an exception closes the HTTP response at
    once. After the end, ``text``, ``finish_reason``, ``usage``, ``tool_calls`` and
    ``reasoning`` hold the results.
    """

    def __init__(self, client: AsyncClient, settings: Settings, request: Request) -> None:
        super().__init__(settings, request)
        self._iterator = _run(client, self._exchange)

    def __aiter__(self) -> AsyncIterator[str]:
        return _Loop(self._iterator, self._exchange)

    def __anext__(self) -> Awaitable[str]:
        return self._iterator.__anext__()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop reading and close the HTTP response (idempotent)."""
        await self._iterator.aclose()


class _Loop:
    """One ``async for`` loop over a stream. An async generator cannot be closed
    synchronously, so when a loop left early (``break``, an exception) drops this object,
    it closes the HTTP response itself (aiohttp's ``close`` is synchronous): at once, even
    while the caller still holds the stream."""

    __slots__ = ("_exchange", "_next")

    def __init__(self, iterator: AsyncGenerator[str, None], exchange: Exchange) -> None:
        self._next = iterator.__anext__
        self._exchange = exchange

    def __aiter__(self) -> _Loop:
        return self

    def __anext__(self) -> Awaitable[str]:
        return self._next()

    def __del__(self) -> None:
        close = self._exchange.close
        if close is not None:
            close()


async def _run(client: AsyncClient, exchange: Exchange) -> AsyncGenerator[str, None]:
    """Read one answer: open it (retried), then hand out deltas as bytes arrive."""
    stats = exchange.stats
    try:
        response, parser, deltas, ended = await client._open(exchange)
    except BaseException:
        stats.ended(time.monotonic())
        raise
    exchange.close = response.close
    settings = exchange.settings
    try:
        for text in deltas:
            yield text
        if not ended:
            readany = response.content.readany
            mark = stats.reads.append  # one C call per socket read: no Python call per chunk
            now = time.monotonic
            while parser.pending is None:
                try:
                    data = await readany()
                except (OSError, aiohttp.ClientError, asyncio.TimeoutError):
                    if not parser.whole:
                        raise
                    response.close()
                    data = b""
                if not data:
                    break
                deltas = parser.feed(data)
                mark((now(), len(deltas)))
                for text in deltas:
                    yield text
            else:  # an error came with deltas: they went out first, now the error
                raise parser.pending
            last = parser.close()
            response.release()
            if last:
                mark((now(), len(last)))
            for text in last:
                yield text
        if parser.pending is not None:
            raise parser.pending
        exchange.complete()
    except YlokhError as exc:
        error = parser.fail(exc)
        if error is exc:
            raise
        raise error from exc
    except (OSError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
        error = _map_error(exc, exchange.request, settings)
        if parser.yielded:  # the cause of the IncompleteStreamError is the ylokh error
            error.__cause__ = exc
            raise parser.fail(error) from error
        raise error from exc
    finally:
        response.close()
        stats.ended(time.monotonic(), parser.usage, parser.timings)
        exchange.log_end()


def _connector(settings: Settings) -> aiohttp.BaseConnector:
    proxy = settings.proxy or ""
    if proxy.startswith("socks"):
        try:
            from aiohttp_socks import ProxyConnector
        except ImportError:
            raise InvalidRequestError(
                "SOCKS proxies need the 'socks' extra: pip install 'ylokh[socks]'"
            ) from None
        connector: aiohttp.BaseConnector = ProxyConnector.from_url(proxy, limit=0)
        return connector
    return aiohttp.TCPConnector(limit=0)


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


def _map_error(exc: BaseException, request: Request, settings: Settings) -> YlokhError:
    """The ylokh error for an ``aiohttp``/asyncio/socket exception (secrets removed)."""
    if isinstance(exc, YlokhError):
        return exc
    url = request.url
    detail = redact(str(exc) or type(exc).__name__, request.secrets)
    timeout = settings.timeout
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return APITimeoutError(
            f"timed out connecting to {url} (connect timeout {timeout.connect} s)"
        )
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return APITimeoutError(
            f"the server at {url} sent nothing for {timeout.read} s (read timeout)"
        )
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return APITimeoutError(f"the call to {url} ran past its total timeout ({timeout.total} s)")
    if isinstance(exc, (aiohttp.ClientSSLError, ssl.SSLError)):
        return APIConnectionError(f"TLS verification or handshake with {url} failed: {detail}")
    if isinstance(exc, (aiohttp.ClientProxyConnectionError, aiohttp.ClientHttpProxyError)):
        proxy = redact_url(settings.proxy or "")
        return APIConnectionError(f"the proxy {proxy} failed for {url}: {detail}")
    if isinstance(exc, aiohttp.InvalidURL):
        return InvalidRequestError(f"invalid URL or proxy: {detail}")
    if isinstance(exc, aiohttp.TooManyRedirects):
        return ProtocolError(f"too many redirects from {url}")
    if isinstance(exc, aiohttp.ClientResponseError) and not isinstance(
        exc, aiohttp.ClientConnectionError
    ):
        return ProtocolError(f"the server at {url} sent an invalid response: {detail}")
    return APIConnectionError(f"connection to {url} failed: {detail}")
