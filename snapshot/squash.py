"""Squash: snapshots 1..N merged into one record, so that what later snapshots deleted or
overwrote stops taking flash (DESIGN.md §2 "squash" has the step table, §13 the merge).

The merged record holds the upper directory that applying records 1..N in order gives
(restore.py's rules, DESIGN.md §7) with no lower layer known: every whiteout and opaque mark
that the result holds stays, since the squashfs below may have what it hides. So booting the
squashed chain shows exactly what booting the old one showed.

It streams, in two passes over the records; neither holds a snapshot in memory, and nothing
is staged on disk (/tmp is RAM on a router):

1. plan(): records 1..N are read through their tar headers (the data is decompressed and
   skipped) and each entry, after restore's own safety checks, is applied to a tree of
   paths as restore would apply it to a directory. The tree says which entry won at each
   path: for a file, which record's entry holds its data and metadata; for a directory, its
   newest entry with the opaque mark it keeps. Every CRC is checked on the way. Memory: one
   node per path of the result.
2. write(): the new archive gets first every winning entry without data (directories,
   symlinks, fifos, whiteouts), parents before children; then the records that hold winning
   files are read again, in order, and each winning file's data goes from its record
   straight into the new one, followed by the other paths hardlinked to it.

Then one commit lists the new record in place of 1..N, with the records above them rewritten
under their new numbers. Before that commit the old chain stands, whatever fails.
"""
import tarfile
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from snapshot import live
from snapshot.errors import ChainDamaged, FlashFull, RecordDamaged, SnapshotError
from snapshot.store.chain import Chain, Record, RecordWriter, commit, rewrite
from snapshot.store.format import (COMPRESSION_GZIP, CONFIRMED, FAILED, MAX_MESSAGE, SNAPSHOT,
                                   TRIAL, DirEntry, Layout, RecordHeader, round_up)
from snapshot.tree import archive
from snapshot.tree.archive import (DIRECTORY, FILE, HARDLINK, OPAQUE_XATTRS, XATTR_PREFIX,
                                   ArchiveError, Entry)
from snapshot.tree.capture import EntryData, compressed_bound, compressor, header
from snapshot.tree.restore import OPAQUE, Checks, clean_name

_BLOCK = 512
# What a tar entry can cost beyond its data: its header, and a pax header with its records
# (a pax record is its key and value and at most this many bytes more).
_PAX_RECORD = 64
# The end of an archive (two zero blocks), padded to tarfile's record size.
_END = 2 * _BLOCK + tarfile.RECORDSIZE


@dataclass(slots=True)
class _Node:
    """What the merge put at one path: the winning entry; for a file (or a hardlink), the
    record and entry number whose data and metadata it has; for a directory, its names."""
    entry: Entry | None = None
    source: tuple[int, int] | None = None
    children: dict[str, "_Node"] | None = None


class _Tree:
    """The upper directory that the records applied so far give, as restore.apply() would
    leave it in an empty directory (in place, no lower layer), but only its entries."""

    def __init__(self):
        self.root = _Node(children={})

    def find(self, path: str) -> _Node | None:
        node = self.root
        for part in path.split("/"):
            node = node.children.get(part) if node.children is not None else None
            if node is None:
                return None
        return node

    def apply(self, name: str, entry: Entry, source: tuple[int, int]) -> None:
        """Apply one entry, checked (Checks) and at its clean name, as restore does."""
        above, _, base = name.rpartition("/")
        parent = self.find(above) if above else self.root
        if parent is None or parent.children is None:
            # Restore would fail to create it: nothing it can go into is there.
            raise ArchiveError(f"cannot unpack {entry.name!r}: no directory {above!r}")
        current = parent.children.get(base)
        if entry.type == DIRECTORY:
            if current is not None and current.children is not None and not entry.is_opaque:
                # Merged: the newest entry's metadata, but an opaque mark stays (it hides
                # the squashfs, which this entry's layer never saw).
                kept = {k: v for k, v in current.entry.xattrs.items() if k in OPAQUE_XATTRS}
                current.entry = entry.replace(xattrs={**kept, **entry.xattrs})
                return
            if current is not None and current.children is None and not entry.is_opaque:
                # Where a file, symlink or whiteout hid the squashfs's directory, so must
                # the directory that replaces it.
                entry = entry.replace(xattrs={OPAQUE: b"y", **entry.xattrs})
            parent.children[base] = _Node(entry, children={})
        elif entry.type == HARDLINK:
            parent.children.pop(base, None)
            target = self.find(clean_name(entry.linkname, entry.name))
            if target is None or target.source is None:
                raise ArchiveError(f"cannot unpack {entry.name!r}: its target "
                                   f"{entry.linkname!r} is gone")
            parent.children[base] = _Node(target.entry, target.source)
        else:
            parent.children[base] = _Node(entry, source if entry.type == FILE else None)

    def walk(self):
        """(path, node) for every node: parents before children, siblings in byte order."""
        stack = [("", self.root)]
        while stack:
            prefix, node = stack.pop()
            if prefix:
                yield prefix, node
            if node.children:
                stack.extend((f"{prefix}/{name}" if prefix else name, child)
                             for name, child in sorted(node.children.items(), key=_order,
                                                       reverse=True))


