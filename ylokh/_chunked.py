"""HTTP/1.1 chunked framing, removed in bulk, without I/O: wire bytes in, body bytes out.

Strategy: one pass over whatever the socket gave (many chunks at once), keeping only the
state between reads (data still due in the current chunk, the CRLF after it, an
unfinished size or trailer line). Every framing byte is checked: a size that is not hex,
a size line not ended by CRLF, chunk data not followed by CRLF. Errors are the
``http.client`` exceptions a face's translation table already names.
"""

from __future__ import annotations

import http.client

MAX_LINE = 65536


class ChunkedDecoder:
    """Decode a chunked body: :meth:`feed` the bytes as they arrive; :attr:`done` once the
    last chunk and trailer have come; :meth:`end` when the connection ends."""

    __slots__ = ("_crlf", "_left", "_rest", "_trailer", "done")

    def __init__(self, chunk_left: int | None = None) -> None:
        """``chunk_left``: data still due in a chunk that was begun elsewhere."""
        self._left = chunk_left or 0  # data still due in the current chunk
        self._crlf = b"" if chunk_left is None else b"\r\n"  # the CRLF due after it
        self._rest = b""  # an unfinished chunk-size or trailer line
        self._trailer = False
        self.done = False

    def end(self) -> None:
        """The connection ended: fine inside the trailer (as ``http.client``), else the
        body was cut short.

        Raises:
            http.client.IncompleteRead: the body ended before its last chunk.
        """
        if not self._trailer:
            raise http.client.IncompleteRead(b"")
        self.done = True

    def feed(self, data: bytes) -> bytes:
        """The body data in ``data`` (the next bytes on the wire), framing removed."""
        if self._rest:
            data = self._rest + data
            self._rest = b""
        out: list[bytes] = []
        pos = 0
        end = len(data)
        left = self._left
        crlf = self._crlf
        while pos < end:
            if left:  # inside a chunk's data
                take = min(left, end - pos)
                out.append(data[pos : pos + take])
                left -= take
                pos += take
                continue
            if crlf:  # the CRLF after a chunk's data, checked
                if end - pos < len(crlf):
                    if data[pos:end] != crlf[: end - pos]:
                        raise _bad_framing(data[pos:end])
                    crlf = crlf[end - pos :]
                    break
                if data[pos : pos + len(crlf)] != crlf:
                    raise _bad_framing(data[pos : pos + 2])
                pos += len(crlf)
                crlf = b""
                continue
            newline = data.find(b"\n", pos)
            if newline < 0:
                self._rest = data[pos:]
                if len(self._rest) > MAX_LINE:
                    raise http.client.LineTooLong("chunk size")
                break
            line = data[pos : newline + 1]
            pos = newline + 1
            if self._trailer:
                if line in (b"\r\n", b"\n"):
                    self.done = True
                    break
                continue
            if not line.endswith(b"\r\n"):
                raise _bad_framing(line)
            try:
                size = int(line.split(b";", 1)[0], 16)
            except ValueError:
                raise _bad_framing(line) from None
            if size < 0:
                raise _bad_framing(line)
            if size == 0:
                self._trailer = True
            else:
                left = size
                crlf = b"\r\n"
        self._left = left
        self._crlf = crlf
        return out[0] if len(out) == 1 else b"".join(out)


def _bad_framing(data: bytes) -> http.client.HTTPException:
    return http.client.HTTPException(f"malformed chunked body near {data[:40]!r}")
