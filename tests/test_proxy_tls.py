"""Proxies (a real ``pproxy`` started on loopback), TLS with a test CA (``trustme``), secrets.

The proxy runs as a subprocess (``rawserver.Proxy``); its verbose log names every
connection it forwards, so a test can tell that the request really went through it. A test
that counts forwarded connections sends them to a target server of its own (a fresh port),
so a line logged for another test can never count for it; every proxy is stopped in a
``finally`` (or by its fixture), also when it fails to become ready.
"""

from __future__ import annotations

import logging
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from rawserver import PROXY_PASSWORD, PROXY_USER, Proxy, free_port

import ylokh
from ylokh import APIConnectionError, APIStatusError, AuthenticationError
from ylokh.testing import Server

USER, PASSWORD = PROXY_USER, PROXY_PASSWORD
API_KEY = "sk-test-5e1d2c9b8a7f6e5d"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with Server() as srv:
        yield srv


@pytest.fixture(scope="module", params=[False, True], ids=["open", "auth"])
def proxy(request: pytest.FixtureRequest) -> Iterator[Proxy]:
    running = Proxy("http+socks5", auth=request.param)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def target() -> Iterator[Server]:
    """A target server of this test only: its port appears in no other test's proxy log."""
    with Server() as srv:
        yield srv


# -- HTTP and SOCKS5 proxies ------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_the_request_goes_through_the_proxy(
    face: Any, target: Server, proxy: Proxy, scheme: str
) -> None:
    assert proxy.forwarded(target.port, within=0) == []
    client = face.client(base_url=target.base_url, proxy=proxy.url(scheme), max_retries=0)
    out = face.stream("through the proxy", client=client)
    assert out.error is None and out.text == "through the proxy"
    lines = proxy.forwarded(target.port, count=1)
    assert len(proxy.forwarded(target.port, count=2, within=0.3)) == 1, proxy.log[-3:]
    assert lines[0].startswith(scheme), lines
    assert len(target.requests) == 1


