"""The seed-compatible ``ylokh.Ylokh`` provider: its surface, payload and both call forms."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
import textwrap

import pytest

import ylokh
from ylokh.testing import Server

MESSAGES = [{"role": "user", "content": "seed style hello"}]


def test_seed_surface() -> None:
    assert ylokh.Ylokh.url == "https://chat.ylokh.xyz"
    assert ylokh.Ylokh.working is True
    assert ylokh.Ylokh.supports_message_history is True
    assert ylokh.Ylokh.supports_gpt_35_turbo is True


def test_seed_example_runs_as_written(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed's own example: ``generator = await ...create_async_generator(...)``."""
    monkeypatch.setenv("YLOKH_BASE_URL", server.base_url)
    example = textwrap.dedent(
        """
        import asyncio
        from ylokh import Ylokh

        async def main():
            generator = await Ylokh.create_async_generator(
                model="gpt-3.5-turbo",
                messages=[{"role": "user", "content": "Hello, how are you?"}],
            )
            async for chunk in generator:
                print(chunk, end="")

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", example], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Hello, how are you?"


def test_seed_payload_defaults_headers_and_overrides(server: Server) -> None:
    async def main() -> list[str]:
        return [
            chunk
            async for chunk in ylokh.Ylokh.create_async_generator(
                "", MESSAGES, base_url=server.base_url, temperature=0.5, allow_fallback=False
            )
        ]

    assert "".join(asyncio.run(main())) == "seed style hello"
    seen = server.requests[0]
    assert seen.json == {
        "model": "gpt-3.5-turbo",  # an empty model falls back, as in the seed
        "messages": MESSAGES,
        "temperature": 0.5,
        "presence_penalty": 0,
        "top_p": 1,
        "frequency_penalty": 0,
        "allow_fallback": False,
        "stream": True,
    }
    assert seen.headers["origin"] == ylokh.Ylokh.url
    assert seen.headers["referer"] == ylokh.Ylokh.url + "/"


def test_not_streaming_yields_the_whole_answer_once(server: Server) -> None:
    async def main() -> list[str]:
        generator = await ylokh.Ylokh.create_async_generator(
            "m", MESSAGES, stream=False, base_url=server.base_url
        )
        return [chunk async for chunk in generator]

    assert asyncio.run(main()) == ["seed style hello"]
    assert server.requests[0].json["stream"] is False


def test_sync_twin_yields_the_same_text(server: Server) -> None:
    streamed = list(ylokh.Ylokh.create_completion("m", MESSAGES, base_url=server.base_url))
    whole = list(
        ylokh.Ylokh.create_completion("m", MESSAGES, stream=False, base_url=server.base_url)
    )
    assert "".join(streamed) == "seed style hello" and len(streamed) == 3
    assert whole == ["seed style hello"]


def test_the_twins_take_the_same_arguments() -> None:
    # Written out by hand on both, as the seed's surface: kept in step here.
    blocking = inspect.signature(ylokh.Ylokh.create_completion).parameters
    assert blocking == inspect.signature(ylokh.Ylokh.create_async_generator).parameters


def test_seed_timeout_is_the_read_timeout(server: Server) -> None:
    generator = ylokh.Ylokh.create_completion(
        "m", MESSAGES, timeout=0.3, max_retries=0, base_url=server.base_url, ylokh_fault="stall=5"
    )
    with pytest.raises(ylokh.APITimeoutError, match="read timeout"):
        list(generator)


def test_bad_messages_fail_before_traffic(server: Server) -> None:
    with pytest.raises(ylokh.InvalidRequestError):
        ylokh.Ylokh.create_async_generator("m", [{"role": "user"}], base_url=server.base_url)
    with pytest.raises(ylokh.InvalidRequestError):
        ylokh.Ylokh.create_completion(
            "m", [{"role": "x", "content": "y"}], base_url=server.base_url
        )
    assert server.requests == []


def test_the_async_result_closes_like_a_generator() -> None:
    """``contextlib.aclosing`` and code that closes generators work on the seed's result;
    closing in the middle of an answer closes its response at once."""
    import contextlib

    async def main() -> list[str]:
        got: list[str] = []
        result = ylokh.Ylokh.create_async_generator(
            "m", [{"role": "user", "content": "one two three four"}], base_url=srv.base_url
        )
        async with contextlib.aclosing(result) as answer:
            async for text in answer:
                got.append(text)
                break
        await result.aclose()  # twice is harmless
        with pytest.raises(StopAsyncIteration):
            await result.__anext__()
        return got

    with Server(delay=0.2) as srv:  # the pauses let the server see the client leave
        assert asyncio.run(main()) == ["one "]
        [request] = srv.requests
        assert request.disconnected.wait(5)  # the response was closed, not left to drain
