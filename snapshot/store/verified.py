"""What this boot has read of each record's payload: verified whole, or found damaged.

Boot reads every payload in full (checking every CRC as it unpacks the records, and reading
the ones it does not apply: DESIGN.md §8), so after boot the running system knows which
records it verified. `save` and `push` build on
the snapshots below them; rather than read those payloads again at every save (seconds on a
router's SPI NOR), they look each one up here and read only a record this boot has not
verified (one written since boot, or an image on a PC that no boot read), once: what they
find is added here. A record found damaged refuses the write (DESIGN.md §4).

The ledger is one text file in RAM (/tmp is a tmpfs on a router, so a reboot forgets it,
and the next boot verifies everything again), replaced whole (a temporary file renamed into
place), keyed by the device (what stat says of it) and each record's identity
in the anchor: generation, header CRC, payload CRC and length, which no other record on the
device shares. It is a cache of reads, never a reason to trust bytes on its own: a payload
that rots after it was verified is found by the next boot, whose repair costs that record's
content only. One line a record, oldest first, its fields split by tabs:

    DEVICE<TAB>GEN:HEADER_CRC:PAYLOAD_CRC:LENGTH<TAB>ok | damaged: REASON

Plain lines, not JSON: `list` reads the ledger, and parsing JSON would import `json` and
`re`, a third of its start-up on a router's CPU (bench/bench_startup.py).
"""
import os
import stat

from mtd import Flash
from snapshot.store.format import DirEntry

LEDGER = "/tmp/snapshot/verified"
#: Records kept per device: far more than a chain lists; older keys go first.
MAX_RECORDS = 256
#: Devices kept: a router has one; a PC that tries many images keeps the latest ones, so
#: that every command's read of the ledger stays small.
MAX_DEVICES = 8
_OK, _DAMAGED = "ok", "damaged: "


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


def _read() -> dict[str, dict[str, str | None]]:
    """device -> {record key -> None (verified) or why it is damaged}, in the file's order.
    A line that does not parse is skipped: it knows nothing, so that record is read again."""
    try:
        with open(LEDGER, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return {}
    data: dict[str, dict[str, str | None]] = {}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) != 3:
            continue
        device, key, found = fields
        if found == _OK:
            data.setdefault(device, {})[key] = None
        elif found.startswith(_DAMAGED):
            data.setdefault(device, {})[key] = found[len(_DAMAGED):]
    return data


def load(flash: Flash) -> dict[str, str | None]:
    """What is known of the device's records: key -> None (verified) or why it is damaged.
    An unreadable ledger knows nothing (everything is read again)."""
    return _read().get(device_key(flash), {})


def remember(flash: Flash, results: dict[str, str | None]) -> None:
    """Add what was just read. A ledger that cannot be written is no error: the next write
    reads those payloads again."""
    if not results:
        return
    data = _read()
    key = device_key(flash)
    known = data.pop(key, {})
    known.update(results)
    data[key] = dict(list(known.items())[-MAX_RECORDS:])
    lines = [f"{device}\t{record}\t{_OK if why is None else _DAMAGED + _one_field(why)}\n"
             for device, records in list(data.items())[-MAX_DEVICES:]
             for record, why in records.items()]
    partial = os.path.join(os.path.dirname(LEDGER), f".verified.{os.getpid()}")
    try:
        os.makedirs(os.path.dirname(LEDGER), exist_ok=True)
        with open(partial, "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.replace(partial, LEDGER)
    except OSError:
        pass


def _one_field(text: str) -> str:
    """`text` with no tab or line break, which would end its field or its line."""
    return " ".join(text.split())
