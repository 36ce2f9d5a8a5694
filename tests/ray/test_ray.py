"""ylokh.ray on a local Ray cluster, against the bundled server (opt-in: ``-m ray``)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import ray
import ray.cloudpickle
import ray.data
from ray_rows import FAILING_EVERY, make_rows, read_output, write_jsonl

import ylokh
import ylokh.ray
from ylokh.testing import Server

pytestmark = [
    pytest.mark.ray,
    pytest.mark.timeout(900),
    # Ray warns about its own deprecated settings when it reads its DataContext.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Tip. In future versions of Ray:FutureWarning"),  # 2.50
]

# The helper classes below live in this module, which Ray's workers cannot import: ship
# them by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

ROWS = 2000
ACTORS = 2
IN_FLIGHT = 50


def run_once(completer: ylokh.ray.Completer, batch: Any) -> list[dict[str, Any]]:
    """Call a Completer directly on one batch, then close its connections."""

    async def run() -> list[dict[str, Any]]:
        try:
            table = await completer(batch)
        finally:
            await completer.aclose()
        rows: list[dict[str, Any]] = table.to_pylist()
        return rows

    return asyncio.run(run())


def echo(prompt: str, chunks: int | None = None) -> str:
    """What the bundled server answers: the prompt, or its words cycled to ``chunks``."""
    if chunks is None:
        return prompt
    words = [word + " " for word in prompt.split()]
    return "".join(words[i % len(words)] for i in range(chunks))


def check_answers(rows: list[dict[str, Any]], count: int, chunks: int | None = None) -> None:
    """Every id once, in order; the scripted 5% are error rows, the others echo the prompt."""
    assert [row["id"] for row in rows] == list(range(count))
    failed = [row["id"] for row in rows if row["error"] is not None]
    assert failed == [i for i in range(count) if i % FAILING_EVERY == 0]
    for row in rows:
        assert row["custom_id"] == f"row-{row['id']}"
        if row["id"] % (2 * FAILING_EVERY) == 0:
            assert row["error"].startswith("BadRequestError: 400"), row
        elif row["id"] % FAILING_EVERY == 0:
            assert row["error"].startswith("ServerError: 500"), row
        else:
            assert row["error"] is None, row
            assert row["text"] == echo(row["prompt"], chunks)
            assert row["finish_reason"] == "stop"
            assert row["usage"]["completion_tokens"] == (chunks or 2)
            assert row["ttft_s"] > 0
        if row["error"] is not None:
            assert row["text"] is None
            assert row["usage"] is None


# --- Completer on its own (no cluster: Ray only runs it) --------------------------------------


def test_import_ylokh_does_not_import_ray() -> None:
    code = (
        "import sys, ylokh; ylokh.AsyncClient; ylokh.batch; "
        "assert 'ray' not in sys.modules and 'pyarrow' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_completer_bounds_calls_in_flight_and_keeps_row_order() -> None:
    rows = [{"id": i, "prompt": f"question {i}"} for i in range(40)]
    with Server(chunks=5, delay=0.01) as srv:

        async def run() -> pa.Table:
            completer = ylokh.ray.Completer(concurrency=5, base_url=srv.base_url)
            try:
                first = await completer(pa.Table.from_pylist(rows[:20]))
                second = await completer(pa.Table.from_pylist(rows[20:]))
            finally:
                await completer.aclose()
            return pa.concat_tables([first, second])

        out = asyncio.run(run()).to_pylist()
        # aiohttp opens a connection only when no idle one is free: connections = peak calls.
        assert srv.connections <= 5
        assert len(srv.requests) == 40
    assert [row["id"] for row in out] == list(range(40))
    assert [row["text"].split()[:2] for row in out] == [["question", str(i)] for i in range(40)]
    assert all(row["error"] is None and row["usage"]["completion_tokens"] == 5 for row in out)


def test_completer_reports_every_failure_as_a_row() -> None:
    batch = {
        "prompt": ["fine", None, None, "also fine", "fails"],
        "messages": [None, [{"role": "user", "content": "hi"}], None, None, None],
        "options": [{}, {}, {}, {"temperature": 0, "model": "m2"}, {"ylokh_fault": "reset"}],
    }
    with Server() as srv:
        completer = ylokh.ray.Completer(concurrency=4, base_url=srv.base_url, max_retries=0)
        out = run_once(completer, batch)
        sent = [r.json for r in srv.requests]
    assert [row["text"] for row in out] == ["fine", "hi", None, "also fine", None]
    assert out[2]["error"] == (
        "InvalidRequestError: a row needs exactly one of 'prompt' or 'messages'"
    )
    assert out[4]["error"].startswith("APIConnectionError: ")
    assert [row["error"] is None for row in out] == [True, True, False, True, False]
    # The row's options reach the payload; include_usage is asked for by default.
    by_text = {p["messages"][0]["content"]: p for p in sent}
    assert by_text["also fine"]["temperature"] == 0
    assert by_text["also fine"]["model"] == "m2"
    assert by_text["fine"]["stream_options"] == {"include_usage": True}


def test_stream_options_none_asks_for_no_usage() -> None:
    with Server() as srv:
        completer = ylokh.ray.Completer(base_url=srv.base_url, stream_options=None)
        out = run_once(completer, pa.table({"prompt": ["hello"]}))
        assert "stream_options" not in srv.requests[0].json
    assert out[0]["text"] == "hello"
    assert out[0]["usage"] is None


def test_invalid_arguments_fail_before_the_run(ray_cluster: Any) -> None:
    ds = ray.data.from_items([{"prompt": "x"}])
    for bad in ({"concurrency": 0}, {"actors": (3, 1)}, {"actors": 0}, {"batch_size": 0}):
        with pytest.raises(ylokh.InvalidRequestError):
            ylokh.ray.complete(ds, **bad)
    with pytest.raises(ylokh.InvalidRequestError):
        ylokh.ray.Completer(concurrency=True)


# --- on the cluster ----------------------------------------------------------------------------


def test_two_thousand_rows_two_actors(ray_cluster: Any, ordered: None, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "prompts.jsonl", make_rows(ROWS))
    with Server() as srv:
        ds = ray.data.read_json(str(source))
        out = ylokh.ray.complete(
            ds, base_url=srv.base_url, concurrency=IN_FLIGHT, actors=ACTORS, temperature=0
        )
        out.write_json(str(tmp_path / "answers"))
        # Every row sent once (failures are not retried by their options, nor by Ray).
        assert len(srv.requests) == ROWS
        assert srv.connections <= ACTORS * IN_FLIGHT
        assert all(r.json["temperature"] == 0 for r in srv.requests)
    check_answers(read_output(tmp_path / "answers"), ROWS)


def test_driver_environment_reaches_the_actors(
    ray_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Server() as srv:
        monkeypatch.setenv("YLOKH_BASE_URL", srv.base_url)
        monkeypatch.setenv("YLOKH_MODEL", "from-the-driver")
        ds = ray.data.from_items([{"prompt": f"p{i}"} for i in range(10)])
        out = ylokh.ray.complete(ds, actors=1).take_all()
        assert len(srv.requests) == 10
        assert {r.json["model"] for r in srv.requests} == {"from-the-driver"}
    assert sorted(row["text"] for row in out) == sorted(f"p{i}" for i in range(10))


def test_several_base_urls_share_the_rows(ray_cluster: Any) -> None:
    with Server() as one, Server() as two:
        urls = [one.base_url, two.base_url]
        try:
            ylokh.AsyncClient(base_url=urls)
        except ylokh.InvalidRequestError:
            pytest.skip("this ylokh.AsyncClient takes one base_url only")
        ds = ray.data.from_items([{"prompt": f"p{i}"} for i in range(100)])
        out = ylokh.ray.complete(ds, base_url=urls, actors=1, concurrency=8).take_all()
        assert len(one.requests) + len(two.requests) == 100
        assert one.requests and two.requests
    assert all(row["error"] is None for row in out)


# --- an actor killed in the middle -------------------------------------------------------------

REGISTRY = "ylokh-test-registry"


@ray.remote(num_cpus=0)
class Registry:
    """Holds (actor id, handle) of each map actor instance, reported on its first batch."""

    def __init__(self) -> None:
        self.actors: list[tuple[str, Any]] = []

    def add(self, actor_id: str, handles: list[Any]) -> None:
        self.actors.append((actor_id, handles[0]))

    def get(self) -> list[tuple[str, Any]]:
        return self.actors


class ReportingCompleter(ylokh.ray.Completer):
    """A Completer that tells the registry which actor it runs in (a restarted actor is a
    new instance: it reports again, under the same actor id)."""

    async def __call__(self, batch: Any) -> pa.Table:
        if not getattr(self, "_reported", False):
            self._reported = True
            context = ray.get_runtime_context()
            # The handle goes in a list, so that Ray sends it as a handle.
            ray.get_actor(REGISTRY).add.remote(context.get_actor_id(), [context.current_actor])
        return await super().__call__(batch)


def test_killed_actor_loses_no_row_and_answers_none_twice(
    ray_cluster: Any, ordered: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_jsonl(tmp_path / "prompts.jsonl", make_rows(ROWS))
    registry = Registry.options(name=REGISTRY).remote()  # type: ignore[attr-defined]
    monkeypatch.setattr(ylokh.ray, "Completer", ReportingCompleter)
    killed: list[tuple[str, int]] = []  # (actor id, requests sent when it was killed)
    done = threading.Event()
    # Slow answers (5 chunks, 10 ms apart) so that the run lasts long enough to kill in.
    with Server(chunks=5, delay=0.01) as srv:

        def kill_one() -> None:
            while not done.is_set():
                actors = ray.get(registry.get.remote())
                if actors and len(srv.requests) >= ROWS // 3:
                    actor_id, handle = actors[0]
                    ray.kill(handle, no_restart=False)  # Ray Data restarts it
                    killed.append((actor_id, len(srv.requests)))
                    return
                done.wait(0.05)

        killer = threading.Thread(target=kill_one, daemon=True)
        killer.start()
        try:
            # 20 blocks of 100 rows, so that both actors get work.
            ds = ray.data.read_json(str(source), override_num_blocks=20)
            out = ylokh.ray.complete(
                ds, base_url=srv.base_url, concurrency=IN_FLIGHT, actors=ACTORS
            )
            out.write_json(str(tmp_path / "answers"))
        finally:
            done.set()
            killer.join(10)
        sent = len(srv.requests)
    actors = ray.get(registry.get.remote())
    ray.kill(registry)
    assert killed, "the actor was not killed during the run"
    actor_id, at = killed[0]
    assert at < ROWS, "the kill came after the last request"
    # The killed actor came back (a new instance reported itself under the same id), and
    # the rows it was answering were sent again...
    assert [a for a, _ in actors].count(actor_id) == 2
    assert sent > ROWS
    # ... but the written output holds every row once.
    print(f"killed after {at} requests; {sent} sent for {ROWS} rows")
    check_answers(read_output(tmp_path / "answers"), ROWS, chunks=5)
