"""The ``bench`` scenario: can ``ylokh bench``'s figures be trusted?

    python -m benchmarks --scenarios bench [--quick]

1. accuracy: a server in its own process plays answers at known latencies (TTFT 200 ms,
   ITL 20 ms, 64 tokens); ``ylokh.bench`` at concurrency 1, 16 and 64 must report p50 TTFT
   and ITL within 5% of the truth and p99 within 10%. The truth is the benchmark server's
   (``benchmarks.server --ttft --itl``: chunk ``k`` written at ``arrived + ttft + k * itl``
   from the arrival of the request's bytes, by one write from a timer callback); the
   bundled server (``ylokh serve --ttft``, what a user checks with) is measured too. A
   hand-written aiohttp loop measures the same server right after, so an error of the
   server (late on a loaded machine) is told apart from an error of the bench.
2. ceiling: chunks/s of ``ylokh.bench`` (all its bookkeeping) against the near-zero-latency
   benchmark server, side by side with a hand-written aiohttp loop (``contenders.raw_aiohttp``,
   parsing every event), interleaved in one run, 200-chunk answers, at several concurrencies.
3. rate accuracy: ``--rate 50`` for 20 s against the bundled server: the achieved rate
   within 2% of 50, and the send gaps exponential (Kolmogorov-Smirnov, with scipy).
4. external (with ``YLOKH_BENCH_AIPERF``/``YLOKH_BENCH_GUIDELLM``/``YLOKH_BENCH_TOKENIZER``):
   ``ylokh bench``, AIPerf, guidellm and the hand-written loop, each a process on core 0,
   in interleaved rounds against the benchmark server on core 1 (200-chunk answers).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TTFT, ITL, TOKENS = 0.2, 0.02, 64


class BundledServer:
    """``python -m ylokh.testing`` in its own process (pinned to core 1 when asked)."""

    def __init__(self, *flags: str, pin: bool) -> None:
        cmd = [sys.executable, "-m", "ylokh.testing", "--port", "0", *flags]
        if pin:
            cmd = ["taskset", "-c", "1", *cmd]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        urls = [w for w in line.split() if w.startswith("http")]
        if not urls:
            self.proc.kill()
            raise SystemExit(f"the bundled server did not start: {line!r}")
        self.base_url = urls[0]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _error(measured: float | None, truth: float) -> float:
    return float("nan") if measured is None else (measured - truth) / truth


async def _raw_latencies(base_url: str, concurrency: int, requests: int) -> dict[str, float]:
    """TTFT and inter-token gaps as a hand-written aiohttp loop sees them (one timestamp
    per read, as the bench): what the server did, measured without ylokh."""
    import aiohttp

    from ylokh.bench import percentile

    ttfts: list[float] = []
    gaps: list[float] = []
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    url = base_url + "/chat/completions"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> None:
            start, last = time.monotonic(), None
            async with session.post(url, json=payload) as response:
                async for data in response.content.iter_any():
                    now = time.monotonic()
                    deltas = data.count(b'"content"')
                    if deltas:
                        if last is None:
                            ttfts.append(now - start)
                        else:
                            gaps.append(now - last)
                        gaps.extend([0.0] * (deltas - 1))
                        last = now

        count = iter(range(requests))

        async def worker() -> None:
            for _ in count:
                await one()

        await asyncio.gather(*(one() for _ in range(concurrency)))  # warm: open connections
        ttfts.clear()
        gaps.clear()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {
        "ttft_s_p50": percentile(ttfts, 50) or 0.0,
        "ttft_s_p99": percentile(ttfts, 99) or 0.0,
        "itl_s_p50": percentile(gaps, 50) or 0.0,
        "itl_s_p99": percentile(gaps, 99) or 0.0,
    }


def accuracy(quick: bool, pin: bool, server_kind: str = "benchmark") -> dict[str, Any]:
    """Reported TTFT and ITL against the server's known latencies.

    ``server_kind`` ``"benchmark"``: :mod:`benchmarks.server` with ``--ttft``/``--itl``
    (paced by :class:`ylokh.testing._latency.Pacer` from the arrival of the request's
    bytes: the truth the verdict is drawn against); ``"bundled"``: ``ylokh serve``'s
    aiohttp server, what a user checks the bench with (paced by the same ``Pacer`` from
    the arrival of the request's bytes, behind aiohttp's handler work per request)."""
    import ylokh.bench

    flags = ["--tokens", str(TOKENS), "--ttft", str(TTFT), "--itl", str(ITL)]
    server: BundledServer | BenchmarkServer
    if server_kind == "bundled":
        server = BundledServer(*flags, pin=pin)
    else:
        server = BenchmarkServer(TOKENS, pin=pin, flags=flags[2:])
    levels: dict[str, Any] = {}
    try:
        for concurrency, requests in ((1, 6 if quick else 30), (16, 32 if quick else 128),
                                      (64, 64 if quick else 256)):  # fmt: skip
            if isinstance(server, BenchmarkServer):
                server.stats(reset=True)
            result = ylokh.bench.run(
                server.base_url, concurrency=concurrency, requests=requests, warmup=4,
                max_tokens=TOKENS, calibrate=False, progress=False,
            )  # fmt: skip
            doc = result.to_dict()["levels"][0]
            row: dict[str, Any] = {"requests": requests, "ok": doc["ok"]}
            for key, truth in (("ttft_s", TTFT), ("itl_s", ITL)):
                for stat in ("p50", "p99"):
                    row[f"{key}_{stat}"] = doc[key][stat]
                    row[f"{key}_{stat}_error"] = _error(doc[key][stat], truth)
            if isinstance(server, BenchmarkServer):  # how late the truth itself was
                played = server.stats(reset=True)  # (warm-up answers included: played alike)
                row["server_late_ms"] = played.get("late_ms")
                for key, name in (("ttft_s", "ttft_ms"), ("itl_s", "itl_ms")):
                    for stat in ("p50", "p99"):
                        real = played[name][stat] / 1000 if name in played else None
                        row[f"{key}_{stat}_real"] = real
                        if real:
                            row[f"{key}_{stat}_vs_real"] = _error(doc[key][stat], real)
            row["raw aiohttp"] = asyncio.run(_raw_latencies(server.base_url, concurrency, requests))
            row["client_bound"] = doc["client_bound"]
            row["lag_p99_ms"] = result.levels[0].lag_p99 * 1000
            row["ok_p50"] = all(abs(row[f"{k}_p50_error"]) <= 0.05 for k in ("ttft_s", "itl_s"))
            row["ok_p99"] = all(abs(row[f"{k}_p99_error"]) <= 0.10 for k in ("ttft_s", "itl_s"))
            levels[str(concurrency)] = row
    finally:
        server.close()
    truth = {"ttft_s": TTFT, "itl_s": ITL, "tokens": TOKENS}
    return {"server": server_kind, "truth": truth, "levels": levels}


async def _bench_rate(base_url: str, concurrency: int, requests: int, chunks: int) -> float:
    import ylokh.bench

    result = await ylokh.bench.arun(
        base_url, model="gemma", concurrency=concurrency, requests=requests, warmup=0,
        max_tokens=chunks, calibrate=False, progress=False,
    )  # fmt: skip
    level = result.levels[0]
    if level.ok != requests:
        raise SystemExit(f"bench: {level.errors}")
    return level.chunk_rate


async def _aiohttp_rate(base_url: str, concurrency: int, requests: int, chunks: int) -> float:
    from .contenders import raw_aiohttp

    contender = raw_aiohttp(base_url)
    count = itertools.count()
    got = [0]

    async def worker() -> None:
        while next(count) < requests:
            text = await contender.consume(chunks)
            got[0] += chunks if text else 0

    try:
        await asyncio.gather(*(worker() for _ in range(min(concurrency, 8))))  # warm up
        count = itertools.count()
        got[0] = 0
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        spent = time.perf_counter() - start
    finally:
        await contender.close()
    return got[0] / spent


def ceiling(base_url: str, quick: bool, rounds: int) -> dict[str, Any]:
    """The bench's chunk rate against the hand-written aiohttp loop, interleaved."""
    import statistics

    chunks = 200
    out: dict[str, Any] = {"chunks": chunks, "levels": {}}
    for concurrency in (1, 16, 64) if quick else (1, 16, 64, 256):
        requests = max(concurrency * 2, 8) if quick else max(concurrency * 4, 40)
        runs: dict[str, list[float]] = {"ylokh bench": [], "raw aiohttp": []}
        for r in range(rounds):
            order = list(runs) if r % 2 == 0 else list(reversed(runs))
            for name in order:
                run = _bench_rate if name == "ylokh bench" else _aiohttp_rate
                runs[name].append(asyncio.run(run(base_url, concurrency, requests, chunks)))
        ratio = statistics.median(
            b / a for b, a in zip(runs["ylokh bench"], runs["raw aiohttp"], strict=True)
        )
        out["levels"][str(concurrency)] = {
            "requests": requests,
            "ylokh bench": statistics.median(runs["ylokh bench"]),
            "raw aiohttp": statistics.median(runs["raw aiohttp"]),
            "vs_raw": ratio,
            "runs": runs,
        }
    return out


