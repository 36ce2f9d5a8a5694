"""Behaviour of both faces through the public API, on real sockets to the bundled server.

Every test takes ``face`` and runs once for the blocking face and once for the async face.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

import ylokh
from ylokh.testing import Server

if TYPE_CHECKING:
    from conftest import Face


def test_stream_yields_word_deltas_and_exposes_results(face: Face, server: Server) -> None:
    out = face.stream("hello big world", base_url=server.base_url)
    assert out.error is None
    assert out.deltas == ["hello ", "big ", "world"]
    assert out.stream.text == "hello big world"
    assert out.stream.finish_reason == "stop"
    assert out.stream.usage is None  # not asked for
    assert out.stream.tool_calls == [] and out.stream.reasoning == ""
    sent = server.requests[0].json
    assert sent["stream"] is True and sent["model"] == "gpt-3.5-turbo"
    assert sent["messages"] == [{"role": "user", "content": "hello big world"}]


def test_usage_when_the_server_sends_it(face: Face, server: Server) -> None:
    out = face.stream("a b", base_url=server.base_url, stream_options={"include_usage": True})
    assert out.stream.usage["completion_tokens"] == 2
    assert out.stream.usage["total_tokens"] >= 2


def test_complete_returns_the_whole_answer_as_str(face: Face, server: Server) -> None:
    out = face.complete("the whole answer", base_url=server.base_url, max_tokens=2)
    assert out.error is None
    assert isinstance(out.result, str) and out.result == "the whole "
    assert out.result.finish_reason == "length"
    assert out.result.usage["completion_tokens"] == 2
    assert server.requests[0].json["stream"] is False


def test_history_options_and_none_left_out(face: Face, server: Server) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second question"},
    ]
    out = face.stream(
        messages, base_url=server.base_url, model="m1", temperature=0.2, max_tokens=None, seed=7
    )
    assert out.text == "second question"
    sent = server.requests[0].json
    assert sent["messages"] == messages and sent["model"] == "m1"
    assert sent["temperature"] == 0.2 and sent["seed"] == 7 and "max_tokens" not in sent


def test_environment_configures_the_module_functions(
    face: Face, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("YLOKH_BASE_URL", server.base_url)
    monkeypatch.setenv("YLOKH_API_KEY", "sk-from-env")
    monkeypatch.setenv("YLOKH_MODEL", "env-model")
    out = face.stream("from env")
    assert out.text == "from env"
    seen = server.requests[0]
    assert seen.headers["authorization"] == "Bearer sk-from-env"
    assert seen.json["model"] == "env-model"
    out = face.stream("args win", api_key="sk-arg", model="arg-model")
    assert server.requests[1].headers["authorization"] == "Bearer sk-arg"
    assert server.requests[1].json["model"] == "arg-model"


def test_client_settings_and_per_call_overrides(face: Face, server: Server) -> None:
    client = face.client(base_url=server.base_url, api_key="sk-c", headers={"X-App": "t"})
    face.stream("one", client=client, model="cm")
    face.stream("two", client=client, headers={"X-Call": "y"}, api_key="sk-call")
    first, second = server.requests
    assert first.headers["authorization"] == "Bearer sk-c" and first.headers["x-app"] == "t"
    assert second.headers["authorization"] == "Bearer sk-call"
    assert second.headers["x-app"] == "t" and second.headers["x-call"] == "y"


@pytest.mark.parametrize(
    "bad",
    [
        [],
        [{"role": "user"}],
        [{"role": "alien", "content": "x"}],
        [{"role": "user", "content": 3}],
        {"role": "user", "content": "not a list"},
    ],
)
def test_bad_input_fails_before_any_traffic(face: Face, server: Server, bad: Any) -> None:
    with pytest.raises(ylokh.InvalidRequestError):
        face.stream(bad, base_url=server.base_url)
    assert isinstance(face.complete(bad, base_url=server.base_url).error, ylokh.InvalidRequestError)
    with pytest.raises(ylokh.InvalidRequestError):
        face.stream("ok", base_url=server.base_url, timeout=-1)
    assert server.requests == [] and server.connections == 0


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, ylokh.BadRequestError),
        (401, ylokh.AuthenticationError),
        (403, ylokh.AuthenticationError),
        (404, ylokh.NotFoundError),
        (422, ylokh.BadRequestError),
    ],
)
def test_error_statuses_are_not_retried(
    face: Face, server: Server, status: int, cls: type[ylokh.APIStatusError]
) -> None:
    out = face.stream("x", base_url=server.base_url, ylokh_fault=f"status={status}")
    assert type(out.error) is cls
    assert out.error.status_code == status
    assert f"injected error {status}" in str(out.error)
    assert len(server.requests) == 1


@pytest.mark.parametrize("shape", ["openai", "string", "message", "detail", "text", "html"])
def test_server_message_quoted_whatever_its_shape(face: Face, server: Server, shape: str) -> None:
    out = face.complete(
        "x", base_url=server.base_url, ylokh_fault=f"status=400;error-shape={shape}"
    )
    assert isinstance(out.error, ylokh.BadRequestError)
    assert "injected error 400" in out.error.message


def test_api_key_echoed_by_the_server_never_shows(face: Face, server: Server) -> None:
    key = "sk-live-0123456789abcdef"
    out = face.stream(
        "x", base_url=server.base_url, api_key=key, ylokh_fault="status=401;echo-auth"
    )
    assert isinstance(out.error, ylokh.AuthenticationError)
    assert key not in str(out.error) and key not in repr(out.error)
    assert key not in out.error.body and key not in repr(out.stream)


def test_server_enforced_key(face: Face) -> None:
    with Server(api_key="sk-right") as srv:
        out = face.stream("x", base_url=srv.base_url, api_key="sk-wrong")
        assert isinstance(out.error, ylokh.AuthenticationError)
        assert face.stream("fine", base_url=srv.base_url, api_key="sk-right").text == "fine"


def test_retry_then_success(face: Face, server: Server) -> None:
    server.script(["status=503;retry-after-ms=10", "status=429;retry-after-ms=10", None])
    out = face.stream("third time", base_url=server.base_url)
    assert out.error is None and out.text == "third time"
    assert len(server.requests) == 3


def test_max_retries_zero_turns_retries_off(face: Face, server: Server) -> None:
    server.script(["status=503", None])
    out = face.complete("x", base_url=server.base_url, max_retries=0)
    assert isinstance(out.error, ylokh.ServerError) and len(server.requests) == 1


def test_connections_are_pooled_and_reused(face: Face, server: Server) -> None:
    for i in range(5):
        assert face.stream(f"call {i}", base_url=server.base_url).text == f"call {i}"
        assert face.complete(f"whole {i}", base_url=server.base_url).result == f"whole {i}"
    assert server.connections == 1
    client = face.client(base_url=server.base_url)
    for i in range(3):
        face.stream(f"c {i}", client=client)
    assert server.connections == 2


def test_leaving_the_loop_early_closes_the_response(face: Face, server: Server) -> None:
    out = face.stream(
        "one two three four five six",
        base_url=server.base_url,
        stop_after=2,
        ylokh_fault="delay=0.05",
    )
    assert out.deltas == ["one ", "two "] and out.stream.text == "one two "
    assert server.requests[0].disconnected.wait(5), "the server did not see the close"
    assert not server.requests[0].completed
    # the dirty connection is not reused: the next call opens a fresh one
    assert face.stream("again", base_url=server.base_url).text == "again"
    assert server.connections == 2


@pytest.mark.parametrize("framing", ["chunked", "length", "close"])
def test_each_delta_arrives_as_soon_as_its_bytes_do(
    face: Face, server: Server, framing: str
) -> None:
    sending: list[bool] = []  # was the server still sending when each delta reached us?
    out = face.stream(
        "a b c d",
        base_url=server.base_url,
        ylokh_fault=f"framing={framing};delay=0.2",
        on_delta=lambda text: sending.append(not server.requests[-1].completed),
    )
    assert out.error is None and out.text == "a b c d" and out.stream.finish_reason == "stop"
    assert sending[:3] == [True, True, True], "a delta waited for the end of the body"


def test_bundled_server_first_run_via_python(tmp_path: Any) -> None:
    code = (
        "import ylokh\n"
        "from ylokh.testing import Server\n"
        "with Server() as srv:\n"
        "    for t in ylokh.stream('hi there', base_url=srv.base_url):\n"
        "        print(t, end='')\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hi there" and done.stderr == ""


def test_module_async_default_client_closes_with_its_loop() -> None:
    code = (
        "import asyncio, gc, ylokh\n"
        "from ylokh.testing import Server\n"
        "async def main(url):\n"
        "    return [t async for t in ylokh.astream('a b', base_url=url)]\n"
        "with Server() as srv:\n"
        "    print(asyncio.run(main(srv.base_url)), asyncio.run(main(srv.base_url)))\n"
        "    gc.collect()\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-X", "dev", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['a ', 'b'] ['a ', 'b']"
    assert "Unclosed" not in done.stderr and "ResourceWarning" not in done.stderr, done.stderr


def test_json_body_when_stream_was_asked(face: Face, server: Server) -> None:
    out = face.stream("ignored stream", base_url=server.base_url, ylokh_fault="json-stream")
    assert out.error is None and out.deltas == ["ignored stream"]


def test_payload_is_json(server: Server) -> None:
    ylokh.complete("x", base_url=server.base_url, tools=[{"type": "function"}])
    assert json.dumps(server.requests[0].json["tools"]) == '[{"type": "function"}]'


def test_break_without_a_context_manager_closes_the_response(server: Server) -> None:
    """``for t in ylokh.stream(...): break`` frees the stream at once (no reference cycle)."""
    fault = {"ylokh_fault": "delay=0.05"}
    for text in ylokh.stream("a b c d e f g h", base_url=server.base_url, **fault):
        assert text == "a "
        break
    assert server.requests[0].disconnected.wait(5)

    async def main() -> None:
        async for text in ylokh.astream("a b c d e f g h", base_url=server.base_url, **fault):
            assert text == "a "
            break
        await asyncio.sleep(0)  # the loop closes a dropped async generator on its next turn
        await asyncio.sleep(0)

    asyncio.run(main())
    assert server.requests[1].disconnected.wait(5)


@pytest.mark.parametrize("how", ["break", "raise"])
def test_leaving_a_loop_closes_the_response_while_the_stream_is_held(
    face: Face, server: Server, how: str
) -> None:
    held = face.leave_loop(
        "a b c d e f g h", how, base_url=server.base_url, ylokh_fault="delay=0.05"
    )
    assert held.text == "a "
    assert server.requests[0].disconnected.wait(5), "the response stayed open"
    assert not server.requests[0].completed


def test_a_streams_repr_says_closed_after_break_and_complete_at_the_end(
    face: Any, server: Server
) -> None:
    if face.name == "sync":
        held = face.leave_loop("one two three", "break", base_url=server.base_url)
        assert " closed," in repr(held)
    broken = face.stream("one two three", base_url=server.base_url, stop_after=1)
    assert " closed," in repr(broken.stream)  # the face's ``with`` closed it
    done = face.stream("one two", base_url=server.base_url)
    assert " complete," in repr(done.stream)
    assert " open," in repr(ylokh.stream("not sent yet", base_url=server.base_url))


def test_a_streams_repr_says_open_while_it_is_read(face: Any, server: Server) -> None:
    seen: list[str] = []
    if face.name == "sync":
        stream = ylokh.stream("one two", base_url=server.base_url)
        for _ in stream:
            seen.append(repr(stream))
    else:

        async def read() -> None:
            stream = ylokh.astream("one two", base_url=server.base_url)
            async for _ in stream:
                seen.append(repr(stream))

        face.run(read())
    assert seen and all(" open," in r for r in seen), seen


def test_a_finished_answer_leaves_no_reference_cycle(face: Face, server: Server) -> None:
    """A call's objects go when the caller drops them, not at the next garbage collection:
    a collector pass over a busy process pauses every stream in it (``ylokh bench``
    pauses the collector for a level, which is safe only because of this)."""
    import gc

    client = face.client(base_url=server.base_url)
    assert face.stream("warm up", client=client).error is None  # the connection is open
    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            out = face.stream(
                "one two three", client=client, stream_options={"include_usage": True}
            )
            assert out.error is None and out.stream.stats.output_tokens == 3
            del out
        found = gc.collect()
    finally:
        gc.enable()
    assert found == 0
