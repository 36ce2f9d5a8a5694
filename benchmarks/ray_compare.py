"""``python -m benchmarks.ray_compare``: the same rows through three batch runners.

    ylokh-batch   the ``ylokh batch`` command (JSONL in, JSONL out), ``-c`` calls in flight
    ylokh-ray     ``ylokh.ray.complete`` on a local Ray cluster, then ``write_json``
    ray-http      Ray's own ``ray.data.llm.HttpRequestProcessorConfig`` processor, same cluster
                  settings, then ``write_json``

Each runs in a fresh process (interleaved rounds) against one bundled server
(``python -m ylokh.testing``, in its own process); every output is checked (every id once,
the expected text). Reported per runner, as the median of the rounds: the wall time of the
whole process (Python start, Ray start for the Ray runners, the job, shutdown), the time of
the job alone (reading the file to the written output), and the peak memory of the process
tree: the largest single RSS and the peak sum of PSS over the tree (Ray's raylet, GCS and
workers included; PSS counts shared pages once). Needs the ``ray`` extra.

    python -m benchmarks.ray_compare                 # 2,000 rows, 3 rounds
    python -m benchmarks.ray_compare --faults        # 5% of the rows answered 503
    python -m benchmarks.ray_compare --rows 200 --rounds 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

RUNNERS = ("ylokh-batch", "ylokh-ray", "ray-http")
ACTORS = 2
IN_FLIGHT = 50  # per actor; ylokh batch gets ACTORS * IN_FLIGHT
FAULT_EVERY = 20  # --faults: 5% of the rows
FAULT = "status=503"  # an overloaded server: retried by ylokh and by Ray, then given up
RAY_INIT = {"num_cpus": 2, "include_dashboard": False, "object_store_memory": 256 * 2**20}


# --- the runners (each in its own process) ------------------------------------------------------


def _ray_init() -> float:
    import ray

    started = time.perf_counter()
    ray.init(**RAY_INIT, log_to_driver=False)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    return time.perf_counter() - started


def run_ylokh_ray(base_url: str, source: str, output: str) -> dict[str, float]:
    """``ylokh.ray.complete`` with 2 actors and 50 calls in flight each."""
    init = _ray_init()
    import ray
    import ray.data

    import ylokh.ray

    started = time.perf_counter()
    ds = ray.data.read_json(source)
    out = ylokh.ray.complete(ds, base_url=base_url, concurrency=IN_FLIGHT, actors=ACTORS)
    out.write_json(output)
    job = time.perf_counter() - started
    ray.shutdown()
    return {"ray_init_s": init, "job_s": job}


def run_ray_http(base_url: str, source: str, output: str) -> dict[str, float]:
    """Ray's ``HttpRequestProcessorConfig``: 2 actors, batches of 50, non-streamed answers."""
    init = _ray_init()
    import ray
    import ray.data
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    config = HttpRequestProcessorConfig(
        url=f"{base_url}/chat/completions", concurrency=ACTORS, batch_size=IN_FLIGHT
    )
    processor = build_processor(
        config,
        preprocess=lambda row: {
            "payload": {
                "model": "ylokh-echo",
                "messages": [{"role": "user", "content": row["prompt"]}],
                # --faults: the row's fault goes into the payload, as ylokh sends it.
                **{k: v for k, v in (row.get("options") or {}).items() if v is not None},
            }
        },
        postprocess=lambda row: {
            "id": row["id"],
            "text": row["http_response"]["choices"][0]["message"]["content"],
        },
    )
    started = time.perf_counter()
    ds = ray.data.read_json(source)
    processor(ds).write_json(output)
    job = time.perf_counter() - started
    ray.shutdown()
    return {"ray_init_s": init, "job_s": job}


def _runner_main(args: argparse.Namespace) -> int:
    runner = {"ylokh-ray": run_ylokh_ray, "ray-http": run_ray_http}[args.runner]
    result = runner(args.base_url, args.input, args.output)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# --- measuring a process tree -------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as file:
                stat = file.read()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(parent, []).append(int(entry))
    return tree


def _memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in kB, from ``/proc/PID/smaps_rollup``."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as file:
            for line in file:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


