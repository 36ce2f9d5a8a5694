"""The event-stream decoder on byte sequences: framing rules, limits, every split point."""

from __future__ import annotations

import pytest
from recordings import recording

from ylokh import ProtocolError
from ylokh._sse import Event, SSEDecoder


def decode(*pieces: bytes, max_line_size: int = 1 << 20) -> list[Event]:
    decoder = SSEDecoder(max_line_size)
    events: list[Event] = []
    for piece in pieces:
        events += decoder.feed(piece)
    return events + decoder.close()


def test_data_lines_with_and_without_space() -> None:
    assert decode(b"data: a\n\ndata:b\n\ndata:  c\n\n") == [
        Event(b"a"),
        Event(b"b"),
        Event(b" c"),
    ]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_every_line_end(eol: bytes) -> None:
    body = eol.join([b"data: one", b"", b"data: two", b"data: three", b"", b""])
    assert decode(body) == [Event(b"one"), Event(b"two\nthree")]


def test_crlf_split_between_reads_is_one_line_end() -> None:
    assert decode(b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n") == [Event(b"a"), Event(b"b")]


def test_fields_comments_and_unknown_fields() -> None:
    body = (
        b": ping - 2026-01-01\n"
        b"event: update\nid: 7\nretry: 1500\nfoo: bar\ndata: x\n\n"
        b"data: y\n\n"
        b"id\ndata: z\n\n"
    )
    assert decode(body) == [
        Event(b"x", "update", "7", 1500),
        Event(b"y", "", "7", 1500),  # the event type resets, id and retry persist
        Event(b"z", "", "", 1500),  # a bare "id" line sets an empty id
    ]


def test_leading_bom_is_dropped_even_split() -> None:
    assert decode(b"\xef\xbb", b"\xbfdata: a\n\n") == [Event(b"a")]


def test_blank_lines_without_data_dispatch_nothing() -> None:
    assert decode(b"\n\n\nevent: x\n\ndata: a\n\n") == [Event(b"a")]


def test_unterminated_last_event_is_handed_over_at_close() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: b") == [Event(b"a")]
    assert decoder.close() == [Event(b"b")]


def test_multibyte_character_split_between_reads() -> None:
    text = 'data: {"c": "日本"}\n\n'.encode()
    cut = text.index("本".encode()) + 1
    assert decode(text[:cut], text[cut:]) == [Event('{"c": "日本"}'.encode())]


def test_line_longer_than_the_limit_is_a_protocol_error() -> None:
    decoder = SSEDecoder(max_line_size=100)
    decoder.feed(b"data: " + b"x" * 50)
    with pytest.raises(ProtocolError, match="longer than 100 bytes"):
        decoder.feed(b"x" * 60)


def test_long_line_within_one_read_is_caught_too() -> None:
    with pytest.raises(ProtocolError, match="longer than 100"):
        decode(b"data: " + b"x" * 200 + b"\n\n", max_line_size=100)


def test_memory_stays_bounded_without_line_ends() -> None:
    decoder = SSEDecoder(max_line_size=1000)
    for _ in range(10):
        decoder.feed(b"y" * 100)
    with pytest.raises(ProtocolError):
        decoder.feed(b"y" * 100)


def _sample() -> bytes:
    return recording("llamacpp_gemma_stream.sse")


def test_recorded_stream_every_split_point_gives_the_same_events() -> None:
    body = _sample().replace(b"\n", b"\r\n")[:1500]  # CRLF makes split points harder
    whole = decode(body)
    assert len(whole) >= 4
    for cut in range(len(body) + 1):
        assert decode(body[:cut], body[cut:]) == whole, cut


def test_recorded_stream_one_byte_at_a_time() -> None:
    body = _sample()
    whole = decode(body)
    assert decode(*(body[i : i + 1] for i in range(len(body)))) == whole
    assert whole[-1] == Event(b"[DONE]")
