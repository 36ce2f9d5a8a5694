"""Body readers: one small reader per kind of body, chosen once from the response head.

Strategy (as h11's ``_readers.py``): every reader has the one contract
``feed(data, end=False) -> list[str]``: take the next bytes of the body (``end=True``
marks its end, with or without last bytes) and return the text deltas they complete.
A whole body fed at once and a stream fed in pieces go through the same call, so no face
can drop what ``feed`` returns. Readers only frame bytes; :class:`~ylokh._answer.Answer`
decides what the bytes mean. A reader that has seen enough sets ``answer.ended``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from typing import Any

from ._answer import Answer
from ._errors import ProtocolError, status_error
from ._protocol import JSONError, loads, parse_retry_after
from ._sse import DEFAULT_MAX_LINE_SIZE, SSEDecoder

MAX_ERROR_BODY = 64 * 1024
MAX_JSON_BODY = 64 * 1024 * 1024
HEAD_SIZE = 512  # the first body bytes kept for quoting


class Reader:
    """The contract of every reader (and the base of each)."""

    __slots__ = ("answer",)

    def __init__(self, answer: Answer) -> None:
        self.answer = answer

    def feed(self, data: bytes, end: bool = False) -> list[str]:
        """Take the next body bytes (``end``: the body is over); return the text deltas.

        Raises:
            YlokhError: the body says the answer failed, or is not an answer.
        """
        raise NotImplementedError

    def _keep_head(self, data: bytes) -> None:
        answer = self.answer
        answer.received += len(data)
        if len(answer.head) < HEAD_SIZE:
            answer.head += data[:HEAD_SIZE]


class EventReader(Reader):
    """``text/event-stream``: deltas as their events complete."""

    __slots__ = ("_sse",)

    def __init__(self, answer: Answer, max_line_size: int = DEFAULT_MAX_LINE_SIZE) -> None:
        super().__init__(answer)
        self._sse = SSEDecoder(max_line_size)

    def feed(self, data: bytes, end: bool = False) -> list[str]:
        answer = self.answer
        answer.received += len(data)
        if len(answer.head) < HEAD_SIZE:
            answer.head += data[:HEAD_SIZE]
        events = self._sse.feed(data) if data else []
        if not answer.chunks and not events and len(self._sse.pending) > 1:
            events = self._split_lines()  # only until the first event: cheap
        out = answer.events(events)
        if end and not answer.ended:
            out += answer.events(self._sse.close(), final=True)
            answer.check_end()
        return out

    def _split_lines(self) -> list[Any]:
        """A server that ends events with a single line end sends one endless event of
        ``data:`` lines, dispatched only at the end of the body. When the first of its
        lines is a whole JSON chunk, every line is taken as an event, so deltas stream."""
        first = self._sse.pending[0]
        try:
            if first[:1] != b"{" or type(loads(first)) is not dict:
                return []
        except JSONError:
            return []  # a genuine multi-line event
        return self._sse.split_lines()


class CompletionReader(Reader):
    """``application/json``: a whole ``chat.completion``, read to the end. A body that
    starts with ``data:`` is an event stream mislabelled as JSON, and read as one."""

    __slots__ = ("_body", "_events")

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer)
        self._body: list[bytes] = []
        self._events: EventReader | None = None

    def feed(self, data: bytes, end: bool = False) -> list[str]:
        if self._events is not None:
            return self._events.feed(data, end)
        if not self._body and data.lstrip()[:5] == b"data:":
            self._events = EventReader(self.answer)
            return self._events.feed(data, end)
        self._keep_head(data)
        if self.answer.received > MAX_JSON_BODY:
            raise self.answer.protocol_error(f"the completion is larger than {MAX_JSON_BODY} bytes")
        if data:
            self._body.append(data)
        if not end:
            return []
        return self.answer.completion(b"".join(self._body))


class ErrorReader(Reader):
    """An error status: the body holds the server's message (its first 64 KiB)."""

    __slots__ = ("_body", "_key_sent", "_retry_after", "_url")

    def __init__(
        self, answer: Answer, headers: Mapping[str, str], url: str | None, key_sent: bool
    ) -> None:
        super().__init__(answer)
        self._body = bytearray()
        self._retry_after = parse_retry_after(headers)
        self._url = url
        self._key_sent = key_sent

    def feed(self, data: bytes, end: bool = False) -> list[str]:
        self._keep_head(data)
        self._body += data[: MAX_ERROR_BODY - len(self._body)]
        if end or len(self._body) >= MAX_ERROR_BODY:
            self.answer.ended = True
            raise status_error(
                self.answer.status,
                bytes(self._body),
                secrets=self.answer.secrets,
                retry_after=self._retry_after,
                url=self._url,
                key_sent=self._key_sent,
            )
        return []


