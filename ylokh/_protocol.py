"""The chat-completions protocol, without I/O: requests out, bytes in, text deltas out.

Strategy: a transport builds a :class:`Request` with :func:`build_request`, sends it,
hands the response head to :meth:`ResponseParser.start` and then every byte it reads to
:meth:`ResponseParser.feed`, yielding the text deltas that come back, and calls
:meth:`ResponseParser.close` at the end of the body. The parser decides everything
else: how to read the body (event stream, JSON completion, error body), what a chunk
means, when the stream is complete, and which error a failure becomes.
"""

from __future__ import annotations

import email.utils
import enum
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._config import DEFAULT_MODEL, Settings
from ._errors import (
    IncompleteStreamError,
    InvalidRequestError,
    ProtocolError,
    YlokhError,
    quote,
    redact,
    status_error,
    status_error_class,
    with_partial,
)
from ._sse import DEFAULT_MAX_LINE_SIZE, SSEDecoder
from ._version import __version__ as _version

try:  # orjson is the optional "fast" extra; json is the fallback
    import orjson

    loads: Callable[[bytes], Any] = orjson.loads
    _JSONError: type[Exception] = orjson.JSONDecodeError

    def dumps(obj: Any) -> bytes:
        """Serialize ``obj`` to compact JSON bytes."""
        return orjson.dumps(obj)

except ImportError:  # pragma: no cover - exercised in the no-orjson tox env
    _scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # json.loads' C scanner

    def loads(data: bytes) -> Any:
        """Parse a JSON chunk: the C scanner directly, twice as fast as ``json.loads``
        (no encoding detection, no Python layers), which keeps the last word on anything
        unusual (surrounding whitespace, trailing data, errors)."""
        text = data.decode()
        try:
            obj, end = _scan(text, 0)
        except StopIteration:
            return json.loads(text)
        return obj if end == len(text) else json.loads(text)

    _JSONError = ValueError

    def dumps(obj: Any) -> bytes:
        """Serialize ``obj`` to compact JSON bytes."""
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})
_TEXT_ROLES = frozenset({"system", "user", "developer"})
SEED_URL = "https://chat.ylokh.xyz"
SEED_BASE_URL = "https://chatapi.ylokh.xyz/v1"
SEED_DEFAULTS: Mapping[str, Any] = {
    "temperature": 1,
    "presence_penalty": 0,
    "top_p": 1,
    "frequency_penalty": 0,
    "allow_fallback": True,
}
MAX_ERROR_BODY = 64 * 1024
MAX_JSON_BODY = 64 * 1024 * 1024
RETRY_AFTER_CAP = 60.0
# The first read of a body asks for at most this much: a read can hold many events (a
# proxy that buffers, a fast server), and the first delta should reach the caller before
# the others are even read; the reads after it take whatever has arrived.
FIRST_READ_SIZE = 1024


Messages = list[dict[str, Any]]


