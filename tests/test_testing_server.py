"""Tests for ``ylokh.testing``: the server's bytes on the wire, checked with raw sockets.

The ylokh client is deliberately not used here: the server is the independent reference the
client is tested against, so it is checked with ``socket``, ``http.client`` and aiohttp.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import socket
import ssl
import threading
import time
from typing import Any

import aiohttp
import pytest

from ylokh.testing import FAULT_HEADER, Fault, RecordedRequest, Server, make_app, split_words
from ylokh.testing.__main__ import main

pytest_plugins = ["ylokh.testing.pytest_plugin"]

CHAT = "/v1/chat/completions"


def chat_payload(text: str = "hello big world", **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **extra}


def request(
    srv: Server,
    payload: Any = None,
    headers: dict[str, str] | None = None,
    *,
    method: str = "POST",
    path: str = CHAT,
    fault: str | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request on a fresh connection; returns status, headers and the whole body."""
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=5)
    try:
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if fault is not None:
            all_headers[FAULT_HEADER] = fault
        body = None if payload is None else json.dumps(payload).encode()
        conn.request(method, path, body=body, headers=all_headers)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def stream(srv: Server, fault: str | None = None, **extra: Any) -> bytes:
    status, _, body = request(srv, chat_payload(stream=True, **extra), fault=fault)
    assert status == 200
    return body


def raw_http(srv: Server, fault: str, payload: Any = None, version: str = "1.1") -> list[bytes]:
    """Send a request over a bare socket and return every recv() result until EOF."""
    body = json.dumps(payload if payload is not None else chat_payload(stream=True)).encode()
    head = (
        f"POST {CHAT} HTTP/{version}\r\nHost: {srv.host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{FAULT_HEADER}: {fault}\r\nConnection: close\r\n\r\n"
    )
    reads: list[bytes] = []
    with socket.create_connection((srv.host, srv.port), timeout=5) as sock:
        sock.sendall(head.encode() + body)
        read_until_eof(sock, reads)
    return reads


def read_until_eof(sock: socket.socket, reads: list[bytes]) -> None:
    while data := sock.recv(65536):
        reads.append(data)


def split_head(raw: bytes) -> tuple[str, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.decode(), body


def data_lines(body: bytes) -> list[str]:
    return [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]


def events(body: bytes) -> list[Any]:
    """The JSON payloads of a well-formed LF stream, with [DONE] kept as a string."""
    return [d if d == "[DONE]" else json.loads(d) for d in data_lines(body)]


def contents(evts: list[Any]) -> list[str]:
    out = []
    for evt in evts:
        if isinstance(evt, dict) and evt.get("choices"):
            content = evt["choices"][0]["delta"].get("content")
            if isinstance(content, str):
                out.append(content)
    return out


def wait_for(predicate: Any, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


@pytest.fixture
def srv() -> Any:
    with Server() as server:
        yield server


# --- answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("hello big world", ["hello ", "big ", "world"]),
        ("  lead  and trail  ", ["  ", "lead  ", "and ", "trail  "]),
        ("line one\nline two\n", ["line ", "one\n", "line ", "two\n"]),
        ("日本語 テキスト🙂 ok", ["日本語 ", "テキスト🙂 ", "ok"]),
        ("x", ["x"]),
    ],
)
def test_split_words_keeps_whitespace_with_the_preceding_word(text: str, pieces: list[str]) -> None:
    assert split_words(text) == pieces
    assert "".join(split_words(text)) == text


def test_stream_shape(srv: Server) -> None:
    status, headers, body = request(srv, chat_payload(stream=True))
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream"
    assert headers["Transfer-Encoding"] == "chunked"
    assert body.endswith(b"data: [DONE]\n\n")
    evts = events(body)
    first, *middle, finish, done = evts
    assert first["object"] == "chat.completion.chunk"
    assert first["id"].startswith("chatcmpl-")
    assert first["model"] == "m"
    assert isinstance(first["created"], int)
    assert first["choices"] == [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]
    assert [e["choices"][0]["delta"] for e in middle] == [
        {"content": "hello "},
        {"content": "big "},
        {"content": "world"},
    ]
    assert all(e["choices"][0]["finish_reason"] is None for e in middle)
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert done == "[DONE]"
    assert {e["id"] for e in evts[:-1]} == {first["id"]}


