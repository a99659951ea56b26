"""What the commands do: format, save, push, rollback, list, unpack and check.

Every write follows one pattern: write the new record into free blocks, then commit one
anchor entry. A failure or power cut before the commit leaves the old state; DESIGN.md has
the step tables.
"""
import os
import time

from mtd import Flash
from snapshot import live
from snapshot.errors import ChainDamaged, FlashFull, NoChain, RecordDamaged, SnapshotError
from snapshot.kept import forget
from snapshot.store import marks, verified
from snapshot.store import trial as trials
from snapshot.store.chain import (KEEP, LEGACY_MAGIC, Chain, Record, RecordWriter,
                                  commit, describe, finish_mark, read_mark, rewrite,
                                  scan_anchors, write_fresh_anchor_block)
from snapshot.store.format import (COMPRESSION_GZIP, CONFIRMED, FAILED, MAX_MESSAGE, SNAPSHOT,
                                   TRIAL, VOLATILE, Anchor, DirEntry, Layout, round_up)
from snapshot.tree import archive, restore


# -- format ------------------------------------------------------------------------------------

JFFS2_MAGICS = (b"\x85\x19", b"\x19\x85")
#: A ubifs node's magic, 0x06101831 little-endian: the first bytes of ubifs's superblock LEB.
UBIFS_MAGIC = b"\x31\x18\x10\x06"


def recognise(flash: Flash) -> str | None:
    """Name what the device holds, if it is something a user would not want erased."""
    try:
        Chain(flash)
        return "a snapshot chain"
    except NoChain:
        pass
    first_good = next((b for b in range(flash.geometry.blocks) if not flash.is_bad(b)), None)
    if first_good is None:
        return None
    head = flash.read(flash.geometry.block_offset(first_good), 4)
    if head == LEGACY_MAGIC:
        return "an old-format (fstools) snapshot chain"
    if head[:2] in JFFS2_MAGICS:
        return "a jffs2 filesystem"
    if head == UBIFS_MAGIC:
        return "a ubifs filesystem"
    return None


def format_device(flash: Flash, force: bool = False) -> None:
    """Make an empty chain. Power cut: the device holds what it held until one step, then
    the empty chain (DESIGN.md §5, §11). Over a chain, that step is the new anchor entry,
    programmed into a block other than the newest entry's and the mark block's, and the
    other blocks are erased after it. Over anything else it is the erase of the mark block
    (marks.reset)."""
    found = recognise(flash)
    if found and not force:
        raise SnapshotError(f"{flash.name} holds {found}; add --force to replace it")
    g = flash.geometry
    scan = scan_anchors(flash)
    mark = read_mark(flash, scan)
    if found != "a snapshot chain" or mark.kind != "anchor":
        marks.reset(flash, scan, mark)
        return
    newest = scan.newest
    gen = max([scan.max_gen] + [e.gen for e in newest.newest.records])
    data = Anchor(gen + 1).pack()
    data += b"\xff" * (round_up(len(data), g.writesize) - len(data))
    candidates = [b for b in scan.blocks
                  if not b.bad and b is not newest and b.block != mark.block]
    target = write_fresh_anchor_block(flash, candidates, data)
    for other in scan.blocks:
        if other is not target and not other.bad and other.block != mark.block:
            marks.erase(flash, other)


# -- save, push, rollback --------------------------------------------------------------------

def _current_snapshots(chain: Chain, snapshots: list[Record], progress) -> list[DirEntry]:
    """The entries of `snapshots`, which a write builds on, after checking each one: its
    header and commit marker (a page or two each), and its payload only where this boot has
    not verified it already (snapshot/store/verified.py; DESIGN.md §4 says why that is enough). A
    record known to be damaged refuses the write, before anything is written: the next
    boot's repair would empty it under the new record. One read with corrected bit flips is
    rewritten now, in the same commit."""
    if chain.problems:
        raise ChainDamaged(f"{chain.problems[0]}; run `snapshot check --repair` first")
    known = verified.load(chain.flash)
    entries = []
    try:
        for record in snapshots:
            flips: list[int] = []
            key = verified.record_key(record.entry)
            if key not in known:
                flips.append(chain.verify(record))
            elif known[key] is not None:
                raise RecordDamaged(chain.flash.name, describe(record, chain.records.index(
                    record)), None, f"{known[key]}, found by an earlier read")
            else:
                chain.read_header(record, flips)
            entries.append(rewrite(chain, record, progress) if any(flips) else record.entry)
    except RecordDamaged as e:
        raise ChainDamaged(f"{e}; nothing was written. `snapshot check --repair` empties "
                           f"{e.what} (its changes are lost, the records above it are kept); "
                           f"then write again") from None
    finally:
        verified.remember(chain.flash, chain.read_results)
    return entries


