"""A stand-in server whose reply holds a lone surrogate escape (``"\\ud800"``, valid JSON
that no UTF-8 text can hold), for the tests of the CLI and of batch runs.

The bundled server cannot send one (it echoes the prompt, and a prompt cannot carry a lone
surrogate through the client), so this plain ``http.server`` does, on a real socket.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["surrogate_server"]

BAD = 'data: {"choices": [{"index": 0, "delta": {"content": "bad \\ud800 end"}}]}\n\n'
DONE = 'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        text = json.dumps({"choices": [{"index": 0, "delta": {"content": prompt}}]})
        events = (BAD if "bad" in prompt else f"data: {text}\n\n") + DONE
        data = events.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet


@contextmanager
def surrogate_server() -> Iterator[str]:
    """Serve in a thread; yield the base URL. A prompt holding "bad" gets the bad reply,
    any other prompt is echoed."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