def test_stream_echoes_multibyte_and_newlines_exactly(srv: Server) -> None:
    text = "Grüße,\n世界! 🙂\r\n  done"
    assert (
        "".join(contents(events(stream(srv, messages=[{"role": "user", "content": text}])))) == text
    )


def test_stream_usage_when_asked(srv: Server) -> None:
    evts = events(stream(srv, stream_options={"include_usage": True}))
    usage = evts[-2]
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert "usage" not in json.dumps(events(stream(srv)))


def test_non_stream_shape(srv: Server) -> None:
    status, headers, body = request(srv, chat_payload())
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert int(headers["Content-Length"]) == len(body)
    data = json.loads(body)
    assert data["object"] == "chat.completion"
    assert data["id"].startswith("chatcmpl-")
    assert data["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hello big world"},
            "finish_reason": "stop",
        }
    ]
    assert data["usage"]["completion_tokens"] == 3


def test_answer_is_the_last_user_message_or_a_greeting(srv: Server) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "second "}, {"type": "text", "text": "one"}],
        },
    ]
    _, _, body = request(srv, {"messages": messages})
    assert json.loads(body)["choices"][0]["message"]["content"] == "second one"
    _, _, body = request(srv, {"messages": [{"role": "system", "content": "x"}]})
    assert json.loads(body)["choices"][0]["message"]["content"] == "Hello from ylokh."
    assert json.loads(body)["model"] == "ylokh-echo"


def test_max_tokens_cuts_and_says_length(srv: Server) -> None:
    evts = events(stream(srv, max_tokens=2))
    assert contents(evts) == ["hello ", "big "]
    assert evts[-2]["choices"][0]["finish_reason"] == "length"
    _, _, body = request(srv, chat_payload(max_tokens=1))
    data = json.loads(body)
    assert data["choices"][0]["message"]["content"] == "hello "
    assert data["choices"][0]["finish_reason"] == "length"


def test_chunks_option_gives_exactly_n_chunks() -> None:
    with Server(chunks=7) as srv:
        pieces = contents(events(stream(srv)))
        assert len(pieces) == 7
        assert pieces[:4] == ["hello ", "big ", "world ", "hello "]
        assert len(contents(events(stream(srv, fault="chunks=2")))) == 2


def test_models(srv: Server) -> None:
    status, _, body = request(srv, method="GET", path="/v1/models")
    assert status == 200
    assert json.loads(body) == {
        "object": "list",
        "data": [{"id": "ylokh-echo", "object": "model", "created": 0, "owned_by": "ylokh"}],
    }


def test_invalid_json_is_a_400_with_an_openai_error(srv: Server) -> None:
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=5)
    conn.request("POST", CHAT, body=b"{not json", headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    error = json.loads(resp.read())["error"]
    conn.close()
    assert resp.status == 400
    assert error["type"] == "invalid_request_error"
    assert error["param"] is None
    assert error["code"] is None
    assert "JSON" in error["message"]


def test_unknown_path_is_a_404_json_error(srv: Server) -> None:
    status, _, body = request(srv, method="GET", path="/v1/nope")
    assert status == 404
    assert "error" in json.loads(body)


# --- error statuses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "content_type", "check"),
    [
        ("openai", "application/json", lambda b: json.loads(b)["error"]["message"]),
        ("string", "application/json", lambda b: json.loads(b)["error"]),
        ("message", "application/json", lambda b: json.loads(b)["message"]),
        ("detail", "application/json", lambda b: json.loads(b)["detail"]),
        ("text", "text/plain", lambda b: b.decode()),
        ("html", "text/html", lambda b: b.decode()),
    ],
)
def test_status_fault_body_shapes(srv: Server, shape: str, content_type: str, check: Any) -> None:
    status, headers, body = request(
        srv, chat_payload(stream=True), fault=f"status=503;error-shape={shape}"
    )
    assert status == 503
    assert headers["Content-Type"].startswith(content_type)
    assert "injected error 503" in check(body)


def test_openai_error_shape_details(srv: Server) -> None:
    _, _, body = request(srv, chat_payload(), fault="status=429")
    assert json.loads(body) == {
        "error": {
            "message": "injected error 429",
            "type": "rate_limit_error",
            "param": None,
            "code": 429,
        }
    }


