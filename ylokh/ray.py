"""``ylokh.ray``: run a batch of chat completions on Ray Data (a cluster, or one machine).

    import ray, ylokh.ray
    ds = ray.data.read_json("prompts.jsonl")        # a "prompt" (str) or "messages" column
    out = ylokh.ray.complete(ds, base_url=..., model=..., concurrency=32, temperature=0)
    out.write_json("answers/")

Needs the ``ray`` extra (``pip install 'ylokh[ray]'``); ``import ylokh`` never imports Ray.

Input rows hold ``prompt`` (a str) or ``messages`` (a list of ``{"role", "content"}``), and
optionally ``model`` and ``options`` (a dict of payload options and settings for that row,
winning over the run's); every other column (``id``, ``custom_id``...) is carried through.
Each output row is its input row with five columns added:

- ``text``: the answer (``None`` when the request failed);
- ``finish_reason``: ``"stop"``, ``"length"``... when the server said;
- ``usage``: ``{"prompt_tokens", "completion_tokens", "total_tokens"}`` when the server sent
  it (``stream_options.include_usage`` is asked for unless you pass ``stream_options``);
- ``ttft_s``: seconds from sending the request to the first text delta;
- ``error``: ``None``, or ``"ErrorClass: message"``. A failed request is a row with ``error``
  set (after the client's own retries), never a failed Ray task.

Strategy: :class:`Completer` is a callable class with an ``async`` ``__call__``, so Ray Data
runs it in an actor on one event loop that lives as long as the actor; the actor keeps one
:class:`ylokh.AsyncClient` (made lazily on that loop, so its connection pool is reused across
batches) and one semaphore that keeps at most ``concurrency`` calls in flight whatever the
number of batches Ray hands it at once. :func:`complete` applies it with defaults that suit a
laptop and a cluster alike (see there).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Union

import pyarrow as pa
import ray.data

from ._api import _ENV_NAMES
from ._base import SETTING_NAMES
from ._errors import InvalidRequestError

if TYPE_CHECKING:
    from ._async import AsyncClient

__all__ = ["OUTPUT_COLUMNS", "Completer", "complete"]

#: The columns each output row gains, in this order.
OUTPUT_COLUMNS = ("text", "finish_reason", "usage", "ttft_s", "error")

#: CPUs reserved per actor: an actor mostly waits on sockets, and reserving a whole CPU
#: each would leave nothing for Ray's own read and write tasks on a small machine.
DEFAULT_NUM_CPUS = 0.25
#: ``actors=None``: an autoscaling pool of 1 to this many actors.
DEFAULT_MAX_ACTORS = 4
#: Ray tasks (batches) one actor runs at once. Two let a new batch fill the in-flight slots
#: while the slowest answers of the previous one are still arriving.
TASKS_PER_ACTOR = 2

#: Environment variables of the driver handed to the actors (a cluster's workers do not
#: share the driver's environment); an explicit option still wins over them.
_FORWARDED_ENV = tuple(name for name in _ENV_NAMES if name.startswith("YLOKH_"))

_USAGE_TYPE = pa.struct(
    [
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("total_tokens", pa.int64()),
    ]
)
_SCHEMA = pa.schema(
    [
        ("text", pa.string()),
        ("finish_reason", pa.string()),
        ("usage", _USAGE_TYPE),
        ("ttft_s", pa.float64()),
        ("error", pa.string()),
    ]
)

_CLOSE_TIMEOUT = 2.0

Actors = Union[int, tuple[int, int], None]


def _check_concurrency(concurrency: object) -> int:
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise InvalidRequestError(
            f"concurrency must be a positive whole number, not {concurrency!r}"
        )
    return concurrency


def _plain(value: Any) -> Any:
    """Arrow/NumPy values as plain Python, with ``None`` entries of dicts left out.

    Arrow gives every row of a column the union of the keys seen in that column (absent
    keys as ``None``); an option set to ``None`` means "not set" anyway.
    """
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    tolist = getattr(value, "tolist", None)  # NumPy arrays and scalars
    if tolist is not None and not isinstance(value, (str, bytes)):
        return _plain(tolist())
    return value


def _rows(batch: Any) -> list[dict[str, Any]]:
    if isinstance(batch, pa.Table):
        rows: list[dict[str, Any]] = batch.to_pylist()
        return rows
    if isinstance(batch, Mapping):  # Ray's "numpy" batch format: column name -> array
        columns = {name: _plain(values) for name, values in batch.items()}
        count = len(next(iter(columns.values()))) if columns else 0
        return [{name: values[i] for name, values in columns.items()} for i in range(count)]
    to_dict = getattr(batch, "to_dict", None)  # pandas
    if to_dict is not None:
        records: list[dict[str, Any]] = to_dict("records")
        return records
    raise TypeError(
        f"Completer takes a pyarrow.Table, a pandas.DataFrame or a dict of columns, "
        f"not {type(batch).__name__}"
    )


def _input_table(batch: Any, rows: list[dict[str, Any]]) -> pa.Table:
    if isinstance(batch, pa.Table):
        table = batch
    elif isinstance(batch, Mapping):
        table = pa.Table.from_pylist(rows)
    else:
        table = pa.Table.from_pandas(batch, preserve_index=False)
    present = [name for name in OUTPUT_COLUMNS if name in table.column_names]
    return table.drop_columns(present) if present else table


def _usage(usage: object) -> dict[str, int | None] | None:
    if not isinstance(usage, Mapping):
        return None
    return {
        name: value if isinstance(value, int) and not isinstance(value, bool) else None
        for name in ("prompt_tokens", "completion_tokens", "total_tokens")
        for value in [usage.get(name)]
    }


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Completer:
    """A callable class for ``Dataset.map_batches``: answers every row of a batch.

        ds.map_batches(
            ylokh.ray.Completer,
            fn_constructor_kwargs={"concurrency": 32, "base_url": url, "model": "m"},
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=2),
            num_cpus=0.25,
        )

    :func:`complete` does this with good defaults. Each actor keeps one
    :class:`ylokh.AsyncClient`, made on first use inside the actor, on the event loop Ray
    runs the actor's batches on, and at most ``concurrency`` calls in flight.

    Arguments:
        concurrency: calls in flight at most, per actor.
        **options: as for :func:`ylokh.stream`, for every row: settings (``base_url``, one
            or several; ``api_key``, ``timeout``, ``max_retries``...), ``model``, and
            payload options (``temperature=0``). A row's ``model`` and ``options`` win.

    Calling it with a batch (a ``pyarrow.Table``, a dict of columns or a
    ``pandas.DataFrame``) returns a ``pyarrow.Table``: the batch with the columns of
    :data:`OUTPUT_COLUMNS` added, rows in the same order.

    Raises:
        InvalidRequestError: ``concurrency`` is not a positive whole number.
    """

    def __init__(self, *, concurrency: int = 32, **options: Any) -> None:
        self.concurrency = _check_concurrency(concurrency)
        asked_usage = "stream_options" not in options  # stream_options=None: do not ask
        options = {k: v for k, v in options.items() if v is not None}
        self._settings = {k: v for k, v in options.items() if k in SETTING_NAMES}
        self._model: str | None = options.pop("model", None)
        self._payload = {k: v for k, v in options.items() if k not in SETTING_NAMES}
        if asked_usage:
            self._payload["stream_options"] = {"include_usage": True}
        self._client: AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None
        self._closing: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Completer(concurrency={self.concurrency})"

    def _client_for_loop(self) -> tuple[AsyncClient, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if self._client is None or self._slots is None or self._loop is not loop:
            # First use, or called from another loop (direct use with asyncio.run): a
            # client's pool and a semaphore belong to one loop.
            from ._async import AsyncClient

            self._client = AsyncClient(**self._settings, model=self._model)
            self._slots = asyncio.Semaphore(self.concurrency)
            self._loop = loop
        return self._client, self._slots

    async def __call__(self, batch: Any) -> pa.Table:
        """Answer every row of ``batch``; a failed row gets ``error``, never an exception."""
        rows = _rows(batch)
        table = _input_table(batch, rows)
        try:
            client, slots = self._client_for_loop()
        except Exception as exc:  # e.g. an invalid setting: every row says so
            results = [_failed(exc) for _ in rows]
        else:
            results = await asyncio.gather(*(self._answer(client, slots, row) for row in rows))
        for name in OUTPUT_COLUMNS:
            column = pa.array([r[name] for r in results], type=_SCHEMA.field(name).type)
            table = table.append_column(_SCHEMA.field(name), column)
        return table

    async def aclose(self) -> None:
        """Close this actor's connections (for direct use; Ray calls ``__del__``)."""
        if self._client is not None:
            await self._client.aclose()

    def __del__(self) -> None:
        # Ray Data deletes the callable when it shuts an actor down gracefully: close the
        # pool on its own loop so aiohttp does not warn about an unclosed session.
        client: AsyncClient | None = getattr(self, "_client", None)  # None if __init__ raised
        loop: asyncio.AbstractEventLoop | None = getattr(self, "_loop", None)
        if client is None or loop is None or loop.is_closed() or not loop.is_running():
            return
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is loop:
            self._closing = loop.create_task(client.aclose())
            return
        future = asyncio.run_coroutine_threadsafe(client.aclose(), loop)
        try:
            future.result(timeout=_CLOSE_TIMEOUT)
        except Exception:  # shutting down anyway
            future.cancel()

    async def _answer(
        self, client: AsyncClient, slots: asyncio.Semaphore, row: dict[str, Any]
    ) -> dict[str, Any]:
        async with slots:
            ttft: float | None = None
            stream = None
            try:
                messages, options = self._request_of(row)
                stream = client.stream(messages, **options)
                started = time.monotonic()
                async with stream:
                    async for _ in stream:
                        if ttft is None:
                            ttft = time.monotonic() - started
            # A batch records every failure on its row and goes on, whatever it was.
            except Exception as exc:
                return _failed(exc, _ttft(stream, ttft))
            return {
                "text": stream.text,
                "finish_reason": stream.finish_reason,
                "usage": _usage(stream.usage),
                "ttft_s": _ttft(stream, ttft),
                "error": None,
            }

    def _request_of(self, row: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        prompt, messages = row.get("prompt"), row.get("messages")
        if (prompt is None) == (messages is None):
            raise InvalidRequestError("a row needs exactly one of 'prompt' or 'messages'")
        own = _plain(row.get("options") or {})
        if not isinstance(own, dict):
            raise InvalidRequestError("a row's 'options' must be a dict")
        model = own.pop("model", None) or row.get("model") or self._model
        options: dict[str, Any] = {**self._payload, **own, "model": model}
        return (prompt if prompt is not None else _plain(messages)), options


def _ttft(stream: Any, measured: float | None) -> float | None:
    """The client's own ``stats.time_to_first_token`` when it has one, else ours."""
    stats = getattr(stream, "stats", None)
    value = getattr(stats, "time_to_first_token", None)
    return float(value) if isinstance(value, (int, float)) else measured


def _failed(exc: BaseException, ttft: float | None = None) -> dict[str, Any]:
    return {
        "text": None,
        "finish_reason": None,
        "usage": None,
        "ttft_s": ttft,
        "error": _error(exc),
    }


# Ray 2.60 takes the actor's concurrency as ActorPoolStrategy(max_concurrent_calls_per_actor=)
# and deprecates the older map_batches(max_concurrency=); older Rays only know the latter.
_CALLS_PER_ACTOR = (
    "max_concurrent_calls_per_actor"
    in inspect.signature(ray.data.ActorPoolStrategy.__init__).parameters
)


def _compute(actors: Actors) -> ray.data.ActorPoolStrategy:
    if actors is None:
        size: dict[str, Any] = {"min_size": 1, "max_size": DEFAULT_MAX_ACTORS}
    elif isinstance(actors, int) and not isinstance(actors, bool) and actors >= 1:
        size = {"size": actors}
    elif (
        isinstance(actors, tuple)
        and len(actors) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) for n in actors)
        and 1 <= actors[0] <= actors[1]
    ):
        size = {"min_size": actors[0], "max_size": actors[1]}
    else:
        raise InvalidRequestError(
            f"actors must be a positive whole number or a (min, max) pair, not {actors!r}"
        )
    if _CALLS_PER_ACTOR:
        size["max_concurrent_calls_per_actor"] = TASKS_PER_ACTOR
    return ray.data.ActorPoolStrategy(**size)