def _store(chain: Chain, rtype: int, source: str, message: str, progress,
           compression: int) -> tuple:
    """Write `source` as a new record on top of the snapshots a boot applies now (the tried
    view: a pending trial included, a failed one not). Returns those snapshots' entries
    (records read with corrected bit flips rewritten), the new record's entry, how the
    capture went, and whether `source` is a booted layer (snapshot/live.py). Everything that
    can refuse the write does so before anything is written: the record's header is packed
    (a message too long), the source looked at, a booted layer checked against the chain,
    and the record's size against the free blocks (_room)."""
    snapshots = chain.view()[0]
    seq = len(snapshots) + 1 if rtype == SNAPSHOT else len(snapshots)
    writer = RecordWriter(chain, rtype, seq, message, compression, progress)
    from snapshot.tree.capture import Capture   # here: boot imports this module, never writes
    capture = Capture(source)
    booted = live.check_base(source, [r.entry for r in snapshots])
    entries = _current_snapshots(chain, snapshots, progress)
    _room(chain, writer, source, compression)
    capture.pack(writer, compression)
    return entries, writer.finish(), capture, booted


class _Counted:
    """A payload's bytes counted, not kept."""

    def __init__(self):
        self.length = 0

    def write(self, data: bytes) -> int:
        self.length += len(data)
        return len(data)


