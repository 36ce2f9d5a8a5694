"""``ylokh.testing``: a real OpenAI-compatible server that streams deterministic answers.

It depends only on the standard library and aiohttp (never on the rest of ylokh), so the
client's tests check the protocol against an independent implementation. Point a client at
``Server().base_url``; make it misbehave with a fault spec (see :class:`Fault`) given as the
server default, a scripted sequence, the ``X-Ylokh-Fault`` header or the payload's
``ylokh_fault`` field.
"""

from __future__ import annotations

from ._app import FAULT_FIELD, FAULT_HEADER, RecordedRequest, make_app, split_words
from ._fault import Fault
from ._latency import Latency
from ._server import Server, serve

__all__ = [
    "FAULT_FIELD",
    "FAULT_HEADER",
    "Fault",
    "Latency",
    "RecordedRequest",
    "Server",
    "make_app",
    "serve",
    "split_words",
]
