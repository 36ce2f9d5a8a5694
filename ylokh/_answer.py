"""What an answer means: chunks and completions in, text deltas and results out.

Strategy: the body readers (``_readers``) turn bytes into events or a whole completion
object; :class:`Answer` alone knows what those mean (choices, deltas, tool calls,
reasoning, usage, llama.cpp timings, in-stream errors, ``[DONE]``) and when the answer
is whole. ``ended`` tells the face to stop reading: ``[DONE]``, a whole completion, an
error held back until the deltas decoded with it have reached the caller, or the end of
the body.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from ._errors import (
    IncompleteStreamError,
    ProtocolError,
    YlokhError,
    quote,
    redact,
    status_error,
    with_partial,
)
from ._protocol import JSONError, dumps, loads


class Answer:
    """The state of one answer as it arrives.

    ``text`` (all text so far), ``finish_reason``, ``usage``, ``tool_calls`` and
    ``reasoning`` are the results; ``yielded`` tells whether text left the answer (after
    that a retry would repeat it); ``times`` holds ``(monotonic time, deltas)`` for each
    read that gave text.
    """

    __slots__ = (
        "_tool_calls",
        "chunks",
        "done",
        "ended",
        "finish_reason",
        "head",
        "parts",
        "pending",
        "reasoning_parts",
        "received",
        "secrets",
        "status",
        "times",
        "timings",
        "usage",
    )

    def __init__(self, secrets: Sequence[str] = ()) -> None:
        self.secrets = tuple(secrets)
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.timings: dict[str, Any] | None = None  # llama.cpp's report on itself
        self.reasoning_parts: list[str] = []
        self._tool_calls: dict[int, dict[str, Any]] = {}
        self.done = False  # [DONE] came, or a whole completion
        self.ended = False  # nothing more is worth reading
        self.pending: YlokhError | None = None  # to raise after the deltas decoded with it
        self.status = 0
        self.chunks = 0  # events received, [DONE] aside
        self.received = 0  # body bytes
        self.head = b""  # the first body bytes, quoted when the body is not what we expected
        self.times: list[tuple[float, int]] = []

    # -- results --------------------------------------------------------------------------
    @property
    def text(self) -> str:
        """All the text received so far."""
        return "".join(self.parts)

    @property
    def yielded(self) -> bool:
        """Whether text has left the answer (a retry would repeat it)."""
        return bool(self.parts)

    @property
    def reasoning(self) -> str:
        """All ``reasoning_content`` received, kept apart from the text."""
        return "".join(self.reasoning_parts)

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """Tool calls, their deltas merged by ``index``, in index order."""
        return [self._tool_calls[i] for i in sorted(self._tool_calls)]

    # -- what the readers hand over -------------------------------------------------------
    def events(self, events: list[Any], final: bool = False) -> list[str]:
        """The text deltas of server-sent events; an error met after deltas is held in
        :attr:`pending` (and :attr:`ended` set) so those deltas reach the caller first."""
        out: list[str] = []
        append = out.append
        parts_append = self.parts.append
        data = b""
        try:
            for event in events:
                data = event.data
                if data == b"[DONE]":
                    self.done = self.ended = True
                    break  # a stream ends at [DONE], whatever follows
                self.chunks += 1
                try:
                    chunk = loads(data)
                except JSONError:
                    if event.event == "error":
                        raise self.stream_error(data) from None
                    self._recover(data, final, out)
                    continue
                if event.event == "error":
                    raise self.stream_error(chunk)
                # The usual chunk, one choice whose delta holds only text, is read inline:
                # no Python call per chunk. Any other shape goes to _on_chunk.
                choices = chunk.get("choices") if type(chunk) is dict else None
                if type(choices) is list and choices:
                    choice = choices[0]
                    delta = choice.get("delta") if type(choice) is dict else None
                    if type(delta) is dict and len(delta) == 1:
                        content = delta.get("content")
                        if content and type(content) is str:
                            append(content)
                            parts_append(content)
                            reason = choice.get("finish_reason")
                            if reason:
                                self.finish_reason = reason
                            usage = chunk.get("usage")
                            if usage:
                                self.usage = usage
                            continue
                self._on_chunk(chunk, data, out)
        except (AttributeError, TypeError, KeyError, IndexError) as exc:  # a chunk's odd shape
            self._hold(self.chunk_error(f"a chunk has an unexpected shape ({exc})", data), out)
        except YlokhError as exc:
            self._hold(exc, out)
        if out:
            self.times.append((time.monotonic(), len(out)))
        return out

    def completion(self, body: bytes) -> list[str]:
        """The text of a whole ``chat.completion`` object."""
        if body[:3] == b"\xef\xbb\xbf":  # a UTF-8 byte order mark, allowed before JSON
            body = body[3:]
        try:
            obj = loads(body)
        except JSONError:
            raise self.protocol_error("the completion is not valid JSON") from None
        if type(obj) is not dict:
            raise self.protocol_error("the completion is not a JSON object")
        if "error" in obj or obj.get("object") == "error":
            raise self.stream_error(obj)
        choices = obj.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            raise self.protocol_error("the completion has no choices")
        out: list[str] = []
        self._on_choice(choices[0], out)
        if obj.get("usage"):
            self.usage = obj["usage"]
        if obj.get("timings"):
            self.timings = obj["timings"]
        self.done = self.ended = True
        if out:
            self.times.append((time.monotonic(), len(out)))
        return out

    def check_end(self) -> None:
        """The body ended: raise why the answer is unusable, if it is.

        Raises:
            ProtocolError: nothing, not an event stream, or no text was sent.
            IncompleteStreamError: the stream ended after text, before its end was announced.
        """
        self.ended = True
        if self.pending is not None or self.done or self.finish_reason:
            return
        if self.received == 0:
            raise self.protocol_error("the server ended the stream without sending anything")
        if not self.chunks:
            raise self.protocol_error("the answer is not an event stream")
        if self.yielded:
            raise IncompleteStreamError(
                "the stream ended before the server said it was complete "
                "(no [DONE] and no finish_reason)",
                self.text,
            )
        # no text reached the caller: the server's answer is not a whole stream (SPEC)
        raise self.protocol_error(
            "the stream ended before any text, without [DONE] or a finish_reason"
        )

    # -- errors ---------------------------------------------------------------------------
    def protocol_error(self, what: str) -> ProtocolError:
        """A :class:`ProtocolError` quoting the start of the body."""
        head = redact(quote(self.head), self.secrets) if self.head else "an empty body"
        return ProtocolError(f"{what} (status {self.status}); it sent {head}")

    def chunk_error(self, what: str, data: bytes) -> ProtocolError:
        """A :class:`ProtocolError` quoting one chunk."""
        return ProtocolError(f"{what}: {redact(quote(data), self.secrets)}")

    def stream_error(self, chunk: dict[str, Any] | bytes) -> YlokhError:
        """The error for an error object (or undecodable ``event: error`` data) sent in
        a 200 answer: a status error from its ``code``, else a server error."""
        error = chunk.get("error", chunk) if isinstance(chunk, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        status = code if type(code) is int and 400 <= code <= 599 else 500
        body = chunk if isinstance(chunk, bytes) else dumps(chunk)
        # in_stream: the server accepted the request, so this is not retried
        exc = status_error(status, body, secrets=self.secrets, in_stream=True)
        return with_partial(exc, self.text) if self.yielded else exc

    # -- internals ------------------------------------------------------------------------
    def _hold(self, error: YlokhError, out: list[str]) -> None:
        if not out:
            raise error
        self.pending = error
        self.ended = True

    def _on_chunk(self, chunk: Any, data: bytes, out: list[str]) -> None:
        if type(chunk) is not dict:
            raise self.chunk_error("a chunk is not a JSON object", data)
        choices = chunk.get("choices")
        if choices:
            self._on_choice(choices[0], out)
        elif "error" in chunk or chunk.get("object") == "error":  # OpenAI's, vLLM's
            raise self.stream_error(chunk)
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
        timings = chunk.get("timings")
        if timings:
            self.timings = timings

    def _on_choice(self, choice: Any, out: list[str]) -> None:
        delta = choice.get("delta") or choice.get("message")
        if delta:
            content = delta.get("content")
            if content:
                if type(content) is not str:
                    raise self.chunk_error("a delta's content is not text", dumps(delta))
                out.append(content)
                self.parts.append(content)
            if len(delta) > 1 or content is None:  # rarer fields, looked at only when present
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                if reasoning and type(reasoning) is str:
                    self.reasoning_parts.append(reasoning)
                calls = delta.get("tool_calls")
                if calls:
                    self._merge_tool_calls(calls)
        reason = choice.get("finish_reason")
        if reason:
            self.finish_reason = reason

    def _recover(self, data: bytes, final: bool, out: list[str]) -> None:
        """A chunk that is not JSON. Servers that end events with a single line end send
        several ``data:`` lines that the SSE rules join into one event: parse them one by
        one. A cut-off last line at the end of the body is left to the end check."""
        if b"\n" in data:
            chunks: list[Any] = []
            for line in data.split(b"\n"):
                line = line[5:].lstrip(b" ") if line.startswith(b"data:") else line
                if line == b"[DONE]":
                    chunks.append(None)
                    continue
                try:
                    chunks.append(loads(line))
                except JSONError:
                    break
            else:
                for chunk in chunks:
                    if chunk is None:
                        self.done = self.ended = True
                        return
                    self._on_chunk(chunk, data, out)
                return
        if not final:
            raise self.chunk_error("the server sent a chunk that is not JSON", data)

    def _merge_tool_calls(self, calls: Iterable[Any]) -> None:
        for call in calls:
            index = call.get("index", len(self._tool_calls))
            merged = self._tool_calls.setdefault(
                index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            )
            if call.get("id"):
                merged["id"] = call["id"]
            if call.get("type"):
                merged["type"] = call["type"]
            function = call.get("function") or {}
            name = function.get("name")
            if name and name != merged["function"]["name"]:
                merged["function"]["name"] += name
            arguments = function.get("arguments")
            if arguments:
                merged["function"]["arguments"] += (
                    arguments if isinstance(arguments, str) else dumps(arguments).decode()
                )
