"""The exceptions ylokh raises, and the mapping of HTTP answers onto them.

Every error derives from :class:`YlokhError`::

    YlokhError
    ├── InvalidRequestError (also ValueError)   bad input, raised before any traffic
    ├── APIError                                 the server or the network failed us
    │   ├── APIStatusError                       an error status, or an error object in the stream
    │   │   ├── BadRequestError                  400, 422
    │   │   ├── AuthenticationError              401, 403
    │   │   ├── NotFoundError                    404
    │   │   ├── RateLimitError                   429
    │   │   └── ServerError                      5xx
    │   ├── APIConnectionError                   could not connect, connection reset, TLS failure
    │   │   └── APITimeoutError                  a connect, read or total timeout fired
    │   └── ProtocolError                        the answer is not a valid stream or completion
    └── IncompleteStreamError                    the stream broke after text was yielded (.partial)

Messages quote what the server sent (shortened) and never contain a secret: every
message passes through :func:`redact` with the secrets of the request that failed.
"""

from __future__ import annotations

import base64
import enum
import functools
import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "IncompleteStreamError",
    "InvalidRequestError",
    "NotFoundError",
    "ProtocolError",
    "RateLimitError",
    "ServerError",
    "YlokhError",
]

SOCKS_HINT = "SOCKS proxies need the 'socks' extra: pip install 'ylokh[socks]'"
QUOTE_LIMIT = 300  # characters of a server's answer quoted in a message
_TAG = re.compile(r"<(script|style)\b.*?</\1>|<[^>]*>", re.S | re.I)


class YlokhError(Exception):
    """Base class of every error raised by ylokh. Errors pickle with their class,
    message and attributes (``status_code``, ``partial``...)."""

    def __reduce__(self) -> tuple[object, ...]:
        # the default calls cls(*args), which the keyword-only __init__s refuse
        return _rebuild, (type(self), self.args, self.__dict__)


class InvalidRequestError(YlokhError, ValueError):
    """The arguments are invalid; raised before any network traffic."""


class APIError(YlokhError):
    """The server or the network did not give a usable answer."""


class APIStatusError(APIError):
    """The server answered with an error status, or sent an error object in the stream.

    Attributes:
        status_code: the HTTP status (for an in-stream error, the error's ``code`` when
            it is a number, else 500).
        message: the server's own error message.
        body: the start of the body the server sent (redacted).
        retry_after: seconds the server asked us to wait (``Retry-After``), or ``None``.
        in_stream: the error came as an object in a 200 answer, not as a status (such
            errors are not retried: whether one arrives before the first read ends is
            up to the network).
    """

    in_stream = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: str = "",
        retry_after: float | None = None,
        in_stream: bool = False,
    ) -> None:
        if in_stream:
            super().__init__(f"the server sent an error in its answer: {message}")
        else:
            super().__init__(f"{status_code} {_reason(status_code)}: {message}")
        self.in_stream = in_stream
        self.status_code = status_code
        self.message = message
        self.body = body
        self.retry_after = retry_after


class BadRequestError(APIStatusError):
    """400 or 422: the server rejected the request."""


class AuthenticationError(APIStatusError):
    """401 or 403: the API key is missing, wrong, or not allowed."""


class NotFoundError(APIStatusError):
    """404: wrong base URL, or an unknown model."""


class RateLimitError(APIStatusError):
    """429: too many requests; retried with the server's ``Retry-After``."""


class ServerError(APIStatusError):
    """5xx: the server failed."""


class APIConnectionError(APIError):
    """Could not connect, the connection was reset, or TLS verification failed."""


class APITimeoutError(APIConnectionError):
    """A connect, read or total timeout fired."""


class ProtocolError(APIError):
    """The server's answer is not a valid stream or completion; the message quotes it."""


class IncompleteStreamError(YlokhError):
    """The stream broke or ended early after text had reached the caller.

    ``partial`` holds all the text received; the underlying error is ``__cause__``.
    It is never retried, since a retry would repeat text the caller already has.
    """

    def __init__(self, message: str, partial: str = "") -> None:
        super().__init__(message)
        self.partial = partial


# An error met after text reached the caller is both what happened and an
# IncompleteStreamError, so ``except`` either one catches it. Plain module-level classes
# (not made at run time), so they pickle.
class IncompleteConnectionError(APIConnectionError, IncompleteStreamError):
    """:class:`APIConnectionError` after text was received (``.partial``)."""


