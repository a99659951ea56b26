"""Which snapshots the running system was built from, kept beside its volatile layer.

A volatile layer's upper dir is a delta over the snapshots boot applied under it; stored on
top of any other list of snapshots it means something else. After a rollback under a running
system, storing that layer would bring back what the rollback removed, since the rolled-back
changes are still visible there. So boot writes the list as BASE in the volatile tmpfs, beside
upper/ (it lives exactly as long as the layer), and `save` and `push` from that upper dir
refuse when the chain no longer starts with it. A push from the layer adds its own snapshot to
the list: the running system has those changes.

A record is named by what a rewrite (scrubbing bit flips) keeps: seq, created, payload length
and CRC. A directory without BASE beside it is not a booted layer and is not checked.
"""
import os

from mtd.jsontext import dumps, loads
from snapshot.errors import SnapshotError
from snapshot.store.format import DirEntry

BASE = "base.json"
#: The running system's volatile layer, as boot builds it (snapshot/boot.py): what `save`
#: and `push` store unless told otherwise.
DEFAULT_UPPER = "/volatile/upper"


class StaleLayer(SnapshotError):
    pass


def identity(entry: DirEntry) -> list[int]:
    return [entry.seq, entry.created, entry.payload_length, entry.payload_crc]


# Paths are strings (os.path), not pathlib's: boot writes the base, and on a router's CPU
# pathlib's import (with re, enum and urllib.parse) costs more than Python's own start-up.

def _base_file(upper) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(upper)), BASE)


def write_base(upper, snapshots: list[DirEntry]) -> None:
    """Record `snapshots` as the base of the layer whose upper dir is `upper`. Written to a
    temporary name and renamed: a reader sees the old list or the new one."""
    path = _base_file(upper)
    partial = path[:-len(".json")] + ".partial"
    with open(partial, "w") as f:
        f.write(dumps({"snapshots": [identity(e) for e in snapshots]}) + "\n")
    os.replace(partial, path)


def check_base(upper, snapshots: list[DirEntry]) -> bool:
    """Raise StaleLayer if `upper` is a booted layer built on other snapshots than the chain
    holds now. Returns whether `upper` is a booted layer at all."""
    path = _base_file(upper)
    try:
        with open(path) as f:
            base = loads(f.read())["snapshots"]
    except FileNotFoundError:
        return False
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StaleLayer(f"{path} is unreadable ({e}); reboot before storing {upper}") from None
    now = [identity(e) for e in snapshots]
    if base != now:
        raise StaleLayer(
            f"the chain changed under the running system: {upper} is a layer over "
            f"{_count(len(base))} as they were at boot, and the chain now holds "
            f"{_count(len(now))} (a rollback, or a push from elsewhere); storing it would mix "
            f"the two states, so reboot first")
    return True


def rebase(upper, before: list[DirEntry], after: list[DirEntry]) -> None:
    """After a write that replaced the snapshots under the running system by others showing
    exactly the same (squash): a booted layer over `before` is one over `after` now, and
    stays storable. A layer over anything else stays stale."""
    try:
        booted = check_base(upper, before)
    except StaleLayer:
        return
    if booted:
        write_base(upper, after)


def _count(n: int) -> str:
    return f"snapshots 1..{n}" if n else "no snapshots"