def test_wrong_proxy_password_is_clear_and_keeps_the_password_secret(
    face: Any, server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    running = Proxy("http", auth=True)
    try:
        url = running.url("http", password="wrong-pw-123456")
        client = face.client(base_url=server.base_url, proxy=url, max_retries=1)
        client._sleep = (lambda s: None) if face.name == "sync" else _async_noop
        with caplog.at_level(logging.DEBUG, logger="ylokh"):
            out = face.complete("hi", client=client)
    finally:
        running.stop()
    assert isinstance(out.error, APIStatusError) and out.error.status_code == 407
    assert "Proxy Authentication Required" in str(out.error)
    for text in (str(out.error), repr(out.error), caplog.text, repr(client), repr(client.settings)):
        assert "wrong-pw-123456" not in text


def test_a_dead_proxy_is_a_connection_error_without_the_password(face: Any, server: Server) -> None:
    url = f"http://{USER}:{PASSWORD}@127.0.0.1:{free_port()}"
    client = face.client(base_url=server.base_url, proxy=url, max_retries=0)
    out = face.stream("hi", client=client)
    assert isinstance(out.error, APIConnectionError)
    assert PASSWORD not in str(out.error) and PASSWORD not in repr(client.settings)


def test_environment_proxies_and_their_precedence(
    face: Any, target: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = target
    running = Proxy("http", auth=False)
    dead = f"http://127.0.0.1:{free_port()}"
    try:
        # HTTP_PROXY is used for an http:// base URL
        monkeypatch.setenv("HTTP_PROXY", running.url("http"))
        out = face.complete("a", client=face.client(base_url=server.base_url, max_retries=0))
        assert out.error is None and len(running.forwarded(server.port, count=1)) == 1
        # NO_PROXY bypasses it
        monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        out = face.complete("b", client=face.client(base_url=server.base_url, max_retries=0))
        assert out.error is None
        assert len(running.forwarded(server.port, count=2, within=0.3)) == 1
        # YLOKH_PROXY wins over HTTP(S)_PROXY and NO_PROXY; proxy= wins over everything
        monkeypatch.setenv("HTTP_PROXY", dead)
        monkeypatch.setenv("YLOKH_PROXY", running.url("http"))
        out = face.complete("c", client=face.client(base_url=server.base_url, max_retries=0))
        assert out.error is None and len(running.forwarded(server.port, count=2)) == 2
        client = face.client(base_url=server.base_url, proxy=dead, max_retries=0)
        assert isinstance(face.complete("d", client=client).error, APIConnectionError)
        client = face.client(base_url=server.base_url, proxy="", max_retries=0)
        assert face.complete("e", client=client).error is None  # "" = no proxy at all
        assert len(running.forwarded(server.port, count=3, within=0.3)) == 2
        # HTTPS_PROXY is not used for http://
        monkeypatch.delenv("YLOKH_PROXY")
        monkeypatch.delenv("HTTP_PROXY")
        monkeypatch.delenv("NO_PROXY")
        monkeypatch.setenv("HTTPS_PROXY", dead)
        out = face.complete("f", client=face.client(base_url=server.base_url, max_retries=0))
        assert out.error is None
    finally:
        running.stop()


# -- TLS ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def _tls_server(ca: trustme.CA, *names: str) -> Server:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return Server(ssl=context)


@pytest.fixture(scope="module")
def https_server(ca: trustme.CA) -> Iterator[Server]:
    with _tls_server(ca, "127.0.0.1", "localhost") as srv:
        yield srv


def test_https_with_a_custom_ca_bundle(face: Any, https_server: Server, ca_file: str) -> None:
    assert https_server.base_url.startswith("https://")
    client = face.client(base_url=https_server.base_url, verify=ca_file)
    out = face.stream("over tls", client=client)
    assert out.error is None and out.text == "over tls"


def test_verification_is_on_by_default(face: Any, https_server: Server) -> None:
    client = face.client(base_url=https_server.base_url, max_retries=0)
    out = face.complete("hi", client=client)
    assert type(out.error) is APIConnectionError
    assert "TLS" in str(out.error) and "certificate" in str(out.error).lower()


def test_a_certificate_for_another_name_is_a_clear_error(
    face: Any, ca: trustme.CA, ca_file: str
) -> None:
    with _tls_server(ca, "example.org") as srv:
        client = face.client(base_url=srv.base_url, verify=ca_file, max_retries=0)
        out = face.complete("hi", client=client)
    assert type(out.error) is APIConnectionError
    assert "TLS" in str(out.error) and "127.0.0.1" in str(out.error)


def test_verify_false_accepts_any_certificate(face: Any, https_server: Server) -> None:
    client = face.client(base_url=https_server.base_url, verify=False)
    out = face.complete("hi", client=client)  # and no warning (filterwarnings = error)
    assert out.error is None and out.result == "hi"


def test_https_through_the_proxy(face: Any, https_server: Server, ca_file: str) -> None:
    running = Proxy("http", auth=True)  # a proxy of this test only
    try:
        client = face.client(
            base_url=https_server.base_url, proxy=running.url("http"), verify=ca_file
        )
        out = face.stream("tunnelled", client=client)
        assert out.error is None and out.text == "tunnelled"
        assert len(running.forwarded(https_server.port, count=1)) == 1
    finally:
        running.stop()


# -- secrets ------------------------------------------------------------------------------------
def test_the_api_key_never_shows(
    face: Any, server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    server.reset()
    # the server echoes the Authorization header into its error messages
    server.script(["status=503;echo-auth", "status=401;echo-auth"])
    client = face.client(base_url=server.base_url, api_key=API_KEY, max_retries=1)
    client._sleep = (lambda s: None) if face.name == "sync" else _async_noop
    with caplog.at_level(logging.DEBUG, logger="ylokh"):
        out = face.stream("hi", client=client)
    assert server.requests[0].headers["authorization"] == f"Bearer {API_KEY}"
    error = out.error
    assert isinstance(error, AuthenticationError) and "Authorization: Bearer ***" in str(error)
    shown = [str(error), repr(error), error.message, error.body, caplog.text]
    shown += [repr(client), repr(client.settings), repr(out.stream)]
    assert "503" in caplog.text  # the retry was logged, redacted
    for text in shown:
        assert API_KEY not in text, text


def test_the_cli_never_prints_the_api_key(server: Server) -> None:
    server.reset()
    server.script(["status=401;echo-auth"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("YLOKH_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ylokh",
            "chat",
            "--base-url",
            server.base_url,
            "--api-key",
            API_KEY,
            "hello",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.returncode == 1
    assert "401" in result.stderr and API_KEY not in result.stdout + result.stderr


@pytest.mark.parametrize("status", [307, 308])
def test_authorization_is_not_forwarded_to_another_host(face: Any, status: int) -> None:
    with Server() as origin, Server() as other:
        target = f"http://localhost:{other.port}/v1/chat/completions"
        origin.script([f"status={status};header=Location:{target}"])
        client = face.client(base_url=origin.base_url, api_key=API_KEY, max_retries=0)
        out = face.complete("redirected", client=client)
        assert origin.requests[0].headers["authorization"] == f"Bearer {API_KEY}"
        assert len(other.requests) == 1
        assert "authorization" not in other.requests[0].headers
        assert API_KEY not in str(other.requests[0].headers)
    assert out.error is None and out.result == "redirected"


@pytest.mark.parametrize("status", [301, 302, 303])
def test_a_redirect_that_would_become_a_get_is_an_error_naming_the_location(
    face: Any, status: int
) -> None:
    with Server() as origin:
        target = "http://127.0.0.1:9/v1/chat/completions"
        origin.script([f"status={status};header=Location:{target}"])
        client = face.client(base_url=origin.base_url, max_retries=3)
        out = face.complete("redirected", client=client)
        assert isinstance(out.error, ylokh.APIStatusError)
        assert out.error.status_code == status and target in str(out.error)
        assert len(origin.requests) == 1  # not retried, never turned into a GET


async def _async_noop(seconds: float) -> None:
    return None
