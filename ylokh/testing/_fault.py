"""Fault specs: parsing the ``item;item=value`` strings that tell the test server to misbehave.

The grammar is one table (:data:`_ITEMS`) mapping an item name to the :class:`Fault` field it
sets and the converter for its value. The table is made from the fields themselves (the item
``stall-after`` sets ``stall_after``, converted as its type says), so a new fault is one field
plus the code that acts on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["Fault"]

# The default stall lasts longer than any sane client read timeout.
DEFAULT_STALL = 60.0
DEFAULT_SLOW = 0.01

ERROR_SHAPES = ("openai", "string", "message", "detail", "text", "html")
FRAMINGS = ("chunked", "length", "close")
EOLS = {"lf": "\n", "crlf": "\r\n", "cr": "\r"}

_N = TypeVar("_N", int, float)


@dataclass(frozen=True)
class Fault:
    """One parsed fault spec; every field defaults to "behave normally".

    Build it with :meth:`Fault.parse`; ``str(fault)`` gives back the spec it came from.
    A spec is items separated by ``;``; ``k`` counts content chunks sent before the fault::

        status=N  error-shape=openai|string|message|detail|text|html  echo-auth
        retry-after=V  retry-after-ms=N  header=Name:Value (repeatable)
        reset  stall[=S]  truncate  malformed  slow[=S]  html  empty  json-stream
        stall-after=k[,S]  truncate-after=k  reset-after=k  malformed-after=k  error-after=k
        eol=lf|crlf|cr (or just crlf / cr / lf)  comments  fields  bom  split-utf8
        long-line=N  gzip  framing=chunked|length|close
        usage-chunk  no-role  null-content  single-newline  no-space  extra-fields
        reasoning  tools  no-done  no-finish  delay=S  chunks=N
        ttft=S  itl=S  jitter=F  timings
    """

    spec: str = ""
    # Error responses.
    status: int | None = None
    error_shape: str = "openai"
    retry_after: str | None = None
    retry_after_ms: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    echo_auth: bool = False
    # Connection-level faults before or during the body.
    reset: bool = False
    stall: float | None = None
    stall_after: int | None = None
    truncate: bool = False
    truncate_after: int | None = None
    reset_after: int | None = None
    malformed: bool = False
    malformed_after: int | None = None
    error_after: int | None = None
    slow: float | None = None
    # Wrong kind of body.
    html: bool = False
    empty: bool = False
    json_stream: bool = False
    # Wire encoding of the stream.
    eol: str = "\n"
    comments: bool = False
    fields: bool = False
    bom: bool = False
    split_utf8: bool = False
    long_line: int | None = None
    gzip: bool = False
    framing: str | None = None
    # Protocol quirks of real servers.
    usage_chunk: bool = False
    no_role: bool = False
    null_content: bool = False
    single_newline: bool = False
    no_space: bool = False
    extra_fields: bool = False
    reasoning: bool = False
    tools: bool = False
    no_done: bool = False
    no_finish: bool = False
    # Per-request overrides of the server options.
    delay: float | None = None
    chunks: int | None = None
    # Known latencies (see _latency.py) and llama.cpp's timings object in the last chunk.
    ttft: float | None = None
    itl: float | None = None
    jitter: float | None = None
    timings: bool = False

    def __str__(self) -> str:
        return self.spec

    @property
    def stall_seconds(self) -> float:
        """How long a stall lasts (``stall=S``, default 60 s)."""
        return DEFAULT_STALL if self.stall is None else self.stall

    @property
    def stalls_before_headers(self) -> bool:
        """True when ``stall`` means a stall before the headers, not ``stall-after``'s length."""
        return self.stall is not None and self.stall_after is None

    @classmethod
    def parse(cls, spec: str | Fault | None) -> Fault:
        """Parse ``"status=503;retry-after=1"`` style specs; raise ValueError on unknown items.

        ``None`` and ``""`` give the no-op fault; a :class:`Fault` is returned unchanged.
        """
        if isinstance(spec, Fault):
            return spec
        if spec is None:
            return cls()
        if not isinstance(spec, str):
            raise TypeError(f"fault spec must be a string, got {type(spec).__name__}")
        values: dict[str, Any] = {}
        headers: list[tuple[str, str]] = []
        for raw in spec.split(";"):
            item = raw.strip()
            if not item:
                continue
            name, eq, value = item.partition("=")
            name = name.strip().lower()
            arg: str | None = value.strip() if eq else None
            if name == "header":
                headers.append(_header(arg))
                continue
            if name in EOLS and arg is None:  # "crlf" is shorthand for "eol=crlf"
                values["eol"] = EOLS[name]
                continue
            if name == "stall-after" and arg is not None and "," in arg:
                # "stall-after=k,S" is shorthand for "stall-after=k;stall=S".
                arg, _, seconds = arg.partition(",")
                values["stall"] = _seconds("stall", seconds.strip())
            row = _ITEMS.get(name)
            if row is None:
                known = ", ".join(sorted([*_ITEMS, "header", *EOLS]))
                raise ValueError(f"unknown fault item {item!r} in {spec!r}; known items: {known}")
            field, convert = row
            values[field] = convert(name, arg)
        if headers:
            values["headers"] = tuple(headers)
        return dataclasses.replace(cls(), spec=spec.strip(), **values)


