"""What both faces share and that does no I/O: settings, the state of one call, results.

Strategy (as httpx's ``BaseClient`` and h11's ``Connection``): :class:`BaseClient`
resolves settings and builds requests; :class:`Call` is the one state of a call that
every attempt, every read and every failure goes through (request, endpoint, deadline,
attempts, the answer so far, the log line). The faces only open responses, move bytes
into ``call.feed`` and name their library's exceptions in a table that
:func:`translating` applies at every I/O site; anything the table does not know is
re-raised untouched: never retried, never disguised.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from ._answer import Answer
from ._config import Settings, redact_url, resolve_settings
from ._errors import (
    APIConnectionError,
    APIStatusError,
    Failure,
    ProtocolError,
    YlokhError,
    failure_error,
    quote,
    status_error_class,
    with_partial,
)
from ._protocol import Request, build_request
from ._readers import reader_for
from ._stats import Stats

if TYPE_CHECKING:
    from tenacity import RetryCallState

    from ._endpoints import Endpoint, Endpoints
    from ._retry import Policy

#: Options that configure the connection; every other keyword goes into the payload.
SETTING_NAMES = frozenset(
    {"base_url", "api_key", "timeout", "max_retries", "proxy", "headers", "verify"}
)
MAX_REDIRECTS = 10
FIRST_READ_SIZE = 1024  # the first read of a body: the first delta goes out before the rest
READ_SIZE = 1 << 16

logger = logging.getLogger("ylokh")
logger.addHandler(logging.NullHandler())  # a library adds no output of its own


class BaseClient:
    """Settings and request building, shared by :class:`ylokh.Client` and
    :class:`ylokh.AsyncClient` (whose real keyword arguments this ``__init__`` shows)."""

    def __init__(
        self,
        *,
        base_url: str | list[str] | tuple[str, ...] | None = None,
        api_key: str | None = None,
        timeout: object = None,
        max_retries: int | None = None,
        proxy: str | None = None,
        headers: Mapping[str, str] | None = None,
        verify: bool | str = True,
        model: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._env = os.environ if env is None else env
        self._args: dict[str, Any] = {
            "base_url": base_url,
            "api_key": api_key,
            "timeout": timeout,
            "max_retries": max_retries,
            "proxy": proxy,
            "headers": headers,
            "verify": verify,
        }
        self.settings = resolve_settings(**self._args, env=self._env)
        self.model = model
        self._seed = False  # the seed-compatible provider sends the seed's headers
        self._endpoints: Endpoints | None = None
        if len(self.settings.base_urls) > 1:
            from ._endpoints import Endpoints

            self._endpoints = Endpoints(self.settings.base_urls)
        self._setup()

    def _setup(self) -> None:
        """What a face keeps beside the settings (its sessions, its sleep)."""

    def __repr__(self) -> str:
        if self._endpoints is not None:
            return f"{type(self).__name__}(endpoints: {self._endpoints!r})"
        return f"{type(self).__name__}(base_url={self.settings.base_url!r})"

    def _settings_for(self, overrides: Mapping[str, Any]) -> Settings:
        """This client's settings with one call's overrides applied (``None`` = unset)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if not given:
            return self.settings
        args = {**self._args, **given}
        if "headers" in given and self._args["headers"]:
            args["headers"] = {**self._args["headers"], **given["headers"]}
        return resolve_settings(**args, env=self._env)

    def _call(
        self, prompt_or_messages: object, model: str | None, stream: bool, options: dict[str, Any]
    ) -> Call:
        """Validate one call's input and make its state (no traffic)."""
        prefer = options.pop("_endpoint", None)
        overrides = {k: options.pop(k) for k in SETTING_NAMES & options.keys()}
        settings = self._settings_for(overrides)
        request = build_request(
            settings,
            prompt_or_messages,
            model=model or self.model,
            stream=stream,
            options=options,
            env=self._env,
            seed=self._seed,
        )
        endpoints = self._endpoints if settings.base_urls == self.settings.base_urls else None
        if endpoints is None or prefer not in endpoints.all:
            prefer = None
        return Call(settings, request, endpoints, prefer)


