"""``ylokh._compat``, the one module that touches dependencies' private attributes: each
probe works on the installed versions, and each public fallback gives the same outcome."""

from __future__ import annotations

import asyncio
import http.client
import socket
from typing import Any

import pytest
import requests
from rawserver import HOLD, RawServer, chunked, head

import ylokh
from ylokh import _compat
from ylokh.testing import Server


def test_the_probes_find_what_they_look_for_on_these_versions(server: Server) -> None:
    response = requests.post(
        server.base_url + "/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        stream=True,
        timeout=10,
    )
    try:
        assert isinstance(_compat.chunked_file(response.raw), http.client.HTTPResponse)
        assert isinstance(_compat.socket_of(response.raw), socket.socket)
    finally:
        response.close()


def _all_faults(face: Any, server: Server) -> list[Any]:
    client = face.client(base_url=server.base_url, max_retries=0)
    return [
        face.stream("one two three", client=client),
        face.stream("one two three", client=client, ylokh_fault="framing=close"),
        face.complete("one two three", client=client),
        face.stream("one two", client=client, ylokh_fault="truncate"),
    ]


def test_the_public_fallbacks_give_the_same_outcomes(face: Any, server: Server) -> None:
    fast = _all_faults(face, server)
    _compat.ENABLED = False
    try:
        slow = _all_faults(face, server)
    finally:
        _compat.ENABLED = True
    for a, b in zip(fast, slow, strict=True):
        assert (a.text, type(a.error)) == (b.text, type(b.error))
    assert fast[1].text == "one two three" and fast[1].error is None
    assert isinstance(fast[3].error, ylokh.APIConnectionError)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("probe", [True, False], ids=["probe", "fallback"])
def test_a_chunked_body_aiohttp_cannot_parse_ends_with_either(probe: bool) -> None:
    """aiohttp's parser fails on a chunk size that is not hex, closes the connection and
    leaves the body waiting: the probe finds its error (ProtocolError, as the blocking face
    says), the fallback sees the connection gone (APIConnectionError); text is kept."""
    first = b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n'
    script = [head(chunked=True), chunked(first, end=False), 0.2, b"zz\r\nxx\r\n", HOLD]
    got: list[str] = []

    async def run(base_url: str) -> BaseException | None:
        async with ylokh.AsyncClient(base_url=base_url, max_retries=0) as client:
            try:
                async for text in client.stream("hi"):
                    got.append(text)
            except ylokh.YlokhError as exc:
                return exc
        return None

    _compat.ENABLED = probe
    try:
        with RawServer([script]) as raw:
            error = asyncio.run(run(raw.base_url))
    finally:
        _compat.ENABLED = True
    expected = ylokh.ProtocolError if probe else ylokh.APIConnectionError
    assert isinstance(error, ylokh.IncompleteStreamError), repr(error)
    assert isinstance(error, expected) and error.partial == "Hel" == "".join(got)