def test_retry_headers_and_custom_headers(srv: Server) -> None:
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    fault = f"status=429;retry-after={date};retry-after-ms=250;header=X-One:1;header=X-Two: two"
    status, headers, _ = request(srv, chat_payload(), fault=fault)
    assert status == 429
    assert headers["Retry-After"] == date
    assert headers["retry-after-ms"] == "250"
    assert headers["X-One"] == "1"
    assert headers["X-Two"] == "two"
    _, headers, _ = request(srv, chat_payload(), fault="header=X-A:1;header=X-A:2")
    assert headers.get_all("X-A") == ["1", "2"]
    _, headers, _ = request(srv, chat_payload(), fault="header=Content-Type:text/plain")
    assert headers.get_all("Content-Type") == ["text/plain"]


def test_echo_auth_puts_the_secret_in_the_message(srv: Server) -> None:
    headers = {"Authorization": "Bearer sk-secret-123"}
    _, _, body = request(srv, chat_payload(), headers, fault="status=401;echo-auth")
    assert "sk-secret-123" in json.loads(body)["error"]["message"]


def test_api_key_is_enforced() -> None:
    with Server(api_key="sk-test") as srv:
        status, _, body = request(srv, chat_payload())
        assert status == 401
        assert json.loads(body)["error"]["code"] == "invalid_api_key"
        status, _, _ = request(srv, chat_payload(), {"Authorization": "Bearer wrong"})
        assert status == 401
        status, _, body = request(srv, chat_payload(), {"Authorization": "Bearer sk-test"})
        assert status == 200
        assert json.loads(body)["choices"][0]["message"]["content"] == "hello big world"


# --- fault selection -------------------------------------------------------------------------


def test_fault_parse() -> None:
    fault = Fault.parse(" status=503 ; retry-after=1;header=A:b;crlf;stall-after=2,0.5 ")
    assert fault.status == 503
    assert fault.retry_after == "1"
    assert fault.headers == (("A", "b"),)
    assert fault.eol == "\r\n"
    assert (fault.stall_after, fault.stall) == (2, 0.5)
    assert not fault.stalls_before_headers
    assert str(fault) == "status=503 ; retry-after=1;header=A:b;crlf;stall-after=2,0.5"
    assert Fault.parse("stall").stall_seconds == 60.0
    assert Fault.parse("stall").stalls_before_headers
    assert Fault.parse(None) == Fault.parse("") == Fault()
    assert Fault.parse("eol=cr").eol == "\r"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("bogus", "unknown fault item 'bogus'"),
        ("status=abc", "whole number"),
        ("status=99", "HTTP status"),
        ("framing=weird", "one of chunked"),
        ("reset=1", "takes no value"),
        ("header=novalue", "Name:Value"),
        ("stall=-1", "negative"),
    ],
)
def test_fault_parse_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Fault.parse(spec)


def test_bad_fault_header_is_a_400(srv: Server) -> None:
    status, _, body = request(srv, chat_payload(), fault="nonsense")
    assert status == 400
    assert "nonsense" in json.loads(body)["error"]["message"]


def test_script_then_default() -> None:
    with Server(fault="status=418") as srv:
        srv.script(["status=500", "status=503", None])
        statuses = [request(srv, chat_payload())[0] for _ in range(5)]
        assert statuses == [500, 503, 200, 418, 418]
        assert [r.fault for r in srv.requests] == [
            "status=500",
            "status=503",
            None,
            "status=418",
            "status=418",
        ]
        with pytest.raises(ValueError, match="unknown"):
            srv.script(["nope"])


def test_precedence_header_payload_script_default() -> None:
    with Server(fault="status=401") as srv:
        srv.script(["status=402", "status=402"])
        payload = chat_payload(ylokh_fault="status=403")
        assert request(srv, payload, fault="status=404")[0] == 404
        assert request(srv, payload)[0] == 403
        assert request(srv, chat_payload())[0] == 402  # header and payload used no script item
        assert request(srv, chat_payload())[0] == 402
        assert request(srv, chat_payload())[0] == 401


# --- connection faults -----------------------------------------------------------------------


def test_reset_before_headers(srv: Server) -> None:
    with pytest.raises(ConnectionResetError):
        raw_http(srv, "reset")
    assert srv.requests[0].fault == "reset"
    assert not srv.requests[0].completed


def test_stall_before_headers_then_answers(srv: Server) -> None:
    start = time.monotonic()
    body = stream(srv, fault="stall=0.2")
    assert time.monotonic() - start >= 0.2
    assert body.endswith(b"data: [DONE]\n\n")