def rate_accuracy(quick: bool, pin: bool) -> dict[str, Any]:
    """``rate=50`` for 20 s: the achieved rate and a KS test of the send gaps."""
    import ylokh.bench

    rate, seconds = 50.0, 5.0 if quick else 20.0
    server = BundledServer(pin=pin)
    try:
        result = ylokh.bench.run(
            server.base_url, rate=rate, duration=seconds, warmup=2, calibrate=False,
            progress=False,
        )  # fmt: skip
    finally:
        server.close()
    level = result.levels[0]
    sends = level.send_times
    send_rate = (len(sends) - 1) / (sends[-1] - sends[0])
    out: dict[str, Any] = {
        "rate": rate,
        "seconds": seconds,
        "requests": len(level.samples),
        "ok": level.ok,
        "request_rate": level.request_rate,
        "request_rate_error": level.request_rate / rate - 1,
        "send_rate": send_rate,
        "send_rate_error": send_rate / rate - 1,
        "lag_p99_ms": level.lag_p99 * 1000,
    }
    try:
        from scipy import stats
    except ImportError:
        out["ks_pvalue"] = None
    else:
        gaps = [b - a for a, b in itertools.pairwise(sends)]
        out["ks_pvalue"] = float(stats.kstest(gaps, "expon", args=(0, 1 / rate)).pvalue)
    out["ok_rate"] = abs(out["request_rate_error"]) <= 0.02
    return out


