"""The ``ylokh`` command, run for real: ``python -m ylokh`` in a subprocess against the
bundled server (and the interactive mode under a pseudo-terminal with pexpect)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lone_surrogate import surrogate_server

import ylokh
from ylokh import cli
from ylokh.testing import Server

ROOT = Path(ylokh.__file__).resolve().parent.parent
SECRET = "sk-test-SECRET-4242"


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)  # the autouse fixture already removed YLOKH_* and proxies
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def ylokh_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ylokh", *args]


def run(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ylokh_cmd(*args),
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=_env(**env),
        timeout=60,
    )


def popen(*args: str, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ylokh_cmd(*args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(**env),
    )


def read_until(fd: int, marker: bytes) -> bytes:
    """Read a pipe until ``marker`` shows up (or EOF)."""
    seen = b""
    while marker not in seen:
        data = os.read(fd, 4096)
        if not data:
            break
        seen += data
    return seen


@pytest.fixture(autouse=True)
def _state_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Conversations kept for --continue go to a folder of the test's own."""
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state


@pytest.fixture
def unused_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def slow_server() -> Iterator[Server]:
    """Pauses between chunks, so a test can act while an answer is streaming."""
    with Server(delay=0.25) as srv:
        yield srv


# -- chat, one shot --------------------------------------------------------------------------
def test_chat_local_is_the_zero_setup_first_run() -> None:
    done = run("chat", "--local", "hello from the README")
    assert (done.returncode, done.stdout, done.stderr) == (0, "hello from the README\n", "")


def test_chat_flags_reach_the_request(server: Server) -> None:
    done = run(
        "chat",
        "--base-url", server.base_url,
        "--model", "my-model",
        "--system", "Be brief.",
        "--temperature", "0.5",
        "--max-tokens", "2",
        "--timeout", "30",
        "one two three four",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "one two \n"  # the server obeys max_tokens; a final newline ends it
    payload = server.requests[-1].json
    assert payload["model"] == "my-model"
    assert payload["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one two three four"},
    ]
    assert (payload["temperature"], payload["max_tokens"], payload["stream"]) == (0.5, 2, True)
    assert "authorization" not in server.requests[-1].headers


def test_environment_configures_the_command(server: Server) -> None:
    done = run("chat", "hi", YLOKH_BASE_URL=server.base_url, YLOKH_MODEL="env-model")
    assert (done.returncode, done.stdout) == (0, "hi\n")
    assert server.requests[-1].json["model"] == "env-model"


def test_chat_prints_each_chunk_as_it_arrives(slow_server: Server) -> None:
    proc = popen("chat", "--base-url", slow_server.base_url, "first second third fourth fifth")
    assert proc.stdout is not None
    try:
        seen = read_until(proc.stdout.fileno(), b"first")
        # The first word is on the pipe while the rest of the answer is still on its way.
        assert b"first" in seen
        assert proc.poll() is None
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        assert proc.stderr is not None
        proc.stderr.close()


@pytest.mark.parametrize("args", [["-"], []], ids=["dash", "pipe"])
def test_chat_reads_the_prompt_from_stdin(server: Server, args: list[str]) -> None:
    done = run("chat", "--base-url", server.base_url, *args, stdin="line one\nline two\n")
    assert (done.returncode, done.stdout) == (0, "line one\nline two\n")
    assert server.requests[-1].json["messages"][-1]["content"] == "line one\nline two\n"


def test_chat_json_prints_one_object_per_chunk(server: Server) -> None:
    done = run("chat", "--base-url", server.base_url, "--json", "alpha beta gamma")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["type"] for line in lines] == ["delta", "delta", "delta", "done"]
    assert "".join(line["text"] for line in lines[:-1]) == "alpha beta gamma"
    assert lines[-1] == {
        "type": "done",
        "text": "alpha beta gamma",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
    }
    assert server.requests[0].json["stream_options"] == {"include_usage": True}


def test_chat_no_stream(server: Server) -> None:
    done = run("chat", "--base-url", server.base_url, "--no-stream", "all at once")
    assert (done.returncode, done.stdout) == (0, "all at once\n")
    assert server.requests[-1].json["stream"] is False
    done = run("chat", "--base-url", server.base_url, "--no-stream", "--json", "all at once")
    line = json.loads(done.stdout)
    assert (line["type"], line["text"], line["finish_reason"]) == ("done", "all at once", "stop")
    assert line["usage"]["completion_tokens"] == 3


