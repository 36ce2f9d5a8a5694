"""Several endpoints against two real llama.cpp servers (issue 12): one is killed in the
middle of a run of 20 calls, and no call fails that had not yet produced text."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import ylokh

pytestmark = pytest.mark.interop

FIXED = {"model": "gemma", "temperature": 0, "seed": 42, "max_tokens": 8}


def test_a_server_killed_mid_run_fails_no_call_that_had_no_text(
    face: Any, llama_pair: list[Any], interop_log: Any
) -> None:
    first, second = llama_pair
    client = face.client(
        base_url=[first.base_url, second.base_url],
        timeout=ylokh.Timeout(connect=2, read=30),
        max_retries=3,
    )
    outcomes = []
    for i in range(20):
        if i == 6:  # mid-run: one server goes away for good
            threading.Thread(target=first.process.kill).start()
        out = face.stream(f"Count to {i % 5 + 2}.", client=client, **FIXED)
        outcomes.append(out)
    names = {first.base_url: "first", second.base_url: "second"}
    interop_log.transcripts[f"{face.name}: several endpoints, first killed at call 6"] = {
        "lines": [_line(i, out, names) for i, out in enumerate(outcomes)]
    }
    # both served calls before the kill, and a call after it found the dead one and failed over
    assert {o.stream.stats.base_url for o in outcomes[:6]} == {first.base_url, second.base_url}
    assert any(o.stream.stats.attempts > 1 for o in outcomes[6:])
    for out in outcomes:
        if out.error is not None:  # only a call already streaming from the killed server
            assert isinstance(out.error, ylokh.IncompleteStreamError), repr(out.error)
            assert out.error.partial
    assert sum(o.error is None for o in outcomes) >= 19
    assert all(o.stream.stats.base_url == second.base_url for o in outcomes[8:])


def _line(i: int, out: Any, names: dict[str, str]) -> str:
    stats = out.stream.stats
    error = type(out.error).__name__ if out.error is not None else "-"
    return f"call {i:2}: {names.get(stats.base_url)}, {stats.attempts} attempt(s), error {error}"
