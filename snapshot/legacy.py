"""The old fstools snapshot chain (2014, `OWRT` at the partition's start): found and read for
`snapshot convert`, and for the read-only boot of a chain not converted yet (FORMAT.md §8,
DESIGN.md §8). Nothing here writes that format.

Every loop is bounded by the partition: the walk advances at least one block per entry, the
sentinel scan looks at each block once, and a payload is read only after its length has been
checked against the format's limit and the partition's end. Damage never raises and never
hangs: it ends the import at the last good entry, and `OldChain.problems` says where and why.
"""
import hashlib
import struct
import tarfile
import zlib
from dataclasses import dataclass

from mtd import Flash, MtdError
from snapshot import archive
from snapshot.capture import compressor, header
from snapshot.errors import SnapshotError
from snapshot.restore import Checks, UnsafeEntry, clean_name

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


# -- the old archives, rewritten as records --------------------------------------------------

#: What the old overlayfs (and the old tool's archives) have in place of a whiteout: a
#: symlink to this.
WHITEOUT_TARGET = "(overlay-whiteout)"
_TYPES = ((tarfile.TarInfo.isreg, archive.FILE), (tarfile.TarInfo.islnk, archive.HARDLINK),
          (tarfile.TarInfo.issym, archive.SYMLINK), (tarfile.TarInfo.isdir, archive.DIRECTORY),
          (tarfile.TarInfo.isfifo, archive.FIFO), (tarfile.TarInfo.ischr, archive.CHAR),
          (tarfile.TarInfo.isblk, archive.BLOCK))


class Layers:
    """What the records imported so far put at each path: what restore finds in the target
    when it applies the next one at boot, for that one's safety checks. Names only, no
    data."""

    def __init__(self):
        self.kinds: dict[str, str] = {}

    def absorb(self, kinds: dict[str, str]) -> None:
        """Add one record's entries (restore.Checks.kinds), in archive order: a directory
        merges with one there; anything else replaces what was there, below it included."""
        for name, kind in kinds.items():
            if kind != archive.DIRECTORY and self.kinds.get(name) == archive.DIRECTORY:
                below = name + "/"
                self.kinds = {n: k for n, k in self.kinds.items() if not n.startswith(below)}
            self.kinds[name] = kind


class _LayerChecks(Checks):
    """restore's checks of one record, with the records before it as the target."""

    def __init__(self, layers: Layers):
        super().__init__(None)
        self.layers = layers

    def in_target(self, path: str) -> str | None:
        kind = self.layers.kinds.get(path)
        return kind if kind in (None, archive.DIRECTORY, archive.SYMLINK) else archive.FILE


def _entry(member: tarfile.TarInfo) -> archive.Entry | None:
    """An old archive's member as restore would read it, an old-style whiteout as an
    overlayfs one; None for the archived directory itself (`.`)."""
    if not [part for part in member.name.split("/") if part not in ("", ".")]:
        return None
    kind = next((k for test, k in _TYPES if test(member)), "unsupported")
    major, minor, mode = member.devmajor, member.devminor, member.mode & 0o7777
    if kind == archive.SYMLINK and member.linkname == WHITEOUT_TARGET:
        kind, major, minor, mode = archive.CHAR, 0, 0, 0
    xattrs = {key[len(archive.XATTR_PREFIX):]: value.encode("utf-8", "surrogateescape")
              for key, value in member.pax_headers.items()
              if key.startswith(archive.XATTR_PREFIX)}
    # overlayfs bookkeeping other than the opaque mark means nothing on another filesystem
    # (the old overlayfs marked its whiteout symlinks with one), as capture leaves it off.
    xattrs = {key: value for key, value in xattrs.items()
              if key in archive.OPAQUE_XATTRS or not key.startswith(archive.OVERLAY_PRIVATE)}
    return archive.Entry(member.name, kind, mode, member.uid, member.gid, int(member.mtime),
                         member.size if kind == archive.FILE else 0,
                         member.linkname if kind in (archive.SYMLINK, archive.HARDLINK) else "",
                         major, minor, xattrs)


class _Data:
    """A FILE entry's data in an old archive, as restore (copy_to) and a tar writer (read)
    take it; an archive that cannot be read raises LegacyDamaged."""

    def __init__(self, data, what: str):
        self._data = data
        self._what = what

    def read(self, n: int = -1) -> bytes:
        try:
            return self._data.read(n)
        except (tarfile.TarError, zlib.error, EOFError) as e:
            raise LegacyDamaged(f"{self._what}: its archive cannot be read: {e}") from None

    def copy_to(self, fd: int) -> None:
        while chunk := self.read(READ_CHUNK):
            archive._send(fd, chunk)


def converted(source: Payload, layers: Layers, warnings: list[str]):
    """(data, entry) for each entry of the old entry's archive (gzip tar) as a record holds
    it, read as a stream: names relative, old-style whiteouts as overlayfs whiteouts. `data`
    is a FILE's contents (read before the next entry is asked for), else None. What restore
    would refuse (against `layers`, the records before it) is left out, with a line each in
    `warnings`. Once the archive is read to its end and its MD5 matches, `layers` takes its
    entries; an archive that cannot be read, or an MD5 that does not match, raises
    LegacyDamaged (and `layers` is as it was). `rewrite` stores these entries; the boot of
    an unconverted old chain applies them (operations.apply_legacy)."""
    checks = _LayerChecks(layers)
    what = source.entry.describe()
    try:
        with tarfile.open(fileobj=source, mode="r|gz") as old:
            for member in old:
                entry = _entry(member)
                if entry is None:
                    continue
                try:
                    parent = clean_name(entry.name).rpartition("/")[0]
                    # restore makes no directory an archive does not hold (the old tool's
                    # archives, of a whole upper dir, hold every one).
                    if parent and parent not in checks.kinds and parent not in layers.kinds:
                        raise UnsafeEntry(entry.name, f"its directory {parent!r} is in no "
                                                      f"archive before it")
                    entry.name = checks.check(entry)
                    if entry.type == archive.HARDLINK:
                        entry.linkname = clean_name(entry.linkname, entry.name)
                except UnsafeEntry as e:
                    warnings.append(f"{what}: {e}; left out")
                    continue
                yield (_Data(old.extractfile(member), what)
                       if entry.type == archive.FILE else None), entry
        source.finish()
    except (tarfile.TarError, zlib.error, EOFError) as e:
        raise LegacyDamaged(f"{what}: its archive cannot be read: {e}") from None
    layers.absorb(checks.kinds)


def rewrite(source: Payload, out, compression: int, layers: Layers) -> list[str]:
    """Stream the old entry's archive into `out` as a record's payload, entry by entry
    (`converted`), headers as capture writes them. Returns the warnings, one per entry left
    out; `layers` takes the record's entries. An archive that cannot be read, or an MD5 that
    does not match once it is read to its end, raises LegacyDamaged (`out` then holds part
    of it)."""
    warnings: list[str] = []
    with compressor(out, compression) as stream, \
            tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for data, entry in converted(source, layers, warnings):
            tar.addfile(header(entry), data)
    return warnings