# -- errors and exit codes -------------------------------------------------------------------
def test_api_error_is_one_line_and_exit_1() -> None:
    with Server(fault="status=503;retry-after-ms=5") as srv:
        done = run("chat", "--base-url", srv.base_url, "hi")
        assert len(srv.requests) == 3  # retried twice, quietly
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("ylokh: error: ")
    assert "503" in done.stderr
    assert "Traceback" not in done.stderr


def test_connection_error_exit_1(unused_port: int) -> None:
    done = run("chat", "--base-url", f"http://127.0.0.1:{unused_port}/v1", "hi",
               YLOKH_MAX_RETRIES="0")  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith("ylokh: error: could not connect to")
    assert done.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "args",
    [
        ["chat", "--no-such-flag", "hi"],
        ["chat", "--temperature", "warm", "hi"],
        ["chat", "--local", "--base-url", "http://127.0.0.1:1/v1", "hi"],
        ["chat", "--local", "--timeout", "-1", "hi"],
        ["chat", "--local", "   "],
        ["chat", "--base-url", "ftp://example.invalid", "hi"],
        ["serve", "--fault", "no-such-fault"],
        ["batch", "no-such-file.jsonl", "--local"],
        [],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    done = run(*args)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert "error" in done.stderr
    assert "Traceback" not in done.stderr


def test_empty_stdin_is_a_usage_error() -> None:
    done = run("chat", "--local", "-", stdin="")
    assert done.returncode == 2
    assert "stdin was empty" in done.stderr


def test_debug_logs_requests_and_shows_tracebacks(server: Server) -> None:
    done = run("--debug", "chat", "--base-url", server.base_url, "hi")
    assert done.returncode == 0
    assert "DEBUG" in done.stderr and "POST" in done.stderr
    # --debug is accepted after the subcommand too
    with Server(fault="status=404") as srv:
        done = run("chat", "--debug", "--base-url", srv.base_url, "hi")
    assert done.returncode == 1
    assert "Traceback" in done.stderr
    assert done.stderr.splitlines()[-1].startswith("ylokh: error: ")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_the_api_key_is_never_printed(how: str) -> None:
    key_args = ["--api-key", SECRET] if how == "flag" else []
    key_env = {"YLOKH_API_KEY": SECRET} if how == "env" else {}
    # The server echoes the Authorization header back in its error message.
    with Server(api_key="the-right-key", fault="status=401;echo-auth") as srv:
        for command in (["chat", "hi"], ["models"], ["batch", "-"]):
            done = run(
                "--debug",
                *command,
                "--base-url",
                srv.base_url,
                *key_args,
                stdin='{"prompt": "hi"}\n',
                YLOKH_MAX_RETRIES="0",
                **key_env,
            )
            assert done.returncode == 1, (command, done.stderr)
            assert SECRET not in done.stdout + done.stderr
        assert srv.requests[-1].headers["authorization"] == f"Bearer {SECRET}"


def test_ctrl_c_exits_130(slow_server: Server) -> None:
    proc = popen("chat", "--base-url", slow_server.base_url, "one two three four five six")
    assert proc.stdout is not None and proc.stderr is not None
    try:
        read_until(proc.stdout.fileno(), b"one")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
        stderr = proc.stderr.read().decode()
        assert "interrupted" in stderr
        assert "Traceback" not in stderr
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_a_closed_pipe_ends_quietly(slow_server: Server) -> None:
    proc = popen("chat", "--base-url", slow_server.base_url, "one two three four five")
    assert proc.stdout is not None and proc.stderr is not None
    try:
        read_until(proc.stdout.fileno(), b"one")
        proc.stdout.close()  # like `| head -c 3`
        assert proc.wait(30) == 0
        assert "Traceback" not in proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


# -- models and serve ------------------------------------------------------------------------
def test_models(server: Server) -> None:
    done = run("models", "--base-url", server.base_url)
    assert (done.returncode, done.stdout) == (0, "ylokh-echo\n")
    done = run("models", "--base-url", server.base_url, "--json")
    assert json.loads(done.stdout)["data"][0]["id"] == "ylokh-echo"
    assert server.requests[-1].path == "/v1/models"
    done = run("models", "--local")
    assert (done.returncode, done.stdout) == (0, "ylokh-echo\n")


def test_models_errors_exit_1() -> None:
    with Server(api_key="right") as srv:
        done = run("models", "--base-url", srv.base_url, "--api-key", "wrong")
    assert done.returncode == 1
    assert done.stderr.startswith("ylokh: error: ") and "401" in done.stderr
    with Server(fault="html") as srv:
        done = run("models", "--base-url", srv.base_url)
    assert done.returncode == 1
    assert "did not answer a model list" in done.stderr


def test_serve_runs_the_bundled_server_until_ctrl_c() -> None:
    proc = popen("serve", "--port", "0", "--delay", "0.01", "--model", "served-model")
    assert proc.stdout is not None and proc.stderr is not None
    try:
        banner = read_until(proc.stdout.fileno(), b"\n").decode()
        match = re.search(r"(http://127\.0\.0\.1:\d+/v1)", banner)
        assert match, banner
        base_url = match.group(1)
        assert run("chat", "--base-url", base_url, "are you there").stdout == "are you there\n"
        assert run("models", "--base-url", base_url).stdout == "served-model\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_serve_reports_a_busy_port(server: Server) -> None:
    done = run("serve", "--port", str(server.port))
    assert done.returncode == 1
    assert done.stderr.startswith("ylokh serve: error: cannot listen on")


def test_main_is_the_console_script_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"ylokh {ylokh.__version__}"


# -- interactive -----------------------------------------------------------------------------
pexpect = pytest.importorskip("pexpect")


def spawn(*args: str, **env: str) -> Any:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "ylokh", *args],
        env=_env(TERM="dumb", **env),
        encoding="utf-8",
        timeout=20,
        dimensions=(24, 200),
    )
    child.expect("/help for commands")
    child.expect_exact("> ")
    return child


