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
from collections.abc import AsyncGenerator, Callable, Mapping
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
    "YLOKH_FIRST_TOKEN_TIMEOUT",
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
    asyncio.AbstractEventLoop,
    dict[tuple[str, object], tuple[AsyncClient, AsyncGenerator[None, None]]],
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
    loop: asyncio.AbstractEventLoop, key: tuple[str, object], client: AsyncClient
) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        clients = _async_clients.get(loop, {})
        if key in clients and clients[key][0] is client:
            del clients[key]
        await client.aclose()


def _default_async_client() -> AsyncClient:
    from ._async import AsyncClient

    return _per_loop(("env", _env_key()), AsyncClient, retire_others=True)


def async_twin(client: Client) -> AsyncClient:
    """An ``AsyncClient`` with a sync client's settings for the running loop (a ``Chat``
    given a ``Client`` and called with ``acomplete``), closed when the loop shuts down."""
    from ._async import AsyncClient

    return _per_loop(("twin", id(client)), lambda: AsyncClient(**client._args, model=client.model))


def _per_loop(
    key: tuple[str, object], make: Callable[[], AsyncClient], retire_others: bool = False
) -> AsyncClient:
    """The running loop's client under ``key``; ``retire_others``: the environment
    changed, so the loop's other clients of the same kind are closed."""
    import asyncio

    loop = asyncio.get_running_loop()
    clients = _async_clients.get(loop)
    if clients is None:
        clients = _async_clients[loop] = {}
    entry = clients.get(key)
    if entry is not None:
        return entry[0]
    client = make()
    keeper = _keep_until_loop_closes(loop, key, client)
    # Run the keeper to its first yield now: that registers it with the loop, which
    # closes it (and so the client) when it shuts down.
    try:
        keeper.asend(None).send(None)
    except StopIteration:
        pass
    if retire_others:
        for old_key in [k for k in clients if k[0] == key[0]]:
            task = loop.create_task(clients.pop(old_key)[1].aclose())
            _retiring.add(task)
            task.add_done_callback(_retiring.discard)
    clients[key] = (client, keeper)
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
