"""Configuration: arguments > YLOKH_* environment > defaults; Timeout; proxy resolution."""

from __future__ import annotations

import pytest

import ylokh
from ylokh._config import resolve_proxy, resolve_settings


def test_defaults() -> None:
    settings = resolve_settings(env={})
    assert settings.base_url == "https://chatapi.ylokh.xyz/v1"
    assert settings.api_key is None
    assert settings.max_retries == 2
    assert settings.timeout == ylokh.Timeout(connect=10.0, read=120.0, total=None)
    assert settings.proxy is None


def test_environment_then_arguments_win() -> None:
    env = {
        "YLOKH_BASE_URL": "http://env:1/v1",
        "YLOKH_API_KEY": "sk-env",
        "YLOKH_TIMEOUT": "7",
        "YLOKH_MAX_RETRIES": "5",
        "YLOKH_PROXY": "http://proxy.env:3128",
    }
    settings = resolve_settings(env=env)
    assert (settings.base_url, settings.api_key, settings.max_retries) == (
        "http://env:1/v1",
        "sk-env",
        5,
    )
    assert settings.timeout.read == 7.0 and settings.proxy == "http://proxy.env:3128"
    settings = resolve_settings(
        base_url="http://arg:2/v1", api_key="sk-arg", timeout=3, max_retries=0, proxy="", env=env
    )
    assert (settings.base_url, settings.api_key, settings.max_retries) == (
        "http://arg:2/v1",
        "sk-arg",
        0,
    )
    assert settings.timeout.read == 3.0 and settings.proxy is None  # "" = no proxy


def test_full_endpoint_url_is_accepted_as_base_url() -> None:
    settings = resolve_settings(base_url="http://h/v1/chat/completions", env={})
    assert settings.chat_url == "http://h/v1/chat/completions"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"timeout": -1}, "must be a positive number"),
        ({"timeout": "soon"}, "must be a number"),
        ({"max_retries": -1}, "must not be negative"),
        ({"max_retries": "many"}, "whole number"),
        ({"base_url": "ftp://x"}, "http:// or https://"),
        ({"headers": {"a": 1}}, "mapping of str to str"),
    ],
)
def test_bad_settings_are_invalid_request_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ylokh.InvalidRequestError, match=match):
        resolve_settings(env={}, **kwargs)  # type: ignore[arg-type]


def test_timeout_value() -> None:
    assert ylokh.Timeout(read=5).connect == 10.0
    with pytest.raises(ylokh.InvalidRequestError):
        ylokh.Timeout(read=-1)
    with pytest.raises(ylokh.InvalidRequestError):
        ylokh.Timeout(total=0)
    assert resolve_settings(timeout=ylokh.Timeout(total=9), env={}).timeout.total == 9


@pytest.mark.parametrize(
    ("url", "env", "expected"),
    [
        ("https://api.x/v1", {"HTTPS_PROXY": "http://p:1"}, "http://p:1"),
        ("http://api.x/v1", {"HTTPS_PROXY": "http://p:1"}, None),
        ("http://api.x/v1", {"http_proxy": "http://p:2"}, "http://p:2"),
        ("http://api.x/v1", {"ALL_PROXY": "socks5://p:3"}, "socks5://p:3"),
        ("https://api.x/v1", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "x"}, None),
        ("https://api.x/v1", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".x"}, None),
        ("https://api.x/v1", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, None),
        ("https://api.x/v1", {"HTTPS_PROXY": "http://p:1", "no_proxy": "y,z"}, "http://p:1"),
        ("http://127.0.0.1:8/v1", {"HTTP_PROXY": "http://p", "NO_PROXY": "127.0.0.1"}, None),
        ("http://h:8/v1", {"HTTP_PROXY": "http://p", "NO_PROXY": "h:9"}, "http://p"),
        ("http://api.x/v1", {"HTTP_PROXY": "http://p", "YLOKH_PROXY": "http://y"}, "http://y"),
    ],
)
def test_proxy_resolution(url: str, env: dict[str, str], expected: str | None) -> None:
    assert resolve_proxy(url, None, env) == expected


def test_secrets_stay_out_of_reprs() -> None:
    settings = resolve_settings(
        api_key="sk-very-secret", proxy="http://user:hunter2@proxy:3128", env={}
    )
    text = repr(settings)
    assert "sk-very-secret" not in text and "hunter2" not in text
    assert "user:***@proxy:3128" in text
    assert {"sk-very-secret", "hunter2"} <= set(settings.secrets)
    client = ylokh.Client(api_key="sk-very-secret", base_url="http://127.0.0.1:1/v1")
    assert "sk-very-secret" not in repr(client)
