"""The on-flash format, as pure bytes: pack, unpack and check. No I/O here.

Every constant and field below is specified in FORMAT.md; the section is cited beside it.
The format version is independent of the package version.
"""
import struct
from zlib import crc32

from mtd.fields import fields
from snapshot.errors import FormatLimit

FORMAT_VERSION = 4          # FORMAT.md: the format as a whole
RECORD_VERSION = 1          # FORMAT.md §4: record headers (unchanged since version 1)
ANCHOR_VERSION = 2          # FORMAT.md §3: anchor entries as written
ANCHOR_VERSIONS = (1, 2)    # FORMAT.md §3: as read (version 1 had no flags and no note)

# FORMAT.md §1: CRC-32 (IEEE 802.3: poly 0x04C11DB7 reflected, init and xorout 0xFFFFFFFF) is
# zlib's crc32 (imported above); crc32(data, previous) continues a running CRC.

ANCHOR_BLOCKS = 4          # FORMAT.md §2: blocks 0..3 form the anchor area
MAX_MESSAGE = 255          # FORMAT.md §4: message bytes (UTF-8)

SNAPSHOT = 1               # FORMAT.md §4: record types
VOLATILE = 2
TYPE_NAMES = {SNAPSHOT: "snapshot", VOLATILE: "volatile"}
NOTE = 3                   # FORMAT.md §3: a directory entry that is no record (the last rollback)
MARK = 4                   # FORMAT.md §3: no record either: the mark block is still to be written
FLEET = 5                  # FORMAT.md §3: no record: the fleet channel's memory on this unit
NOT_RECORDS = (NOTE, MARK, FLEET)

# FORMAT.md §3: a directory entry's flags. Bits 0-1 the record's state, bit 2 a volatile kept
# to come back if the trial fails, bits 8-11 the boots the trial has had, bits 12-15 the boots
# it may have; the rest 0.
STATE_MASK = 0x0003
CONFIRMED, TRIAL, FAILED = 0, 1, 2
STATE_NAMES = {CONFIRMED: "confirmed", TRIAL: "trial", FAILED: "failed"}
FALLBACK = 0x0004
ATTEMPTS_SHIFT, LIMIT_SHIFT = 8, 12
MAX_ATTEMPTS = 15
_DEFINED_FLAGS = STATE_MASK | FALLBACK | MAX_ATTEMPTS << ATTEMPTS_SHIFT | MAX_ATTEMPTS << LIMIT_SHIFT

COMPRESSION_NONE = 0       # FORMAT.md §4: payload compression
COMPRESSION_GZIP = 1
COMPRESSION_XZ = 2
#: The names the commands and bundle manifests give them.
COMPRESSIONS = {"gzip": COMPRESSION_GZIP, "xz": COMPRESSION_XZ}

# FORMAT.md §3: anchor entry header.
ANCHOR_MAGIC = b"SnpA"
ANCHOR_HEADER = struct.Struct("<4sIHHIQ")
assert ANCHOR_HEADER.size == 24

# FORMAT.md §3: one directory entry inside an anchor entry, followed by its extents and message.
DIR_ENTRY = struct.Struct("<BBHIQQQIIHH")
assert DIR_ENTRY.size == 44
EXTENT = struct.Struct("<II")
assert EXTENT.size == 8

# FORMAT.md §4: record header, at the start of a record's first block.
RECORD_MAGIC = b"SnpR"
RECORD_HEADER = struct.Struct("<4sIHBBIQQHH")
assert RECORD_HEADER.size == 36

# FORMAT.md §5: commit marker, after the payload.
COMMIT_MAGIC = b"SnpC"
COMMIT = struct.Struct("<4sIQQII")
assert COMMIT.size == 32


class FormatError(ValueError):
    """Bytes that are not a valid structure of this format; the message says which check failed."""


def round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


# Every limit a reader enforces is enforced here, where the bytes are packed, so no caller
# can write what a reader refuses: pack() raises FormatLimit before anything is written.

def _fits(what: str, value: int, bits: int) -> int:
    if not isinstance(value, int) or not 0 <= value < 1 << bits:
        raise FormatLimit(f"{what} {value!r} does not fit the on-flash format "
                          f"(0..{(1 << bits) - 1})")
    return value


def message_bytes(message: str) -> bytes:
    """A record's message as stored (FORMAT.md §4: UTF-8, at most MAX_MESSAGE bytes)."""
    try:
        data = message.encode()
    except UnicodeEncodeError:
        raise FormatLimit("the message is not valid UTF-8") from None
    if len(data) > MAX_MESSAGE:
        raise FormatLimit(f"the message is {len(data)} bytes long; at most {MAX_MESSAGE} "
                          f"bytes fit")
    return data


