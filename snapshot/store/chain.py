"""The record chain on flash: the anchor log, record streams, block allocation and commits.

Layout (FORMAT.md): the first ANCHOR_BLOCKS blocks are the anchor area, an append-only log of
anchor entries; the newest valid entry lists every record of the chain. Records live in the
data area: snapshots are allocated from the front upwards, the volatile from the tail
downwards (the back buffer), so a new record never overlaps a record the current anchor
lists. Every write operation writes its new record into free blocks first and then commits by
appending one anchor entry. Until that entry is complete the old anchor is the newest valid
one, so after a power cut anywhere the next open sees exactly the old chain or the new one
(DESIGN.md walks every step).
"""
import errno
import os
import struct
import time
import zlib

from mtd import Flash, MtdError, open_flash
from snapshot.errors import AnchorWornOut, Busy, FlashFull, NoChain, RecordDamaged, StockMark
from snapshot.store.format import (ANCHOR_BLOCKS, ANCHOR_HEADER, COMMIT, CONFIRMED, FLEET, FAILED,
                                   MARK, NOT_RECORDS, NOTE, SNAPSHOT, TRIAL, VOLATILE, Anchor,
                                   Commit, DirEntry, Extent, FormatError, Layout, RecordHeader,
                                   anchor_length, crc32, round_up, unpack_anchor)
from snapshot.store.verified import record_key

READ_CHUNK = 256 * 1024
FIRST_READ = 16 * 1024
#: A payload's corrected bit flips, as PayloadReader shares them with a reading child.
_FLIPS = struct.Struct("=Q")


def anchor_blocks(flash: Flash) -> range:
    return range(min(ANCHOR_BLOCKS, flash.geometry.blocks))


# Plain classes, not dataclasses: `dataclasses` imports `inspect`, which would be a third of
# the start-up of `list` and `mount` on a router's CPU (bench/bench_startup.py).

class AnchorBlock:
    """What one anchor-area block holds: its newest valid entry and where the log ends."""
    __slots__ = ("block", "bad", "newest", "newest_offset", "end", "torn", "corrected",
                 "first_valid")

    def __init__(self, block: int):
        self.block = block
        self.bad = False
        self.newest: Anchor | None = None
        self.newest_offset = -1
        self.end = 0                # first byte after the last entry whose header parsed
        self.torn = False           # something follows the newest entry: an interrupted append
        self.corrected = False      # a read of this block needed ECC correction
        self.first_valid = False    # the entry at offset 0 is whole (what makes a mark block ours)


class AnchorScan:
    __slots__ = ("blocks", "max_gen")

    def __init__(self, blocks: list[AnchorBlock]):
        self.blocks = blocks
        self.max_gen = 0

    @property
    def newest(self) -> AnchorBlock | None:
        live = [b for b in self.blocks if b.newest is not None]
        return max(live, key=lambda b: b.newest.gen) if live else None


def scan_anchors(flash: Flash) -> AnchorScan:
    """Read the anchor area. Bounded: at most one header per page of each anchor block, then
    whole entries only from the last parsed one backwards until one passes its CRC."""
    g = flash.geometry
    scan = AnchorScan([])
    for block in anchor_blocks(flash):
        info = AnchorBlock(block)
        scan.blocks.append(info)
        if flash.is_bad(block):
            info.bad = True
            continue
        base = g.block_offset(block)
        headers = []
        offset = 0
        while offset + ANCHOR_HEADER.size <= g.erasesize:
            head, flips = flash.read_ecc(base + offset, ANCHOR_HEADER.size)
            info.corrected |= flips.corrected > 0
            try:
                length = anchor_length(head, g.erasesize - offset)
            except FormatError:
                info.torn = head != b"\xff" * len(head)
                break
            headers.append((offset, length))
            offset = round_up(offset + length, g.writesize)
        info.end = offset
        for offset, length in reversed(headers):
            data, flips = flash.read_ecc(base + offset, length)
            info.corrected |= flips.corrected > 0
            try:
                anchor = unpack_anchor(data)
            except FormatError:
                continue
            info.newest, info.newest_offset = anchor, offset
            info.torn |= offset != headers[-1][0]
            break
        # Only the mark block's first entry matters (read_mark); no other block's is read.
        if headers and not any(not b.bad for b in scan.blocks[:-1]):
            info.first_valid = info.newest_offset == 0 or _whole(flash, base, headers[0][1])
        if info.newest is not None:
            scan.max_gen = max(scan.max_gen, info.newest.gen)
    return scan


