"""ylokh: stream chat completions from the Ylokh API or any OpenAI-compatible server.

    for text in ylokh.stream("Hello"):                       # scripts, notebooks
        print(text, end="", flush=True)
    async for text in ylokh.astream(messages, model="m"):   # async services
        ...

Design: a sans-I/O core (``_config``, ``_errors``, ``_sse``, ``_protocol``, ``_retry``)
builds requests and turns bytes into text; two thin faces move the bytes, ``requests``
for blocking code (``_sync``) and ``aiohttp`` for asyncio (``_async``, imported only when
an async API is first used). ``ylokh.testing`` is a local OpenAI-compatible server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._api import acomplete, astream, complete, stream
from ._base import Completion
from ._config import Timeout
from ._errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    IncompleteStreamError,
    InvalidRequestError,
    NotFoundError,
    ProtocolError,
    RateLimitError,
    ServerError,
    YlokhError,
)
from ._stats import Stats
from ._version import __version__
from .chat import Chat
from .provider import Ylokh

if TYPE_CHECKING:
    from . import notebook
    from ._async import AsyncClient, AsyncStream
    from ._batch import BatchResult, abatch, batch
    from ._sync import Client, Stream

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AsyncStream",
    "AuthenticationError",
    "BadRequestError",
    "BatchResult",
    "Chat",
    "Client",
    "Completion",
    "IncompleteStreamError",
    "InvalidRequestError",
    "NotFoundError",
    "ProtocolError",
    "RateLimitError",
    "ServerError",
    "Stats",
    "Stream",
    "Timeout",
    "Ylokh",
    "YlokhError",
    "__version__",
    "abatch",
    "acomplete",
    "astream",
    "batch",
    "complete",
    "notebook",
    "stream",
]

# Names whose modules import requests, aiohttp or IPython are loaded on first use.
_LAZY = {
    "Client": "._sync",
    "Stream": "._sync",
    "AsyncClient": "._async",
    "AsyncStream": "._async",
    "batch": "._batch",
    "abatch": "._batch",
    "BatchResult": "._batch",
    "notebook": ".notebook",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ylokh' has no attribute {name!r}")
    loaded = importlib.import_module(module, __name__)
    value = loaded if name == "notebook" else getattr(loaded, name)
    globals()[name] = value  # once loaded, an attribute like any other
    return value


def __dir__() -> list[str]:
    """The public names, the lazily imported ones included (tab completion finds them)."""
    return sorted({*globals(), *__all__})
