"""The one retry and timeout policy: pure decisions, the tenacity builders, both faces.

Back-off waits are recorded through the injected sleep (``client._sleep``), never slept,
except once, end to end, with a real ``Retry-After: 1``.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import pytest
import tenacity
from parsing import Parser as ResponseParser

import ylokh
from ylokh import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    IncompleteStreamError,
    ProtocolError,
    ServerError,
    Timeout,
)
from ylokh._errors import status_error
from ylokh._protocol import parse_retry_after
from ylokh._retry import (
    FIRST_WAIT,
    JITTER,
    MAX_WAIT,
    RETRY_STATUSES,
    Policy,
    is_retryable,
    new_state,
    wait_server_or_backoff,
)
from ylokh.testing import Server


@pytest.fixture(scope="module")
def srv() -> Iterator[Server]:
    with Server() as server:
        yield server


@pytest.fixture
def server(srv: Server) -> Server:
    srv.reset()
    return srv


# -- pure decisions --------------------------------------------------------------------------
@pytest.mark.parametrize("status", sorted(RETRY_STATUSES))
def test_retryable_statuses(status: int) -> None:
    assert {408, 409, 429, 500, 502, 503, 504} == RETRY_STATUSES
    assert is_retryable(status_error(status, b"{}"))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 501, 505])
def test_other_statuses_are_not_retried(status: int) -> None:
    assert not is_retryable(status_error(status, b"{}"))


def test_connection_failures_and_timeouts_are_retried_nothing_else() -> None:
    assert is_retryable(APIConnectionError("reset"))
    assert is_retryable(APITimeoutError("read timeout"))
    assert not is_retryable(ProtocolError("html"))
    assert not is_retryable(IncompleteStreamError("cut", "text"))
    assert not is_retryable(ylokh.InvalidRequestError("bad"))
    assert not is_retryable(ValueError("not ours"))


def test_error_objects_inside_a_stream_are_not_retried() -> None:
    parser = ResponseParser()
    parser.start(200, {"content-type": "text/event-stream"})
    with pytest.raises(ServerError) as info:
        parser.feed(b'data: {"error": {"message": "overloaded", "code": 503}}\n\n')
    assert info.value.status_code == 503 and not is_retryable(info.value)


def backoff(attempt: int, error: BaseException | None, rand: Any) -> float:
    """The policy's wait after ``attempt`` failed with ``error``."""
    state = new_state()
    state.attempt_number = attempt
    state.set_exception((type(error), error, None) if error else (Exception, Exception(), None))
    return wait_server_or_backoff(rand)(state)


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    top = [backoff(n, None, lambda: 1.0) for n in range(1, 9)]
    assert top == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    assert top[0] == FIRST_WAIT and max(top) == MAX_WAIT
    assert [backoff(n, None, lambda: 0.0) for n in range(1, 5)] == [0.0] * 4
    assert backoff(3, None, lambda: 0.25) == 0.5


def test_backoff_takes_the_servers_wait_with_a_little_jitter() -> None:
    error = status_error(429, b"{}", retry_after=7.5)
    assert backoff(1, error, lambda: 1.0) == pytest.approx(7.5 * (1 + JITTER))
    assert backoff(4, error, lambda: 0.0) == 7.5


def test_retry_after_in_seconds_date_and_ms_capped_at_a_minute() -> None:
    now = 1_700_000_000.0
    date = format_datetime(datetime.fromtimestamp(now, timezone.utc) + timedelta(seconds=30))
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after": date}, now=now) == pytest.approx(30.0)
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "3600"}) == 60.0
    assert parse_retry_after({"retry-after-ms": "99999999"}) == 60.0
    assert parse_retry_after({"retry-after": "-5"}) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


# -- the tenacity policy ----------------------------------------------------------------------
def drive(max_retries: int, total: float | None, attempt: Any, sleep: Any, rand: Any = None) -> Any:
    """The faces' loop around an attempt, on the bare policy."""
    policy = Policy(max_retries, total, rand or (lambda: 1.0))
    state = new_state()
    while True:
        try:
            return attempt()
        except ylokh.YlokhError as exc:
            wait = policy.next_wait(state, exc)
            if wait is None:
                raise
            sleep(wait)


def test_policy_retries_with_the_waits_of_the_backoff() -> None:
    waits: list[float] = []
    calls: list[int] = []

    def attempt() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise status_error(503, b'{"error": {"message": "busy"}}')
        return "ok"

    assert drive(2, None, attempt, waits.append) == "ok"
    assert waits == [0.5, 1.0] and len(calls) == 3