def _whole(flash: Flash, offset: int, length: int) -> bool:
    try:
        unpack_anchor(flash.read(offset, length))
    except (FormatError, MtdError):
        return False
    return True


# -- the mark block (FORMAT.md §2, DESIGN.md §11) ---------------------------------------------

#: What stock OpenWrt tools write at the start of rootfs_data, and what each means here.
DEADC0DE = b"\xde\xad\xc0\xde"
LEGACY_MAGIC = b"OWRT"
STOCK = {
    "deadc0de": "0xdeadc0de (a factory reset, firstboot, or a sysupgrade without settings)",
    "jffs2": "jffs2 (a sysupgrade that kept settings, or a jffs2 overlay)",
}
#: Other things a mark block can hold that are not the chain's own entry: the chain behind
#: them counts only while its newest entry carries a mark entry (a takeover in progress).
FOREIGN = {"erased": "erased flash", "other": "unknown bytes",
           "legacy": "an old-format (fstools) snapshot chain"}


def _jffs2_node(head: bytes) -> bool:
    """Whether `head` starts with a jffs2 node header whose header CRC is right, in either
    byte order (jffs2's CRC-32 starts from 0 and is not inverted at the end)."""
    for order in "<>":
        magic, nodetype, totlen, crc = struct.unpack_from(order + "HHII", head)
        if magic == 0x1985 and crc == (~zlib.crc32(head[:8], 0xFFFFFFFF)) & 0xFFFFFFFF:
            return True
    return False


class Mark:
    """What the mark block holds: the first good block of the anchor area, which the chain
    writes once and then only reads, and where stock tools write their marks."""
    __slots__ = ("block", "kind")

    def __init__(self, block: int | None, kind: str):
        self.block = block
        self.kind = kind    # anchor | erased | unreadable | other | a STOCK key

    @property
    def stock(self) -> bool:
        return self.kind in STOCK

    def describe(self) -> str:
        return STOCK.get(self.kind) or FOREIGN.get(self.kind, self.kind)


def read_mark(flash: Flash, scan: "AnchorScan") -> Mark:
    good = [b for b in scan.blocks if not b.bad]
    if not good:
        return Mark(None, "other")
    first = good[0]
    if first.first_valid:
        return Mark(first.block, "anchor")
    try:
        head = flash.read(flash.geometry.block_offset(first.block), 12)
    except MtdError:
        return Mark(first.block, "unreadable")
    if head[:4] == DEADC0DE:
        return Mark(first.block, "deadc0de")
    if head[:4] == LEGACY_MAGIC:
        return Mark(first.block, "legacy")
    if _jffs2_node(head):
        return Mark(first.block, "jffs2")
    return Mark(first.block, "erased" if head == b"\xff" * len(head) else "other")


def pending_mark(anchor: Anchor | None) -> bool:
    """Whether `anchor` was written while the mark block was not yet the chain's."""
    return anchor is not None and any(e.type == MARK for e in anchor.records)


def visible(flash: Flash, scan: "AnchorScan", mark: Mark) -> None:
    """Raise NoChain (StockMark for a stock tool's mark) unless the chain the anchor log holds
    counts: the mark block is the chain's own (or unreadable), or it reads erased or torn and
    the newest entry says the mark block is still to be written (DESIGN.md §11)."""
    if mark.stock:
        raise StockMark(flash.name, mark.kind, mark.describe())
    newest = scan.newest
    if mark.kind == "legacy" and not pending_mark(newest.newest if newest else None):
        raise NoChain(f"{flash.name} holds the old fstools snapshot chain, not converted: "
                      f"run `snapshot convert` first, which imports it (until then it boots "
                      f"read-only, and changes stay in RAM)")
    if newest is None:
        raise NoChain(f"{flash.name}: no snapshot chain on this device (run `snapshot format`)")
    if mark.kind not in ("anchor", "unreadable") and not pending_mark(newest.newest):
        raise NoChain(f"{flash.name}: block {mark.block}, the chain's mark block, holds "
                      f"{mark.describe()}: something other than snapshot wrote it (an "
                      f"interrupted sysupgrade?), so the chain behind it does not count")


class DeviceLock:
    """An exclusive, non-blocking lock on the device node or image: a second writer gets Busy
    at once instead of interleaving its writes with the first one's."""

    def __init__(self, path: str):
        import fcntl   # here, as mmap below: the commands that only read start without them
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise Busy(f"{path}: busy, another snapshot command is writing to it") from None

    def release(self) -> None:
        os.close(self.fd)