class TreeSampler:
    """Samples the memory of a process and all its descendants every ``interval`` s."""

    def __init__(self, root: int, interval: float = 0.05) -> None:
        self.root = root
        self.interval = interval
        self.peak_rss_kb = 0  # the largest single process
        self.peak_pss_kb = 0  # the largest sum over the tree
        self.processes = 0  # the most processes seen at once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            tree = _children()
            pids, todo = [], [self.root]
            while todo:
                pid = todo.pop()
                pids.append(pid)
                todo += tree.get(pid, [])
            total = 0
            for pid in pids:
                rss, pss = _memory_kb(pid)
                self.peak_rss_kb = max(self.peak_rss_kb, rss)
                total += pss
            self.peak_pss_kb = max(self.peak_pss_kb, total)
            self.processes = max(self.processes, len(pids))
            self._stop.wait(self.interval)


# --- the driver ----------------------------------------------------------------------------------


def _start_server(chunks: int, delay: float) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "ylokh.testing", "--port", "0", "--chunks", str(chunks)]
    command += ["--delay", str(delay)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    line = server.stdout.readline()  # "ylokh test server listening on URL (Ctrl-C to stop)"
    base_url = line.split(" on ", 1)[1].split()[0]
    return server, base_url


def expected_text(prompt: str, chunks: int) -> str:
    """The bundled server's answer: the prompt's words cycled to ``chunks`` pieces."""
    words = [word + " " for word in prompt.split()]
    return "".join(words[i % len(words)] for i in range(chunks))


def _read_answers(output: Path) -> list[dict[str, Any]]:
    files = sorted(output.glob("*.json")) if output.is_dir() else [output]
    rows: list[dict[str, Any]] = []
    for file in files:
        rows += [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines()]
    return rows


def _check(rows: list[dict[str, Any]], prompts: dict[int, str], chunks: int) -> tuple[int, int]:
    """How many rows are right and how many are error rows; raises when an id is missing
    or repeated, or a row is neither."""
    ids = sorted(row["id"] for row in rows)
    if ids != sorted(prompts):
        raise AssertionError(f"{len(rows)} rows written for {len(prompts)} ids (lost or twice)")
    ok = sum(row.get("text") == expected_text(prompts[row["id"]], chunks) for row in rows)
    errors = sum(row.get("error") is not None for row in rows)
    if ok + errors != len(rows):
        raise AssertionError(f"{len(rows) - ok - errors} rows hold a wrong answer")
    return ok, errors


def _run_one(
    runner: str, base_url: str, source: Path, work: Path, prompts: dict[int, str], chunks: int
) -> dict[str, Any]:
    output = work / f"{runner}-{time.monotonic_ns()}"
    if runner == "ylokh-batch":
        command = [
            *(sys.executable, "-m", "ylokh", "batch", str(source), "-o", str(output)),
            *("-c", str(ACTORS * IN_FLIGHT), "--base-url", base_url, "--no-progress"),
        ]
    else:
        command = [
            *(sys.executable, "-m", "benchmarks.ray_compare", "--runner", runner),
            *("--base-url", base_url, "--input", str(source), "--output", str(output)),
        ]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with TreeSampler(process.pid) as sampler:
        out, err = process.communicate()
    wall = time.perf_counter() - started
    figures: dict[str, Any] = {"wall_s": wall, "failed": None}
    figures["peak_rss_mb"] = sampler.peak_rss_kb / 1024
    figures["peak_tree_pss_mb"] = sampler.peak_pss_kb / 1024
    figures["processes"] = sampler.processes
    # ``ylokh batch`` exits 1 when some prompts failed; their error lines are written.
    partial = runner == "ylokh-batch" and process.returncode == 1
    if process.returncode != 0 and not partial:
        # The job failed as a whole: keep its last error line (--faults shows which do).
        lines = [line for line in err.splitlines() if "Error" in line] or err.splitlines()
        figures.update(ok=0, errors=0, job_s=wall, failed=(lines or ["?"])[-1].strip()[:200])
        return figures
    for line in out.splitlines():
        if line.startswith("RESULT "):
            figures.update(json.loads(line[7:]))
    figures.setdefault("job_s", wall)
    figures["ok"], figures["errors"] = _check(_read_answers(output), prompts, chunks)
    return figures


def _main(args: argparse.Namespace) -> int:
    prompts = {i: f"question {i}" for i in range(args.rows)}
    server, base_url = _start_server(args.chunks, args.delay)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in args.runners}
    try:
        with tempfile.TemporaryDirectory(prefix="ylokh-ray-compare-") as folder:
            work = Path(folder)
            source = work / "prompts.jsonl"
            lines = []
            for i, prompt in prompts.items():
                row: dict[str, Any] = {"id": i, "prompt": prompt}
                if args.faults and i % FAULT_EVERY == 0:
                    row["options"] = {"ylokh_fault": FAULT}
                lines.append(json.dumps(row) + "\n")
            source.write_text("".join(lines), encoding="utf-8")
            for round_ in range(args.rounds):
                for name in args.runners:
                    figures = _run_one(name, base_url, source, work, prompts, args.chunks)
                    results[name].append(figures)
                    print(
                        f"round {round_ + 1} {name:<11} wall {figures['wall_s']:6.2f} s  "
                        f"job {figures['job_s']:6.2f} s  ok {figures['ok']}/{args.rows}  "
                        f"error rows {figures['errors']}  "
                        f"peak RSS {figures['peak_rss_mb']:6.0f} MB  "
                        f"tree PSS {figures['peak_tree_pss_mb']:6.0f} MB"
                        + (f"\n  the job FAILED: {figures['failed']}" if figures["failed"] else ""),
                        flush=True,
                    )
    finally:
        server.terminate()
        server.wait()
    print(
        f"\n{args.rows} rows, {args.chunks} chunks each, {args.delay} s apart; "
        f"medians of {args.rounds} round(s)"
    )
    print(f"{'runner':<12}{'wall s':>8}{'job s':>8}{'rows/s':>9}{'RSS MB':>8}{'tree MB':>9}")
    summary: dict[str, dict[str, float]] = {}
    for name, runs in results.items():
        row = {
            key: statistics.median(run[key] for run in runs)
            for key in ("wall_s", "job_s", "peak_rss_mb", "peak_tree_pss_mb")
        }
        row["rows_per_s_job"] = args.rows / row["job_s"]
        row["failed_runs"] = sum(run["failed"] is not None for run in runs)
        summary[name] = row
        print(
            f"{name:<12}{row['wall_s']:>8.2f}{row['job_s']:>8.2f}{row['rows_per_s_job']:>9.0f}"
            f"{row['peak_rss_mb']:>8.0f}{row['peak_tree_pss_mb']:>9.0f}"
            + (f"  ({row['failed_runs']} run(s) failed)" if row["failed_runs"] else "")
        )
    if args.json:
        document = {
            "tool": "benchmarks.ray_compare",
            "rows": args.rows,
            "chunks": args.chunks,
            "delay": args.delay,
            "faults": args.faults,
            "rounds": args.rounds,
            "actors": ACTORS,
            "in_flight_per_actor": IN_FLIGHT,
            "cpus": os.cpu_count(),
            "summary": summary,
            "runs": results,
        }
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return 0


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ray_compare", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rows", type=int, default=2000, help="rows (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--chunks", type=int, default=16, help="content chunks per answer")
    parser.add_argument(
        "--delay", type=float, default=0.0, help="seconds between chunks (default 0)"
    )
    parser.add_argument(
        "--faults",
        action="store_true",
        help=f"one row in {FAULT_EVERY} asks the server for {FAULT!r} (every attempt)",
    )
    parser.add_argument(
        "--runners",
        type=lambda text: text.split(","),
        default=list(RUNNERS),
        help="comma-separated, of " + ", ".join(RUNNERS),
    )
    parser.add_argument("--json", help="write the figures to this JSON file")
    # Internal: run one Ray runner in this process.
    parser.add_argument("--runner", choices=("ylokh-ray", "ray-http"), help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    ARGS = _args()
    sys.exit(_runner_main(ARGS) if ARGS.runner else _main(ARGS))
