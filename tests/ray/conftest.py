"""Fixtures for the Ray suite: one Ray cluster on this machine per session, ordered runs.

Opt-in (``python -m pytest -q -m ray tests/ray``; ``tox -e ray``): Ray is large and slow to
start. Without Ray installed these modules are not even collected. Ray's old ``local_mode``
is gone from Ray; "local" here means a Ray cluster started on this machine by ``ray.init()``,
kept small (2 CPUs, a small object store) so it fits beside the other tests.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import pytest


def _installed(name: str) -> bool:
    # This folder is itself importable as a namespace package "ray" (its parent is on
    # sys.path): only a real package, one with an origin, counts.
    spec = importlib.util.find_spec(name)
    return spec is not None and spec.origin is not None


if not (_installed("ray") and _installed("pyarrow")):
    collect_ignore_glob = ["test_*.py"]


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
