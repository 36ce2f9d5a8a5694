"""The chat-completions protocol, requests out: validation, the JSON payload, headers,
and the server's ``Retry-After``; the JSON codec that the rest of the core shares.

What comes back is read by ``_readers`` (bytes to events) and ``_answer`` (events to text).
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._config import DEFAULT_MODEL, Settings
from ._errors import InvalidRequestError
from ._version import __version__ as _version

try:  # orjson is the optional "fast" extra; json is the fallback
    import orjson

    loads: Callable[[bytes], Any] = orjson.loads
    JSONError: type[Exception] = orjson.JSONDecodeError

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

    JSONError = ValueError

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
RETRY_AFTER_CAP = 60.0


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
        if role in _TEXT_ROLES and (content is None or content == "" or content == []):
            raise InvalidRequestError(f"messages[{i}] ({role}) has no content")
        if content is not None and not isinstance(content, str):
            if not isinstance(content, list) or not all(
                isinstance(part, Mapping) and isinstance(part.get("type"), str) for part in content
            ):
                raise InvalidRequestError(
                    f"messages[{i}] ({role}) content must be a str or a list of content parts "
                    f"(dicts with a 'type'), got {type(content).__name__}"
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


def _check_finite(value: object, name: str) -> None:
    """JSON has no NaN or infinity (orjson would send null, json a non-standard token)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequestError(f"{name} must be a finite number, got {value!r}")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_finite(item, f"{name}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_finite(item, f"{name}[{i}]")


def resolve_model(model: str | None, env: Mapping[str, str]) -> str:
    """``model`` > ``YLOKH_MODEL`` > the default; an empty model falls back, as in the seed."""
    if model is not None and not isinstance(model, str):
        raise InvalidRequestError(f"model must be a str, got {type(model).__name__}")
    return model or env.get("YLOKH_MODEL", "").strip() or DEFAULT_MODEL


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
        "Accept-Encoding": "gzip, deflate",  # what the core decodes (_readers), on both faces
        "User-Agent": f"ylokh/{_version}",
    }
    if seed or settings.base_url == SEED_BASE_URL:  # the Ylokh API wants its own origin
        headers["Origin"] = SEED_URL
        headers["Referer"] = SEED_URL + "/"
    if settings.api_key:
        headers["Authorization"] = f"Bearer {settings.api_key}"
    if settings.headers:  # a caller's header replaces ours (and an earlier one) in any case
        given = {name.lower(): (name, value) for name, value in settings.headers.items()}
        headers = {k: v for k, v in headers.items() if k.lower() not in given}
        headers.update(given.values())
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
    if "messages" in options:
        raise InvalidRequestError("pass the messages as the first argument, not as messages=")
    messages = validate_messages(prompt_or_messages)
    payload: dict[str, Any] = {"model": resolve_model(model, env), "messages": messages}
    for key, value in options.items():
        if value is not None:
            _check_finite(value, key)
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
    date), capped at one minute; ``None`` when absent, unreadable or not finite."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            millis = float(value)
        except ValueError:
            millis = math.nan
        if math.isfinite(millis):  # nan or inf would bury a timer that never fires
            return min(max(millis / 1000, 0.0), RETRY_AFTER_CAP)
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            date = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        seconds = date.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)


__all__ = [
    "Request",
    "build_request",
    "parse_retry_after",
    "validate_messages",
]
