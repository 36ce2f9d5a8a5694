"""Batch runs: many prompts at once with bounded concurrency, resumable through a JSONL file.

    results = ylokh.batch(["Hello", "Bonjour"], concurrency=8, model="m")
    [r.text for r in results]                         # in input order
    ylokh.batch(items, output="out.jsonl")            # rerun: requests already answered are skipped

Input items are a str (one prompt), a list of ``{"role", "content"}`` dicts, or a dict in
one of the two JSONL input formats (one object per line of ``ylokh batch in.jsonl``; the
format is detected per file, from its first line)::

    {"id": "q1", "prompt": "Hello"}
    {"id": "q2", "messages": [{"role": "user", "content": "Hi"}], "options": {"temperature": 0}}

    {"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "m", "messages": [{"role": "user", "content": "Hello"}]}}

In the first (ylokh's) format, ``id`` (a str or an int) defaults to the item's position
(0-based) in the Python API and to the line number (1-based) in a JSONL file; ``model`` and
``options`` (payload options and settings such as ``timeout``) override the call's for that
item; other keys are ignored. Each result is one output line::

    {"id": "q1", "text": "...", "finish_reason": "stop", "usage": {...}, "fingerprint": "..."}
    {"id": "q2", "error": {"type": "ServerError", "message": "...", "status_code": 500}, ...}

The second is the OpenAI Batch API's input format; its results are OpenAI's batch output
lines, so they load wherever OpenAI batch output does::

    {"id": "batch_req_...", "custom_id": "q1", "error": null,
     "response": {"status_code": 200, "request_id": "...", "body": {<chat.completion>}}}
    {"id": "batch_req_...", "custom_id": "q2", "response": null,
     "error": {"code": "ServerError", "message": "...", "status_code": 500}}

A line whose ``url`` is not ``/v1/chat/completions`` (or whose ``method`` is not POST) is
a failed item, answered without any request.

Strategy: the run is async underneath (one ``AsyncClient``, ``concurrency`` workers pulling
from one iterator), so the sync :func:`batch` runs it with ``asyncio.run`` -- in a worker
thread when the caller's thread already runs an event loop (Jupyter). A result is appended
to the output and flushed the moment it finishes, so a killed run loses only the answers in
flight. Every result carries a fingerprint of its request (the id, the messages, the model
and the payload options): a rerun reads the output first and skips only the items whose
id *and* fingerprint match a success there; failures, stale answers and a torn last line
are dropped (the file is rewritten atomically) and run again. A file that holds anything
else than results is refused before any request, and left as it was.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import IO, TYPE_CHECKING, Any, Union

from ._base import SETTING_NAMES, BaseClient
from ._errors import APIStatusError, BadRequestError, IncompleteStreamError, InvalidRequestError
from ._protocol import resolve_model, validate_messages

if TYPE_CHECKING:
    from ._async import AsyncClient

__all__ = ["BatchItem", "BatchResult", "abatch", "batch", "read_jsonl"]

ItemId = Union[str, int]
Output = Union[str, "os.PathLike[str]", IO[str], None]

#: The one endpoint a batch answers; OpenAI Batch lines naming another are failed items.
CHAT_URL = "/v1/chat/completions"
#: How many times an item whose stream broke is run again within the run. Nobody has seen
#: its text yet (the result is written only once whole), so a retry repeats nothing.
BROKEN_STREAM_RETRIES = 2
#: At most this many bad input lines are named in the one-line error; the rest are counted.
_MAX_REPORTED = 10


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One prompt of a batch: its ``id``, the messages to send and its own options.

    ``openai`` marks an item read from an OpenAI Batch line (its result is written in
    OpenAI's batch output format); ``problem``, when set, says why the item cannot be sent
    (an unsupported ``url`` or ``method``): it becomes a failed result without a request.
    """

    id: ItemId
    messages: list[dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)
    openai: bool = False
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The outcome of one item: ``text`` when it succeeded, else ``error``.

    ``error`` is ``{"type": class name, "message": ..., "status_code": ..., "partial": ...}``
    (the status only for HTTP errors, the partial text only when some had arrived). ``ok``
    says which of the two it is. ``fingerprint`` identifies the request that was answered.
    """

    id: ItemId
    text: str | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    fingerprint: str | None = None
    model: str | None = None
    tool_calls: list[dict[str, Any]] | None = None

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
        line["fingerprint"] = self.fingerprint
        return line

    def to_openai(self) -> dict[str, Any]:
        """The result as a line of OpenAI's batch output format."""
        line: dict[str, Any] = {"id": f"batch_req_{self.fingerprint}", "custom_id": self.id}
        if self.error is not None:
            error = {"code": self.error.get("type"), "message": self.error.get("message")}
            error.update({k: v for k, v in self.error.items() if k in ("status_code", "partial")})
            line.update(response=None, error=error)
            return line
        message: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        body = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                }
            ],
            "usage": self.usage,
        }
        response = {"status_code": 200, "request_id": f"req_{uuid.uuid4().hex}", "body": body}
        line.update(response=response, error=None)
        return line

    @classmethod
    def from_json(cls, line: dict[str, Any]) -> BatchResult:
        """The result an output line holds (the inverse of :meth:`to_json` and
        :meth:`to_openai`)."""
        if "custom_id" in line:
            return _from_openai(line)
        return cls(
            id=line["id"],
            text=line.get("text"),
            finish_reason=line.get("finish_reason"),
            usage=line.get("usage"),
            error=line.get("error"),
            fingerprint=line.get("fingerprint"),
        )


