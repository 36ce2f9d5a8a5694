"""The one place that touches a dependency's private attributes, each behind a probe
with a fallback to public API (tests run both sides).

- ``chunked_file``: the ``http.client`` response under a urllib3 response, so the sync
  face can de-chunk a body in bulk; ``None`` sends it to urllib3's public
  ``read1`` (some thirty Python calls per HTTP chunk, but correct).
- ``socket_of``: the socket a urllib3 response reads from, so the sync face can bound
  each read by the call's deadlines; ``None`` leaves urllib3's read timeout alone.
- ``parse_failure``: the error aiohttp's parser hit on a response's connection, which
  it does not pass on to the body (a malformed chunked body would wait for ever);
  without it such a body ends as a broken connection (``APIConnectionError``), not as
  the server's ``ProtocolError``.
- ``close_delimited``: makes an aiohttp ``StreamResponse`` end its body by closing the
  connection (the bundled server's ``framing=close`` fault); without the private flag
  the body stays chunked and the connection still closes after it.
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Callable
from typing import Any

#: Set to False by tests to run the public fallbacks.
ENABLED = True


def chunked_file(raw: Any) -> http.client.HTTPResponse | None:
    """The ``http.client.HTTPResponse`` under urllib3's response ``raw`` when its body is
    chunked and nothing is buffered above it; else ``None``."""
    if not ENABLED:
        return None
    fp = getattr(raw, "_fp", None)
    if (
        isinstance(fp, http.client.HTTPResponse)
        and fp.chunked
        and fp.fp is not None
        and getattr(raw, "_decoder", True) is None
        and not len(getattr(raw, "_decoded_buffer", b"?"))
    ):
        return fp
    return None


def drop_session(session: Any) -> None:
    """Let go of an aiohttp ``ClientSession`` whose event loop is closed: it cannot be
    closed the public way (that needs its loop), and must not warn that it was not."""
    connector = session.connector
    session.detach()  # public: the session counts as closed
    close = getattr(connector, "_close", None) if ENABLED else None
    if close is not None:
        try:
            close()  # closes the transports at once, without the dead loop
        except RuntimeError:  # "Event loop is closed": nothing is left to close
            pass
    elif connector is not None:
        connector._closed = True


def socket_of(raw: Any) -> socket.socket | None:
    """The socket under urllib3's response ``raw``, to bound the next read: the pooled
    connection's, or, once ``http.client`` has let go of it (a close-delimited body), the
    one the response reads from."""
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    if sock is None and ENABLED:
        fp = getattr(getattr(raw, "_fp", None), "fp", None)
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def close_delimited(response: Any) -> bool:
    """Make an aiohttp ``StreamResponse`` (not yet prepared) end its body by closing the
    connection; ``False`` when this aiohttp has no such switch (the body is then chunked,
    and the connection still closes after it)."""
    response.force_close()
    if ENABLED and "_length_check" in dir(type(response)):
        response._length_check = False  # aiohttp would switch to chunked otherwise
        return True
    return False


def parse_failure(response: Any) -> Callable[[], BaseException | None]:
    """A function that says why the body of the aiohttp ``response`` can never end, or
    returns ``None``: the parser's error (an ``HttpProcessingError``, which its protocol
    keeps: ``exception()``, public on its queue but undocumented on the protocol); else,
    the public fallback, a ``ClientPayloadError`` once the connection is gone. Ask it only
    while the body has not ended."""
    from aiohttp import ClientPayloadError
    from aiohttp.http_exceptions import HttpProcessingError

    connection = response.connection
    protocol = getattr(connection, "protocol", None) if ENABLED else None
    exception = getattr(protocol, "exception", None)

    def failure() -> BaseException | None:
        error = exception() if callable(exception) else None
        if isinstance(error, HttpProcessingError):
            return error
        if connection is not None and connection.transport is None:
            return ClientPayloadError("the connection closed before the body ended")
        return None

    return failure
