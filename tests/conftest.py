"""Shared fixtures: the bundled server, and ``face``, which runs one test on both faces.

A behaviour test takes ``face`` and calls ``face.stream(...)`` / ``face.complete(...)``;
it runs once on the blocking ``requests`` face and once on the ``aiohttp`` face, with
the same assertions. Async calls run on one event loop per test (an ``asyncio.Runner``),
so clients and their pooled connections live across the calls of a test.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import ylokh
from ylokh.testing import Server


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's own YLOKH_* or proxy settings."""
    for name in list(os.environ):
        if name.startswith("YLOKH_") or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


@pytest.fixture
def server() -> Iterator[Server]:
    """A fresh bundled server on an ephemeral loopback port."""
    with Server() as srv:
        yield srv


@dataclass
class Outcome:
    """What a call produced: the deltas the caller received, and how it ended."""

    deltas: list[str] = field(default_factory=list)
    error: BaseException | None = None
    stream: Any = None
    result: Any = None

    @property
    def text(self) -> str:
        return "".join(self.deltas)


class Face:
    """One face of the library, driven the same way from a test."""

    name: str

    def __init__(self) -> None:
        self._clients: list[Any] = []

    def client(self, **settings: Any) -> Any:
        raise NotImplementedError

    def stream(
        self,
        prompt: Any,
        *,
        client: Any = None,
        stop_after: int | None = None,
        on_delta: Callable[[str], None] | None = None,
        **options: Any,
    ) -> Outcome:
        """Iterate a stream to its end (or ``stop_after`` deltas); errors are caught."""
        raise NotImplementedError

    def complete(self, prompt: Any, *, client: Any = None, **options: Any) -> Outcome:
        raise NotImplementedError

    def record_sleeps(self, client: Any) -> list[float]:
        """Make ``client`` record its back-off waits instead of sleeping."""
        waits: list[float] = []
        if self.name == "sync":
            client._sleep = waits.append
        else:

            async def sleep(seconds: float) -> None:
                waits.append(seconds)

            client._sleep = sleep
        return waits

    def leave_loop(self, prompt: Any, how: str, **options: Any) -> Any:
        """Iterate a stream the caller keeps holding, leave the loop after the first delta
        (``how``: "break" or "raise"), and return the stream, still referenced."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SyncFace(Face):
    name = "sync"

    def client(self, **settings: Any) -> ylokh.Client:
        client = ylokh.Client(**settings)
        self._clients.append(client)
        return client

    def stream(
        self,
        prompt: Any,
        *,
        client: Any = None,
        stop_after: int | None = None,
        on_delta: Callable[[str], None] | None = None,
        **options: Any,
    ) -> Outcome:
        out = Outcome()
        out.stream = (client or ylokh).stream(prompt, **options)
        try:
            with out.stream as stream:
                for text in stream:
                    if on_delta:
                        on_delta(text)
                    out.deltas.append(text)
                    if stop_after is not None and len(out.deltas) >= stop_after:
                        break
        except ylokh.YlokhError as exc:
            out.error = exc
        return out

    def complete(self, prompt: Any, *, client: Any = None, **options: Any) -> Outcome:
        out = Outcome()
        try:
            out.result = (client or ylokh).complete(prompt, **options)
        except ylokh.YlokhError as exc:
            out.error = exc
        return out

    def leave_loop(self, prompt: Any, how: str, **options: Any) -> Any:
        held = ylokh.stream(prompt, **options)
        try:
            for _ in held:
                if how == "raise":
                    raise LookupError
                break
        except LookupError:
            pass
        return held

    def close(self) -> None:
        for client in self._clients:
            client.close()


class AsyncFace(Face):
    name = "async"

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)

    def client(self, **settings: Any) -> Any:
        client = ylokh.AsyncClient(**settings)
        self._clients.append(client)
        return client

    def stream(
        self,
        prompt: Any,
        *,
        client: Any = None,
        stop_after: int | None = None,
        on_delta: Callable[[str], None] | None = None,
        **options: Any,
    ) -> Outcome:
        out = Outcome()

        async def go() -> None:
            out.stream = (client.stream if client else ylokh.astream)(prompt, **options)
            try:
                async with out.stream as stream:
                    async for text in stream:
                        if on_delta:
                            on_delta(text)
                        out.deltas.append(text)
                        if stop_after is not None and len(out.deltas) >= stop_after:
                            break
            except ylokh.YlokhError as exc:
                out.error = exc

        self.run(go())
        return out

    def complete(self, prompt: Any, *, client: Any = None, **options: Any) -> Outcome:
        out = Outcome()

        async def go() -> None:
            try:
                call = client.complete if client else ylokh.acomplete
                out.result = await call(prompt, **options)
            except ylokh.YlokhError as exc:
                out.error = exc

        self.run(go())
        return out

    def leave_loop(self, prompt: Any, how: str, **options: Any) -> Any:
        async def go() -> Any:
            held = ylokh.astream(prompt, **options)
            try:
                async for _ in held:
                    if how == "raise":
                        raise LookupError
                    break
            except LookupError:
                pass
            return held

        return self.run(go())

    def close(self) -> None:
        for client in self._clients:
            self.run(client.aclose())
        self.runner.close()


@pytest.fixture(params=["sync", "async"])
def face(request: pytest.FixtureRequest) -> Iterator[Face]:
    """Runs the test once per face: blocking (requests) and async (aiohttp)."""
    driver: Face = SyncFace() if request.param == "sync" else AsyncFace()
    try:
        yield driver
    finally:
        driver.close()