def _from_openai(line: dict[str, Any]) -> BatchResult:
    fingerprint = str(line.get("id", "")).removeprefix("batch_req_")
    error = line.get("error")
    response = line.get("response")
    if error is not None or not isinstance(response, dict):
        error = dict(error) if isinstance(error, dict) else {"message": str(error)}
        error["type"] = error.pop("code", None)
        return BatchResult(line["custom_id"], error=error, fingerprint=fingerprint)
    body = response.get("body") or {}
    choice = (body.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    return BatchResult(
        line["custom_id"],
        text=message.get("content") or "",
        finish_reason=choice.get("finish_reason"),
        usage=body.get("usage"),
        fingerprint=fingerprint,
        model=body.get("model"),
        tool_calls=message.get("tool_calls"),
    )


def _check_id(value: object, where: str) -> ItemId:
    # JSON ids must survive a round trip through the output file unchanged to match on resume.
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidRequestError(f"{where}: id must be a str or an int, got {value!r}")
    return value


def _is_openai_line(raw: object) -> bool:
    return isinstance(raw, dict) and "custom_id" in raw and "body" in raw


def _openai_item(raw: dict[str, Any], where: str) -> BatchItem:
    item_id = _check_id(raw.get("custom_id"), f"{where}: custom_id")
    url, method = raw.get("url", CHAT_URL), raw.get("method", "POST")
    if url != CHAT_URL or not isinstance(method, str) or method.upper() != "POST":
        # Reported as this item's failure, so one embeddings line does not stop a run.
        problem = f"{method} {url} is not supported: ylokh batch answers POST {CHAT_URL} only"
        return BatchItem(item_id, [], openai=True, problem=problem)
    body = raw.get("body")
    if not isinstance(body, dict):
        raise InvalidRequestError(f"{where}: 'body' must be an object")
    if "messages" not in body:
        raise InvalidRequestError(f"{where}: the body has no 'messages'")
    options = {k: v for k, v in body.items() if k != "messages"}
    return BatchItem(item_id, validate_messages(body["messages"]), options, openai=True)


def to_item(raw: object, default_id: ItemId, where: str = "") -> BatchItem:
    """A :class:`BatchItem` from a str, a message list, a ylokh-format dict or an OpenAI
    Batch line.

    Raises:
        InvalidRequestError: the item is none of these, or its messages are invalid.
    """
    where = where or f"item {default_id!r}"
    try:
        if _is_openai_line(raw):
            assert isinstance(raw, dict)
            return _openai_item(raw, where)
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


def _bad_input(name: str, problems: list[str]) -> InvalidRequestError:
    shown = "; ".join(problems[:_MAX_REPORTED])
    more = len(problems) - _MAX_REPORTED
    tail = f"; and {more} more" if more > 0 else ""
    lines = "1 bad line" if len(problems) == 1 else f"{len(problems)} bad lines"
    return InvalidRequestError(f"{name}: {lines}: {shown}{tail}")


def read_jsonl(lines: Iterable[str], name: str = "<input>") -> list[BatchItem]:
    """Parse JSONL input (blank lines skipped; ``id`` defaults to the 1-based line number).

    The format (ylokh's, or the OpenAI Batch API's) is read from the first line; every line
    must then be in that format. All the bad lines are reported at once.

    Raises:
        InvalidRequestError: lines are not valid JSON or not valid items, or ids repeat.
    """
    items: list[BatchItem] = []
    problems: list[str] = []
    seen: set[ItemId] = set()
    openai: bool | None = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            raw = json.loads(line)
        except ValueError as exc:
            problems.append(f"{where}: not valid JSON ({exc})")
            continue
        if openai is None:
            openai = _is_openai_line(raw)
        try:
            if openai and not _is_openai_line(raw):
                raise InvalidRequestError(
                    f"{where}: not an OpenAI Batch line (the file's first line is one): "
                    "it needs 'custom_id' and 'body'"
                )
            if not openai and _is_openai_line(raw):
                raise InvalidRequestError(
                    f"{where}: an OpenAI Batch line in a file of ylokh items (its first line)"
                )
            item = to_item(raw, number, where)
        except InvalidRequestError as exc:
            problems.append(str(exc))
            continue
        if item.id in seen:
            # Resuming matches results to items by id: a repeated id would be skipped wrongly.
            problems.append(f"{where}: the id {item.id!r} appears twice")
            continue
        seen.add(item.id)
        items.append(item)
    if problems:
        raise _bad_input(name, problems)
    return items


def fingerprint(item: BatchItem, model: str | None, payload: dict[str, Any]) -> str:
    """A digest of what the item sends: its id, messages, model and payload options.

    Settings (``timeout``, ``base_url``...) do not change the answer, so they are left out.
    """
    _, own = _split_options(item.options)
    request = {**payload, **own, "messages": item.messages}
    request["model"] = request.get("model") or resolve_model(model, os.environ)
    request = {k: v for k, v in request.items() if v is not None}
    text = json.dumps([item.id, request], sort_keys=True, ensure_ascii=True, default=repr)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _error_of(exc: BaseException, partial: str = "") -> dict[str, Any]:
    error: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, APIStatusError):
        error["status_code"] = exc.status_code
    partial = getattr(exc, "partial", None) or partial
    if partial:
        error["partial"] = partial
    return error


