"""The contenders: the same job (stream ``n`` chunks, return the text) written six ways.

Each contender is built once per run with the server's base URL, keeps its client (and so
its pooled connections) between calls, and offers ``consume(n) -> text`` and
``first(n) -> (seconds to the first text delta, text)``. Async contenders return
coroutines. The raw loops are what people write by hand: ``iter_lines``/line iteration
plus ``json.loads`` of each ``data:`` line.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MESSAGES = [{"role": "user", "content": "Name three colors."}]
MODEL = "gemma"
perf = time.perf_counter


@dataclass
class Contender:
    """One way of streaming: its name, face (sync/async), kind (ylokh/raw/sdk) and calls."""

    name: str
    face: str
    kind: str
    consume: Callable[[int], Any]
    first: Callable[[int], Any]
    close: Callable[[], Any] = field(default=lambda: None)


# -- ylokh ----------------------------------------------------------------------------------
def ylokh_sync(base_url: str) -> Contender:
    import ylokh

    client = ylokh.Client(base_url=base_url, api_key="bench")

    def consume(n: int) -> str:
        parts = []
        for text in client.stream(MESSAGES, model=MODEL, max_tokens=n):
            parts.append(text)
        return "".join(parts)

    def first(n: int) -> tuple[float, str]:
        t0 = perf()
        it = iter(client.stream(MESSAGES, model=MODEL, max_tokens=n))
        parts = [next(it)]
        dt = perf() - t0
        parts.extend(it)
        return dt, "".join(parts)

    return Contender("ylokh sync", "sync", "ylokh", consume, first, client.close)


def ylokh_module(base_url: str) -> Contender:
    """``ylokh.stream`` (module level, default client from ``YLOKH_BASE_URL``)."""
    import ylokh

    os.environ["YLOKH_BASE_URL"] = base_url
    os.environ["YLOKH_API_KEY"] = "bench"

    def consume(n: int) -> str:
        parts = []
        for text in ylokh.stream(MESSAGES, model=MODEL, max_tokens=n):
            parts.append(text)
        return "".join(parts)

    def first(n: int) -> tuple[float, str]:
        t0 = perf()
        it = iter(ylokh.stream(MESSAGES, model=MODEL, max_tokens=n))
        parts = [next(it)]
        dt = perf() - t0
        parts.extend(it)
        return dt, "".join(parts)

    return Contender("ylokh.stream", "sync", "ylokh", consume, first)


def ylokh_async(base_url: str) -> Contender:
    import ylokh

    client = ylokh.AsyncClient(base_url=base_url, api_key="bench")

    async def consume(n: int) -> str:
        parts = []
        async for text in client.stream(MESSAGES, model=MODEL, max_tokens=n):
            parts.append(text)
        return "".join(parts)

    async def first(n: int) -> tuple[float, str]:
        t0 = perf()
        it = client.stream(MESSAGES, model=MODEL, max_tokens=n).__aiter__()
        parts = [await it.__anext__()]
        dt = perf() - t0
        async for text in it:
            parts.append(text)
        return dt, "".join(parts)

    return Contender("ylokh async", "async", "ylokh", consume, first, client.aclose)


def ylokh_amodule(base_url: str) -> Contender:
    """``ylokh.astream`` (module level, the loop's default client)."""
    import ylokh

    os.environ["YLOKH_BASE_URL"] = base_url
    os.environ["YLOKH_API_KEY"] = "bench"

    async def consume(n: int) -> str:
        parts = []
        async for text in ylokh.astream(MESSAGES, model=MODEL, max_tokens=n):
            parts.append(text)
        return "".join(parts)

    async def first(n: int) -> tuple[float, str]:
        t0 = perf()
        it = ylokh.astream(MESSAGES, model=MODEL, max_tokens=n).__aiter__()
        parts = [await it.__anext__()]
        dt = perf() - t0
        async for text in it:
            parts.append(text)
        return dt, "".join(parts)

    return Contender("ylokh.astream", "async", "ylokh", consume, first)


# -- the raw loops --------------------------------------------------------------------------
def raw_requests(base_url: str) -> Contender:
    import requests

    session = requests.Session()
    url = base_url + "/chat/completions"
    headers = {"Authorization": "Bearer bench"}
    loads = json.loads

    def consume(n: int) -> str:
        parts = []
        payload = {"model": MODEL, "messages": MESSAGES, "stream": True, "max_tokens": n}
        with session.post(url, json=payload, headers=headers, stream=True) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if line.startswith(b"data: "):
                    data = line[6:]
                    if data == b"[DONE]":
                        break
                    content = loads(data)["choices"][0]["delta"].get("content")
                    if content:
                        parts.append(content)
        return "".join(parts)

    def first(n: int) -> tuple[float, str]:
        t0 = perf()
        dt = 0.0
        parts: list[str] = []
        payload = {"model": MODEL, "messages": MESSAGES, "stream": True, "max_tokens": n}
        with session.post(url, json=payload, headers=headers, stream=True) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if line.startswith(b"data: "):
                    data = line[6:]
                    if data == b"[DONE]":
                        break
                    content = loads(data)["choices"][0]["delta"].get("content")
                    if content:
                        if not parts:
                            dt = perf() - t0
                        parts.append(content)
        return dt, "".join(parts)

    return Contender("raw requests", "sync", "raw", consume, first, session.close)


def raw_aiohttp(base_url: str) -> Contender:
    import aiohttp

    url = base_url + "/chat/completions"
    headers = {"Authorization": "Bearer bench"}
    loads = json.loads
    holder: dict[str, aiohttp.ClientSession] = {}

    def session() -> aiohttp.ClientSession:
        found = holder.get("s")
        if found is None or found.closed:
            found = holder["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return found

    async def consume(n: int) -> str:
        parts = []
        payload = {"model": MODEL, "messages": MESSAGES, "stream": True, "max_tokens": n}
        async with session().post(url, json=payload, headers=headers) as response:
            response.raise_for_status()
            async for line in response.content:
                if line.startswith(b"data: "):
                    data = line[6:].rstrip()
                    if data == b"[DONE]":
                        break
                    content = loads(data)["choices"][0]["delta"].get("content")
                    if content:
                        parts.append(content)
        return "".join(parts)

    async def first(n: int) -> tuple[float, str]:
        t0 = perf()
        dt = 0.0
        parts: list[str] = []
        payload = {"model": MODEL, "messages": MESSAGES, "stream": True, "max_tokens": n}
        async with session().post(url, json=payload, headers=headers) as response:
            response.raise_for_status()
            async for line in response.content:
                if line.startswith(b"data: "):
                    data = line[6:].rstrip()
                    if data == b"[DONE]":
                        break
                    content = loads(data)["choices"][0]["delta"].get("content")
                    if content:
                        if not parts:
                            dt = perf() - t0
                        parts.append(content)
        return dt, "".join(parts)

    async def close() -> None:
        if "s" in holder:
            await holder.pop("s").close()

    return Contender("raw aiohttp", "async", "raw", consume, first, close)


# -- the official SDK -----------------------------------------------------------------------
def sdk_sync(base_url: str) -> Contender:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=600.0)

    def consume(n: int) -> str:
        parts = []
        for chunk in client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, max_tokens=n
        ):
            if chunk.choices:
                content = chunk.choices[0].delta.content
                if content:
                    parts.append(content)
        return "".join(parts)

    def first(n: int) -> tuple[float, str]:
        t0 = perf()
        dt = 0.0
        parts: list[str] = []
        for chunk in client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, max_tokens=n
        ):
            if chunk.choices:
                content = chunk.choices[0].delta.content
                if content:
                    if not parts:
                        dt = perf() - t0
                    parts.append(content)
        return dt, "".join(parts)

    return Contender("openai sync", "sync", "sdk", consume, first, client.close)