class opened:   # lower case: used as a function, `with opened(...)`
    """`with opened(device) as flash`: the flash `device` names (mtd.open_flash), locked
    against a second writer when `writable`. A class, not contextlib's decorator: contextlib
    is not imported by the commands that start fast (snapshot/cli/door.py)."""

    def __init__(self, device: str | None, writable: bool = False):
        self.device = device
        self.writable = writable

    def __enter__(self) -> Flash:
        self.flash = open_flash(self.device, writable=self.writable)
        try:
            # UBI lets one writer open a volume at a time, which is the lock there; a second
            # open of the node, as the lock's, would make UBI refuse the atomic LEB change.
            self.lock = DeviceLock(self.flash.name) \
                if self.writable and not self.flash.geometry.is_ubi else None
        except BaseException:
            self.flash.close()
            raise
        return self.flash

    def __exit__(self, *exc) -> None:
        try:
            if self.lock:
                self.lock.release()
        finally:
            self.flash.close()


class Record:
    """A record the anchor lists, with the good blocks it occupies now and its layout. Equal
    to another that says the same."""
    __slots__ = ("entry", "blocks", "layout")
    __hash__ = None

    def __init__(self, entry: DirEntry, blocks: list[int], layout: Layout):
        self.entry = entry
        self.blocks = blocks
        self.layout = layout

    def __eq__(self, other) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return (self.entry, self.blocks, self.layout) == (other.entry, other.blocks,
                                                          other.layout)

    def __repr__(self) -> str:
        return f"Record({self.entry!r}, {self.blocks!r}, {self.layout!r})"


