"""``ylokh bench``: measure an OpenAI-compatible server under load, and say when the
figures cannot be trusted.

    import ylokh.bench
    result = ylokh.bench.run("http://127.0.0.1:8000/v1", concurrency=[1, 8, 32])
    print(result.table())
    result.to_dict()          # the JSON document of ``ylokh bench --json``

Strategy:
- Every request is one :class:`ylokh.AsyncStream`; its :class:`ylokh.Stats` (recorded by
  the transport once per socket read) give TTFT, the gaps between text deltas, the end and
  the token count. The bench adds no work per chunk: it only iterates.
- Load: a concurrency level keeps ``N`` calls in flight (``N`` workers); a rate level
  sends at absolute times drawn once, seeded, before the level starts, so a late event
  loop never lowers the rate. The arrivals are a Poisson process conditioned on its count:
  ``N`` times uniform over ``N / rate`` seconds, sorted, whose gaps are exponential and
  whose achieved rate is the asked one (an unconditioned process would miss it by
  ``1/sqrt(N)``, 3% for 1,000 requests).
- The client checks itself: before the first level it measures its own ceiling against a
  zero-latency server running in its own event loop (one pre-encoded write per answer, so
  the figure is the client's cost alone), and a ticker task measures how late the
  event loop runs during each level. A level whose chunk or request rate comes within 50%
  of the ceiling, or whose loop lagged more than 5 ms at p99, is ``client_bound``.
- Tokens without a tokenizer: the bench asks for ``stream_options.include_usage``; else
  the server's llama.cpp ``timings``; else it counts text deltas and says so.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import datetime
import gc
import html
import io
import itertools
import json
import math
import os
import random
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from ._errors import YlokhError
from ._version import __version__

__all__ = ["BenchResult", "Level", "Sample", "arun", "parse_slo", "plot", "run"]

DEFAULT_PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
DEFAULT_MAX_TOKENS = 128
CLIENT_BOUND_SHARE = 0.5  # a level within 50% of the client's ceiling is client-bound
LAG_LIMIT = 0.005  # or one whose event loop lagged more than 5 ms at p99
TICK = 0.005  # the ticker's period
SLO_KEYS = ("ttft", "itl", "tpot", "e2e")
PLOT_HINT = "plots need matplotlib: pip install 'ylokh[plot]'"
_STATS = ("mean", "p50", "p90", "p99")


# -- figures ------------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of ``values``, linearly interpolated between the
    closest ranks (numpy's default); ``None`` for no values."""
    if not values:
        return None
    return _ranked(sorted(values), q)


def _ranked(ordered: Sequence[float], q: float) -> float:
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float]) -> dict[str, float | None]:
    """``{"mean", "p50", "p90", "p99"}`` of ``values`` (``None`` each when empty)."""
    if not values:
        return dict.fromkeys(_STATS)
    ordered = sorted(values)  # once for the three percentiles
    return {
        "mean": math.fsum(values) / len(values),
        "p50": _ranked(ordered, 50),
        "p90": _ranked(ordered, 90),
        "p99": _ranked(ordered, 99),
    }


def parse_slo(text: str | Mapping[str, float] | None) -> dict[str, float]:
    """``"ttft=0.5,itl=0.05,e2e=10"`` (seconds) as a dict; keys ttft, itl, tpot, e2e.

    Raises:
        ValueError: an unknown key or a value that is not a positive number.
    """
    if text is None:
        return {}
    items = text.items() if isinstance(text, Mapping) else _pairs(text)
    slo: dict[str, float] = {}
    for key, value in items:
        if key not in SLO_KEYS:
            raise ValueError(f"unknown SLO {key!r}; expected some of {', '.join(SLO_KEYS)}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"SLO {key} needs seconds, got {value!r}") from None
        if not number > 0 or math.isinf(number):
            raise ValueError(f"SLO {key} must be a positive number of seconds, got {value!r}")
        slo[key] = number
    return slo


def _pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        if item.strip():
            key, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"an SLO is key=seconds, got {item.strip()!r}")
            pairs.append((key.strip().lower(), value.strip()))
    return pairs


