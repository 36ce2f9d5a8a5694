"""Batch runs: ``ylokh.batch`` in Python and ``ylokh batch`` on the command line, against
the bundled server; resuming is tested by SIGKILLing a real run midway and rerunning it."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import ylokh
from ylokh._batch import BatchResult, abatch
from ylokh.testing import Server

ROOT = Path(ylokh.__file__).resolve().parent.parent


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_results_come_in_input_order(server: Server) -> None:
    prompts = [f"prompt number {i}" for i in range(10)]
    results = ylokh.batch(prompts, concurrency=4, base_url=server.base_url, model="m")
    assert [r.text for r in results] == prompts
    assert [r.id for r in results] == list(range(10))
    assert all(r.ok and r.finish_reason == "stop" for r in results)
    assert {req.json["model"] for req in server.requests} == {"m"}


def test_concurrency_is_bounded() -> None:
    # With at most N requests in flight the pool never needs more than N connections;
    # the pauses make the requests overlap, so more than one is used.
    with Server(delay=0.05) as srv:
        results = ylokh.batch(["a b c"] * 12, concurrency=3, base_url=srv.base_url)
        assert all(r.ok for r in results)
        assert 1 < srv.connections <= 3


def test_failures_are_recorded_per_item_and_do_not_stop_the_run(server: Server) -> None:
    items: list[Any] = [
        "fine",
        {"id": "bad", "prompt": "x", "options": {"ylokh_fault": "status=400"}},
        {"id": "gone", "prompt": "x", "options": {"ylokh_fault": "status=503"}},
        "also fine",
    ]
    results = ylokh.batch(items, base_url=server.base_url, max_retries=0)
    assert [r.ok for r in results] == [True, False, False, True]
    assert results[1].error is not None
    assert results[1].error["type"] == "BadRequestError"
    assert results[1].error["status_code"] == 400
    assert results[2].error == {
        "type": "ServerError",
        "message": results[2].error["message"],
        "status_code": 503,
    }
    assert results[1].to_json() == {
        "id": "bad",
        "error": results[1].error,
        "finish_reason": None,
        "usage": None,
    }


def test_item_forms_and_options(server: Server) -> None:
    items: list[Any] = [
        "plain",
        [{"role": "system", "content": "S"}, {"role": "user", "content": "listed"}],
        {"id": "d", "prompt": "dict", "model": "item-model", "options": {"max_tokens": 1}},
    ]
    results = ylokh.batch(items, concurrency=1, base_url=server.base_url, temperature=0)
    assert [r.id for r in results] == [0, 1, "d"]
    assert [r.text for r in results] == ["plain", "listed", "dict"]
    assert results[2].finish_reason == "stop"
    payloads = {req.json["messages"][-1]["content"]: req.json for req in server.requests}
    assert payloads["dict"]["model"] == "item-model"
    assert payloads["dict"]["max_tokens"] == 1
    assert payloads["listed"]["messages"][0] == {"role": "system", "content": "S"}
    assert all(p["temperature"] == 0 for p in payloads.values())


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([""], "empty"),
        ([{"prompt": "a", "messages": []}], "exactly one"),
        ([{"id": [1], "prompt": "a"}], "id must be"),
        ([{"prompt": "a", "options": 3}], "'options'"),
        ([42], "messages must be"),
    ],
)
def test_invalid_items_fail_before_any_request(
    server: Server, items: list[Any], message: str
) -> None:
    with pytest.raises(ylokh.InvalidRequestError, match=message):
        ylokh.batch(["fine", *items], base_url=server.base_url)
    with pytest.raises(ylokh.InvalidRequestError, match="concurrency"):
        ylokh.batch(["fine"], concurrency=0, base_url=server.base_url)
    assert server.requests == []


def test_output_file_is_appended_and_a_rerun_resumes(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    items = [{"id": f"q{i}", "prompt": f"question {i}"} for i in range(5)]
    server.script([None, "status=400"])  # the second request fails
    first = ylokh.batch(items, concurrency=1, output=out, base_url=server.base_url)
    assert [r.ok for r in first] == [True, False, True, True, True]
    assert len(lines_of(out)) == 5
    seen: list[BatchResult] = []
    server.reset()
    again = ylokh.batch(
        items, concurrency=1, output=out, base_url=server.base_url, on_result=seen.append
    )
    # Only the failed id was asked again; the failure's line was replaced by the answer.
    assert [req.json["messages"][0]["content"] for req in server.requests] == ["question 1"]
    assert [r.id for r in seen] == ["q1"]
    assert [r.text for r in again] == [f"question {i}" for i in range(5)]
    assert sorted(line["id"] for line in lines_of(out)) == [f"q{i}" for i in range(5)]
    assert all("text" in line for line in lines_of(out))


def test_a_torn_last_line_is_dropped_on_resume(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text(
        '{"id": 0, "text": "kept", "finish_reason": "stop", "usage": null}\n{"id": 1, "te'
    )
    results = ylokh.batch(["a", "b"], output=out, base_url=server.base_url)
    assert [r.text for r in results] == ["kept", "b"]
    assert [line["id"] for line in lines_of(out)] == [0, 1]
    assert len(server.requests) == 1


def test_output_to_an_open_file(server: Server) -> None:
    sink = io.StringIO()
    ylokh.batch(["x", "y"], concurrency=1, output=sink, base_url=server.base_url)
    assert [json.loads(line)["text"] for line in sink.getvalue().splitlines()] == ["x", "y"]


@pytest.mark.asyncio
async def test_batch_works_inside_a_running_event_loop(server: Server) -> None:
    # As in Jupyter: the sync call runs the batch in a thread of its own.
    results = ylokh.batch(["inside", "a loop"], base_url=server.base_url)
    assert [r.text for r in results] == ["inside", "a loop"]
    results = await abatch(["async", "twin"], base_url=server.base_url)
    assert [r.text for r in results] == ["async", "twin"]


def test_client_settings_are_used(server: Server) -> None:
    client = ylokh.Client(base_url=server.base_url, model="client-model")
    results = ylokh.batch(["via client"], client=client)
    assert results[0].text == "via client"
    assert server.requests[-1].json["model"] == "client-model"


def test_progress_bar(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    ylokh.batch(["a", "b", "c"], base_url=server.base_url, progress=True)
    assert "3/3" in capsys.readouterr().err
    ylokh.batch(["a", "b", "c"], base_url=server.base_url)  # stderr is not a terminal
    assert capsys.readouterr().err == ""


# -- the command line ------------------------------------------------------------------------
def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ylokh", "batch", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )


def write_jsonl(path: Path, objs: list[Any]) -> Path:
    path.write_text("".join(json.dumps(obj) + "\n" for obj in objs))
    return path


def test_cli_batch_to_stdout(server: Server, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "prompt": "first"}\n\n"second"\n')
    done = cli(str(src), "--base-url", server.base_url, "--system", "S")
    assert done.returncode == 0, done.stderr
    results = {line["id"]: line for line in map(json.loads, done.stdout.splitlines())}
    assert results == {
        "a": {"id": "a", "text": "first", "finish_reason": "stop", "usage": None},
        3: {"id": 3, "text": "second", "finish_reason": "stop", "usage": None},  # line number
    }
    assert all(req.json["messages"][0]["content"] == "S" for req in server.requests)
    done = cli("-", "--local", stdin='{"prompt": "from stdin"}\n')
    assert json.loads(done.stdout)["text"] == "from stdin"


def test_cli_batch_failures_exit_1_and_are_retried_on_rerun(server: Server, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "prompt": f"p{i}"} for i in range(3)])
    out = tmp_path / "out.jsonl"
    server.script([None, "status=400"])
    done = cli(str(src), "-o", str(out), "-c", "1", "--base-url", server.base_url)
    assert done.returncode == 1
    assert "1 of 3 prompts failed" in done.stderr and "rerun" in done.stderr
    assert [("error" in line) for line in lines_of(out)] == [False, True, False]
    done = cli(str(src), "-o", str(out), "--base-url", server.base_url)
    assert done.returncode == 0, done.stderr
    assert sorted(line["text"] for line in lines_of(out)) == ["p0", "p1", "p2"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json}\n", "line 1: not valid JSON"),
        ('{"prompt": "a"}\n{"id": 1, "prompt": "b"}\n', "line 2: the id 1 appears twice"),
        ('{"text": "no prompt"}\n', "exactly one"),
    ],
)
def test_cli_batch_bad_input_exits_2(tmp_path: Path, content: str, message: str) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(content)
    done = cli(str(src), "--local")
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_batch_killed_midway_resumes_where_it_stopped(tmp_path: Path) -> None:
    total = 12
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [{"id": f"item-{i}", "prompt": f"answer number {i} here"} for i in range(total)],
    )
    out = tmp_path / "out.jsonl"
    with Server(delay=0.1) as srv:  # each answer takes a few pauses
        args = [sys.executable, "-m", "ylokh", "batch", str(src), "-o", str(out), "-c", "2"]
        proc = subprocess.Popen(
            [*args, "--base-url", srv.base_url], env=_env(), stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if out.exists() and out.read_text().count("\n") >= 3:
                    break
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            proc.kill()
            proc.wait()
        written = lines_of(out)  # every line written before the kill is whole
        done_ids = {line["id"] for line in written}
        assert 3 <= len(done_ids) < total
        assert all(line["text"].startswith("answer number") for line in written)

        srv.reset()
        rerun = subprocess.run(
            [*args, "--base-url", srv.base_url], env=_env(), capture_output=True, timeout=60
        )
        assert rerun.returncode == 0, rerun.stderr
        asked = [req.json["messages"][0]["content"] for req in srv.requests]
    final = lines_of(out)
    assert sorted(line["id"] for line in final) == sorted(f"item-{i}" for i in range(total))
    assert len(asked) == total - len(done_ids)  # nothing already done was asked again
    assert all(line["text"] == f"answer number {line['id'][5:]} here" for line in final)


def test_cli_batch_local_and_ctrl_c(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ["x"] * 3)
    done = cli(str(src), "--local", "--no-progress")
    assert done.returncode == 0
    assert len(done.stdout.splitlines()) == 3
    with Server(fault="stall=30") as srv:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ylokh", "batch", str(src), "--base-url", srv.base_url],
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 30
            while not srv.requests and time.monotonic() < deadline:
                time.sleep(0.02)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(30) == 130
            assert proc.stderr is not None
            assert "Traceback" not in proc.stderr.read().decode()
        finally:
            proc.kill()
            proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()


def test_batch_is_lazy() -> None:
    code = "import sys, ylokh; assert 'ylokh._batch' not in sys.modules; ylokh.batch; " + (
        "assert 'aiohttp' not in sys.modules and 'tqdm' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=_env(), timeout=60)


def test_asyncio_is_not_left_running() -> None:
    # batch() from sync code leaves no loop behind (asyncio.run closes it).
    with Server() as srv:
        ylokh.batch(["x"], base_url=srv.base_url)
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