def _check_record(rtype: int, compression: int, seq: int, gen: int, created: int) -> None:
    if rtype not in TYPE_NAMES:
        raise FormatLimit(f"record type {rtype!r} is not one of {sorted(TYPE_NAMES)}")
    if compression not in (COMPRESSION_GZIP, COMPRESSION_XZ):
        raise FormatLimit(f"compression {compression!r} is not gzip (1) or xz (2)")
    _fits("sequence number", seq, 32)
    _fits("generation", gen, 64)
    _fits("creation time", created, 64)


class Extent(fields("Extent", "first last")):
    """Physical blocks first..last, walked in that direction (descending when first > last).
    Every block in the range that is not bad belongs to the record."""
    # first: int, last: int
    __slots__ = ()

    def blocks(self) -> range:
        step = 1 if self.last >= self.first else -1
        return range(self.first, self.last + step, step)


class RecordHeader(fields("RecordHeader", "type compression seq gen created message")):
    # type: int, compression: int, seq: int, gen: int, created: int, message: str
    __slots__ = ()

    def pack(self) -> bytes:
        """The header's bytes; FormatLimit if a field does not fit (FORMAT.md §4)."""
        message = message_bytes(self.message)
        _check_record(self.type, self.compression, self.seq, self.gen, self.created)
        body = RECORD_HEADER.pack(RECORD_MAGIC, 0, RECORD_VERSION, self.type, self.compression,
                                  self.seq, self.gen, self.created, len(message), 0) + message
        return body[:4] + struct.pack("<I", crc32(body[8:])) + body[8:]

    @classmethod
    def unpack(cls, data: bytes) -> "RecordHeader":
        if len(data) < RECORD_HEADER.size:
            raise FormatError("record header truncated")
        magic, crc, version, rtype, compression, seq, gen, created, mlen, _ = \
            RECORD_HEADER.unpack_from(data)
        if magic != RECORD_MAGIC:
            raise FormatError("no record header (wrong magic)")
        if mlen > MAX_MESSAGE or RECORD_HEADER.size + mlen > len(data):
            raise FormatError(f"record header claims a {mlen}-byte message")
        if crc != crc32(data[8:RECORD_HEADER.size + mlen]):
            raise FormatError("record header CRC mismatch")
        if version != RECORD_VERSION:
            raise FormatError(f"record format version {version} is not {RECORD_VERSION}")
        if rtype not in TYPE_NAMES:
            raise FormatError(f"unknown record type {rtype}")
        message = data[RECORD_HEADER.size:RECORD_HEADER.size + mlen].decode(errors="replace")
        return cls(rtype, compression, seq, gen, created, message)

    @property
    def size(self) -> int:
        return RECORD_HEADER.size + len(message_bytes(self.message))

    @property
    def crc(self) -> int:
        return struct.unpack_from("<I", self.pack(), 4)[0]


class Commit(fields("Commit", "gen payload_length payload_crc header_crc")):
    # gen: int, payload_length: int, payload_crc: int, header_crc: int
    __slots__ = ()

    def pack(self) -> bytes:
        _fits("generation", self.gen, 64)
        _fits("payload length", self.payload_length, 64)
        _fits("payload CRC", self.payload_crc, 32)
        _fits("header CRC", self.header_crc, 32)
        body = COMMIT.pack(COMMIT_MAGIC, 0, self.gen, self.payload_length, self.payload_crc,
                           self.header_crc)
        return body[:4] + struct.pack("<I", crc32(body[8:])) + body[8:]

    @classmethod
    def unpack(cls, data: bytes) -> "Commit":
        if len(data) < COMMIT.size:
            raise FormatError("commit marker truncated")
        magic, crc, gen, length, payload_crc, header_crc = COMMIT.unpack_from(data)
        if magic != COMMIT_MAGIC:
            raise FormatError("no commit marker")
        if crc != crc32(data[8:COMMIT.size]):
            raise FormatError("commit marker CRC mismatch")
        return cls(gen, length, payload_crc, header_crc)


class Layout(fields("Layout", "header_size payload_length writesize")):
    """Where a record's parts lie in its byte stream (its blocks' bytes, concatenated).
    FORMAT.md §4: header at 0, payload at the next page boundary, commit marker at the page
    boundary after the payload."""
    # header_size: int, payload_length: int, writesize: int
    __slots__ = ()

    @property
    def payload_offset(self) -> int:
        return round_up(self.header_size, self.writesize)

    @property
    def commit_offset(self) -> int:
        return round_up(self.payload_offset + self.payload_length, self.writesize)

    @property
    def end(self) -> int:
        return self.commit_offset + round_up(COMMIT.size, self.writesize)


