"""The old fstools snapshot chain (2014, `OWRT` at the partition's start): found and read for
`snapshot convert`, and for the read-only boot of a chain not converted yet (FORMAT.md §8,
DESIGN.md §8). Nothing here writes that format; its archives are rewritten as our records by
snapshot/legacy_archive.py.

Every loop is bounded by the partition: the walk advances at least one block per entry, the
sentinel scan looks at each block once, and a payload is read only after its length has been
checked against the format's limit and the partition's end. Damage never raises and never
hangs: it ends the import at the last good entry, and `OldChain.problems` says where and why.
"""
import hashlib
import struct
from dataclasses import dataclass

from mtd import Flash, MtdError
from snapshot.errors import SnapshotError

#: An entry's header, at the start of a block: magic, type, seq, payload length, the
#: payload's MD5 (FORMAT.md §8). Big-endian words.
HEADER = struct.Struct(">4sIII16s")
assert HEADER.size == 32
MAGIC = b"OWRT"
DATA, CONF = 0x44415441, 0x434F4E46
#: The largest payload the old tool accepts (8 * 1024 * 1204 in its source: meant as 8 MiB).
MAX_LENGTH = 9_863_168
READ_CHUNK = 64 * 1024


class LegacyDamaged(SnapshotError):
    """An entry of the old chain failed a check while it was read."""