def test_policy_gives_up_after_max_retries_with_the_last_error() -> None:
    waits: list[float] = []

    def attempt() -> None:
        raise APIConnectionError("refused")

    with pytest.raises(APIConnectionError, match="refused"):
        drive(4, None, attempt, waits.append, lambda: 0.5)
    assert waits == [0.25, 0.5, 1.0, 2.0]


def test_policy_does_not_retry_what_is_not_retryable() -> None:
    calls: list[int] = []

    def attempt() -> None:
        calls.append(1)
        raise status_error(401, b"no")

    with pytest.raises(ylokh.AuthenticationError):
        drive(5, None, attempt, lambda s: None)
    assert calls == [1]


def test_policy_stops_when_the_wait_would_pass_the_total_deadline() -> None:
    waits: list[float] = []
    calls: list[int] = []

    def attempt() -> None:
        calls.append(1)
        raise status_error(503, b"", retry_after=5.0)

    with pytest.raises(ServerError):
        drive(5, 2.0, attempt, waits.append)
    assert calls == [1] and waits == []


def test_policy_is_made_of_tenacitys_pieces() -> None:
    policy = Policy(2, 10.0)
    assert isinstance(policy.stop, tenacity.stop.stop_any)
    assert isinstance(policy.wait, tenacity.wait.wait_base)
    assert isinstance(policy.retry, tenacity.retry_if_exception)


# -- both faces: max_retries, the sleep hook, the log, a real Retry-After ---------------------
@pytest.mark.parametrize(("max_retries", "requests"), [(0, 1), (1, 2), (4, 5)])
def test_max_retries_bounds_the_requests(
    face: Any, server: Server, max_retries: int, requests: int
) -> None:
    server.script(["status=503"] * 6)
    client = face.client(base_url=server.base_url, max_retries=max_retries)
    waits = face.record_sleeps(client)
    out = face.stream("hi", client=client)
    assert isinstance(out.error, ServerError)
    assert len(server.requests) == requests and len(waits) == requests - 1


