"""Conversations: :class:`Chat` keeps the message history across turns."""

from __future__ import annotations

import contextlib
import json
import os
from typing import TYPE_CHECKING, Any

from ._base import BaseClient, Call, Completion
from ._errors import InvalidRequestError
from ._protocol import validate_messages

if TYPE_CHECKING:
    from ._async import AsyncClient, AsyncStream
    from ._sync import Client, Stream

#: Options that may hold secrets: never written by :meth:`Chat.save`.
_UNSAVED = frozenset({"api_key", "headers", "proxy"})


class Chat:
    """A conversation that keeps its history.

        chat = ylokh.Chat(system="Be brief.", model="m", temperature=0)
        for text in chat.stream("Hello"):
            print(text, end="")
        chat.complete("And then?")          # the history holds both turns
        chat.messages                       # [{"role": "system", ...}, {"role": "user", ...}, ...]

    A turn (the user message and the whole answer) is appended only once the answer has
    streamed completely: a turn that failed or was abandoned leaves the history as it was.

    Arguments:
        system: the system prompt, kept first (and kept when old turns are dropped).
        client: a :class:`ylokh.Client` or :class:`ylokh.AsyncClient` supplying the
            connection settings; by default the module-level default clients.
        max_turns: keep at most this many past turns (user + answer), dropping the oldest.
        **options: options for every turn (``model``, ``temperature``, ``timeout``...);
            options given to one call override them for that call.
    """

    def __init__(
        self,
        system: str | None = None,
        client: BaseClient | None = None,
        *,
        max_turns: int | None = None,
        messages: list[dict[str, Any]] | None = None,
        **options: Any,
    ) -> None:
        if system is not None and (not isinstance(system, str) or not system):
            raise InvalidRequestError("system must be a non-empty str")
        if max_turns is not None and (not isinstance(max_turns, int) or max_turns < 1):
            raise InvalidRequestError("max_turns must be a positive whole number")
        self.client = client
        self.options = options
        self.max_turns = max_turns
        self._messages: list[dict[str, Any]] = []
        if system is not None:
            self._messages.append({"role": "system", "content": system})
        if messages:
            loaded = validate_messages(messages)
            if system is not None and loaded[0]["role"] == "system":
                del loaded[0]  # the system argument replaces a saved one, not adds a second
            self._messages.extend(loaded)
            self._trim()  # a loaded history longer than max_turns must not be sent whole
        self._twin: BaseClient | None = None
        self._endpoint: Any = None  # several endpoints: the one that answered last

    def __repr__(self) -> str:
        count = len(self._messages)
        return f"Chat({count} message{'' if count == 1 else 's'})"

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The history: the system prompt, then user and assistant messages."""
        return self._messages

    @property
    def system(self) -> str | None:
        """The system prompt, if any."""
        first = self._messages[0] if self._messages else None
        return first["content"] if first and first["role"] == "system" else None

    @system.setter
    def system(self, text: str | None) -> None:
        if self.system is not None:
            del self._messages[0]
        if text:
            self._messages.insert(0, {"role": "system", "content": text})

    def reset(self) -> None:
        """Forget every turn; keep the system prompt."""
        system = self.system
        self._messages.clear()
        self.system = system

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the history, the model and the options to ``path`` as JSON.

        Connection secrets (``api_key``, ``headers``, ``proxy``) are never written, nor
        options that JSON cannot hold.
        """
        options = {}
        for key, value in self.options.items():
            if key in _UNSAVED:
                continue
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                continue  # e.g. a Timeout object: the loader gives its own settings
            options[key] = value
        saved = {"model": options.pop("model", None), "options": options}
        saved["messages"] = self._messages
        # Written aside and renamed: a chat saved after every turn is never left half-written.
        temp = f"{os.fspath(path)}.tmp"
        try:
            with open(temp, "w", encoding="utf-8", errors="replace") as file:
                json.dump(saved, file, ensure_ascii=False, indent=2)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], client: BaseClient | None = None, **options: Any
    ) -> Chat:
        """A chat that goes on from what :meth:`save` wrote: its history, model and options
        (``options`` given here win over the saved ones).

        Raises:
            InvalidRequestError: the file is not a saved chat (the message names the file).
            OSError: the file cannot be read.
        """
        name = os.fspath(path)
        with open(path, encoding="utf-8") as file:
            try:
                saved = json.load(file)
            except ValueError as exc:
                raise InvalidRequestError(f"{name} is not a saved chat: {exc}") from None
        if isinstance(saved, list):  # the first versions saved the messages alone
            saved = {"messages": saved}
        if (
            not isinstance(saved, dict)
            or not isinstance(saved.get("messages"), list)
            or not isinstance(saved.get("options", {}), dict)
        ):
            raise InvalidRequestError(f"{name} is not a saved chat: not a chat object")
        kept = dict(saved.get("options") or {})
        if saved.get("model"):
            kept["model"] = saved["model"]
        try:
            return cls(client=client, messages=saved.get("messages"), **{**kept, **options})
        except InvalidRequestError as exc:
            raise InvalidRequestError(f"{name} is not a saved chat: {exc}") from None

    # -- turns -----------------------------------------------------------------------------
    def _turn(
        self, prompt: str, options: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        if not isinstance(prompt, str) or not prompt:
            raise InvalidRequestError("the prompt must be a non-empty str")
        user = {"role": "user", "content": prompt}
        merged = {**self.options, **options}
        if self._endpoint is not None:  # the endpoint of the last turn, while it is healthy
            merged["_endpoint"] = self._endpoint
        return [*self._messages, user], merged

    def _recorder(self, prompt: str) -> Any:
        def record(call: Call) -> None:
            self._endpoint = call.prefer
            self._record(prompt, call.answer.text, call.answer.tool_calls)

        return record

    def _record(self, prompt: str, text: str, tool_calls: list[dict[str, Any]]) -> None:
        answer: dict[str, Any] = {"role": "assistant", "content": text}
        if tool_calls:
            answer["tool_calls"] = tool_calls
        self._messages += [{"role": "user", "content": prompt}, answer]
        self._trim()

    def _trim(self) -> None:
        if self.max_turns is None:
            return
        head = 1 if self.system is not None else 0
        turns = self._messages[head:]
        starts = [i for i, m in enumerate(turns) if m["role"] == "user"]
        if len(starts) > self.max_turns:
            del self._messages[head : head + starts[-self.max_turns]]

    def _sync_client(self) -> Client:
        from ._api import _default_client
        from ._sync import Client

        if self.client is None:
            return _default_client()
        if isinstance(self.client, Client):
            return self.client
        if not isinstance(self._twin, Client):
            self._twin = Client(**self.client._args, model=self.client.model)
        return self._twin

    def _async_client(self) -> AsyncClient:
        from ._api import _default_async_client
        from ._async import AsyncClient

        if self.client is None:
            return _default_async_client()
        if isinstance(self.client, AsyncClient):
            return self.client
        from ._api import async_twin

        return async_twin(self.client)  # type: ignore[arg-type]  # a Client

    def stream(self, prompt: str, **options: Any) -> Stream:
        """Send ``prompt`` with the history; iterate the result for text deltas."""
        messages, merged = self._turn(prompt, options)
        stream = self._sync_client().stream(messages, **merged)
        stream._on_complete.append(self._recorder(prompt))
        return stream

    def complete(self, prompt: str, **options: Any) -> Completion:
        """Send ``prompt`` with the history; return the whole answer.

        The answer is streamed (the read timeout then bounds each pause, not the whole
        answer); ``stream=False`` asks for it in one piece instead.
        """
        if options.get("stream") is False:
            rest = {k: v for k, v in options.items() if k != "stream"}
            messages, merged = self._turn(prompt, rest)
            answer = self._sync_client().complete(messages, **merged)
            self._record(prompt, str(answer), answer.tool_calls)
            return answer
        with self.stream(prompt, **options) as stream:
            for _ in stream:
                pass
        return Completion.of(stream)

    def astream(self, prompt: str, **options: Any) -> AsyncStream:
        """Send ``prompt`` with the history; ``async for`` the result for text deltas."""
        messages, merged = self._turn(prompt, options)
        stream = self._async_client().stream(messages, **merged)
        stream._on_complete.append(self._recorder(prompt))
        return stream

    async def acomplete(self, prompt: str, **options: Any) -> Completion:
        """Send ``prompt`` with the history; return the whole answer (async; ``stream=False``
        as for :meth:`complete`)."""
        if options.get("stream") is False:
            rest = {k: v for k, v in options.items() if k != "stream"}
            messages, merged = self._turn(prompt, rest)
            answer = await self._async_client().complete(messages, **merged)
            self._record(prompt, str(answer), answer.tool_calls)
            return answer
        async with self.astream(prompt, **options) as stream:
            async for _ in stream:
                pass
        return Completion.of(stream)
