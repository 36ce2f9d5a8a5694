"""Configuration: the Timeout value, and resolving arguments > ``YLOKH_*`` env > defaults.

Strategy: everything is resolved once, when a client is built, into a frozen
:class:`Settings`; the per-request path only reads it. Proxies are resolved here too
(once per client), so honouring ``HTTPS_PROXY``/``NO_PROXY`` costs nothing per request
and both faces route the same way.
"""

from __future__ import annotations

import math
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Union

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
    wait for bytes, ``total`` bounds the whole call, retries and back-off included.
    """

    connect: float | None = DEFAULT_CONNECT_TIMEOUT
    read: float | None = DEFAULT_READ_TIMEOUT
    total: float | None = None

    def __post_init__(self) -> None:
        for name in ("connect", "read", "total"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidRequestError(f"Timeout.{name} must be a number, got {value!r}")
            if math.isnan(value) or value <= 0:
                raise InvalidRequestError(f"Timeout.{name} must be positive, got {value!r}")


TimeoutLike = Union[Timeout, float, int, None]


def coerce_timeout(value: object) -> Timeout:
    """A :class:`Timeout` from a Timeout, a bare number (the read timeout) or ``None``."""
    if value is None:
        return Timeout()
    if isinstance(value, Timeout):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidRequestError(f"timeout must be a number or ylokh.Timeout, got {value!r}")
    try:
        seconds = float(value)
    except ValueError:
        raise InvalidRequestError(f"timeout must be a number, got {value!r}") from None
    if math.isnan(seconds) or seconds < 0:
        raise InvalidRequestError(f"timeout must not be negative, got {value!r}")
    if seconds == 0:
        return Timeout(connect=None, read=None)
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

    base_url: str
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
    def chat_url(self) -> str:
        """The URL of the chat completions endpoint."""
        return self.base_url + "/chat/completions"

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
            found += [parts.password or "", f"{parts.username}:{parts.password}"]
        for name, value in self.headers.items():
            if name.lower() in ("authorization", "api-key", "x-api-key", "proxy-authorization"):
                found.append(value.split(" ", 1)[-1])
        return tuple(s for s in found if s)

    def __repr__(self) -> str:
        proxy = redact_url(self.proxy) if self.proxy else None
        key = "set" if self.api_key else None
        return (
            f"Settings(base_url={self.base_url!r}, api_key={key!r}, timeout={self.timeout!r}, "
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


def resolve_settings(
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: object = None,
    max_retries: int | None = None,
    proxy: str | None = None,
    headers: Mapping[str, str] | None = None,
    verify: bool | str = True,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve arguments > ``YLOKH_*`` environment variables > defaults.

    Raises:
        InvalidRequestError: a setting has an invalid value.
    """
    env = os.environ if env is None else env
    url = base_url or env.get("YLOKH_BASE_URL") or DEFAULT_BASE_URL
    if not isinstance(url, str):
        raise InvalidRequestError(f"base_url must be a string, got {url!r}")
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise InvalidRequestError(f"base_url must start with http:// or https://, got {url!r}")
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):  # a full endpoint URL given by mistake
        url = url[: -len("/chat/completions")]

    key = api_key if api_key is not None else env.get("YLOKH_API_KEY") or None
    if key is not None and not isinstance(key, str):
        raise InvalidRequestError("api_key must be a string")

    if timeout is None and env.get("YLOKH_TIMEOUT"):
        timeout = env["YLOKH_TIMEOUT"]
    retries: object = max_retries
    if retries is None:
        retries = env.get("YLOKH_MAX_RETRIES") or DEFAULT_MAX_RETRIES
    if isinstance(retries, bool):
        raise InvalidRequestError(f"max_retries must be a whole number, got {retries!r}")

    if headers is not None and not (
        isinstance(headers, Mapping)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
    ):
        raise InvalidRequestError("headers must be a mapping of str to str")

    return Settings(
        base_url=url,
        api_key=key,
        timeout=coerce_timeout(timeout),
        max_retries=_int_setting("max_retries", retries),
        proxy=resolve_proxy(url, proxy, env),
        headers=dict(headers or {}),
        verify=verify,
    )


def resolve_proxy(url: str, proxy: str | None, env: Mapping[str, str]) -> str | None:
    """The proxy for ``url``: ``proxy=`` > ``YLOKH_PROXY`` > ``HTTP(S)_PROXY``/``NO_PROXY``.

    An empty string for ``proxy=`` means "no proxy", ignoring the environment.
    """
    if proxy is not None:
        return proxy or None
    if env.get("YLOKH_PROXY"):
        return env["YLOKH_PROXY"]
    scheme = urllib.parse.urlsplit(url).scheme
    lowered = {k.lower(): v for k, v in env.items() if k.lower().endswith("_proxy") and v}
    found = lowered.get(f"{scheme}_proxy") or lowered.get("all_proxy")
    if not found:
        return None
    if _bypassed(url, lowered.get("no_proxy", "")):
        return None
    return found


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
