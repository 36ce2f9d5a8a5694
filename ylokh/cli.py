"""The ``ylokh`` command (also ``python -m ylokh``): chat, batch, models, serve.

    ylokh chat --local "hello"            # zero setup: talks to the bundled local server
    echo "hello" | ylokh chat --json      # one JSON object per chunk, for jq
    cat notes.txt | ylokh chat "Summarize this"   # the prompt, then the piped text
    ylokh chat                            # on a terminal: an interactive chat
    ylokh chat -c "and then?"             # goes on with the last conversation
    ylokh batch in.jsonl -o out.jsonl     # many prompts; a rerun resumes
    ylokh models / ylokh serve --port 8000

Exit codes: 0 done, 1 API or network error, 2 usage error, 130 interrupted. Errors are
one line on stderr (a traceback only with ``--debug``); the API key is never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import IO, Any

from ._errors import (
    APIConnectionError,
    APITimeoutError,
    InvalidRequestError,
    ProtocolError,
    YlokhError,
    redact,
    status_error,
)
from ._server_flags import add_server_flags, run_server
from ._version import __version__

__all__ = ["main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_logger = logging.getLogger("ylokh")


class UsageError(Exception):
    """A mistake in how the command was called (exit code 2)."""


class FileError(YlokhError):
    """A file could not be written: a missing folder, a full disk, a read-only place (exit 1)."""


# -- the argument parser ---------------------------------------------------------------------
def _connection_flags(parser: argparse.ArgumentParser, *, local: bool = True) -> None:
    group = parser.add_argument_group("connection")
    where = group.add_mutually_exclusive_group()
    where.add_argument(
        "--base-url", help="API base URL, e.g. http://127.0.0.1:8000/v1 (env YLOKH_BASE_URL)"
    )
    if local:
        where.add_argument(
            "--local",
            action="store_true",
            help="start the bundled test server in-process and talk to it (works offline)",
        )
    group.add_argument(
        "--api-key", help="API key, sent as a Bearer token (better: env YLOKH_API_KEY)"
    )
    group.add_argument("--timeout", type=float, help="read timeout in seconds (env YLOKH_TIMEOUT)")
    group.add_argument(
        "--first-token-timeout",
        type=float,
        metavar="S",
        help="retry a call whose first text has not come S seconds after sending "
        "(env YLOKH_FIRST_TOKEN_TIMEOUT)",
    )
    group.add_argument(
        "--max-retries",
        type=int,
        help="retries of a failed request (default 2; env YLOKH_MAX_RETRIES)",
    )


def _option(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as JSON (``seed=1``, ``stop=["\\n"]``), else as text."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def _model_flags(parser: argparse.ArgumentParser, *, short_option: bool = True) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("-m", "--model", help="model name (env YLOKH_MODEL)")
    group.add_argument("-s", "--system", help="system prompt")
    group.add_argument("-t", "--temperature", type=float, help="sampling temperature")
    group.add_argument("--max-tokens", type=int, help="longest answer, in tokens")
    names = ("-o", "--option") if short_option else ("--option",)
    group.add_argument(
        *names,
        dest="options",
        metavar="KEY=VALUE",
        type=_option,
        action="append",
        default=[],
        help="any payload option, the value read as JSON (repeatable): "
        f"{names[0]} top_p=0.9 {names[0]} seed=1 {names[0]} 'stop=[\"END\"]'",
    )


def _debug_flag(parser: argparse.ArgumentParser, default: Any) -> None:
    # SUPPRESS in the subcommands: their default must not overwrite a --debug given before.
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="log requests to stderr and show tracebacks",
    )


def add_command(commands: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """Add the subcommand ``name``; its usage errors print its own usage line."""
    sub: argparse.ArgumentParser = commands.add_parser(name, **kwargs)
    sub.set_defaults(command_parser=sub)
    return sub


def build_parser() -> argparse.ArgumentParser:
    """The ``ylokh`` argument parser (exposed for documentation tools and tests)."""
    parser = argparse.ArgumentParser(
        prog="ylokh",
        description="Stream chat completions from any OpenAI-compatible server.",
        epilog="Exit codes: 0 done, 1 API or network error, 2 usage error, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"ylokh {__version__}")
    _debug_flag(parser, False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for name, command in _COMMANDS.items():
        sub = add_command(commands, name, help=command.help)
        command.add_flags(sub)
        _debug_flag(sub, argparse.SUPPRESS)
    return parser


def _chat_flags(chat: argparse.ArgumentParser) -> None:
    chat.description = (
        "Stream the answer to PROMPT. With '-' or a pipe, the prompt is read from stdin; "
        "a PROMPT and a pipe send the prompt, then the piped text. With no prompt on a "
        "terminal, start an interactive chat (/help for commands; end a line with \\ "
        "to go on on the next one). Every conversation is kept, so --continue goes on "
        "with the last one."
    )
    chat.add_argument("prompt", nargs="?", help="the question; '-' reads stdin")
    chat.add_argument(
        "-c",
        "--continue",
        dest="resume",
        action="store_true",
        help="go on with the last conversation (its model, options and history)",
    )
    _model_flags(chat)
    _connection_flags(chat)
    output = chat.add_argument_group("output")
    output.add_argument("--no-stream", action="store_true", help="ask for the whole answer at once")
    output.add_argument(
        "--json",
        action="store_true",
        help='one JSON object per line: {"type": "delta", "text"} per chunk, then "done" '
        '(or "error", with the partial text)',
    )
    output.add_argument(
        "--stats",
        action="store_true",
        help="after the answer, print its measurements to stderr (ttft, tokens, tok/s)",
    )


def _batch_flags(batch: argparse.ArgumentParser) -> None:
    batch.description = (
        'Each input line is {"id", "prompt" or "messages", optional "model", "options"} '
        '(or a bare JSON string), or a line of the OpenAI Batch API ({"custom_id", '
        '"method", "url", "body"}); the format is read from the first line. Each output '
        'line is {"id", "text" or "error", "finish_reason", "usage", "fingerprint"}, or '
        "OpenAI's batch output line for OpenAI input, written as soon as it is ready. "
        "Rerunning with the same output file skips the requests already answered (same "
        "id, same request) and runs the failed and changed ones again."
    )
    batch.add_argument("input", help="JSONL file of prompts; '-' reads stdin")
    batch.add_argument("-o", "--output", help="JSONL file to append results to (default stdout)")
    batch.add_argument(
        "-c", "--concurrency", type=int, default=16, help="requests in flight (default 16)"
    )
    batch.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal and tqdm is installed)",
    )
    _model_flags(batch, short_option=False)  # -o is the output file here
    _connection_flags(batch)


def _models_flags(models: argparse.ArgumentParser) -> None:
    _connection_flags(models)
    models.add_argument("--json", action="store_true", help="print the server's JSON answer")


def _serve_flags(serve: argparse.ArgumentParser) -> None:
    serve.description = "Serve deterministic echo answers until Ctrl-C (for demos and tests)."
    add_server_flags(serve)  # the same flags as python -m ylokh.testing


# -- bench: the parser of `ylokh bench` ------------------------------------------------------
def _bench_flags(bench: argparse.ArgumentParser) -> None:
    bench.description = (
        "Measure an OpenAI-compatible server with ylokh's async client: TTFT, inter-token "
        "latency, TPOT and end-to-end latency (mean, p50, p90, p99), throughput, errors "
        "and goodput per load level. Levels within 50% of the client's own ceiling, or "
        "whose event loop lagged, are marked client-bound."
    )
    where = bench.add_argument_group("server")
    where.add_argument(
        "--base-url", nargs="+", action="extend", metavar="URL",
        help="API base URL(s); several measure a set of servers together (env YLOKH_BASE_URL)",
    )  # fmt: skip
    where.add_argument(
        "--local", action="store_true",
        help="measure the bundled test server (known latencies: ttft 20 ms, itl 5 ms, 32 tokens)",
    )  # fmt: skip
    where.add_argument("--api-key", help="API key (better: env YLOKH_API_KEY)")
    where.add_argument("--timeout", type=float, help="read timeout in seconds")
    where.add_argument("-m", "--model", help="model name (env YLOKH_MODEL)")
    load = bench.add_argument_group("load").add_mutually_exclusive_group()
    load.add_argument("--concurrency", help="levels of calls kept in flight, e.g. 1,8,32")
    load.add_argument("--rate", help="levels of mean requests/s (Poisson arrivals), e.g. 2,5,10")
    size = bench.add_argument_group("size").add_mutually_exclusive_group()
    size.add_argument("--requests", type=int, default=50, help="requests per level (default 50)")
    size.add_argument("--duration", type=float, help="seconds per level (instead of --requests)")
    more = bench.add_argument_group("requests")
    more.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="uncounted calls before each level (default 2; at least one per slot)",
    )
    prompt = more.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", help="the prompt of every request")
    prompt.add_argument("--prompt-file", help="read the prompt from this file")
    more.add_argument("--max-tokens", type=int, default=128, help="longest answer (default 128)")
    more.add_argument("--slo", help="bounds for goodput, seconds: ttft=0.5,itl=0.05,tpot=,e2e=10")
    more.add_argument("--seed", type=int, default=0, help="seed of the Poisson arrivals")
    out = bench.add_argument_group("output")
    out.add_argument("--json", metavar="F", help="write the JSON document ('-' = stdout)")
    out.add_argument("--csv", metavar="F", help="write one CSV row per level")
    out.add_argument("--report", metavar="F", help="write a report: F.md or F.html (plots inline)")
    out.add_argument("--plot", metavar="F.png", help="write the plots (needs ylokh[plot])")
    out.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="a live progress line on stderr (default: when stderr is a terminal)",
    )  # fmt: skip


# -- shared pieces ---------------------------------------------------------------------------
@contextlib.contextmanager
def _base_url(args: argparse.Namespace) -> Iterator[str | None]:
    """The base URL to use; with ``--local``, a bundled server runs for the duration."""
    if not getattr(args, "local", False):
        yield args.base_url
        return
    from .testing import Server  # imports aiohttp: only when asked for

    with Server() as server:
        yield server.base_url


def _settings(args: argparse.Namespace, base_url: str | None) -> dict[str, Any]:
    if args.timeout is not None and args.timeout < 0:
        raise UsageError("--timeout must not be negative")
    if args.max_retries is not None and args.max_retries < 0:
        raise UsageError("--max-retries must not be negative")
    settings = {"base_url": base_url, "api_key": args.api_key, "timeout": args.timeout}
    first_token = getattr(args, "first_token_timeout", None)
    if first_token is not None:
        from dataclasses import replace as with_field

        from ._config import coerce_timeout

        if not first_token > 0:
            raise UsageError("--first-token-timeout must be positive")
        base = coerce_timeout(args.timeout or os.environ.get("YLOKH_TIMEOUT") or None)
        settings["timeout"] = with_field(base, first_token=first_token)
    if args.max_retries is not None:
        settings["max_retries"] = args.max_retries
    return settings


def _payload(args: argparse.Namespace) -> dict[str, Any]:
    from ._base import SETTING_NAMES

    payload: dict[str, Any] = {"temperature": args.temperature, "max_tokens": args.max_tokens}
    for key, value in args.options:
        if key in SETTING_NAMES or key in ("messages", "model"):
            flag = {"messages": "the prompt", "model": "--model"}.get(key, f"--{key}")
            flag = flag.replace("_", "-")
            raise UsageError(f"-o {key}=...: not a payload option (use {flag})")
        payload[key] = value
    return payload


def _write(stream: IO[str], text: str) -> None:
    from ._batch import scrub

    # A reply may hold a lone surrogate ("\ud800" is valid JSON): write U+FFFD, never crash.
    stream.write(scrub(text))
    stream.flush()  # each delta reaches the terminal (or the pipe) as soon as it arrives


def _json_line(stream: IO[str], obj: dict[str, Any]) -> None:
    _write(stream, json.dumps(obj, ensure_ascii=False) + "\n")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


class _Waiting:
    """Says on a terminal what the command waits for, once an answer is slow to start.

    Strategy: a timer thread prints one line to stderr after ``after`` seconds unless the
    first text arrived first; nothing when stderr is not a terminal (pipes, tests, logs).
    """

    AFTER = 3.0

    def __init__(self, url: str, after: float = AFTER) -> None:
        self._timer: threading.Timer | None = None
        if sys.stderr.isatty():
            text = f"ylokh: waiting for an answer from {url} (Ctrl-C to stop)"
            self._timer = threading.Timer(after, _notice, (text,))
            self._timer.daemon = True
            self._timer.start()

    def done(self) -> None:
        """The answer started (or the call ended): no line, or no further line."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _RetryNotice(logging.Handler):
    """On a terminal, says when a retry waits long (a ``Retry-After`` of 30 s), so a slow
    first answer is never silent; the library logs every retry at WARNING.

    The wait is the record's ``wait`` attribute when the library sets one, else the
    second argument of its message ("retrying POST %s in %.2f s ...").
    """

    LONG = 2.0

    def emit(self, record: logging.LogRecord) -> None:
        wait: object = getattr(record, "wait", None)
        if wait is None and isinstance(record.args, tuple) and len(record.args) > 1:
            wait = record.args[1]
        if isinstance(wait, (int, float)) and wait >= self.LONG:
            _notice(f"ylokh: waiting {wait:.0f} s before trying again ({record.getMessage()})")


