"""``.stats``: the measurements of each answer, on both faces, against known latencies.

The bundled server plays answers at known times (``ttft``, ``itl``); the assertions are
about ordering and proportions with generous bounds, never exact milliseconds, so they
hold on a loaded machine and fail when a measurement is wrong (a TTFT taken at the
headers, token times taken at the end, gaps that are not gaps).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

import ylokh
from ylokh.testing import Server

if TYPE_CHECKING:
    from conftest import Face

TTFT = 0.3
ITL = 0.05
TOKENS = 8


@pytest.fixture
def slow_server() -> Iterator[Server]:
    with Server(chunks=TOKENS, ttft=TTFT, itl=ITL) as srv:
        yield srv


def test_stream_stats_follow_the_known_latencies(face: Face, slow_server: Server) -> None:
    out = face.stream(
        "measure me", base_url=slow_server.base_url, stream_options={"include_usage": True}
    )
    assert out.error is None
    stats = out.stream.stats
    assert isinstance(stats, ylokh.Stats)
    assert stats.base_url == slow_server.base_url
    assert stats.attempts == 1
    ttft, headers, duration = stats.time_to_first_token, stats.time_to_headers, stats.duration
    assert headers is not None and ttft is not None and duration is not None
    # the head comes at once, the first token after TTFT, the end after the last token
    assert headers < TTFT / 2
    assert TTFT * 0.9 <= ttft < TTFT * 3
    times = stats.token_times
    assert len(times) == stats.chunks == TOKENS
    assert times == sorted(times) and times[0] == ttft
    assert times[-1] <= duration
    gaps = stats.inter_token_latencies
    assert len(gaps) == TOKENS - 1
    assert all(gap >= ITL * 0.5 for gap in gaps), gaps  # one read per chunk: real gaps
    mean_gap = sum(gaps) / len(gaps)
    assert ITL * 0.9 <= mean_gap < ITL * 3
    # the first token waits for TTFT, the others only for ITL
    assert ttft > 3 * mean_gap
    assert stats.output_tokens == TOKENS and not stats.tokens_estimated
    assert stats.usage is not None and stats.usage["completion_tokens"] == TOKENS
    speed = stats.tokens_per_second
    assert speed is not None and 1 / (ITL * 3) < speed <= 1 / (ITL * 0.8)
    assert stats.server_timings is None


def test_without_usage_tokens_are_counted_and_marked_estimated(
    face: Face, slow_server: Server
) -> None:
    out = face.stream("count me", base_url=slow_server.base_url)
    stats = out.stream.stats
    assert stats.output_tokens is None
    assert stats.tokens_estimated
    assert stats.tokens == stats.chunks == TOKENS
    assert "~8 tokens" in stats.summary()


def test_llama_cpp_timings_give_the_token_count(face: Face, server: Server) -> None:
    out = face.stream("timed answer here", base_url=server.base_url, ylokh_fault="timings")
    stats = out.stream.stats
    assert stats.server_timings is not None
    assert stats.server_timings["predicted_n"] == 3
    assert stats.output_tokens == 3  # from the timings: the server sent no usage
    assert not stats.tokens_estimated


def test_completion_stats(face: Face, server: Server) -> None:
    out = face.complete("a whole answer", base_url=server.base_url)
    stats = out.result.stats
    assert stats.attempts == 1
    assert stats.output_tokens == 3  # a completion always carries usage
    assert stats.time_to_headers is not None and stats.duration is not None
    assert stats.time_to_headers <= stats.duration
    assert stats.chunks == 1  # one message


def test_attempts_count_retries(face: Face, server: Server) -> None:
    server.script(["status=503", "reset", None])
    client = face.client(base_url=server.base_url, max_retries=3)
    waits = face.record_sleeps(client)
    out = face.stream("again", client=client)
    assert out.error is None
    assert len(waits) == 2
    assert out.stream.stats.attempts == 3
    assert out.stream.stats.chunks == 1


def test_a_failed_call_has_a_duration_and_no_first_token(face: Face, server: Server) -> None:
    out = face.stream("fail", base_url=server.base_url, max_retries=0, ylokh_fault="status=400")
    assert isinstance(out.error, ylokh.BadRequestError)
    stats = out.stream.stats
    assert stats.attempts == 1
    assert stats.time_to_first_token is None
    assert stats.duration is not None
    assert stats.chunks == 0 and stats.token_times == []


def test_a_stream_left_early_ends_its_stats(face: Face, slow_server: Server) -> None:
    out = face.stream("leave", base_url=slow_server.base_url, stop_after=2)
    stats = out.stream.stats
    assert stats.chunks >= 2
    assert stats.duration is not None
    assert stats.duration < TTFT + ITL * (TOKENS - 1)  # ended when the loop left


def test_stats_fill_in_while_streaming(slow_server: Server) -> None:
    with ylokh.Client(base_url=slow_server.base_url) as client:
        stream = client.stream("live")
        seen = []
        for _ in stream:
            seen.append((stream.stats.chunks, stream.stats.duration))
    assert [chunks for chunks, _ in seen] == list(range(1, TOKENS + 1))
    assert all(duration is None for _, duration in seen)  # not final until the end
    assert stream.stats.duration is not None


def test_the_seed_provider_exposes_stats(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YLOKH_BASE_URL", server.base_url)
    messages = [{"role": "user", "content": "seed stats"}]
    result = ylokh.Ylokh.create_completion("", messages)
    assert "".join(result) == "seed stats"
    assert result.stats.chunks == 2 and result.stats.attempts == 1

    async def main() -> tuple[str, ylokh.Stats | None]:
        generator = ylokh.Ylokh.create_async_generator("", messages)
        text = "".join([t async for t in generator])
        return text, generator.stats

    text, stats = asyncio.run(main())
    assert text == "seed stats"
    assert stats is not None and stats.chunks == 2 and stats.duration is not None


def test_to_dict_and_repr(server: Server) -> None:
    stream = ylokh.stream("shape", base_url=server.base_url)
    "".join(stream)
    d = stream.stats.to_dict()
    assert set(d) == {
        "base_url", "attempts", "time_to_headers", "time_to_first_token", "duration",
        "chunks", "token_times", "output_tokens", "tokens_estimated", "tokens_per_second",
        "server_timings",
    }  # fmt: skip
    assert d["chunks"] == 1 and d["attempts"] == 1
    assert repr(stream.stats).startswith("Stats(base_url=")


def test_recording_interface_by_hand() -> None:
    stats = ylokh.Stats("http://x/v1")
    stats.started(10.0)
    stats.attempts += 1
    stats.headers(10.1)
    stats.read(10.5, 2)
    stats.read(10.6, 0)
    stats.read(10.7, 1)
    assert stats.duration is None
    stats.ended(11.0, {"completion_tokens": 5}, None)
    stats.ended(99.0)  # only the first end counts
    assert stats.time_to_headers == pytest.approx(0.1)
    assert stats.time_to_first_token == pytest.approx(0.5)
    assert stats.token_times == pytest.approx([0.5, 0.5, 0.7])
    assert stats.inter_token_latencies == pytest.approx([0.0, 0.2])
    assert stats.duration == pytest.approx(1.0)
    assert stats.output_tokens == 5
    assert stats.time_per_output_token == pytest.approx(0.5 / 4)
    assert stats.tokens_per_second == pytest.approx(8.0)
    assert stats.summary() == "ttft 0.50 s, 5 tokens, 8.0 tok/s"
