"""``ylokh.Chat``: history, system prompt, save/load and the history limit, against the
bundled server (which echoes the last user message), on both faces."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

import ylokh
from ylokh.testing import Server


def sent(server: Server) -> list[dict[str, Any]]:
    """The messages of the last request the server received."""
    messages: list[dict[str, Any]] = server.requests[-1].json["messages"]
    return messages


def contents(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages]


def test_turns_are_kept_and_sent(server: Server) -> None:
    chat = ylokh.Chat(system="Be brief.", base_url=server.base_url, model="m", temperature=0)
    assert "".join(chat.stream("first")) == "first"
    assert chat.complete("second") == "second"
    assert chat.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "first"},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": "second"},
    ]
    assert contents(sent(server)) == ["Be brief.", "first", "first", "second"]
    payload = server.requests[-1].json
    assert (payload["model"], payload["temperature"]) == ("m", 0)
    chat.complete("third", temperature=1)  # a call's options override the chat's for that turn
    assert server.requests[-1].json["temperature"] == 1
    chat.complete("fourth")
    assert server.requests[-1].json["temperature"] == 0


@pytest.mark.asyncio
async def test_async_turns(server: Server) -> None:
    chat = ylokh.Chat(base_url=server.base_url)
    assert "".join([t async for t in chat.astream("one")]) == "one"
    assert await chat.acomplete("two") == "two"
    assert contents(chat.messages) == ["one", "one", "two", "two"]


def test_a_failed_or_abandoned_turn_leaves_the_history_alone(server: Server) -> None:
    chat = ylokh.Chat(base_url=server.base_url, max_retries=0)
    chat.complete("kept")
    with pytest.raises(ylokh.BadRequestError):
        chat.complete("refused", ylokh_fault="status=400")
    with pytest.raises(ylokh.IncompleteStreamError):
        chat.complete("cut off in the middle", ylokh_fault="reset-after=2")
    with chat.stream("left early") as stream:
        next(iter(stream))
    assert contents(chat.messages) == ["kept", "kept"]


def test_save_and_load(server: Server, tmp_path: Path) -> None:
    chat = ylokh.Chat(system="Système: réponds brièvement.", base_url=server.base_url)
    chat.complete("première question")
    path = tmp_path / "chat.json"
    chat.save(path)
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["messages"] == chat.messages
    assert "première" in path.read_text(encoding="utf-8")  # readable, not \u-escaped

    again = ylokh.Chat.load(path, base_url=server.base_url, model="m2")
    assert again.messages == chat.messages
    assert again.system == "Système: réponds brièvement."
    again.complete("suite")
    assert contents(sent(server)) == [
        "Système: réponds brièvement.",
        "première question",
        "première question",
        "suite",
    ]
    assert server.requests[-1].json["model"] == "m2"


def test_load_with_a_new_system_prompt_replaces_the_saved_one(tmp_path: Path) -> None:
    path = tmp_path / "chat.json"
    ylokh.Chat(system="old", messages=[{"role": "user", "content": "u"}]).save(path)
    chat = ylokh.Chat.load(path, system="new")
    assert chat.messages == [
        {"role": "system", "content": "new"},
        {"role": "user", "content": "u"},
    ]


def test_load_with_a_client(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "chat.json"
    ylokh.Chat(system="S").save(path)
    with ylokh.Client(base_url=server.base_url) as client:
        chat = ylokh.Chat.load(path, client=client)
        assert chat.complete("hello") == "hello"
    assert contents(sent(server)) == ["S", "hello"]


@pytest.mark.parametrize(
    "content", ["not json", '{"role": "user"}', '[{"role": "wizard", "content": "x"}]', "[1]"]
)
def test_load_rejects_what_is_not_a_saved_chat(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ylokh.InvalidRequestError):
        ylokh.Chat.load(path)


def test_max_turns_drops_the_oldest_turns_and_keeps_the_system_prompt(server: Server) -> None:
    chat = ylokh.Chat(system="S", max_turns=2, base_url=server.base_url)
    for question in ("q1", "q2", "q3", "q4"):
        chat.complete(question)
    assert contents(chat.messages) == ["S", "q3", "q3", "q4", "q4"]
    assert contents(sent(server)) == ["S", "q2", "q2", "q3", "q3", "q4"]

    no_system = ylokh.Chat(max_turns=1, base_url=server.base_url)
    no_system.complete("a")
    no_system.complete("b")
    assert contents(no_system.messages) == ["b", "b"]


def test_a_loaded_history_is_trimmed_before_it_is_sent(server: Server, tmp_path: Path) -> None:
    long = ylokh.Chat(system="S", base_url=server.base_url)
    for question in ("q1", "q2", "q3"):
        long.complete(question)
    path = tmp_path / "long.json"
    long.save(path)
    chat = ylokh.Chat.load(path, max_turns=1, base_url=server.base_url)
    assert contents(chat.messages) == ["S", "q3", "q3"]
    chat.complete("q4")
    assert contents(sent(server)) == ["S", "q3", "q3", "q4"]


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3"])
def test_max_turns_must_be_positive(bad: Any) -> None:
    with pytest.raises(ylokh.InvalidRequestError):
        ylokh.Chat(max_turns=bad)


def test_system_prompt_can_be_set_changed_and_removed(server: Server) -> None:
    chat = ylokh.Chat(base_url=server.base_url)
    assert chat.system is None
    chat.complete("hi")
    chat.system = "Now with a system prompt."
    assert chat.messages[0] == {"role": "system", "content": "Now with a system prompt."}
    chat.system = "Changed."
    assert contents(chat.messages) == ["Changed.", "hi", "hi"]
    chat.system = None
    assert contents(chat.messages) == ["hi", "hi"]
    with pytest.raises(ylokh.InvalidRequestError):
        ylokh.Chat(system="")


def test_reset_keeps_the_system_prompt(server: Server) -> None:
    chat = ylokh.Chat(system="S", base_url=server.base_url)
    chat.complete("hi")
    chat.reset()
    assert chat.messages == [{"role": "system", "content": "S"}]
    chat.complete("again")
    assert contents(sent(server)) == ["S", "again"]
    bare = ylokh.Chat()
    bare.reset()
    assert bare.messages == []


def test_repr() -> None:
    assert repr(ylokh.Chat(system="S")) == "Chat(1 message)"


def test_save_keeps_the_model_and_options_and_load_restores_them(
    server: Server, tmp_path: Path
) -> None:
    chat = ylokh.Chat(model="m1", temperature=0, max_tokens=5, api_key="sk-secret-1")
    path = tmp_path / "chat.json"
    chat.save(path)
    saved = json.loads(path.read_text())
    assert saved["model"] == "m1" and saved["options"] == {"temperature": 0, "max_tokens": 5}
    assert "sk-secret-1" not in path.read_text()  # secrets are never written
    again = ylokh.Chat.load(path, base_url=server.base_url)
    again.complete("hello")
    sent_json = server.requests[-1].json
    assert (sent_json["model"], sent_json["temperature"], sent_json["max_tokens"]) == ("m1", 0, 5)
    ylokh.Chat.load(path, base_url=server.base_url, temperature=1).complete("x")
    assert server.requests[-1].json["temperature"] == 1  # an option given to load() wins
    assert [p.name for p in tmp_path.iterdir()] == ["chat.json"]  # no temporary file left


def test_a_saved_list_of_messages_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text('[{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]')
    assert len(ylokh.Chat.load(path).messages) == 2


@pytest.mark.parametrize(
    "content", ["not json", '{"role": "user"}', '[{"role": "wizard", "content": "x"}]', "[1]"]
)
def test_load_names_the_file_it_rejects(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ylokh.InvalidRequestError, match=re.escape(str(path))):
        ylokh.Chat.load(path)


def test_complete_without_streaming_keeps_the_turn(server: Server) -> None:
    chat = ylokh.Chat(base_url=server.base_url)
    assert chat.complete("one piece", stream=False) == "one piece"
    assert server.requests[-1].json["stream"] is False
    assert [m["content"] for m in chat.messages] == ["one piece", "one piece"]
