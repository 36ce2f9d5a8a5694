"""Configuration: the Timeout value, and resolving arguments > ``YLOKH_*`` env > defaults.

Strategy: everything is resolved once, when a client is built, into a frozen
:class:`Settings`; the per-request path only reads it. Proxies are resolved here too
(once per client), so honouring ``HTTPS_PROXY``/``NO_PROXY`` costs nothing per request
and both faces route the same way.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from ._errors import InvalidRequestError

DEFAULT_BASE_URL = "https://chatapi.ylokh.xyz/v1"
DEFAULT_MODEL = "gpt-3.5-turbo"
DEFAULT_MAX_RETRIES = 2
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 120.0  # the seed's timeout=120


@dataclass(frozen=True, slots=True)
class Timeout:
    """How long ylokh waits, in seconds; ``None`` means no limit.

        Timeout(read=30)                      # each wait for bytes, mid-stream stalls included
        Timeout(connect=5, read=30, total=120)
        ylokh.stream("hi", timeout=30)        # a bare number means read=30
        ylokh.stream("hi", timeout=Timeout(total=60))

    ``connect`` bounds opening the connection (TLS included), ``read`` bounds every single
    wait for bytes, ``total`` bounds the whole call, retries and back-off included;
    ``first_token`` abandons (and retries) a call whose first text delta has not arrived
    that long after the request was sent.
    """

    connect: float | None = DEFAULT_CONNECT_TIMEOUT
    read: float | None = DEFAULT_READ_TIMEOUT
    total: float | None = None
    first_token: float | None = None

    def __post_init__(self) -> None:
        for name in ("connect", "read", "total", "first_token"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidRequestError(f"Timeout.{name} must be a number, got {value!r}")
            if math.isnan(value) or value <= 0:
                raise InvalidRequestError(f"Timeout.{name} must be positive, got {value!r}")


TimeoutLike = Union[Timeout, float, int, None]


def coerce_timeout(value: object, name: str = "timeout") -> Timeout:
    """A :class:`Timeout` from a Timeout, a bare number of seconds (the read timeout) or
    ``None`` (the defaults). Zero is refused, as by :class:`Timeout`: no limit is ``None``
    in a ``Timeout``, never a zero that reads like "at once"."""
    if value is None:
        return Timeout()
    if isinstance(value, Timeout):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidRequestError(f"{name} must be a number or ylokh.Timeout, got {value!r}")
    try:
        seconds = float(value)
    except ValueError:
        raise InvalidRequestError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidRequestError(
            f"{name} must be a positive number of seconds, got {value!r} "
            "(for no limit use ylokh.Timeout(read=None))"
        )
    return Timeout(read=seconds)


def _int_setting(name: str, value: object) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise InvalidRequestError(f"{name} must be a whole number, got {value!r}") from None
    if number < 0:
        raise InvalidRequestError(f"{name} must not be negative, got {value!r}")
    return number


@dataclass(frozen=True, slots=True)
class Settings:
    """A client's resolved connection settings (secrets are kept out of the repr)."""

    base_urls: tuple[str, ...]
    api_key: str | None = field(repr=False)
    timeout: Timeout
    max_retries: int
    proxy: str | None = field(repr=False)  # may hold a password
    headers: Mapping[str, str] = field(repr=False)
    verify: bool | str = True
    # what requests derive from the settings, made once (settings are resolved per client)
    derived: dict[object, object] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def base_url(self) -> str:
        """The first (usually the only) endpoint's base URL."""
        return self.base_urls[0]

    @property
    def chat_url(self) -> str:
        """The URL of the first endpoint's chat completions."""
        return chat_url(self.base_urls[0])

    @property
    def secrets(self) -> tuple[str, ...]:
        """Strings that must never appear in a message, repr or log line."""
        found = self.derived.get("secrets")
        if found is None:
            found = self.derived["secrets"] = self._secrets()
        return found  # type: ignore[return-value]

    def _secrets(self) -> tuple[str, ...]:
        found = [self.api_key or ""]
        if self.proxy:
            parts = urllib.parse.urlsplit(self.proxy)
            if parts.password:
                found += [
                    parts.password,
                    f"{parts.username}:{parts.password}",
                    urllib.parse.unquote(parts.password),
                    f"{urllib.parse.unquote(parts.username or '')}:"
                    f"{urllib.parse.unquote(parts.password)}",
                ]
        for name, value in self.headers.items():
            if name.lower() in ("authorization", "api-key", "x-api-key", "proxy-authorization"):
                found.append(value.split(" ", 1)[-1])
        return tuple(s for s in found if s)

    def __repr__(self) -> str:
        proxy = redact_url(self.proxy) if self.proxy else None
        key = "set" if self.api_key else None
        return (
            f"Settings(base_urls={self.base_urls!r}, api_key={key!r}, timeout={self.timeout!r}, "
            f"max_retries={self.max_retries!r}, proxy={proxy!r}, verify={self.verify!r})"
        )


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def chat_url(base_url: str) -> str:
    """The chat completions URL under ``base_url``; a query string stays after the path."""
    path, sep, query = base_url.partition("?")
    return f"{path}/chat/completions{sep}{query}"