class PageReader(Reader):
    """A web page where an API answer was expected: its first bytes are quoted."""

    __slots__ = ()

    def feed(self, data: bytes, end: bool = False) -> list[str]:
        self._keep_head(data)
        if end or len(self.answer.head) >= HEAD_SIZE:
            self.answer.ended = True
            raise self.answer.protocol_error(
                "expected an API answer but the server sent a web page"
            )
        return []


class SniffReader(Reader):
    """No content type we know: the first bytes decide (``{`` a completion, ``<`` a page,
    anything else an event stream)."""

    __slots__ = ("_reader",)

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer)
        self._reader: Reader | None = None

    def feed(self, data: bytes, end: bool = False) -> list[str]:
        reader = self._reader
        if reader is None:
            first = data.lstrip()[:1]
            if not first:
                if end:  # an empty body
                    self.answer.check_end()
                return []
            kind = {b"{": CompletionReader, b"<": PageReader}.get(first, EventReader)
            reader = self._reader = kind(self.answer)
        return reader.feed(data, end)


class DecodingReader(Reader):
    """A body in a content coding (``gzip``, ``deflate``, stacked ones too): decoded here,
    in the core, so both faces read raw bytes and decide the same bytes the same way."""

    __slots__ = ("_codings", "_decoders", "_reader")

    def __init__(self, reader: Reader, codings: list[str]) -> None:
        super().__init__(reader.answer)
        self._reader = reader
        self._codings = codings  # in the order they were applied
        self._decoders = [_decoder(coding) for coding in reversed(codings)]

    def feed(self, data: bytes, end: bool = False) -> list[str]:
        try:
            for decoder in self._decoders:
                data = decoder.feed(data)
        except zlib.error as exc:
            self.answer.ended = True
            raise ProtocolError(
                f"the server sent a body in Content-Encoding {', '.join(self._codings)} "
                f"that cannot be decoded: {exc}"
            ) from None
        return self._reader.feed(data, end)


class _Inflate:
    """gzip (every member of it) or deflate (zlib-wrapped, or raw as some servers send)."""

    __slots__ = ("_fed", "_gzip", "_zlib")

    def __init__(self, gzip: bool) -> None:
        self._gzip = gzip
        self._fed = False
        self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS if gzip else zlib.MAX_WBITS)

    def feed(self, data: bytes) -> bytes:
        try:
            out = self._zlib.decompress(data)
        except zlib.error:
            if self._gzip or self._fed:
                raise
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            out = self._zlib.decompress(data)
        self._fed = True
        rest = self._zlib.unused_data
        if self._gzip and rest:  # the next member
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out += self.feed(rest)
        return out


def _decoder(coding: str) -> _Inflate:
    if coding in ("gzip", "x-gzip", "deflate"):
        return _Inflate(gzip=coding != "deflate")
    # ylokh asks for gzip or deflate only (Accept-Encoding)
    raise ProtocolError(
        f"the server sent a body in a Content-Encoding ylokh does not decode: {coding[:40]!r}"
    )


#: The reader for each content type of a successful answer; any other is sniffed.
READERS: dict[str, Callable[[Answer], Reader]] = {
    "text/event-stream": EventReader,
    "application/json": CompletionReader,
    "text/html": PageReader,
}


def reader_for(
    answer: Answer,
    status: int,
    headers: Mapping[str, str],
    *,
    url: str | None = None,
    key_sent: bool = True,
) -> Reader:
    """The reader for a response, chosen once from its head (``headers`` must be
    case-insensitive); ``url`` and ``key_sent`` make error messages name the usual
    mistakes."""
    answer.status = status
    if status >= 400 or status < 200:
        reader: Reader = ErrorReader(answer, headers, url, key_sent)
    else:
        content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        reader = READERS.get(content_type, SniffReader)(answer)
    coding = headers.get("content-encoding")
    if coding:
        codings = [c.strip().lower() for c in coding.split(",")]
        codings = [c for c in codings if c and c != "identity"]
        if codings:
            try:
                return DecodingReader(reader, codings)
            except ProtocolError:
                if not isinstance(reader, ErrorReader):
                    raise
                # an error status stays one (its class, its retry) even in a coding we
                # do not decode: its body is quoted as sent
    return reader
