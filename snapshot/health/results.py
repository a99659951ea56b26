"""The last round of health checks, kept for `status` and for `fleet confirm`: one JSON file
in RAM (gone at the next boot), replaced whole (a temporary file renamed into place). Apart
from the checks (snapshot/health/checks.py), so that reading it imports nothing of theirs.

    {"time": 1700000000, "results": [{"name", "required", "ok", "detail"}, ...]}
"""
import time

from snapshot import kept

RESULTS = "/tmp/snapshot/health.json"


def keep(results: list, when: float | None = None) -> None:
    """Keep a round's results (checks.Result) for `status`."""
    try:
        kept.write(RESULTS, {"time": int(when or time.time()),
                             "results": [r.as_dict() for r in results]})
    except OSError:
        pass   # status then shows no results: the checks themselves went on


def last() -> dict | None:
    return kept.read(RESULTS)