def split_urls(value: object, name: str = "base_url") -> tuple[str, ...]:
    """One or several base URLs: a list, or a str separated by commas or whitespace."""
    if isinstance(value, str):
        urls = [u for u in re.split(r"[\s,]+", value) if u]
    elif isinstance(value, (list, tuple)) and all(isinstance(u, str) for u in value):
        urls = [u.strip() for u in value if u.strip()]
    else:
        raise InvalidRequestError(f"{name} must be a str or a list of str, got {value!r}")
    if not urls:
        raise InvalidRequestError(f"{name} is empty")
    out = []
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequestError(f"{name} must start with http:// or https://, got {url!r}")
        _check_text(url, name)
        path = parts.path.rstrip("/")
        if path.endswith("/chat/completions"):  # a full endpoint URL given by mistake
            path = path[: -len("/chat/completions")]
        url = urllib.parse.urlunsplit(parts._replace(path=path, fragment=""))
        if url not in out:
            out.append(url)
    return tuple(out)


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_text(value: str, name: str) -> None:
    """Refuse control characters (CR, LF, NUL...): they would end a header line."""
    if _CONTROL.search(value):
        raise InvalidRequestError(f"{name} holds a control character (CR, LF or NUL)")


def _check_headers(headers: object) -> dict[str, str]:
    if not (
        isinstance(headers, Mapping)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
    ):
        raise InvalidRequestError("headers must be a mapping of str to str")
    out = {}
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            raise InvalidRequestError(f"header name {name!r} is not a valid HTTP header name")
        value = value.strip()
        _check_text(value, f"the value of header {name!r}")
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise InvalidRequestError(
                f"the value of header {name!r} holds characters HTTP cannot carry (only latin-1)"
            ) from None
        out[name] = value
    return out


