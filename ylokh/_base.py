"""What both faces share and that does no I/O: per-call settings, requests, results.

Strategy (as in httpx): :class:`BaseClient` resolves settings and builds requests;
``Client`` and ``AsyncClient`` repeat by hand only the short path that touches sockets.
:class:`BaseStream` holds a stream's results, read from the core's parser.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from ._config import Settings, resolve_settings
from ._protocol import Request, ResponseParser, build_request
from ._stats import Stats

#: Options that configure the connection; every other keyword goes into the payload.
SETTING_NAMES = frozenset(
    {"base_url", "api_key", "timeout", "max_retries", "proxy", "headers", "verify"}
)


class BaseClient:
    """Settings and request building, shared by :class:`ylokh.Client` and
    :class:`ylokh.AsyncClient`. ``env=None`` reads ``os.environ``."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: object = None,
        max_retries: int | None = None,
        proxy: str | None = None,
        headers: Mapping[str, str] | None = None,
        verify: bool | str = True,
        model: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._env = os.environ if env is None else env
        self._args: dict[str, Any] = {
            "base_url": base_url,
            "api_key": api_key,
            "timeout": timeout,
            "max_retries": max_retries,
            "proxy": proxy,
            "headers": headers,
            "verify": verify,
        }
        self.settings = resolve_settings(**self._args, env=self._env)
        self.model = model
        self._seed = False  # the seed-compatible provider sends the seed's headers

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.settings.base_url!r})"

    def _settings_for(self, overrides: Mapping[str, Any]) -> Settings:
        """This client's settings with one call's overrides applied (``None`` = unset)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if not given:
            return self.settings
        args = {**self._args, **given}
        if "headers" in given and self._args["headers"]:
            args["headers"] = {**self._args["headers"], **given["headers"]}
        return resolve_settings(**args, env=self._env)

    def _prepare(
        self,
        prompt_or_messages: object,
        model: str | None,
        stream: bool,
        options: dict[str, Any],
    ) -> tuple[Settings, Request]:
        overrides = {k: options.pop(k) for k in SETTING_NAMES & options.keys()}
        settings = self._settings_for(overrides)
        request = build_request(
            settings,
            prompt_or_messages,
            model=model or self.model,
            stream=stream,
            options=options,
            env=self._env,
            seed=self._seed,
        )
        return settings, request


def deadline_of(settings: Settings) -> float | None:
    """The monotonic time by which the whole call must end, or ``None``."""
    total = settings.timeout.total
    return None if total is None else time.monotonic() + total


logger = logging.getLogger("ylokh")


class Exchange:
    """The state of one call: its settings and request, the parser holding the results,
    timings, and what to do once the answer is complete.

    Strategy: the generator that reads the response holds this object, never the stream
    object the caller holds; so a caller that drops its stream in the middle of a loop
    (``break``) drops the last reference to the generator, which closes the response at
    once instead of waiting for the garbage collector to break a cycle.
    """

    __slots__ = (
        "close",
        "completed",
        "first_byte",
        "on_complete",
        "parser",
        "request",
        "settings",
        "started",
        "stats",
    )

    def __init__(self, settings: Settings, request: Request) -> None:
        self.settings = settings
        self.request = request
        self.parser: ResponseParser | None = None
        self.started = 0.0  # when the first attempt began (monotonic)
        self.first_byte = 0.0  # when the accepted attempt had read its first bytes
        self.on_complete: list[Callable[[Exchange], None]] = []
        self.completed = False
        self.close: Callable[[], None] | None = None  # closes the response, once opened
        self.stats = Stats(settings.base_url)

    @property
    def text(self) -> str:
        """All the text received so far."""
        return self.parser.text if self.parser else ""

    @property
    def finish_reason(self) -> str | None:
        """Why the answer ended, when known."""
        return self.parser.finish_reason if self.parser else None

    @property
    def usage(self) -> dict[str, Any] | None:
        """Token counts, when the server sent them."""
        return self.parser.usage if self.parser else None

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """Tool calls, their deltas merged by index."""
        return self.parser.tool_calls if self.parser else []

    @property
    def reasoning(self) -> str:
        """The model's ``reasoning_content``, kept apart from the text."""
        return self.parser.reasoning if self.parser else ""

    def log_end(self) -> None:
        """One DEBUG line per request: status, time to first byte, chunks, characters."""
        parser = self.parser
        if parser is None or not logger.isEnabledFor(logging.DEBUG):
            return
        logger.debug(
            "POST %s -> %d, first byte after %.1f ms, %d chunks, %d characters%s",
            self.request.url,
            parser.status,
            (self.first_byte - self.started) * 1000,
            parser.chunks,
            len(parser.text),
            "" if self.completed else " (not complete)",
        )

    def complete(self) -> None:
        """Called once, when the server has said the answer is complete."""
        self.completed = True
        for callback in self.on_complete:
            callback(self)


class BaseStream:
    """The results of one streamed answer, shared by the sync and async stream objects.

    ``text`` is all the text received so far (also after an error); ``finish_reason``,
    ``usage``, ``tool_calls`` and ``reasoning`` are filled in as the server sends them.
    """

    def __init__(self, settings: Settings, request: Request) -> None:
        self._exchange = Exchange(settings, request)
        self._on_complete = self._exchange.on_complete

    def __repr__(self) -> str:
        state = "complete" if self.completed else "open"
        url = self._exchange.request.url
        return f"<{type(self).__name__} {url} {state}, {len(self.text)} chars>"

    @property
    def completed(self) -> bool:
        """Whether the server said the answer is complete."""
        return self._exchange.completed

    @property
    def text(self) -> str:
        """All the text received so far."""
        return self._exchange.text

    @property
    def finish_reason(self) -> str | None:
        """Why the answer ended (``"stop"``, ``"length"``, ``"tool_calls"``...), when known."""
        return self._exchange.finish_reason

    @property
    def usage(self) -> dict[str, Any] | None:
        """Token counts, when the server sent them."""
        return self._exchange.usage

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """Tool calls, their deltas merged by index."""
        return self._exchange.tool_calls

    @property
    def reasoning(self) -> str:
        """The model's ``reasoning_content``, kept apart from the text."""
        return self._exchange.reasoning

    @property
    def stats(self) -> Stats:
        """The measurements of this answer (:class:`ylokh.Stats`), final once it ended."""
        return self._exchange.stats


class Completion(str):
    """A whole answer: a ``str``, with ``finish_reason``, ``usage``, ``tool_calls`` and
    ``reasoning`` attached."""

    finish_reason: str | None
    usage: dict[str, Any] | None
    tool_calls: list[dict[str, Any]]
    reasoning: str
    stats: Stats

    @classmethod
    def of(cls, stream: BaseStream | Exchange) -> Completion:
        """The completion a finished stream holds."""
        completion = cls(stream.text)
        completion.finish_reason = stream.finish_reason
        completion.usage = stream.usage
        completion.tool_calls = stream.tool_calls
        completion.reasoning = stream.reasoning
        completion.stats = stream.stats
        return completion