class Chain:
    """The chain as the newest valid anchor entry describes it. Opening never writes."""

    def __init__(self, flash: Flash, over_mark: bool = False):
        """`over_mark`: the chain the anchor log holds whatever the mark block says, for the
        writer that is about to rewrite the mark block (marks.reset)."""
        self.flash = flash
        self.scan = scan_anchors(flash)
        self.mark = read_mark(flash, self.scan)
        if over_mark and self.scan.newest is not None:
            self.mark = Mark(self.mark.block, "erased")
        else:
            visible(flash, self.scan, self.mark)
        self.anchor = self.scan.newest.newest
        self._list(self.anchor)
        self._gen = max([self.scan.max_gen] + [e.gen for e in self.anchor.records])
        self.reserved: frozenset[int] = frozenset()
        self.handed_out: set[int] = set()
        self.atomic_only: frozenset[int] = frozenset()
        # What this process read of each record's payload (snapshot/store/verified.py keys):
        # None when its every CRC passed, else why it is damaged; and for the ones that
        # passed, the corrected bit flips met reading them whole (a repair scrubs those).
        self.read_results: dict[str, str | None] = {}
        self.corrected: dict[str, int] = {}
        self.damage: dict[str, RecordDamaged] = {}   # each reason's error, naming where

    @classmethod
    def replacing(cls, flash: Flash, reserved: set[int]) -> "Chain":
        """An empty chain to be written over a device that holds other data (jffs2) in the
        `reserved` blocks. No write touches them, the anchor's included: until the first
        commit the device holds that data, after it the chain. Anchor blocks are never
        reserved by a chain's own data: only by what is being replaced."""
        chain = cls.__new__(cls)
        chain.flash = flash
        chain.scan = scan_anchors(flash)
        chain.mark = read_mark(flash, chain.scan)
        chain._list(Anchor(chain.scan.max_gen))
        chain._gen = chain.scan.max_gen
        chain.reserved = frozenset(reserved)
        chain.handed_out = set()
        chain.read_results = {}
        chain.corrected = {}
        chain.damage = {}
        # Anchor blocks holding data being replaced that a commit may take only by an atomic
        # LEB change (ubifs's, on UBI: convert.py), so the data stays until the commit.
        chain.atomic_only = frozenset()
        return chain

    def next_gen(self) -> int:
        """A generation number no valid anchor entry or listed record has used."""
        self._gen += 1
        return self._gen

    def _committed(self, block: AnchorBlock, offset: int, data: bytes) -> None:
        anchor = unpack_anchor(data)
        block.newest, block.newest_offset, block.end = anchor, offset, offset + len(data)
        block.torn = False
        self.scan.max_gen = max(self.scan.max_gen, anchor.gen)
        self._list(anchor)

    def _list(self, anchor: Anchor) -> None:
        self.anchor = anchor
        self.records = [self._locate(e) for e in anchor.records if e.type not in NOT_RECORDS]
        # The last automatic rollback, kept until the next one (FORMAT.md §3).
        self.note = next((e for e in anchor.records if e.type == NOTE), None)
        # The fleet channel's memory (FORMAT.md §3, type 5), carried by every commit.
        self.fleet = next((e for e in anchor.records if e.type == FLEET), None)
        self._listed = {b for r in self.records for b in r.blocks}
        self._check_directory()

    @property
    def mark_pending(self) -> bool:
        """The mark block is not the chain's yet: every commit says so (a MARK entry) until
        finish_mark() writes it."""
        return self.mark.kind not in ("anchor", "unreadable")

    @property
    def snapshots(self) -> list[Record]:
        """Every snapshot record, in order: confirmed ones, then any on trial or failed."""
        return [r for r in self.records if r.entry.type == SNAPSHOT]

    @property
    def volatiles(self) -> list[Record]:
        return [r for r in self.records if r.entry.type == VOLATILE]

    @property
    def trial(self) -> Record | None:
        """The record on trial, if one is pending."""
        return next((r for r in self.records if r.entry.state == TRIAL), None)

    @property
    def failed(self) -> Record | None:
        """A trial that failed, listed until it is rolled back or a write replaces it."""
        return next((r for r in self.records if r.entry.state == FAILED), None)

    def view(self, tried: bool = True) -> tuple[list[Record], Record | None]:
        """The snapshots and the volatile record to apply: with the pending trial (`tried`,
        what a boot tries), or as if it had failed (the state before it). A failed trial is
        in neither; with no trial pending they are the same."""
        snapshots = [r for r in self.snapshots
                     if r.entry.state == CONFIRMED or (tried and r.entry.state == TRIAL)]
        live = [r for r in self.volatiles if r.entry.state != FAILED]
        if self.trial is None:
            volatile = live[-1] if live else None
        elif tried:
            volatile = next((r for r in reversed(live) if not r.entry.fallback), None)
        else:
            volatile = next((r for r in live if r.entry.fallback), None)
        return snapshots, volatile

    @property
    def volatile(self) -> Record | None:
        """The volatile record a boot applies now (the trial's, while one is tried)."""
        return self.view()[1]

    def _locate(self, entry: DirEntry) -> Record:
        g = self.flash.geometry
        blocks = []
        for extent in entry.extents:
            for b in extent.blocks():
                # Bounded by the device: an extent outside it is reported, not walked.
                if not 0 <= b < g.blocks:
                    break
                if not self.flash.is_bad(b):
                    blocks.append(b)
        return Record(entry, blocks, Layout(entry.header.size, entry.payload_length,
                                            g.writesize))

    def _check_directory(self) -> None:
        """Find inconsistencies inside a CRC-valid anchor (only a bug or a crafted image has
        any): `problems` says what, `valid_prefix` counts the records before the first."""
        problems, owner = [], {}
        self.valid_prefix = len(self.records)
        g = self.flash.geometry
        for index, record in enumerate(self.records):
            name = describe(record, index)
            for extent in record.entry.extents:
                if not (ANCHOR_BLOCKS <= min(extent.first, extent.last)
                        and max(extent.first, extent.last) < g.blocks):
                    problems.append(f"{name} lists blocks outside the data area")
            if len(record.blocks) * g.erasesize < record.layout.end:
                problems.append(f"{name} has fewer good blocks than its length needs")
            for b in record.blocks:
                if b in owner:
                    problems.append(f"{name} shares block {b} with {owner[b]}")
                owner[b] = name
            if problems and self.valid_prefix == len(self.records):
                self.valid_prefix = index
        # FORMAT.md §3: at most one record is on trial or failed; a snapshot that is is the
        # last snapshot.
        unconfirmed = [i for i, r in enumerate(self.records) if r.entry.state != CONFIRMED]
        if len(unconfirmed) > 1:
            problems.append(f"{len(unconfirmed)} records are on trial or failed; at most one "
                            f"may be")
        for index in unconfirmed:
            record = self.records[index]
            if record.entry.type == SNAPSHOT and record is not self.snapshots[-1]:
                problems.append(f"{describe(record, index)} is on trial or failed but is not "
                                f"the last snapshot")
        self.problems = problems

    # -- reading records --------------------------------------------------------------------

    def read_header(self, record: Record, flips_seen: list | None = None) -> RecordHeader:
        """Check a record's header and commit marker against the anchor (no payload read);
        corrected bit flips met on the way are added to `flips_seen`."""
        head = self._read_stream(record, 0, record.layout.header_size, flips_seen)
        try:
            header = RecordHeader.unpack(head)
        except FormatError as e:
            raise self._damaged(record, 0, str(e)) from None
        if header != record.entry.header:
            raise self._damaged(record, 0, "header does not match the anchor (block reused)")
        commit_at = record.layout.commit_offset
        try:
            commit = Commit.unpack(self._read_stream(record, commit_at, COMMIT.size,
                                                     flips_seen))
        except FormatError as e:
            raise self._damaged(record, commit_at, str(e)) from None
        e = record.entry
        if commit != Commit(e.gen, e.payload_length, e.payload_crc, e.header_crc):
            raise self._damaged(record, commit_at, "commit marker does not match the anchor")
        return header

    def payload(self, record: Record) -> "PayloadReader":
        """A stream over the record's payload, its header and commit marker checked first."""
        flips: list[int] = []
        self.read_header(record, flips)
        return PayloadReader(self, record, sum(flips))

    def verify(self, record: Record) -> int:
        """Read a whole record and check every CRC. Returns the corrected bit flips seen."""
        reader = self.payload(record)
        while reader.read(READ_CHUNK):
            pass
        return reader.corrected

    def read_whole(self, reader: "PayloadReader") -> None:
        """Note that `reader`'s payload was read to its end and passed its CRC, here or in a
        child process that read it for this one (archive.Payloads): what a repair and the
        ledger (snapshot/store/verified.py) then know of it without reading it again."""
        key = record_key(reader.record.entry)
        self.read_results[key] = None
        self.corrected[key] = reader.corrected

    def _read_stream(self, record: Record, start: int, length: int,
                     flips_seen: list | None = None) -> bytes:
        es = self.flash.geometry.erasesize
        chunks = []
        while length > 0:
            index, offset = divmod(start, es)
            if index >= len(record.blocks):
                raise self._damaged(record, start, "runs past its blocks")
            n = min(length, es - offset)
            data, flips = self.flash.read_ecc(self.flash.geometry.block_offset(
                record.blocks[index]) + offset, n)
            if flips.uncorrectable:
                raise self._damaged(record, start, "uncorrectable bit flips")
            if flips_seen is not None and flips.corrected:
                flips_seen.append(flips.corrected)
            chunks.append(data)
            start += n
            length -= n
        return b"".join(chunks)

    def _damaged(self, record: Record, stream_offset: int, reason: str) -> RecordDamaged:
        index = stream_offset // self.flash.geometry.erasesize
        block = record.blocks[index] if index < len(record.blocks) else None
        error = RecordDamaged(self.flash.name, describe(record, self.records.index(record)),
                              block, reason)
        key = record_key(record.entry)
        self.read_results[key], self.damage[key] = reason, error
        return error

    # -- free space --------------------------------------------------------------------------

    def in_use(self, block: int) -> bool:
        """Whether a write must not touch `block`: the anchor lists it, it holds data being
        replaced (reserved), or this operation has already handed it to a record."""
        return block in self._listed or block in self.reserved or block in self.handed_out

    def free_blocks(self) -> list[int]:
        return [b for b in range(ANCHOR_BLOCKS, self.flash.geometry.blocks)
                if not self.in_use(b) and not self.flash.is_bad(b)]

    def free_bytes(self) -> int:
        return len(self.free_blocks()) * self.flash.geometry.erasesize

    def used_bytes(self) -> int:
        """The flash the listed records take: whole good blocks each."""
        return sum(len(r.blocks) for r in self.records) * self.flash.geometry.erasesize


