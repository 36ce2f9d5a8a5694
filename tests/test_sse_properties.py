"""Property-based tests of the sans-I/O core: how bytes are cut never changes the result.

- any valid event stream, cut into arbitrary pieces, decodes to the same events;
- arbitrary bytes make the SSE decoder raise nothing but :class:`ProtocolError`, and the
  response parser nothing but ylokh errors (never a ``KeyError`` or ``AttributeError``);
- a chat stream cut anywhere gives the same text.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from parsing import Parser as ResponseParser

import ylokh
from ylokh._errors import ProtocolError
from ylokh._sse import Event, SSEDecoder

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

EOLS = st.sampled_from([b"\n", b"\r\n", b"\r"])
# field values: any text without line ends (NUL included), as UTF-8
LINE_TEXT = st.text(
    alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
    max_size=30,
)
NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10)


@st.composite
def event_streams(draw: st.DrawFn) -> tuple[bytes, list[Event]]:
    """A valid event stream and the events it must decode to."""
    eol = draw(EOLS)
    parts: list[bytes] = []
    expected: list[Event] = []
    if draw(st.booleans()):
        parts.append(b"\xef\xbb\xbf")
    last_id = ""
    retry: int | None = None
    for _ in range(draw(st.integers(0, 6))):
        others: list[bytes] = []
        data_lines = draw(st.lists(LINE_TEXT, min_size=1, max_size=3))
        event_type = draw(st.one_of(st.just(""), NAME))
        if event_type:
            others.append(b"event: " + event_type.encode())
        if draw(st.booleans()):
            last_id = draw(LINE_TEXT.filter(lambda s: "\0" not in s))
            others.append(b"id: " + last_id.encode())
        if draw(st.booleans()):
            retry = draw(st.integers(0, 10**6))
            others.append(b"retry: " + str(retry).encode())
        if draw(st.booleans()):
            others.append(b": " + draw(LINE_TEXT).encode())  # a comment
        if draw(st.booleans()):
            unknown = draw(NAME.filter(lambda n: n not in ("data", "event", "id", "retry")))
            others.append(unknown.encode() + b": ignored")  # an unknown field
        lines: list[bytes] = []
        for text in data_lines:
            space = draw(st.booleans()) or text.startswith(" ")
            lines.append(b"data:" + (b" " if space else b"") + text.encode())
        for line in others:  # anywhere among the data lines, which keep their order
            lines.insert(draw(st.integers(0, len(lines))), line)
        parts.append(eol.join(lines) + eol + eol)
        data = "\n".join(data_lines).encode()
        expected.append(Event(data, event_type, last_id, retry))
    return b"".join(parts), expected


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length)."""
    offsets = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(offsets)]


def decode(pieces: list[bytes]) -> list[Event]:
    decoder = SSEDecoder()
    events: list[Event] = []
    for piece in pieces:
        events += decoder.feed(piece)
    return events + decoder.close()


@SETTINGS
@given(event_streams(), st.lists(st.integers(0, 10_000), max_size=20))
@example((b"data: a\r\n\r\n", [Event(b"a")]), [8])  # CRLF cut between CR and LF
@example((b"data: \xe6\x97\xa5\n\n", [Event("日".encode())]), [7])  # inside a character
def test_any_cut_decodes_to_the_same_events(
    stream: tuple[bytes, list[Event]], points: list[int]
) -> None:
    data, expected = stream
    assert decode([data]) == expected
    assert decode(cut(data, points)) == expected


@SETTINGS
@given(event_streams())
def test_byte_by_byte_decodes_to_the_same_events(stream: tuple[bytes, list[Event]]) -> None:
    data, expected = stream
    assert decode([data[i : i + 1] for i in range(len(data))]) == expected


@SETTINGS
@given(st.lists(st.binary(max_size=200), max_size=10))
def test_arbitrary_bytes_raise_only_protocol_errors(pieces: list[bytes]) -> None:
    decoder = SSEDecoder(max_line_size=64)
    try:
        for piece in pieces:
            decoder.feed(piece)
        decoder.close()
    except ProtocolError:
        pass


@SETTINGS
@given(st.binary(min_size=65, max_size=300), st.lists(st.integers(0, 400), max_size=5))
def test_an_overlong_line_is_a_protocol_error_however_it_is_cut(
    line: bytes, points: list[int]
) -> None:
    data = b"data: " + line.replace(b"\n", b"x").replace(b"\r", b"x") + b"\n\n"
    decoder = SSEDecoder(max_line_size=64)

    def decode_all() -> None:
        for piece in cut(data, points):
            decoder.feed(piece)
        decoder.close()

    with pytest.raises(ProtocolError, match="longer than 64 bytes"):
        decode_all()


# -- the response parser ------------------------------------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
KEYS = st.sampled_from(
    [
        "choices",
        "delta",
        "message",
        "content",
        "finish_reason",
        "usage",
        "error",
        "tool_calls",
        "index",
        "function",
        "arguments",
        "name",
        "reasoning_content",
        "code",
        "id",
        "type",
    ]
)


@st.composite
def odd_chunks(draw: st.DrawFn) -> Any:
    """Chunks shaped like the protocol's, with arbitrary values in every place."""
    value = JSON | st.just([]) | st.just({})
    inner = st.recursive(
        value,
        lambda more: st.lists(more, max_size=2) | st.dictionaries(KEYS, more, max_size=3),
        max_leaves=6,
    )
    return draw(st.dictionaries(KEYS, inner, max_size=3))


@SETTINGS
@given(st.lists(odd_chunks() | JSON, max_size=6), st.lists(st.integers(0, 5000), max_size=6))
def test_odd_chunks_raise_only_ylokh_errors(chunks: list[Any], points: list[int]) -> None:
    data = (
        b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    )
    parser = ResponseParser()
    parser.start(200, {"content-type": "text/event-stream"})
    try:
        for piece in cut(data, points):
            parser.feed(piece)
        parser.close()
    except ylokh.YlokhError:
        pass


@SETTINGS
@given(
    st.lists(st.binary(max_size=100), max_size=8),
    st.sampled_from(["text/event-stream", "", "application/json", "text/html"]),
)
def test_arbitrary_bodies_raise_only_ylokh_errors(pieces: list[bytes], content_type: str) -> None:
    parser = ResponseParser()
    parser.start(200, {"content-type": content_type})
    try:
        for piece in pieces:
            parser.feed(piece)
        parser.close()
    except ylokh.YlokhError:
        pass


@SETTINGS
@given(
    st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=8),
    st.lists(st.integers(0, 5000), max_size=12),
    EOLS,
)
def test_a_chat_stream_cut_anywhere_gives_the_same_text(
    words: list[str], points: list[int], eol: bytes
) -> None:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        obj = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + eol + eol

    data = chunk({"role": "assistant"})
    data += b"".join(chunk({"content": w}) for w in words)
    data += chunk({}, "stop") + b"data: [DONE]" + eol + eol
    parser = ResponseParser()
    parser.start(200, {"content-type": "text/event-stream"})
    out: list[str] = []
    for piece in cut(data, points):
        out += parser.feed(piece)
    out += parser.close()
    assert out == words
    assert parser.text == "".join(words) and parser.finish_reason == "stop"