def test_stall_ends_when_the_client_leaves(srv: Server) -> None:
    sock = socket.create_connection((srv.host, srv.port))
    body = json.dumps(chat_payload(stream=True)).encode()
    sock.sendall(
        f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        f"{FAULT_HEADER}: stall\r\n\r\n".encode()
        + body
    )
    assert wait_for(lambda: len(srv.requests) == 1)
    sock.close()
    rec = srv.requests[0]
    assert rec.disconnected.wait(1.0)
    assert not rec.completed


def test_stop_ends_a_long_stall_quickly() -> None:
    srv = Server(fault="stall=60").start()
    sock = socket.create_connection((srv.host, srv.port))
    try:
        sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}".encode())
        assert wait_for(lambda: len(srv.requests) == 1)
        start = time.monotonic()
        srv.stop()
        assert time.monotonic() - start < 1.0
    finally:
        sock.close()


@pytest.mark.asyncio
async def test_stall_after_sends_k_chunks_first() -> None:
    async with Server() as srv, aiohttp.ClientSession() as session:
        headers = {FAULT_HEADER: "stall-after=1;stall=0.3"}
        start = time.monotonic()
        async with session.post(
            srv.base_url + "/chat/completions", json=chat_payload(stream=True), headers=headers
        ) as resp:
            seen: list[tuple[float, bytes]] = []
            async for data in resp.content.iter_any():
                seen.append((time.monotonic() - start, data))
        body = b"".join(d for _, d in seen)
        before = b"".join(d for t, d in seen if t < 0.25)
        assert b'"hello "' in before
        assert b'"big "' not in before
        assert body.endswith(b"data: [DONE]\n\n")


def test_truncate_after_ends_cleanly_without_done(srv: Server) -> None:
    status, _, body = request(srv, chat_payload(stream=True), fault="truncate-after=2")
    assert status == 200
    evts = events(body)
    assert contents(evts) == ["hello ", "big "]
    assert "[DONE]" not in evts
    assert all(e["choices"][0]["finish_reason"] is None for e in evts)
    rec = srv.requests[0]
    assert wait_for(lambda: rec.completed)


def test_truncate_after_with_chunked_terminator(srv: Server) -> None:
    raw = b"".join(raw_http(srv, "truncate-after=1"))
    assert raw.endswith(b"\r\n0\r\n\r\n")


def test_reset_after_k_chunks(srv: Server) -> None:
    reads: list[bytes] = []
    body = json.dumps(chat_payload(stream=True)).encode()
    with socket.create_connection((srv.host, srv.port), timeout=5) as sock:
        sock.sendall(
            f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"{FAULT_HEADER}: reset-after=1\r\n\r\n".encode()
            + body
        )
        with pytest.raises(ConnectionResetError):
            read_until_eof(sock, reads)
    received = b"".join(reads)
    assert b'"hello "' in received
    assert b'"big "' not in received


def test_truncate_non_stream_sends_less_than_content_length(srv: Server) -> None:
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=5)
    conn.request("POST", CHAT, body=json.dumps(chat_payload()), headers={FAULT_HEADER: "truncate"})
    resp = conn.getresponse()
    length = int(resp.headers["Content-Length"])
    with pytest.raises(http.client.IncompleteRead) as info:
        resp.read()
    conn.close()
    assert 0 < len(info.value.partial) < length


def test_malformed_non_stream(srv: Server) -> None:
    status, _, body = request(srv, chat_payload(), fault="malformed")
    assert status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)


def test_malformed_after_then_continues(srv: Server) -> None:
    lines = data_lines(stream(srv, fault="malformed-after=1"))
    assert lines[2] == '{"choices": [{"delta": {"content": "oops"'
    assert json.loads(lines[1])["choices"][0]["delta"] == {"content": "hello "}
    assert json.loads(lines[3])["choices"][0]["delta"] == {"content": "big "}
    assert lines[-1] == "[DONE]"


def test_error_after(srv: Server) -> None:
    evts = events(stream(srv, fault="error-after=1"))
    assert contents(evts) == ["hello "]
    assert evts[-2] == {
        "error": {"message": "injected in-stream error", "type": "server_error", "code": 500}
    }
    assert evts[-1] == "[DONE]"


