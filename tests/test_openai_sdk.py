"""The bundled server, held to the official ``openai`` client: a faithful stand-in.

The SDK runs with ``_strict_response_validation=True``, so every body the server sends must
match the SDK's own response models, not merely parse.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from ylokh.testing import FAULT_HEADER, Server

openai = pytest.importorskip("openai")

PROMPT = "Hello big world, from the SDK"
MESSAGES = [{"role": "user", "content": PROMPT}]


@pytest.fixture
def srv() -> Iterator[Server]:
    with Server() as server:
        yield server


def client(srv: Server, **options: Any) -> Any:
    options.setdefault("max_retries", 0)
    return openai.OpenAI(
        base_url=srv.base_url, api_key="sk-test", _strict_response_validation=True, **options
    )


def aclient(srv: Server, **options: Any) -> Any:
    options.setdefault("max_retries", 0)
    return openai.AsyncOpenAI(
        base_url=srv.base_url, api_key="sk-test", _strict_response_validation=True, **options
    )


def fault(spec: str) -> dict[str, Any]:
    return {"extra_headers": {FAULT_HEADER: spec}}


# -- success paths ---------------------------------------------------------------------------
def test_non_stream(srv: Server) -> None:
    with client(srv) as sdk:
        completion = sdk.chat.completions.create(model="m", messages=MESSAGES)
    assert completion.object == "chat.completion"
    assert completion.model == "m"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == PROMPT
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 6
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 6
    assert srv.requests[0].json["messages"] == MESSAGES
    assert srv.requests[0].headers["authorization"] == "Bearer sk-test"


def test_stream(srv: Server) -> None:
    with client(srv) as sdk:
        stream = sdk.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == PROMPT
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert all(c.usage is None for c in chunks)


def test_stream_with_usage(srv: Server) -> None:
    with client(srv) as sdk:
        stream = sdk.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 6


def test_stream_max_tokens_says_length(srv: Server) -> None:
    with client(srv) as sdk:
        chunks = list(
            sdk.chat.completions.create(model="m", messages=MESSAGES, stream=True, max_tokens=2)
        )
        completion = sdk.chat.completions.create(model="m", messages=MESSAGES, max_tokens=2)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello big "
    assert chunks[-1].choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "Hello big "
    assert completion.choices[0].finish_reason == "length"


def test_stream_helper_accumulates_the_final_completion(srv: Server) -> None:
    with client(srv) as sdk, sdk.chat.completions.stream(model="m", messages=MESSAGES) as stream:
        texts = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert "".join(texts) == PROMPT
    assert final.choices[0].message.content == PROMPT
    assert final.choices[0].finish_reason == "stop"


def test_tool_calls_stream_and_not(srv: Server) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    with client(srv) as sdk:
        completion = sdk.chat.completions.create(
            model="m", messages=MESSAGES, tools=tools, **fault("tools")
        )
        with sdk.chat.completions.stream(
            model="m", messages=MESSAGES, tools=tools, **fault("tools")
        ) as stream:
            for _ in stream:
                pass
            final = stream.get_final_completion()
    for message in (completion.choices[0].message, final.choices[0].message):
        assert message.content is None
        (call,) = message.tool_calls
        assert call.id == "call_ylokh_0"
        assert call.type == "function"
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert completion.choices[0].finish_reason == "tool_calls"
    assert final.choices[0].finish_reason == "tool_calls"


def test_reasoning_and_extra_fields_pass_validation(srv: Server) -> None:
    with client(srv) as sdk:
        chunks = list(
            sdk.chat.completions.create(
                model="m", messages=MESSAGES, stream=True, **fault("reasoning;extra-fields")
            )
        )
        completion = sdk.chat.completions.create(
            model="m", messages=MESSAGES, **fault("reasoning;extra-fields")
        )
    thinking = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks
    )
    assert thinking == "Let me think. "
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == PROMPT
    assert chunks[0].system_fingerprint == "fp_ylokh"
    assert completion.choices[0].message.content == PROMPT
    assert (completion.choices[0].message.model_extra or {})["reasoning_content"] == (
        "Let me think. "
    )


def test_models_list(srv: Server) -> None:
    with client(srv) as sdk:
        models = sdk.models.list()
    assert [m.id for m in models] == ["ylokh-echo"]


def test_async_stream_and_not(srv: Server) -> None:
    async def go() -> tuple[str, str, str | None]:
        async with aclient(srv) as sdk:
            completion = await sdk.chat.completions.create(model="m", messages=MESSAGES)
            stream = await sdk.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            parts: list[str] = []
            reason = None
            async for chunk in stream:
                parts.append(chunk.choices[0].delta.content or "")
                reason = chunk.choices[0].finish_reason or reason
            return completion.choices[0].message.content or "", "".join(parts), reason

    whole, streamed, reason = asyncio.run(go())
    assert whole == streamed == PROMPT
    assert reason == "stop"


def test_async_stream_helper(srv: Server) -> None:
    async def go() -> str:
        async with (
            aclient(srv) as sdk,
            sdk.chat.completions.stream(model="m", messages=MESSAGES) as stream,
        ):
            async for _ in stream:
                pass
            final = await stream.get_final_completion()
            return final.choices[0].message.content or ""

    assert asyncio.run(go()) == PROMPT


# -- errors ------------------------------------------------------------------------------------
STATUS_ERRORS = [
    (400, "BadRequestError"),
    (401, "AuthenticationError"),
    (403, "PermissionDeniedError"),
    (404, "NotFoundError"),
    (409, "ConflictError"),
    (422, "UnprocessableEntityError"),
    (429, "RateLimitError"),
    (500, "InternalServerError"),
    (503, "InternalServerError"),
]


@pytest.mark.parametrize(("status", "name"), STATUS_ERRORS)
@pytest.mark.parametrize("stream", [False, True])
def test_status_faults_raise_the_sdks_own_errors(
    srv: Server, status: int, name: str, stream: bool
) -> None:
    with client(srv) as sdk, pytest.raises(getattr(openai, name)) as caught:
        sdk.chat.completions.create(
            model="m", messages=MESSAGES, stream=stream, **fault(f"status={status}")
        )
    error = caught.value
    assert error.status_code == status
    assert f"injected error {status}" in error.message
    assert isinstance(error.body, dict)
    assert error.body["message"] == f"injected error {status}"
    assert len(srv.requests) == 1


@pytest.mark.parametrize(
    ("status", "name"), [(401, "AuthenticationError"), (503, "InternalServerError")]
)
def test_async_status_faults(srv: Server, status: int, name: str) -> None:
    async def go() -> None:
        async with aclient(srv) as sdk:
            await sdk.chat.completions.create(
                model="m", messages=MESSAGES, stream=True, **fault(f"status={status}")
            )

    with pytest.raises(getattr(openai, name)) as caught:
        asyncio.run(go())
    assert caught.value.status_code == status


def test_wrong_api_key_is_an_authentication_error() -> None:
    with Server(api_key="sk-right") as server:
        with client(server) as sdk, pytest.raises(openai.AuthenticationError) as caught:
            sdk.chat.completions.create(model="m", messages=MESSAGES)
        assert "Incorrect API key" in caught.value.message
        right = openai.OpenAI(base_url=server.base_url, api_key="sk-right", max_retries=0)
        with right:
            done = right.chat.completions.create(model="m", messages=MESSAGES)
        assert done.choices[0].message.content == PROMPT


def test_error_inside_the_stream_is_an_api_error(srv: Server) -> None:
    with client(srv) as sdk:
        stream = sdk.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, **fault("error-after=2")
        )
        with pytest.raises(openai.APIError) as caught:
            for _ in stream:
                pass
    assert "injected in-stream error" in caught.value.message


@pytest.mark.parametrize("stream", [False, True])
def test_retry_after_ms_is_honoured_and_the_retry_succeeds(srv: Server, stream: bool) -> None:
    srv.script(["status=429;retry-after-ms=10", None])
    with client(srv, max_retries=2) as sdk:
        answer = sdk.chat.completions.create(model="m", messages=MESSAGES, stream=stream)
        text = (
            "".join(c.choices[0].delta.content or "" for c in answer)
            if stream
            else answer.choices[0].message.content
        )
    assert text == PROMPT
    assert len(srv.requests) == 2
    assert [r.fault for r in srv.requests] == ["status=429;retry-after-ms=10", None]
    assert srv.requests[1].headers.get("x-stainless-retry-count") == "1"


def test_retry_after_seconds_async(srv: Server) -> None:
    srv.script(["status=503;retry-after=0", None])

    async def go() -> str:
        async with aclient(srv, max_retries=2) as sdk:
            done = await sdk.chat.completions.create(model="m", messages=MESSAGES)
            return done.choices[0].message.content or ""

    assert asyncio.run(go()) == PROMPT
    assert len(srv.requests) == 2


def test_retries_give_up_with_the_last_error(srv: Server) -> None:
    srv.script(["status=429;retry-after-ms=1"] * 3)
    with client(srv, max_retries=2) as sdk, pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="m", messages=MESSAGES)
    assert len(srv.requests) == 3


def test_a_stall_is_the_sdks_timeout(srv: Server) -> None:
    with client(srv, timeout=0.3) as sdk, pytest.raises(openai.APITimeoutError):
        sdk.chat.completions.create(model="m", messages=MESSAGES, **fault("stall=5"))


def test_a_reset_is_the_sdks_connection_error(srv: Server) -> None:
    with client(srv) as sdk, pytest.raises(openai.APIConnectionError):
        sdk.chat.completions.create(model="m", messages=MESSAGES, **fault("reset"))
