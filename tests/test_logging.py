"""The ``ylokh`` logger: one DEBUG line per request, a WARNING per retry, never a secret."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest

from ylokh.testing import Server

if TYPE_CHECKING:
    from conftest import Face

KEY = "sk-log-secret-0123456789"


def test_requests_at_debug_and_retries_at_warning(
    face: Face, server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ylokh")
    server.script(["status=503;retry-after-ms=5;echo-auth", None])
    out = face.stream("one two three", base_url=server.base_url, api_key=KEY)
    assert out.text == "one two three"
    records = [r for r in caplog.records if r.name == "ylokh"]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    debugs = [r.getMessage() for r in records if r.levelno == logging.DEBUG]
    assert len(warnings) == 1
    assert f"retrying POST {server.base_url}/chat/completions in 0.01 s" in warnings[0]
    assert "503" in warnings[0] and "attempt 2 of 3" in warnings[0]
    assert len(debugs) == 1
    assert server.base_url in debugs[0] and "-> 200" in debugs[0]
    assert "first byte after" in debugs[0] and "5 chunks" in debugs[0]  # role, 3 words, finish
    assert all(KEY not in r.getMessage() for r in caplog.records)
    # the library adds no output of its own: only a NullHandler, so no last-resort stderr
    handlers = logging.getLogger("ylokh").handlers
    assert [type(h) for h in handlers] == [logging.NullHandler]
