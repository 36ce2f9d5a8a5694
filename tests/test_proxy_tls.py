"""Proxies (a real ``pproxy`` started on loopback), TLS with a test CA (``trustme``), secrets.

The proxy runs as a subprocess; its verbose log names every connection it forwards, so a
test can tell that the request really went through it.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

import ylokh
from ylokh import APIConnectionError, APIStatusError, AuthenticationError
from ylokh.testing import Server

USER, PASSWORD = "proxyuser", "proxy-pw-7f3a9c"
API_KEY = "sk-test-5e1d2c9b8a7f6e5d"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Proxy:
    """A pproxy process on loopback; ``log`` holds its verbose output, line by line."""

    def __init__(self, scheme: str, auth: bool) -> None:
        self.port = free_port()
        self.auth = auth
        listen = f"{scheme}://127.0.0.1:{self.port}" + (f"#{USER}:{PASSWORD}" if auth else "")
        pproxy = Path(sys.executable).with_name("pproxy")
        self.process = subprocess.Popen(
            [str(pproxy), "-l", listen, "-v", "--auth", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 10
        while True:  # ready when it accepts connections
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"pproxy did not start: {self.log}") from None
                time.sleep(0.05)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line.rstrip())

    def url(self, scheme: str, password: str = PASSWORD) -> str:
        creds = f"{USER}:{password}@" if self.auth else ""
        return f"{scheme}://{creds}127.0.0.1:{self.port}"

    def forwarded(self, port: int, within: float = 2.0) -> list[str]:
        """The log lines of connections forwarded to ``127.0.0.1:port``."""
        deadline = time.monotonic() + within
        while True:
            found = [line for line in self.log if line.endswith(f"-> 127.0.0.1:{port}")]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(5)
        self._reader.join(2)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with Server() as srv:
        yield srv


@pytest.fixture(scope="module", params=[False, True], ids=["open", "auth"])
def proxy(request: pytest.FixtureRequest) -> Iterator[Proxy]:
    running = Proxy("http+socks5", auth=request.param)
    yield running
    running.stop()


# -- HTTP and SOCKS5 proxies ------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_the_request_goes_through_the_proxy(
    face: Any, server: Server, proxy: Proxy, scheme: str
) -> None:
    server.reset()
    before = len(proxy.forwarded(server.port, within=0))
    client = face.client(base_url=server.base_url, proxy=proxy.url(scheme), max_retries=0)
    out = face.stream("through the proxy", client=client)
    assert out.error is None and out.text == "through the proxy"
    lines = proxy.forwarded(server.port)
    assert len(lines) > before and lines[-1].startswith(scheme), proxy.log[-3:]
    assert len(server.requests) == 1


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
    face: Any, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = Proxy("http", auth=False)
    dead = f"http://127.0.0.1:{free_port()}"
    try:
        # HTTP_PROXY is used for an http:// base URL
        monkeypatch.setenv("HTTP_PROXY", running.url("http"))
        out = face.complete("a", client=face.client(base_url=server.base_url, max_retries=0))
        assert out.error is None and len(running.forwarded(server.port)) == 1
        # NO_PROXY bypasses it
        monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        out = face.complete("b", client=face.client(base_url=server.base_url, max_retries=0))
        assert out.error is None and len(running.forwarded(server.port, within=0.2)) == 1
        # YLOKH_PROXY wins over HTTP(S)_PROXY and NO_PROXY; proxy= wins over everything
        monkeypatch.setenv("HTTP_PROXY", dead)
        monkeypatch.setenv("YLOKH_PROXY", running.url("http"))
        out = face.complete("c", client=face.client(base_url=server.base_url, max_retries=0))
        assert out.error is None and len(running.forwarded(server.port)) == 2
        client = face.client(base_url=server.base_url, proxy=dead, max_retries=0)
        assert isinstance(face.complete("d", client=client).error, APIConnectionError)
        client = face.client(base_url=server.base_url, proxy="", max_retries=0)
        assert face.complete("e", client=client).error is None  # "" = no proxy at all
        assert len(running.forwarded(server.port, within=0.2)) == 2
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
    running = Proxy("http", auth=True)
    try:
        client = face.client(
            base_url=https_server.base_url, proxy=running.url("http"), verify=ca_file
        )
        out = face.stream("tunnelled", client=client)
        assert out.error is None and out.text == "tunnelled"
        assert running.forwarded(https_server.port)
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
