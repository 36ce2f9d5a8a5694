"""``ylokh bench`` and ``ylokh.bench.run``: the JSON shape, load levels, Poisson pacing,
goodput, errors by class, self-calibration, reports and plots.

Known latencies come from the bundled server; bounds are generous (proportions, not
milliseconds): the precise figures are measured in ``python -m benchmarks --scenarios bench``.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import ylokh.bench as bench
from ylokh.testing import Server

ROOT = Path(__file__).resolve().parent.parent
STATS = {"mean", "p50", "p90", "p99"}
LEVEL_KEYS = {
    "mode", "value", "requests", "ok", "errors", "duration_s", "request_rate",
    "output_token_rate", "tokens_estimated", "ttft_s", "itl_s", "tpot_s", "e2e_s",
    "goodput", "client_bound",
}  # fmt: skip
TOP_KEYS = {"tool", "version", "base_url", "model", "started", "client_ceiling", "levels"}


def check_shape(doc: dict[str, Any]) -> None:
    """The spec's JSON document, exactly."""
    assert set(doc) == TOP_KEYS
    assert doc["tool"] == "ylokh bench"
    assert isinstance(doc["version"], str) and isinstance(doc["started"], str)
    assert isinstance(doc["base_url"], (str, list))
    ceiling = doc["client_ceiling"]
    assert ceiling is None or set(ceiling) == {"chunks_per_s", "requests_per_s"}
    for level in doc["levels"]:
        assert set(level) == LEVEL_KEYS
        assert level["mode"] in ("concurrency", "rate")
        assert isinstance(level["value"], (int, float))
        assert isinstance(level["requests"], int) and isinstance(level["ok"], int)
        assert all(isinstance(k, str) and isinstance(v, int) for k, v in level["errors"].items())
        assert level["ok"] + sum(level["errors"].values()) == level["requests"]
        for key in ("duration_s", "request_rate", "output_token_rate"):
            assert isinstance(level[key], float) and level[key] >= 0
        for key in ("ttft_s", "itl_s", "tpot_s", "e2e_s"):
            assert set(level[key]) == STATS
        assert isinstance(level["tokens_estimated"], bool)
        assert isinstance(level["client_bound"], bool)
        assert level["goodput"] is None or 0 <= level["goodput"] <= 1