def _run_json(cmd: list[str], path: Path) -> Any:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=path.parent, check=False)
    if proc.returncode:
        raise RuntimeError(f"{cmd[0]} failed: {proc.stderr[-500:] or proc.stdout[-500:]}")
    return json.loads(path.read_text())


class BenchmarkServer:
    """The near-zero-latency benchmark server (:mod:`benchmarks.server`) in its own
    process, pinned to core 1 when asked, answering ``tokens`` chunks to requests that
    name no ``max_tokens`` (AIPerf and guidellm send none)."""

    def __init__(self, tokens: int, *, pin: bool, flags: Sequence[str] = ()) -> None:
        from .server import spawn

        self.proc, port = spawn(("--tokens", str(tokens), *flags), pin=pin)
        self.root = f"http://127.0.0.1:{port}"
        self.base_url = self.root + "/v1"

    def stats(self, reset: bool = False) -> dict[str, Any]:
        """The server's ``/stats`` (``late_ms``: how late it wrote its paced chunks)."""
        import http.client
        import json

        conn = http.client.HTTPConnection(self.root.removeprefix("http://"), timeout=10)
        try:
            conn.request("GET", "/stats?reset" if reset else "/stats")
            stats: dict[str, Any] = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        return stats

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# One measured run of one tool: output tokens/s, requests/s, the in-flight concurrency it
# kept (Little's law: completed requests/s x mean request latency, the same formula for
# every tool), its own in-flight figure where it reports one, output tokens per request.
Run = dict[str, float]