def _is_result(obj: object, openai: bool) -> bool:
    if not isinstance(obj, dict):
        return False
    if openai:
        return "custom_id" in obj and "response" in obj and "error" in obj
    return "id" in obj and ("text" in obj or "error" in obj) and "custom_id" not in obj


def _done_results(
    path: str | os.PathLike[str], wanted: dict[ItemId, str], openai: bool
) -> dict[ItemId, BatchResult]:
    """Read a previous run's output: the results whose id and fingerprint match ``wanted``.

    Failures, answers to a changed request and a torn last line are dropped from the file
    (rewritten aside and renamed, so a kill meanwhile leaves the old file whole).

    Raises:
        InvalidRequestError: the file holds a line that is not a result in this format.
        OSError: the file cannot be read or rewritten.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            lines = file.readlines()
    except FileNotFoundError:
        return {}
    done: dict[ItemId, BatchResult] = {}
    kept: list[str] = []
    kind = "OpenAI batch output" if openai else "ylokh batch results"
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            if number == len(lines) and not line.endswith("\n"):
                continue  # the torn last line of a killed run
            obj = None
        if not _is_result(obj, openai):
            raise InvalidRequestError(
                f"{os.fspath(path)} line {number} is not one of {kind}; "
                "refusing to write results into it (choose another output file)"
            )
        result = BatchResult.from_json(obj)
        expected = wanted.get(result.id)
        if expected is None:
            kept.append(line)  # a result of another input: not ours to judge
        elif result.ok and result.fingerprint == expected:
            done[result.id] = result
            kept.append(line)
    if len(kept) != len(lines):
        _rewrite(path, kept)
    return done


def _resumable(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` may hold a previous run: a regular file, a folder (refused when
    opened) or nothing yet; not ``/dev/stdout`` or a pipe, which reading would block on."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return True  # missing (or unreadable): reading says so
    return stat.S_ISREG(mode) or stat.S_ISDIR(mode)


def _rewrite(path: str | os.PathLike[str], lines: list[str]) -> None:
    directory = os.path.dirname(os.fspath(path)) or "."
    fd, temp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.writelines(lines)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        # A full disk must not leave a 0-byte temporary file behind.
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


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


def scrub(text: str) -> str:
    """``text`` with lone surrogates (``"\\ud800"``, which JSON allows and UTF-8 cannot
    encode) replaced by U+FFFD, so writing it never fails."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


class _Usage:
    """Asks for ``stream_options.include_usage`` until the server shows it rejects it.

    Strategy: once one request with it succeeded, the server accepts it; before that, a
    400/422 answer is retried once without it, and the rest of the run goes without it.
    """

    def __init__(self, payload: dict[str, Any]) -> None:
        self.ask = "stream_options" not in payload  # the caller's own choice wins
        self.proven = False

    def options(self, options: dict[str, Any]) -> dict[str, Any]:
        if self.ask and "stream_options" not in options and options.get("stream") is not False:
            return {**options, "stream_options": {"include_usage": True}}
        return options


async def _attempt(
    client: AsyncClient, item: BatchItem, options: dict[str, Any], seen: list[str]
) -> BatchResult:
    # Streamed, so the read timeout bounds each pause, not a whole long generation.
    async with client.stream(item.messages, **options) as stream:
        try:
            async for _ in stream:
                pass
        finally:
            seen[:] = [stream.text]  # the partial text, kept in the error record
    return BatchResult(
        item.id,
        stream.text,
        stream.finish_reason,
        stream.usage,
        model=options.get("model") or client.model,
        tool_calls=stream.tool_calls or None,
    )


