"""The sans-I/O protocol: validation, requests, the response parser, error mapping."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import pytest
from parsing import Parser as ResponseParser

import ylokh
from ylokh._config import resolve_settings
from ylokh._errors import error_message
from ylokh._protocol import build_headers, build_request, parse_retry_after, validate_messages

SSE = {"content-type": "text/event-stream"}


def chunk(content: str | None = None, finish: str | None = None, **delta: Any) -> bytes:
    if content is not None:
        delta["content"] = content
    obj = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def parse(*pieces: bytes, headers: dict[str, str] | None = None, status: int = 200) -> Any:
    parser = ResponseParser(secrets=("sk-secret-key",))
    parser.start(status, headers or SSE)
    out: list[str] = []
    for piece in pieces:
        out += parser.feed(piece)
    out += parser.close()
    return out, parser


# -- validation and requests -------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "match"),
    [
        (42, "must be a str or a list"),
        ("", "the prompt is empty"),
        ([], "must not be empty"),
        (["hi"], r"messages\[0\] must be a dict"),
        ([{"role": "wizard", "content": "x"}], "unknown role 'wizard'"),
        ([{"role": "user"}], "has no content"),
        ([{"role": "system", "content": ""}], "has no content"),
        ([{"role": "user", "content": 5}], "content must be a str"),
        ([{"content": "x"}], "unknown role None"),
    ],
)
def test_bad_messages_are_invalid_request_errors(value: object, match: str) -> None:
    with pytest.raises(ylokh.InvalidRequestError, match=match) as info:
        validate_messages(value)
    assert isinstance(info.value, ValueError)


def test_assistant_with_tool_calls_needs_no_content() -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "1"},
    ]
    assert validate_messages(messages) == messages


def test_request_payload_headers_and_none_options() -> None:
    settings = resolve_settings(base_url="http://h:1/v1/", api_key="sk-k", env={})
    request = build_request(
        settings,
        "hi",
        model=None,
        stream=True,
        options={"temperature": 0.2, "max_tokens": None, "tools": [{"x": 1}]},
        env={},
    )
    assert request.url == "http://h:1/v1/chat/completions"
    assert json.loads(request.body) == {
        "model": "gpt-3.5-turbo",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.2,
        "tools": [{"x": 1}],
        "stream": True,
    }
    assert request.headers["Authorization"] == "Bearer sk-k"
    assert request.headers["Accept"] == "text/event-stream"
    assert "Origin" not in request.headers  # only for the Ylokh API itself
    assert "sk-k" not in repr(request) and "sk-k" not in repr(settings)


def test_seed_api_gets_origin_and_referer() -> None:
    settings = resolve_settings(env={})
    request = build_request(settings, "hi", model="", stream=False, options={}, env={})
    assert request.url == "https://chatapi.ylokh.xyz/v1/chat/completions"
    assert request.headers["Origin"] == ylokh.Ylokh.url
    assert request.headers["Referer"].startswith(ylokh.Ylokh.url)
    assert json.loads(request.body)["model"] == "gpt-3.5-turbo"  # empty model falls back


def test_unserialisable_option_is_invalid_request() -> None:
    settings = resolve_settings(env={})
    with pytest.raises(ylokh.InvalidRequestError, match="JSON"):
        build_request(settings, "hi", model="m", stream=True, options={"x": object()}, env={})


# -- the parser --------------------------------------------------------------------------
def test_deltas_finish_reason_and_usage_from_an_empty_choices_chunk() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    body = (
        chunk(role="assistant")
        + chunk("Hel")
        + chunk("")
        + chunk("lo")
        + chunk(finish="stop")
        + b"data: "
        + json.dumps({"choices": [], "usage": usage}).encode()
        + b"\n\ndata: [DONE]\n\n"
    )
    out, parser = parse(body)
    assert out == ["Hel", "lo"]  # role-only and empty deltas yield nothing
    assert (parser.text, parser.finish_reason, parser.usage) == ("Hello", "stop", usage)


def test_every_split_point_gives_the_same_deltas() -> None:
    body = chunk(role="assistant") + chunk("日本") + chunk(" ok", "stop") + b"data: [DONE]\n\n"
    whole, _ = parse(body)
    for cut in range(len(body) + 1):
        assert parse(body[:cut], body[cut:])[0] == whole
    assert parse(*(body[i : i + 1] for i in range(len(body))))[0] == whole


def test_in_stream_error_before_text_is_a_status_error() -> None:
    body = b'data: {"error": {"message": "model overloaded", "code": 503}}\n\n'
    with pytest.raises(ylokh.ServerError, match="model overloaded") as info:
        parse(body)
    assert info.value.status_code == 503
    assert not isinstance(info.value, ylokh.IncompleteStreamError)


def test_in_stream_error_after_text_keeps_the_text() -> None:
    body = chunk("partial ") + b'data: {"error": "boom"}\n\n'
    with pytest.raises(ylokh.ServerError, match="boom") as info:
        parse(body)
    assert isinstance(info.value, ylokh.IncompleteStreamError)
    assert info.value.partial == "partial "  # type: ignore[attr-defined]


def test_chunk_that_is_not_json_quotes_it() -> None:
    with pytest.raises(ylokh.ProtocolError, match="not JSON.*oops"):
        parse(chunk("a") + b'data: {"oops\n\n' + chunk(finish="stop"))


def test_end_without_done_or_finish_after_text_is_incomplete() -> None:
    with pytest.raises(ylokh.IncompleteStreamError) as info:
        parse(chunk("a") + chunk("b"))
    assert info.value.partial == "ab"


def test_cut_off_last_line_is_incomplete_not_a_json_error() -> None:
    with pytest.raises(ylokh.IncompleteStreamError) as info:
        parse(chunk("a") + b'data: {"choices": [{"delta": {"cont')
    assert info.value.partial == "a"


def test_done_without_finish_reason_is_complete() -> None:
    out, parser = parse(chunk("a") + b"data: [DONE]\n\n")
    assert out == ["a"] and parser.finish_reason is None and parser.done


def test_empty_body_is_a_protocol_error() -> None:
    with pytest.raises(ylokh.ProtocolError, match="without sending anything"):
        parse(b"")


def test_html_with_status_200_is_a_protocol_error_quoting_it() -> None:
    page = b"<html><body>Welcome to nginx!</body></html>"
    with pytest.raises(ylokh.ProtocolError, match="web page.*Welcome to nginx"):
        parse(page, headers={"content-type": "text/html"})
    with pytest.raises(ylokh.ProtocolError, match="Welcome to nginx"):
        parse(page, headers={})  # sniffed


def test_json_completion_when_a_stream_was_asked_for() -> None:
    body = json.dumps(
        {
            "choices": [
                {"message": {"role": "assistant", "content": "whole"}, "finish_reason": "stop"}
            ]
        }
    ).encode()
    out, parser = parse(body[:10], body[10:], headers={"content-type": "application/json"})
    assert out == ["whole"] and parser.finish_reason == "stop"


def test_text_that_is_not_an_event_stream() -> None:
    with pytest.raises(ylokh.ProtocolError, match="not an event stream.*hello there"):
        parse(b"hello there\n", headers={"content-type": "text/plain"})


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, ylokh.BadRequestError),
        (401, ylokh.AuthenticationError),
        (403, ylokh.AuthenticationError),
        (404, ylokh.NotFoundError),
        (422, ylokh.BadRequestError),
        (429, ylokh.RateLimitError),
        (500, ylokh.ServerError),
        (503, ylokh.ServerError),
        (418, ylokh.APIStatusError),
    ],
)
def test_status_classes(status: int, cls: type[Exception]) -> None:
    with pytest.raises(cls) as info:
        parse(b'{"error": {"message": "nope"}}', status=status)
    assert info.value.status_code == status  # type: ignore[attr-defined]
    assert "nope" in str(info.value)


@pytest.mark.parametrize(
    "body",
    [
        b'{"error": {"message": "the message", "type": "x"}}',
        b'{"error": "the message"}',
        b'{"message": "the message"}',
        b'{"detail": "the message"}',
        b'{"detail": [{"msg": "the message", "loc": ["body"]}]}',
        b"the message",
        b"<html><h1>502</h1><p>the message</p></html>",
    ],
)
def test_error_message_whatever_its_shape(body: bytes) -> None:
    assert "the message" in error_message(body)


def test_secret_echoed_by_the_server_is_redacted() -> None:
    with pytest.raises(ylokh.AuthenticationError) as info:
        parse(b'{"error": {"message": "bad key sk-secret-key"}}', status=401)
    assert "sk-secret-key" not in str(info.value)
    assert "sk-secret-key" not in info.value.body  # type: ignore[attr-defined]
    assert "***" in str(info.value)


def test_tool_calls_merged_by_index_and_reasoning_apart() -> None:
    body = (
        chunk(reasoning_content="think ")
        + chunk(reasoning_content="hard")
        + chunk(
            tool_calls=[
                {
                    "index": 0,
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "f", "arguments": ""},
                }
            ]
        )
        + chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"a":'}}])
        + chunk(tool_calls=[{"index": 1, "id": "c2", "function": {"name": "g", "arguments": "{}"}}])
        + chunk(tool_calls=[{"index": 0, "function": {"arguments": " 1}"}}])
        + chunk(finish="tool_calls")
    )
    out, parser = parse(body)
    assert out == [] and parser.reasoning == "think hard"
    assert parser.tool_calls == [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
        {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]


def test_events_separated_by_single_newlines() -> None:
    body = (chunk("a") + chunk("b") + chunk(finish="stop")).replace(b"\n\n", b"\n") + b"\n"
    out, parser = parse(body)
    assert out == ["a", "b"] and parser.finish_reason == "stop"


# -- Retry-After -------------------------------------------------------------------------
def test_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "150"}) == 0.15
    assert parse_retry_after({"retry-after": "9999"}) == 60.0  # capped
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    date = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=now.timestamp()) == pytest.approx(30)


def test_vllm_style_error_object_in_the_stream() -> None:
    body = b'data: {"object": "error", "message": "vllm style failure", "code": 400}\n\n'
    with pytest.raises(ylokh.BadRequestError, match="vllm style failure") as info:
        parse(body)
    assert info.value.in_stream and "in its answer" in str(info.value)


def test_event_stream_labelled_as_json() -> None:
    body = chunk("a") + chunk("b", "stop") + b"data: [DONE]\n\n"
    out, parser = parse(body, headers={"content-type": "application/json"})
    assert out == ["a", "b"] and parser.finish_reason == "stop"


def test_a_callers_header_replaces_ours_and_an_earlier_one_in_any_case() -> None:
    client = ylokh.Client(base_url="http://h/v1", headers={"accept-encoding": "gzip", "X-A": "1"})
    settings = client._settings_for({"headers": {"Accept-Encoding": "identity", "x-a": "2"}})
    headers = build_headers(settings, stream=True)
    assert [v for k, v in headers.items() if k.lower() == "accept-encoding"] == ["identity"]
    assert [v for k, v in headers.items() if k.lower() == "x-a"] == ["2"]


@pytest.mark.parametrize(
    ("value", "model"), [("  mx \n", "mx"), ("   ", "gpt-3.5-turbo"), ("", "gpt-3.5-turbo")]
)
def test_ylokh_model_is_stripped_and_a_blank_one_falls_back(value: str, model: str) -> None:
    settings = resolve_settings(base_url="http://h:1/v1", env={})
    request = build_request(
        settings, "hi", model=None, stream=True, options={}, env={"YLOKH_MODEL": value}
    )
    assert json.loads(request.body)["model"] == model