def describe(record: Record, index: int) -> str:
    e = record.entry
    if e.type != VOLATILE:
        return f"snapshot {index + 1}"
    if e.fallback:
        return "the volatile record kept for the trial"
    return {TRIAL: "the volatile record on trial",
            FAILED: "the failed volatile record"}.get(e.state, "the volatile record")


class PayloadReader:
    """A file-like stream over a record's payload, read from flash in READ_CHUNK pieces.
    Reaching the end checks the payload CRC; a mismatch or an uncorrectable read raises
    RecordDamaged. `corrected` counts the corrected bit flips met so far, the header's
    (`header_flips`) included."""

    def __init__(self, chain: Chain, record: Record, header_flips: int = 0):
        self.chain = chain
        self.record = record
        self.length = record.entry.payload_length
        self._header_flips = header_flips
        # The payload's flips, in memory shared with a child process that reads the stream
        # for the one that made it (archive.Payloads forks one): the maker learns of them
        # all the same, and a boot scrubs the record.
        import mmap
        self._shared_flips = mmap.mmap(-1, _FLIPS.size)
        self._flips: list[int] = []
        self._fetched = 0        # payload bytes read from flash so far
        self._crc = crc32(b"")
        self._buffer = memoryview(b"")

    def read(self, n: int = -1) -> bytes:
        if not self._buffer:
            self._fetch()
        if n < 0:
            n = len(self._buffer)
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return bytes(data)

    def _fetch(self) -> None:
        length = self.length
        # The first reads are small, so whoever decompresses can start sooner; each after
        # the first doubles what was read so far.
        n = min(max(FIRST_READ, self._fetched), READ_CHUNK, length - self._fetched)
        if n <= 0:
            return
        data = self.chain._read_stream(self.record, self.record.layout.payload_offset
                                       + self._fetched, n, self._flips)
        self._fetched += n
        self._crc = crc32(data, self._crc)
        if self._flips:
            _FLIPS.pack_into(self._shared_flips, 0, sum(self._flips))
        if self._fetched == length:
            if self._crc != self.record.entry.payload_crc:
                raise self.chain._damaged(self.record, self.record.layout.payload_offset,
                                          "payload CRC mismatch")
            self.chain.read_whole(self)
        self._buffer = memoryview(data)

    @property
    def corrected(self) -> int:
        return self._header_flips + _FLIPS.unpack_from(self._shared_flips)[0]