def _order(item) -> bytes:
    return item[0].encode("utf-8", "surrogateescape")


class _TreeChecks(Checks):
    """restore's safety checks of one archive, against the merged tree instead of a
    directory: the records are refused exactly where a boot would stop."""

    def __init__(self, tree: _Tree):
        super().__init__(Path())
        self.tree = tree

    def in_target(self, path: str) -> str | None:
        node = self.tree.find(path)
        if node is None:
            return None
        if node.children is not None:
            return DIRECTORY
        return FILE if node.source is not None else node.entry.type


@dataclass
class Plan:
    """What the merged archive holds: `dataless`, every winning entry without data in
    archive order (path, entry); `files`, per record index, per entry number, the paths
    that get that entry's file (hardlinked to the first); `tar_bytes`, an upper bound of
    the archive's uncompressed size."""
    dataless: list[tuple[str, Entry]]
    files: dict[int, dict[int, list[str]]]
    tar_bytes: int


def plan(chain: Chain, records: list[Record]) -> Plan:
    """Read `records` (snapshots 1..N) through their tar headers and decide which entry wins
    at each path. Reads only. Raises ChainDamaged for a damaged record, SnapshotError for an
    archive restore would refuse."""
    tree = _Tree()
    try:
        sources = [chain.payload(r) for r in records]
    except RecordDamaged as e:
        raise _damaged(e) from None
    with archive.Payloads(sources, [r.entry.compression for r in records]) as payloads:
        for index, (record, payload) in enumerate(zip(records, payloads)):
            checks = _TreeChecks(tree)
            try:
                with closing(archive.entries(payload, record.entry.compression)) as stream:
                    for number, (_, entry) in enumerate(stream):
                        tree.apply(checks.check(entry), entry, (index, number))
            except RecordDamaged as e:
                raise _damaged(e) from None
            except ArchiveError as e:
                raise SnapshotError(f"snapshot {index + 1} cannot be applied ({e}), so a boot "
                                    f"stops before it; squash the ones before it or roll it "
                                    f"back; nothing was written") from None
    dataless, files, size = [], {}, _END
    for path, node in tree.walk():
        entry = node.entry
        size += _BLOCK + _pax_bound(path, entry)
        if node.source is None:
            dataless.append((path, entry))
            continue
        index, number = node.source
        paths = files.setdefault(index, {}).setdefault(number, [])
        # The first path gets the data, the others link to it by name.
        size += len(paths[0].encode("utf-8", "surrogateescape")) if paths else \
            round_up(entry.size, _BLOCK)
        paths.append(path)
    return Plan(dataless, files, size)


def _pax_bound(path: str, entry: Entry) -> int:
    records = [path, entry.linkname, "hdrcharset=BINARY"] + \
        [XATTR_PREFIX + k + v.decode("utf-8", "surrogateescape")
         for k, v in entry.xattrs.items()]
    return _BLOCK + round_up(sum(len(r.encode("utf-8", "surrogateescape")) + _PAX_RECORD
                                 for r in records), _BLOCK)


def _damaged(error: RecordDamaged) -> ChainDamaged:
    return ChainDamaged(f"{error}; run `snapshot check --repair` first; nothing was written")


def write(chain: Chain, records: list[Record], merge: Plan, message: str, compression: int,
          progress=None) -> DirEntry:
    """Stream the merged archive into a new record in free blocks; returns its entry, for
    the commit. Until that commit nothing of it is visible."""
    writer = RecordWriter(chain, SNAPSHOT, 1, message, compression, progress)
    merged(writer, chain, records, merge, compression)
    return writer.finish()


def merged(out, chain: Chain, records: list[Record], merge: Plan, compression: int) -> None:
    """Stream the merged archive, compressed, into `out` (a record, or a bundle's payload)."""
    wanted = sorted(merge.files)
    with compressor(out, compression) as stream, \
            tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path, entry in merge.dataless:
            tar.addfile(header(entry.replace(name=path)))
        sources = [chain.payload(records[i]) for i in wanted]
        with archive.Payloads(sources, [records[i].entry.compression for i in wanted]) \
                as payloads:
            for index, payload in zip(wanted, payloads):
                files = merge.files[index]
                for number, (reader, entry) in enumerate(
                        archive.entries(payload, records[index].entry.compression)):
                    paths = files.get(number)
                    if paths is None:
                        continue
                    first, *others = paths
                    tar.addfile(header(entry.replace(name=first)), EntryData(reader))
                    for other in others:
                        tar.addfile(header(entry.replace(name=other, type=HARDLINK,
                                                   linkname=first, size=0, xattrs={})))


# -- the operation -------------------------------------------------------------------------