def ask(child: Any, line: str, answer: str) -> None:
    child.sendline(line)
    child.expect_exact(answer)
    child.expect_exact("> ")


def test_interactive_chat_keeps_history(tmp_path: Path) -> None:
    with Server() as srv:
        child = spawn("chat", "--base-url", srv.base_url, "--system", "Be kind.")
        try:
            ask(child, "first question", "first question\r\n")
            ask(child, "second question", "second question\r\n")
            sent = srv.requests[-1].json["messages"]
            assert [m["content"] for m in sent] == [
                "Be kind.",
                "first question",
                "first question",
                "second question",
            ]
            ask(child, "/system Be terse.", "(system prompt set)")
            ask(child, "/system", "system prompt: Be terse.")
            saved = tmp_path / "chat.json"
            ask(child, f"/save {saved}", "(saved 5 messages")
            history = json.loads(saved.read_text())["messages"]
            assert history[0] == {"role": "system", "content": "Be terse."}
            assert [m["role"] for m in history[1:]] == ["user", "assistant"] * 2
            ask(child, "/reset", "(conversation cleared)")
            ask(child, "third", "third\r\n")
            sent = srv.requests[-1].json["messages"]
            assert sent == [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": "third"},
            ]
            ask(child, "/nope", "unknown command /nope")
            ask(child, "/help", "/save FILE")
            child.sendline("/exit")
            child.expect(pexpect.EOF)
        finally:
            child.close(force=True)
        assert child.exitstatus == 0


def test_interactive_ctrl_c_stops_the_answer_not_the_session(tmp_path: Path) -> None:
    with Server(delay=0.3) as srv:
        child = spawn("chat", "--base-url", srv.base_url)
        try:
            child.sendline("a long answer that takes a while to stream")
            child.expect_exact("stream\r\na long")  # the terminal's echo, then the answer
            child.sendintr()
            child.expect_exact("[interrupted")
            child.expect_exact("> ")
            srv.reset()
            # The session goes on; the interrupted turn was not kept in the history.
            child.sendline("short")
            child.expect_exact("short\r\n")
            child.expect_exact("> ")
            assert srv.requests[-1].json["messages"] == [{"role": "user", "content": "short"}]
            child.sendintr()  # at the prompt: one Ctrl-C warns ...
            child.expect_exact("Ctrl-C again")
            child.sendintr()  # ... a second one leaves
            child.expect(pexpect.EOF)
        finally:
            child.close(force=True)
        assert child.exitstatus == 130


