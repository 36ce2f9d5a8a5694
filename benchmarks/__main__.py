"""``python -m benchmarks``: run the scenarios, print a table, write ``results/latest.json``.

Scenarios (each contender in interleaved rounds, in one run, against one local server):

    a  one stream of 20,000 chunks: chunks/s
    b  200 concurrent async streams x 200 chunks: total chunks/s, peak RSS, new connections
    c  time to the first text delta on a warm connection: median and p90 of 200 requests
    d  ``import`` wall time in fresh processes (ylokh, openai, requests, aiohttp)
    e  the core parser fed a recorded llama.cpp stream: µs per chunk vs ``json.loads``
    bench  ``ylokh bench``: accuracy against known latencies, ceiling, rate accuracy
           (``--scenarios bench``, or with letters: ``--scenarios a,bench``)

Every figure comes with its ratio to the raw loop of the same face and to the SDK, from
the same run. ``--quick`` makes a small run (seconds); ``--no-orjson`` (or
``YLOKH_BENCH_NO_ORJSON=1``) hides orjson from ylokh to measure the ``json`` fallback.
"""

from __future__ import annotations

import argparse
import os
import random
import sys


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a small run, to check it works")
    parser.add_argument(
        "--no-orjson", action="store_true", help="hide orjson: measure the json fallback"
    )
    parser.add_argument(
        "--scenarios",
        default="abcde",
        help="which scenarios to run: letters, e.g. ac (default: abcde)",
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 7, quick 2)")
    parser.add_argument("--output", help="JSON output (default benchmarks/results/latest.json)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to cores")
    return parser.parse_args(argv)


ARGS = _args() if __name__ == "__main__" else None
if ARGS is not None and (ARGS.no_orjson or os.environ.get("YLOKH_BENCH_NO_ORJSON")):
    os.environ["YLOKH_BENCH_NO_ORJSON"] = "1"  # inherited by the worker processes
    sys.modules["orjson"] = None  # type: ignore[assignment]  # import orjson -> ImportError

import asyncio  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from . import core  # noqa: E402
from .contenders import BUILDERS, Contender  # noqa: E402
from .server import expected_text, spawn  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
median = statistics.median


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


