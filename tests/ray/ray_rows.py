"""Rows for the Ray suite: input with scripted faults, and reading what Ray wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: One row in twenty fails, by a fault the row's own options ask the server for: half
#: with 400 (not retried), half with 500 and retries turned off for that row.
FAILING_EVERY = 20


def fault_of(index: int) -> dict[str, Any]:
    """The per-row options that script the failures (5% of the rows)."""
    if index % (2 * FAILING_EVERY) == 0:
        return {"ylokh_fault": "status=400"}
    if index % (2 * FAILING_EVERY) == FAILING_EVERY:
        return {"ylokh_fault": "status=500", "max_retries": 0}
    return {}


def make_rows(count: int) -> list[dict[str, Any]]:
    """Input rows as a user's JSONL file holds them."""
    return [
        {"id": i, "custom_id": f"row-{i}", "prompt": f"question {i}", "options": fault_of(i)}
        for i in range(count)
    ]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def read_output(folder: Path) -> list[dict[str, Any]]:
    """Every row of the JSON files Ray wrote, files in name order (Ray numbers them)."""
    rows: list[dict[str, Any]] = []
    for file in sorted(folder.glob("*.json")):
        rows += [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines()]
    return rows
