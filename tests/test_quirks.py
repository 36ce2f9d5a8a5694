"""Quirks of real servers and gateways, tolerated by both faces.

Each quirk is a fault mode of the bundled server (``ylokh_fault=`` in the payload), so it
crosses a real socket; every test runs on the blocking and the async face (``face``).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import ylokh
from ylokh.testing import Server

PROMPT = "Hello big world"
WEATHER_CALL = {
    "id": "call_ylokh_0",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


@pytest.fixture(scope="module")
def srv() -> Any:
    with Server() as server:
        yield server


def _stream(face: Any, srv: Server, fault: str, **options: Any) -> Any:
    return face.stream(PROMPT, base_url=srv.base_url, max_retries=0, ylokh_fault=fault, **options)


def _complete(face: Any, srv: Server, fault: str, **options: Any) -> Any:
    return face.complete(PROMPT, base_url=srv.base_url, max_retries=0, ylokh_fault=fault, **options)


def _ok(out: Any, text: str = PROMPT) -> None:
    assert out.error is None, out.error
    assert out.text == text
    assert out.stream.text == text


def test_final_chunk_with_no_choices_carries_usage(face: Any, srv: Server) -> None:
    out = _stream(face, srv, "usage-chunk")
    _ok(out)
    assert out.stream.finish_reason == "stop"
    assert out.stream.usage == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


def test_usage_asked_for_with_stream_options(face: Any, srv: Server) -> None:
    out = _stream(face, srv, "", stream_options={"include_usage": True})
    _ok(out)
    assert out.stream.usage is not None
    assert out.stream.usage["completion_tokens"] == 3


def test_no_usage_while_streaming_is_none(face: Any, srv: Server) -> None:
    out = _stream(face, srv, "")
    _ok(out)
    assert out.stream.usage is None  # as llama.cpp: no usage chunk unless asked


def test_role_only_first_delta_yields_no_empty_text(face: Any, srv: Server) -> None:
    out = _stream(face, srv, "")  # the server's normal first chunk is {"role": "assistant"}
    _ok(out)
    assert "" not in out.deltas
    assert out.deltas == ["Hello ", "big ", "world"]


def test_no_role_chunk_at_all(face: Any, srv: Server) -> None:
    out = _stream(face, srv, "no-role")
    _ok(out)
    assert out.deltas == ["Hello ", "big ", "world"]


def test_null_content_is_skipped(face: Any, srv: Server) -> None:
    out = _stream(face, srv, "null-content")
    _ok(out)
    assert all(isinstance(d, str) and d for d in out.deltas)
    assert out.stream.finish_reason == "stop"


@pytest.mark.parametrize("eol", ["lf", "crlf", "cr"])
def test_single_newline_between_events(face: Any, srv: Server, eol: str) -> None:
    out = _stream(face, srv, f"single-newline;eol={eol}")
    _ok(out)
    assert out.stream.finish_reason == "stop"


def test_single_newline_with_usage_and_reasoning(face: Any, srv: Server) -> None:
    out = _stream(face, srv, "single-newline;usage-chunk;reasoning;no-space")
    _ok(out)
    assert out.stream.usage is not None
    assert out.stream.reasoning == "Let me think. "


def test_single_newline_streams_before_the_end(face: Any, srv: Server) -> None:
    """Deltas of a single-newline stream reach the caller while the stream is still
    open: the first delta arrives although the server then stalls past the read timeout."""
    out = _stream(face, srv, "single-newline;stall-after=2,5", timeout=0.5)
    assert out.deltas[:2] == ["Hello ", "big "]
    assert isinstance(out.error, ylokh.IncompleteStreamError)
    assert out.error.partial == "Hello big "


def test_data_without_the_space(face: Any, srv: Server) -> None:
    out = _stream(face, srv, "no-space")
    _ok(out)
    assert out.deltas == ["Hello ", "big ", "world"]


def test_comments_and_other_fields_are_ignored(face: Any, srv: Server) -> None:
    out = _stream(face, srv, "comments;fields")
    _ok(out)
    assert out.stream.finish_reason == "stop"


def test_extra_unknown_fields(face: Any, srv: Server) -> None:
    out = _stream(face, srv, "extra-fields")
    _ok(out)
    assert out.stream.finish_reason == "stop"
    done = _complete(face, srv, "extra-fields")
    assert done.error is None, done.error
    assert done.result == PROMPT


def test_reasoning_is_kept_apart_from_the_text(face: Any, srv: Server) -> None:
    out = _stream(face, srv, "reasoning")
    _ok(out)
    assert out.stream.reasoning == "Let me think. "
    assert "think" not in out.text
    done = _complete(face, srv, "reasoning")
    assert done.error is None, done.error
    assert done.result == PROMPT
    assert done.result.reasoning == "Let me think. "


def test_tool_call_deltas_are_merged_by_index(face: Any, srv: Server) -> None:
    out = _stream(face, srv, "tools")
    assert out.error is None, out.error
    assert out.deltas == []
    assert out.stream.finish_reason == "tool_calls"
    assert out.stream.tool_calls == [WEATHER_CALL]
    assert json.loads(out.stream.tool_calls[0]["function"]["arguments"]) == {"city": "Paris"}
    done = _complete(face, srv, "tools")
    assert done.error is None, done.error
    assert done.result == ""
    assert done.result.tool_calls == [WEATHER_CALL]
    assert done.result.finish_reason == "tool_calls"


def test_every_quirk_at_once(face: Any, srv: Server) -> None:
    fault = "usage-chunk;no-role;null-content;no-space;extra-fields;reasoning;comments;crlf"
    out = _stream(face, srv, fault)
    _ok(out)
    assert out.stream.usage is not None
    assert out.stream.reasoning == "Let me think. "
    assert out.stream.finish_reason == "stop"


def test_done_without_finish_reason_is_complete(face: Any, srv: Server) -> None:
    # llama.cpp sends [DONE] with no finish_reason when a stream is interrupted
    out = _stream(face, srv, "no-finish")
    _ok(out)
    assert out.stream.finish_reason is None
    assert out.stream.completed


def test_finish_reason_without_done_is_complete(face: Any, srv: Server) -> None:
    out = _stream(face, srv, "no-done")
    _ok(out)
    assert out.stream.finish_reason == "stop"
    assert out.stream.completed


def test_neither_done_nor_finish_reason_is_incomplete(face: Any, srv: Server) -> None:
    out = _stream(face, srv, "no-done;no-finish")
    assert isinstance(out.error, ylokh.IncompleteStreamError)
    assert out.error.partial == PROMPT
    assert out.text == PROMPT


def test_empty_streaming_body_is_a_protocol_error(face: Any, srv: Server) -> None:
    # llama.cpp answers a streamed request whose prompt is too long with 200 and no body
    out = _stream(face, srv, "empty")
    assert isinstance(out.error, ylokh.ProtocolError), out.error
    assert "empty" in str(out.error) or "nothing" in str(out.error)
    assert out.deltas == []
