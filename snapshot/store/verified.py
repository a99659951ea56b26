"""What this boot has read of each record's payload: verified whole, or found damaged.

Boot reads every payload in full (checking every CRC as it unpacks the records, and reading
the ones it does not apply: DESIGN.md §8), so after boot the running system knows which
records it verified. `save` and `push` build on
the snapshots below them; rather than read those payloads again at every save (seconds on a
router's SPI NOR), they look each one up here and read only a record this boot has not
verified (one written since boot, or an image on a PC that no boot read), once: what they
find is added here. A record found damaged refuses the write (DESIGN.md §4).

The ledger is one JSON file in RAM (/tmp is a tmpfs on a router, so a reboot forgets it,
and the next boot verifies everything again), replaced whole (a temporary file renamed into
place), keyed by the device (what stat says of it) and each record's identity
in the anchor: generation, header CRC, payload CRC and length, which no other record on the
device shares. It is a cache of reads, never a reason to trust bytes on its own: a payload
that rots after it was verified is found by the next boot, whose repair costs that record's
content only.

    {"device": {"gen:header_crc:payload_crc:length": null | "reason it is damaged", ...}}
"""
import json
import os
import stat
from pathlib import Path

from mtd import Flash
from snapshot.store.format import DirEntry

LEDGER = Path("/tmp/snapshot/verified.json")
#: Records kept per device: far more than a chain lists; older keys go first.
MAX_RECORDS = 256
#: Devices kept: a router has one; a PC that tries many images keeps the latest ones, so
#: that every command's read of the ledger stays small.
MAX_DEVICES = 8


def device_key(flash: Flash) -> str:
    """The device under any of its names: a character device's number, an image's inode
    (a path can be reused by another image; neither of these while the system runs)."""
    try:
        st = os.stat(flash.name)
    except OSError:
        return flash.name
    if stat.S_ISCHR(st.st_mode):
        return f"char:{st.st_rdev}"
    return f"file:{st.st_dev}:{st.st_ino}"


def record_key(entry: DirEntry) -> str:
    return f"{entry.gen}:{entry.header_crc}:{entry.payload_crc}:{entry.payload_length}"


def _read() -> dict:
    try:
        data = json.loads(LEDGER.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load(flash: Flash) -> dict[str, str | None]:
    """What is known of the device's records: key -> None (verified) or why it is damaged.
    An unreadable or malformed ledger knows nothing (everything is read again)."""
    known = _read().get(device_key(flash))
    if not isinstance(known, dict):
        return {}
    return {k: v for k, v in known.items() if isinstance(k, str) and
            (v is None or isinstance(v, str))}


def remember(flash: Flash, results: dict[str, str | None]) -> None:
    """Add what was just read. A ledger that cannot be written is no error: the next write
    reads those payloads again."""
    if not results:
        return
    data = _read()
    key = device_key(flash)
    known = data.pop(key, None)
    known = known if isinstance(known, dict) else {}
    known.update(results)
    data[key] = dict(list(known.items())[-MAX_RECORDS:])
    data = dict(list(data.items())[-MAX_DEVICES:])
    try:
        LEDGER.parent.mkdir(parents=True, exist_ok=True)
        partial = LEDGER.with_name(f".{LEDGER.name}.{os.getpid()}")
        partial.write_text(json.dumps(data) + "\n")
        os.replace(partial, LEDGER)
    except OSError:
        pass