@dataclass(slots=True)
class Sample:
    """One measured request: ``error`` is ``None`` or the error's class name."""

    error: str | None
    ttft: float | None
    e2e: float | None
    gaps: list[float]
    tokens: int
    tokens_estimated: bool
    chunks: int

    @property
    def tpot(self) -> float | None:
        """``(e2e - ttft) / (tokens - 1)``: seconds per output token after the first."""
        if self.ttft is None or self.e2e is None or self.tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.tokens - 1)

    @property
    def itl(self) -> float | None:
        """This request's mean gap between text deltas (what an ``itl`` SLO bounds)."""
        return math.fsum(self.gaps) / len(self.gaps) if self.gaps else None

    def meets(self, slo: Mapping[str, float]) -> bool:
        """Whether the request succeeded within every bound of ``slo``."""
        if self.error is not None:
            return False
        values = {"ttft": self.ttft, "itl": self.itl, "tpot": self.tpot, "e2e": self.e2e}
        for key, bound in slo.items():
            value = values[key]
            if value is not None and value > bound:
                return False
            if value is None and key in ("ttft", "e2e"):
                return False
        return True


@dataclass
class Level:
    """The measurements of one load level (``mode`` ``"concurrency"`` or ``"rate"``).

    Besides the fields of the JSON document, it keeps the raw samples, the send times
    (seconds from the start of the level), the event loop's lag samples and the client's
    ceiling, for plots and checks."""

    mode: str
    value: float
    samples: list[Sample]
    duration_s: float
    send_times: list[float]
    lags: list[float]
    slo: dict[str, float]
    ceiling: dict[str, float] | None = None

    @property
    def ok(self) -> int:
        """Requests that succeeded."""
        return sum(1 for s in self.samples if s.error is None)

    @property
    def errors(self) -> dict[str, int]:
        """Failed requests by error class."""
        counts: dict[str, int] = {}
        for s in self.samples:
            if s.error is not None:
                counts[s.error] = counts.get(s.error, 0) + 1
        return dict(sorted(counts.items()))

    def _good(self) -> list[Sample]:
        return [s for s in self.samples if s.error is None]

    @property
    def output_tokens(self) -> int:
        """Output tokens of the successful requests."""
        return sum(s.tokens for s in self._good())

    @property
    def chunk_rate(self) -> float:
        """Text deltas received per second (what the client's ceiling is compared to)."""
        return sum(s.chunks for s in self.samples) / self.duration_s if self.duration_s else 0.0

    @property
    def request_rate(self) -> float:
        """Successful requests per second over the level."""
        return self.ok / self.duration_s if self.duration_s else 0.0

    @property
    def lag_p99(self) -> float:
        """The event loop's lag at p99, in seconds."""
        return percentile(self.lags, 99) or 0.0

    @property
    def client_bound(self) -> bool:
        """Whether the client itself may have limited this level."""
        if self.lag_p99 > LAG_LIMIT:
            return True
        ceiling = self.ceiling
        if not ceiling:
            return False
        return (
            self.chunk_rate >= CLIENT_BOUND_SHARE * ceiling["chunks_per_s"]
            or self.request_rate >= CLIENT_BOUND_SHARE * ceiling["requests_per_s"]
        )

    @property
    def goodput(self) -> float | None:
        """The share of requests meeting every SLO bound (all that succeeded, without SLOs)."""
        if not self.samples:
            return None
        return sum(1 for s in self.samples if s.meets(self.slo)) / len(self.samples)

    def to_dict(self) -> dict[str, Any]:
        """This level in the JSON document's shape."""
        good = self._good()
        return {
            "mode": self.mode,
            "value": self.value,
            "requests": len(self.samples),
            "ok": self.ok,
            "errors": self.errors,
            "duration_s": self.duration_s,
            "request_rate": self.request_rate,
            "output_token_rate": self.output_tokens / self.duration_s if self.duration_s else 0.0,
            "tokens_estimated": any(s.tokens_estimated for s in good),
            "ttft_s": summarize([s.ttft for s in good if s.ttft is not None]),
            "itl_s": summarize([g for s in good for g in s.gaps]),
            "tpot_s": summarize([t for s in good if (t := s.tpot) is not None]),
            "e2e_s": summarize([s.e2e for s in good if s.e2e is not None]),
            "goodput": self.goodput,
            "client_bound": self.client_bound,
        }


