"""What `list` and `status` report of a chain: its records from the anchor and their headers
(never a payload), the trial pending and the last rollback. Read-only; for the commands
that must start fast on a router, it imports nothing of the tree layer."""
import os

from snapshot.errors import RecordDamaged
from snapshot.store import verified
from snapshot.store.chain import Chain, Record
from snapshot.store.format import SNAPSHOT, STATE_NAMES, TRIAL, VOLATILE


# -- reading -----------------------------------------------------------------------------------

def record_info(chain: Chain, record: Record, index: int, known: dict) -> dict:
    """What list shows of a record: from the anchor plus its header and commit marker.
    `state` is where it stands in a trial; `integrity` says what was checked: "verified"
    (its payload's CRC passed when this boot, or an earlier command, read it:
    snapshot/store/verified.py `known`), "header ok" (its payload was not read), or
    "damaged: why"."""
    try:
        chain.read_header(record)
        found = known.get(verified.record_key(record.entry), "")
        integrity = "verified" if found is None else f"damaged: {found}" if found else \
            "header ok"
    except RecordDamaged as e:
        integrity = f"damaged: {e.reason}"
    e = record.entry
    info = {"seq": e.seq, "size": e.payload_length, "blocks": len(record.blocks),
            "flash_bytes": len(record.blocks) * chain.flash.geometry.erasesize,
            "created": e.created, "message": e.message, "state": STATE_NAMES[e.state],
            "integrity": integrity}
    if e.state == TRIAL:
        info |= {"attempts": e.attempts, "max_attempts": e.max_attempts}
    if e.type == VOLATILE:
        info["kept_for_rollback"] = e.fallback
    return {"index": index + 1, **info} if e.type == SNAPSHOT else info


def listing(chain: Chain) -> dict:
    """`volatile` is the volatile record a boot applies now; `volatiles` every one, the one
    kept in case a trial fails and a failed one included."""
    volatile = chain.volatile
    note = chain.note
    known = verified.load(chain.flash)
    return {
        "device": chain.flash.name,
        "geometry": chain.flash.geometry.as_dict(),
        "snapshots": [record_info(chain, r, i, known) for i, r in enumerate(chain.snapshots)],
        "volatile": record_info(chain, volatile, 0, known) if volatile else None,
        "volatiles": [record_info(chain, r, 0, known) for r in chain.volatiles],
        "last_rollback": {"seq": note.seq, "time": note.created, "reason": note.message}
        if note else None,
        "used_bytes": chain.used_bytes(),
        "free_bytes": chain.free_bytes(),
    }


def status(chain: Chain, layers=("/overlay", "/volatile")) -> dict:
    """The chain in brief, the trial pending, the last rollback, and the RAM the running
    system's tmpfs layers use (None where there is no such mount). Reads the anchor only."""
    from snapshot.store import trial as trials   # here: list does without it
    trial = chain.trial
    snapshots, volatile = chain.view()
    note = chain.note
    return {
        "device": chain.flash.name,
        "snapshots": len(snapshots),
        "volatile": volatile is not None,
        "trial": {"what": trials.name(chain, trial),
                  "kind": "snapshot" if trial.entry.type == SNAPSHOT else "volatile",
                  "seq": trial.entry.seq, "attempts": trial.entry.attempts,
                  "max_attempts": trial.entry.max_attempts} if trial else None,
        "last_rollback": {"seq": note.seq, "time": note.created, "reason": note.message,
                          "bundle": trials.bundle_of(note.message)} if note else None,
        "bundle": trials.bundle_applied(chain),
        "free_bytes": chain.free_bytes(),
        "ram": {layer: _used(layer) for layer in layers},
    }


def _used(mountpoint: str) -> int | None:
    if not os.path.ismount(mountpoint):
        return None
    st = os.statvfs(mountpoint)
    return (st.f_blocks - st.f_bfree) * st.f_frsize