def test_max_retries_from_the_environment(
    face: Any, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("YLOKH_MAX_RETRIES", "0")
    server.script(["status=502", None])
    client = face.client(base_url=server.base_url)
    out = face.complete("hi", client=client)
    assert isinstance(out.error, ServerError) and len(server.requests) == 1


def test_default_is_two_retries_then_success(
    face: Any, server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    server.script(["status=503", "reset", None])
    client = face.client(base_url=server.base_url)
    waits = face.record_sleeps(client)
    with caplog.at_level(logging.WARNING, logger="ylokh"):
        out = face.stream("hello there", client=client)
    assert out.error is None and out.text == "hello there"
    assert len(server.requests) == 3
    assert 0 <= waits[0] <= FIRST_WAIT and 0 <= waits[1] <= 2 * FIRST_WAIT
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 2
    assert "503" in lines[0] and f"{waits[0]:.2f} s" in lines[0]
    assert "reset" in lines[1].lower() or "connection" in lines[1].lower()


def test_a_real_retry_after_of_one_second(face: Any, server: Server) -> None:
    server.script(["status=429;retry-after=1", None])
    client = face.client(base_url=server.base_url)
    started = time.monotonic()
    out = face.complete("hi", client=client)
    elapsed = time.monotonic() - started
    assert out.error is None and out.result == "hi"
    assert len(server.requests) == 2
    assert 1.0 <= elapsed < 2.5


def test_no_retry_once_text_reached_the_caller(face: Any, server: Server) -> None:
    server.script(["reset-after=2", None])
    client = face.client(base_url=server.base_url, max_retries=5)
    out = face.stream("a b c d", client=client)
    assert out.deltas == ["a ", "b "]
    assert isinstance(out.error, IncompleteStreamError) and out.error.partial == "a b "
    assert isinstance(out.error.__cause__, APIConnectionError)
    assert len(server.requests) == 1


# -- timeouts ---------------------------------------------------------------------------------
def test_a_bare_number_is_the_read_timeout_and_the_seed_default_is_kept() -> None:
    assert ylokh.Client(timeout=30).settings.timeout == Timeout(read=30)
    assert ylokh.Client(timeout=120).settings.timeout.read == 120
    assert ylokh.Client().settings.timeout.read == 120
    assert ylokh.Client(timeout=Timeout(total=5)).settings.timeout.total == 5
    with pytest.raises(ylokh.InvalidRequestError):
        ylokh.Client(timeout=-1)
    with pytest.raises(ylokh.InvalidRequestError):
        Timeout(read=0)


def test_read_timeout_bounds_a_stall_mid_stream(face: Any, server: Server) -> None:
    client = face.client(base_url=server.base_url, timeout=0.3)
    started = time.monotonic()
    out = face.stream("a b c d", client=client, ylokh_fault="stall-after=2,10")
    elapsed = time.monotonic() - started
    assert out.deltas == ["a ", "b "]
    assert isinstance(out.error, IncompleteStreamError) and out.error.partial == "a b "
    assert isinstance(out.error.__cause__, APITimeoutError)
    assert 0.25 <= elapsed < 1.5
    assert server.requests[0].disconnected.wait(1)


def test_read_timeout_is_per_read_not_for_the_whole_answer(face: Any, server: Server) -> None:
    # 6 chunks, 0.1 s apart: 0.6 s in all, each wait far below the 0.4 s read timeout
    client = face.client(base_url=server.base_url, timeout=0.4)
    out = face.stream("a b c d e f", client=client, ylokh_fault="delay=0.1")
    assert out.error is None and out.text == "a b c d e f"


def test_read_timeout_before_the_body_is_retried(face: Any, server: Server) -> None:
    server.script(["stall=10", "stall=10", None])
    client = face.client(base_url=server.base_url, timeout=0.2)
    waits = face.record_sleeps(client)
    out = face.complete("hi", client=client)
    assert out.error is None and out.result == "hi"
    assert len(server.requests) == 3 and len(waits) == 2


def test_total_bounds_the_whole_call_with_retries(face: Any, server: Server) -> None:
    server.script(["stall=10"] * 6)
    timeout = Timeout(connect=1, read=0.3, total=0.5)
    client = face.client(base_url=server.base_url, timeout=timeout, max_retries=5)
    face.record_sleeps(client)
    started = time.monotonic()
    out = face.stream("hi", client=client)
    elapsed = time.monotonic() - started
    assert isinstance(out.error, APITimeoutError), repr(out.error)
    assert elapsed < 1.0
    assert len(server.requests) <= 2


def test_total_cuts_a_slow_stream_after_text(face: Any, server: Server) -> None:
    timeout = Timeout(connect=1, read=1, total=0.5)
    client = face.client(base_url=server.base_url, timeout=timeout)
    started = time.monotonic()
    out = face.stream("a b c d e f g h i j", client=client, ylokh_fault="delay=0.15")
    elapsed = time.monotonic() - started
    assert isinstance(out.error, IncompleteStreamError), repr(out.error)
    assert isinstance(out.error.__cause__, APITimeoutError)
    assert out.error.partial == out.text and 0 < len(out.deltas) < 10
    assert 0.4 <= elapsed < 1.0


def test_total_does_not_wait_for_a_retry_after_past_it(face: Any, server: Server) -> None:
    server.script(["status=503;retry-after=30", None])
    client = face.client(base_url=server.base_url, timeout=Timeout(total=2))
    waits = face.record_sleeps(client)
    out = face.complete("hi", client=client)
    assert isinstance(out.error, ServerError) and waits == []
    assert len(server.requests) == 1


@pytest.fixture
def unresponsive_port() -> Iterator[int]:
    """A port whose accept queue is full: connecting hangs until the client gives up."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):  # fill the backlog; later SYNs are dropped
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.05)
    yield port
    for filler in fillers:
        filler.close()
    listener.close()


def test_connect_timeout(face: Any, unresponsive_port: int) -> None:
    timeout = Timeout(connect=0.3, read=5)
    base_url = f"http://127.0.0.1:{unresponsive_port}/v1"
    client = face.client(base_url=base_url, timeout=timeout, max_retries=1)
    waits = face.record_sleeps(client)
    started = time.monotonic()
    out = face.complete("hi", client=client)
    elapsed = time.monotonic() - started
    assert isinstance(out.error, APITimeoutError), repr(out.error)
    assert "connect" in str(out.error)
    assert len(waits) == 1 and 0.5 <= elapsed < 2.0


def test_connection_refused_is_retried_then_raised(face: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = face.client(base_url=f"http://127.0.0.1:{port}/v1")
    waits = face.record_sleeps(client)
    out = face.stream("hi", client=client)
    assert type(out.error) is APIConnectionError
    assert f"127.0.0.1:{port}" in str(out.error) and len(waits) == 2


def test_timeouts_are_never_raw_library_exceptions(face: Any, server: Server) -> None:
    for spec in ("stall=10", "stall-after=0,10", "stall-after=1,10"):
        client = face.client(base_url=server.base_url, timeout=0.2, max_retries=0)
        out = face.stream("a b", client=client, ylokh_fault=spec)
        assert isinstance(out.error, (APITimeoutError, IncompleteStreamError)), (spec, out.error)
        assert isinstance(out.error, ylokh.YlokhError)


def test_status_error_after_retries_keeps_its_class(face: Any, server: Server) -> None:
    server.script(["status=409"] * 3)
    client = face.client(base_url=server.base_url)
    face.record_sleeps(client)
    out = face.complete("hi", client=client)
    assert type(out.error) is APIStatusError and out.error.status_code == 409