def _from_env(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value.strip() or None if value is not None else None


#: The settings a client takes (besides ``model``), as :func:`resolve_settings` reads them.
SETTING_NAMES = frozenset(
    ("base_url", "api_key", "timeout", "max_retries", "proxy", "headers", "verify")
)


def resolve_settings(env: Mapping[str, str] | None = None, **args: Any) -> Settings:
    """Resolve arguments > ``YLOKH_*`` environment variables > defaults. ``args`` are
    :class:`ylokh.Client`'s settings, by name (``None``: unset). Surrounding whitespace
    is stripped; an invalid ``YLOKH_*`` value names the variable.

    Raises:
        InvalidRequestError: a setting has an invalid value.
    """
    unknown = set(args) - SETTING_NAMES
    if unknown:
        raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
    base_url = args.get("base_url")
    api_key = args.get("api_key")
    timeout = args.get("timeout")
    max_retries = args.get("max_retries")
    verify = args.get("verify", True)
    env = os.environ if env is None else env
    if base_url is not None and base_url != "":
        urls = split_urls(base_url)
    else:
        from_env = _from_env(env, "YLOKH_BASE_URL")
        urls = split_urls(from_env, "YLOKH_BASE_URL") if from_env else (DEFAULT_BASE_URL,)

    if api_key is not None and not isinstance(api_key, str):
        raise InvalidRequestError("api_key must be a string")
    key = api_key.strip() if api_key is not None else _from_env(env, "YLOKH_API_KEY")
    if key:
        _check_text(key, "api_key" if api_key is not None else "YLOKH_API_KEY")
        try:
            key.encode("latin-1")
        except UnicodeEncodeError:
            raise InvalidRequestError("api_key holds characters HTTP cannot carry") from None
    key = key or None

    timeout_name = "timeout"
    if timeout is None and _from_env(env, "YLOKH_TIMEOUT"):
        timeout, timeout_name = _from_env(env, "YLOKH_TIMEOUT"), "YLOKH_TIMEOUT"
    resolved_timeout = coerce_timeout(timeout, timeout_name)
    first_token = _from_env(env, "YLOKH_FIRST_TOKEN_TIMEOUT")
    if first_token and resolved_timeout.first_token is None:
        seconds = coerce_timeout(first_token, "YLOKH_FIRST_TOKEN_TIMEOUT").read
        resolved_timeout = dataclasses.replace(resolved_timeout, first_token=seconds)

    retries: object = max_retries
    retries_name = "max_retries"
    if retries is None:
        retries = _from_env(env, "YLOKH_MAX_RETRIES")
        retries_name = "YLOKH_MAX_RETRIES"
        if retries is None:
            retries = DEFAULT_MAX_RETRIES
    if isinstance(retries, bool):
        raise InvalidRequestError(f"max_retries must be a whole number, got {retries!r}")

    if not isinstance(verify, (bool, str)):
        raise InvalidRequestError(
            f"verify must be True, False or the path of a CA bundle, got {verify!r}"
        )
    if isinstance(verify, str) and not os.path.exists(verify):
        raise InvalidRequestError(f"verify names a CA bundle that does not exist: {verify!r}")

    return Settings(
        base_urls=urls,
        api_key=key,
        timeout=resolved_timeout,
        max_retries=_int_setting(retries_name, retries),
        proxy=resolve_proxy(urls[0], args.get("proxy"), env),
        headers=_check_headers(headers) if (headers := args.get("headers")) is not None else {},
        verify=verify,
    )


def resolve_proxy(url: str, proxy: str | None, env: Mapping[str, str]) -> str | None:
    """The proxy for ``url``: ``proxy=`` > ``YLOKH_PROXY`` > ``HTTP(S)_PROXY``/``NO_PROXY``.

    An empty string for ``proxy=`` means "no proxy", ignoring the environment. A proxy
    without a scheme is an HTTP proxy, on both faces.

    Raises:
        InvalidRequestError: the proxy URL is not usable.
    """
    if proxy is not None:
        if not isinstance(proxy, str):
            raise InvalidRequestError(f"proxy must be a str, got {type(proxy).__name__}")
        return _check_proxy(proxy.strip(), "proxy") if proxy.strip() else None
    if _from_env(env, "YLOKH_PROXY"):
        return _check_proxy(env["YLOKH_PROXY"].strip(), "YLOKH_PROXY")
    scheme = urllib.parse.urlsplit(url).scheme
    lowered = {k.lower(): v for k, v in env.items() if k.lower().endswith("_proxy") and v}
    found = lowered.get(f"{scheme}_proxy") or lowered.get("all_proxy")
    if not found:
        return None
    if _bypassed(url, lowered.get("no_proxy", "")):
        return None
    return _check_proxy(found.strip(), f"{scheme.upper()}_PROXY")


PROXY_SCHEMES = ("http", "https", "socks4", "socks4a", "socks5", "socks5h")


def _check_proxy(proxy: str, name: str) -> str:
    if "://" not in proxy:
        proxy = "http://" + proxy
    _check_text(proxy, name)
    parts = urllib.parse.urlsplit(proxy)
    if parts.scheme not in PROXY_SCHEMES or not parts.hostname:
        raise InvalidRequestError(
            f"{name} must be a URL such as http://host:port or socks5://host:port, "
            f"got {redact_url(proxy)!r}"
        )
    return proxy


def _bypassed(url: str, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` (``*``, ``host``, ``.domain``, ``host:port``, IPs) covers ``url``."""
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    for entry in no_proxy.replace(" ", "").lower().split(","):
        if not entry:
            continue
        if entry == "*":
            return True
        name, _, port = entry.partition(":") if entry.count(":") == 1 else (entry, "", "")
        if port and parts.port is not None and str(parts.port) != port:
            continue
        name = name.lstrip(".").strip("[]")
        if host == name or host.endswith("." + name):
            return True
    return False