class Call:
    """The state of one call, through all its attempts.

    Strategy: the generator that reads the response holds this object, never the stream
    object the caller holds; so a caller that drops its stream in the middle of a loop
    (``break``) drops the last reference to the generator, which closes the response at
    once instead of waiting for the garbage collector to break a cycle.
    """

    __slots__ = (
        "_state",
        "answer",
        "attempts",
        "broken",
        "close",
        "completed",
        "deadline",
        "endpoint",
        "endpoints",
        "feed",
        "first_byte",
        "headers",
        "headers_at",
        "last_error",
        "left",
        "on_complete",
        "over",
        "prefer",
        "redirects",
        "request",
        "sent_at",
        "settings",
        "started",
        "stats",
        "token_late",
        "url",
    )

    def __init__(
        self,
        settings: Settings,
        request: Request,
        endpoints: Endpoints | None = None,
        prefer: Endpoint | None = None,
    ) -> None:
        self.settings = settings
        self.request = request
        self.endpoints = endpoints
        self.prefer = prefer
        self.endpoint: Endpoint | None = None
        self.stats = Stats(settings.base_url)
        self.answer = Answer(request.secrets)
        self.answer.times = self.stats.reads  # one list: the answer's reads are the stats'
        self.feed: Callable[[bytes, bool], list[str]] = _not_open
        self.url = request.url
        self.headers = request.headers
        self.attempts = 0
        self.redirects = 0
        self.started = 0.0  # when the call began (monotonic)
        self.deadline: float | None = None  # Timeout.total, from the start
        self.sent_at = 0.0  # when the current attempt sent its request
        self.headers_at = 0.0
        self.first_byte = 0.0
        self.on_complete: list[Callable[[Call], None]] = []
        self.completed = False
        self.over = False  # the call ended: answered, failed or abandoned
        self.close: Callable[[], None] | None = None  # closes the response, once opened
        self._state: RetryCallState | None = None
        self.last_error: YlokhError | None = None
        self.token_late = False  # the first-token timeout fired on the current attempt
        self.left = False  # an async loop was left early and closed the response
        self.broken: BaseException | None = None  # why a face's watchdog ended the body

    # -- the attempts ---------------------------------------------------------------------
    def begin(self) -> None:
        """The call starts (its first iteration): the total deadline runs from now."""
        self.started = time.monotonic()
        self.stats.started(self.started)
        total = self.settings.timeout.total
        self.deadline = None if total is None else self.started + total

    def attempt(self) -> None:
        """A new attempt starts: a fresh answer, and the endpoint to send it to."""
        self.attempts += 1
        self.stats.attempts = self.attempts
        if self.attempts > 1:
            self.token_late = False
            self.broken = None
            self.answer = Answer(self.request.secrets)
            self.answer.times = self.stats.reads
            self.url = self.request.url
            self.headers = self.request.headers
            self.redirects = 0
        if self.endpoints is not None:
            self._pick()
        self.sent_at = time.monotonic()

    def _pick(self) -> None:
        endpoints = self.endpoints
        assert endpoints is not None
        endpoint, wait = endpoints.pick(self.endpoint, self.prefer)
        if endpoint is None:
            raise Cooling(wait, self.last_error)
        self.endpoint = endpoint
        self.url = endpoint.chat_url
        self.stats.base_url = endpoint.base_url

    def timeouts(self) -> tuple[float | None, float | None]:
        """``(connect, read)`` for sending this attempt, within the deadlines."""
        timeout = self.settings.timeout
        return self._within(timeout.connect), self.read_timeout()

    def read_timeout(self) -> float | None:
        """The timeout of the next wait for bytes: ``read``, cut to the total deadline and,
        until the first text delta, to the first-token deadline."""
        timeout = self.settings.timeout
        limit = self._within(timeout.read)
        first = timeout.first_token
        if first is not None and not self.answer.parts:
            left = max(self.sent_at + first - time.monotonic(), 0.001)
            limit = left if limit is None else min(limit, left)
        return limit

    def remaining(self) -> float | None:
        """Seconds left before the total deadline, or ``None``."""
        return self._within(None)

    def _within(self, limit: float | None) -> float | None:
        if self.deadline is None:
            return limit
        left = max(self.deadline - time.monotonic(), 0.001)
        return left if limit is None else min(limit, left)

    def accept(self, status: int, headers: Mapping[str, str], close: Callable[[], None]) -> bool:
        """Take the response head; ``False`` when it is a redirect to follow (307, 308:
        same method and body; ``Authorization`` dropped when the origin changes). The
        response is closed (``close``) unless its body is to be read.

        Raises:
            APIStatusError: 301, 302 or 303 (never turned into a GET), naming the Location.
            ProtocolError: too many redirects, or a redirect without a usable Location.
        """
        try:
            accepted = self._accept(status, headers)
        except BaseException:
            close()
            raise
        if not accepted:
            close()
        return accepted

    def _accept(self, status: int, headers: Mapping[str, str]) -> bool:
        self.headers_at = time.monotonic()
        self.stats.headers(self.headers_at)
        if "content-length" in headers and "transfer-encoding" in headers:
            # RFC 9112 6.3: a framing that may smuggle; aiohttp refuses it, so does the core
            raise ProtocolError(
                f"the server at {self.url} sent both Content-Length and Transfer-Encoding"
            )
        if 300 <= status < 400:
            return self._redirect(status, headers.get("location"))
        self.feed = reader_for(
            self.answer, status, headers, url=self.url, key_sent=bool(self.settings.api_key)
        ).feed
        return True

    def _redirect(self, status: int, location: str | None) -> bool:
        if status not in (307, 308) or not location:
            where = f" to {quote(location)}" if location else " without a Location"
            raise status_error_class(status)(
                f"the server redirected the POST to {self.url}{where}; ylokh follows only "
                "307 and 308 (which keep the method and body): use the final URL as base_url",
                status_code=status,
            )
        self.redirects += 1
        if self.redirects > MAX_REDIRECTS:
            raise failure_error(Failure.REDIRECTS, self.request.secrets, url=self.url)
        target = urllib.parse.urljoin(self.url, location)
        if urllib.parse.urlsplit(target).scheme not in ("http", "https"):
            raise ProtocolError(f"the server at {self.url} redirected to {quote(location)}")
        if _origin(target) != _origin(self.url):
            self.headers = {k: v for k, v in self.headers.items() if k.lower() != "authorization"}
        self.url = target
        return False

    def opened(self) -> None:
        """The attempt succeeded: text is about to reach the caller."""
        self.first_byte = time.monotonic()
        if self.endpoint is not None and self.endpoints is not None:
            self.endpoints.succeeded(self.endpoint)
            self.prefer = self.endpoint  # what a conversation's next turn asks for

    # -- failures -------------------------------------------------------------------------
    def error(self, kind: Failure, exc: BaseException) -> YlokhError:
        """The ylokh error for a library exception that the face's table named ``kind``."""
        now = time.monotonic()
        timeout = self.settings.timeout
        if kind is Failure.FIRST_TOKEN_TIMEOUT:
            self.token_late = True
        if kind in (Failure.READ_TIMEOUT, Failure.TOTAL_TIMEOUT, Failure.CONNECT_TIMEOUT):
            first = timeout.first_token
            if (
                first is not None
                and not self.answer.parts
                and now >= self.sent_at + first - 0.05
                and kind is not Failure.CONNECT_TIMEOUT
            ):
                kind = Failure.FIRST_TOKEN_TIMEOUT
                self.token_late = True
            elif self.deadline is not None and now >= self.deadline - 0.05:
                kind = Failure.TOTAL_TIMEOUT
            elif kind is Failure.TOTAL_TIMEOUT:
                kind = Failure.READ_TIMEOUT
        elif kind is Failure.CONNECT and self.headers_at:
            kind = Failure.RESET  # the head had come: the connection broke off later
        elif kind is Failure.CONNECT and self.settings.proxy:
            kind = Failure.PROXY  # the only connection made is the one to the proxy
        return failure_error(
            kind,
            self.request.secrets,
            url=self.url,
            detail=describe(exc),
            connect=timeout.connect,
            read=timeout.read,
            total=timeout.total,
            first_token=timeout.first_token,
            proxy=redact_url(self.settings.proxy or ""),
        )

    def retry_wait(self, error: YlokhError) -> float:
        """Seconds to wait before the next attempt, or ``error`` raised when the policy
        says no more (not retryable, attempts or time used up)."""
        try:  # tenacity is loaded on the first failure only (a warm call never needs it)
            from ._retry import is_retryable, new_state
        except (ImportError, OSError):  # no file descriptor left to import it: no retry
            raise error from None

        endpoints = self.endpoints
        if isinstance(error, Cooling):  # no request was sent: wait if that fits
            self.attempts -= 1
            if self.deadline is None or time.monotonic() + error.wait < self.deadline:
                logger.warning("every endpoint is cooling down: waiting %.2f s", error.wait)
                return error.wait
            raise error.last or error
        if endpoints is not None and self.endpoint is not None:
            if is_retryable(error):
                retry_after = error.retry_after if isinstance(error, APIStatusError) else None
                endpoints.failed(self.endpoint, retry_after)
            endpoints.done(self.endpoint)
        self.last_error = error
        answer = self.answer
        if not self.settings.max_retries or (
            # a stream's 2xx body had begun: only failures before its first byte (and the
            # first-token timeout) are retried, as the spec says; a completion is retried
            # as a whole
            answer.received and answer.status < 300 and self.request.stream and not self.token_late
        ):
            raise error
        state = self._state
        if state is None:
            state = self._state = new_state()
            state.start_time = self.started
        wait = _policy(self.settings).next_wait(state, error)
        if wait is None:
            raise error
        if endpoints is not None:
            # another endpoint at once, if one is up; else wait for the first back
            wait = endpoints.soonest(self.endpoint)
            if self.deadline is not None and time.monotonic() + wait >= self.deadline:
                raise error
        logger.warning(
            "retrying POST %s in %.2f s (attempt %d of %d) after: %s",
            self.url,
            wait,
            self.attempts + 1,
            self.settings.max_retries + 1,
            error,
            extra={"wait": wait},  # the CLI says "waiting N s" on a terminal
        )
        return wait

    def failed(self, error: YlokhError) -> YlokhError:
        """The error the caller gets: partial text wrapped once, here."""
        return with_partial(error, self.answer.text) if self.answer.yielded else error

    # -- the end --------------------------------------------------------------------------
    def finish(self) -> None:
        """The answer ended: raise an error held back for the deltas decoded with it, or
        run what waits for a complete answer."""
        pending = self.answer.pending
        if pending is not None:
            raise pending
        self.completed = True
        for callback in self.on_complete:
            callback(self)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """A face's whole read of the call: partial text wrapped once (:meth:`failed`),
        then, whatever happened, the response closed (``close``) and the call ended."""
        error: BaseException | None = None
        try:
            yield
        except YlokhError as exc:
            error = self.failed(exc)
            if error is exc:
                raise
            raise error from exc
        except BaseException as exc:
            error = exc
            raise
        finally:
            close, self.close = self.close, None
            if close is not None:
                close()
            self.end(error)

    def end(self, error: BaseException | None = None) -> None:
        """The call is over (answered, failed or abandoned): release the endpoint and
        write the DEBUG line."""
        answer = self.answer
        self.over = True
        self.stats.ended(time.monotonic(), answer.usage, answer.timings)
        if self.endpoint is not None and self.endpoints is not None and self.first_byte:
            self.endpoints.done(self.endpoint)
        if logger.isEnabledFor(logging.DEBUG):
            answer = self.answer
            if answer.status:
                chars = len(answer.text)
                logger.debug(
                    "POST %s -> %d, first byte after %.1f ms, %d chunks, %d character%s%s",
                    self.url,
                    answer.status,
                    max(self.first_byte or self.headers_at, self.started) * 1000
                    - self.started * 1000,
                    answer.chunks,
                    chars,
                    "" if chars == 1 else "s",
                    "" if self.completed else f" (not complete: {error})",
                )
            else:
                logger.debug("POST %s failed after %d attempts: %s", self.url, self.attempts, error)