class Allocator:
    """Hands out free good blocks to one record, in one direction: upwards from the front for
    snapshots, downwards from the tail (the back buffer) for the volatile. Blocks the current
    anchor lists are never handed out, so the old state survives until the commit; nor is a
    block the operation already gave to another record (Chain.handed_out is the one list of
    them all, so the records one operation writes, such as a scrub and the new record of a
    push, never share a block). Records the extents it handed out; a bad block inside an
    extent is skipped by readers too."""

    def __init__(self, chain: Chain, downwards: bool):
        self.chain = chain
        self.flash = chain.flash
        blocks = self.flash.geometry.blocks
        order = range(blocks - 1, ANCHOR_BLOCKS - 1, -1) if downwards else \
            range(ANCHOR_BLOCKS, blocks)
        self._order = iter(order)
        self._open = False
        self.extents: list[Extent] = []
        self.handed_out = 0

    def next(self) -> int:
        for block in self._order:
            if self.chain.in_use(block):
                self._open = False
                continue
            if self.flash.is_bad(block):
                continue
            self.chain.handed_out.add(block)
            if self._open:
                self.extents[-1] = Extent(self.extents[-1].first, block)
            else:
                self.extents.append(Extent(block, block))
                self._open = True
            self.handed_out += 1
            return block
        raise FlashFull(f"{self.flash.name}: flash full: the record does not fit in the "
                        f"{self.handed_out} free blocks; nothing was changed")