def test_html_and_empty_and_json_stream(srv: Server) -> None:
    status, headers, body = request(srv, chat_payload(stream=True), fault="html")
    assert (status, headers["Content-Type"].split(";")[0]) == (200, "text/html")
    assert body.lstrip().startswith(b"<!DOCTYPE html>")
    status, headers, body = request(srv, chat_payload(stream=True), fault="empty")
    assert (status, headers["Content-Type"], body) == (200, "text/event-stream", b"")
    status, headers, body = request(srv, chat_payload(stream=True), fault="json-stream")
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body)["choices"][0]["message"]["content"] == "hello big world"


# --- wire encoding ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "eol"), [("crlf", b"\r\n"), ("eol=crlf", b"\r\n"), ("eol=cr", b"\r")]
)
def test_line_endings(srv: Server, spec: str, eol: bytes) -> None:
    body = stream(srv, fault=spec)
    assert body.endswith(b"data: [DONE]" + eol + eol)
    assert body.count(eol + eol) == 6
    if eol == b"\r":
        assert b"\n" not in body


def test_comments_fields_no_space_bom(srv: Server) -> None:
    body = stream(srv, fault="comments;fields;no-space;bom")
    assert body.startswith(b"\xef\xbb\xbfevent: message\nid: 0\nretry: 1000\ndata:{")
    assert b"\n\n: ping\n\nevent: message\nid: 1\n" in body
    assert body.endswith(b"data:[DONE]\n\n")


def test_single_newline(srv: Server) -> None:
    body = stream(srv, fault="single-newline")
    assert b"\n\n" not in body
    assert body.count(b"\ndata: ") == 5


def test_split_utf8_arrives_in_pieces(srv: Server) -> None:
    reads = raw_http(srv, "split-utf8;framing=close")
    _, body = split_head(b"".join(reads))
    text = body.decode()
    assert "日本" in text
    pieces = contents(events(body))
    assert "".join(pieces) == "hello big world 日本"
    # Some read ends inside a multi-byte character.
    broken = 0
    for data in reads:
        try:
            data.decode()
        except UnicodeDecodeError:
            broken += 1
    assert broken >= 1


def test_split_utf8_keeps_existing_multibyte_text(srv: Server) -> None:
    body = stream(srv, fault="split-utf8", messages=[{"role": "user", "content": "café au lait"}])
    assert "".join(contents(events(body))) == "café au lait"


def test_long_line(srv: Server) -> None:
    body = stream(srv, fault="long-line=5000")
    first = body.split(b"\n")[0]
    assert len(first) == 5000
    assert json.loads(first[6:])["choices"][0]["delta"]["role"] == "assistant"


def test_gzip_decodes(srv: Server) -> None:
    _, headers, body = request(srv, chat_payload(stream=True), fault="gzip")
    assert headers["Content-Encoding"] == "gzip"
    assert body.count(b"\x00\x00\xff\xff") >= 6  # a sync flush after every event
    decoded = gzip.decompress(body)
    assert contents(events(decoded)) == ["hello ", "big ", "world"]
    _, headers, body = request(srv, chat_payload(), fault="gzip")
    assert (
        json.loads(gzip.decompress(body))["choices"][0]["message"]["content"] == "hello big world"
    )


def test_framing_length_and_close(srv: Server) -> None:
    head, body = split_head(b"".join(raw_http(srv, "framing=length")))
    assert "Content-Length:" in head
    assert "Transfer-Encoding" not in head
    assert body.endswith(b"data: [DONE]\n\n")
    head, body = split_head(b"".join(raw_http(srv, "framing=close")))
    assert "Content-Length" not in head
    assert "Transfer-Encoding" not in head
    assert "Connection: close" in head
    assert body.endswith(b"data: [DONE]\n\n")
    head, body = split_head(b"".join(raw_http(srv, "framing=chunked", version="1.0")))
    assert "Transfer-Encoding" not in head


@pytest.mark.asyncio
@pytest.mark.parametrize("framing", ["chunked", "length", "close"])
async def test_every_framing_delivers_events_as_produced(framing: str) -> None:
    async with Server(delay=0.08) as srv, aiohttp.ClientSession() as session:
        headers = {FAULT_HEADER: f"framing={framing}"}
        start = time.monotonic()
        url = srv.base_url + "/chat/completions"
        async with session.post(url, json=chat_payload(stream=True), headers=headers) as resp:
            first_content = None
            async for data in resp.content.iter_any():
                if first_content is None and b'"hello "' in data:
                    first_content = time.monotonic() - start
            total = time.monotonic() - start
        assert first_content is not None
        assert total - first_content > 0.2  # 4 more events with 80 ms between them