def test_interactive_ctrl_d_leaves_and_errors_do_not() -> None:
    with Server() as srv:
        child = spawn("chat", "--base-url", srv.base_url, YLOKH_MAX_RETRIES="0")
        try:
            srv.script(["status=503"])
            ask(child, "this one fails", "ylokh: error:")
            ask(child, "this one works", "this one works\r\n")
            child.sendeof()
            child.expect(pexpect.EOF)
        finally:
            child.close(force=True)
        assert child.exitstatus == 0


def test_interactive_local() -> None:
    child = spawn("chat", "--local")
    try:
        ask(child, "hello local", "hello local\r\n")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def spawn_one(*args: str, **env: str) -> Any:
    """A one-shot command on a terminal (stdin, stdout and stderr are the pty)."""
    return pexpect.spawn(
        sys.executable, ["-m", "ylokh", *args], env=_env(TERM="dumb", **env),
        encoding="utf-8", timeout=30, dimensions=(24, 200),
    )  # fmt: skip


def test_interactive_multi_line_input_and_a_pasted_block() -> None:
    with Server() as srv:
        child = spawn("chat", "--base-url", srv.base_url)
        try:
            child.sendline("first line \\")
            child.expect_exact(". ")
            ask(child, "second line", "second line\r\n")
            assert srv.requests[-1].json["messages"][-1]["content"] == "first line \nsecond line"
            child.send("pasted one\npasted two\n")  # arrives in one read, as a paste does
            child.expect_exact("pasted two\r\n")
            child.expect_exact("> ")
            assert srv.requests[-1].json["messages"][-1]["content"] == "pasted one\npasted two"
            assert len(srv.requests) == 2
        finally:
            child.close(force=True)


def test_interactive_honours_no_stream() -> None:
    with Server() as srv:
        child = spawn("chat", "--base-url", srv.base_url, "--no-stream")
        try:
            ask(child, "all at once", "all at once\r\n")
            assert srv.requests[-1].json["stream"] is False
        finally:
            child.close(force=True)


def test_a_slow_first_answer_says_what_it_waits_for_on_a_terminal() -> None:
    with Server(fault="stall=30") as srv:
        child = spawn_one("chat", "--base-url", srv.base_url, "hello")
        try:
            child.expect_exact(f"waiting for an answer from {srv.base_url}")
            child.sendintr()
            child.expect(pexpect.EOF)
        finally:
            child.close(force=True)
        assert child.exitstatus == 130
    # Not on a pipe: scripts and logs see only the answer and the error.
    with Server(fault="stall=6") as srv:
        done = run("chat", "--base-url", srv.base_url, "--timeout", "5", "--max-retries", "0", "x")
    assert done.returncode == 1
    assert "waiting" not in done.stderr


def test_a_long_retry_after_wait_is_said_on_a_terminal() -> None:
    with Server() as srv:
        srv.script(["status=503;retry-after=3"])
        child = spawn_one("chat", "--base-url", srv.base_url, "after the wait")
        try:
            child.expect(r"waiting [3-4] s before trying again")  # Retry-After, jittered
            child.expect_exact("after the wait")
            child.expect(pexpect.EOF)
        finally:
            child.close(force=True)
        assert child.exitstatus == 0


# -- the flags people expect (issue 10) -----------------------------------------------------
def test_usage_errors_print_the_subcommands_usage(tmp_path: Path) -> None:
    done = run("chat", "--local", "--timeout", "-1", "hi")
    assert done.returncode == 2
    assert done.stderr.startswith("usage: ylokh chat "), done.stderr
    src = tmp_path / "in.jsonl"
    src.write_text('"x"\n')
    done = run("batch", str(src), "-c", "0", "--local")
    assert done.returncode == 2
    assert done.stderr.startswith("usage: ylokh batch "), done.stderr