class RecordWriter:
    """Streams one record into free blocks: header, payload (through write()), commit marker.
    Nothing it writes is visible until Chain.commit() lists the DirEntry finish() returns.
    A block whose erase or program fails is marked bad and the write goes on in the next."""

    def __init__(self, chain: Chain, rtype: int, seq: int, message: str, compression: int,
                 progress=None, created: int | None = None):
        self.chain = chain
        self.flash = chain.flash
        created = int(time.time()) if created is None else created
        self.header = RecordHeader(rtype, compression, seq, chain.next_gen(), created, message)
        # Packed first: a field that does not fit the format refuses the record here, before
        # anything is written.
        head = self.header.pack()
        self.alloc = Allocator(chain, downwards=rtype == VOLATILE)
        self.progress = progress
        g = self.flash.geometry
        self._layout = Layout(len(head), 0, g.writesize)
        self._pending = bytearray(head + b"\xff" * (self._layout.payload_offset - len(head)))
        self._block: int | None = None
        self._block_data = bytearray()
        self.length = 0
        self._crc = crc32(b"")

    def write(self, data: bytes) -> int:
        self.length += len(data)
        self._crc = crc32(data, self._crc)
        self._pending += data
        self._flush_full_blocks()
        return len(data)

    def finish(self) -> DirEntry:
        """Program the rest and the commit marker; returns the entry to commit."""
        layout = Layout(self.header.size, self.length, self.flash.geometry.writesize)
        self._pending += b"\xff" * (layout.commit_offset - layout.payload_offset - self.length)
        self._flush_full_blocks()
        if self._pending:
            self._program(bytes(self._pending))
            self._pending.clear()
        commit = Commit(self.header.gen, self.length, self._crc, self.header.crc).pack()
        self._pending += commit + b"\xff" * (layout.end - layout.commit_offset - len(commit))
        self._flush_full_blocks()
        if self._pending:
            self._program(bytes(self._pending))
        h = self.header
        return DirEntry(h.type, h.compression, h.seq, h.gen, h.created, self.length,
                        self._crc, h.crc, tuple(self.alloc.extents), h.message)

    def _room(self) -> int:
        es = self.flash.geometry.erasesize
        if self._block is None or len(self._block_data) == es:
            return es
        return es - len(self._block_data)

    def _flush_full_blocks(self) -> None:
        while len(self._pending) >= self._room():
            room = self._room()
            self._program(bytes(self._pending[:room]))
            del self._pending[:room]

    def _program(self, chunk: bytes) -> None:
        es = self.flash.geometry.erasesize
        if self._block is None or len(self._block_data) == es:
            self._start_block()
        while True:
            try:
                self.flash.write(self.flash.geometry.block_offset(self._block)
                                 + len(self._block_data), chunk)
                break
            except MtdError as e:
                if e.errno != errno.EIO:
                    raise
                # The block failed: retire it and carry what it already held to the next one.
                carried = bytes(self._block_data)
                self.flash.mark_bad(self._block)
                self._start_block()
                chunk = carried + chunk
        self._block_data += chunk
        if len(self._block_data) == es and self.progress:
            self.progress(es)

    def _start_block(self) -> None:
        while True:
            block = self.alloc.next()
            try:
                self.flash.erase(self.flash.geometry.block_offset(block),
                                 self.flash.geometry.erasesize)
            except MtdError as e:
                if e.errno != errno.EIO:
                    raise
                self.flash.mark_bad(block)
                continue
            self._block, self._block_data = block, bytearray()
            return


def rewrite(chain: Chain, record: Record, progress, seq: int | None = None) -> DirEntry:
    """`record` copied into free blocks (its payload as it is); `seq`: a new number for it
    (squash renumbers what lies above the snapshots it merges)."""
    e = record.entry
    writer = RecordWriter(chain, e.type, e.seq if seq is None else seq, e.message,
                          e.compression, progress, e.created)
    source = chain.payload(record)
    while chunk := source.read(64 * 1024):
        writer.write(chunk)
    # The same record in new blocks: where it stands in a trial does not change.
    return writer.finish()._replace(flags=e.flags)


def _erased(flash: Flash, offset: int, length: int) -> bool:
    return flash.read(offset, length) == b"\xff" * length


# commit()'s default note: the chain's own (the last rollback stays listed).
KEEP = object()

#: The devices on which this process began a step that readers see (an anchor entry
#: programmed, an anchor block rewritten or erased), each True once the step completed: the
#: steps before them write only free blocks, which no reader looks at. An interrupted
#: command says from it whether its device changed (snapshot/cli/common.py).
VISIBLE_STEPS: dict[str, bool] = {}


class visible_step:   # lower case: used as a function, `with visible_step(flash)`
    """`with visible_step(flash):` the write that commits; VISIBLE_STEPS says it began, and
    whether it ended."""

    def __init__(self, flash: Flash):
        self.name = flash.name

    def __enter__(self) -> None:
        VISIBLE_STEPS[self.name] = False

    def __exit__(self, failed, *exc) -> None:
        if failed is None:
            VISIBLE_STEPS[self.name] = True


