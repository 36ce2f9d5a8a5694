"""The :class:`Server` handle: runs the app in a background thread with its own event loop."""

from __future__ import annotations

import asyncio
import ssl as _ssl
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, final

from aiohttp import web

from ._app import STATE, AppOptions, RecordedRequest, Stamping, make_app
from ._fault import Fault

if TYPE_CHECKING:  # typing.Unpack is 3.11+; annotations are never evaluated at run time
    from typing_extensions import Unpack

__all__ = ["Server", "serve"]

# Handlers end within a poll interval once stopping is set; this only bounds a misbehaving one.
_SHUTDOWN_TIMEOUT = 2.0
_START_TIMEOUT = 10.0


@final
class Server:
    """A real OpenAI-compatible HTTP server for tests, benchmarks and offline demos.

    Use it as a context manager (``with Server() as srv`` or ``async with``); ``srv.base_url``
    is the ``/v1`` URL to point a client at; ``ssl`` serves HTTPS. The other options are
    :func:`make_app`'s (:class:`AppOptions`): ``fault`` is the default fault spec for every
    request (see :class:`Fault`); ``chunks`` fixes the number of content chunks; ``delay`` is
    the pause between chunks; ``api_key`` makes the server demand ``Authorization: Bearer``;
    ``model`` is the name it answers as (``ylokh-echo``); ``ttft``, ``itl`` and ``jitter``
    give streamed answers known latencies.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl: _ssl.SSLContext | None = None,
        **options: Unpack[AppOptions],
    ) -> None:
        self._app = make_app(**options)
        self._state = self._app[STATE]
        self._host = host
        self._port = port
        self._ssl = ssl
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # --- addresses -----------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The host the server listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The bound port (the ephemeral one chosen by the OS when ``port=0``)."""
        return self._port

    @property
    def url(self) -> str:
        """The server root, e.g. ``http://127.0.0.1:PORT``."""
        scheme = "https" if self._ssl is not None else "http"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{scheme}://{host}:{self._port}"

    @property
    def base_url(self) -> str:
        """The API base URL to give a client, e.g. ``http://127.0.0.1:PORT/v1``."""
        return self.url + "/v1"

    # --- what happened ---------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the requests received so far, in arrival order."""
        with self._state.lock:
            return list(self._state.requests)

    @property
    def connections(self) -> int:
        """How many TCP connections the server has accepted so far."""
        with self._state.lock:
            return self._state.connections

    def script(self, faults: Iterable[str | Fault | None]) -> None:
        """Make the next requests take these faults in order (``None``: behave), then the default.

        A request whose fault comes from its header or payload does not use up a script item.
        Specs are parsed now, so a typo raises ValueError here.
        """
        parsed = [Fault.parse(f) for f in faults]
        with self._state.lock:
            self._state.script.extend(parsed)

    def reset(self) -> None:
        """Forget recorded requests, the connection count and any remaining script."""
        with self._state.lock:
            self._state.requests.clear()
            self._state.script.clear()
            self._state.connections = 0

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Server:
        """Start serving in a background thread; return once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("this Server is already started")
        self._thread = threading.Thread(target=self._run, name="ylokh-test-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT):
            raise RuntimeError("the ylokh test server did not start in time")
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def stop(self) -> None:
        """Stop serving, close every connection and join the thread (idempotent)."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop_event is not None and thread.is_alive():
            self._state.stopping = True
            loop.call_soon_threadsafe(stop_event.set)
        thread.join()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Server:
        # Starting and stopping block briefly; keep the caller's event loop free meanwhile.
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    def __repr__(self) -> str:
        state = "running" if self._ready.is_set() and self._error is None else "stopped"
        return f"<ylokh.testing.Server {self.base_url} {state}>"

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        # Reported to start() (or lost after stop); the thread must not die silently.
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        handler_factory = runner.server
        assert handler_factory is not None
        state = self._state

        def accept() -> Stamping:
            # The loop calls the protocol factory once per accepted TCP connection.
            with state.lock:
                state.connections += 1
            return Stamping(handler_factory())

        try:
            server = await loop.create_server(accept, self._host, self._port, ssl=self._ssl)
        except BaseException:
            await runner.cleanup()
            raise
        try:
            self._port = server.sockets[0].getsockname()[1]
            self._loop = loop
            self._ready.set()
            await self._stop_event.wait()
        finally:
            state.stopping = True
            server.close()
            await runner.cleanup()  # closes idle keep-alive connections, waits for handlers
            await server.wait_closed()


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    ssl: _ssl.SSLContext | None = None,
    **options: Unpack[AppOptions],
) -> None:
    """Run a :class:`Server` in the foreground until Ctrl-C (what ``ylokh serve`` calls);
    the options are the server's."""
    server = Server(host=host, port=port, ssl=ssl, **options)
    with server:
        print(
            f"ylokh test server listening on {server.base_url} (Ctrl-C to stop)",
            flush=True,
        )
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
