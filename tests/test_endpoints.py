"""Several endpoints behind one client (SPEC "Several endpoints"), on both faces, against
real bundled servers on 127.0.0.1: choice, failover inside one retry budget, cool-downs
with their trial call, the first-token timeout, and nothing failing over after text.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

import ylokh
from ylokh import APIConnectionError, IncompleteStreamError, ServerError, Timeout
from ylokh._endpoints import Endpoints
from ylokh.testing import Server


def dead_url() -> str:
    """A base URL on which nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def two() -> Iterator[tuple[Server, Server]]:
    with Server() as a, Server() as b:
        yield a, b


def test_base_url_takes_a_list_or_a_separated_str(monkeypatch: pytest.MonkeyPatch) -> None:
    urls = ["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"]
    for given in (urls, " , ".join(urls), "\n".join(urls)):
        assert ylokh.Client(base_url=given).settings.base_urls == tuple(urls)
    monkeypatch.setenv("YLOKH_BASE_URL", " ".join(urls))
    client = ylokh.Client()
    assert client.settings.base_urls == tuple(urls)
    assert all(url in repr(client) for url in urls)
    with pytest.raises(ylokh.InvalidRequestError, match="http:// or https://"):
        ylokh.Client(base_url=[urls[0], "ftp://x"])


def test_one_url_has_no_endpoint_bookkeeping() -> None:
    client = ylokh.Client(base_url="http://127.0.0.1:1/v1")
    assert client._endpoints is None  # the usual path pays nothing


def test_sequential_calls_take_turns(face: Any, two: tuple[Server, Server]) -> None:
    a, b = two
    client = face.client(base_url=[a.base_url, b.base_url])
    for _ in range(6):
        assert face.complete("hi", client=client).result == "hi"
    assert len(a.requests) == len(b.requests) == 3


def test_200_concurrent_async_calls_are_split_evenly(two: tuple[Server, Server]) -> None:
    a, b = two

    async def main() -> list[str]:
        async with ylokh.AsyncClient(base_url=[a.base_url, b.base_url]) as client:
            return await asyncio.gather(*(client.complete(f"q{i}") for i in range(200)))

    answers = asyncio.run(main())
    assert answers == [f"q{i}" for i in range(200)]
    share = len(a.requests) / 200
    assert 0.4 <= share <= 0.6, (len(a.requests), len(b.requests))


