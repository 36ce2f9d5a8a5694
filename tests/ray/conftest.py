"""Fixtures for the Ray suite: one local Ray cluster per session, and rows with scripted faults.

Opt-in (``python -m pytest -q -m ray tests/ray``; ``tox -e ray``): Ray is large and slow to
start. Without Ray installed these modules are not even collected. Ray's old ``local_mode``
is gone from Ray; "local" here means a Ray cluster started on this machine by ``ray.init()``,
kept small (2 CPUs, a small object store) so it fits beside the other tests.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

if importlib.util.find_spec("ray") is None:
    collect_ignore_glob = ["test_*.py"]

#: One row in twenty fails, by a fault the row's own options ask the server for: half
#: with 400 (not retried), half with 500 and retries turned off for that row.
FAILING_EVERY = 20


def fault_of(index: int) -> dict[str, Any]:
    """The per-row options that script the failures (5% of the rows)."""
    if index % (2 * FAILING_EVERY) == 0:
        return {"ylokh_fault": "status=400"}
    if index % (2 * FAILING_EVERY) == FAILING_EVERY:
        return {"ylokh_fault": "status=500", "max_retries": 0}
    return {}


def make_rows(count: int) -> list[dict[str, Any]]:
    """Input rows as a user's JSONL file holds them."""
    return [
        {"id": i, "custom_id": f"row-{i}", "prompt": f"question {i}", "options": fault_of(i)}
        for i in range(count)
    ]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def read_output(folder: Path) -> list[dict[str, Any]]:
    """Every row of the JSON files Ray wrote, files in name order (Ray numbers them)."""
    rows: list[dict[str, Any]] = []
    for file in sorted(folder.glob("*.json")):
        rows += [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines()]
    return rows


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """A Ray cluster on this machine for the whole session."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=256 * 1024 * 1024,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def ordered(ray_cluster: Any) -> Iterator[None]:
    """Ray Data keeps the input order across blocks (off by default) for this test."""
    import ray.data

    context = ray.data.DataContext.get_current()
    saved = context.execution_options.preserve_order, context.enable_progress_bars
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    try:
        yield
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
