"""Pytest fixtures for the test server.

Enable them with ``pytest_plugins = ["ylokh.testing.pytest_plugin"]``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._server import Server


@pytest.fixture
def ylokh_server() -> Iterator[Server]:
    """A fresh :class:`Server` with default options, stopped when the test ends."""
    with Server() as server:
        yield server
