"""Jupyter: show a streamed answer live as Markdown, updating one output in place.

    from ylokh.notebook import show
    answer = show("Explain SSE in two sentences", model="m")   # renders live, returns the text
    chat = ylokh.Chat(system="Be brief.")
    show(chat, "And in one?")                                  # a turn of a conversation
    answer = await ashow("Hello")                              # the async twin

Needs the ``notebook`` extra (IPython) to render; without IPython, or outside a kernel,
the text is printed as it arrives instead. The sync API works inside Jupyter's running
event loop as it uses no event loop at all; top-level ``async for`` over
:func:`ylokh.astream` works too.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from ._base import BaseStream, Completion

__all__ = ["Shown", "ashow", "show"]

#: Seconds between two renderings: the browser re-renders the whole Markdown each time,
#: so rendering on every token would make long answers slow to draw.
DEFAULT_INTERVAL = 0.05


def _ipython() -> tuple[Any, Any] | None:
    """IPython's ``Markdown`` and ``display`` when running in a kernel, else ``None``."""
    try:
        import IPython
        import IPython.display
    except ImportError:
        return None
    if IPython.get_ipython() is None:  # plain Python: display() would print object reprs
        return None
    return IPython.display.Markdown, IPython.display.display


class _Live:
    """One output area that shows the text so far (Markdown in a kernel, else stdout).

    Strategy: the browser re-renders the whole Markdown at each update and the text so far
    is a join of every delta, so both happen at most once per ``interval`` (and once at the
    end), never once per delta: 20,000 deltas cost 20,000 cheap clock reads, not 20,000
    joins. Outside a kernel each delta is printed as it comes.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.handle: Any = None
        self.printed = False
        self.last = 0.0
        found = _ipython()
        if found is not None:
            self.markdown, display = found
            self.handle = display(self.markdown("…"), display_id=True)

    def delta(self, text: str, stream: Any) -> None:
        if self.handle is None:
            sys.stdout.write(text)
            sys.stdout.flush()
            self.printed = True
            return
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.handle.update(self.markdown(stream.text))
            self.last = now

    def final(self, stream: Any) -> None:
        text = stream.text
        if self.handle is None:
            if self.printed and not text.endswith("\n"):
                sys.stdout.write("\n")
                sys.stdout.flush()
            return
        self.handle.update(self.markdown(text))


class Shown(Completion):
    """The answer :func:`show` returns: a :class:`ylokh.Completion` that the cell which
    showed it does not render a second time as its ``Out[]``.

    Strategy: IPython calls ``_ipython_display_`` instead of printing the repr; in the cell
    that ran ``show`` (same execution count) it shows nothing, since the live Markdown is
    already there; in a later cell (``answer`` alone on a line) it shows the text as a str.
    """

    _cell: int | None = None

    @classmethod
    def of_shown(cls, stream: Any) -> Shown:
        shown = cls.of(stream)
        assert isinstance(shown, Shown)
        shown._cell = _execution_count()
        return shown

    def _ipython_display_(self) -> None:
        if self._cell is not None and self._cell == _execution_count():
            return
        import IPython.display

        display: Any = IPython.display.display
        display(str(self))


def _execution_count() -> int | None:
    try:
        import IPython
    except ImportError:
        return None
    shell = IPython.get_ipython()
    return None if shell is None else int(shell.execution_count)


def _sync_stream(source: object, prompt: str | None, options: dict[str, Any]) -> Any:
    from .chat import Chat

    if isinstance(source, Chat):
        if prompt is None:
            raise TypeError("show(chat, prompt): a Chat needs the prompt to send")
        return source.stream(prompt, **options)
    if isinstance(source, BaseStream):
        return source
    from ._api import stream

    if prompt is not None:
        raise TypeError("show(prompt_or_messages): a second prompt only goes with a Chat")
    return stream(source, **options)


def show(
    source: object,
    prompt: str | None = None,
    *,
    interval: float = DEFAULT_INTERVAL,
    **options: Any,
) -> Completion:
    """Stream an answer into one live-updating Markdown output; return the whole text.

    Arguments:
        source: a prompt (str), a message list, a :class:`ylokh.Chat` (then ``prompt`` is
            the next question) or a stream made already (``client.stream(...)``).
        interval: seconds between two renderings (the final text is always rendered).
        **options: as for :func:`ylokh.stream` (``model``, ``temperature``, ``base_url``...).

    Returns:
        The answer as a :class:`ylokh.Completion` (a ``str`` with ``finish_reason``...);
        as the last line of a cell it is not rendered a second time.

    Raises:
        YlokhError: as :func:`ylokh.stream`; the text received so far stays displayed.
    """
    live = _Live(interval)
    stream = _sync_stream(source, prompt, options)
    with stream:
        iterator: Iterator[str] = iter(stream)
        try:
            for text in iterator:
                live.delta(text, stream)
        finally:
            live.final(stream)
    return Shown.of_shown(stream)


async def ashow(
    source: object,
    prompt: str | None = None,
    *,
    interval: float = DEFAULT_INTERVAL,
    **options: Any,
) -> Completion:
    """The async twin of :func:`show` (``await ashow(...)``), on :func:`ylokh.astream`."""
    from .chat import Chat

    live = _Live(interval)
    if isinstance(source, Chat):
        if prompt is None:
            raise TypeError("ashow(chat, prompt): a Chat needs the prompt to send")
        stream: Any = source.astream(prompt, **options)
    elif isinstance(source, BaseStream):
        stream = source
    else:
        if prompt is not None:
            raise TypeError("ashow(prompt_or_messages): a second prompt only goes with a Chat")
        from ._api import astream

        stream = astream(source, **options)
    async with stream:
        iterator: AsyncIterator[str] = stream.__aiter__()
        try:
            async for text in iterator:
                live.delta(text, stream)
        finally:
            live.final(stream)
    return Shown.of_shown(stream)