class IncompleteTimeoutError(APITimeoutError, IncompleteStreamError):
    """:class:`APITimeoutError` after text was received (``.partial``)."""


class IncompleteProtocolError(ProtocolError, IncompleteStreamError):
    """:class:`ProtocolError` after text was received (``.partial``)."""


class IncompleteStatusError(APIStatusError, IncompleteStreamError):
    """:class:`APIStatusError` after text was received (``.partial``)."""


class IncompleteBadRequestError(BadRequestError, IncompleteStreamError):
    """:class:`BadRequestError` after text was received (``.partial``)."""


class IncompleteAuthenticationError(AuthenticationError, IncompleteStreamError):
    """:class:`AuthenticationError` after text was received (``.partial``)."""


class IncompleteNotFoundError(NotFoundError, IncompleteStreamError):
    """:class:`NotFoundError` after text was received (``.partial``)."""


class IncompleteRateLimitError(RateLimitError, IncompleteStreamError):
    """:class:`RateLimitError` after text was received (``.partial``)."""


class IncompleteServerError(ServerError, IncompleteStreamError):
    """:class:`ServerError` after text was received (``.partial``)."""


_WITH_PARTIAL: dict[type[YlokhError], type[YlokhError]] = {
    APIConnectionError: IncompleteConnectionError,
    APITimeoutError: IncompleteTimeoutError,
    ProtocolError: IncompleteProtocolError,
    APIStatusError: IncompleteStatusError,
    BadRequestError: IncompleteBadRequestError,
    AuthenticationError: IncompleteAuthenticationError,
    NotFoundError: IncompleteNotFoundError,
    RateLimitError: IncompleteRateLimitError,
    ServerError: IncompleteServerError,
}


def with_partial(error: YlokhError, partial: str) -> YlokhError:
    """``error``, met after ``partial`` text reached the caller, as an error that is both
    what happened and an :class:`IncompleteStreamError` holding the text; ``error``
    becomes its ``__cause__``. The one place where partial text is wrapped."""
    if isinstance(error, IncompleteStreamError):
        return error
    cls = next((_WITH_PARTIAL[c] for c in type(error).__mro__ if c in _WITH_PARTIAL), None)
    if cls is None:
        both: YlokhError = IncompleteStreamError(str(error), partial)
    else:
        both = cls.__new__(cls)  # a copy of error's state; the class __init__s differ
        both.__dict__.update(error.__dict__)
        both.args = (f"the stream broke off after text was received: {error}",)
        both.partial = partial  # type: ignore[attr-defined]
    both.__cause__ = error
    return both


def _rebuild(
    cls: type[YlokhError], args: tuple[object, ...], state: dict[str, object]
) -> YlokhError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    422: BadRequestError,
    429: RateLimitError,
}

_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    409: "Conflict",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _reason(status: int) -> str:
    return _REASONS.get(status, "Error")


