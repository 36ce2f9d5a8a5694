"""``ylokh._compat``, the one module that touches dependencies' private attributes: each
probe works on the installed versions, and each public fallback gives the same outcome."""

from __future__ import annotations

import http.client
import socket
from typing import Any

import requests

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