@dataclass
class BenchResult:
    """What :func:`run` measured: :meth:`to_dict` is the JSON document; :meth:`table`,
    :meth:`to_csv`, :meth:`to_markdown` and :meth:`to_html` render it."""

    base_url: str | list[str]
    model: str | None
    started: str
    client_ceiling: dict[str, float] | None
    levels: list[Level] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The document ``ylokh bench --json`` writes."""
        return {
            "tool": "ylokh bench",
            "version": __version__,
            "base_url": self.base_url,
            "model": self.model,
            "started": self.started,
            "client_ceiling": self.client_ceiling,
            "levels": [level.to_dict() for level in self.levels],
        }

    @property
    def failed(self) -> bool:
        """Whether some level had every request fail (the command's exit code 1)."""
        return any(level.samples and not level.ok for level in self.levels)

    def table(self) -> str:
        """The human table: one row per level, latencies in milliseconds (p50/p99)."""
        head = ["load", "ok/sent", "req/s", "tok/s", "ttft p50/p99", "itl p50/p99",
                "tpot p50/p99", "e2e p50/p99", "goodput", ""]  # fmt: skip
        rows = [head]
        for level in self.levels:
            d = level.to_dict()
            rows.append(
                [
                    _load(level),
                    f"{d['ok']}/{d['requests']}",
                    f"{d['request_rate']:.2f}",
                    f"{d['output_token_rate']:.1f}" + ("~" if d["tokens_estimated"] else ""),
                    *(_ms_pair(d[k]) for k in ("ttft_s", "itl_s", "tpot_s", "e2e_s")),
                    "-" if d["goodput"] is None else f"{d['goodput']:.0%}",
                    _notes(level),
                ]
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths).rstrip())
        ceiling = self.client_ceiling
        if ceiling:
            lines.append(
                f"client ceiling on this machine: {ceiling['chunks_per_s']:,.0f} chunks/s, "
                f"{ceiling['requests_per_s']:,.0f} requests/s"
            )
        if any(level.client_bound for level in self.levels):
            lines.append(
                "CLIENT-BOUND: the client itself was near its limit at the marked levels; "
                "their figures measure this machine, not only the server"
            )
        if any(level.to_dict()["tokens_estimated"] for level in self.levels):
            lines.append("~ tokens estimated: the server sent no token counts (deltas counted)")
        for level in self.levels:
            for name, count in level.errors.items():
                lines.append(f"{_load(level)}: {count} x {name}")
        return "\n".join(lines)

    def to_csv(self) -> str:
        """One row per level, the statistics flattened (``ttft_s_p50``...)."""
        out = io.StringIO()
        rows = [_flat(level.to_dict()) for level in self.levels]
        fields = list(rows[0]) if rows else ["mode", "value"]
        writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()

    def to_markdown(self, png: bytes | None = None) -> str:
        """A Markdown report; ``png`` (the plot) is inlined as a data URI when given."""
        lines = [
            "# ylokh bench report",
            "",
            f"- server: `{_urls(self.base_url)}`, model `{self.model or '(default)'}`",
            f"- started {self.started}, ylokh {__version__}",
            "",
            "```",
            self.table(),
            "```",
            "",
        ]
        if png is not None:
            data = base64.b64encode(png).decode("ascii")
            lines += [f"![latency and throughput against load](data:image/png;base64,{data})", ""]
        else:
            lines += [f"*No plots: {PLOT_HINT}*", ""]
        return "\n".join(lines)

    def to_html(self, png: bytes | None = None) -> str:
        """A single-file HTML report, the plot inlined."""
        esc = html.escape
        head = ["load", "sent", "ok", "errors", "req/s", "tok/s", "TTFT p50", "TTFT p99",
                "ITL p50", "ITL p99", "TPOT p50", "TPOT p99", "E2E p50", "E2E p99",
                "goodput", "client-bound"]  # fmt: skip
        rows = []
        for level in self.levels:
            d = level.to_dict()
            cells = [
                _load(level),
                str(d["requests"]),
                str(d["ok"]),
                ", ".join(f"{k} {v}" for k, v in d["errors"].items()) or "-",
                f"{d['request_rate']:.2f}",
                f"{d['output_token_rate']:.1f}" + (" (est.)" if d["tokens_estimated"] else ""),
            ]
            for key in ("ttft_s", "itl_s", "tpot_s", "e2e_s"):
                cells += [_ms(d[key]["p50"]), _ms(d[key]["p99"])]
            cells.append("-" if d["goodput"] is None else f"{d['goodput']:.0%}")
            cells.append("yes" if d["client_bound"] else "no")
            style = ' class="bound"' if d["client_bound"] else ""
            rows.append(f"<tr{style}>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
        ceiling = self.client_ceiling
        notes = []
        if ceiling:
            notes.append(
                f"Client ceiling on this machine: {ceiling['chunks_per_s']:,.0f} chunks/s, "
                f"{ceiling['requests_per_s']:,.0f} requests/s. Levels within 50% of it, or "
                "whose event loop lagged more than 5 ms at p99, are marked client-bound."
            )
        plot_html = (
            f'<img alt="latency and throughput against load" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
            if png is not None
            else f"<p><em>No plots: {esc(PLOT_HINT)}</em></p>"
        )
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ylokh bench report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
th {{ background: #f0f0f0; }} td:first-child {{ text-align: left; }}
tr.bound td {{ background: #fde8e8; }}
img {{ max-width: 100%; margin-top: 1.5em; }}
.meta {{ color: #555; }}
</style></head><body>
<h1>ylokh bench report</h1>
<p class="meta">Server <code>{esc(_urls(self.base_url))}</code>, model
<code>{esc(self.model or "(default)")}</code>; started {esc(self.started)}; ylokh {__version__}.
Latencies in milliseconds.</p>
<table><thead><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
{"".join(f'<p class="meta">{esc(n)}</p>' for n in notes)}
{plot_html}
</body></html>
"""

    def plot_png(self) -> bytes | None:
        """The plot as PNG bytes, or ``None`` without matplotlib."""
        try:
            return plot(self)
        except ImportError:
            return None


def _urls(base_url: str | list[str]) -> str:
    return base_url if isinstance(base_url, str) else ", ".join(base_url)


def _load(level: Level) -> str:
    value = f"{level.value:g}"
    return f"c={value}" if level.mode == "concurrency" else f"{value}/s"


def _notes(level: Level) -> str:
    return "CLIENT-BOUND" if level.client_bound else ""


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def _ms_pair(stats: Mapping[str, float | None]) -> str:
    return f"{_ms(stats['p50'])}/{_ms(stats['p99'])}"


def _flat(d: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict) and key.endswith("_s") and set(value) == set(_STATS):
            for stat, number in value.items():
                flat[f"{key}_{stat}"] = number
        elif key == "errors":
            flat[key] = ";".join(f"{k}={v}" for k, v in value.items())
        else:
            flat[key] = value
    return flat


# -- the plot -------------------------------------------------------------------------------------
def plot(result: BenchResult, path: str | os.PathLike[str] | None = None) -> bytes:
    """Latency (p50 and p99 of TTFT, ITL, TPOT, E2E) and throughput against load, one row
    per load mode; client-bound levels are marked. Returns the PNG; writes it to ``path``.

    Raises:
        ImportError: matplotlib is not installed (``pip install 'ylokh[plot]'``).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Patch

    modes = [m for m in ("concurrency", "rate") if any(lv.mode == m for lv in result.levels)]
    rows = max(len(modes), 1)
    fig, axes = plt.subplots(rows, 2, figsize=(12, 4.8 * rows), squeeze=False)
    colors = {"ttft_s": "#1f77b4", "itl_s": "#2ca02c", "tpot_s": "#9467bd", "e2e_s": "#d62728"}
    names = {"ttft_s": "TTFT", "itl_s": "ITL", "tpot_s": "TPOT", "e2e_s": "E2E"}
    for row, mode in enumerate(modes):
        levels = [lv for lv in result.levels if lv.mode == mode]
        docs = [lv.to_dict() for lv in levels]
        xs = list(range(len(levels)))  # levels are discrete: one evenly spaced tick each
        ticks = [f"{lv.value:g}" for lv in levels]
        xlabel = "concurrent requests" if mode == "concurrency" else "request rate (req/s)"
        lat, thr = axes[row]
        for key, color in colors.items():
            p50 = [_ms_or_nan(d[key]["p50"]) for d in docs]
            p99 = [_ms_or_nan(d[key]["p99"]) for d in docs]
            if all(math.isnan(v) for v in p50):
                continue
            lat.plot(xs, p50, "o-", color=color, label=f"{names[key]} p50")
            lat.plot(xs, p99, "v--", color=color, alpha=0.55, markersize=4,
                     label=f"{names[key]} p99")  # fmt: skip
        lat.set_yscale("log")
        lat.set_ylabel("latency (ms, log scale)")
        lat.set_title(f"Latency against {mode}")
        lat.grid(True, which="both", alpha=0.3)
        lat.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.14))
        tok = [d["output_token_rate"] for d in docs]
        req = [d["request_rate"] for d in docs]
        estimated = any(d["tokens_estimated"] for d in docs)
        thr.bar(xs, tok, width=0.55, color="#ff7f0e", alpha=0.75,
                label="output tokens/s" + (" (estimated)" if estimated else ""))  # fmt: skip
        thr.set_ylabel("output tokens/s", color="#c05a00")
        thr.set_ylim(0, max([*tok, 1.0]) * 1.25)
        twin = thr.twinx()
        twin.plot(xs, req, "s-", color="#17607a", label="requests/s")
        for x, r in zip(xs, req, strict=True):
            twin.annotate(f"{r:.1f}", (x, r), textcoords="offset points", xytext=(0, 7),
                          ha="center", fontsize=8, color="#17607a")  # fmt: skip
        twin.set_ylabel("requests/s", color="#17607a")
        twin.set_ylim(0, max([*req, 1.0]) * 1.25)
        thr.set_title(f"Throughput against {mode}")
        thr.grid(True, axis="y", alpha=0.3)
        for ax in (lat, thr):
            ax.set_xticks(xs, ticks)
            ax.set_xlabel(xlabel)
            ax.set_xlim(-0.6, len(xs) - 0.4)
            for x, level in zip(xs, levels, strict=True):
                if level.client_bound:
                    ax.axvspan(x - 0.45, x + 0.45, color="red", alpha=0.08, lw=0)
        handles, labels = thr.get_legend_handles_labels()
        more = twin.get_legend_handles_labels()
        if any(level.client_bound for level in levels):
            handles.append(Patch(color="red", alpha=0.15))
            labels.append("client-bound level")
        thr.legend(handles + more[0], labels + more[1], fontsize=8, ncol=3,
                   loc="upper center", bbox_to_anchor=(0.5, -0.14))  # fmt: skip
    fig.suptitle(f"ylokh bench: {_urls(result.base_url)}", fontsize=11)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    data = buffer.getvalue()
    if path is not None:
        with open(path, "wb") as f:
            f.write(data)
    return data


def _ms_or_nan(value: float | None) -> float:
    return math.nan if value is None else value * 1000


# -- running ----------------------------------------------------------------------------------
async def _measure(stream: Any) -> Sample:
    """Read one answer to its end; its stats become a sample."""
    error: str | None = None
    try:
        async for _ in stream:
            pass
    except YlokhError as exc:
        error = type(exc).__name__
    stats = stream.stats
    return Sample(
        error=error,
        ttft=stats.time_to_first_token,
        e2e=stats.duration,
        gaps=stats.inter_token_latencies,
        tokens=stats.tokens,
        tokens_estimated=stats.tokens_estimated,
        chunks=stats.chunks,
    )


class _Ticker:
    """Measures how late the event loop wakes up: the lag of each ``TICK`` sleep."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        append = self.lags.append
        while True:
            t = loop.time()
            await asyncio.sleep(TICK)
            append(max(loop.time() - t - TICK, 0.0))

    def start(self) -> None:
        self.lags = []
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> list[float]:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        return self.lags


@dataclass
class _Progress:
    """The live progress line on a terminal (stderr)."""

    out: IO[str] | None
    label: str = ""
    total: int | None = None
    done: int = 0
    failed: int = 0
    started: float = 0.0

    def show(self, final: bool = False) -> None:
        if self.out is None:
            return
        elapsed = time.monotonic() - self.started
        of = f"/{self.total}" if self.total else ""
        rate = self.done / elapsed if elapsed > 0 else 0.0
        errors = f", {self.failed} failed" if self.failed else ""
        line = f"\r{self.label}: {self.done}{of} done{errors}, {rate:.1f} req/s, {elapsed:.1f} s"
        self.out.write(line + ("\n" if final else "\x1b[K"))
        self.out.flush()


def _poisson_times(rate: float, count: int, span: float, rng: random.Random) -> list[float]:
    """``count`` arrival times of a Poisson process of mean ``rate`` conditioned on
    ``count`` arrivals in ``span`` seconds: sorted uniform times (gaps exponential)."""
    del rate  # the rate is count / span by construction
    return sorted(rng.uniform(0.0, span) for _ in range(count))


async def _level(
    call: Callable[[], Awaitable[Sample]],
    mode: str,
    value: float,
    *,
    requests: int,
    duration: float | None,
    rng: random.Random,
    progress: _Progress,
) -> tuple[list[Sample], float, list[float]]:
    """Run one level; return the samples, its duration and the send times."""
    loop = asyncio.get_running_loop()
    samples: list[Sample] = []
    sends: list[float] = []
    start = loop.time()

    async def one() -> None:
        sends.append(loop.time() - start)
        sample = await call()
        samples.append(sample)
        progress.done += 1
        progress.failed += sample.error is not None

    if mode == "concurrency":
        count = itertools.count()
        end = None if duration is None else start + duration

        async def worker() -> None:
            while (next(count) < requests) if end is None else (loop.time() < end):
                await one()

        await asyncio.gather(*(worker() for _ in range(int(value))))
    else:
        n = requests if duration is None else max(round(value * duration), 1)
        span = n / value if duration is None else duration
        tasks = []
        for due in _poisson_times(value, n, span, rng):
            delay = start + due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(one()))
        await asyncio.gather(*tasks)
    return samples, loop.time() - start, sorted(sends)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No garbage collection while a level runs: a full collection of a process holding
    a few thousand samples takes 30 ms or more, which every answer in flight would show
    as latency (one such pause moved TTFT p99 at concurrency 64 by 20%). ylokh's calls
    leave no reference cycles, so little waits for the collection after the level."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.collect()


async def _progress_task(progress: _Progress) -> None:
    while True:
        progress.show()
        await asyncio.sleep(0.25)


async def arun(
    base_url: str | list[str],
    *,
    model: str | None = None,
    concurrency: Iterable[int] | int | None = None,
    rate: Iterable[float] | float | None = None,
    requests: int = 50,
    duration: float | None = None,
    warmup: int = 2,
    prompt: str | list[dict[str, Any]] = DEFAULT_PROMPT,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    slo: str | Mapping[str, float] | None = None,
    seed: int = 0,
    api_key: str | None = None,
    timeout: float | None = None,
    calibrate: bool = True,
    progress: bool | None = None,
    options: Mapping[str, Any] | None = None,
) -> BenchResult:
    """:func:`run` for a running event loop (``await ylokh.bench.arun(...)``)."""
    from ._async import AsyncClient

    levels = _levels(concurrency, rate)
    if requests < 1:
        raise ValueError("requests must be at least 1")
    if duration is not None and not duration > 0:
        raise ValueError("duration must be positive")
    if warmup < 0:
        raise ValueError("warmup must not be negative")
    slo_bounds = parse_slo(slo)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    show = sys.stderr.isatty() if progress is None else progress
    bar = _Progress(sys.stderr if show else None)
    if show and calibrate:
        sys.stderr.write("measuring this client's own ceiling...")
        sys.stderr.flush()
    ceiling = await client_ceiling() if calibrate else None
    result = BenchResult(base_url, model, started, ceiling)
    payload: dict[str, Any] = {"stream_options": {"include_usage": True}}
    if max_tokens is not None:
        payload["max_tokens"] = max_tokens
    payload.update(options or {})
    settings: dict[str, Any] = {"base_url": base_url, "api_key": api_key, "max_retries": 0}
    if timeout is not None:
        settings["timeout"] = timeout
    rng = random.Random(seed)
    ticker = _Ticker()
    async with AsyncClient(**settings) as client:

        def call() -> Awaitable[Sample]:
            return _measure(client.stream(prompt, model=model, **payload))

        for mode, value in levels:
            if warmup:  # a concurrency level warms one call per slot: all its connections
                calls = max(warmup, int(value)) if mode == "concurrency" else warmup
                await asyncio.gather(*(call() for _ in range(calls)))
            bar.label = f"{mode} {value:g}"
            bar.total = requests if duration is None else None
            bar.done = bar.failed = 0
            bar.started = time.monotonic()
            shower = asyncio.get_running_loop().create_task(_progress_task(bar)) if show else None
            with _collector_paused():
                ticker.start()
                try:
                    samples, spent, sends = await _level(
                        call, mode, value, requests=requests, duration=duration, rng=rng,
                        progress=bar,
                    )  # fmt: skip
                finally:
                    lags = await ticker.stop()
                    if shower is not None:
                        shower.cancel()
            bar.show(final=True)
            level = Level(mode, value, samples, spent, sends, lags, slo_bounds, ceiling)
            result.levels.append(level)
    return result


def _levels(
    concurrency: Iterable[int] | int | None, rate: Iterable[float] | float | None
) -> list[tuple[str, float]]:
    if isinstance(concurrency, (int, float)):
        concurrency = [int(concurrency)]
    if isinstance(rate, (int, float)):
        rate = [float(rate)]
    levels: list[tuple[str, float]] = [("concurrency", int(c)) for c in concurrency or ()]
    levels += [("rate", float(r)) for r in rate or ()]
    if not levels:
        levels = [("concurrency", 1)]
    for mode, value in levels:
        if not value > 0 or math.isinf(value):
            raise ValueError(f"{mode} must be positive, got {value:g}")
    return levels


def run(base_url: str | list[str], **kwargs: Any) -> BenchResult:
    """Measure the server at ``base_url`` under load; return a :class:`BenchResult`.

    Arguments (keywords): ``model``; ``concurrency`` (levels: calls kept in flight) and/or
    ``rate`` (levels: mean requests per second, Poisson arrivals); ``requests`` per level
    (default 50) or ``duration`` seconds per level; ``warmup`` calls before each level, not
    counted (default 2; a concurrency level makes at least one per slot, so all its
    connections are open before it is measured); ``prompt`` (a str or messages);
    ``max_tokens`` (default 128);
    ``slo`` (``"ttft=0.5,itl=0.05,e2e=10"`` or a dict, seconds); ``seed`` for the arrival
    times; ``api_key``, ``timeout``; ``calibrate`` (measure the client's ceiling first,
    default True); ``progress`` (a live line on stderr; default: when it is a terminal);
    ``options`` (more payload fields). Works from scripts and from Jupyter (where an event
    loop already runs, it runs in a thread of its own).

    Raises:
        ValueError: an invalid level, count, duration or SLO.
        InvalidRequestError: an invalid setting (URL, key...).
    """
    coro = arun(base_url, **kwargs)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: list[Any] = []

    def target() -> None:
        try:
            box.append(asyncio.run(coro))
        except BaseException as exc:  # handed to the caller's thread
            box.append(exc)

    thread = threading.Thread(target=target, name="ylokh-bench")
    thread.start()
    thread.join()
    if isinstance(box[0], BaseException):
        raise box[0]
    result: BenchResult = box[0]
    return result


# -- the client's own ceiling ---------------------------------------------------------------------
class _ZeroLatencyServer(asyncio.Protocol):
    """A minimal HTTP/1.1 server in the bench's own event loop that answers every request
    at once with a fixed, pre-encoded event stream (chunked, one HTTP chunk per event, as
    real servers frame them) in one write: what is measured is the client's cost alone."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(self.response)


def _ceiling_response(chunks: int) -> bytes:
    chunk = (
        '{"id":"c","object":"chat.completion.chunk","created":0,"model":"m",'
        '"choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":null}]}'
    )
    last = (
        '{"id":"c","object":"chat.completion.chunk","created":0,"model":"m",'
        '"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
        f'"usage":{{"prompt_tokens":1,"completion_tokens":{chunks},"total_tokens":{chunks + 1}}}}}'
    )
    events = [f"data: {chunk % f'w{i} '}\n\n".encode() for i in range(chunks)]
    events += [f"data: {last}\n\n".encode(), b"data: [DONE]\n\n"]
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    return head + b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"


async def client_ceiling(seconds: float = 0.6, concurrency: int = 16) -> dict[str, float]:
    """This machine's client ceiling: chunks/s (64-chunk answers) and requests/s (1-chunk
    answers) that ylokh's async client reaches against a zero-latency server in the same
    event loop, each over about ``seconds``."""
    from ._async import AsyncClient

    loop = asyncio.get_running_loop()
    figures: dict[str, float] = {}
    for key, chunks in (("chunks_per_s", 64), ("requests_per_s", 1)):
        server = await loop.create_server(
            lambda n=chunks: _ZeroLatencyServer(_ceiling_response(n)),  # type: ignore[misc]
            "127.0.0.1",
            0,
        )
        port = server.sockets[0].getsockname()[1]
        try:
            async with AsyncClient(base_url=f"http://127.0.0.1:{port}/v1", max_retries=0) as c:
                done = [0, 0]  # requests, chunks

                async def worker(end: float, done: list[int] = done) -> None:
                    while loop.time() < end:
                        sample = await _measure(c.stream("ceiling", model="m"))
                        done[0] += 1
                        done[1] += sample.chunks

                await asyncio.gather(*(worker(loop.time() + 0.1) for _ in range(concurrency)))
                done[:] = [0, 0]
                start = loop.time()
                await asyncio.gather(*(worker(start + seconds) for _ in range(concurrency)))
                spent = loop.time() - start
            figures[key] = (done[1] if key == "chunks_per_s" else done[0]) / spent
        finally:
            server.close()
            await server.wait_closed()
    return {"chunks_per_s": figures["chunks_per_s"], "requests_per_s": figures["requests_per_s"]}


def write_outputs(
    result: BenchResult,
    *,
    json_path: str | None = None,
    csv_path: str | None = None,
    report_path: str | None = None,
    plot_path: str | None = None,
) -> list[str]:
    """Write the files asked for; return notices for the user (a missing matplotlib)."""
    notices: list[str] = []
    if json_path:
        _write_text(json_path, json.dumps(result.to_dict(), indent=2) + "\n")
    if csv_path:
        _write_text(csv_path, result.to_csv())
    png: bytes | None = None
    if plot_path or report_path:
        png = result.plot_png()
        if png is None:
            notices.append(PLOT_HINT)
    if plot_path and png is not None:
        with open(plot_path, "wb") as f:
            f.write(png)
    if report_path:
        html_report = report_path.lower().endswith((".html", ".htm"))
        text = result.to_html(png) if html_report else result.to_markdown(png)
        _write_text(report_path, text)
    return notices


def _write_text(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text)
        return
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