async def _answer(
    client: AsyncClient, item: BatchItem, options: dict[str, Any], usage: _Usage
) -> BatchResult:
    if item.problem is not None:
        return BatchResult(item.id, error={"type": "InvalidRequestError", "message": item.problem})
    merged = {**options, **item.options}
    asked = usage.options(merged)
    broken = 0
    seen = [""]
    while True:
        seen[:] = [""]
        try:
            result = await _attempt(client, item, asked, seen)
        except (BadRequestError, IncompleteStreamError) as exc:
            if isinstance(exc, BadRequestError) and asked is not merged and not usage.proven:
                asked = merged  # perhaps this server rejects stream_options: try without
                continue
            if isinstance(exc, IncompleteStreamError) and broken < BROKEN_STREAM_RETRIES:
                broken += 1
                continue
            return BatchResult(item.id, error=_error_of(exc, seen[0]))
        # A batch records every failure on its item and goes on, whatever the failure was.
        except Exception as exc:
            return BatchResult(item.id, error=_error_of(exc, seen[0]))
        if asked is not merged:
            usage.proven = True
        elif usage.options(merged) is not merged and not usage.proven:
            usage.ask = False  # it worked only without stream_options: the run goes without
        return result


async def _run_workers(workers: list[Any]) -> None:
    """Run the workers; on the first failure (a file error, Ctrl-C) cancel the others and
    wait for them, so the client closes only once nothing uses it any more."""
    tasks = [asyncio.ensure_future(w) for w in workers]
    if not tasks:
        return
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error


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
    openai = bool(items) and items[0].openai
    if any(item.openai != openai for item in items):
        raise InvalidRequestError("a batch holds OpenAI Batch lines or ylokh items, not both")
    settings, payload = _split_options(options)
    if client is not None:
        settings = {**{k: v for k, v in client._args.items() if v is not None}, **settings}
        model = model or client.model
    prints = {item.id: fingerprint(item, model, payload) for item in items}

    done: dict[ItemId, BatchResult] = {}
    file: IO[str] | None = None
    owned = False
    if isinstance(output, (str, os.PathLike)):
        if _resumable(output):
            done = _done_results(output, prints, openai)
        file = open(output, "a", encoding="utf-8")  # noqa: SIM115 (closed in finally)
        owned = True
    elif output is not None:
        file = output
    pending = [item for item in items if item.id not in done]
    bar = _progress_bar(progress, len(items), len(items) - len(pending))
    finished: dict[ItemId, BatchResult] = {}

    def record(result: BatchResult) -> None:
        result = replace(result, fingerprint=prints[result.id])
        if file is not None:
            line = result.to_openai() if openai else result.to_json()
            # One write per line, flushed at once: a kill loses no finished result.
            file.write(scrub(json.dumps(line, ensure_ascii=False)) + "\n")
            file.flush()
        finished[result.id] = result
        if bar is not None:
            bar.update(1)
        if on_result is not None:
            on_result(result)

    failed = False
    try:
        async with AsyncClient(**settings, model=model) as async_client:
            queue: Iterator[BatchItem] = iter(pending)
            usage = _Usage(payload)

            async def worker() -> None:
                # Workers share one iterator: taking the next item never awaits, so no
                # item is taken twice, and at most `concurrency` requests are in flight.
                for item in queue:
                    record(await _answer(async_client, item, payload, usage))

            await _run_workers([worker() for _ in range(min(concurrency, len(pending)))])
    except BaseException:
        failed = True
        raise
    finally:
        if bar is not None:
            bar.close()
        if owned and file is not None:
            try:
                file.close()
            except OSError:
                if not failed:  # a full disk noticed only at close is still an error
                    raise
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
        prompts: items (see the module docs): a str, a message list, a dict with ``id``,
            ``prompt`` or ``messages``, ``model``, ``options``, or an OpenAI Batch line.
        concurrency: how many requests may be in flight at once.
        model, **options: as for :func:`ylokh.stream`, for every item (an item's own
            ``options`` win). ``client``: a client whose settings to use.
        output: a path to append JSONL results to as they finish; a rerun with the same
            path skips the items already answered there with the same request and runs
            the failed and changed ones again. An open text file also works (appended
            to, no resuming).
        progress: a ``tqdm`` progress bar on stderr; ``None`` means when stderr is a
            terminal (and the ``progress`` extra is installed).
        on_result: called with each :class:`BatchResult` as it finishes.

    Returns:
        One :class:`BatchResult` per item, in input order. A failed item holds its
        ``error``; failures never stop the run.

    Raises:
        InvalidRequestError: an item or an option is invalid, or ``output`` holds lines
            that are not results (before any request).
        OSError: the output file cannot be read or written (a missing folder, a full
            disk, a read-only place).
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