def sdk_async(base_url: str) -> Contender:
    import openai

    holder: dict[str, Any] = {}

    def client() -> Any:
        # the SDK's async client binds to the loop it first runs on
        if "c" not in holder:
            holder["c"] = openai.AsyncOpenAI(
                base_url=base_url, api_key="bench", max_retries=0, timeout=600.0
            )
        return holder["c"]

    async def consume(n: int) -> str:
        parts = []
        stream = await client().chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, max_tokens=n
        )
        async for chunk in stream:
            if chunk.choices:
                content = chunk.choices[0].delta.content
                if content:
                    parts.append(content)
        return "".join(parts)

    async def first(n: int) -> tuple[float, str]:
        t0 = perf()
        dt = 0.0
        parts: list[str] = []
        stream = await client().chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, max_tokens=n
        )
        async for chunk in stream:
            if chunk.choices:
                content = chunk.choices[0].delta.content
                if content:
                    if not parts:
                        dt = perf() - t0
                    parts.append(content)
        return dt, "".join(parts)

    async def close() -> None:
        if "c" in holder:
            await holder.pop("c").close()

    return Contender("openai async", "async", "sdk", consume, first, close)


BUILDERS: dict[str, Callable[[str], Contender]] = {
    "ylokh sync": ylokh_sync,
    "ylokh.stream": ylokh_module,
    "raw requests": raw_requests,
    "openai sync": sdk_sync,
    "ylokh async": ylokh_async,
    "ylokh.astream": ylokh_amodule,
    "raw aiohttp": raw_aiohttp,
    "openai async": sdk_async,
}


def is_coroutine_fn(contender: Contender) -> bool:
    return contender.face == "async"
