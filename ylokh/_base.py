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


class BaseStream:
    """The results of one streamed answer, shared by the sync and async stream objects.

    ``text`` is all the text received so far (also after an error); ``finish_reason``,
    ``usage``, ``tool_calls`` and ``reasoning`` are filled in as the server sends them.
    """

    _parser: ResponseParser | None = None
    _started = 0.0  # when the first attempt began (monotonic)
    _first_byte = 0.0  # when the accepted attempt read its first bytes

    def __init__(self, settings: Settings, request: Request) -> None:
        self._settings = settings
        self._request = request
        self._on_complete: list[Callable[[BaseStream], None]] = []
        self.completed = False

    def __repr__(self) -> str:
        state = "complete" if self.completed else "open"
        return f"<{type(self).__name__} {self._request.url} {state}, {len(self.text)} chars>"

    @property
    def text(self) -> str:
        """All the text received so far."""
        return self._parser.text if self._parser else ""

    @property
    def finish_reason(self) -> str | None:
        """Why the answer ended (``"stop"``, ``"length"``, ``"tool_calls"``...), when known."""
        return self._parser.finish_reason if self._parser else None

    @property
    def usage(self) -> dict[str, Any] | None:
        """Token counts, when the server sent them."""
        return self._parser.usage if self._parser else None

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """Tool calls, their deltas merged by index."""
        return self._parser.tool_calls if self._parser else []

    @property
    def reasoning(self) -> str:
        """The model's ``reasoning_content``, kept apart from the text."""
        return self._parser.reasoning if self._parser else ""

    def _log_end(self) -> None:
        """One DEBUG line per request: status, time to first byte, chunks, characters."""
        parser = self._parser
        if parser is None or not logger.isEnabledFor(logging.DEBUG):
            return
        logger.debug(
            "POST %s -> %d, first byte after %.1f ms, %d chunks, %d characters%s",
            self._request.url,
            parser.status,
            (self._first_byte - self._started) * 1000,
            parser.chunks,
            len(parser.text),
            "" if self.completed else " (not complete)",
        )

    def _complete(self) -> None:
        """Called once when the server said the answer is complete."""
        self.completed = True
        for callback in self._on_complete:
            callback(self)


class Completion(str):
    """A whole answer: a ``str``, with ``finish_reason``, ``usage``, ``tool_calls`` and
    ``reasoning`` attached."""

    finish_reason: str | None
    usage: dict[str, Any] | None
    tool_calls: list[dict[str, Any]]
    reasoning: str

    @classmethod
    def of(cls, stream: BaseStream) -> Completion:
        """The completion a finished stream holds."""
        completion = cls(stream.text)
        completion.finish_reason = stream.finish_reason
        completion.usage = stream.usage
        completion.tool_calls = stream.tool_calls
        completion.reasoning = stream.reasoning
        return completion