# -- the server -----------------------------------------------------------------------------
class ServerProcess:
    """The benchmark server in its own process, pinned to core 1 when possible."""

    def __init__(self, pin: bool) -> None:
        self.proc, self.port = spawn((), pin=pin)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, int]:
        """The server's counters (``/stats`` connections are not counted)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/stats")
            stats: dict[str, int] = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        return stats

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# -- helpers --------------------------------------------------------------------------------
class Runner:
    """Calls sync and async contenders alike (one event loop for the whole run)."""

    def __init__(self) -> None:
        self.loop = asyncio.Runner()

    def call(self, contender: Contender, method: str, *args: Any) -> Any:
        result = getattr(contender, method)(*args)
        if contender.face == "async":
            result = self.loop.run(result)
        return result

    def close_contender(self, contender: Contender) -> None:
        result = contender.close()
        if asyncio.iscoroutine(result):
            self.loop.run(result)

    def close(self) -> None:
        self.loop.close()


def _check(name: str, text: str, n: int) -> None:
    if text != expected_text(n):
        raise SystemExit(f"{name} returned the wrong text for {n} chunks: {text[:80]!r}")


def _ratio(values: list[float]) -> float:
    return median(values) if values else float("nan")


# -- scenarios ------------------------------------------------------------------------------
def scenario_a(server: ServerProcess, runner: Runner, chunks: int, rounds: int) -> dict[str, Any]:
    names = [
        "ylokh sync",
        "raw requests",
        "openai sync",
        "ylokh async",
        "raw aiohttp",
        "openai async",
    ]
    contenders = [BUILDERS[name](server.base_url) for name in names]
    for c in contenders:  # warm up: imports, clients, one connection each; check the text
        _check(c.name, runner.call(c, "consume", 64), 64)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
        for c in order:
            t0 = time.perf_counter()
            text = runner.call(c, "consume", chunks)
            dt = time.perf_counter() - t0
            _check(c.name, text, chunks)
            rates[c.name].append(chunks / dt)
    for c in contenders:
        runner.close_contender(c)
    out: dict[str, Any] = {"chunks": chunks, "rounds": rounds, "rates": rates}
    for face, raw, sdk in (
        ("sync", "raw requests", "openai sync"),
        ("async", "raw aiohttp", "openai async"),
    ):
        mine = rates[f"ylokh {face}"]
        out[f"{face}_vs_raw"] = _ratio([m / o for m, o in zip(mine, rates[raw], strict=True)])
        out[f"{face}_vs_sdk"] = _ratio([m / o for m, o in zip(mine, rates[sdk], strict=True)])
    return out


def scenario_b(
    server: ServerProcess, streams: int, chunks: int, rounds: int, batches: int
) -> dict[str, Any]:
    names = ["ylokh async", "raw aiohttp", "openai async"]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            before = server.stats()["connections"]
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks._worker",
                    name,
                    server.base_url,
                    str(streams),
                    str(chunks),
                    str(batches),
                ],
                capture_output=True,
                text=True,
                cwd=ROOT,
                env=env,
                check=False,
            )
            if proc.returncode:
                raise SystemExit(f"scenario b, {name} failed:\n{proc.stderr}")
            result = json.loads(proc.stdout)
            result["connections"] = server.stats()["connections"] - before
            result["rate"] = streams * chunks / median(result["times"])
            runs[name].append(result)
    out: dict[str, Any] = {
        "streams": streams,
        "chunks": chunks,
        "rounds": rounds,
        "batches": batches,
    }
    for name in names:
        out[name] = {
            "rate": median(x["rate"] for x in runs[name]),
            "rss_peak_mib": median(x["rss_peak_kib"] for x in runs[name]) / 1024,
            "rss_growth_mib": median(x["rss_peak_kib"] - x["rss_ready_kib"] for x in runs[name])
            / 1024,
            "connections": median(x["connections"] for x in runs[name]),
            "runs": runs[name],
        }
    mine, raw, sdk = (runs[n] for n in names)
    out["vs_raw"] = _ratio([m["rate"] / o["rate"] for m, o in zip(mine, raw, strict=True)])
    out["vs_sdk"] = _ratio([m["rate"] / o["rate"] for m, o in zip(mine, sdk, strict=True)])
    out["rss_peak_diff_mib"] = median(
        (m["rss_peak_kib"] - o["rss_peak_kib"]) / 1024 for m, o in zip(mine, raw, strict=True)
    )
    return out


def scenario_c(server: ServerProcess, runner: Runner, requests: int, chunks: int) -> dict[str, Any]:
    names = list(BUILDERS)
    contenders = [BUILDERS[name](server.base_url) for name in names]
    for c in contenders:
        dt, text = runner.call(c, "first", chunks)
        _check(c.name, text, chunks)
    times: dict[str, list[float]] = {name: [] for name in names}
    shuffle = random.Random(1234).shuffle
    for _ in range(requests):
        # A fresh order each round: a fixed cyclic order gives each contender the same
        # predecessor, and those that close their connection (raw requests, the sync SDK)
        # leave the server busy with it when the next request arrives.
        order = list(contenders)
        shuffle(order)
        for c in order:
            dt, text = runner.call(c, "first", chunks)
            times[c.name].append(dt)
    # connection reuse: new TCP connections over 20 sequential calls, per contender
    connections: dict[str, int] = {}
    for c in contenders:
        before = server.stats()["connections"]
        for _ in range(20):
            runner.call(c, "first", chunks)
        connections[c.name] = server.stats()["connections"] - before
    for c in contenders:
        runner.close_contender(c)
    out: dict[str, Any] = {
        "requests": requests,
        "chunks": chunks,
        "connections_per_20": connections,
    }
    for name in names:
        out[name] = {"median_us": median(times[name]) * 1e6, "p90_us": _p90(times[name]) * 1e6}
    for mine, raw, sdk in (
        ("ylokh sync", "raw requests", "openai sync"),
        ("ylokh.stream", "raw requests", "openai sync"),
        ("ylokh async", "raw aiohttp", "openai async"),
        ("ylokh.astream", "raw aiohttp", "openai async"),
    ):
        out[mine]["vs_raw"] = out[mine]["median_us"] / out[raw]["median_us"]
        out[mine]["vs_sdk"] = out[mine]["median_us"] / out[sdk]["median_us"]
    out["times"] = times
    return out


_IMPORT = (
    "import os, sys, time\n"
    "if os.environ.get('YLOKH_BENCH_NO_ORJSON'): sys.modules['orjson'] = None\n"
    "t = time.perf_counter()\n"
    "import {module}\n"
    "t = time.perf_counter() - t\n"
    "print(t, 'aiohttp' in sys.modules)\n"
)


def scenario_d(rounds: int) -> dict[str, Any]:
    modules = ["ylokh", "openai", "requests", "aiohttp"]
    times: dict[str, list[float]] = {m: [] for m in modules}
    aiohttp_loaded: dict[str, bool] = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for r in range(rounds + 1):
        order = modules[r % len(modules) :] + modules[: r % len(modules)]
        for module in order:
            proc = subprocess.run(
                [sys.executable, "-c", _IMPORT.format(module=module)],
                capture_output=True,
                text=True,
                cwd=ROOT,
                env=env,
                check=True,
            )
            seconds, loaded = proc.stdout.split()
            if r:  # round 0 warms the OS file cache
                times[module].append(float(seconds))
            aiohttp_loaded[module] = loaded == "True"
    out: dict[str, Any] = {"rounds": rounds, "times": times}
    for module in modules:
        out[module] = {"median_ms": median(times[module]) * 1e3}
    out["ylokh_vs_openai"] = _ratio(
        [y / o for y, o in zip(times["ylokh"], times["openai"], strict=True)]
    )
    out["ylokh_vs_requests"] = _ratio(
        [y / o for y, o in zip(times["ylokh"], times["requests"], strict=True)]
    )
    out["ylokh_imports_aiohttp"] = aiohttp_loaded["ylokh"]
    return out


def scenario_e(chunks: int, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = core.run(chunks, repeats)
    out["per_event_vs_json_loads"] = out["parser_per_event_us"] / out["json_loads_us"]
    out["64k_vs_json_loads"] = out["parser_64k_us"] / out["json_loads_us"]
    out["per_event_vs_library_loads"] = out["parser_per_event_us"] / out["library_loads_us"]
    return out


# -- report ---------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in ("ylokh", "requests", "aiohttp", "openai", "orjson"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:
            versions[name] = None
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def targets(res: dict[str, Any], no_orjson: bool) -> list[tuple[str, str, str, bool]]:
    rows: list[tuple[str, str, str, bool]] = []

    def add(what: str, value: float, target: str, ok: bool, fmt: str = "{:.2f}x") -> None:
        rows.append((what, fmt.format(value), target, ok))

    a = res.get("a")
    if a:
        if no_orjson:
            add(
                "(a) sync vs raw requests, no orjson",
                a["sync_vs_raw"],
                ">= 1.1x",
                a["sync_vs_raw"] >= 1.1,
            )
            add(
                "(a) async vs raw aiohttp, no orjson",
                a["async_vs_raw"],
                ">= 1.1x",
                a["async_vs_raw"] >= 1.1,
            )
        else:
            add("(a) sync vs raw requests", a["sync_vs_raw"], ">= 1.5x", a["sync_vs_raw"] >= 1.5)
            add("(a) async vs raw aiohttp", a["async_vs_raw"], ">= 2.0x", a["async_vs_raw"] >= 2.0)
        add("(a) sync vs openai sync", a["sync_vs_sdk"], ">= 30x", a["sync_vs_sdk"] >= 30)
        add("(a) async vs openai async", a["async_vs_sdk"], ">= 30x", a["async_vs_sdk"] >= 30)
    b = res.get("b")
    if b:
        add("(b) concurrent vs raw aiohttp", b["vs_raw"], ">= 1.3x", b["vs_raw"] >= 1.3)
        add("(b) concurrent vs openai async", b["vs_sdk"], ">= 15x", b["vs_sdk"] >= 15)
        add(
            "(b) peak RSS minus raw loop's",
            b["rss_peak_diff_mib"],
            "<= 5 MiB",
            b["rss_peak_diff_mib"] <= 5,
            "{:+.1f} MiB",
        )
    c = res.get("c")
    if c:
        for name, limit in (
            ("ylokh sync", 1.1),
            ("ylokh.stream", 1.2),
            ("ylokh async", 1.1),
            ("ylokh.astream", 1.2),
        ):
            add(
                f"(c) first chunk, {name} vs raw",
                c[name]["vs_raw"],
                f"<= {limit}x",
                c[name]["vs_raw"] <= limit,
            )
            add(
                f"(c) first chunk, {name} vs SDK",
                c[name]["vs_sdk"],
                "<= 0.5x",
                c[name]["vs_sdk"] <= 0.5,
            )
    d = res.get("d")
    if d:
        add(
            "(d) import ylokh vs import openai",
            d["ylokh_vs_openai"],
            "<= 0.2x",
            d["ylokh_vs_openai"] <= 0.2,
        )
    e = res.get("e")
    if e:
        add(
            "(e) parser vs json.loads alone",
            e["per_event_vs_json_loads"],
            "<= 3x",
            e["per_event_vs_json_loads"] <= 3,
        )
    return rows


def table(res: dict[str, Any], no_orjson: bool) -> str:
    lines: list[str] = []
    w = lines.append
    m = res["machine"]
    w(
        f"ylokh benchmarks: {m['nproc']} cores, {m['cpu']}, Python {m['python']}, "
        f"orjson {'off' if no_orjson else 'on' if m['versions'].get('orjson') else 'absent'}"
    )
    a = res.get("a")
    if a:
        w("")
        w(f"(a) one stream of {a['chunks']} chunks, median of {a['rounds']} interleaved rounds")
        w(f"    {'contender':<16}{'chunks/s':>12}{'us/chunk':>10}")
        for name, rates in a["rates"].items():
            rate = median(rates)
            w(f"    {name:<16}{rate:>12,.0f}{1e6 / rate:>10.2f}")
        w(
            f"    ylokh sync  = {a['sync_vs_raw']:.2f}x raw requests, "
            f"{a['sync_vs_sdk']:.1f}x openai sync"
        )
        w(
            f"    ylokh async = {a['async_vs_raw']:.2f}x raw aiohttp, "
            f"{a['async_vs_sdk']:.1f}x openai async"
        )
    b = res.get("b")
    if b:
        w("")
        w(
            f"(b) {b['streams']} concurrent async streams x {b['chunks']} chunks, "
            f"median of {b['rounds']} rounds (fresh process each, {b['batches']} batches)"
        )
        w(f"    {'contender':<16}{'chunks/s':>12}{'peak RSS':>11}{'growth':>9}{'new conns':>11}")
        for name in ("ylokh async", "raw aiohttp", "openai async"):
            x = b[name]
            w(
                f"    {name:<16}{x['rate']:>12,.0f}{x['rss_peak_mib']:>8.1f} MiB"
                f"{x['rss_growth_mib']:>6.1f} MiB"
                f"{x['connections']:>11.0f}"
            )
        w(
            f"    ylokh async = {b['vs_raw']:.2f}x raw aiohttp, {b['vs_sdk']:.1f}x openai async; "
            f"peak RSS {b['rss_peak_diff_mib']:+.1f} MiB vs raw"
        )
    c = res.get("c")
    if c:
        w("")
        w(
            f"(c) time to first text delta, warm connection, {c['requests']} requests "
            f"of {c['chunks']} chunks"
        )
        w(
            f"    {'contender':<16}{'median':>10}{'p90':>10}{'vs raw':>9}{'vs SDK':>9}"
            f"{'conns/20':>10}"
        )
        for name in BUILDERS:
            x = c[name]
            vs = f"{x['vs_raw']:>8.2f}x{x['vs_sdk']:>8.2f}x" if "vs_raw" in x else " " * 18
            w(
                f"    {name:<16}{x['median_us']:>8.0f}us{x['p90_us']:>8.0f}us{vs}"
                f"{c['connections_per_20'][name]:>10}"
            )
    d = res.get("d")
    if d:
        w("")
        w(f"(d) import time in a fresh process, median of {d['rounds']} rounds")
        for name in ("ylokh", "openai", "requests", "aiohttp"):
            w(f"    import {name:<10}{d[name]['median_ms']:>8.1f} ms")
        w(
            f"    ylokh = {d['ylokh_vs_openai']:.3f}x openai, "
            f"{d['ylokh_vs_requests']:.2f}x requests; "
            f"imports aiohttp: {d['ylokh_imports_aiohttp']}"
        )
    e = res.get("e")
    if e:
        w("")
        w(f"(e) core parser, recorded llama.cpp stream x {e['chunks']:.0f} chunks (us per chunk)")
        w(f"    parser, one event per feed   {e['parser_per_event_us']:6.2f}")
        w(f"    parser, 64 KiB feeds         {e['parser_64k_us']:6.2f}")
        w(f"    json.loads alone             {e['json_loads_us']:6.2f}")
        if "orjson_loads_us" in e:
            w(f"    orjson.loads alone           {e['orjson_loads_us']:6.2f}")
        w(
            f"    parser = {e['per_event_vs_json_loads']:.2f}x json.loads, "
            f"{e['per_event_vs_library_loads']:.2f}x the loads it uses"
        )
    rows = targets(res, no_orjson)
    if rows:
        w("")
        w("targets")
        for what, value, target, ok in rows:
            w(f"    {'ok  ' if ok else 'MISS'} {what:<42}{value:>10}  (target {target})")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    no_orjson = bool(os.environ.get("YLOKH_BENCH_NO_ORJSON"))
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    if pin:
        os.sched_setaffinity(0, {0})  # the clients on core 0, the server on core 1
    quick = args.quick
    rounds = args.rounds or (2 if quick else 7)
    res: dict[str, Any] = {
        "machine": machine(),
        "config": {
            "quick": quick,
            "no_orjson": no_orjson,
            "pinned": pin,
            "rounds": rounds,
            "argv": sys.argv[1:],
        },
    }
    server = ServerProcess(pin)
    runner = Runner()
    try:
        chosen = args.scenarios.lower()
        if "bench" in chosen:  # -- bench: the ylokh bench scenario --
            from .bench import scenario_bench

            print("scenario bench...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            res["bench"] = scenario_bench(server.base_url, quick, rounds, pin)
            print(f"scenario bench: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            chosen = chosen.replace("bench", "")
        for s in chosen.replace(",", ""):
            t0 = time.perf_counter()
            print(f"scenario {s}...", file=sys.stderr, flush=True)
            if s == "a":
                res["a"] = scenario_a(server, runner, 2000 if quick else 20000, rounds)
            elif s == "b":
                n = 50 if quick else 200
                res["b"] = scenario_b(server, n, n, 1 if quick else 3, 2 if quick else 3)
            elif s == "c":
                res["c"] = scenario_c(server, runner, 30 if quick else 200, 16)
            elif s == "d":
                res["d"] = scenario_d(2 if quick else 10)
            elif s == "e":
                res["e"] = scenario_e(2000 if quick else 20000, 5 if quick else 20)
            print(f"scenario {s}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    finally:
        runner.close()
        server.close()
    report = table(res, no_orjson)
    if "bench" in res:  # -- bench --
        from .bench import table as bench_table

        report = (report + "\n\n" if report.strip() else "") + bench_table(res["bench"])
    print(report)
    res["table"] = report
    output = Path(args.output) if args.output else HERE / "results" / "latest.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(f"\nwritten to {output}")
    return 0


if __name__ == "__main__":
    assert ARGS is not None
    sys.exit(main(ARGS))
