"""What every command's output and errors go through, without click: the front door
(door.py) starts its commands without importing click, and the click group (common.py) uses
the same functions, so both print the same lines and exit with the same statuses.

Exit statuses of the errors: an error of the library or of the filesystem is one `Error: ...`
line and the error's own status (1 unless it has one); an interrupt (Ctrl-C) is one line
saying whether the device changed, and 130.
"""
import os
import sys
import time

from mtd.errors import FlashOpenError, MtdError
from snapshot.errors import SnapshotError
from snapshot.text import printable

# Exit status of a command interrupted (SIGINT: Ctrl-C), as shells report it.
INTERRUPTED = 130


def write(text: str, err: bool = False) -> None:
    """`text` as it is, on stdout (stderr with `err`), at once."""
    stream = sys.stderr if err else sys.stdout
    stream.write(text)
    stream.flush()


def echo(message: str = "", err: bool = False) -> None:
    """Print a line of a command's output (stderr with `err`), its control characters
    escaped (snapshot.text): the commands print through here only, so that no message, name
    or file name from flash, a bundle or the network reaches the terminal raw. JSON passes
    unchanged: json.dumps escapes what it holds."""
    write(printable(message) + "\n", err)


def print_json(data) -> None:
    """A command's report as JSON on stdout (json.dumps escapes every control character)."""
    from mtd.jsontext import dumps   # json.dumps's text, without importing json
    write(dumps(data, indent=2) + "\n")


def human(n: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor:
            return f"{n / factor:.2f}".rstrip("0").rstrip(".") + f" {unit}"
    return f"{n} B"


def when(timestamp: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def failure(error: BaseException) -> tuple[str, int]:
    """The `Error:` line's text for an error of the library (mtd, snapshot.errors) or of the
    filesystem refusing a path, and the exit status."""
    if isinstance(error, (FlashOpenError, MtdError, SnapshotError)):
        return printable(str(error)), getattr(error, "exit_code", 1)
    return printable(path_error(error)), 1


def path_error(error: OSError) -> str:
    """`PATH: reason` for an OSError, naming the path(s) it was raised for."""
    reason = error.strerror or str(error)
    paths = [os.fsdecode(p) for p in (error.filename, error.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


def interrupted(obj: dict) -> str:
    """What an interrupted command leaves on its device, in one line. Every write changes
    what readers see in one step at its end (the commit: DESIGN.md §1), so before that step
    nothing changed; chain.VISIBLE_STEPS says whether one began."""
    from snapshot.store.chain import VISIBLE_STEPS
    names = ", ".join(VISIBLE_STEPS)
    if not all(VISIBLE_STEPS.values()):
        return (f"Interrupted while committing on {names}: it holds the state before the "
                f"command or the state after it; `snapshot list` says which")
    if VISIBLE_STEPS:
        return f"Interrupted after its change to {names} was committed; `snapshot list` shows it"
    if obj.get("opens"):
        return f"Interrupted: nothing was changed on {obj['device'] or 'the overlay partition'}"
    return "Interrupted"