# -- chat ------------------------------------------------------------------------------------
def _read_prompt(args: argparse.Namespace) -> str | None:
    """The one-shot prompt, or ``None`` for an interactive chat.

    A prompt argument and piped text make one prompt: the argument, a blank line, the text
    (``cat notes.txt | ylokh chat "Summarize this"``), as ``llm`` does.
    """
    prompt: str | None = args.prompt
    if prompt == "-" or (prompt is None and not sys.stdin.isatty()):
        prompt = sys.stdin.read()
        if not prompt.strip():
            raise UsageError("no prompt: stdin was empty")
        return prompt
    if prompt is not None and not prompt.strip():
        raise UsageError("the prompt is empty")
    if prompt is not None and _piped():
        piped = sys.stdin.read()
        if piped.strip():
            prompt = f"{prompt}\n\n{piped}"
    return prompt


def _piped() -> bool:
    """Whether stdin is a pipe or a file, to be read with a prompt argument; never a
    terminal, a socket or an inherited descriptor that may never end."""
    import stat

    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):  # closed, or replaced by an object
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def _state_file() -> str:
    """Where the last conversation is kept for ``--continue`` (XDG state folder)."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(state, "ylokh", "last-chat.json")


def _new_chat(client: Any, args: argparse.Namespace) -> Any:
    """The conversation to talk in: the last one with ``--continue``, else a new one."""
    from .chat import Chat

    options = {k: v for k, v in _payload(args).items() if v is not None}
    if args.model:
        options["model"] = args.model
    if not args.resume:
        return Chat(system=args.system or None, client=client, **options)
    path = _state_file()
    try:
        chat = Chat.load(path, client=client, **options)
    except FileNotFoundError:
        raise UsageError(f"no conversation to continue ({path} does not exist)") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    if args.system:
        chat.system = args.system
    return chat


def _keep(chat: Any) -> None:
    """Save the conversation for ``--continue``; a state folder that cannot be written is
    not worth failing an answer for."""
    path = _state_file()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        chat.save(path)
    except OSError as exc:
        _logger.debug("could not keep the conversation in %s: %s", path, exc)


def _with_usage(options: dict[str, Any]) -> dict[str, Any]:
    if "stream_options" in options or options.get("stream") is False:
        return options
    return {**options, "stream_options": {"include_usage": True}}


def _cmd_chat(args: argparse.Namespace) -> int:
    from ._errors import BadRequestError
    from ._sync import Client

    prompt = _read_prompt(args)
    with _base_url(args) as base_url, Client(**_settings(args, base_url)) as client:
        chat = _new_chat(client, args)
        if prompt is None:
            return _interactive(client, chat, args)
        out = sys.stdout
        waiting = _Waiting(client.settings.base_url)
        try:
            if args.no_stream:
                answer = chat.complete(prompt, stream=False)
                waiting.done()
                if args.json:
                    _json_line(out, _done(answer, answer.finish_reason, answer.usage))
                else:
                    _write(out, answer if answer.endswith("\n") else answer + "\n")
                if args.stats:
                    print(answer.stats.summary(), file=sys.stderr)
                _keep(chat)
                return EXIT_OK
            # Usage comes only when asked for; a server that rejects stream_options answers
            # 400 before any text, and the question is asked again without it.
            options = _with_usage({})
            try:
                stream = _print_stream(chat, prompt, options, args, waiting)
            except BadRequestError as exc:
                printed: object = getattr(exc, "partial", None)
                if not options or printed:
                    raise  # not about stream_options, or text was printed already
                stream = _print_stream(chat, prompt, {}, args, waiting)
        except YlokhError as exc:
            if args.json:
                _json_line(out, _error_object(exc, args))
            raise
        finally:
            waiting.done()
        if args.json:
            _json_line(out, _done(stream.text, stream.finish_reason, stream.usage))
        if args.stats:
            print(stream.stats.summary(), file=sys.stderr)
        _keep(chat)
    return EXIT_OK


def _print_stream(
    chat: Any, prompt: str, options: dict[str, Any], args: argparse.Namespace, waiting: _Waiting
) -> Any:
    out = sys.stdout
    stream = chat.stream(prompt, **options)
    with stream:
        try:
            for text in stream:
                waiting.done()
                if args.json:
                    _json_line(out, {"type": "delta", "text": text})
                else:
                    _write(out, text)
        except YlokhError as exc:
            if not stream.text:
                raise
            exc.partial = getattr(exc, "partial", None) or stream.text  # type: ignore[attr-defined]
            raise
        finally:
            # End the line even after an error or Ctrl-C, so the shell prompt and the
            # error message start on a line of their own.
            if not args.json and stream.text and not stream.text.endswith("\n"):
                _write(out, "\n")
    return stream


def _done(text: str, finish_reason: str | None, usage: Any) -> dict[str, Any]:
    return {"type": "done", "text": str(text), "finish_reason": finish_reason, "usage": usage}


def _error_object(exc: BaseException, args: argparse.Namespace) -> dict[str, Any]:
    """The last ``--json`` line of a failed answer: what failed, and the text received."""
    from ._errors import APIStatusError

    error = {
        "type": type(exc).__name__,
        "message": redact(str(exc), _secrets(args)),
        "status_code": exc.status_code if isinstance(exc, APIStatusError) else None,
    }
    return {"type": "error", "error": error, "partial": getattr(exc, "partial", "") or ""}


# -- interactive chat ------------------------------------------------------------------------
_HELP = """\
/reset        forget the conversation (the system prompt stays)
/system TEXT  set the system prompt (/system alone shows it)
/save FILE    write the conversation to FILE as JSON
/exit         leave (also Ctrl-D, or Ctrl-C twice)
End a line with \\ to go on on the next line; a pasted block is sent whole.
Ctrl-C while an answer streams stops that answer; the conversation goes on."""


def _notice(text: str) -> None:
    # Notices go to stderr so that stdout holds only answers (e.g. under `tee`).
    print(text, file=sys.stderr, flush=True)


def _more_pasted() -> bool:
    """Whether more typed-ahead input is already there: the rest of a pasted block."""
    try:
        import select

        ready, _, _ = select.select([sys.stdin], [], [], 0.02)
    except (ImportError, OSError, ValueError):  # no select() on this stdin (Windows)
        return False
    return bool(ready)


def _read_message() -> str:
    """One message: a line, more lines while one ends with a backslash, and the rest of a
    pasted block (lines that arrived together)."""
    lines = [input("> ")]
    while True:
        if lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1]
            lines.append(input(". "))
        elif _more_pasted():
            lines.append(input(""))
        else:
            return "\n".join(lines)


def _interactive(client: Any, chat: Any, args: argparse.Namespace) -> int:
    """A chat that keeps its history, until /exit, Ctrl-D or a second Ctrl-C."""
    try:
        import readline  # noqa: F401  (importing it gives input() line editing and history)
    except ImportError:  # not on every platform (Windows)
        pass
    from ._protocol import resolve_model

    model = resolve_model(chat.options.get("model"), os.environ)
    turns = sum(1 for m in chat.messages if m["role"] == "user")
    going_on = f", going on after {_plural(turns, 'turn')}" if args.resume else ""
    _notice(
        f"ylokh {__version__}: chatting with {model} at {client.settings.base_url}{going_on}. "
        "/help for commands, Ctrl-D to leave."
    )
    # Set by a Ctrl-C (at the prompt or during an answer); a second one in a row leaves.
    interrupted = False
    while True:
        try:
            line = _read_message()
        except EOFError:
            _notice("")
            return EXIT_OK
        except KeyboardInterrupt:
            if interrupted:
                _notice("")
                return EXIT_INTERRUPTED
            interrupted = True
            _notice("\n(Ctrl-C again or Ctrl-D to leave)")
            continue
        interrupted = False
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            code = _slash_command(chat, line)
            if code is not None:
                return code
            continue
        # A Ctrl-C that lands anywhere in the turn (even before the first byte) ends the
        # turn, not the session.
        printed = False
        waiting = _Waiting(client.settings.base_url)
        try:
            if args.no_stream:
                answer = chat.complete(line, stream=False)
                waiting.done()
                printed = True
                _write(sys.stdout, answer)
            else:
                with chat.stream(line) as stream:
                    for text in stream:
                        waiting.done()
                        printed = True
                        _write(sys.stdout, text)
        except KeyboardInterrupt:
            interrupted = True
            _notice("\n[interrupted: the answer was not kept]")
            continue
        except YlokhError as exc:
            if printed:
                _write(sys.stdout, "\n")
            _notice(f"ylokh: error: {redact(str(exc), _secrets(args))}")
            continue
        finally:
            waiting.done()
        _write(sys.stdout, "\n")
        _keep(chat)


def _slash_command(chat: Any, line: str) -> int | None:
    """Run one /command; return an exit code to leave the session, else ``None``."""
    name, _, rest = line.partition(" ")
    rest = rest.strip()
    if name in ("/exit", "/quit"):
        return EXIT_OK
    if name == "/help":
        _notice(_HELP)
    elif name == "/reset":
        chat.reset()
        _notice("(conversation cleared)")
    elif name == "/system":
        if rest:
            chat.system = rest
            _notice("(system prompt set)")
        else:
            _notice(f"system prompt: {chat.system or '(none)'}")
    elif name == "/save":
        if not rest:
            _notice("usage: /save FILE")
            return None
        try:
            chat.save(rest)
        except OSError as exc:
            _notice(f"ylokh: error: cannot write {rest}: {exc.strerror or exc}")
        else:
            _notice(f"(saved {_plural(len(chat.messages), 'message')} to {rest})")
    else:
        _notice(f"unknown command {name}; /help lists the commands")
    return None


# -- batch -----------------------------------------------------------------------------------
def _cmd_batch(args: argparse.Namespace) -> int:
    from ._batch import BatchResult, batch, read_jsonl

    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    if args.output and args.input != "-" and _same_file(args.input, args.output):
        raise UsageError(f"-o {args.output} is the input file: results would overwrite it")
    try:
        if args.input == "-":
            items = read_jsonl(sys.stdin, "<stdin>")
        else:
            with open(args.input, encoding="utf-8") as file:
                items = read_jsonl(file, args.input)
    except (OSError, UnicodeDecodeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UsageError(f"cannot read {args.input}: {detail or exc}") from None
    if args.system:
        system = {"role": "system", "content": args.system}
        items = [
            replace(item, messages=[system, *item.messages])
            if item.messages and item.messages[0]["role"] != "system"
            else item
            for item in items
        ]
    failed: list[BatchResult] = []

    def note(result: BatchResult) -> None:
        if not result.ok:
            failed.append(result)

    with _base_url(args) as base_url:
        try:
            results = batch(
                items,
                args.concurrency,
                model=args.model,
                output=args.output or sys.stdout,
                progress=args.progress,
                on_result=note,
                **_settings(args, base_url),
                **_payload(args),
            )
        except BrokenPipeError:
            raise
        except OSError as exc:
            where = exc.filename or args.output or "<stdout>"
            raise FileError(f"cannot write {where}: {exc.strerror or exc}") from None
    if failed:
        first = failed[0].error or {}
        print(
            f"ylokh: {len(failed)} of {len(results)} prompts failed "
            f"(first: id {failed[0].id!r}: {first.get('message')})"
            + ("; rerun the same command to retry them" if args.output else ""),
            file=sys.stderr,
        )
        return EXIT_ERROR
    return EXIT_OK


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): not the same file
        return False


# -- models ----------------------------------------------------------------------------------
def _cmd_models(args: argparse.Namespace) -> int:
    import requests

    from ._config import resolve_settings
    from ._protocol import build_headers

    with _base_url(args) as base_url:
        settings = resolve_settings(**_settings(args, base_url))
        url = settings.base_url + "/models"
        headers = build_headers(settings, stream=False)
        proxy = settings.proxy
        with requests.Session() as session:
            session.trust_env = False  # the proxy was resolved with the settings
            try:
                response = session.get(
                    url,
                    headers=headers,
                    timeout=(settings.timeout.connect, settings.timeout.read),
                    proxies={"http": proxy, "https": proxy} if proxy else None,
                    verify=settings.verify,
                )
            except requests.RequestException as exc:
                detail = redact(str(exc), settings.secrets)
                raise APIConnectionError(f"connection to {url} failed: {detail}") from None
            body = response.content
        if response.status_code >= 400:
            raise status_error(response.status_code, body, secrets=settings.secrets)
        try:
            answer = json.loads(body)
            models = [m["id"] for m in answer["data"]]
        except (ValueError, KeyError, TypeError):
            start = redact(body[:200].decode("utf-8", "replace"), settings.secrets)
            raise ProtocolError(f"{url} did not answer a model list: {start!r}") from None
    if args.json:
        _json_line(sys.stdout, answer)
    else:
        _write(sys.stdout, "".join(f"{m}\n" for m in models))
    return EXIT_OK


# -- serve -----------------------------------------------------------------------------------
def _cmd_serve(args: argparse.Namespace) -> int:
    return run_server(args.command_parser, args)


# -- bench -----------------------------------------------------------------------------------
def _levels_arg(text: str | None, kind: Callable[[str], float], flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [kind(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise UsageError(f"{flag} takes numbers separated by commas, got {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise UsageError(f"{flag} takes positive numbers, got {text!r}")
    return values


LOCAL_BENCH_SERVER = ["--tokens", "32", "--ttft", "0.02", "--itl", "0.005"]


@contextlib.contextmanager
def _local_server() -> Iterator[str]:
    """The bundled server in a process of its own (in this one, it would share the GIL
    with the client and slow it down), with known latencies; yields its base URL."""
    import subprocess

    command = [sys.executable, "-m", "ylokh.testing", "--port", "0", *LOCAL_BENCH_SERVER]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "ylokh test server listening on URL (Ctrl-C to stop)"
        words = [w for w in line.split() if w.startswith("http")]
        if not words:
            raise APIConnectionError("the bundled test server did not start")
        yield words[0]
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    concurrency = _levels_arg(args.concurrency, int, "--concurrency")
    rate = _levels_arg(args.rate, float, "--rate")
    if args.requests < 1:
        raise UsageError("--requests must be at least 1")
    if args.duration is not None and not args.duration > 0:
        raise UsageError("--duration must be positive")
    if args.warmup < 0:
        raise UsageError("--warmup must not be negative")
    try:
        bench.parse_slo(args.slo)
    except ValueError as exc:
        raise UsageError(f"--slo: {exc}") from None
    prompt = args.prompt or bench.DEFAULT_PROMPT
    if args.prompt_file:
        try:
            with open(args.prompt_file, encoding="utf-8") as f:
                prompt = f.read()
        except OSError as exc:
            raise UsageError(f"--prompt-file: {exc.strerror or exc}: {args.prompt_file}") from None
    if args.local and args.base_url:
        raise UsageError("--local and --base-url exclude each other")
    with contextlib.ExitStack() as stack:
        base_url: Any
        if args.local:
            base_url = stack.enter_context(_local_server())
        elif args.base_url:
            base_url = args.base_url[0] if len(args.base_url) == 1 else list(args.base_url)
        else:
            base_url = os.environ.get("YLOKH_BASE_URL") or None
        result = bench.run(
            base_url, model=args.model, concurrency=concurrency, rate=rate,
            requests=args.requests, duration=args.duration, warmup=args.warmup, prompt=prompt,
            max_tokens=args.max_tokens, slo=args.slo, seed=args.seed, api_key=args.api_key,
            timeout=args.timeout, progress=args.progress,
        )  # fmt: skip
    print(result.table(), file=sys.stderr if args.json == "-" else sys.stdout)
    try:
        notices = bench.write_outputs(
            result, json_path=args.json, csv_path=args.csv, report_path=args.report,
            plot_path=args.plot,
        )  # fmt: skip
    except OSError as exc:
        print(f"ylokh: error: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_ERROR
    for notice in notices:
        print(f"ylokh: {notice}", file=sys.stderr)
    return EXIT_ERROR if result.failed else EXIT_OK


# -- main ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Command:
    """A subcommand: its line in ``ylokh --help``, what adds its flags (and the text of its
    own ``--help``), and what runs it."""

    help: str
    add_flags: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# In the order `ylokh --help` lists them.
_COMMANDS = {
    "chat": _Command("ask a question (or chat interactively)", _chat_flags, _cmd_chat),
    "batch": _Command("answer many prompts from a JSONL file", _batch_flags, _cmd_batch),
    "models": _Command("list the server's models (/v1/models)", _models_flags, _cmd_models),
    "serve": _Command("run the bundled OpenAI-compatible test server", _serve_flags, _cmd_serve),
    "bench": _Command(
        "measure a server under load (latency, throughput, goodput)", _bench_flags, _cmd_bench
    ),
}


def _secrets(args: argparse.Namespace) -> list[str]:
    found = [getattr(args, "api_key", None), os.environ.get("YLOKH_API_KEY")]
    return [s for s in found if s]


def main(argv: list[str] | None = None) -> int:
    """Run the ``ylokh`` command with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ylokh: %(levelname)s: %(message)s"))
    # An error is one line on stderr; retry warnings and request logs need --debug, but a
    # long retry wait is said on a terminal (a first run must not look hung).
    handler.setLevel(logging.DEBUG if args.debug else logging.ERROR)
    handlers: list[logging.Handler] = [handler]
    if not args.debug and sys.stderr.isatty():
        handlers.append(_RetryNotice(logging.WARNING))
    for one in handlers:
        _logger.addHandler(one)
    level = _logger.level
    _logger.setLevel(logging.DEBUG if args.debug else logging.WARNING)
    try:
        return _COMMANDS[args.command].run(args)
    except UsageError as exc:
        # The subcommand's own usage line: the flags it takes, not the command list.
        getattr(args, "command_parser", parser).error(str(exc))  # exits 2
    except InvalidRequestError as exc:  # bad input, found before any request was sent
        return _fail(args, exc, EXIT_USAGE)
    except YlokhError as exc:
        return _fail(args, exc, EXIT_ERROR)
    except KeyboardInterrupt:
        print("ylokh: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`ylokh chat ... | head -1`): stop quietly, as `cat` does.
        # Point stdout at /dev/null so the interpreter's final flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    finally:
        for one in handlers:
            _logger.removeHandler(one)
        _logger.setLevel(level)
    return EXIT_USAGE  # not reached: parser.error() exits


def _first_run_hint(args: argparse.Namespace, exc: BaseException) -> str:
    """A hint for the newcomer who did not say which server to use."""
    if not isinstance(exc, (APIConnectionError, APITimeoutError)):
        return ""
    if getattr(args, "base_url", None) or getattr(args, "local", False):
        return ""
    if os.environ.get("YLOKH_BASE_URL", "").strip():
        return ""
    return (
        " (no server was named: pass --base-url URL or set YLOKH_BASE_URL, "
        "or try --local for the bundled offline server)"
    )


def _fail(args: argparse.Namespace, exc: BaseException, code: int) -> int:
    secrets = _secrets(args)
    if args.debug:
        text = "".join(traceback.format_exception(exc))
        sys.stderr.write(redact(text, secrets))
    message = redact(str(exc), secrets) or type(exc).__name__
    message = " ".join(message.split())  # one line, whatever the server's message held
    _write(sys.stderr, f"ylokh: error: {message}{_first_run_hint(args, exc)}\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