class DirEntry(fields("DirEntry", "type compression seq gen created payload_length "
                                  "payload_crc header_crc extents message flags",
                      defaults=(0,))):
    """What the anchor says about one record (FORMAT.md §3)."""
    # type: int, compression: int, seq: int, gen: int, created: int, payload_length: int
    # payload_crc: int, header_crc: int, extents: tuple[Extent, ...], message: str, flags: int
    __slots__ = ()

    def pack(self) -> bytes:
        """The directory entry's bytes; FormatLimit if a field does not fit (FORMAT.md §3)."""
        message = message_bytes(self.message)
        if self.type in NOT_RECORDS:
            if (self.compression, self.payload_length, self.payload_crc, self.header_crc,
                    self.extents, self.flags) != (0, 0, 0, 0, (), 0):
                raise FormatLimit("a note, mark or fleet entry has no payload, no extents "
                                  "and no flags")
            _fits("sequence number", self.seq, 32)
            _fits("generation", self.gen, 64)
            _fits("creation time", self.created, 64)
        else:
            _check_record(self.type, self.compression, self.seq, self.gen, self.created)
            Commit(self.gen, self.payload_length, self.payload_crc, self.header_crc).pack()
            if not self.extents:
                raise FormatLimit("a record needs at least one extent")
        _fits("extent count", len(self.extents), 16)
        for extent in self.extents:
            _fits("block number", extent.first, 32)
            _fits("block number", extent.last, 32)
        if self.flags & ~_DEFINED_FLAGS or self.flags & STATE_MASK not in STATE_NAMES or \
                (self.flags & FALLBACK and self.type != VOLATILE):
            raise FormatLimit(f"directory entry flags 0x{self.flags:x} are not valid")
        return (DIR_ENTRY.pack(self.type, self.compression, len(message), self.seq, self.gen,
                               self.created, self.payload_length, self.payload_crc,
                               self.header_crc, len(self.extents), self.flags)
                + b"".join(EXTENT.pack(e.first, e.last) for e in self.extents) + message)

    @property
    def header(self) -> RecordHeader:
        return RecordHeader(self.type, self.compression, self.seq, self.gen, self.created,
                            self.message)

    @property
    def state(self) -> int:
        return self.flags & STATE_MASK

    @property
    def fallback(self) -> bool:
        return bool(self.flags & FALLBACK)

    @property
    def attempts(self) -> int:
        """Boots the trial has had."""
        return self.flags >> ATTEMPTS_SHIFT & MAX_ATTEMPTS

    @property
    def max_attempts(self) -> int:
        """Boots the trial may have before it fails."""
        return self.flags >> LIMIT_SHIFT & MAX_ATTEMPTS

    def marked(self, state: int | None = None, fallback: bool | None = None,
               attempts: int | None = None, max_attempts: int | None = None) -> "DirEntry":
        """The same record with other flags (they are the anchor's alone: the record's own
        header and commit marker do not hold them, so changing them rewrites nothing)."""
        state = self.state if state is None else state
        fallback = self.fallback if fallback is None else fallback
        attempts = self.attempts if attempts is None else min(attempts, MAX_ATTEMPTS)
        limit = self.max_attempts if max_attempts is None else max_attempts
        return self._replace(flags=state | (FALLBACK if fallback else 0)
                             | attempts << ATTEMPTS_SHIFT | limit << LIMIT_SHIFT)


# FORMAT.md §3: the fleet entry. Its message: the expiry of the channel version it accepted
# (decimal), then the ids of the bundles whose trial failed here, oldest first, each after
# one space: at most MAX_FAILED of them, so that it always fits MAX_MESSAGE.
MAX_FAILED = 8
_HEX_DIGITS = frozenset("0123456789abcdef")


def is_bundle_id(text: str) -> bool:
    """Whether `text` is a bundle id as stored: 16 lower-case hexadecimal digits."""
    return len(text) == 16 and _HEX_DIGITS.issuperset(text)
MAX_CHANNEL_VERSION = (1 << 32) - 1
MAX_TIME = (1 << 63) - 1


