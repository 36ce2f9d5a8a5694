"""ylokh benchmarks: ``python -m benchmarks`` (or ``tox -e bench``).

Contenders (ylokh sync/async, raw ``requests`` and ``aiohttp`` loops, the official
``openai`` SDK sync/async) run in interleaved rounds against one local SSE server that
lives in its own process (:mod:`benchmarks.server`, pinned to the other core when
``taskset`` exists) and writes pre-encoded bytes. Every figure is reported with its ratio
to the raw loops and to the SDK measured in the same run. See ``python -m benchmarks -h``.
"""
