"""The last round of health checks, kept for `status` and for `fleet confirm`: one JSON file
in RAM (gone at the next boot), replaced whole (a temporary file renamed into place). Apart
from the checks (snapshot/health/checks.py), so that reading it imports nothing of theirs.

    {"time": 1700000000, "results": [{"name", "required", "ok", "detail"}, ...]}
"""
import json
import os
import time
from pathlib import Path

RESULTS = Path("/tmp/snapshot/health.json")


def keep(results: list, when: float | None = None) -> None:
    """Keep a round's results (checks.Result) for `status`."""
    try:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        partial = RESULTS.with_suffix(".partial")
        partial.write_text(json.dumps({"time": int(when or time.time()),
                                       "results": [r.as_dict() for r in results]}))
        os.replace(partial, RESULTS)
    except OSError:
        pass   # status then shows no results: the checks themselves went on


def last() -> dict | None:
    try:
        return json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        return None