def validate_messages(prompt_or_messages: object) -> Messages:
    """The messages to send: a str becomes one user message; a list is checked.

    Raises:
        InvalidRequestError: not a str or a non-empty list of ``{"role", "content"}``
            dicts with known roles, or text missing where it is required.
    """
    if isinstance(prompt_or_messages, str):
        if not prompt_or_messages:
            raise InvalidRequestError("the prompt is empty")
        return [{"role": "user", "content": prompt_or_messages}]
    if not isinstance(prompt_or_messages, (list, tuple)):
        raise InvalidRequestError(
            "messages must be a str or a list of {'role': ..., 'content': ...} dicts, "
            f"got {type(prompt_or_messages).__name__}"
        )
    if not prompt_or_messages:
        raise InvalidRequestError("messages must not be empty")
    messages: Messages = []
    for i, message in enumerate(prompt_or_messages):
        if not isinstance(message, Mapping):
            raise InvalidRequestError(
                f"messages[{i}] must be a dict with 'role' and 'content', "
                f"got {type(message).__name__}"
            )
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequestError(
                f"messages[{i}] has unknown role {role!r}; expected one of {sorted(ROLES)}"
            )
        content = message.get("content")
        if role in _TEXT_ROLES:
            if content is None or content == "":
                raise InvalidRequestError(f"messages[{i}] ({role}) has no content")
            if not isinstance(content, (str, list)):
                raise InvalidRequestError(
                    f"messages[{i}] ({role}) content must be a str, got {type(content).__name__}"
                )
        elif content is not None and not isinstance(content, (str, list)):
            raise InvalidRequestError(
                f"messages[{i}] ({role}) content must be a str, got {type(content).__name__}"
            )
        elif role == "assistant" and content is None and not message.get("tool_calls"):
            raise InvalidRequestError(f"messages[{i}] (assistant) has no content")
        messages.append(dict(message))
    return messages


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request ready to send: what a transport needs and nothing else."""

    url: str
    headers: Mapping[str, str] = field(repr=False)
    body: bytes = field(repr=False)
    stream: bool
    secrets: tuple[str, ...] = field(repr=False)
    method: str = "POST"


def resolve_model(model: str | None, env: Mapping[str, str]) -> str:
    """``model`` > ``YLOKH_MODEL`` > the default; an empty model falls back, as in the seed."""
    if model is not None and not isinstance(model, str):
        raise InvalidRequestError(f"model must be a str, got {type(model).__name__}")
    return model or env.get("YLOKH_MODEL") or DEFAULT_MODEL


def build_headers(settings: Settings, *, stream: bool, seed: bool = False) -> dict[str, str]:
    """The request headers: JSON in, an event stream (or JSON) out, the key when set.
    Made once per settings and kind of request; callers must not change the dict."""
    key = ("headers", stream, seed)
    headers = settings.derived.get(key)
    if headers is None:
        headers = settings.derived[key] = _headers(settings, stream, seed)
    return headers  # type: ignore[return-value]


def _headers(settings: Settings, stream: bool, seed: bool) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream" if stream else "application/json",
        "User-Agent": f"ylokh/{_version}",
    }
    if seed or settings.base_url == SEED_BASE_URL:  # the Ylokh API wants its own origin
        headers["Origin"] = SEED_URL
        headers["Referer"] = SEED_URL + "/"
    if settings.api_key:
        headers["Authorization"] = f"Bearer {settings.api_key}"
    headers.update(settings.headers)
    return headers


def build_request(
    settings: Settings,
    prompt_or_messages: object,
    *,
    model: str | None,
    stream: bool,
    options: Mapping[str, Any],
    env: Mapping[str, str],
    seed: bool = False,
) -> Request:
    """Validate the input and build the request; ``None`` options are left out.

    Raises:
        InvalidRequestError: bad messages, model or options.
    """
    messages = validate_messages(prompt_or_messages)
    payload: dict[str, Any] = {"model": resolve_model(model, env), "messages": messages}
    for key, value in options.items():
        if value is not None:
            payload[key] = value
    payload["stream"] = stream
    try:
        body = dumps(payload)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"the request cannot be sent as JSON: {exc}") from None
    return Request(
        url=settings.chat_url,
        headers=build_headers(settings, stream=stream, seed=seed),
        body=body,
        stream=stream,
        secrets=settings.secrets,
    )


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP
    date), capped at one minute; ``None`` when absent or unreadable."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return min(max(float(value) / 1000, 0.0), RETRY_AFTER_CAP)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            date = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = date.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)


class Mode(enum.Enum):
    """How the parser reads a response body."""

    EVENTS = "events"  # text/event-stream: deltas as they arrive
    SNIFF = "sniff"  # unknown content type: decided by the first bytes
    JSON = "json"  # a whole chat.completion object
    ERROR = "error"  # an error status: the body holds the message
    HTML = "html"  # a web page where an API answer was expected


_MODES_BY_TYPE = {
    "text/event-stream": Mode.EVENTS,
    "application/json": Mode.JSON,
    "text/html": Mode.HTML,
}


class ResponseParser:
    """The state of one response: feed it bytes, get text deltas.

    After the end it exposes ``text``, ``finish_reason``, ``usage``, ``tool_calls`` and
    ``reasoning``. ``yielded`` tells whether any text left the parser (after that, a
    retry would repeat text, so failures become :class:`IncompleteStreamError`).
    """

    def __init__(self, secrets: Sequence[str] = (), max_line_size: int = DEFAULT_MAX_LINE_SIZE):
        self.secrets = tuple(secrets)
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.timings: dict[str, Any] | None = None  # llama.cpp's own per-request timings
        self.reasoning_parts: list[str] = []
        self._tool_calls: dict[int, dict[str, Any]] = {}
        self.done = False
        self.pending: YlokhError | None = None  # raise after the deltas returned with it
        self.status = 0
        self.mode = Mode.EVENTS
        self._sse = SSEDecoder(max_line_size)
        self._received = 0
        self._head = b""  # the first bytes, quoted when the body is not what we expected
        self._body: list[bytes] = []  # the body, in modes that need all of it
        self._retry_after: float | None = None
        self.chunks = 0  # events received, [DONE] aside

    # -- results -------------------------------------------------------------------------
    @property
    def text(self) -> str:
        """All the text received so far."""
        return "".join(self.parts)

    @property
    def yielded(self) -> bool:
        """Whether text has left the parser (a retry would repeat it)."""
        return bool(self.parts)

    @property
    def whole(self) -> bool:
        """Whether the answer is whole even if the body breaks off now: ``[DONE]`` came
        (an interrupted llama.cpp stream drops the connection right after it)."""
        return self.done

    @property
    def reasoning(self) -> str:
        """All ``reasoning_content`` received, kept apart from the text."""
        return "".join(self.reasoning_parts)

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """Tool calls, their deltas merged by ``index``, in index order."""
        return [self._tool_calls[i] for i in sorted(self._tool_calls)]

    # -- input ----------------------------------------------------------------------------
    def start(self, status: int, headers: Mapping[str, str]) -> None:
        """Take the response head; ``headers`` must be case-insensitive.

        Sets :attr:`buffered`: whether the transport should read the whole body before
        feeding it (error bodies, JSON completions and pages are read whole).
        """
        self.status = status
        content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if status >= 400 or status < 200:
            self.mode = Mode.ERROR
            self._retry_after = parse_retry_after(headers)
        else:
            self.mode = _MODES_BY_TYPE.get(content_type, Mode.SNIFF)

    @property
    def buffered(self) -> bool:
        """Whether the body is only useful whole (so a transport may read it in one go)."""
        return self.mode in (Mode.JSON, Mode.ERROR, Mode.HTML)

    @property
    def body_limit(self) -> int:
        """How many body bytes are worth reading in the current mode."""
        return MAX_JSON_BODY if self.mode is Mode.JSON else MAX_ERROR_BODY

    def feed(self, data: bytes) -> list[str]:
        """Take the next bytes of the body; return the text deltas they complete.

        Raises:
            APIStatusError: the stream carried an error object.
            ProtocolError: the bytes are not a valid event stream.
        """
        if self.pending is not None:
            raise self.pending
        if len(self._head) < 512:
            self._head += data[:512]
        self._received += len(data)
        if self.mode is Mode.SNIFF:
            self.mode = self._sniff(data)
        elif self.mode is Mode.JSON and not self._body and data.lstrip()[:5] == b"data:":
            self.mode = Mode.EVENTS  # an event stream labelled as JSON
        if self.mode is Mode.EVENTS:
            events = self._sse.feed(data)
            if not self.chunks and not events and len(self._sse.pending) > 1:
                events = self._split_lines()  # only until the first event: cheap
            return self._on_events(events)
        return self._keep(data)

    def close(self) -> list[str]:
        """The body has ended: return the last deltas, or raise why the answer is unusable.

        Raises:
            APIStatusError: an error status, or an error object in the body.
            ProtocolError: the answer is not a stream or a completion.
            IncompleteStreamError: the stream ended before its end was announced.

        An error met after deltas in the same bytes is kept in :attr:`pending` and raised
        by the next ``feed``/``close``, so those deltas reach the caller first.
        """
        if self.pending is not None:
            raise self.pending
        if self.mode is Mode.ERROR:
            raise status_error(
                self.status,
                b"".join(self._body),
                secrets=self.secrets,
                retry_after=self._retry_after,
            )
        if self.mode is Mode.HTML:
            raise self._protocol_error("expected an API answer but the server sent a web page")
        if self.mode is Mode.JSON:
            return self._on_completion(b"".join(self._body))
        if self.mode is Mode.SNIFF:  # fewer bytes than needed to decide: an empty body
            return self._check_end([])
        deltas = self._on_events(self._sse.close(), final=True)
        return deltas if self.pending is not None else self._check_end(deltas)

    def fail(self, error: YlokhError) -> YlokhError:
        """The error to raise when the body broke off with ``error``: the error itself,
        or an :class:`IncompleteStreamError` holding the text when text was yielded."""
        return with_partial(error, self.text) if self.yielded else error

    # -- internals -------------------------------------------------------------------------
    def _keep(self, data: bytes) -> list[str]:
        if self._received <= self.body_limit:
            self._body.append(data)
        elif self.mode is Mode.JSON:
            raise self._protocol_error(f"the completion is larger than {MAX_JSON_BODY} bytes")
        return []

    @staticmethod
    def _sniff(data: bytes) -> Mode:
        """The mode for a body of unknown type, from its first bytes."""
        return {b"{": Mode.JSON, b"<": Mode.HTML}.get(data.lstrip()[:1], Mode.EVENTS)

    def _protocol_error(self, what: str) -> ProtocolError:
        head = redact(quote(self._head), self.secrets) if self._head else "an empty body"
        return ProtocolError(f"{what} (status {self.status}); it sent {head}")

    def _check_end(self, deltas: list[str]) -> list[str]:
        if self.done or self.finish_reason:
            return deltas
        if self._received == 0:
            raise self._protocol_error("the server ended the stream without sending anything")
        if not self.chunks:
            raise self._protocol_error("the answer is not an event stream")
        if self.yielded:
            raise incomplete(
                "the stream ended before the server said it was complete "
                "(no [DONE] and no finish_reason)",
                self.text,
            )
        raise IncompleteStreamError(
            "the stream ended before any text and without [DONE] or a finish_reason", ""
        )

    def _on_events(self, events: list[Any], final: bool = False) -> list[str]:
        out: list[str] = []
        append = out.append
        parts_append = self.parts.append
        data = b""
        try:
            for event in events:
                data = event.data
                if data == b"[DONE]":
                    self.done = True
                    continue
                self.chunks += 1
                try:
                    chunk = loads(data)
                except _JSONError:
                    self._recover(data, final, out)
                    continue
                if event.event == "error":
                    raise self._stream_error(chunk)
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
            self._hold(self._chunk_error(f"a chunk has an unexpected shape ({exc})", data), out)
        except YlokhError as exc:
            self._hold(exc, out)
        return out

    def _hold(self, error: YlokhError, out: list[str]) -> None:
        """Raise ``error`` now, or, when deltas decoded from the same bytes are still to
        reach the caller, keep it in :attr:`pending` for the transport to raise after them."""
        if not out:
            raise error
        self.pending = error

    def _on_chunk(self, chunk: Any, data: bytes, out: list[str]) -> None:
        if type(chunk) is not dict:
            raise self._chunk_error("a chunk is not a JSON object", data)
        choices = chunk.get("choices")
        if choices:
            self._on_choice(choices[0], out)
        elif "error" in chunk or chunk.get("object") == "error":  # OpenAI's, vLLM's
            raise self._stream_error(chunk)
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
        timings = chunk.get("timings")
        if timings and type(timings) is dict:
            self.timings = timings

    def _on_choice(self, choice: Any, out: list[str]) -> None:
        delta = choice.get("delta") or choice.get("message")
        if delta:
            content = delta.get("content")
            if content:
                if type(content) is not str:
                    raise self._chunk_error("a delta's content is not text", dumps(delta))
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

    def _split_lines(self) -> list[Any]:
        """A server that ends events with a single line end sends one endless event of
        ``data:`` lines, dispatched only at the end of the body. When the first of its
        lines is a whole JSON chunk, every line is taken as an event, so deltas stream."""
        first = self._sse.pending[0]
        try:
            if first[:1] != b"{" or type(loads(first)) is not dict:
                return []
        except _JSONError:
            return []  # a genuine multi-line event
        return self._sse.split_lines()

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
                except _JSONError:
                    break
            else:
                for chunk in chunks:
                    if chunk is None:
                        self.done = True
                    else:
                        self._on_chunk(chunk, data, out)
                return
        if not final:
            raise self._chunk_error("the server sent a chunk that is not JSON", data)

    def _chunk_error(self, what: str, data: bytes) -> ProtocolError:
        return ProtocolError(f"{what}: {redact(quote(data), self.secrets)}")

    def _stream_error(self, chunk: dict[str, Any]) -> YlokhError:
        error = chunk.get("error", chunk)
        code = error.get("code") if isinstance(error, dict) else None
        status = code if type(code) is int and 400 <= code <= 599 else 500
        # in_stream: the server accepted the request, so this is not retried
        exc = status_error(status, dumps(chunk), secrets=self.secrets, in_stream=True)
        return with_partial(exc, self.text) if self.yielded else exc

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

    def _on_completion(self, body: bytes) -> list[str]:
        if body[:3] == b"\xef\xbb\xbf":  # a UTF-8 byte order mark, allowed before JSON
            body = body[3:]
        try:
            obj = loads(body)
        except _JSONError:
            raise self._protocol_error("the completion is not valid JSON") from None
        if type(obj) is not dict:
            raise self._protocol_error("the completion is not a JSON object")
        if "error" in obj or obj.get("object") == "error":
            raise self._stream_error(obj)
        choices = obj.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            raise self._protocol_error("the completion has no choices")
        out: list[str] = []
        self._on_choice(choices[0], out)
        if obj.get("usage"):
            self.usage = obj["usage"]
        if type(obj.get("timings")) is dict:
            self.timings = obj["timings"]
        self.done = True
        return out


def incomplete(message: str, partial: str) -> IncompleteStreamError:
    """An :class:`IncompleteStreamError` holding the text received so far."""
    return IncompleteStreamError(message, partial)


__all__ = [
    "Mode",
    "Request",
    "ResponseParser",
    "build_request",
    "parse_retry_after",
    "status_error_class",
    "validate_messages",
]