def status_error_class(status: int) -> type[APIStatusError]:
    """The exception class for an HTTP error status."""
    if status >= 500:
        return ServerError
    return _STATUS_CLASSES.get(status, APIStatusError)


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret (API key, proxy password) in ``text`` with ``***``, in every
    form a server might echo it: verbatim, URL-encoded, base64 (also of ``Bearer key``)
    and JSON-escaped."""
    for secret in secrets:
        if secret and len(secret) >= 3:
            for form in _forms(secret):
                text = text.replace(form, "***")
    return text


@functools.lru_cache(maxsize=64)
def _forms(secret: str) -> tuple[str, ...]:
    raw = secret.encode()
    forms = {
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    }
    for data in (raw, b"Bearer " + raw, b"Basic " + raw):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(data).decode()
            forms.add(encoded)
            forms.add(encoded.rstrip("="))
    # longest first, so a form is not cut by a shorter one inside it
    return tuple(sorted((f for f in forms if len(f) >= 3), key=len, reverse=True))


def quote(data: bytes | str, limit: int = QUOTE_LIMIT) -> str:
    """A short, printable quotation of what a server sent."""
    if isinstance(data, bytes):
        data = data[: limit * 4].decode("utf-8", "replace")
    data = data.strip()
    if len(data) > limit:
        data = data[:limit] + "..."
    return repr(data)


def error_message(body: bytes | str) -> str:
    """The server's own error message, whatever the shape of its error body.

    Understands ``{"error": {"message": ...}}``, ``{"error": "..."}``, ``{"message": ...}``,
    ``{"detail": ...}`` (FastAPI, also as a list of problems) and plain text or HTML.
    """
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    found = _find_message(obj)
    if found:
        return found
    text = text.strip()
    if text.startswith("<"):  # an HTML error page: its words, not its markup
        text = " ".join(_TAG.sub(" ", text).split())
    if not text:
        return "(empty body)"
    return quote(text)[1:-1] if len(text) > QUOTE_LIMIT else text


def _find_message(obj: object) -> str | None:
    if isinstance(obj, str):
        return obj or None
    if isinstance(obj, list):
        parts = [m for m in (_find_message(item) for item in obj) if m]
        return "; ".join(parts) or None
    if not isinstance(obj, Mapping):
        return None
    for key in ("error", "message", "detail", "msg"):
        if key in obj:
            found = _find_message(obj[key])
            if found:
                return found
    return None


def status_error(
    status: int,
    body: bytes | str,
    *,
    secrets: Iterable[str] = (),
    retry_after: float | None = None,
    in_stream: bool = False,
    url: str | None = None,
    key_sent: bool = True,
) -> APIStatusError:
    """Build the right :class:`APIStatusError` subclass for an HTTP error answer; with
    ``url``, the message names it and hints at the usual mistakes (a base URL without
    ``/v1``, no API key)."""
    secrets = tuple(secrets)
    message = redact(error_message(body), secrets)
    if url is not None and not in_stream:
        message += f" (POST {url}"
        if status == 404 and "/v1/" not in url:
            message += "; does the base URL need to end in /v1?"
        elif status in (401, 403) and not key_sent:
            message += "; no API key was sent: set api_key= or YLOKH_API_KEY"
        message += ")"
    raw = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    cls = status_error_class(status)
    return cls(
        message,
        status_code=status,
        body=redact(raw[: QUOTE_LIMIT * 4], secrets),
        retry_after=retry_after,
        in_stream=in_stream,
    )


class Failure(enum.Enum):
    """What went wrong below HTTP, as each face's translation table names it."""

    CONNECT_TIMEOUT = "connect timeout"
    READ_TIMEOUT = "read timeout"
    TOTAL_TIMEOUT = "total timeout"
    FIRST_TOKEN_TIMEOUT = "first-token timeout"
    CONNECT = "connect"
    RESET = "reset"
    TLS = "tls"
    PROXY = "proxy"
    PROTOCOL = "protocol"
    REDIRECTS = "redirects"
    INVALID = "invalid"


_FAILURES: dict[Failure, tuple[type[YlokhError], str]] = {
    Failure.CONNECT_TIMEOUT: (
        APITimeoutError,
        "timed out connecting to {url} (connect timeout {connect} s)",
    ),
    Failure.READ_TIMEOUT: (
        APITimeoutError,
        "the server at {url} sent nothing for {read} s (read timeout)",
    ),
    Failure.TOTAL_TIMEOUT: (
        APITimeoutError,
        "the call to {url} ran past its total timeout ({total} s)",
    ),
    Failure.FIRST_TOKEN_TIMEOUT: (
        APITimeoutError,
        "the server at {url} sent no text within the first-token timeout ({first_token} s)",
    ),
    Failure.CONNECT: (APIConnectionError, "could not connect to {url}: {detail}"),
    Failure.RESET: (
        APIConnectionError,
        "the connection to {url} broke off (closed or reset by the server): {detail}",
    ),
    Failure.TLS: (APIConnectionError, "TLS verification or handshake with {url} failed: {detail}"),
    Failure.PROXY: (APIConnectionError, "the proxy {proxy} failed for {url}: {detail}"),
    Failure.PROTOCOL: (ProtocolError, "the server at {url} sent an invalid HTTP answer: {detail}"),
    Failure.REDIRECTS: (ProtocolError, "too many redirects from {url}"),
    Failure.INVALID: (InvalidRequestError, "invalid URL or proxy for {url}: {detail}"),
}


def failure_error(kind: Failure, secrets: Iterable[str] = (), **fields: object) -> YlokhError:
    """The ylokh error for a failure below HTTP: its class and plain-words message come
    from one table; ``fields`` fill the message (``url``, ``detail``, the timeouts,
    ``proxy``) and secrets are redacted from it."""
    cls, template = _FAILURES[kind]
    return cls(redact(template.format_map(_Fields(fields)), secrets))


class _Fields(dict[str, object]):
    def __missing__(self, key: str) -> str:
        return "?"