def _little(request_rate: float, mean_latency_s: float) -> float:
    return request_rate * mean_latency_s


async def _hand_loop(base_url: str, concurrency: int, requests: int, chunks: int) -> Run:
    """The hand-written aiohttp loop (``contenders.raw_aiohttp``, parsing every event),
    ``concurrency`` workers, after one warm-up call per worker (connections open)."""
    from .contenders import raw_aiohttp
    from .server import expected_text

    contender = raw_aiohttp(base_url)
    count = itertools.count()
    latencies: list[float] = []
    expected = expected_text(chunks)
    got = [0]

    async def worker(measure: bool) -> None:
        while next(count) < requests:
            t0 = time.perf_counter()
            text = await contender.consume(chunks)
            if measure:
                latencies.append(time.perf_counter() - t0)
                got[0] += chunks if text == expected else 0  # the whole answer, or nothing

    try:
        count = itertools.count(requests - concurrency)  # one warm-up call per worker
        await asyncio.gather(*(worker(False) for _ in range(concurrency)))
        count = itertools.count()
        start = time.perf_counter()
        await asyncio.gather(*(worker(True) for _ in range(concurrency)))
        spent = time.perf_counter() - start
    finally:
        await contender.close()
    rate = len(latencies) / spent
    return {
        "tokens_per_s": got[0] / spent,
        "requests_per_s": rate,
        "in_flight": _little(rate, sum(latencies) / len(latencies)),
        "in_flight_own": float("nan"),
        "tokens_per_request": got[0] / len(latencies),
        "ok": float(len(latencies)),
    }


