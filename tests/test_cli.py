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
    assert done.stderr.startswith("ylokh: error: connection to")
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