def _room(chain: Chain, writer: RecordWriter, source: str, compression: int) -> None:
    """FlashFull, before anything is written, when the record cannot fit in the free blocks.
    A tree whose tar stream would fit even if nothing of it compressed (capture.tar_bound)
    goes ahead at once; a bigger one is compressed once without being written, to learn the
    payload's size, so that nothing that fits is refused. Should the tree grow between the
    two, the allocator's FlashFull leaves the old state all the same."""
    g = chain.flash.geometry
    free = len(chain.free_blocks())

    def blocks(payload: int) -> int:
        return -(-Layout(writer.header.size, payload, g.writesize).end // g.erasesize)

    from snapshot.tree.capture import Capture, compressed_bound, tar_bound
    if blocks(compressed_bound(tar_bound(source))) <= free:
        return
    counted = _Counted()
    Capture(source).pack(counted, compression)
    needed = blocks(counted.length)
    if needed > free:
        what = "snapshot" if writer.header.type == SNAPSHOT else "volatile record"
        raise FlashFull(f"{chain.flash.name}: flash full: the {what} needs {needed} blocks "
                        f"({needed * g.erasesize // 1024} KiB) and {free} are free "
                        f"({free * g.erasesize // 1024} KiB); nothing was changed "
                        f"(`snapshot squash` merges snapshots into one and may make room)")


def save(chain: Chain, source: str, progress=None, compression: int = COMPRESSION_GZIP,
         trial: int | None = None):
    """Replace the volatile record by `source`. The new one goes into the back buffer
    beside the old one; the commit switches; the old one's blocks become free. A booted
    volatile layer is refused if the chain changed under it (snapshot/live.py). Returns the
    capture, which says whether `source` changed while it was read.

    With `trial` (its max_attempts), the new record is on trial and the old one stays on
    flash until the trial is decided (snapshot/store/trial.py). While a trial is pending, a plain
    save stores the running state's changes with it: on top of a snapshot on trial (gone if
    the trial fails), or as the volatile on trial itself (still on trial, its boots kept)."""
    pending = chain.trial
    if trial is not None:
        trials.refuse_while_pending(chain, "saving another trial")
    snapshots, entry, capture, _ = _store(chain, VOLATILE, source, "", progress, compression)
    kept = [r.entry for r in chain.volatiles if r.entry.fallback]
    if trial is not None:
        commit(chain, trials.start(snapshots + _volatile_entries(chain), entry, trial))
    elif pending is not None and pending.entry.type == VOLATILE:
        commit(chain, snapshots + kept + [entry.marked(
            state=TRIAL, attempts=pending.entry.attempts,
            max_attempts=pending.entry.max_attempts)])
    else:
        commit(chain, snapshots + kept + [entry])
    return capture


def _volatile_entries(chain: Chain) -> list[DirEntry]:
    volatile = chain.volatile
    return [volatile.entry] if volatile is not None else []


def push(chain: Chain, source: str, message: str = "", progress=None,
         compression: int = COMPRESSION_GZIP, trial: int | None = None):
    """Append `source` as a new snapshot and drop the volatile record, in one commit: after
    any power cut the device holds (old chain, old volatile) or (new chain, no volatile).
    A booted volatile layer is refused if the chain changed under it; once pushed, the new
    snapshot is part of its base (snapshot/live.py). Returns the capture, as save does.

    With `trial` (its max_attempts), the new snapshot is on trial and the volatile record
    stays on flash, to come back if the trial fails (snapshot/store/trial.py). Refused while a
    trial is pending; a failed trial still listed is replaced."""
    trials.refuse_while_pending(chain, "pushing")
    snapshots, entry, capture, booted = _store(chain, SNAPSHOT, source, message, progress,
                                               compression)
    if trial is not None:
        commit(chain, trials.start(snapshots + _volatile_entries(chain), entry, trial))
    else:
        commit(chain, snapshots + [entry])
    if booted:
        live.write_base(source, snapshots + [entry])
    return capture


def confirm(chain: Chain) -> str | None:
    """Make the pending trial a normal record, dropping what was kept for its failure; one
    commit. Returns what was confirmed, or None when nothing is on trial (nothing written)."""
    trial = chain.trial
    if trial is None:
        return None
    what = trials.name(chain, trial)
    commit(chain, trials.confirm(chain))
    return what


def rollback(chain: Chain, to: int | None) -> list[str]:
    """Drop every snapshot after `to` and the volatile record; without `to`, a trial (pending
    or failed) if there is one, else the newest snapshot. Dropping a trial gives back exactly
    the state before it, the volatile record kept for that included. Returns what was
    dropped. One commit; nothing is erased."""
    trial = chain.trial or chain.failed
    if to is None and trial is not None:
        dropped = [trials.name(chain, trial)]
        if trial.entry.type == SNAPSHOT and trial.entry.state != FAILED:
            dropped += [trials.name(chain, r) for r in chain.volatiles if not r.entry.fallback]
        commit(chain, trials.drop(chain))
        return dropped
    count = len(chain.snapshots)
    if to is None:
        if count <= 1:
            raise SnapshotError("only one snapshot is left; use --to 0 to drop it too"
                                if count else "there are no snapshots to roll back")
        to = count - 1
    if not 0 <= to <= count:
        raise SnapshotError(f"--to {to} is not a snapshot number (0..{count})")
    if to == count and not chain.volatiles:
        raise SnapshotError(f"nothing to roll back: snapshot {to} is the newest and there is "
                            f"no volatile record")
    dropped = [describe(r, i) for i, r in enumerate(chain.records) if i >= to]
    commit(chain, [r.entry for r in chain.snapshots[:to]])
    return dropped


def apply_snapshots(chain: Chain, dest: str, upto: int | None = None,
                    lower: str | None = None, tried: bool = True,
                    undo: bool = True) -> tuple[int, SnapshotError | None]:
    """Apply snapshots 1..upto (default all) of a view of the chain (Chain.view: `tried`,
    with a pending trial) in order into dest, stopping at the first that is damaged or
    refused; it is not applied at all (see restore.apply, also for `lower`). Returns how
    many were applied and the error that stopped them, if any. Each record applied was read
    whole, every CRC checked (chain.read_whole). Without `undo`, one that fails in an empty
    dest leaves part of itself there, for a caller that empties dest anyway (a boot that
    repairs the chain first)."""
    snapshots = chain.view(tried)[0]
    if upto is None:
        upto = len(snapshots)
    if not 0 <= upto <= len(snapshots):
        raise SnapshotError(f"--upto {upto} is not a snapshot number (0..{len(snapshots)})")
    # Into an empty dest (boot's tmpfs, a new directory) records go in place: one that fails
    # is undone by emptying dest and applying the ones before it again.
    dest, in_place = _target(dest)
    records, sources, damaged_header = snapshots[:upto], [], None
    try:
        for record in records:
            sources.append(chain.payload(record))   # reads and checks the record's header
    except SnapshotError as e:
        damaged_header = e   # nothing of that record is read: the ones before it are applied
    placed: set[str] = set()   # what the records put into dest so far (restore.apply)
    failed = None
    # One reading process for them all: it reads each record ahead of its unpacking.
    with archive.Payloads(sources, [r.entry.compression for r in records]) as payloads:
        for index, (record, payload) in enumerate(zip(records, payloads)):
            try:
                restore.apply(payload, record.entry.compression, dest, lower, in_place, placed)
            except SnapshotError as e:
                failed = index, e
                break
            except BaseException:
                if in_place:
                    empty_dir(dest)
                raise
            chain.read_whole(payload.source)
    if failed is None:
        return len(sources), damaged_header
    index, error = failed
    if not in_place or not undo:
        return index, error
    empty_dir(dest)
    applied, again = apply_snapshots(chain, dest, index, lower, tried)
    return applied, again or error


def apply_volatile(chain: Chain, dest: str, lower: str | None = None,
                   tried: bool = True) -> None:
    """Apply the volatile record of a view of the chain (if any) into dest; on an error
    dest is as it was."""
    volatile = chain.view(tried)[1]
    if volatile is None:
        return
    dest, in_place = _target(dest)
    source = chain.payload(volatile)
    try:
        restore.apply(source, volatile.entry.compression, dest, lower, in_place)
    except BaseException:
        if in_place:
            empty_dir(dest)
        raise
    chain.read_whole(source)


def apply_legacy(flash: Flash, entries: list, dest: str, lower: str | None,
                 layers) -> tuple[int, list[str], SnapshotError | None]:
    """Apply entries of the old fstools chain (legacy.read's, in order) into dest, which
    starts empty (boot's tmpfs layers), over `lower` (see restore.apply): exactly what
    `convert` would import of them and the converted chain's boot would apply, streamed
    from the flash (legacy_archive.converted; the entries restore would refuse are left out, with a
    warning each). `layers` holds what the entries before them put at each path (the
    volatile's checks see the snapshots') and takes theirs. Reads only. Stops at the first
    entry that cannot be applied (an archive that cannot be read, an MD5 that no longer
    matches, a write that fails): dest and `layers` then hold exactly the entries before
    it. Returns how many were applied, the warnings, and the error that stopped them."""
    # here: only this boot reads the old format
    from snapshot import legacy_archive
    from snapshot.store import legacy
    before = dict(layers.kinds)
    warnings: list[str] = []
    placed: set[str] = set()   # what the entries put into dest so far (restore.apply)
    for index, entry in enumerate(entries):
        stream = legacy_archive.converted(legacy.Payload(flash, entry), layers, warnings)
        try:
            restore.apply_entries(stream, dest, lower, in_place=True, placed=placed)
        except SnapshotError as error:
            # Entries go in as they pass: one that fails is undone by emptying dest and
            # applying the ones before it again.
            empty_dir(dest)
            layers.kinds = before
            applied, warnings, again = apply_legacy(flash, entries[:index], dest, lower,
                                                    layers)
            return applied, warnings, again or error
    return len(entries), warnings, None


def _target(dest) -> tuple[str, bool]:
    """dest, made if need be, as a directory to unpack into, and whether it is empty. Paths
    here are strings (os.path), not pathlib's: boot imports this module, and on a router's
    CPU pathlib's import (with re, enum and urllib.parse) costs more than Python's own
    start-up."""
    dest = os.fspath(dest)
    try:
        os.makedirs(dest, exist_ok=True)
        with os.scandir(dest) as entries:
            return dest, next(entries, None) is None
    except OSError as e:
        raise SnapshotError(f"{dest}: cannot unpack into it: {e.strerror}") from None


def empty_dir(directory: str) -> None:
    """Remove what is in directory, keeping it (it may be a mountpoint)."""
    for entry in os.scandir(directory):
        if entry.is_dir(follow_symlinks=False):
            restore.remove_tree(entry.path)
        else:
            os.unlink(entry.path)


def unpack(chain: Chain, dest: str, upto: int | None = None,
           volatile_dest: str | None = None, lower: str | None = None) -> int:
    """Apply snapshots 1..upto in order into dest (and the volatile into volatile_dest),
    over `lower` if given (see restore.apply). A damaged record is never applied, the ones
    before it are; returns the count applied."""
    applied, error = apply_snapshots(chain, dest, upto, lower)
    if error is not None:
        done = f"unpacked snapshots 1..{applied}" if applied else "nothing was unpacked"
        failure = ChainDamaged if isinstance(error, RecordDamaged) else SnapshotError
        raise failure(f"{error}; {done}")
    if volatile_dest is not None:
        try:
            apply_volatile(chain, volatile_dest)
        except RecordDamaged as e:
            raise ChainDamaged(f"{e}; snapshots 1..{applied} were unpacked") from None
    return applied


def snapshot_record(chain: Chain, index: int) -> Record:
    count = len(chain.snapshots)
    if not 1 <= index <= count:
        raise SnapshotError(f"there is no snapshot {index} (the chain has {count})")
    return chain.snapshots[index - 1]


def entries_of(chain: Chain, record: Record):
    """(reader, entry) for each entry of a record's archive (archive.entries: reading it to
    its end checks the record's CRC)."""
    return archive.entries(chain.payload(record), record.entry.compression)


def _entries(chain: Chain, record: Record):
    for _, entry in entries_of(chain, record):
        yield entry


def show(chain: Chain, index: int, rom: str | None = None) -> dict:
    """What snapshot `index` changed, against snapshots 1..index-1 and the read-only root
    `rom` (when given): added, modified, deleted (whiteouts), made opaque."""
    record = snapshot_record(chain, index)
    before: set[str] = set()
    for earlier in chain.snapshots[:index - 1]:
        for entry in _entries(chain, earlier):
            name = restore.clean_name(entry.name)
            if entry.is_whiteout or entry.is_opaque:
                before = {p for p in before if p != name and not p.startswith(name + "/")}
            if not entry.is_whiteout:
                before.add(name)
    changes = {"added": [], "modified": [], "deleted": [], "opaque": []}
    for entry in _entries(chain, record):
        name = restore.clean_name(entry.name)
        existed = name in before or (rom is not None and os.path.lexists(f"{rom}/{name}"))
        if entry.is_whiteout:
            changes["deleted"].append(name)
        elif entry.is_opaque:
            changes["opaque"].append(name)
        elif not existed:
            changes["added"].append(name)
        elif entry.type != archive.DIRECTORY:
            # A directory that existed is only the parent of a change: not listed.
            changes["modified"].append(name)
    e = record.entry
    return {"index": index, "seq": e.seq, "created": e.created, "message": e.message, **changes}


def export(chain: Chain, index: int, target: str) -> int:
    """Write snapshot `index`'s archive (a compressed tar) to target. The record's CRC is
    checked to the end before target appears; returns the bytes written."""
    record = snapshot_record(chain, index)
    partial = f"{target}.part"
    source = chain.payload(record)
    try:
        with open(partial, "wb") as out:
            while chunk := source.read(archive.READ_CHUNK):
                out.write(chunk)
        os.replace(partial, target)
    except OSError as e:
        forget(partial)
        raise SnapshotError(f"{target}: cannot be written: {e.strerror}") from None
    except BaseException:
        forget(partial)
        raise
    return record.entry.payload_length


# -- check and repair --------------------------------------------------------------------------

#: An archive with no members (tar's end: two zero blocks): what stands in for a snapshot
#: whose content a repair lost (DESIGN.md §4), gzip-compressed as every record may be.
EMPTY_ARCHIVE = bytes(1024)


# Plain classes, not dataclasses: boot imports this module, and a dataclass's import is most
# of `mount`'s start-up on a router's CPU.

class Report:
    """What a check or a repair found and did."""
    __slots__ = ("device", "problems", "notes", "repairs", "damage", "lost", "snapshots",
                 "volatile")

    def __init__(self, device: str):
        self.device = device
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.repairs: list[str] = []
        self.damage: list[str] = []     # the problems that lose data
        self.lost: list[str] = []       # what a repair loses (check: would)
        self.snapshots = 0
        self.volatile = False

    @property
    def clean(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {"device": self.device, "clean": self.clean, "snapshots": self.snapshots,
                "volatile": self.volatile, "problems": self.problems, "notes": self.notes,
                "repairs": self.repairs, "lost": self.lost, "nothing_lost": not self.lost}


class Findings:
    """What a repair does with each record (indexes in anchor order): a record not named in
    `empty` or `drop` is kept, rewritten if it is in `scrub`."""
    __slots__ = ("scrub", "empty", "drop", "damaged_trial", "torn_anchor", "mark")

    def __init__(self, scrub: list[int], empty: dict[int, str], drop: dict[int, str],
                 damaged_trial: str | None, torn_anchor: bool, mark: bool = False):
        self.scrub = scrub
        self.empty = empty                  # confirmed snapshots whose content is lost, and why
        self.drop = drop                    # records left out of the directory, and why
        self.damaged_trial = damaged_trial  # why the trial failed: it is damaged itself
        self.torn_anchor = torn_anchor
        self.mark = mark                    # the mark block is still to be written

    @property
    def rewrites_directory(self) -> bool:
        return bool(self.scrub or self.empty or self.drop or self.torn_anchor)


def _builds_on(chain: Chain, index: int) -> list[int]:
    """The indexes of the snapshots record `index` is a delta over: every snapshot before a
    snapshot; the first `seq` snapshots under a volatile record (FORMAT.md §3), so one kept
    in case a trial fails builds on the confirmed snapshots only, not on the trial."""
    record = chain.records[index]
    snapshots = [i for i, r in enumerate(chain.records) if r.entry.type == SNAPSHOT]
    if record.entry.type == SNAPSHOT:
        return [i for i in snapshots if i < index]
    return snapshots[:record.entry.seq]


def _plan(chain: Chain, damaged: dict[int, str]) -> tuple[dict, dict, str | None]:
    """What a repair does about `damaged` records (DESIGN.md §4): a confirmed snapshot is
    emptied, so the records above it stay, applied over what remains; a trial that is
    damaged has failed, and goes with what was saved on it (DESIGN.md §10's failure); any
    other damaged record (a volatile record, a failed trial) is dropped. Records past a
    directory problem are dropped, as the directory cannot say what they are."""
    empty, drop = {}, {}
    for index in range(chain.valid_prefix, len(chain.records)):
        drop[index] = chain.problems[0]
    trial = chain.trial
    trial_index = chain.records.index(trial) if trial is not None else None
    damaged_trial = damaged.get(trial_index)
    for index, reason in damaged.items():
        record = chain.records[index]
        if record.entry.type == SNAPSHOT and record.entry.state == CONFIRMED:
            empty[index] = reason
        else:
            drop[index] = reason
    if damaged_trial is not None and trial.entry.type == SNAPSHOT:
        for index, record in enumerate(chain.records):
            if record.entry.type == VOLATILE and not record.entry.fallback:
                drop.setdefault(index, f"saved on {describe(trial, trial_index)}, which is "
                                       f"damaged")
    return empty, drop, damaged_trial


def examine(chain: Chain, report: Report, read: bool = True) -> Findings:
    """Read everything and say what is wrong, and what a repair would lose (_plan). Reads
    the flash only; what it read of each payload goes to the ledger (snapshot/store/verified.py).
    A payload this process has read whole already (chain.read_results) is not read again;
    without `read`, no other is read either, and counts as sound: a boot decides from what
    it has unpacked so far (DESIGN.md §8)."""
    report.snapshots = len(chain.snapshots)
    report.volatile = chain.volatile is not None
    report.problems.extend(chain.problems)
    report.damage.extend(chain.problems)
    damaged, scrub = {}, []
    try:
        for index, record in enumerate(chain.records[:chain.valid_prefix]):
            name = describe(record, index)
            key = verified.record_key(record.entry)
            if key in chain.read_results:
                error, corrected = chain.damage.get(key), chain.corrected.get(key, 0)
            elif not read:
                continue
            else:
                try:
                    error, corrected = None, chain.verify(record)
                except RecordDamaged as e:
                    error, corrected = e, 0
            if error is not None:
                report.problems.append(str(error))
                report.damage.append(str(error))
                damaged[index] = error.reason
                continue
            if corrected:
                report.problems.append(f"{name}: {corrected} corrected bit flips; "
                                       f"it should be rewritten")
                scrub.append(index)
    finally:
        verified.remember(chain.flash, chain.read_results)
    empty, drop, damaged_trial = _plan(chain, damaged)
    report.lost.extend(_losses(chain, empty, drop))
    newest = chain.scan.newest
    torn = newest.torn if newest else False
    if torn:
        report.problems.append("an interrupted write left a torn anchor entry")
    if newest and newest.corrected:
        report.problems.append("the anchor area had corrected bit flips")
    if chain.mark_pending:
        report.problems.append(f"block {chain.mark.block}, the mark block, is still to be "
                               f"written (an interrupted format, reset or convert)")
    return Findings([i for i in scrub if i not in empty and i not in drop], empty, drop,
                    damaged_trial, torn or bool(newest and newest.corrected),
                    chain.mark_pending)


def _losses(chain: Chain, empty: dict[int, str], drop: dict[int, str]) -> list[str]:
    """What a repair loses, record by record, in words a user can act on."""
    lines = []
    for index, record in enumerate(chain.records):
        e = record.entry
        what = describe(record, index) + (f" ({e.message!r})" if e.message else "")
        if index in empty:
            lines.append(f"the changes of {what}, damaged ({empty[index]}): it becomes an "
                         f"empty record, and every record above it is kept")
        elif index in drop:
            lines.append(f"{what}: {drop[index]}")
    return lines


def check(chain: Chain) -> Report:
    report = Report(chain.flash.name)
    examine(chain, report)
    return report


def repair(chain: Chain, progress=None, read: bool = True) -> Report:
    """Make the state the next open sees explicit and clean, losing as little as it can
    (_plan): empty each damaged confirmed snapshot, fail a damaged trial, drop other damaged
    records, rewrite records with corrected bit flips, and rewrite a torn anchor. One
    commit; running it again finds nothing to do. Where the flash has no block left for an
    empty record, that snapshot is dropped with everything built on it, as the report says.
    Without `read`, only what this process has read already is repaired (examine)."""
    report = Report(chain.flash.name)
    found = examine(chain, report, read)
    if report.clean:
        return report
    entries, note, fleet, lost_from = [], KEEP, KEEP, None
    if found.damaged_trial is not None:
        # The trial failed: its note, and a bundle's joins those that failed here.
        _, note, fleet = trials.fail(chain, f"{trials.name(chain, chain.trial)} is damaged "
                                            f"({found.damaged_trial}): rolled back",
                                     int(time.time()))
    for index, record in enumerate(chain.records):
        name = describe(record, index)
        if index in found.drop:
            report.repairs.append(f"dropped {name}")
            continue
        if lost_from is not None and lost_from in _builds_on(chain, index):
            report.repairs.append(f"dropped {name}: it builds on snapshot "
                                  f"{lost_from + 1}")
            continue
        if index in found.empty:
            try:
                entries.append(_emptied(chain, record, found.empty[index], progress))
            except FlashFull:
                lost_from = index
                report.repairs.append(f"dropped {name}: no free block for an empty record "
                                      f"in its place")
                continue
            report.repairs.append(f"emptied {name}: its changes are lost")
        elif index in found.scrub:
            entries.append(rewrite(chain, record, progress))
            report.repairs.append(f"rewrote {name}")
        else:
            entries.append(record.entry)
    if found.rewrites_directory or not found.mark:
        commit(chain, trials.settled(entries), note, fleet)
    if found.torn_anchor:
        report.repairs.append("rewrote the anchor")
    if finish_mark(chain):
        report.repairs.append(f"wrote the mark block (block {chain.mark.block})")
    return report


def _emptied(chain: Chain, record: Record, reason: str, progress) -> DirEntry:
    """An empty snapshot in place of `record`, whose content is lost: same number, state and
    time, so the records above it stay what they were; its message says what happened."""
    e = record.entry
    message = f"emptied by a repair ({reason})" + (f": {e.message}" if e.message else "")
    message = message.encode()[:MAX_MESSAGE].decode(errors="ignore")
    import gzip   # here: only a repair that loses a record needs it
    writer = RecordWriter(chain, SNAPSHOT, e.seq, message, COMPRESSION_GZIP, progress,
                          e.created)
    writer.write(gzip.compress(EMPTY_ARCHIVE, mtime=0))
    return writer.finish()._replace(flags=e.flags)