def external(quick: bool, rounds: int, pin: bool) -> dict[str, Any] | None:
    """``ylokh bench`` side by side with AIPerf, guidellm and a hand-written aiohttp loop
    on the same server, interleaved.

    Runs only when ``YLOKH_BENCH_AIPERF`` and/or ``YLOKH_BENCH_GUIDELLM`` name their
    executables (each in a venv of its own) and ``YLOKH_BENCH_TOKENIZER`` a local Hugging
    Face tokenizer folder (offline, AIPerf and guidellm need one; the server's usage gives
    the counts). The server is the near-zero-latency benchmark server (200-chunk answers,
    usage in a last chunk when asked), in its own process pinned to core 1, so the server
    is not what limits the tools; every tool is a process of its own pinned to core 0.
    Each run checks the tool counted 200 output tokens per request and had no errors.
    """
    import json
    import statistics
    import tempfile

    aiperf = os.environ.get("YLOKH_BENCH_AIPERF")
    guidellm = os.environ.get("YLOKH_BENCH_GUIDELLM")
    tokenizer = os.environ.get("YLOKH_BENCH_TOKENIZER")
    if not tokenizer or not (aiperf or guidellm):
        return None
    chunks = 200
    server = BenchmarkServer(chunks, pin=pin)
    pinned = ["taskset", "-c", "0"] if pin else []
    work = Path(tempfile.mkdtemp(prefix="ylokh-bench-"))
    levels = (16, 64) if quick else (16, 64, 256)
    most = max(_requests(c, quick) for c in levels)
    (work / "a.jsonl").write_text('{"text": "hello world"}\n' * 64)
    # guidellm stops when its data runs out: one row per request
    (work / "g.jsonl").write_text('{"prompt": "hello world"}\n' * (most + 64))
    out: dict[str, Any] = {"chunks": chunks, "levels": {}}

    def ylokh_bench(c: int, n: int) -> Run:
        path = work / "y.json"
        cmd = [*pinned, sys.executable, "-m", "ylokh", "bench", "--base-url", server.base_url,
               "--model", "gemma", "--concurrency", str(c), "--requests", str(n),
               "--max-tokens", str(chunks), "--json", str(path)]  # fmt: skip
        level = _run_json(cmd, path)["levels"][0]
        if level["ok"] != n or level["tokens_estimated"]:
            raise RuntimeError(f"ylokh bench: {level['errors']}, estimated tokens")
        rate = level["request_rate"]
        return {
            "tokens_per_s": level["output_token_rate"],
            "requests_per_s": rate,
            "in_flight": _little(rate, level["e2e_s"]["mean"]),
            "in_flight_own": float("nan"),
            "tokens_per_request": level["output_token_rate"] / rate,
            "ok": float(level["ok"]),
        }

    def run_aiperf(c: int, n: int) -> Run:
        assert aiperf is not None
        art = work / f"aiperf-{c}"
        cmd = [*pinned, aiperf, "profile", "--model", "gemma", "--tokenizer", str(tokenizer),
               "--url", server.root, "--endpoint-type", "chat", "--streaming", "--concurrency",
               str(c), "--request-count", str(n), "--use-server-token-count",
               "--input-file", str(work / "a.jsonl"), "--custom-dataset-type", "single_turn",
               "--ui-type", "none", "--artifact-dir", str(art)]  # fmt: skip
        doc = _run_json(cmd, art / "profile_export_aiperf.json")
        ok = doc["completed_request_count"]["avg"]
        if doc.get("request_error_rate", {}).get("avg") or ok < 0.95 * n:
            raise RuntimeError(f"aiperf: {ok} of {n} requests completed")
        rate = doc["request_throughput"]["avg"]
        return {
            "tokens_per_s": doc["output_token_throughput"]["avg"],
            "requests_per_s": rate,
            "in_flight": _little(rate, doc["request_latency"]["avg"] / 1000),
            "in_flight_own": doc["effective_concurrency"]["avg"],
            "tokens_per_request": doc["output_sequence_length"]["avg"],
            "ok": float(ok),
        }

    def run_guidellm(c: int, n: int) -> Run:
        assert guidellm is not None
        path = work / "g.json"
        cmd = [*pinned, guidellm, "run", "--backend",
               f"kind=openai_http,target={server.root},model={tokenizer},validate_backend=false",
               "--profile", f"kind=concurrent,streams={c}", "--constraint",
               f"kind=max_requests,count={n}", "--data", f"kind=json_file,path={work / 'g.jsonl'}",
               "--disable-console", "--output", f"kind=json,path={path}"]  # fmt: skip
        bench = _run_json(cmd, path)["benchmarks"][0]
        metrics = bench["metrics"]
        totals = metrics["request_totals"]
        ok = totals["successful"]
        if totals["errored"] or ok < 0.95 * n:  # it may stop one short of max_requests
            raise RuntimeError(f"guidellm: {totals}")
        rate = metrics["requests_per_second"]["successful"]["mean"]
        return {
            "tokens_per_s": metrics["output_tokens_per_second"]["successful"]["mean"],
            "requests_per_s": rate,
            "in_flight": _little(rate, metrics["request_latency"]["successful"]["mean"]),
            "in_flight_own": metrics["request_concurrency"]["successful"]["mean"],
            "tokens_per_request": metrics["output_token_count"]["successful"]["mean"],
            "ok": float(ok),
        }

    def hand_loop(c: int, n: int) -> Run:
        path = work / "h.json"
        cmd = [*pinned, sys.executable, "-m", "benchmarks.bench", "hand", server.base_url,
               str(c), str(n), str(chunks), str(path)]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
        if proc.returncode:
            raise RuntimeError(f"hand loop failed: {proc.stderr[-500:]}")
        run: Run = json.loads(path.read_text())
        return run

    tools: dict[str, Any] = {"ylokh bench": ylokh_bench}
    if aiperf:
        tools["aiperf"] = run_aiperf
    if guidellm:
        tools["guidellm"] = run_guidellm
    tools["raw aiohttp"] = hand_loop
    try:
        for c in levels:
            n = _requests(c, quick)
            runs: dict[str, list[Run]] = {name: [] for name in tools}
            for r in range(max(rounds // 2, 1)):
                names = list(tools)
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    try:
                        got = tools[name](c, n)
                    except (RuntimeError, KeyError, ValueError, OSError) as exc:
                        out.setdefault("errors", []).append(f"{name} c={c}: {exc}")
                        continue
                    got["load_1min"] = os.getloadavg()[0]  # how busy the machine was
                    if abs(got["tokens_per_request"] - chunks) > 0.01:
                        out.setdefault("errors", []).append(
                            f"{name} c={c}: {got['tokens_per_request']} tokens per request"
                        )
                    runs[name].append(got)
            row: dict[str, Any] = {"requests": n, "concurrency": c, "tools": {}}
            for name, got_runs in runs.items():
                if got_runs:
                    row["tools"][name] = {
                        key: statistics.median(g[key] for g in got_runs) for key in got_runs[0]
                    } | {"runs": got_runs}
            found = row["tools"]
            others = [found[k]["tokens_per_s"] for k in ("aiperf", "guidellm") if k in found]
            if "ylokh bench" in found and others:
                mine = [g["tokens_per_s"] for g in runs["ylokh bench"]]
                row["vs_best_other"] = statistics.median(mine) / max(others)
            if "ylokh bench" in found and "raw aiohttp" in found:
                pairs = zip(runs["ylokh bench"], runs["raw aiohttp"], strict=False)
                row["vs_raw"] = statistics.median(
                    b["tokens_per_s"] / a["tokens_per_s"] for b, a in pairs
                )
            out["levels"][str(c)] = row
    finally:
        server.close()
    json.dumps(out)  # plain data only
    return out


def _requests(concurrency: int, quick: bool) -> int:
    """Requests per run of the external comparison: long enough for the slow tools to
    reach their pace (seconds each), the same for every tool."""
    return max(2 * concurrency, 200) if quick else max(8 * concurrency, 1600)


def scenario_bench(base_url: str, quick: bool, rounds: int, pin: bool) -> dict[str, Any]:
    """All measurements; ``base_url`` is the benchmark server (near-zero latency)."""
    load = {"start": os.getloadavg()}  # 1, 5, 15 minutes: how busy the machine was
    res = {
        "accuracy": accuracy(quick, pin, "benchmark"),
        "accuracy_bundled": accuracy(quick, pin, "bundled"),
        "ceiling": ceiling(base_url, quick, rounds),
        "rate": rate_accuracy(quick, pin),
        "external": external(quick, rounds, pin),
    }
    load["end"] = os.getloadavg()
    return {**res, "load": load}


def _accuracy_lines(acc: dict[str, Any]) -> list[str]:
    names = {"benchmark": "benchmarks.server --ttft", "bundled": "ylokh serve --ttft (bundled)"}
    server = names.get(acc.get("server", "bundled"), "?")
    lines = [f"bench accuracy (truth: TTFT 200 ms, ITL 20 ms, 64 tokens; server {server})"]
    lines.append("  c     ttft p50  err    ttft p99  err    itl p50  err    itl p99  err    ok")
    for c, row in acc["levels"].items():
        cells = [f"  {c:<4}"]
        for key in ("ttft_s_p50", "ttft_s_p99", "itl_s_p50", "itl_s_p99"):
            cells.append(f"{row[key] * 1000:7.1f}  {row[key + '_error']:+6.1%}")
        verdict = "yes" if row["ok_p50"] and row["ok_p99"] else "NO"
        bound = " (client-bound)" if row["client_bound"] else ""
        late = row.get("server_late_ms")
        if late:
            bound += f" (server wrote late by p50 {late['p50']:.2f}, p99 {late['p99']:.2f} ms)"
        lines.append("  ".join(cells) + f"  {verdict}{bound}")
        keys = ("ttft_s_p50", "ttft_s_p99", "itl_s_p50", "itl_s_p99")
        if row.get("itl_s_p99_real"):
            cells = ["  real"]
            for key in keys:
                cells.append(f"{row[key + '_real'] * 1000:7.1f}  {row[key + '_vs_real']:+6.1%}")
            lines.append("  ".join(cells) + "  (what the server played, from its own write "
                         "times; err: the bench's against it)")  # fmt: skip
        raw = row.get("raw aiohttp")
        if raw:
            cells = ["  raw "]
            for key in keys:
                cells.append(f"{raw[key] * 1000:7.1f}  {raw[key] / row[key] - 1:+6.1%}")
            lines.append("  ".join(cells) + "  (hand-written aiohttp loop; err vs the bench)")
    return lines


def table(res: dict[str, Any]) -> str:
    """The scenario's figures as text."""
    lines: list[str] = []
    for key in ("accuracy", "accuracy_bundled"):
        if key in res:
            lines += _accuracy_lines(res[key])
    lines.append("bench ceiling (chunks/s, 200-chunk answers, interleaved)")
    for c, row in res["ceiling"]["levels"].items():
        lines.append(
            f"  c={c:<4} ylokh bench {row['ylokh bench']:>9,.0f}   raw aiohttp "
            f"{row['raw aiohttp']:>9,.0f}   ratio {row['vs_raw']:.2f}x"
        )
    ext = res.get("external")
    if ext:
        lines.append(
            "ylokh bench vs AIPerf / guidellm / a hand-written aiohttp loop (benchmark server, "
            f"{ext['chunks']}-chunk answers = output tokens; each tool a process on core 0)"
        )
        lines.append(
            "  c      tool          tokens/s = chunks/s   req/s   load  in flight (Little / own)"
        )
        for c, row in ext["levels"].items():
            for name, got in row["tools"].items():
                own = got["in_flight_own"]
                own_text = "" if own != own else f" / {own:.1f}"  # NaN: no own figure
                lines.append(
                    f"  {c:<5}  {name:<12}  {got['tokens_per_s']:>18,.0f}  "
                    f"{got['requests_per_s']:>6,.0f}  {got.get('load_1min', 0):>4.1f}  "
                    f"{got['in_flight']:.1f}{own_text}"
                )
            ratios = []
            if "vs_best_other" in row:
                ratios.append(f"{row['vs_best_other']:.1f}x the better of AIPerf/guidellm")
            if "vs_raw" in row:
                ratios.append(f"{row['vs_raw']:.2f}x the hand loop")
            if ratios:
                lines.append(f"  {c:<5}  ylokh bench = " + ", ".join(ratios))
        for error in ext.get("errors", []):
            lines.append(f"  error: {error[:200]}")
    if "load" in res:
        lines.append(
            "load average (1/5/15 min) at the start "
            + "/".join(f"{v:.2f}" for v in res["load"]["start"])
            + ", at the end "
            + "/".join(f"{v:.2f}" for v in res["load"]["end"])
        )
    r = res["rate"]
    ks = "n/a (no scipy)" if r["ks_pvalue"] is None else f"{r['ks_pvalue']:.3f}"
    lines.append(
        f"bench rate {r['rate']:g}/s for {r['seconds']:g} s: achieved {r['request_rate']:.2f}/s "
        f"({r['request_rate_error']:+.1%}), sends {r['send_rate']:.2f}/s "
        f"({r['send_rate_error']:+.1%}), KS p={ks}"
    )
    return "\n".join(lines)


def _main(argv: list[str]) -> int:
    """``python -m benchmarks.bench hand URL C N CHUNKS OUT.json``: the hand-written loop
    as a process of its own (as the other tools of the external comparison)."""
    import json

    if len(argv) != 6 or argv[0] != "hand":
        print(_main.__doc__, file=sys.stderr)
        return 2
    url, c, n, chunks, path = argv[1], int(argv[2]), int(argv[3]), int(argv[4]), argv[5]
    run = asyncio.run(_hand_loop(url, c, n, chunks))
    Path(path).write_text(json.dumps(run))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