def test_slow_dribbles_bytes(srv: Server) -> None:
    reads = raw_http(srv, "slow=0.002;framing=close", payload=chat_payload())
    assert len(reads) > 10
    _, body = split_head(b"".join(reads))
    assert json.loads(body)["choices"][0]["message"]["content"] == "hello big world"


# --- protocol quirks -------------------------------------------------------------------------


def test_usage_chunk_no_role_no_done_no_finish(srv: Server) -> None:
    evts = events(stream(srv, fault="usage-chunk;no-role"))
    assert evts[0]["choices"][0]["delta"] == {"content": "hello "}
    assert evts[-2]["choices"] == []
    assert "usage" in evts[-2]
    evts = events(stream(srv, fault="no-done"))
    assert evts[-1]["choices"][0]["finish_reason"] == "stop"
    evts = events(stream(srv, fault="no-finish"))
    assert evts[-1] == "[DONE]"
    assert all(e["choices"][0]["finish_reason"] is None for e in evts[:-1])


def test_null_content_and_extra_fields(srv: Server) -> None:
    evts = events(stream(srv, fault="null-content;extra-fields"))
    deltas = [e["choices"][0]["delta"] for e in evts[:-1]]
    assert {"content": None} in deltas
    assert contents(evts) == ["hello ", "big ", "world"]
    assert all("system_fingerprint" in e and "logprobs" in e["choices"][0] for e in evts[:-1])


def test_reasoning(srv: Server) -> None:
    evts = events(stream(srv, fault="reasoning"))
    thinking = [e["choices"][0]["delta"].get("reasoning_content") for e in evts[:-1]]
    assert "".join(t for t in thinking if t) == "Let me think. "
    assert contents(evts) == ["hello ", "big ", "world"]
    _, _, body = request(srv, chat_payload(), fault="reasoning")
    assert json.loads(body)["choices"][0]["message"]["reasoning_content"] == "Let me think. "


def test_tools(srv: Server) -> None:
    evts = events(stream(srv, fault="tools"))
    calls = [e["choices"][0]["delta"]["tool_calls"][0] for e in evts[1:5]]
    assert calls[0] == {
        "index": 0,
        "id": "call_ylokh_0",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert all(set(c) == {"index", "function"} for c in calls[1:])
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {"city": "Paris"}
    assert evts[5]["choices"][0]["finish_reason"] == "tool_calls"
    _, _, body = request(srv, chat_payload(), fault="tools")
    choice = json.loads(body)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


# --- recording and connections ---------------------------------------------------------------


def test_recording(srv: Server) -> None:
    payload = chat_payload(stream=True)
    request(srv, payload, {"X-Custom": "Yes"}, fault="comments")
    (rec,) = srv.requests
    assert isinstance(rec, RecordedRequest)
    assert (rec.method, rec.path, rec.json, rec.fault) == ("POST", CHAT, payload, "comments")
    assert rec.headers["x-custom"] == "Yes"
    assert wait_for(lambda: rec.completed)
    assert not rec.disconnected.is_set()


@pytest.mark.parametrize("options", [{"delay": 0.1}, {"ttft": 0.05, "itl": 0.1}])
def test_disconnect_during_slow_stream_is_noticed(options: dict[str, float]) -> None:
    with Server(**options) as srv:  # type: ignore[arg-type]
        conn = http.client.HTTPConnection(srv.host, srv.port, timeout=5)
        conn.request("POST", CHAT, body=json.dumps(chat_payload("a b c d e f g h", stream=True)))
        resp = conn.getresponse()
        assert resp.status == 200
        resp.read1(100)
        conn.close()
        resp.close()
        rec = srv.requests[0]
        assert rec.disconnected.wait(1.0)
        assert not rec.completed


def test_connections_count_keep_alive_reuse(srv: Server) -> None:
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=5)
    for _ in range(3):
        conn.request("POST", CHAT, body=json.dumps(chat_payload(stream=True)))
        resp = conn.getresponse()
        resp.read()
    conn.close()
    assert srv.connections == 1
    request(srv, chat_payload())
    assert srv.connections == 2
    assert len(srv.requests) == 4
    srv.reset()
    assert (srv.connections, srv.requests) == (0, [])


