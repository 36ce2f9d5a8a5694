"""Batch runs: many prompts at once with bounded concurrency, resumable through a JSONL file.

    results = ylokh.batch(["Hello", "Bonjour"], concurrency=8, model="m")
    [r.text for r in results]                         # in input order
    ylokh.batch(items, output="out.jsonl")            # rerun: already-done ids are skipped

Input items are a str (one prompt), a list of ``{"role", "content"}`` dicts, or a dict in
the JSONL input format (one object per line of ``ylokh batch in.jsonl``)::

    {"id": "q1", "prompt": "Hello"}
    {"id": "q2", "messages": [{"role": "user", "content": "Hi"}], "options": {"temperature": 0}}

``id`` (a str or an int) defaults to the item's position (0-based) in the Python API and to
the line number (1-based) in a JSONL file; ``model`` and ``options`` (payload options and
settings such as ``timeout``) override the call's for that item; other keys are ignored.
Each result is one output line::

    {"id": "q1", "text": "...", "finish_reason": "stop", "usage": {...} or null}
    {"id": "q2", "error": {"type": "ServerError", "message": "...", "status_code": 500}}

Strategy: the run is async underneath (one ``AsyncClient``, ``concurrency`` workers pulling
from one iterator), so the sync :func:`batch` runs it with ``asyncio.run`` -- in a worker
thread when the caller's thread already runs an event loop (Jupyter). A result is appended
to the output and flushed the moment it finishes, so a killed run loses only the answers in
flight. A rerun reads the output first: ids with a ``text`` are done and skipped; failed
lines and a torn last line are dropped (the file is rewritten atomically) and retried.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Union

from ._base import SETTING_NAMES, BaseClient
from ._errors import APIStatusError, InvalidRequestError
from ._protocol import validate_messages

if TYPE_CHECKING:
    from ._async import AsyncClient

__all__ = ["BatchItem", "BatchResult", "abatch", "batch", "read_jsonl"]

ItemId = Union[str, int]
Output = Union[str, "os.PathLike[str]", IO[str], None]


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One prompt of a batch: its ``id``, the messages to send and its own options."""

    id: ItemId
    messages: list[dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The outcome of one item: ``text`` when it succeeded, else ``error``.

    ``error`` is ``{"type": class name, "message": ..., "status_code": ...}`` (the status
    only for HTTP errors). ``ok`` says which of the two it is.
    """

    id: ItemId
    text: str | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """True when the item produced an answer."""
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        """The output-line object: ``id``, then ``text`` or ``error``, then the rest."""
        line: dict[str, Any] = {"id": self.id}
        if self.error is None:
            line["text"] = self.text
        else:
            line["error"] = self.error
        line["finish_reason"] = self.finish_reason
        line["usage"] = self.usage
        return line

    @classmethod
    def from_json(cls, line: dict[str, Any]) -> BatchResult:
        """The result an output line holds (the inverse of :meth:`to_json`)."""
        return cls(
            id=line["id"],
            text=line.get("text"),
            finish_reason=line.get("finish_reason"),
            usage=line.get("usage"),
            error=line.get("error"),
        )


def _check_id(value: object, where: str) -> ItemId:
    # JSON ids must survive a round trip through the output file unchanged to match on resume.
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidRequestError(f"{where}: id must be a str or an int, got {value!r}")
    return value


def to_item(raw: object, default_id: ItemId, where: str = "") -> BatchItem:
    """A :class:`BatchItem` from a str, a message list or a JSONL-format dict.

    Raises:
        InvalidRequestError: the item is none of these, or its messages are invalid.
    """
    where = where or f"item {default_id!r}"
    try:
        if isinstance(raw, dict):
            item_id = _check_id(raw.get("id", default_id), where)
            if ("prompt" in raw) == ("messages" in raw):
                raise InvalidRequestError(f"{where}: give exactly one of 'prompt' or 'messages'")
            messages = validate_messages(raw.get("prompt", raw.get("messages")))
            options = raw.get("options") or {}
            if not isinstance(options, dict):
                raise InvalidRequestError(f"{where}: 'options' must be an object")
            if raw.get("model") is not None:
                options = {"model": raw["model"], **options}
            return BatchItem(item_id, messages, dict(options))
        return BatchItem(default_id, validate_messages(raw))
    except InvalidRequestError as exc:
        message = str(exc)
        raise InvalidRequestError(
            message if message.startswith(where) else f"{where}: {message}"
        ) from None


def read_jsonl(lines: Iterable[str], name: str = "<input>") -> list[BatchItem]:
    """Parse JSONL input (blank lines skipped; ``id`` defaults to the 1-based line number).

    Raises:
        InvalidRequestError: a line is not valid JSON or not a valid item, or an id repeats.
    """
    items: list[BatchItem] = []
    seen: set[ItemId] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{name} line {number}"
        try:
            raw = json.loads(line)
        except ValueError as exc:
            raise InvalidRequestError(f"{where}: not valid JSON ({exc})") from None
        item = to_item(raw, number, where)
        if item.id in seen:
            # Resuming matches results to items by id: a repeated id would be skipped wrongly.
            raise InvalidRequestError(f"{where}: the id {item.id!r} appears twice")
        seen.add(item.id)
        items.append(item)
    return items


def _error_of(exc: BaseException) -> dict[str, Any]:
    error: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, APIStatusError):
        error["status_code"] = exc.status_code
    return error


def _done_results(path: str | os.PathLike[str]) -> dict[ItemId, BatchResult]:
    """Read a previous run's output; keep only the successes, rewriting the file if needed."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.readlines()
    except FileNotFoundError:
        return {}
    done: dict[ItemId, BatchResult] = {}
    kept: list[str] = []
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue  # the torn last line of a killed run
        if not (line.endswith("\n") and isinstance(obj, dict) and "id" in obj):
            continue
        if obj.get("error") is None and isinstance(obj.get("text"), str):
            done[obj["id"]] = BatchResult.from_json(obj)
            kept.append(line)
    if len(kept) != len(lines):
        # Failures are retried, so drop them (and any torn line) now; write aside and
        # rename so that a kill during the rewrite leaves the old file whole.
        temp = f"{os.fspath(path)}.tmp"
        with open(temp, "w", encoding="utf-8") as file:
            file.writelines(kept)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    return done


def _progress_bar(enabled: bool | None, total: int, initial: int) -> Any:
    if enabled is False:
        return None
    if enabled is None and not sys.stderr.isatty():
        return None  # silent when nobody watches
    try:
        from tqdm import tqdm
    except ImportError:
        return None  # the "progress" extra is not installed
    return tqdm(total=total, initial=initial, unit="prompt", file=sys.stderr, dynamic_ncols=True)


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    settings = {k: v for k, v in options.items() if k in SETTING_NAMES}
    payload = {k: v for k, v in options.items() if k not in SETTING_NAMES}
    return settings, payload


async def _answer(client: AsyncClient, item: BatchItem, options: dict[str, Any]) -> BatchResult:
    try:
        # Streamed, so the read timeout bounds each pause, not a whole long generation.
        async with client.stream(item.messages, **{**options, **item.options}) as stream:
            async for _ in stream:
                pass
    # A batch records every failure on its item and goes on, whatever the failure was.
    except Exception as exc:
        return BatchResult(item.id, error=_error_of(exc))
    return BatchResult(item.id, stream.text, stream.finish_reason, stream.usage)


async def abatch(
    prompts: Iterable[object],
    concurrency: int = 16,
    *,
    model: str | None = None,
    client: BaseClient | None = None,
    output: Output = None,
    progress: bool | None = None,
    on_result: Callable[[BatchResult], None] | None = None,
    **options: Any,
) -> list[BatchResult]:
    """Async twin of :func:`batch` (same arguments); must run inside an event loop."""
    from ._async import AsyncClient

    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise InvalidRequestError(
            f"concurrency must be a positive whole number, not {concurrency!r}"
        )
    items = [
        raw if isinstance(raw, BatchItem) else to_item(raw, index)
        for index, raw in enumerate(prompts)
    ]
    settings, payload = _split_options(options)
    if client is not None:
        settings = {**{k: v for k, v in client._args.items() if v is not None}, **settings}
        model = model or client.model

    done: dict[ItemId, BatchResult] = {}
    file: IO[str] | None = None
    owned = False
    if isinstance(output, (str, os.PathLike)):
        done = _done_results(output)
        file = open(output, "a", encoding="utf-8")  # noqa: SIM115 (closed in finally)
        owned = True
    elif output is not None:
        file = output
    pending = [item for item in items if item.id not in done]
    bar = _progress_bar(progress, len(items), len(items) - len(pending))
    finished: dict[ItemId, BatchResult] = {}

    def record(result: BatchResult) -> None:
        if file is not None:
            # One write per line, flushed at once: a kill loses no finished result.
            file.write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")
            file.flush()
        finished[result.id] = result
        if bar is not None:
            bar.update(1)
        if on_result is not None:
            on_result(result)

    try:
        async with AsyncClient(**settings, model=model) as async_client:
            queue: Iterator[BatchItem] = iter(pending)

            async def worker() -> None:
                # Workers share one iterator: taking the next item never awaits, so no
                # item is taken twice, and at most `concurrency` requests are in flight.
                for item in queue:
                    record(await _answer(async_client, item, payload))

            await asyncio.gather(*(worker() for _ in range(min(concurrency, len(pending)))))
    finally:
        if bar is not None:
            bar.close()
        if owned and file is not None:
            file.close()
    # Items with a repeated id share one result.
    return [finished.get(item.id) or done[item.id] for item in items]


def batch(
    prompts: Iterable[object],
    concurrency: int = 16,
    *,
    model: str | None = None,
    client: BaseClient | None = None,
    output: Output = None,
    progress: bool | None = None,
    on_result: Callable[[BatchResult], None] | None = None,
    **options: Any,
) -> list[BatchResult]:
    """Answer many prompts at once, at most ``concurrency`` at a time; blocks until done.

        results = ylokh.batch(["Hello", "Bonjour"], model="m", temperature=0)
        for r in results:
            print(r.id, r.text if r.ok else r.error["message"])

    Usable from any sync code, also where an event loop already runs (Jupyter): the run
    then happens in a worker thread.

    Arguments:
        prompts: items (see the module docs): a str, a message list, or a dict with
            ``id``, ``prompt`` or ``messages``, ``model``, ``options``.
        concurrency: how many requests may be in flight at once.
        model, **options: as for :func:`ylokh.stream`, for every item (an item's own
            ``options`` win). ``client``: a client whose settings to use.
        output: a path to append JSONL results to as they finish; a rerun with the same
            path skips the ids already answered there and retries the failed ones. An
            open text file also works (appended to, no resuming).
        progress: a ``tqdm`` progress bar on stderr; ``None`` means when stderr is a
            terminal (and the ``progress`` extra is installed).
        on_result: called with each :class:`BatchResult` as it finishes.

    Returns:
        One :class:`BatchResult` per item, in input order. A failed item holds its
        ``error``; failures never stop the run.

    Raises:
        InvalidRequestError: an item or an option is invalid (before any request).
    """

    def run() -> list[BatchResult]:
        return asyncio.run(
            abatch(
                prompts,
                concurrency,
                model=model,
                client=client,
                output=output,
                progress=progress,
                on_result=on_result,
                **options,
            )
        )

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    # asyncio.run() refuses to nest in a running loop: give the run a thread of its own.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ylokh-batch") as pool:
        return pool.submit(run).result()