class Fleet(fields("Fleet", "version published expires failed", defaults=(0, 0, 0, ()))):
    """What a unit remembers of its fleet channel, on flash (FORMAT.md §3, type 5): the highest
    channel version it accepted, that channel's signed `published` and `expires` times, and
    the bundles whose trial failed here."""
    # version: int, published: int, expires: int, failed: tuple[str, ...]
    __slots__ = ()

    def entry(self) -> DirEntry:
        """The directory entry; FormatLimit if a field does not fit."""
        _fits("channel version", self.version, 32)
        _fits("channel time", self.published, 64)
        _fits("channel expiry", self.expires, 64)
        if len(self.failed) > MAX_FAILED or not all(map(is_bundle_id, self.failed)):
            raise FormatLimit(f"the fleet entry holds at most {MAX_FAILED} bundle ids")
        message = " ".join([str(self.expires), *self.failed])
        return DirEntry(FLEET, 0, self.version, 0, self.published, 0, 0, 0, (), message)

    @classmethod
    def of(cls, entry: DirEntry | None) -> "Fleet":
        """The memory a fleet entry holds (None: nothing yet). Whatever of the message does
        not parse is left out, so that a bad entry never stops a reader."""
        if entry is None:
            return cls()
        words = entry.message.split(" ")
        expires = int(words[0]) if words[0].isascii() and words[0].isdigit() else 0
        expires = expires if expires < 1 << 64 else 0
        failed = tuple(w for w in words[1:] if is_bundle_id(w))[-MAX_FAILED:]
        return cls(entry.seq, entry.created, expires, failed)

    def failing(self, bundle_id: str) -> "Fleet":
        """The same memory with `bundle_id` among the failed, the oldest forgotten past
        MAX_FAILED."""
        kept = tuple(i for i in self.failed if i != bundle_id) + (bundle_id,)
        return self._replace(failed=kept[-MAX_FAILED:])


class Anchor(fields("Anchor", "gen records", defaults=((),))):
    """One anchor entry: the whole chain as of generation `gen` (FORMAT.md §3)."""
    # gen: int, records: tuple[DirEntry, ...]
    __slots__ = ()

    def pack(self) -> bytes:
        """The entry's bytes; FormatLimit if it does not fit (FORMAT.md §3). Whether it fits
        in an anchor block is the writer's to check (chain.commit)."""
        _fits("generation", self.gen, 64)
        _fits("record count", len(self.records), 16)
        body = b"".join(r.pack() for r in self.records)
        length = _fits("anchor entry length", ANCHOR_HEADER.size + len(body), 32)
        head = ANCHOR_HEADER.pack(ANCHOR_MAGIC, 0, ANCHOR_VERSION, len(self.records), length,
                                  self.gen)
        data = head + body
        return data[:4] + struct.pack("<I", crc32(data[8:])) + data[8:]


def anchor_length(header: bytes, room: int) -> int:
    """The length an anchor entry header claims, checked against the room left in its block
    before anything more is read. Raises FormatError for anything but a plausible header."""
    if len(header) < ANCHOR_HEADER.size:
        raise FormatError("anchor header truncated")
    magic, _, version, _, length, _ = ANCHOR_HEADER.unpack_from(header)
    if magic != ANCHOR_MAGIC:
        raise FormatError("no anchor entry (wrong magic)")
    if version not in ANCHOR_VERSIONS:
        raise FormatError(f"anchor format version {version} is not one of {ANCHOR_VERSIONS}")
    if not ANCHOR_HEADER.size <= length <= room:
        raise FormatError(f"anchor entry claims {length} bytes, {room} fit")
    return length


def unpack_anchor(data: bytes) -> Anchor:
    """Parse a whole anchor entry whose length anchor_length() accepted."""
    magic, crc, _, count, length, gen = ANCHOR_HEADER.unpack_from(data)
    if len(data) < length or crc != crc32(data[8:length]):
        raise FormatError("anchor entry CRC mismatch (torn or damaged)")
    records, pos = [], ANCHOR_HEADER.size
    for _ in range(count):
        if pos + DIR_ENTRY.size > length:
            raise FormatError("anchor directory overruns its entry")
        (rtype, compression, mlen, seq, rgen, created, plen, pcrc, hcrc, nextents,
         flags) = DIR_ENTRY.unpack_from(data, pos)
        pos += DIR_ENTRY.size
        end = pos + nextents * EXTENT.size + mlen
        if end > length:
            raise FormatError("anchor directory overruns its entry")
        extents = tuple(Extent(*EXTENT.unpack_from(data, pos + i * EXTENT.size))
                        for i in range(nextents))
        pos += nextents * EXTENT.size
        message = data[pos:pos + mlen].decode(errors="replace")
        pos += mlen
        records.append(DirEntry(rtype, compression, seq, rgen, created, plen, pcrc, hcrc,
                                extents, message, flags))
    if pos != length:
        raise FormatError("anchor directory does not fill its entry")
    return Anchor(gen, tuple(records))