def test_framing_close_closes_the_connection(srv: Server) -> None:
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=5)
    for _ in range(2):
        conn.request(
            "POST",
            CHAT,
            body=json.dumps(chat_payload(stream=True)),
            headers={FAULT_HEADER: "framing=close"},
        )
        conn.getresponse().read()
    conn.close()
    assert srv.connections == 2


# --- lifecycle, async use, load --------------------------------------------------------------


def test_server_addresses() -> None:
    srv = Server(model="other")
    with srv:
        assert srv.port > 0
        assert srv.base_url == f"http://127.0.0.1:{srv.port}/v1"
        assert (
            json.loads(request(srv, method="GET", path="/v1/models")[2])["data"][0]["id"] == "other"
        )
    srv.stop()  # idempotent
    threading_names = [t.name for t in threading.enumerate()]
    assert "ylokh-test-server" not in threading_names


@pytest.mark.asyncio
async def test_many_concurrent_streams() -> None:
    async with Server(chunks=20) as srv:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one() -> int:
                async with session.post(
                    srv.base_url + "/chat/completions", json=chat_payload(stream=True)
                ) as resp:
                    return len(contents(events(await resp.read())))

            counts = await asyncio.gather(*(one() for _ in range(200)))
        assert counts == [20] * 200


def test_tls() -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    with Server(ssl=server_context) as srv:
        assert srv.base_url == f"https://127.0.0.1:{srv.port}/v1"
        conn = http.client.HTTPSConnection(srv.host, srv.port, context=client_context, timeout=5)
        conn.request("POST", CHAT, body=json.dumps(chat_payload(stream=True)))
        body = conn.getresponse().read()
        conn.request("POST", CHAT, body=json.dumps(chat_payload()), headers={FAULT_HEADER: "reset"})
        with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected, ssl.SSLError)):
            conn.getresponse()
        conn.close()
        assert contents(events(body)) == ["hello ", "big ", "world"]


def test_make_app_returns_an_application() -> None:
    from aiohttp import web

    assert isinstance(make_app(fault="status=500"), web.Application)
    with pytest.raises(ValueError, match="unknown fault item"):
        make_app(fault="wat")


def test_main_rejects_a_bad_fault(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--fault", "wat"])
    assert info.value.code == 2
    assert "unknown fault item" in capsys.readouterr().err


def test_pytest_plugin_fixture(ylokh_server: Server) -> None:
    assert json.loads(request(ylokh_server, chat_payload())[2])["choices"][0]["message"]["content"]


@pytest.mark.parametrize("extra", [{}, {"stream_options": {"include_usage": True}}])
def test_a_timed_answer_is_the_same_body_as_an_untimed_one(extra: dict[str, Any]) -> None:
    """Known latencies (played chunk by chunk from timers) change when the bytes go out,
    not what they are: the same events in valid chunked framing, each content chunk
    arriving no earlier than it is due."""

    def events(body: bytes) -> list[Any]:
        out = []
        for block in body.decode().split("\n\n"):
            if block.startswith("data: ") and block != "data: [DONE]":
                chunk = json.loads(block[6:])
                del chunk["id"], chunk["created"]
                out.append(chunk)
        return out

    payload = json.dumps(chat_payload("a b c d", stream=True, **extra))
    with Server() as srv:
        status, _, plain = request(srv, json.loads(payload))
        assert status == 200
    with Server(ttft=0.1, itl=0.03) as srv:
        conn = http.client.HTTPConnection(srv.host, srv.port, timeout=5)
        start = time.monotonic()
        conn.request("POST", CHAT, body=payload)
        resp = conn.getresponse()
        assert resp.getheader("Transfer-Encoding") == "chunked"
        timed, arrivals = b"", []
        while data := resp.read1(65536):
            timed += data
            arrivals += [time.monotonic() - start] * data.count(b'"content"')
        conn.close()
    assert events(timed) == events(plain)
    assert timed.endswith(b"data: [DONE]\n\n")
    due = [0.1 + k * 0.03 for k in range(4)]
    content = arrivals[-4:]  # the role chunk carries no content key; these are the words
    assert all(t >= d - 0.005 for t, d in zip(content, due, strict=True))
    assert content[-1] < 2.0  # no lost timer: the answer ends
