"""The public surface, pinned (as httpx's tests/test_exported_members.py pins its own):
every name in ``ylokh.__all__`` exists, ``dir(ylokh)`` lists the lazy ones, and each
public callable shows its real arguments."""

from __future__ import annotations

import inspect
import subprocess
import sys

import ylokh

PUBLIC = {
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AsyncStream",
    "AuthenticationError",
    "BadRequestError",
    "BatchResult",
    "Chat",
    "Client",
    "Completion",
    "IncompleteStreamError",
    "InvalidRequestError",
    "NotFoundError",
    "ProtocolError",
    "RateLimitError",
    "ServerError",
    "Stream",
    "Timeout",
    "Ylokh",
    "YlokhError",
    "__version__",
    "abatch",
    "acomplete",
    "astream",
    "batch",
    "complete",
    "notebook",
    "stream",
}


def test_all_is_the_public_surface_sorted() -> None:
    assert set(ylokh.__all__) >= PUBLIC
    assert ylokh.__all__ == sorted(ylokh.__all__)
    for name in ylokh.__all__:
        assert getattr(ylokh, name) is not None, name


def test_dir_lists_the_lazily_imported_names_before_they_are_used() -> None:
    code = "import ylokh, sys; print(sorted(set(ylokh.__all__) - set(dir(ylokh))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_public_name_has_a_docstring() -> None:
    for name in ylokh.__all__:
        value = getattr(ylokh, name)
        if name != "__version__":
            assert inspect.getdoc(value), name


def test_the_clients_show_their_real_keyword_arguments() -> None:
    expected = [
        "base_url",
        "api_key",
        "timeout",
        "max_retries",
        "proxy",
        "headers",
        "verify",
        "model",
        "env",
    ]
    for cls in (ylokh.Client, ylokh.AsyncClient):
        params = inspect.signature(cls).parameters
        assert list(params) == expected, cls
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())


def test_private_modules_export_only_their_own_names() -> None:
    import ylokh._errors
    import ylokh._protocol
    import ylokh._retry

    for module in (ylokh._errors, ylokh._protocol, ylokh._retry):
        for name in module.__all__:
            value = getattr(module, name)
            home = getattr(value, "__module__", module.__name__)
            assert home == module.__name__, (module.__name__, name, home)