class Cooling(APIConnectionError):
    """Every endpoint is cooling down (no request was sent); ``wait`` seconds until the
    first comes back."""

    def __init__(self, wait: float, last: YlokhError | None) -> None:
        super().__init__(f"every endpoint is cooling down for {wait:.1f} s more")
        self.wait = wait
        self.last = last


def _not_open(data: bytes, end: bool = False) -> list[str]:
    raise RuntimeError("no response head was accepted")  # a bug in a face


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


def _policy(settings: Settings) -> Policy:
    policy = settings.derived.get("policy")
    if policy is None:
        from ._retry import Policy

        policy = settings.derived["policy"] = Policy(settings.max_retries, settings.timeout.total)
    return policy  # type: ignore[return-value]


# -- translating a library's exceptions ------------------------------------------------------
class Inside(NamedTuple):
    """A table entry for a wrapper: what it wraps decides (only the classes in ``only``,
    when given), else ``otherwise``."""

    otherwise: Failure
    only: tuple[type, ...] = ()


#: A face's table: exception class -> kind (or :class:`Inside` for a wrapper).
Table = Mapping[type, "Failure | Inside"]

#: What the system's socket and TLS errors mean, the same on both faces (each face's
#: table adds its library's classes, and its own view of timeouts).
OS_FAILURES: dict[type, Failure | Inside] = {
    ConnectionResetError: Failure.RESET,
    ConnectionAbortedError: Failure.RESET,
    BrokenPipeError: Failure.RESET,
    ConnectionRefusedError: Failure.CONNECT,
    ssl.SSLError: Failure.TLS,
    ssl.CertificateError: Failure.TLS,
    OSError: Failure.CONNECT,
}