def complete(
    ds: ray.data.Dataset,
    *,
    concurrency: int = 32,
    actors: Actors = None,
    batch_size: int | None = None,
    num_cpus: float = DEFAULT_NUM_CPUS,
    map_kwargs: Mapping[str, Any] | None = None,
    **options: Any,
) -> ray.data.Dataset:
    """Answer every row of ``ds``; returns a (lazy) Dataset with one row per input row.

        out = ylokh.ray.complete(ds, base_url=url, model="m", temperature=0)
        out.write_json("answers/")

    Arguments:
        ds: rows with ``prompt`` or ``messages`` (see the module docs).
        concurrency: calls in flight at most per actor; the run keeps at most
            ``actors * concurrency`` calls in flight against the server(s).
        actors: a fixed pool of that many actors, a ``(min, max)`` pair for an autoscaling
            pool, or ``None`` for 1 to ``DEFAULT_MAX_ACTORS`` (4).
        batch_size: rows per batch; default ``concurrency``, so that one batch fills an
            actor's in-flight slots (an actor runs two batches at once).
        num_cpus: CPUs reserved per actor (0.25: actors wait on sockets, and Ray's read
            and write tasks need CPUs too; a whole CPU each can starve them and hang).
        map_kwargs: more keyword arguments for ``Dataset.map_batches``, winning over
            these defaults (``memory=``, ``runtime_env=``...).
        **options: as for :class:`Completer`: ``base_url`` (one, or several to spread the
            load), ``api_key``, ``model``, ``timeout``, ``max_retries``, payload options.
            ``YLOKH_*`` variables set in the driver's environment are passed to the actors.

    The order of the output rows is the order of the input rows within each block; ask
    Ray for a globally ordered run with
    ``ray.data.DataContext.get_current().execution_options.preserve_order = True``.

    Raises:
        InvalidRequestError: ``concurrency``, ``actors`` or ``batch_size`` is invalid.
    """
    _check_concurrency(concurrency)
    compute = _compute(actors)
    if batch_size is None:
        batch_size = concurrency
    elif isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidRequestError(f"batch_size must be a positive whole number, not {batch_size!r}")
    kwargs: dict[str, Any] = {
        "batch_size": batch_size,
        "batch_format": "pyarrow",
        "compute": compute,
        "num_cpus": num_cpus,
        "fn_constructor_kwargs": {"concurrency": concurrency, **options},
    }
    if not _CALLS_PER_ACTOR:
        kwargs["max_concurrency"] = TASKS_PER_ACTOR
    env = {name: os.environ[name] for name in _FORWARDED_ENV if name in os.environ}
    extra = dict(map_kwargs or {})
    if env:
        runtime_env = dict(extra.pop("runtime_env", None) or {})
        runtime_env["env_vars"] = {**env, **(runtime_env.get("env_vars") or {})}
        kwargs["runtime_env"] = runtime_env
    kwargs.update(extra)
    return ds.map_batches(Completer, **kwargs)