def squash(chain: Chain, upto: int | None = None, progress=None,
           compression: int = COMPRESSION_GZIP, layer: Path = Path(live.DEFAULT_UPPER)) -> dict:
    """Replace snapshots 1..upto (default: every confirmed one, so a pending trial stays on
    top) by one record showing the same; one commit. What lies above them stays, as it
    was: a snapshot on trial and every volatile record, each rewritten under its new number
    with its place in the trial; a failed trial goes, as on any write. Refused, with nothing
    written, for a damaged chain (ChainDamaged: `check --repair` first), a trial or failed
    trial among 1..upto, an archive a boot would refuse, or too little free flash
    (FlashFull, saying how much it needs). After a power cut or an error while writing, the
    old chain stands. A booted volatile layer over the old snapshots (`layer`) is one over
    the new ones afterwards (snapshot/live.py). Returns what `squash --json` prints."""
    if chain.problems:
        raise ChainDamaged(f"{chain.problems[0]}; run `snapshot check --repair` first")
    n = _upto(chain, upto)
    before = chain.used_bytes()
    if n < 2:
        return _report(chain, 0, before)
    records = chain.snapshots[:n]
    above = [r for r in chain.records[n:] if r.entry.state != FAILED]
    base = [r.entry for r in chain.view()[0]]
    merge = plan(chain, records)
    for record in above:
        try:
            chain.verify(record)
        except RecordDamaged as e:
            raise _damaged(e) from None
    message = _message(records)
    _room(chain, records, above, merge, message, compression)
    entries = [write(chain, records, merge, message, compression, progress)]
    entries += [rewrite(chain, r, progress, r.entry.seq - n + 1) for r in above]
    commit(chain, entries)
    live.rebase(layer, base, [r.entry for r in chain.view()[0]])
    return _report(chain, n, before)


def after_push(chain: Chain, keep: int, layer: Path, progress=None,
               compression: int = COMPRESSION_GZIP) -> dict | None:
    """`option keep`: with more than `keep` snapshots (0: no limit), squash the oldest so
    that `keep` remain (one more while a trial is pending: it is never squashed). A second
    operation after the push's commit: a power cut between the two leaves the push done and
    the chain unsquashed, which the next push squashes. None when nothing was to squash."""
    if not keep:
        return None
    confirmed = sum(r.entry.state == CONFIRMED for r in chain.snapshots)
    upto = min(len(chain.snapshots) - keep + 1, confirmed)
    if upto < 2:
        return None
    return squash(chain, upto, progress, compression, layer)


def _upto(chain: Chain, upto: int | None) -> int:
    confirmed = sum(r.entry.state == CONFIRMED for r in chain.snapshots)
    if upto is None:
        return confirmed
    count = len(chain.snapshots)
    if not 1 <= upto <= count:
        raise SnapshotError(f"there is no snapshot {upto} (the chain has {count})")
    if upto > confirmed:
        state = chain.snapshots[upto - 1].entry.state
        what = "is on trial: confirm it first" if state == TRIAL else \
            "is a failed trial: roll it back first"
        raise SnapshotError(f"snapshot {upto} {what}, or squash --upto {confirmed}; nothing "
                            f"was written")
    return upto


def _message(records: list[Record]) -> str:
    text = f"squash of 1..{len(records)}"
    newest = records[-1].entry.message
    if newest:
        text += f": {newest}"
    return text.encode()[:MAX_MESSAGE].decode(errors="ignore")


def _room(chain: Chain, records: list[Record], above: list[Record], merge: Plan,
          message: str, compression: int) -> None:
    """FlashFull, before anything is written, unless the free blocks hold the merged record
    and the rewritten ones above it. The merged record's payload is at most its archive's
    bound compressed, and in practice at most the merged records' payloads together, where
    they are compressed as it is: it holds some of their members, compressed in one stream.
    Should it still not fit, the allocator's FlashFull leaves the old chain all the same."""
    g = chain.flash.geometry
    payload = compressed_bound(merge.tar_bytes)
    if all(r.entry.compression == compression for r in records):
        payload = min(payload, sum(r.entry.payload_length for r in records))
    header = RecordHeader(SNAPSHOT, compression, 1, 0, 0, message).size

    def blocks(header_size: int, payload_length: int) -> int:
        return -(-Layout(header_size, payload_length, g.writesize).end // g.erasesize)

    needed = blocks(header, payload) + sum(blocks(r.layout.header_size, r.entry.payload_length)
                                           for r in above)
    free = len(chain.free_blocks())
    if needed > free:
        raise FlashFull(f"{chain.flash.name}: squash needs up to {needed} free blocks "
                        f"({needed * g.erasesize // 1024} KiB) for the merged record and the "
                        f"records above it, and {free} are free "
                        f"({free * g.erasesize // 1024} KiB); nothing was written")


def _report(chain: Chain, squashed: int, before: int) -> dict:
    return {"squashed": squashed, "snapshots": len(chain.snapshots), "before_bytes": before,
            "after_bytes": chain.used_bytes(), "free_bytes": chain.free_bytes()}