def _ylokh(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ylokh", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip


def test_cli_local_bench_writes_json_csv_report_and_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    proc = _ylokh(
        "bench", "--local", "--concurrency", "1,4", "--requests", "20", "--json", "out.json",
        "--csv", "out.csv", "--report", "report.html", "--plot", "plot.png", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "out.json").read_text())
    check_shape(doc)
    assert [(lv["mode"], lv["value"]) for lv in doc["levels"]] == [
        ("concurrency", 1),
        ("concurrency", 4),
    ]
    for level in doc["levels"]:
        assert level["requests"] == level["ok"] == 20  # warm-up calls not counted
        assert not level["tokens_estimated"]  # the bench asked for usage
        # the local server's known latencies: ttft 20 ms, itl 5 ms, 32 tokens
        assert 0.018 <= level["ttft_s"]["p50"] < 0.2
        assert 0.004 <= level["tpot_s"]["p50"] < 0.05
        assert level["output_token_rate"] == pytest.approx(level["request_rate"] * 32)
        assert level["goodput"] == 1.0
    # four in flight: about four times the throughput of one
    c1, c4 = doc["levels"]
    assert c4["request_rate"] > 2 * c1["request_rate"]
    assert doc["client_ceiling"]["chunks_per_s"] > 1000
    # the table on stdout
    assert "ttft p50/p99" in proc.stdout and "c=4" in proc.stdout
    # CSV: a header and one row per level
    rows = (tmp_path / "out.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("mode,value,requests,ok,errors")
    assert "ttft_s_p99" in rows[0]
    # the plot is a PNG, and the HTML report holds that same picture inline
    png = (tmp_path / "plot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    report = (tmp_path / "report.html").read_text()
    assert report.startswith("<!DOCTYPE html>") and "<table>" in report
    inline = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', report)
    assert inline is not None
    assert base64.b64decode(inline.group(1))[:8] == png[:8]


def test_without_matplotlib_the_json_and_report_still_work(tmp_path: Path) -> None:
    # a sitecustomize that makes matplotlib unimportable, as on an install without the extra
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text("import sys\nsys.modules['matplotlib'] = None\n")
    env = {"PYTHONPATH": f"{block}:{ROOT}", "PATH": "/usr/bin:/bin"}
    proc = _ylokh(
        "bench", "--local", "--concurrency", "2", "--requests", "4", "--warmup", "0",
        "--json", "out.json", "--report", "report.md", "--plot", "plot.png", cwd=tmp_path,
        env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    check_shape(json.loads((tmp_path / "out.json").read_text()))
    assert "pip install 'ylokh[plot]'" in proc.stderr
    assert not (tmp_path / "plot.png").exists()
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# ylokh bench report")
    assert "pip install 'ylokh[plot]'" in report


def test_import_ylokh_does_not_import_the_bench() -> None:
    code = (
        "import sys, ylokh\n"
        "bad = [m for m in ('ylokh.bench', 'matplotlib', 'aiohttp') if m in sys.modules]\n"
        "print(bad)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_levels_measure_known_latencies() -> None:
    with Server(chunks=10, ttft=0.1, itl=0.02) as srv:
        result = bench.run(srv.base_url, concurrency=[1, 4], requests=8, calibrate=False)
    check_shape(result.to_dict())
    for level in result.to_dict()["levels"]:
        assert 0.1 <= level["ttft_s"]["p50"] < 0.3
        assert 0.015 <= level["itl_s"]["p50"] < 0.06
        assert 0.015 <= level["tpot_s"]["mean"] < 0.06
        assert level["e2e_s"]["p50"] >= 0.1 + 9 * 0.02
        assert level["ttft_s"]["p50"] <= level["ttft_s"]["p99"] <= level["e2e_s"]["p50"]


@pytest.mark.parametrize("enabled", [True, False])
def test_the_garbage_collector_is_paused_during_a_level_and_restored(enabled: bool) -> None:
    """A collector pass over the process would pause every answer in flight (tens of ms
    for a full one): a level runs without, and the caller's setting comes back after."""
    import gc
    import threading

    seen: set[bool] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.002):
            seen.add(gc.isenabled())

    if not enabled:
        gc.disable()
    watcher = threading.Thread(target=watch, daemon=True)
    try:
        with Server(chunks=5, ttft=0.05, itl=0.02) as srv:
            watcher.start()
            result = bench.run(
                srv.base_url, concurrency=2, requests=8, warmup=0, calibrate=False,
                progress=False,
            )  # fmt: skip
        assert result.levels[0].ok == 8
        assert gc.isenabled() is enabled
        assert False in seen  # paused while the level ran
    finally:
        stop.set()
        gc.enable()


def test_errors_by_class_and_an_all_failed_level_exits_1(tmp_path: Path) -> None:
    with Server(fault="status=503") as srv:
        result = bench.run(srv.base_url, concurrency=2, requests=6, warmup=0, calibrate=False)
        level = result.to_dict()["levels"][0]
        assert level["ok"] == 0 and level["errors"] == {"ServerError": 6}
        assert level["goodput"] == 0.0
        assert result.failed
        proc = _ylokh(
            "bench", "--base-url", srv.base_url, "--concurrency", "2", "--requests", "3",
            "--warmup", "0", "--json", "-", cwd=tmp_path,
        )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    check_shape(doc)
    assert doc["levels"][0]["errors"] == {"ServerError": 3}
    assert "3 x ServerError" in proc.stderr  # the table goes to stderr with --json -


def test_goodput_counts_requests_within_every_slo(server: Server) -> None:
    loose = bench.run(server.base_url, concurrency=2, requests=6, slo="ttft=5,e2e=10",
                      calibrate=False)  # fmt: skip
    tight = bench.run(server.base_url, concurrency=2, requests=6, slo={"e2e": 1e-6},
                      calibrate=False)  # fmt: skip
    assert loose.levels[0].goodput == 1.0
    assert tight.levels[0].goodput == 0.0


def test_without_token_counts_the_bench_says_tokens_are_estimated(server: Server) -> None:
    # stream_options is switched off: the bundled server then sends no usage
    result = bench.run(server.base_url, concurrency=1, requests=3, calibrate=False,
                       options={"stream_options": None})  # fmt: skip
    level = result.to_dict()["levels"][0]
    assert level["tokens_estimated"] is True
    assert "tokens estimated" in result.table()


def test_rate_levels_are_paced_by_seeded_absolute_times(server: Server) -> None:
    result = bench.run(server.base_url, rate=[40], requests=60, warmup=0, seed=7,
                       calibrate=False)  # fmt: skip
    level = result.levels[0]
    planned = bench._poisson_times(40, 60, 60 / 40, __import__("random").Random(7))
    assert len(level.send_times) == 60
    # each request left at its planned time (generous: a loaded machine is late)
    late = [sent - due for sent, due in zip(level.send_times, planned, strict=True)]
    assert all(-0.001 <= d < 0.25 for d in late), max(late)
    assert level.ok == 60
    assert 30 < level.request_rate < 44


def test_poisson_gaps_are_exponential_ks() -> None:
    stats = pytest.importorskip("scipy.stats")
    import random

    rate = 50.0
    times = bench._poisson_times(rate, 5000, 5000 / rate, random.Random(1))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert stats.kstest(gaps, "expon", args=(0, 1 / rate)).pvalue > 0.01
    # and not, say, evenly spaced or uniform gaps: the test can tell
    even = [1 / rate] * len(gaps)
    assert stats.kstest(even, "expon", args=(0, 1 / rate)).pvalue < 1e-6
    uniform = [random.Random(2).uniform(0, 2 / rate) for _ in gaps]
    assert stats.kstest(uniform, "expon", args=(0, 1 / rate)).pvalue < 1e-6
    # the achieved rate of the schedule is the asked one
    assert (len(times) - 1) / (times[-1] - times[0]) == pytest.approx(rate, rel=0.02)
    # seeded: the same seed gives the same times
    assert times == bench._poisson_times(rate, 5000, 100.0, random.Random(1))


def test_client_bound_marking() -> None:
    sample = bench.Sample(None, 0.01, 0.1, [0.01] * 9, 10, False, 10)
    level = bench.Level("concurrency", 1, [sample] * 100, 1.0, [], [0.0001] * 50, {}, None)
    assert not level.client_bound
    level.ceiling = {"chunks_per_s": 1500.0, "requests_per_s": 1e6}  # 1000 chunks/s: 67%
    assert level.client_bound
    level.ceiling = {"chunks_per_s": 1e6, "requests_per_s": 1e6}
    assert not level.client_bound
    level.lags = [0.0001] * 90 + [0.02] * 10  # the loop lagged 20 ms at p99
    assert level.client_bound


def test_client_ceiling_is_measured_in_process() -> None:
    import asyncio

    ceiling = asyncio.run(bench.client_ceiling(seconds=0.2))
    assert ceiling["chunks_per_s"] > ceiling["requests_per_s"] > 50


def test_percentiles_and_slo_parsing() -> None:
    values = [float(v) for v in range(1, 101)]
    assert bench.percentile(values, 50) == pytest.approx(50.5)
    assert bench.percentile(values, 99) == pytest.approx(99.01)
    assert bench.percentile([], 50) is None
    assert bench.summarize([2.0])["p99"] == 2.0
    assert bench.parse_slo("ttft=0.5, itl=0.05,e2e=10") == {"ttft": 0.5, "itl": 0.05, "e2e": 10}
    for bad in ("ttft", "speed=1", "ttft=-1", "ttft=x"):
        with pytest.raises(ValueError):
            bench.parse_slo(bad)


def test_cli_usage_errors(tmp_path: Path) -> None:
    for args in (["--concurrency", "0"], ["--concurrency", "a,b"], ["--slo", "nope=1"],
                 ["--rate", "1", "--concurrency", "1"]):  # fmt: skip
        proc = _ylokh("bench", "--base-url", "http://127.0.0.1:9/v1", *args, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)


def test_chat_stats_line(server: Server, tmp_path: Path) -> None:
    proc = _ylokh("chat", "--base-url", server.base_url, "--stats", "three words here",
                  cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "three words here\n"
    assert re.fullmatch(r"ttft \d+\.\d\d s, 3 tokens, [\d.]+ tok/s\n", proc.stderr)


def test_run_works_inside_a_running_loop(server: Server) -> None:
    import asyncio

    async def notebook_cell() -> bench.BenchResult:
        return bench.run(server.base_url, concurrency=1, requests=2, calibrate=False)

    result = asyncio.run(notebook_cell())
    assert result.levels[0].ok == 2


def test_pacer_writes_each_piece_at_its_absolute_time() -> None:
    """The truth of the accuracy scenario: piece ``k + 1`` at ``at[k]``, never before, one
    write per wake-up (what was overdue goes out together), nothing after ``cancel``."""
    import asyncio

    from ylokh.testing._latency import Pacer

    class Transport:
        def __init__(self) -> None:
            self.writes: list[tuple[float, bytes]] = []

        def write(self, data: bytes) -> None:
            self.writes.append((asyncio.get_running_loop().time(), data))

        def is_closing(self) -> bool:
            return False

    async def play(offsets: list[float], wait: float) -> tuple[float, Transport, Pacer]:
        loop = asyncio.get_running_loop()
        transport = Transport()
        start = loop.time()
        pieces = [b"head"] + [b"%d" % k for k in range(len(offsets))]
        late: list[float] = []
        pacer = Pacer(transport, pieces, [start + t for t in offsets], late)  # type: ignore[arg-type]
        await asyncio.sleep(wait)
        if pacer.done:
            assert len(late) == len(offsets) and min(late) >= 0  # how late each piece was
        return start, transport, pacer

    start, transport, pacer = asyncio.run(play([0.05, 0.07, 0.09], 0.2))
    assert pacer.done
    assert transport.writes[0][1] == b"head" and transport.writes[0][0] - start < 0.01
    assert [data for _, data in transport.writes[1:]] == [b"0", b"1", b"2"]
    for (t, _), due in zip(transport.writes[1:], [0.05, 0.07, 0.09], strict=True):
        assert due <= t - start < due + 0.05  # absolute deadlines: never early
    _, transport, _ = asyncio.run(play([-0.02, -0.01, 0.0], 0.05))  # all overdue at once
    assert [data for _, data in transport.writes] == [b"head", b"012"]

    async def cancelled() -> Transport:
        _, transport, pacer = await play([0.05, 0.5], 0.1)
        pacer.cancel()
        await asyncio.sleep(0.5)
        assert not pacer.done
        return transport

    assert [data for _, data in asyncio.run(cancelled()).writes] == [b"head", b"0"]
    with pytest.raises(ValueError):
        Pacer(Transport(), [b"a"], [1.0])  # type: ignore[arg-type]


def test_the_benchmark_server_plays_the_truth_and_speaks_to_other_tools() -> None:
    """``benchmarks.server``: answers of ``--tokens`` chunks when the request names no
    ``max_tokens`` (AIPerf and guidellm send none), usage in a last chunk when asked, the
    request's model, ``/v1/models``, a bodiless ``HEAD``; with ``--ttft``/``--itl`` the
    latencies the bench then measures."""
    import http.client
    import os

    cmd = [sys.executable, "-m", "benchmarks.server", "--tokens", "8", "--ttft", "0.1",
           "--itl", "0.02"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        body = {"model": "m-1", "messages": [{"role": "user", "content": "a b c"}],
                "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
        conn.request("POST", "/v1/chat/completions", json.dumps(body))
        events = [
            json.loads(line[6:])
            for line in conn.getresponse().read().decode().splitlines()
            if line.startswith("data: {")
        ]
        assert {e["model"] for e in events} == {"m-1"}
        assert (
            sum(1 for e in events if e["choices"] and e["choices"][0]["delta"].get("content")) == 8
        )
        assert events[-1]["choices"] == []
        assert events[-1]["usage"] == {
            "prompt_tokens": 3,
            "completion_tokens": 8,
            "total_tokens": 11,
        }
        conn.request("GET", "/v1/models")
        assert json.loads(conn.getresponse().read())["data"][0]["id"]
        conn.request("HEAD", "/metrics")
        head = conn.getresponse()
        assert head.status == 404 and head.read() == b""
        conn.close()
        result = bench.run(f"http://127.0.0.1:{port}/v1", concurrency=2, requests=4,
                           max_tokens=5, calibrate=False)  # fmt: skip
        level = result.to_dict()["levels"][0]
        assert level["ok"] == 4 and not level["tokens_estimated"]
        assert level["output_token_rate"] == pytest.approx(5 * level["request_rate"])
        assert 0.1 <= level["ttft_s"]["p50"] < 0.15  # generous: a busy test machine
        assert 0.018 <= level["itl_s"]["p50"] < 0.03
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/stats?reset")
        played = json.loads(conn.getresponse().read())  # what it really did, from its writes
        conn.close()
        assert played["ttft_ms"]["n"] == 1 + 4 + 2  # the request above, the level, warm-up
        assert played["itl_ms"]["n"] == 7 + 6 * 4  # 7 gaps in 8 chunks, 4 in 5
        assert 100 <= played["ttft_ms"]["p50"] <= played["ttft_ms"]["max"] < 1000
        assert 18 <= played["itl_ms"]["p50"] < 30
        assert played["late_ms"]["n"] == 8 + 6 * 5
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