def kind_of(exc: BaseException, table: Table) -> Failure | None:
    """The kind of failure ``exc`` is, by the most specific class in ``table`` along its
    chain (wrappers are looked through); ``None`` when the table does not know it."""
    wrapper: Inside | None = None
    for inner in _chain(exc):
        if wrapper is not None and wrapper.only and not isinstance(inner, wrapper.only):
            continue
        for cls in type(inner).__mro__:
            if cls in table:
                kind = table[cls]
                if isinstance(kind, Failure):
                    return kind
                wrapper = wrapper or kind
                break
    return wrapper.otherwise if wrapper is not None else None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps (``reason``, exception arguments, causes), outside in."""
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) < 12:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        reason = getattr(current, "reason", None)
        inner = [reason] if isinstance(reason, BaseException) else []
        inner += [a for a in current.args if isinstance(a, BaseException)]
        inner += [e for e in (current.__cause__, current.__context__) if e is not None]
        todo += inner


_NOISE = re.compile(r"<[^<>]* object at 0x[0-9a-f]+>:?\s*|^\d{3}, message=")


def describe(exc: BaseException) -> str:
    """The plain words of a library exception: the innermost system error's text
    (``Connection refused``), else its own message without object reprs."""
    chain = list(_chain(exc))
    for inner in reversed(chain):
        if isinstance(inner, OSError) and inner.strerror:
            return inner.strerror
    inner = chain[-1]
    message = getattr(inner, "message", None)  # aiohttp's own, without its "400, message:"
    text = message if isinstance(message, str) and message else str(inner) or str(exc)
    text = " ".join(_NOISE.sub("", text).split()).strip("'\"")
    return text or type(inner).__name__


@contextlib.contextmanager
def translating(call: Call, table: Table) -> Iterator[None]:
    """Library exceptions become ylokh errors here, by ``table``: the one context manager
    of every I/O site of a face."""
    try:
        yield
    except YlokhError:
        raise
    except Exception as exc:
        kind = kind_of(exc, table)
        if kind is None:
            raise
        raise call.error(kind, exc) from exc


class BaseStream:
    """The results of one streamed answer, shared by the sync and async stream objects.

    ``text`` is all the text received so far (also after an error); ``finish_reason``,
    ``usage``, ``tool_calls`` and ``reasoning`` are filled in as the server sends them.
    """

    def __init__(self, call: Call) -> None:
        self._call = call
        self._on_complete = call.on_complete
        self._closed = False

    def __repr__(self) -> str:
        call = self._call
        if call.completed:
            state = "complete"
        elif self._closed or (call.close is None and call.attempts):
            state = "closed"
        else:
            state = "open"
        return f"<{type(self).__name__} {call.url} {state}, {len(self.text)} chars>"

    @property
    def completed(self) -> bool:
        """Whether the server said the answer is complete."""
        return self._call.completed

    @property
    def text(self) -> str:
        """All the text received so far."""
        return self._call.answer.text

    @property
    def finish_reason(self) -> str | None:
        """Why the answer ended (``"stop"``, ``"length"``, ``"tool_calls"``...), when known."""
        return self._call.answer.finish_reason

    @property
    def usage(self) -> dict[str, Any] | None:
        """Token counts, when the server sent them."""
        return self._call.answer.usage

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """Tool calls, their deltas merged by index."""
        return self._call.answer.tool_calls

    @property
    def reasoning(self) -> str:
        """The model's ``reasoning_content``, kept apart from the text."""
        return self._call.answer.reasoning

    @property
    def stats(self) -> Stats:
        """The measurements of this answer (:class:`ylokh.Stats`), final once it ended."""
        return self._call.stats


class Completion(str):
    """A whole answer: a ``str``, with ``finish_reason``, ``usage``, ``tool_calls`` and
    ``reasoning`` attached."""

    finish_reason: str | None
    usage: dict[str, Any] | None
    tool_calls: list[dict[str, Any]]
    reasoning: str
    stats: Stats

    @classmethod
    def of(cls, source: Call | BaseStream) -> Completion:
        """The completion a finished call (or stream) holds."""
        call = source._call if isinstance(source, BaseStream) else source
        answer = call.answer
        completion = cls(answer.text)
        completion.stats = call.stats
        completion.finish_reason = answer.finish_reason
        completion.usage = answer.usage
        completion.tool_calls = answer.tool_calls
        completion.reasoning = answer.reasoning
        return completion