def test_option_flags_reach_the_payload(server: Server) -> None:
    done = run(
        "chat", "--base-url", server.base_url, "hi", "-o", "top_p=0.5", "--option", "seed=1",
        "-o", 'stop=["END"]', "-o", 'response_format={"type": "json_object"}', "-o", "user=me",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    sent = server.requests[-1].json
    assert (sent["top_p"], sent["seed"], sent["stop"]) == (0.5, 1, ["END"])
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["user"] == "me"  # not JSON: the text as it is


@pytest.mark.parametrize("option", ["novalue", "api_key=x", "=1", "model=m"])
def test_bad_options_are_usage_errors(server: Server, option: str) -> None:
    done = run("chat", "--base-url", server.base_url, "hi", "-o", option)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert server.requests == []


def test_max_retries_flag(server: Server) -> None:
    server.script(["status=503", "status=503"])
    done = run("chat", "--base-url", server.base_url, "hi", "--max-retries", "0")
    assert done.returncode == 1
    assert len(server.requests) == 1
    done = run("chat", "--base-url", server.base_url, "hi", "--max-retries", "1")
    assert done.returncode == 0 and done.stdout == "hi\n"


def test_a_prompt_and_piped_text_are_sent_together(server: Server) -> None:
    done = run("chat", "--base-url", server.base_url, "Summarize this", stdin="my notes\n")
    assert done.returncode == 0, done.stderr
    assert server.requests[-1].json["messages"][-1]["content"] == "Summarize this\n\nmy notes\n"


def test_json_reports_a_failure_as_a_last_object(server: Server) -> None:
    done = run("chat", "--base-url", server.base_url, "--json", "alpha beta gamma",
               "-o", "ylokh_fault=reset-after=1")  # fmt: skip
    assert done.returncode == 1
    last = json.loads(done.stdout.splitlines()[-1])
    assert last["type"] == "error"
    assert last["partial"] == "alpha "
    assert last["error"]["status_code"] is None and last["error"]["message"]
    assert done.stderr.startswith("ylokh: error: ") and done.stderr.count("\n") == 1
    done = run("chat", "--base-url", server.base_url, "--json", "x", "--max-retries", "0",
               "-o", "ylokh_fault=status=503")  # fmt: skip
    last = json.loads(done.stdout.splitlines()[-1])
    assert last["error"]["type"] == "ServerError" and last["error"]["status_code"] == 503
    assert last["partial"] == ""


def test_usage_is_dropped_silently_when_the_server_rejects_stream_options(
    server: Server,
) -> None:
    server.script(["status=400"])
    done = run("chat", "--base-url", server.base_url, "--json", "still answered")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["text"] == "still answered"
    assert [("stream_options" in r.json) for r in server.requests] == [True, False]


def test_continue_goes_on_with_the_last_conversation(server: Server) -> None:
    done = run("chat", "-c", "--base-url", server.base_url, "too early")
    assert done.returncode == 2 and "no conversation to continue" in done.stderr
    assert (
        run("chat", "--base-url", server.base_url, "-m", "m1", "-t", "0", "first").returncode == 0
    )
    done = run("chat", "--continue", "--base-url", server.base_url, "second")
    assert done.returncode == 0, done.stderr
    sent = server.requests[-1].json
    assert [m["content"] for m in sent["messages"]] == ["first", "first", "second"]
    assert (sent["model"], sent["temperature"]) == ("m1", 0)  # kept with the conversation
    run("chat", "-c", "--base-url", server.base_url, "third")
    assert len(server.requests[-1].json["messages"]) == 5


def test_interactive_continue(server: Server) -> None:
    assert run("chat", "--base-url", server.base_url, "before").returncode == 0
    child = pexpect.spawn(
        sys.executable, ["-m", "ylokh", "chat", "-c", "--base-url", server.base_url],
        env=_env(TERM="dumb"), encoding="utf-8", timeout=20, dimensions=(24, 200),
    )  # fmt: skip
    try:
        child.expect_exact("going on after 1 turn")
        child.expect_exact("> ")
        ask(child, "after", "after\r\n")
        assert [m["content"] for m in server.requests[-1].json["messages"]] == [
            "before", "before", "after"
        ]  # fmt: skip
    finally:
        child.close(force=True)


def test_the_first_run_names_the_ways_to_choose_a_server() -> None:
    # No --base-url, no YLOKH_BASE_URL: the default endpoint no longer answers.
    done = run("chat", "hi", "--max-retries", "0", "--timeout", "5")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    for hint in ("--base-url", "YLOKH_BASE_URL", "--local"):
        assert hint in done.stderr


def test_no_hint_when_a_server_was_named(unused_port: int) -> None:
    done = run("chat", "--base-url", f"http://127.0.0.1:{unused_port}/v1", "hi",
               "--max-retries", "0")  # fmt: skip
    assert done.returncode == 1 and "--local" not in done.stderr


@pytest.mark.parametrize("backend", ["json", "orjson"])
def test_a_lone_surrogate_in_a_reply_is_not_a_crash(backend: str) -> None:
    if backend == "orjson":
        pytest.importorskip("orjson")  # the fast extra (the nofast and oldest envs lack it)
    code = "import sys; sys.modules['orjson'] = None; import runpy; "
    code += "runpy.run_module('ylokh', run_name='__main__', alter_sys=True)"
    head = ["-c", code] if backend == "json" else ["-m", "ylokh"]
    with surrogate_server() as url:
        done = subprocess.run(
            [sys.executable, *head, "chat", "--base-url", url, "bad", "--max-retries", "0"],
            capture_output=True, env=_env(), timeout=60,
        )  # fmt: skip
    assert b"Traceback" not in done.stderr
    if backend == "json":  # decoded: written with a replacement character
        assert done.returncode == 0, done.stderr
        assert done.stdout.decode("utf-8") == "bad \ufffd end\n"
    else:  # orjson refuses the chunk: one error line
        assert done.returncode in (0, 1), done.stderr
        assert done.returncode == 0 or done.stderr.count(b"\n") == 1


def test_saved_message_count_is_plural_only_when_it_should_be(tmp_path: Path) -> None:
    with Server() as srv:
        child = spawn("chat", "--base-url", srv.base_url, "--system", "S")
        try:
            ask(child, f"/save {tmp_path / 'one.json'}", "(saved 1 message to")
        finally:
            child.close(force=True)


def test_serve_has_the_same_flags_as_python_m_ylokh_testing() -> None:
    def flags(*cmd: str) -> set[str]:
        done = subprocess.run(
            [sys.executable, "-m", *cmd, "--help"], capture_output=True, text=True,
            env=_env(), timeout=60,
        )  # fmt: skip
        return set(re.findall(r"--[a-z-]+", done.stdout)) - {"--help", "--debug"}

    assert flags("ylokh", "serve") == flags("ylokh.testing")
    assert "--chunks" in flags("ylokh", "serve")


def test_serve_chunks(unused_port: int) -> None:
    with popen("serve", "--port", str(unused_port), "--chunks", "7") as proc:
        try:
            assert proc.stdout is not None
            read_until(proc.stdout.fileno(), b"listening")
            with ylokh.Client(base_url=f"http://127.0.0.1:{unused_port}/v1") as client:
                assert client.complete("a b") == "a b a b a b a "
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)


def test_python_m_ylokh_testing_reports_a_busy_port(server: Server) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ylokh.testing", "--port", str(server.port)],
        capture_output=True, text=True, env=_env(), timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "port is in use" in done.stderr


def test_batch_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(f'"prompt {i}"\n' for i in range(300)))
    for _ in range(3):
        done = subprocess.run(
            f"{sys.executable} -m ylokh batch {src} --local -c 8 | head -1",
            shell=True, capture_output=True, text=True, env=_env(), timeout=60,
        )  # fmt: skip
        assert done.stdout.count("\n") == 1
        assert done.stderr == "", done.stderr


def test_a_base_url_without_v1_is_a_404_as_on_real_servers(server: Server) -> None:
    done = run("chat", "--base-url", server.url, "hi")  # forgot the /v1
    assert done.returncode == 1
    assert "404" in done.stderr and done.stderr.count("\n") == 1
    assert [r.path for r in server.requests] == ["/chat/completions"]
