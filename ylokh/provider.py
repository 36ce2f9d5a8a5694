"""The seed-compatible provider: ``ylokh.Ylokh``, with the surface of gpt4free's ``Ylokh``.

    generator = await Ylokh.create_async_generator("gpt-3.5-turbo", messages)
    async for text in generator:
        print(text, end="")

The seed's payload defaults (``temperature=1`` ...) are sent, ``**kwargs`` override them,
and ``Origin``/``Referer`` name :attr:`Ylokh.url`. Setting names among the kwargs
(``base_url``, ``api_key``, ``max_retries``, ``headers``...) configure the connection.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from typing import Any

from ._base import SETTING_NAMES
from ._protocol import SEED_DEFAULTS, SEED_URL, validate_messages
from ._stats import Stats

__all__ = ["Ylokh"]


def _call_options(
    messages: list[dict[str, Any]],
    model: str,
    proxy: str | None,
    timeout: float,
    kwargs: dict[str, Any],
) -> dict[str, Any]:
    """The keyword arguments of the client call both entry points make: the seed's payload
    defaults with ``kwargs`` over them, its headers, the connection options.

    Raises:
        InvalidRequestError: bad messages, so bad input fails before any traffic.
    """
    validate_messages(messages)
    options = dict(SEED_DEFAULTS)
    options.update(kwargs)
    headers = {"Origin": SEED_URL, "Referer": SEED_URL + "/"}
    headers.update(options.pop("headers", None) or {})
    options["headers"] = headers
    return {"model": model, "proxy": proxy, "timeout": timeout, **options}


class _AsyncResult:
    """What ``create_async_generator`` returns: iterate it directly with ``async for``,
    or ``await`` it first (the seed's own example does) to get the iterator.

    It closes like the async generator it stands for (``aclose()``, so
    ``contextlib.aclosing(...)`` works), which closes the HTTP response at once.
    """

    def __init__(self, iterator: AsyncGenerator[str, None]) -> None:
        self._iterator = iterator
        #: The answer's :class:`ylokh.Stats`, once the request has started.
        self.stats: Stats | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterator

    async def __anext__(self) -> str:
        return await self._iterator.__anext__()

    async def aclose(self) -> None:
        """Stop the answer and close its response (nothing happens if it has ended)."""
        await self._iterator.aclose()

    async def asend(self, value: None) -> str:
        """As an async generator's ``asend``: the next text."""
        return await self._iterator.asend(value)

    async def athrow(self, error: BaseException) -> str:
        """As an async generator's ``athrow``: raise ``error`` inside the answer."""
        return await self._iterator.athrow(error)

    def __await__(self) -> Generator[Any, None, AsyncIterator[str]]:
        async def itself() -> AsyncIterator[str]:
            return self._iterator

        return itself().__await__()


class _Result:
    """What ``create_completion`` returns: an iterator of text with the answer's ``stats``."""

    def __init__(self, iterator: Iterator[str], stats: Stats) -> None:
        self._iterator = iterator
        #: The answer's :class:`ylokh.Stats`.
        self.stats = stats

    def __iter__(self) -> _Result:
        return self

    def __next__(self) -> str:
        return next(self._iterator)


class Ylokh:
    """The Ylokh provider, as the seed (gpt4free's ``AsyncGeneratorProvider``) had it."""

    url = SEED_URL
    working = True
    supports_message_history = True
    supports_gpt_35_turbo = True

    @classmethod
    def create_async_generator(
        cls,
        model: str,
        messages: list[dict[str, Any]],
        stream: bool = True,
        proxy: str | None = None,
        timeout: float = 120,
        **kwargs: Any,
    ) -> _AsyncResult:
        """Stream the answer's text (``stream=True``) or yield the whole answer once.

        Raises:
            InvalidRequestError: bad messages, before any traffic.
        """
        from ._api import _default_async_client

        # Checked now, so bad input fails before any traffic and before iteration.
        options = _call_options(messages, model, proxy, timeout, kwargs)

        async def generate() -> AsyncGenerator[str, None]:
            client = _default_async_client()
            if stream:
                async with client.stream(messages, **options) as answer:
                    result.stats = answer.stats
                    async for text in answer:
                        yield text
            else:
                completion = await client.complete(messages, **options)
                result.stats = completion.stats
                yield completion

        result = _AsyncResult(generate())
        return result

    @classmethod
    def create_completion(
        cls,
        model: str,
        messages: list[dict[str, Any]],
        stream: bool = True,
        proxy: str | None = None,
        timeout: float = 120,
        **kwargs: Any,
    ) -> Iterator[str]:
        """The blocking twin of :meth:`create_async_generator`: yields the same text."""
        from ._api import _default_client

        options = _call_options(messages, model, proxy, timeout, kwargs)
        client = _default_client()
        if not stream:
            completion = client.complete(messages, **options)
            return _Result(iter([completion]), completion.stats)
        answer = client.stream(messages, **options)
        return _Result(iter(answer), answer.stats)

    @classmethod
    def params(cls) -> str:
        """The supported parameters, as gpt4free providers describe them."""
        names = ", ".join(
            f"{name}: ..." for name in ("model", "messages", "stream", "proxy", "timeout")
        )
        return f"ylokh.Ylokh supports: ({names}, **kwargs); settings: {sorted(SETTING_NAMES)}"