def _flag(name: str, arg: str | None) -> bool:
    if arg is not None:
        raise ValueError(f"fault item {name!r} takes no value, got {arg!r}")
    return True


def _need(name: str, arg: str | None) -> str:
    if arg is None or arg == "":
        raise ValueError(f"fault item {name!r} needs a value ({name}=...)")
    return arg


def _read(name: str, arg: str | None, kind: Callable[[str], _N], what: str) -> _N:
    text = _need(name, arg)
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"fault item {name!r} needs {what}, got {text!r}") from None


def _count(name: str, arg: str | None) -> int:
    number = _read(name, arg, int, "a whole number")
    if number < 0:
        raise ValueError(f"fault item {name!r} must not be negative, got {number}")
    return number


def _status(name: str, arg: str | None) -> int:
    number = _count(name, arg)
    if not 100 <= number <= 599:
        raise ValueError(f"fault item {name!r} needs an HTTP status 100-599, got {number}")
    return number


def _seconds(name: str, arg: str | None) -> float:
    number = _read(name, arg, float, "seconds")
    if not number >= 0:  # refuses nan too
        raise ValueError(f"fault item {name!r} must not be negative, got {arg!r}")
    return number


def _optional_seconds(default: float) -> Callable[[str, str | None], float]:
    def convert(name: str, arg: str | None) -> float:
        return default if arg is None else _seconds(name, arg)

    return convert


def _text(name: str, arg: str | None) -> str:
    return _need(name, arg)


def _choice(options: tuple[str, ...]) -> Callable[[str, str | None], str]:
    def convert(name: str, arg: str | None) -> str:
        text = _need(name, arg).lower()
        if text not in options:
            raise ValueError(
                f"fault item {name!r} must be one of {', '.join(options)}; got {arg!r}"
            )
        return text

    return convert


def _eol(name: str, arg: str | None) -> str:
    return EOLS[_choice(tuple(EOLS))(name, arg)]


def _header(arg: str | None) -> tuple[str, str]:
    key, colon, value = _need("header", arg).partition(":")
    if not colon or not key.strip():
        raise ValueError(f"fault item 'header' needs Name:Value, got {arg!r}")
    return key.strip(), value.strip()


Converter = Callable[[str, str | None], Any]  # (item name, value or None) -> field value

# A field's value is converted as its type says (the annotations are strings, as
# ``from __future__ import annotations`` makes them), unless _BY_FIELD names a converter.
_BY_TYPE: dict[str, Converter] = {
    "bool": _flag,
    "int | None": _count,
    "float | None": _seconds,
    "str | None": _text,
}
_BY_FIELD: dict[str, Converter] = {
    "status": _status,
    "error_shape": _choice(ERROR_SHAPES),
    "stall": _optional_seconds(DEFAULT_STALL),
    "slow": _optional_seconds(DEFAULT_SLOW),
    "eol": _eol,
    "framing": _choice(FRAMINGS),
}

# item name -> (Fault field, converter): every field but ``spec`` and ``headers`` (which the
# repeatable ``header`` item fills), named with dashes. A field of a new type fails here,
# at import, until it has a converter.
_ITEMS: dict[str, tuple[str, Converter]] = {
    field.name.replace("_", "-"): (
        field.name,
        _BY_FIELD.get(field.name) or _BY_TYPE[str(field.type)],
    )
    for field in dataclasses.fields(Fault)
    if field.name not in ("spec", "headers")
}
