"""Jupyter, for real: ``examples/quickstart.ipynb`` executed in a real IPython kernel
(nbclient + ipykernel), and ``ylokh.notebook.show`` outside a kernel."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import ylokh
from ylokh.notebook import ashow, show
from ylokh.testing import Server

# Where the ylokh under test lives (the kernel must import the same one) and the notebook,
# which is in the source tree next to tests/, not in the installed package.
ROOT = Path(ylokh.__file__).resolve().parent.parent
NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"


def _have(*modules: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in modules)


needs_kernel = pytest.mark.skipif(
    not _have("nbclient", "nbformat", "ipykernel"),
    reason="nbclient, nbformat and ipykernel (the 'test' extra) are not installed",
)


@pytest.fixture(scope="module")
def executed() -> tuple[Any, list[dict[str, Any]]]:
    """The quickstart notebook after a run in a fresh kernel, and the messages it sent."""
    import nbclient
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("YLOKH_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["JUPYTER_PLATFORM_DIRS"] = "1"  # the kernel must not warn about the old paths
    messages: list[dict[str, Any]] = []

    class Recording(nbclient.NotebookClient):  # type: ignore[misc]
        def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
            messages.append({"cell": cell_index, "type": msg["msg_type"], **msg["content"]})
            return super().process_message(msg, cell, cell_index)

    client = Recording(
        notebook,
        timeout=60,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    previous = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the kernel process inherits this environment
    try:
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(previous)
    return notebook, messages


def cell(notebook: Any, tag: str) -> tuple[int, Any]:
    for index, c in enumerate(notebook.cells):
        if tag in c.metadata.get("tags", []):
            return index, c
    raise LookupError(tag)


def printed(c: Any) -> str:
    return "".join(o["text"] for o in c.outputs if o["output_type"] == "stream")


def markdown_outputs(c: Any) -> list[str]:
    return [o["data"]["text/markdown"] for o in c.outputs if o["output_type"] == "display_data"]


@needs_kernel
def test_the_sync_api_works_inside_the_kernels_event_loop(executed: Any) -> None:
    notebook, _ = executed
    assert printed(cell(notebook, "stream")[1]) == "Hello from a notebook"
    assert printed(cell(notebook, "complete")[1]) == "The whole answer at once stop\n"
    for c in notebook.cells:
        assert not [o for o in c.get("outputs", []) if o["output_type"] == "error"]


@needs_kernel
def test_top_level_async_for_works(executed: Any) -> None:
    notebook, _ = executed
    assert printed(cell(notebook, "astream")[1]) == "Async works too"


@needs_kernel
def test_show_renders_markdown_updated_in_place(executed: Any) -> None:
    notebook, messages = executed
    index, c = cell(notebook, "show")
    text = "**Markdown** renders *live*, one word at a time, in a single output"
    # One output, holding the whole answer as Markdown ...
    assert markdown_outputs(c) == [text]
    # ... that the kernel first displayed, then updated in place as the chunks arrived.
    sent = [m for m in messages if m["cell"] == index]
    displays = [m for m in sent if m["type"] == "display_data"]
    updates = [m for m in sent if m["type"] == "update_display_data"]
    assert len(displays) == 1
    assert len(updates) >= 2
    display_id = displays[0]["transient"]["display_id"]
    assert {u["transient"]["display_id"] for u in updates} == {display_id}
    assert updates[-1]["data"]["text/markdown"] == text


@needs_kernel
def test_show_with_a_chat_and_ashow(executed: Any) -> None:
    notebook, _ = executed
    c = cell(notebook, "chat")[1]
    assert markdown_outputs(c) == ["What is streaming?", "And what is batching?"]
    result = [o for o in c.outputs if o["output_type"] == "execute_result"]
    assert result[0]["data"]["text/plain"] == "['system', 'user', 'assistant', 'user', 'assistant']"
    assert markdown_outputs(cell(notebook, "ashow")[1]) == ["The async twin"]


@needs_kernel
def test_batch_runs_inside_the_kernel(executed: Any) -> None:
    notebook, _ = executed
    result = [o for o in cell(notebook, "batch")[1].outputs if o["output_type"] == "execute_result"]
    assert result[0]["data"]["text/plain"] == "['one', 'two', 'three']"


@needs_kernel
def test_show_as_the_last_line_of_a_cell_renders_once(executed: Any) -> None:
    notebook, messages = executed
    index, c = cell(notebook, "show-last")
    assert markdown_outputs(c) == ["Shown once, not twice"]
    assert [o["output_type"] for o in c.outputs] == ["display_data"]  # no execute_result
    assert not [m for m in messages if m["cell"] == index and m["type"] == "execute_result"]


@needs_kernel
def test_an_answer_shown_earlier_displays_in_a_later_cell(executed: Any) -> None:
    notebook, _ = executed
    c = cell(notebook, "show-later")[1]
    texts = [o["data"]["text/plain"] for o in c.outputs if "data" in o]
    assert texts == ["'The async twin'"]


# -- outside a kernel ------------------------------------------------------------------------
def test_show_prints_when_not_in_a_kernel(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = show("plain python prints", base_url=server.base_url)
    assert answer == "plain python prints"
    assert answer.finish_reason == "stop"
    assert capsys.readouterr().out == "plain python prints\n"
    chat = ylokh.Chat(base_url=server.base_url)
    assert show(chat, "a turn") == "a turn"
    assert len(chat.messages) == 2
    with ylokh.Client(base_url=server.base_url) as client:
        assert show(client.stream("a stream made already")) == "a stream made already"
    with pytest.raises(TypeError):
        show(chat)
    with pytest.raises(TypeError):
        show("a prompt", "and another")


def test_show_keeps_the_partial_text_on_error(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ylokh.IncompleteStreamError):
        show("one two three four", base_url=server.base_url, ylokh_fault="reset-after=2")
    assert capsys.readouterr().out == "one two \n"


@pytest.mark.asyncio
async def test_ashow_outside_a_kernel(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    answer = await ashow("async show", base_url=server.base_url)
    assert answer == "async show"
    chat = ylokh.Chat(base_url=server.base_url)
    assert await ashow(chat, "async turn") == "async turn"
    assert capsys.readouterr().out == "async show\nasync turn\n"


def test_notebook_module_is_lazy_and_needs_no_ipython() -> None:
    code = (
        "import sys, ylokh; assert 'ylokh.notebook' not in sys.modules; "
        "import ylokh.notebook; assert 'IPython' not in sys.modules"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_show_joins_the_text_at_a_bounded_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    """20,000 deltas: the display is updated, and the text joined, at most once per
    interval (plus the first and the last), not once per delta."""
    import ylokh.notebook as notebook
    from ylokh._sync import Stream

    rendered: list[str] = []

    class Handle:
        def update(self, markdown: str) -> None:
            rendered.append(markdown)

    # A display that records its updates (the kernel's part is tested above, for real).
    monkeypatch.setattr(notebook, "_ipython", lambda: (str, lambda *a, **k: Handle()))
    joins = [0]

    class Counting(Stream):
        @property
        def text(self) -> str:
            joins[0] += 1
            return super().text

    with Server(chunks=20_000) as srv, ylokh.Client(base_url=srv.base_url) as client:
        stream = client.stream("w")
        stream.__class__ = Counting
        started = time.monotonic()
        answer = show(stream, interval=0.05)
        elapsed = time.monotonic() - started
    assert answer == "w " * 20_000
    assert rendered[-1] == answer
    bound = elapsed / 0.05 + 3
    assert len(rendered) <= bound
    assert joins[0] <= bound + 2  # the text Completion.of takes, and the last rendering
