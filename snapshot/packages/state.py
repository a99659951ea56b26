"""What the package wing keeps in RAM between commands and hooks: whether an upgrade is
running, the package change the running system holds that flash does not, and the state a
package transaction started from (snapshot/packages/upgrade.py). Each is one JSON file in
STATE_DIR, replaced whole (a temporary file renamed into place); a reboot forgets them.
Apart from the upgrade's code, so that `status` reads them importing nothing of it.
"""
import os
import time

from snapshot import kept

STATE_DIR = "/tmp/snapshot"
#: While it exists (and its process lives), an upgrade is running: the hooks stay silent.
UPGRADING = "upgrading.json"
#: The package change the running system holds that is not on flash.
UNSAVED = "unsaved-change.json"
#: The state the automatic snapshot compares against (the earliest before-state).
PENDING = "transaction.json"


def state_file(name: str, state_dir) -> str:
    return os.path.join(state_dir, name)


write, read, forget = kept.write, kept.read, kept.forget


def unsaved(state_dir=STATE_DIR) -> dict | None:
    """The package change the running system holds that flash does not, if any: `status`
    shows it (a reboot discards it)."""
    return read(state_file(UNSAVED, state_dir))


def record_unsaved(state_dir, what: str, error: str) -> None:
    write(state_file(UNSAVED, state_dir), {"what": what, "error": error,
                                           "when": int(time.time())})


def upgrading(state_dir=STATE_DIR) -> bool:
    mark = read(state_file(UPGRADING, state_dir))
    if not mark:
        return False
    try:
        os.kill(int(mark["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True
