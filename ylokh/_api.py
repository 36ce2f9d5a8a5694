"""Module-level ``stream``/``astream``/``complete``/``acomplete`` on shared default clients.

Strategy: one default :class:`Client` per thread and one default ``AsyncClient`` per
event loop, so repeated calls reuse connections. The environment is read at each call
(a script may set ``YLOKH_BASE_URL`` after importing us), cheaply: settings are cached
per distinct environment. An async default client is closed when its loop shuts down
(``asyncio.run`` closes live async generators, and we keep one that closes the client).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import AsyncGenerator, Mapping
from typing import TYPE_CHECKING, Any

from ._base import Completion

if TYPE_CHECKING:  # the faces are imported on first use: `import ylokh` stays light
    import asyncio

    from ._async import AsyncClient, AsyncStream
    from ._sync import Client, Stream

_ENV_NAMES = (
    "YLOKH_BASE_URL",
    "YLOKH_API_KEY",
    "YLOKH_MODEL",
    "YLOKH_PROXY",
    "YLOKH_TIMEOUT",
    "YLOKH_MAX_RETRIES",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
)
_local = threading.local()
_retiring: set[asyncio.Task[None]] = set()  # keeps retiring tasks alive until done
_EnvKey = tuple[str | None, ...]
_async_clients: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, tuple[_EnvKey, AsyncClient, AsyncGenerator[None, None]]
] = weakref.WeakKeyDictionary()


def _env_key() -> tuple[str | None, ...]:
    get = os.environ.get
    return tuple(get(name) for name in _ENV_NAMES)


def _default_client() -> Client:
    from ._sync import Client

    key = _env_key()
    clients: dict[tuple[str | None, ...], Client] | None = getattr(_local, "clients", None)
    if clients is None:
        clients = _local.clients = {}
    client = clients.get(key)
    if client is None:
        if len(clients) >= 4:  # the environment keeps changing: keep only the newest
            for old in clients.values():
                old.close()
            clients.clear()
        client = clients[key] = Client()
    return client


async def _keep_until_loop_closes(
    loop: asyncio.AbstractEventLoop, client: AsyncClient
) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        if _async_clients.get(loop, (None, client))[1] is client:
            del _async_clients[loop]
        await client.aclose()


def _default_async_client() -> AsyncClient:
    import asyncio

    from ._async import AsyncClient

    loop = asyncio.get_running_loop()
    key = _env_key()
    entry = _async_clients.get(loop)
    if entry is not None and entry[0] == key:
        return entry[1]
    client = AsyncClient()
    keeper = _keep_until_loop_closes(loop, client)
    # Run the keeper to its first yield now: that registers it with the loop, which
    # closes it (and so the client) when it shuts down.
    try:
        keeper.asend(None).send(None)
    except StopIteration:
        pass
    if entry is not None:  # the environment changed: retire the old client
        task = loop.create_task(entry[2].aclose())
        _retiring.add(task)
        task.add_done_callback(_retiring.discard)
    _async_clients[loop] = (key, client, keeper)
    return client


def stream(prompt_or_messages: object, *, model: str | None = None, **options: Any) -> Stream:
    """Stream an answer, blocking: ``for text in ylokh.stream("Hello"): ...``.

    ``prompt_or_messages`` is a str or a list of ``{"role", "content"}`` dicts. Options:
    ``base_url``, ``api_key``, ``timeout``, ``max_retries``, ``proxy``, ``headers``,
    ``verify``; any other keyword goes into the JSON payload (``None`` is left out).
    Returns a :class:`ylokh.Stream` (iterable, a context manager, with ``.text``...).

    Raises:
        InvalidRequestError: bad input, before any network traffic.
    """
    return _default_client().stream(prompt_or_messages, model=model, **options)


def complete(prompt_or_messages: object, *, model: str | None = None, **options: Any) -> Completion:
    """The whole answer as one ``str`` (a :class:`ylokh.Completion`); arguments as
    :func:`stream`."""
    return _default_client().complete(prompt_or_messages, model=model, **options)


def astream(prompt_or_messages: object, *, model: str | None = None, **options: Any) -> AsyncStream:
    """Stream an answer in async code: ``async for text in ylokh.astream("Hello"): ...``.

    Arguments as :func:`stream`; returns a :class:`ylokh.AsyncStream`. Must be called
    with an event loop running (it uses that loop's default client).
    """
    return _default_async_client().stream(prompt_or_messages, model=model, **options)


async def acomplete(
    prompt_or_messages: object, *, model: str | None = None, **options: Any
) -> Completion:
    """The whole answer as one ``str``, in async code; arguments as :func:`stream`."""
    return await _default_async_client().complete(prompt_or_messages, model=model, **options)


def settings_env() -> Mapping[str, str]:
    """The environment variables ylokh reads that are set now (for diagnostics)."""
    return {name: os.environ[name] for name in _ENV_NAMES if name in os.environ}
