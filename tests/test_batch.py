"""Batch runs: ``ylokh.batch`` in Python and ``ylokh batch`` on the command line, against
the bundled server; resuming is tested by SIGKILLing a real run midway and rerunning it."""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lone_surrogate import surrogate_server

import ylokh
from ylokh._batch import BatchResult, abatch, fingerprint, read_jsonl, to_item
from ylokh.testing import Server

ROOT = Path(ylokh.__file__).resolve().parent.parent


# The bundled server counts words: the system prompt "S" and the prompt, then one answer word.
USAGE_2_1 = {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}


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
        "fingerprint": results[1].fingerprint,
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
    kept = {"id": 0, "text": "kept", "fingerprint": fingerprint(to_item("a", 0), None, {})}
    out.write_text(json.dumps(kept) + '\n{"id": 1, "te')
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


def test_the_twins_take_the_same_arguments() -> None:
    # Written out by hand on both (help() and editors show them): kept in step here.
    assert inspect.signature(ylokh.batch) == inspect.signature(abatch)


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
    results = {line.pop("id"): line for line in map(json.loads, done.stdout.splitlines())}
    assert {k: (v.pop("fingerprint"), v)[1] for k, v in results.items()} == {
        "a": {"text": "first", "finish_reason": "stop", "usage": USAGE_2_1},
        3: {"text": "second", "finish_reason": "stop", "usage": USAGE_2_1},  # line number
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


def _openai_line(custom_id: str, prompt: str) -> dict[str, Any]:
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def _id_and_text(line: dict[str, Any]) -> tuple[str, str]:
    if "custom_id" in line:  # OpenAI's batch output line
        return line["custom_id"], line["response"]["body"]["choices"][0]["message"]["content"]
    return line["id"], line["text"]


@pytest.mark.parametrize("fmt", ["ylokh", "openai"])
def test_cli_batch_killed_midway_resumes_where_it_stopped(tmp_path: Path, fmt: str) -> None:
    total = 12
    prompts = [(f"item-{i}", f"answer number {i} here") for i in range(total)]
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [{"id": i, "prompt": p} if fmt == "ylokh" else _openai_line(i, p) for i, p in prompts],
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
        written = [_id_and_text(line) for line in lines_of(out)]  # every line is whole
        done_ids = {item_id for item_id, _ in written}
        assert 3 <= len(done_ids) < total
        assert all(text.startswith("answer number") for _, text in written)

        srv.reset()
        rerun = subprocess.run(
            [*args, "--base-url", srv.base_url], env=_env(), capture_output=True, timeout=60
        )
        assert rerun.returncode == 0, rerun.stderr
        asked = [req.json["messages"][0]["content"] for req in srv.requests]
    final = [_id_and_text(line) for line in lines_of(out)]
    assert sorted(item_id for item_id, _ in final) == sorted(f"item-{i}" for i in range(total))
    assert len(asked) == total - len(done_ids)  # nothing already done was asked again
    assert all(text == f"answer number {item_id[5:]} here" for item_id, text in final)


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


# -- resuming only what was asked, refusing what is not ours (issue 10, defects 2 and 3) -----
def test_a_changed_prompt_is_run_again_on_resume(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    ylokh.batch(["Hello", "Bonjour"], output=out, base_url=server.base_url)
    again = ylokh.batch(["Totally different", "Bonjour"], output=out, base_url=server.base_url)
    assert [r.text for r in again] == ["Totally different", "Bonjour"]
    assert len(server.requests) == 3  # "Bonjour" was not asked twice
    assert sorted(line["text"] for line in lines_of(out)) == ["Bonjour", "Totally different"]
    # Payload options are part of the request too; settings such as the timeout are not.
    again = ylokh.batch(
        [{"id": 1, "prompt": "Bonjour"}], output=out, base_url=server.base_url, timeout=30
    )
    assert again[0].text == "Bonjour"
    assert len(server.requests) == 3
    ylokh.batch(["x", "Bonjour"], output=out, base_url=server.base_url, temperature=0)
    assert len(server.requests) == 5


@pytest.mark.parametrize(
    "content",
    ['{"id": 1, "prompt": "an input line"}\n', "not json at all\n", '"a bare string"\n'],
)
def test_an_output_file_that_holds_other_lines_is_refused_untouched(
    server: Server, tmp_path: Path, content: str
) -> None:
    out = tmp_path / "notes.jsonl"
    out.write_text(content)
    with pytest.raises(ylokh.InvalidRequestError, match="line 1 is not one of"):
        ylokh.batch(["x"], output=out, base_url=server.base_url)
    assert out.read_text() == content
    assert server.requests == []


def test_cli_refuses_to_write_into_its_input(server: Server, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ["Hello", {"id": "b", "prompt": "Bonjour"}])
    before = src.read_bytes()
    for out in (src, tmp_path / "." / "in.jsonl"):
        done = cli(str(src), "-o", str(out), "--base-url", server.base_url)
        assert done.returncode == 2, done.stderr
        assert "is the input file" in done.stderr and "Traceback" not in done.stderr
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"id": 1, "prompt": "not a result"}\n')
    done = cli(str(src), "-o", str(notes), "--base-url", server.base_url)
    assert done.returncode == 2
    assert done.stderr.count("\n") <= 2 and "refusing" in done.stderr
    assert src.read_bytes() == before
    assert notes.read_text() == '{"id": 1, "prompt": "not a result"}\n'
    assert server.requests == []


def test_every_bad_input_line_is_reported_at_once(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('"fine"\n{oops\n{"text": "x"}\n"fine"\n[]\n')
    done = cli(str(src), "--local")
    assert done.returncode == 2
    assert "3 bad lines" in done.stderr
    for number in (2, 3, 5):
        assert f"line {number}:" in done.stderr
    assert "Traceback" not in done.stderr


# -- replies that cannot be written as they are (defect 4) ----------------------------------
NO_ORJSON = "import sys; sys.modules['orjson'] = None; import runpy; "
NO_ORJSON += "runpy.run_module('ylokh', run_name='__main__', alter_sys=True)"


@pytest.mark.parametrize("backend", ["json", "orjson"])
def test_a_lone_surrogate_in_a_reply_is_one_item_not_a_crash(tmp_path: Path, backend: str) -> None:
    if backend == "orjson":
        pytest.importorskip("orjson")  # the fast extra (the nofast and oldest envs lack it)
    src = write_jsonl(tmp_path / "in.jsonl", ["one", "two", "bad", "four", "five"])
    out = tmp_path / "out.jsonl"
    head = (
        [sys.executable, "-c", NO_ORJSON] if backend == "json" else [sys.executable, "-m", "ylokh"]
    )
    with surrogate_server() as url:
        done = subprocess.run(
            [*head, "batch", str(src), "-o", str(out), "--base-url", url],
            capture_output=True, text=True, env=_env(), timeout=60,
        )  # fmt: skip
    assert "Traceback" not in done.stderr
    lines = {line["id"]: line for line in lines_of(out)}
    assert sorted(lines) == [1, 2, 3, 4, 5]
    assert all(lines[i]["text"] == text for i, text in [(1, "one"), (2, "two"), (5, "five")])
    if backend == "json":  # decoded, and written with a replacement character
        assert done.returncode == 0, done.stderr
        assert lines[3]["text"] == "bad \ufffd end"
    else:  # orjson refuses the chunk: that item failed, alone
        assert done.returncode == 1
        assert "1 of 5 prompts failed" in done.stderr
        assert lines[3]["error"]["type"] == "ProtocolError"


# -- file errors are one line (defect 5) ----------------------------------------------------
@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mount a small tmpfs (``size`` bytes, ``ro`` for read-only) under ``tmp_path``."""
    mounted: list[Path] = []

    def mount(size: int = 64 * 1024, ro: bool = False) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        options = f"size={size}" + (",ro" if ro else "")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def assert_one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("ylokh: error")]
    assert len(errors) == 1, done.stderr
    for word in words:
        assert word in errors[0]


def test_cli_output_into_a_directory_or_a_missing_folder(server: Server, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ["a", "b"])
    done = cli(str(src), "-o", str(tmp_path), "--base-url", server.base_url)
    assert_one_line_error(done, str(tmp_path), "directory")
    done = cli(str(src), "-o", str(tmp_path / "nope" / "o.jsonl"), "--base-url", server.base_url)
    assert_one_line_error(done, "nope", "No such file")
    assert server.requests == []


def test_cli_output_onto_a_read_only_filesystem(
    server: Server, tmp_path: Path, tmpfs: Callable[..., Path]
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ["a", "b"])
    where = tmpfs(ro=True)
    done = cli(str(src), "-o", str(where / "o.jsonl"), "--base-url", server.base_url)
    assert_one_line_error(done, "o.jsonl", "Read-only")


def test_cli_output_onto_a_full_disk(
    server: Server, tmp_path: Path, tmpfs: Callable[..., Path]
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ["x " * 400] * 40)  # ~32 KB of results
    where = tmpfs(size=16 * 1024)
    out = where / "o.jsonl"
    done = cli(str(src), "-o", str(out), "-c", "4", "--base-url", server.base_url)
    assert_one_line_error(done, "o.jsonl", "No space left")
    # Resuming onto the full disk needs a rewrite (the torn line goes): it fails the same
    # way and leaves no temporary file behind.
    os.truncate(out, out.stat().st_size - 10)
    done = cli(str(src), "-o", str(out), "--base-url", server.base_url)
    assert done.returncode in (1,), done.stderr
    assert "Traceback" not in done.stderr
    assert [p.name for p in where.iterdir()] == ["o.jsonl"]


# -- within a run ---------------------------------------------------------------------------
def test_a_stream_broken_before_anyone_saw_it_is_run_again(server: Server) -> None:
    server.script(["reset-after=1"])
    [result] = ylokh.batch(["one two three"], base_url=server.base_url)
    assert result.ok and result.text == "one two three"
    assert len(server.requests) == 2
    [result] = ylokh.batch(
        [{"prompt": "one two three", "options": {"ylokh_fault": "reset-after=2"}}],
        base_url=server.base_url,
    )
    assert result.error is not None
    assert result.error["type"].startswith("Incomplete")  # an IncompleteStreamError
    assert result.error["partial"] == "one two "


def test_usage_is_asked_for_and_dropped_when_the_server_rejects_it(server: Server) -> None:
    results = ylokh.batch(["a b"], base_url=server.base_url)
    assert results[0].usage == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
    assert server.requests[0].json["stream_options"] == {"include_usage": True}
    server.reset()
    server.script(["status=400"])  # a server that refuses stream_options
    results = ylokh.batch(["a b", "c"], concurrency=1, base_url=server.base_url)
    assert [r.text for r in results] == ["a b", "c"]
    assert [("stream_options" in r.json) for r in server.requests] == [True, False, False]


# -- OpenAI Batch files (issue 13) ----------------------------------------------------------
# The two input lines of OpenAI's Batch API guide, as documented.
OPENAI_EXAMPLE = """\
{"custom_id": "request-1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-3.5-turbo-0125", "messages": [{"role": "system", "content": "You are a helpful assistant."},{"role": "user", "content": "Hello world!"}],"max_tokens": 1000}}
{"custom_id": "request-2", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-3.5-turbo-0125", "messages": [{"role": "system", "content": "You are an unhelpful assistant."},{"role": "user", "content": "Hello world!"}],"max_tokens": 1000}}
"""  # noqa: E501


def test_openai_documented_example_lines_parse() -> None:
    items = read_jsonl(OPENAI_EXAMPLE.splitlines(keepends=True))
    assert [item.id for item in items] == ["request-1", "request-2"]
    assert all(item.openai and item.problem is None for item in items)
    assert items[0].options == {"model": "gpt-3.5-turbo-0125", "max_tokens": 1000}
    assert items[1].messages[0]["content"] == "You are an unhelpful assistant."


def test_openai_batch_round_trip_through_the_cli(server: Server, tmp_path: Path) -> None:
    from openai.types.chat import ChatCompletion

    src = tmp_path / "batchinput.jsonl"
    embedding = {"custom_id": "emb", "method": "POST", "url": "/v1/embeddings",
                 "body": {"model": "e", "input": "x"}}  # fmt: skip
    src.write_text(OPENAI_EXAMPLE + json.dumps(embedding) + "\n")
    out = tmp_path / "batch_output.jsonl"
    done = cli(str(src), "-o", str(out), "--base-url", server.base_url)
    assert done.returncode == 1  # the embeddings line is a failed item
    assert "1 of 3 prompts failed" in done.stderr and "Traceback" not in done.stderr
    lines = {line["custom_id"]: line for line in lines_of(out)}
    assert len(server.requests) == 2  # the embeddings line sent nothing
    for custom_id in ("request-1", "request-2"):
        line = lines[custom_id]
        assert set(line) == {"id", "custom_id", "response", "error"}
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200
        assert line["response"]["request_id"]
        body = ChatCompletion.model_validate(line["response"]["body"])
        assert body.choices[0].message.content == "Hello world!"
        assert body.model == "gpt-3.5-turbo-0125"
        assert body.usage is not None and body.usage.completion_tokens == 2
    assert lines["emb"]["response"] is None
    assert "/v1/embeddings is not supported" in lines["emb"]["error"]["message"]
    assert {req.json["max_tokens"] for req in server.requests} == {1000}

    # A rerun with the body of request-2 changed asks request-2 again, and only that.
    server.reset()
    changed = OPENAI_EXAMPLE.replace("an unhelpful", "a terse")
    src.write_text(changed)
    done = cli(str(src), "-o", str(out), "--base-url", server.base_url)
    assert done.returncode == 0, done.stderr
    assert [r.json["messages"][0]["content"] for r in server.requests] == [
        "You are a terse assistant."
    ]
    final = [line["custom_id"] for line in lines_of(out)]
    assert sorted(final) == ["emb", "request-1", "request-2"]  # old answers are not kept twice
    # Ran again, nothing is asked.
    server.reset()
    assert cli(str(src), "-o", str(out), "--base-url", server.base_url).returncode == 0
    assert server.requests == []


def test_openai_failures_are_openai_error_lines(server: Server, tmp_path: Path) -> None:
    line = json.loads(OPENAI_EXAMPLE.splitlines()[0])
    line["body"]["ylokh_fault"] = "status=400"
    src = write_jsonl(tmp_path / "in.jsonl", [line])
    done = cli(str(src), "--base-url", server.base_url)
    assert done.returncode == 1
    [out] = map(json.loads, done.stdout.splitlines())
    assert out["custom_id"] == "request-1" and out["response"] is None
    assert out["error"]["code"] == "BadRequestError" and out["error"]["status_code"] == 400
    from openai.types import BatchError

    assert BatchError.model_validate(out["error"]).code == "BadRequestError"


def test_a_file_mixing_the_two_formats_is_bad_input(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(OPENAI_EXAMPLE + '"a plain prompt"\n')
    done = cli(str(src), "--local")
    assert done.returncode == 2
    assert "line 3: not an OpenAI Batch line" in done.stderr


def test_cli_batch_options_and_max_retries(server: Server, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ["a", {"prompt": "b", "options": {"seed": 9}}])
    server.script(["status=503"])
    done = cli(str(src), "--base-url", server.base_url, "-c", "1", "--option", "seed=3",
               "--option", 'stop=["x"]', "--max-retries", "0")  # fmt: skip
    assert done.returncode == 1  # the 503 was not retried
    assert len(server.requests) == 2
    assert [r.json["seed"] for r in server.requests] == [3, 9]  # an item's own options win
    assert {tuple(r.json["stop"]) for r in server.requests} == {("x",)}


def test_output_to_dev_stdout_is_not_read_for_resuming(server: Server, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", ["a", "b"])
    done = subprocess.run(
        [sys.executable, "-m", "ylokh", "batch", str(src), "-o", "/dev/stdout",
         "--base-url", server.base_url],
        stdin=subprocess.PIPE,  # open and never written: reading it would hang
        capture_output=True, text=True, env=_env(), timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(json.loads(line)["text"] for line in done.stdout.splitlines()) == ["a", "b"]
