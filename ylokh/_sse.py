"""Server-sent events: bytes in, events out, following the WHATWG event-stream rules.

Strategy: lines are split on bytes, never on decoded text, so a UTF-8 character cut
between two reads is never broken; data stays bytes (JSON parsers take bytes). Line
ends may be LF, CR or CRLF, even with the CR and LF in different reads. The unfinished
line, and the event being built, are bounded by ``max_line_size``: a peer can never make
us hold unbounded memory.
The common case, ``data: ...`` lines in LF-only streams, takes the fewest steps.
"""

from __future__ import annotations

from typing import NamedTuple

from ._errors import ProtocolError, quote

DEFAULT_MAX_LINE_SIZE = 1 << 20  # 1 MiB
_BOM = b"\xef\xbb\xbf"


class Event(NamedTuple):
    """One server-sent event: its ``data`` (bytes, lines joined by ``\\n``), its type
    (``event:``, ``""`` when absent), the last event ``id`` and the ``retry`` hint."""

    data: bytes
    event: str = ""
    id: str = ""
    retry: int | None = None


class SSEDecoder:
    """An incremental event-stream decoder: ``feed(bytes)`` returns the events completed.

    ``close()`` returns what an unterminated stream left pending (the WHATWG rules drop
    it; we hand it over so the caller can tell a clean end from a cut one).

    Raises:
        ProtocolError: a line is longer than ``max_line_size``.
    """

    __slots__ = (
        "_buf",
        "_cr",
        "_data",
        "_event",
        "_id",
        "_retry",
        "_size",
        "_split",
        "_started",
        "max_line_size",
    )

    def __init__(self, max_line_size: int = DEFAULT_MAX_LINE_SIZE) -> None:
        self.max_line_size = max_line_size
        self._buf = b""  # the unfinished last line
        self._cr = False  # the last read ended with CR: a LF opening the next one is not a line
        self._data: list[bytes] = []
        self._size = 0  # bytes in _data: an event of many short lines is bounded too
        self._event = ""
        self._id = ""
        self._retry: int | None = None
        self._started = False
        self._split = False  # every data line is a whole event (see split_lines)

    def feed(self, chunk: bytes) -> list[Event]:
        """Take the next bytes of the stream; return the events they complete."""
        if self._cr:
            self._cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\r" in chunk:
            self._cr = chunk[-1:] == b"\r"
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf + chunk if self._buf else chunk
        if not self._started:
            if len(buf) < 3 and _BOM.startswith(buf):
                self._buf = buf
                return []
            self._started = True
            if buf.startswith(_BOM):
                buf = buf[3:]
        if not (self._data or self._event or self._split) and len(buf) <= self.max_line_size:
            return self._blocks(buf)
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        if len(buf) > self.max_line_size:
            self._check_sizes(lines)
        return self._lines(lines)

    def _blocks(self, buf: bytes) -> list[Event]:
        """``feed`` at an event boundary (the usual case): split whole events on blank
        lines and take each one-line ``data: `` event as is, with no pass per line and no
        Python call per event; any other event goes through :meth:`_lines`, followed by
        the blank line that ended it, which leaves the state at a boundary again."""
        blocks = buf.split(b"\n\n")
        lines = blocks.pop().split(b"\n")  # after the last blank line
        events: list[Event] = []
        append = events.append
        new = tuple.__new__  # Event(...) without the Python-level NamedTuple __new__
        for block in blocks:
            if block[:6] == b"data: " and b"\n" not in block:
                append(new(Event, (block[6:], "", self._id, self._retry)))
            else:
                more = block.split(b"\n")
                more.append(b"")
                events += self._lines(more)
        self._buf = lines.pop()
        if lines:
            events += self._lines(lines)
        return events

    @property
    def pending(self) -> list[bytes]:
        """The data lines of the event not yet dispatched (no blank line seen yet)."""
        return self._data

    def split_lines(self) -> list[Event]:
        """From now on treat every ``data:`` line as a whole event, for servers that end
        events with a single line end (the rules would join their lines into one endless
        event); return the pending lines as events."""
        self._split = True
        events = [Event(line, self._event, self._id, self._retry) for line in self._data]
        self._data.clear()
        self._size = 0
        self._event = ""
        return events

    def close(self) -> list[Event]:
        """End of stream: the event still pending, if any (unterminated)."""
        lines = [self._buf, b""] if self._buf else [b""]
        self._buf = b""
        return self._lines(lines)

    def _check_sizes(self, lines: list[bytes]) -> None:
        for line in [*lines, self._buf]:
            if len(line) > self.max_line_size:
                raise ProtocolError(
                    f"the server sent a line longer than {self.max_line_size} bytes, "
                    f"starting {quote(line[:80])}"
                )

    def _lines(self, lines: list[bytes]) -> list[Event]:
        events: list[Event] = []
        data = self._data
        split = self._split
        for line in lines:
            if line[:6] == b"data: ":
                data.append(line[6:])
                self._size += len(line)
                if self._size > self.max_line_size:
                    self._too_large()
            elif not line:  # a blank line dispatches the event
                if data:
                    payload = data[0] if len(data) == 1 else b"\n".join(data)
                    events.append(Event(payload, self._event, self._id, self._retry))
                    data = self._data = []
                self._size = 0
                self._event = ""
            elif line[0] == 0x3A:  # ":" starts a comment (keep-alive pings)
                continue
            else:
                self._field(line, data)
            if split and data:
                events.append(Event(data.pop(), self._event, self._id, self._retry))
                self._size = 0
                self._event = ""
        return events

    def _too_large(self) -> None:
        raise ProtocolError(
            f"the server sent an event larger than {self.max_line_size} bytes "
            f"(in {len(self._data)} data lines), starting {quote(self._data[0][:80])}"
        )

    def _field(self, line: bytes, data: list[bytes]) -> None:
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            data.append(value)
            self._size += len(line)
            if self._size > self.max_line_size:
                self._too_large()
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id" and b"\0" not in value:
            self._id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            self._retry = int(value)
        # any other field is ignored, as the spec says
