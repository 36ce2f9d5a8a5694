"""The fault matrix: every fault of the bundled server x {sync, async} x {stream, complete}.

Each row of :data:`MATRIX` names a fault spec (or a scripted sequence of them) and the exact
outcome expected in stream and complete mode: the text the caller received, the error's
classes, its ``.partial``, how many requests the server saw, the back-off waits when the
server dictates them, and that every connection ended (the server finished the answer, saw
the client hang up, or cut it itself). After each fault the same client must still work.

``docs/faults.md`` is rendered from :data:`MATRIX`; ``test_doc_matches_the_matrix`` keeps it
current. Regenerate it with ``python tests/test_faults.py``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import ylokh
from ylokh import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    IncompleteStreamError,
    NotFoundError,
    ProtocolError,
    RateLimitError,
    ServerError,
)
from ylokh._retry import FIRST_WAIT, JITTER, MAX_WAIT
from ylokh.testing import Fault, Server

PROMPT = "one two three four"
ANSWER = "one two three four"
FAST = ylokh.Timeout(connect=2, read=1)  # stalls last 5 s: the client gives up first (x3)
DOC = Path(__file__).resolve().parent.parent / "docs" / "faults.md"


@dataclass(frozen=True)
class Expect:
    """One expected outcome."""

    text: str = ANSWER  # what the caller received (stream: the deltas; complete: the result)
    error: tuple[type[BaseException], ...] = ()  # the error is an instance of each
    partial: str | None = None  # the error's .partial (None: must not have one)
    requests: int = 1  # requests the server saw (max_retries=2)
    waits: tuple[float, ...] | None = None  # back-off waits the server dictated
    cause: type[BaseException] | None = None  # the ylokh error behind an Incomplete...

    def describe(self) -> str:
        """A table cell."""
        if not self.error:
            words = "ok" if self.text == ANSWER else f"ok, text {self.text!r}"
        else:
            names = " + ".join(f"`{cls.__name__}`" for cls in self.error)
            words = f"{self.text!r} then {names}" if self.text else names
            if self.partial is not None:
                words += f", partial={self.partial!r}"
            if self.cause is not None:
                words += f" (cause `{self.cause.__name__}`)"
        if self.requests != 1:
            words += f"; {self.requests} requests"
        if self.waits is not None:
            words += f"; waits {', '.join(f'{w:g}' for w in self.waits)} s"
        return words


@dataclass(frozen=True)
class Row:
    """A fault and its outcomes; ``script`` is the faults of successive requests."""

    fault: str
    stream: Expect
    complete: Expect
    script: tuple[str | None, ...] = ()

    @property
    def specs(self) -> tuple[str | None, ...]:
        return self.script or (self.fault,) * 3

    @property
    def label(self) -> str:
        if not self.script:
            return self.fault or "(none)"
        return " → ".join(spec or "ok" for spec in self.script)


OK = Expect()


def fails(*error: type[BaseException], requests: int = 1, **more: Any) -> Expect:
    """No text, then ``error``."""
    return Expect(text="", error=error, requests=requests, **more)


def retried(*error: type[BaseException], **more: Any) -> Expect:
    """No text, then ``error`` after the first try and two retries."""
    return fails(*error, requests=3, **more)


def breaks(
    text: str, *error: type[BaseException], cause: type[BaseException] | None = None
) -> Expect:
    """``text`` reached the caller, then an :class:`IncompleteStreamError` holding it."""
    return Expect(text=text, error=(IncompleteStreamError, *error), partial=text, cause=cause)


def same(expect: Expect, fault: str) -> Row:
    return Row(fault, expect, expect)


def stream_only(fault: str, expect: Expect) -> Row:
    """A fault of the event stream: a completion (``stream: false``) is not affected."""
    return Row(fault, expect, OK)


MATRIX: tuple[Row, ...] = (
    same(OK, ""),
    # -- error statuses: the right class, retried only when the status says so
    same(fails(BadRequestError), "status=400"),
    same(fails(AuthenticationError), "status=401"),
    same(fails(AuthenticationError), "status=403"),
    same(fails(NotFoundError), "status=404"),
    same(fails(BadRequestError), "status=422"),
    same(retried(APIStatusError), "status=408"),
    same(retried(APIStatusError), "status=409"),
    same(retried(RateLimitError), "status=429"),
    same(retried(ServerError), "status=500"),
    same(fails(ServerError), "status=501"),
    same(retried(ServerError), "status=502"),
    same(retried(ServerError), "status=503"),
    same(retried(ServerError), "status=504"),
    same(retried(ServerError), "status=503;error-shape=string"),
    same(retried(ServerError), "status=503;error-shape=message"),
    same(retried(ServerError), "status=503;error-shape=detail"),
    same(retried(ServerError), "status=503;error-shape=text"),
    same(retried(ServerError), "status=503;error-shape=html"),
    # -- the server's own waits: Retry-After (seconds or a date) and retry-after-ms, capped
    same(retried(RateLimitError, waits=(1, 1)), "status=429;retry-after=1"),
    same(retried(ServerError, waits=(0.25, 0.25)), "status=503;retry-after-ms=250"),
    same(retried(ServerError, waits=(60, 60)), "status=503;retry-after=3600"),
    same(
        retried(ServerError, waits=(0, 0)), "status=503;retry-after=Wed, 21 Oct 2015 07:28:00 GMT"
    ),
    # -- a failure, then success
    Row("", Expect(requests=2), Expect(requests=2), script=("status=503", None)),
    Row("", Expect(requests=2), Expect(requests=2), script=("status=429;retry-after=0", None)),
    Row("", Expect(requests=3), Expect(requests=3), script=("reset", "status=502", None)),
    Row("", Expect(requests=2), Expect(requests=2), script=("stall=5", None)),
    Row("", fails(BadRequestError), fails(BadRequestError), script=("status=400", None)),
    # -- connection faults before the body: retried
    same(retried(APIConnectionError), "reset"),
    same(retried(APITimeoutError), "stall=5"),
    # -- faults once the body has started: never retried
    stream_only("stall-after=0,5", fails(APITimeoutError)),
    stream_only("stall-after=2,5", breaks("one two ", cause=APITimeoutError)),
    Row("truncate", breaks("one ", cause=APIConnectionError), retried(APIConnectionError)),
    stream_only("truncate-after=0", fails(ProtocolError)),
    stream_only("truncate-after=2", breaks("one two ")),
    stream_only("reset-after=0", fails(APIConnectionError)),
    stream_only("reset-after=2", breaks("one two ", cause=APIConnectionError)),
    same(fails(ProtocolError), "malformed"),
    stream_only("malformed-after=0", fails(ProtocolError)),
    stream_only("malformed-after=2", breaks("one two ", ProtocolError)),
    stream_only("error-after=0", fails(ServerError)),
    stream_only("error-after=2", breaks("one two ", ServerError)),
    stream_only("no-done;no-finish", breaks(ANSWER)),
    stream_only("long-line=2000000", fails(ProtocolError)),
    # -- the wrong kind of body
    same(fails(ProtocolError), "html"),
    same(fails(ProtocolError), "empty"),
    # -- wire variations that must not matter
    same(OK, "crlf"),
    same(OK, "cr"),
    same(OK, "comments"),
    same(OK, "fields"),
    same(OK, "bom"),
    same(OK, "single-newline"),
    same(OK, "no-space"),
    same(OK, "gzip"),
    same(OK, "framing=chunked"),
    same(OK, "framing=length"),
    same(OK, "framing=close"),
    same(Expect(text=ANSWER + " 日本"), "split-utf8"),
    same(OK, "slow=0.001"),
    same(OK, "delay=0.02"),
    same(OK, "json-stream"),
    same(OK, "no-done"),
    same(OK, "no-finish"),
    same(OK, "no-role"),
    same(OK, "null-content"),
    same(OK, "usage-chunk"),
    same(OK, "extra-fields"),
    same(OK, "reasoning"),
    same(Expect(text=""), "tools"),
    # -- combinations
    same(Expect(text=ANSWER + " 日本"), "gzip;split-utf8;crlf"),
    same(OK, "cr;comments;fields;bom"),
    stream_only("gzip;reset-after=2", breaks("one two ", cause=APIConnectionError)),
    stream_only("framing=close;truncate-after=2", breaks("one two ")),
    stream_only("crlf;error-after=1", breaks("one ", ServerError)),
)

_CELLS = [(row, mode) for row in MATRIX for mode in ("stream", "complete")]


def render_doc() -> str:
    """docs/faults.md, from the matrix."""
    lines = [
        "# Fault matrix: what each fault of the test server does to a call",
        "",
        "Generated from `tests/test_faults.py` (`python tests/test_faults.py`); the test",
        "`test_doc_matches_the_matrix` fails when this file and the matrix differ.",
        "",
        "Every row runs against the bundled server (`ylokh.testing`, fault spec syntax in",
        "`ylokh/testing/_fault.py`) on real sockets, on both faces (`requests` and `aiohttp`)",
        "and in both modes (`stream()` and `complete()`), with the same outcome on both faces.",
        "Settings: `max_retries=2`, `timeout=Timeout(connect=2, read=0.25)`, back-off sleeps",
        f"recorded instead of slept (each random wait is within 0 .. {FIRST_WAIT:g} x 2^n s,",
        f"at most {MAX_WAIT:g} s). The prompt is {PROMPT!r}; the server echoes it in four chunks.",
        "",
        "Reading a cell: `ok` is the whole answer; `'one two ' then X` means those deltas",
        "reached the caller, then X was raised (`A + B`: an instance of both). Unless a cell",
        "says otherwise the server saw one request. `→` separates the faults of successive",
        "requests. Every connection ended (answered, hung up by the client, or cut by the",
        "server) and the same client works again afterwards.",
        "",
        "| fault | stream | complete |",
        "| --- | --- | --- |",
    ]
    for row in MATRIX:
        label = row.label.replace("|", "\\|")
        lines.append(f"| `{label}` | {row.stream.describe()} | {row.complete.describe()} |")
    return "\n".join(lines) + "\n"


def test_doc_matches_the_matrix() -> None:
    assert DOC.read_text(encoding="utf-8") == render_doc(), (
        "docs/faults.md is out of date: run python tests/test_faults.py"
    )


@pytest.fixture(scope="module")
def fault_server() -> Iterator[Server]:
    with Server() as srv:
        yield srv


def call(face: Any, mode: str, client: Any) -> tuple[str, BaseException | None]:
    """Run one call; return the text the caller received and the error."""
    out = getattr(face, mode)(PROMPT, client=client)
    if mode == "stream":
        assert out.stream.text == (out.error.partial if hasattr(out.error, "partial") else out.text)
        return out.text, out.error
    return ("" if out.result is None else str(out.result)), out.error


def server_cuts(spec: str | None) -> bool:
    """Whether the server itself ends the connection mid-answer (RST or FIN)."""
    fault = Fault.parse(spec)
    return fault.reset or fault.truncate or fault.reset_after is not None


def ended(rec: Any, within: float = 2.0) -> bool:
    """Whether the server finished the answer or saw the client hang up (polled: the
    server sets ``completed`` just after its last write, which the client may beat)."""
    deadline = time.monotonic() + within
    while not (rec.completed or rec.disconnected.is_set()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.mark.parametrize(("row", "mode"), _CELLS, ids=[f"{r.label}-{m}" for r, m in _CELLS])
def test_fault(
    face: Any, fault_server: Server, row: Row, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    expect: Expect = getattr(row, mode)
    srv = fault_server
    srv.reset()
    srv.script(row.specs)
    client = face.client(base_url=srv.base_url, timeout=FAST, max_retries=2)
    waits = face.record_sleeps(client)

    with caplog.at_level(logging.WARNING, logger="ylokh"):
        text, error = call(face, mode, client)

    assert text == expect.text
    if expect.error:
        assert error is not None, "expected an error"
        for cls in expect.error:
            assert isinstance(error, cls), f"{error!r} is not a {cls.__name__}"
        assert not isinstance(error, IncompleteStreamError) or IncompleteStreamError in expect.error
        if expect.partial is None:
            assert not isinstance(error, IncompleteStreamError)
        else:
            assert error.partial == expect.partial  # type: ignore[attr-defined]
        if expect.cause is not None:
            assert isinstance(error.__cause__, expect.cause), repr(error.__cause__)
        assert "Traceback" not in str(error) and str(error)
    else:
        assert error is None, repr(error)

    seen = srv.requests
    assert len(seen) == expect.requests
    # retries: one WARNING each, naming the wait; waits as dictated or within the jitter range
    retries = [r for r in caplog.records if r.name == "ylokh" and r.levelno == logging.WARNING]
    assert len(retries) == len(waits) == expect.requests - 1
    if expect.waits is not None:
        # the server's wait, plus up to JITTER of it, so clients do not retry in step
        assert len(waits) == len(expect.waits)
        for wait, asked in zip(waits, expect.waits, strict=True):
            assert asked - 0.05 <= wait <= asked * (1 + JITTER) + 0.05, (waits, expect.waits)
    else:
        for n, wait in enumerate(waits, start=1):
            assert 0 <= wait <= min(MAX_WAIT, FIRST_WAIT * 2 ** (n - 1))
    for record, wait in zip(retries, waits, strict=True):
        assert f"{wait:.2f} s" in record.getMessage()

    # every connection ended: answered in full, hung up by the client, or cut by the server
    for rec, spec in zip(seen, row.specs[: len(seen)], strict=True):
        assert server_cuts(spec) or ended(rec), rec

    # the client is still usable and no dirty connection is reused
    srv.reset()
    text, error = call(face, mode, client)
    assert error is None and text == ANSWER


# -- leaving early, concurrency ------------------------------------------------------------


def test_break_closes_the_connection_at_once(face: Any, fault_server: Server) -> None:
    srv = fault_server
    srv.reset()
    client = face.client(base_url=srv.base_url)
    out = face.stream(PROMPT, client=client, stop_after=1, ylokh_fault="delay=0.5")
    assert out.deltas == ["one "] and out.error is None
    (rec,) = srv.requests
    assert rec.disconnected.wait(0.3), "the server did not see the client hang up"
    assert not rec.completed


def test_error_mid_stream_closes_the_connection(face: Any, fault_server: Server) -> None:
    srv = fault_server
    srv.reset()
    client = face.client(base_url=srv.base_url)
    # the malformed chunk comes after 1 delta; the server would go on for 3 x 0.5 s
    out = face.stream(PROMPT, client=client, ylokh_fault="malformed-after=1;delay=0.5")
    assert out.deltas == ["one "]
    assert isinstance(out.error, ProtocolError) and isinstance(out.error, IncompleteStreamError)
    (rec,) = srv.requests
    assert rec.disconnected.wait(0.3)


def test_close_before_iterating_sends_nothing(face: Any, fault_server: Server) -> None:
    srv = fault_server
    srv.reset()
    client = face.client(base_url=srv.base_url)
    stream = client.stream(PROMPT)
    if face.name == "sync":
        stream.close()
    else:
        face.run(stream.aclose())
    assert srv.requests == []


def test_200_concurrent_async_streams_with_faults(fault_server: Server) -> None:
    """Every fifth stream meets a fault; each ends exactly as the matrix says."""
    srv = fault_server
    srv.reset()
    faults = {
        1: ("reset-after=2", breaks("one two ", cause=APIConnectionError)),
        2: ("malformed-after=1", breaks("one ", ProtocolError)),
        3: ("error-after=3", breaks("one two three ", ServerError)),
        4: ("status=400", fails(BadRequestError)),
    }

    async def one(client: ylokh.AsyncClient, i: int) -> tuple[str, BaseException | None]:
        spec = faults.get(i % 5, ("", OK))[0]
        got: list[str] = []
        try:
            async with client.stream(PROMPT, ylokh_fault=spec or None) as stream:
                async for text in stream:
                    got.append(text)
        except ylokh.YlokhError as exc:
            return "".join(got), exc
        return "".join(got), None

    async def main() -> list[tuple[str, BaseException | None]]:
        async with ylokh.AsyncClient(base_url=srv.base_url, timeout=5, max_retries=0) as client:
            return await asyncio.gather(*(one(client, i) for i in range(200)))

    results = asyncio.run(main())
    assert len(srv.requests) == 200
    for i, (text, error) in enumerate(results):
        expect = faults.get(i % 5, ("", OK))[1]
        assert text == expect.text, i
        if expect.error:
            assert all(isinstance(error, cls) for cls in expect.error), (i, error)
            assert getattr(error, "partial", None) == expect.partial
        else:
            assert error is None, (i, error)


def test_a_client_shared_by_8_threads(fault_server: Server) -> None:
    srv = fault_server
    srv.reset()
    errors: list[BaseException] = []
    texts: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    with ylokh.Client(base_url=srv.base_url, timeout=5) as client:

        def work(n: int) -> None:
            try:
                barrier.wait()
                for i in range(10):
                    prompt = f"thread {n} call {i}"
                    text = client.complete(prompt) if i % 2 else "".join(client.stream(prompt))
                    with lock:
                        texts.append(text)
                    assert text == prompt
                fault = "reset-after=1" if n % 2 else "status=400"
                try:
                    "".join(client.stream("x y z", ylokh_fault=fault))
                except (IncompleteStreamError, BadRequestError):
                    pass
                assert client.complete(f"thread {n} after") == f"thread {n} after"
            except BaseException as exc:  # reported below
                with lock:
                    errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert not errors, errors
    assert len(texts) == 80
    assert len(srv.requests) == 8 * 12


if __name__ == "__main__":
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render_doc(), encoding="utf-8")
    sys.stdout.write(f"wrote {DOC}\n")
