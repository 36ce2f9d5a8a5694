"""The ``ylokh`` command (also ``python -m ylokh``): chat, batch, models, serve.

    ylokh chat --local "hello"            # zero setup: talks to the bundled local server
    echo "hello" | ylokh chat --json      # one JSON object per chunk, for jq
    ylokh chat                            # on a terminal: an interactive chat
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
import traceback
from collections.abc import Callable, Iterator
from typing import IO, Any

from ._errors import (
    APIConnectionError,
    InvalidRequestError,
    ProtocolError,
    YlokhError,
    redact,
    status_error,
)
from ._version import __version__

__all__ = ["main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_logger = logging.getLogger("ylokh")


class UsageError(Exception):
    """A mistake in how the command was called (exit code 2)."""


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


def _model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("-m", "--model", help="model name (env YLOKH_MODEL)")
    group.add_argument("-s", "--system", help="system prompt")
    group.add_argument("-t", "--temperature", type=float, help="sampling temperature")
    group.add_argument("--max-tokens", type=int, help="longest answer, in tokens")


def _debug_flag(parser: argparse.ArgumentParser, default: Any) -> None:
    # SUPPRESS in the subcommands: their default must not overwrite a --debug given before.
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="log requests to stderr and show tracebacks",
    )


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

    chat = commands.add_parser(
        "chat",
        help="ask a question (or chat interactively)",
        description=(
            "Stream the answer to PROMPT. With '-' or a pipe, the prompt is read from stdin; "
            "with no prompt on a terminal, start an interactive chat (/help for commands)."
        ),
    )
    chat.add_argument("prompt", nargs="?", help="the question; '-' reads stdin")
    _model_flags(chat)
    _connection_flags(chat)
    output = chat.add_argument_group("output")
    output.add_argument("--no-stream", action="store_true", help="ask for the whole answer at once")
    output.add_argument(
        "--json",
        action="store_true",
        help='one JSON object per line: {"type": "delta", "text"} per chunk, then "done"',
    )
    # -- bench: --stats --
    output.add_argument(
        "--stats",
        action="store_true",
        help="after the answer, print its measurements to stderr (ttft, tokens, tok/s)",
    )
    # -- end bench --
    _debug_flag(chat, argparse.SUPPRESS)

    batch = commands.add_parser(
        "batch",
        help="answer many prompts from a JSONL file",
        description=(
            'Each input line is {"id", "prompt" or "messages", optional "model", "options"} '
            '(or a bare JSON string); each output line is {"id", "text" or "error", '
            '"finish_reason", "usage"}, written as soon as it is ready. Rerunning with the '
            "same output file skips the ids already answered and retries the failed ones."
        ),
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
    _model_flags(batch)
    _connection_flags(batch)
    _debug_flag(batch, argparse.SUPPRESS)

    models = commands.add_parser("models", help="list the server's models (/v1/models)")
    _connection_flags(models)
    models.add_argument("--json", action="store_true", help="print the server's JSON answer")
    _debug_flag(models, argparse.SUPPRESS)

    serve = commands.add_parser(
        "serve",
        help="run the bundled OpenAI-compatible test server",
        description="Serve deterministic echo answers until Ctrl-C (for demos and tests).",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any)")
    serve.add_argument("--fault", help='default fault spec, e.g. "status=503" or "stall=5"')
    serve.add_argument("--delay", type=float, default=0.0, help="seconds between chunks")
    serve.add_argument("--api-key", help="require this key (Authorization: Bearer KEY)")
    serve.add_argument("--model", default="ylokh-echo", help="the model name to report")
    # -- bench: known latencies (the same flags as python -m ylokh.testing's) --
    latency = serve.add_argument_group("latency (known latencies, to check a benchmark)")
    latency.add_argument("--ttft", type=float, default=0.0, help="seconds to the first chunk")
    latency.add_argument("--itl", type=float, default=0.0, help="seconds between chunks")
    latency.add_argument("--jitter", type=float, default=0.0, help="vary each by this fraction")
    latency.add_argument("--tokens", type=int, default=None, help="content chunks per answer")
    # -- end bench --
    _debug_flag(serve, argparse.SUPPRESS)
    _bench_parser(commands)
    return parser


# -- bench: the parser of `ylokh bench` ------------------------------------------------------
def _bench_parser(commands: Any) -> None:
    bench = commands.add_parser(
        "bench",
        help="measure a server under load (latency, throughput, goodput)",
        description=(
            "Measure an OpenAI-compatible server with ylokh's async client: TTFT, inter-token "
            "latency, TPOT and end-to-end latency (mean, p50, p90, p99), throughput, errors "
            "and goodput per load level. Levels within 50%% of the client's own ceiling, or "
            "whose event loop lagged, are marked client-bound."
        ),
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
    _debug_flag(bench, argparse.SUPPRESS)


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
    return {"base_url": base_url, "api_key": args.api_key, "timeout": args.timeout}


def _payload(args: argparse.Namespace) -> dict[str, Any]:
    return {"temperature": args.temperature, "max_tokens": args.max_tokens}


def _write(stream: IO[str], text: str) -> None:
    stream.write(text)
    stream.flush()  # each delta reaches the terminal (or the pipe) as soon as it arrives


def _json_line(stream: IO[str], obj: dict[str, Any]) -> None:
    _write(stream, json.dumps(obj, ensure_ascii=False) + "\n")


# -- chat ------------------------------------------------------------------------------------
def _read_prompt(args: argparse.Namespace) -> str | None:
    """The one-shot prompt, or ``None`` for an interactive chat."""
    prompt: str | None = args.prompt
    if prompt == "-" or (prompt is None and not sys.stdin.isatty()):
        prompt = sys.stdin.read()
        if not prompt.strip():
            raise UsageError("no prompt: stdin was empty")
        return prompt
    if prompt is not None and not prompt.strip():
        raise UsageError("the prompt is empty")
    return prompt


def _cmd_chat(args: argparse.Namespace) -> int:
    from ._sync import Client

    prompt = _read_prompt(args)
    with _base_url(args) as base_url, Client(**_settings(args, base_url)) as client:
        if prompt is None:
            return _interactive(client, args)
        messages: list[dict[str, Any]] = []
        if args.system:
            messages.append({"role": "system", "content": args.system})
        messages.append({"role": "user", "content": prompt})
        out = sys.stdout
        options = _payload(args)
        if args.stats and not args.no_stream:  # -- bench: --stats asks for token counts --
            options["stream_options"] = {"include_usage": True}
        if args.no_stream:
            answer = client.complete(messages, model=args.model, **options)
            if args.json:
                _json_line(out, _done(answer, answer.finish_reason, answer.usage))
            else:
                _write(out, answer if answer.endswith("\n") else answer + "\n")
            if args.stats:  # -- bench: --stats --
                print(answer.stats.summary(), file=sys.stderr)
            return EXIT_OK
        with client.stream(messages, model=args.model, **options) as stream:
            try:
                for text in stream:
                    if args.json:
                        _json_line(out, {"type": "delta", "text": text})
                    else:
                        _write(out, text)
            finally:
                # End the line even after an error or Ctrl-C, so the shell prompt and the
                # error message start on a line of their own.
                if not args.json and stream.text and not stream.text.endswith("\n"):
                    _write(out, "\n")
        if args.json:
            _json_line(out, _done(stream.text, stream.finish_reason, stream.usage))
        if args.stats:  # -- bench: --stats --
            print(stream.stats.summary(), file=sys.stderr)
    return EXIT_OK


def _done(text: str, finish_reason: str | None, usage: Any) -> dict[str, Any]:
    return {"type": "done", "text": str(text), "finish_reason": finish_reason, "usage": usage}


# -- interactive chat ------------------------------------------------------------------------
_HELP = """\
/reset        forget the conversation (the system prompt stays)
/system TEXT  set the system prompt (/system alone shows it)
/save FILE    write the conversation to FILE as JSON
/exit         leave (also Ctrl-D, or Ctrl-C twice)
Ctrl-C while an answer streams stops that answer; the conversation goes on."""


def _notice(text: str) -> None:
    # Notices go to stderr so that stdout holds only answers (e.g. under `tee`).
    print(text, file=sys.stderr, flush=True)


def _interactive(client: Any, args: argparse.Namespace) -> int:
    """A chat that keeps its history, until /exit, Ctrl-D or a second Ctrl-C."""
    try:
        import readline  # noqa: F401  (importing it gives input() line editing and history)
    except ImportError:  # not on every platform (Windows)
        pass
    from ._protocol import resolve_model
    from .chat import Chat

    chat = Chat(system=args.system or None, client=client, model=args.model, **_payload(args))
    model = resolve_model(args.model, os.environ)
    _notice(
        f"ylokh {__version__}: chatting with {model} at {client.settings.base_url}. "
        "/help for commands, Ctrl-D to leave."
    )
    # Set by a Ctrl-C (at the prompt or during an answer); a second one in a row leaves.
    interrupted = False
    while True:
        try:
            line = input("> ")
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
        try:
            with chat.stream(line) as stream:
                for text in stream:
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
        _write(sys.stdout, "\n")


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
            _notice(f"(saved {len(chat.messages)} messages to {rest})")
    else:
        _notice(f"unknown command {name}; /help lists the commands")
    return None


# -- batch -----------------------------------------------------------------------------------
def _cmd_batch(args: argparse.Namespace) -> int:
    from ._batch import BatchResult, batch, read_jsonl

    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    try:
        if args.input == "-":
            items = read_jsonl(sys.stdin, "<stdin>")
        else:
            with open(args.input, encoding="utf-8") as file:
                items = read_jsonl(file, args.input)
    except OSError as exc:
        raise UsageError(f"cannot read {args.input}: {exc.strerror or exc}") from None
    if args.system:
        system = {"role": "system", "content": args.system}
        items = [
            type(item)(item.id, [system, *item.messages], item.options)
            if item.messages[0]["role"] != "system"
            else item
            for item in items
        ]
    failed: list[BatchResult] = []

    def note(result: BatchResult) -> None:
        if not result.ok:
            failed.append(result)

    with _base_url(args) as base_url:
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
    from .testing import Fault, serve
    from .testing._latency import latency_of

    try:
        Fault.parse(args.fault)
    except ValueError as exc:
        raise UsageError(f"--fault: {exc}") from None
    if args.delay < 0:
        raise UsageError("--delay must not be negative")
    try:
        latency = latency_of(args)
    except ValueError as exc:
        raise UsageError(f"--ttft/--itl/--jitter: {exc}") from None
    try:
        serve(args.host, args.port, fault=args.fault, delay=args.delay, api_key=args.api_key,
              model=args.model, chunks=args.tokens, ttft=latency.ttft, itl=latency.itl,
              jitter=latency.jitter)  # fmt: skip
    except OSError as exc:
        raise APIConnectionError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
    return EXIT_OK  # Ctrl-C is how a server is meant to stop


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
_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "chat": _cmd_chat,
    "batch": _cmd_batch,
    "models": _cmd_models,
    "serve": _cmd_serve,
    "bench": _cmd_bench,
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
    _logger.addHandler(handler)
    level = _logger.level
    # An error is one line on stderr; retry warnings and request logs need --debug.
    _logger.setLevel(logging.DEBUG if args.debug else logging.ERROR)
    try:
        return _COMMANDS[args.command](args)
    except UsageError as exc:
        parser.error(str(exc))  # prints usage and the message, exits 2
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
        _logger.removeHandler(handler)
        _logger.setLevel(level)
    return EXIT_USAGE  # not reached: parser.error() exits


def _fail(args: argparse.Namespace, exc: BaseException, code: int) -> int:
    secrets = _secrets(args)
    if args.debug:
        text = "".join(traceback.format_exception(exc))
        sys.stderr.write(redact(text, secrets))
    message = redact(str(exc), secrets) or type(exc).__name__
    print(f"ylokh: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