def commit(chain: Chain, entries: list[DirEntry], note=KEEP, fleet=KEEP) -> None:
    """Append an anchor entry listing `entries` (and `note`, the last rollback, and `fleet`,
    the fleet channel's memory: by default the ones the chain has): the single step that
    makes a write visible.

    The entry goes after the newest one when the bytes there read erased, otherwise into the
    anchor block holding the oldest entry, which is erased first; the newest entry is never
    touched, and neither is the mark block (DESIGN.md §11). While the mark block is still to
    be written, the entry carries a MARK entry saying so. A block that fails is marked bad and
    the next one is tried."""
    flash, g = chain.flash, chain.flash.geometry
    note = chain.note if note is KEEP else note
    fleet = chain.fleet if fleet is KEEP else fleet
    extra = tuple(e for e in (note, fleet) if e) + ((MARK_ENTRY,) if chain.mark_pending else ())
    data = _padded(flash, Anchor(chain.next_gen(), tuple(entries) + extra))
    if len(data) > g.erasesize:
        raise FlashFull(f"{flash.name}: too many records for one anchor entry; nothing was "
                        f"changed")
    current = chain.scan.newest
    if current is not None and current.block != chain.mark.block and \
            current.end + len(data) <= g.erasesize and \
            _erased(flash, g.block_offset(current.block) + current.end, len(data)):
        try:
            with visible_step(flash):
                flash.write(g.block_offset(current.block) + current.end, data)
            chain._committed(current, current.end, data)
            return
        except MtdError as e:
            if e.errno != errno.EIO:
                raise
    others = [b for b in chain.scan.blocks
              if not b.bad and b is not current and b.block not in chain.reserved
              and b.block != chain.mark.block]
    target = write_fresh_anchor_block(
        flash, sorted(others, key=lambda b: b.newest.gen if b.newest else -1), data,
        chain.atomic_only)
    chain._committed(target, 0, data)


#: The directory entry that says the mark block is still to be written (FORMAT.md §3).
MARK_ENTRY = DirEntry(MARK, 0, 0, 0, 0, 0, 0, 0, (), "")


def _padded(flash: Flash, anchor: Anchor) -> bytes:
    data = anchor.pack()
    return data + b"\xff" * (round_up(len(data), flash.geometry.writesize) - len(data))


def finish_mark(chain: Chain) -> bool:
    """Make the mark block the chain's: erase it, then program one anchor entry (the chain as
    it is, without the MARK entry) at its start (on UBI, both in one atomic LEB change).
    Until then the newest entry's MARK keeps the
    chain visible over an erased or torn mark block; a mark block that still holds what was
    there before (jffs2, 0xdeadc0de) keeps it invisible. Returns whether it wrote."""
    wrote = False
    while chain.mark_pending and chain.mark.block is not None:
        flash = chain.flash
        block = next(b for b in chain.scan.blocks if b.block == chain.mark.block)
        data = _padded(flash, Anchor(chain.next_gen(),
                                     tuple(e for e in chain.anchor.records if e.type != MARK)))
        try:
            # Erased also when it reads erased: a torn NAND page can read all 0xFF.
            with visible_step(flash):
                rewrite_block(flash, block.block, data)
        except MtdError as e:
            if e.errno != errno.EIO:
                raise
            # The next good block is the mark block now, as for the stock tools, which skip
            # bad blocks; it holds the chain's entries, or is made to.
            flash.mark_bad(block.block)
            block.bad = True
            chain.mark = read_mark(flash, chain.scan)
            continue
        block.first_valid = True
        chain.mark = Mark(block.block, "anchor")
        chain._committed(block, 0, data)
        wrote = True
    return wrote


def rewrite_block(flash: Flash, block: int, data: bytes, atomic: bool = False) -> None:
    """Make `block` hold `data` and nothing else. On a UBI volume that is one atomic LEB
    change, so a cut leaves the block as it was or as wanted (DESIGN.md §14); elsewhere an
    erase, then a program, and a cut between them leaves the block erased. UBI refuses the
    change (EBUSY) while another process has the volume open, even only to read; the block
    is then rewritten as on raw flash, unless `atomic` (MtdError EBUSY, nothing written)."""
    g = flash.geometry
    if g.is_ubi:
        try:
            flash.change(block, data)
            return
        except MtdError as e:
            if e.errno != errno.EBUSY or atomic:
                raise
    flash.erase(g.block_offset(block), g.erasesize)
    flash.write(g.block_offset(block), data)


def write_fresh_anchor_block(flash: Flash, candidates: list[AnchorBlock], data: bytes,
                             atomic_only: frozenset[int] = frozenset()) -> AnchorBlock:
    """Erase the first usable candidate and program `data` at its start (atomically, for a
    block in `atomic_only`). A block whose erase or program fails is marked bad and the next
    candidate is tried."""
    for target in candidates:
        try:
            with visible_step(flash):
                rewrite_block(flash, target.block, data, target.block in atomic_only)
        except MtdError as e:
            if e.errno != errno.EIO:
                raise
            flash.mark_bad(target.block)
            target.bad = True
            continue
        return target
    raise AnchorWornOut(f"{flash.name}: no block of the anchor area can be written")
