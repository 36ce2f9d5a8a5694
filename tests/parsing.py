"""The core's readers driven as a transport drives them, for tests of the core alone:
``start`` takes the head, ``feed`` the body in pieces, ``close`` its end. An error met
after deltas is raised by the next call, as a face raises it after yielding them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ylokh._answer import Answer
from ylokh._readers import Reader, reader_for


class Parser:
    """One response: an :class:`Answer` and the reader its head chose."""

    def __init__(self, secrets: Sequence[str] = ()) -> None:
        self.answer = Answer(secrets)
        self.reader: Reader | None = None

    def start(self, status: int, headers: Mapping[str, str]) -> None:
        lowered = {k.lower(): v for k, v in headers.items()}
        self.reader = reader_for(self.answer, status, lowered)

    def feed(self, data: bytes) -> list[str]:
        assert self.reader is not None
        if self.answer.pending is not None:
            raise self.answer.pending
        if self.answer.ended:
            return []
        return self.reader.feed(data)

    def close(self) -> list[str]:
        assert self.reader is not None
        if self.answer.pending is not None:
            raise self.answer.pending
        if self.answer.ended:
            return []
        return self.reader.feed(b"", True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.answer, name)