def test_a_dead_endpoint_cools_down_and_gets_one_trial(
    face: Any, two: tuple[Server, Server], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = two
    dead = dead_url()
    client = face.client(base_url=[dead, a.base_url, b.base_url], max_retries=2)
    with caplog.at_level(logging.WARNING, logger="ylokh"):
        for i in range(12):
            out = face.complete(f"call {i}", client=client)
            assert out.error is None and out.result == f"call {i}"
    tried_dead = [r for r in caplog.records if dead in r.getMessage()]
    # two failures in a row take it out; within the cool-down (1 s) it is not tried again
    assert len(tried_dead) == 2, [r.getMessage() for r in tried_dead]
    assert len(a.requests) + len(b.requests) == 12
    assert "cooling" in repr(client)
    time.sleep(1.1)  # the cool-down is over: one trial call, which fails and cools it again
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ylokh"):
        for i in range(6):
            assert face.complete(f"again {i}", client=client).error is None
    assert len([r for r in caplog.records if dead in r.getMessage()]) == 1


def test_retry_after_cools_an_endpoint_for_that_long(face: Any) -> None:
    with Server(fault="status=503;retry-after=2") as busy, Server() as ok:
        client = face.client(base_url=[busy.base_url, ok.base_url], max_retries=2)
        face.record_sleeps(client)
        for _ in range(6):
            assert face.complete("hi", client=client).error is None
        first = len(busy.requests)
        assert first == 2  # two failures in a row, then it cools for its Retry-After
        for _ in range(4):
            assert face.complete("hi", client=client).error is None
        assert len(busy.requests) == first  # skipped while cooling
        time.sleep(2.2)
        for _ in range(4):
            assert face.complete("hi", client=client).error is None
        assert len(busy.requests) == first + 1  # one trial, then cooling again


def test_a_stall_before_the_first_token_moves_to_another_endpoint(face: Any) -> None:
    with Server(fault="stall=20") as stalled, Server() as ok:
        client = face.client(
            base_url=[stalled.base_url, ok.base_url],
            timeout=Timeout(read=30, first_token=0.5),
            max_retries=2,
        )
        started = time.monotonic()
        outs = [face.stream("fast please", client=client) for _ in range(2)]
        elapsed = time.monotonic() - started
    assert [o.text for o in outs] == ["fast please"] * 2
    assert all(o.error is None for o in outs)
    assert elapsed < 10  # well under the read timeout (30 s)
    assert len(stalled.requests) >= 1


def test_the_first_token_timeout_alone_is_named(face: Any) -> None:
    with Server(fault="stall=20") as stalled:
        client = face.client(
            base_url=stalled.base_url, timeout=Timeout(read=30, first_token=0.3), max_retries=1
        )
        face.record_sleeps(client)
        out = face.stream("hi", client=client)
    assert isinstance(out.error, ylokh.APITimeoutError)
    assert "first-token timeout" in str(out.error)
    assert len(stalled.requests) == 2  # retried like any timeout before the body


def test_every_endpoint_down_fails_within_the_total_with_the_last_error(face: Any) -> None:
    client = face.client(
        base_url=[dead_url(), dead_url(), dead_url()],
        timeout=Timeout(total=3),
        max_retries=4,
    )
    started = time.monotonic()
    out = face.complete("hi", client=client)
    assert isinstance(out.error, APIConnectionError)
    assert "could not connect" in str(out.error)
    assert time.monotonic() - started < 3 + 1


def test_requests_sent_are_bounded_by_max_retries_plus_one(face: Any) -> None:
    with Server(fault="status=503") as a, Server(fault="status=503") as b:
        client = face.client(base_url=[a.base_url, b.base_url], max_retries=3)
        face.record_sleeps(client)
        out = face.complete("hi", client=client)
    assert isinstance(out.error, ServerError)
    assert len(a.requests) + len(b.requests) == 4


def test_nothing_fails_over_once_text_reached_the_caller(face: Any) -> None:
    with Server(fault="reset-after=1") as breaks, Server(fault="reset-after=1") as other:
        client = face.client(base_url=[breaks.base_url, other.base_url], max_retries=3)
        out = face.stream("one two three four", client=client)
        assert isinstance(out.error, IncompleteStreamError)
        assert out.error.partial and out.text.startswith(out.error.partial[:3])
        assert len(breaks.requests) + len(other.requests) == 1


def test_a_chat_keeps_its_turns_on_one_endpoint(face: Any, two: tuple[Server, Server]) -> None:
    a, b = two
    cls = ylokh.Client if face.name == "sync" else ylokh.AsyncClient
    client = cls(base_url=[a.base_url, b.base_url])
    chat = ylokh.Chat(client=client)
    try:
        for i in range(4):
            if face.name == "sync":
                chat.complete(f"turn {i}")
            else:
                face.run(chat.acomplete(f"turn {i}"))
    finally:
        if face.name == "sync":
            client.close()
        else:
            face.run(client.aclose())
    counts = sorted([len(a.requests), len(b.requests)])
    assert counts == [0, 4]


def test_pick_prefers_the_fewest_in_flight_then_takes_turns() -> None:
    clock = [0.0]
    endpoints = Endpoints(["http://a/v1", "http://b/v1", "http://c/v1"], clock=lambda: clock[0])
    first, _ = endpoints.pick()
    second, _ = endpoints.pick()
    third, _ = endpoints.pick()
    assert {e.base_url for e in (first, second, third) if e} == {
        "http://a/v1",
        "http://b/v1",
        "http://c/v1",
    }
    assert first is not None
    endpoints.done(first)
    again, _ = endpoints.pick()
    assert again is first  # the only one with nothing in flight
    counts = collections.Counter(e.in_flight for e in endpoints.all)
    assert counts == {1: 3}


def test_every_endpoint_cooling_says_how_long_until_the_first_is_back() -> None:
    clock = [0.0]
    endpoints = Endpoints(["http://a/v1", "http://b/v1"], clock=lambda: clock[0])
    for endpoint in endpoints.all:
        for _ in range(2):
            endpoints.failed(endpoint)
    chosen, wait = endpoints.pick()
    assert chosen is None and wait == pytest.approx(1.0)
    clock[0] = 1.0
    chosen, _ = endpoints.pick()
    assert chosen is not None and chosen.trial  # half-open: one trial call
    second, _ = endpoints.pick()
    assert second is not None and second is not chosen
    endpoints.failed(chosen)  # a failed trial cools it again, twice as long
    assert chosen.cool_for == pytest.approx(2.0)


def test_the_cli_takes_a_first_token_timeout_and_several_base_urls() -> None:
    import subprocess
    import sys

    with Server(fault="stall=20") as stalled, Server() as ok:
        urls = f"{stalled.base_url},{ok.base_url}"
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "ylokh", "chat", "--base-url", urls,
             "--first-token-timeout", "0.5", "--timeout", "30", "hello there"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hello there"
    assert elapsed < 20