@dataclass(frozen=True)
class Entry:
    """One entry of the old chain, as its header says."""
    type: int
    block: int
    seq: int
    length: int
    md5: bytes

    def span(self, erasesize: int) -> int:
        """The blocks it takes: header and payload, from the start of its block."""
        return -(-(self.length + HEADER.size) // erasesize)

    def describe(self) -> str:
        what = "snapshot" if self.type == DATA else "volatile"
        return f"the old {what} at block {self.block} (seq {self.seq})"


@dataclass
class OldChain:
    """What `convert` imports, in order, and what it leaves out.

    `snapshots`: the DATA entries of the walk from block 0 that passed every check, in seq
    order. `volatile`: the CONF entry to import, its first copy or its sentinel copy, or None.
    `problems`: one line per thing left out. `blocks`: every block an `OWRT` header covers,
    each with the rest of its entry; the stock tools read nothing else of the partition.
    `first_copy` and `sentinel`: the two copies of the volatile as found, checked or not;
    `first_fault`: why the first copy cannot be imported (None: it can, or there is none);
    `sentinel_good`: the sentinel copy passed every check."""
    snapshots: list[Entry]
    volatile: Entry | None
    problems: list[str]
    blocks: frozenset[int]
    first_copy: Entry | None
    first_fault: str | None
    sentinel: Entry | None
    sentinel_good: bool

    @property
    def from_sentinel(self) -> bool:
        return self.volatile is not None and self.volatile is self.sentinel


def swapped(digest: bytes) -> bytes:
    """The digest as a little-endian writer stores it: each 4-byte group byte-swapped."""
    return b"".join(digest[i:i + 4][::-1] for i in range(0, len(digest), 4))


def _header(flash: Flash, block: int) -> Entry | None:
    """The entry whose header starts block `block`, if one does (any type, any length)."""
    try:
        head = flash.read(flash.geometry.block_offset(block), HEADER.size)
    except MtdError:
        return None
    magic, kind, seq, length, md5 = HEADER.unpack(head)
    return Entry(kind, block, seq, length, md5) if magic == MAGIC else None


def _chunks(flash: Flash, entry: Entry):
    """The payload's bytes, in pieces; the length is checked first (_unusable)."""
    offset = flash.geometry.block_offset(entry.block) + HEADER.size
    left = entry.length
    while left:
        n = min(READ_CHUNK, left)
        try:
            chunk = flash.read(offset, n)
        except MtdError as e:
            raise LegacyDamaged(f"{entry.describe()} cannot be read: {e}") from None
        yield chunk
        offset += n
        left -= n


def _md5_matches(entry: Entry, digest: bytes) -> bool:
    return entry.md5 in (digest, swapped(digest))


def _unusable(flash: Flash, entry: Entry) -> str | None:
    """Why the entry cannot be imported, or None: its type, its length, where it lies, then
    its MD5, in either byte order (reading the payload only once the rest holds)."""
    g = flash.geometry
    if entry.type not in (DATA, CONF):
        return f"a broken header (type 0x{entry.type:08x})"
    if not 0 < entry.length <= MAX_LENGTH:
        return f"a broken header (length {entry.length}, at most {MAX_LENGTH})"
    end = entry.block + entry.span(g.erasesize)
    if end > g.blocks:
        return f"truncated: its {entry.length} bytes run past the end of the partition"
    bad = [b for b in range(entry.block, end) if flash.is_bad(b)]
    if bad:
        return f"block {bad[0]}, which it covers, is bad"
    digest = hashlib.md5(usedforsecurity=False)
    try:
        for chunk in _chunks(flash, entry):
            digest.update(chunk)
    except LegacyDamaged:
        return "it cannot be read"
    if not _md5_matches(entry, digest.digest()):
        return "its MD5 does not match"
    return None


def covered(flash: Flash) -> frozenset[int]:
    """Every block an `OWRT` header covers: its own, and those the rest of its entry takes
    (when its length is one the old tool accepts)."""
    g = flash.geometry
    blocks = set()
    for block in range(g.blocks):
        entry = None if flash.is_bad(block) else _header(flash, block)
        if entry is None:
            continue
        span = entry.span(g.erasesize) if 0 < entry.length <= MAX_LENGTH else 1
        blocks.update(range(block, min(block + span, g.blocks)))
    return frozenset(blocks)


def _sentinel(flash: Flash, first_copy_block: int) -> Entry | None:
    """The volatile's sentinel copy, as the old tool finds it: the highest block but block 0
    whose header is a CONF entry of an acceptable length, unless that is the first copy."""
    for block in range(flash.geometry.blocks - 1, 0, -1):
        entry = None if flash.is_bad(block) else _header(flash, block)
        if entry is not None and entry.type == CONF and 0 < entry.length <= MAX_LENGTH:
            return None if block == first_copy_block else entry
    return None


def read(flash: Flash) -> OldChain:
    """Walk the old chain from block 0 and check every entry (its payload's MD5 included):
    what convert would import. Reads only."""
    g = flash.geometry
    snapshots: list[Entry] = []
    problems: list[str] = []
    damaged = False
    block = 0
    while block < g.blocks:
        entry = _header(flash, block)
        if entry is None or entry.type == CONF:
            break
        if snapshots and entry.seq != (snapshots[-1].seq + 1) & 0xFFFFFFFF:
            # The old tool's own walk ends here too: what follows is not its chain.
            problems.append(f"block {block}: the old snapshot there has seq {entry.seq}, not "
                            f"{(snapshots[-1].seq + 1) & 0xFFFFFFFF}: the old chain ends "
                            f"before it, as the old tool's own walk does; not imported")
            break
        why = _unusable(flash, entry)
        if why is not None:
            after = (f"the import ends at the one before it (seq {snapshots[-1].seq})"
                     if snapshots else "nothing before it to import")
            problems.append(f"block {block}: old snapshot {len(snapshots) + 1} (seq "
                            f"{entry.seq}) is damaged, {why}: {after}")
            damaged = True
            break
        snapshots.append(entry)
        block += entry.span(g.erasesize)
    first = _header(flash, block) if block < g.blocks else None
    first = first if first is not None and first.type == CONF else None
    sentinel = _sentinel(flash, block)
    expected = snapshots[-1].seq if snapshots else None

    def fault(copy: Entry) -> str | None:
        """Why a copy of the volatile cannot be imported (None: it can)."""
        if expected is not None and copy.seq != expected:
            return f"stale (its seq is not the last old snapshot's, {expected})"
        why = _unusable(flash, copy)
        return None if why is None else f"damaged, {why}"

    first_fault = None if first is None else fault(first)
    sentinel_fault = None if sentinel is None else fault(sentinel)
    volatile = None
    if damaged:
        if first or sentinel:
            problems.append(f"{(first or sentinel).describe()}, the volatile, is not "
                            f"imported: it builds on the old snapshots left out")
    elif first is not None and first_fault is None:
        volatile = first
    elif sentinel is not None and sentinel_fault is None:
        volatile = sentinel
    else:
        problems += [f"{copy.describe()}, the volatile's {which}, is {why}; not imported"
                     for copy, which, why in ((first, "first copy", first_fault),
                                              (sentinel, "sentinel copy", sentinel_fault))
                     if copy is not None]
    return OldChain(snapshots, volatile, problems, covered(flash), first, first_fault,
                    sentinel, sentinel is not None and sentinel_fault is None and not damaged)


class Payload:
    """An entry's payload as a file (read(n)), checked against its MD5 when read to its end
    (finish() reads what is left): a mismatch raises LegacyDamaged."""

    def __init__(self, flash: Flash, entry: Entry):
        self.entry = entry
        self._chunks = _chunks(flash, entry)
        self._digest = hashlib.md5(usedforsecurity=False)
        self._buffer = b""
        self._done = False

    def read(self, n: int = -1) -> bytes:
        while not self._done and (n < 0 or len(self._buffer) < n):
            chunk = next(self._chunks, None)
            if chunk is None:
                self._done = True
                if not _md5_matches(self.entry, self._digest.digest()):
                    raise LegacyDamaged(f"{self.entry.describe()} is damaged: its MD5 does "
                                        f"not match")
                break
            self._digest.update(chunk)
            self._buffer += chunk
        if n < 0:
            n = len(self._buffer)
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def finish(self) -> None:
        while self.read(READ_CHUNK):
            pass
