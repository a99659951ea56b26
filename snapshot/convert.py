"""convert: replace a jffs2 overlay (or ubifs, on a UBI volume) by a snapshot chain whose
snapshot 1 is its contents.

The old data stays intact until one step (DESIGN.md §9, §11). Every block that holds data is
reserved: the record goes into blocks that are free (erased, or holding nothing but a jffs2
cleanmarker), and the anchor entry into a free block of the anchor area other than block 0,
the mark block. Then the mark block is erased and the chain's first entry programmed there:
that erase is the switch. Until it, block 0's first word (a jffs2 node, a cleanmarker on a
fresh jffs2) tells the stock mount_root, and snapshot's own boot, that the partition is jffs2;
from it on, the newest entry's MARK entry makes the chain count. A block of jffs2 data that
must be erased (block 0 when it holds nodes, and one of blocks 1-3 when jffs2 fills all of
them) is first copied verbatim into a free block. jffs2 finds its nodes by scanning, wherever
they are, and takes two identical copies of a node for one, which is what its own garbage
collector leaves after a cut; so through the copy jffs2 still mounts with all its data.

jffs2 must not be mounted read-write while this runs: it would write into the blocks it
considers free. The CLI checks that, and the router's way is the RAM stage
(initscripts/lib/snapshot/convert-stage).

On a UBI volume the overlay is ubifs, and the same steps keep it intact until one commit
(DESIGN.md §14): an unmapped LEB reads erased, so the record goes into LEBs ubifs does not
use; ubifs unmaps every LEB it takes from its free space before writing it, so a cut before
the commit leaves it nothing to trip over. ubifs fills the anchor area (superblock, master
nodes, log), so the commit takes one of those LEBs by an atomic LEB change, and the switch
rewrites the superblock's LEB by another.

The old fstools chain (`OWRT` in block 0, snapshot/store/legacy.py) is converted the same way, each
of its entries becoming a record (DESIGN.md §9, "From the old fstools chain"). There the
commit itself is the switch: `OWRT` in the mark block is foreign, so the chain counts as soon
as its newest entry, with its mark entry, is whole; until then the stock mount_root reads the
old chain from blocks no write touches.
"""
import os
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from mtd import Flash, MtdError, open_flash
from mtd import mount as kernel
from snapshot import legacy_archive
from snapshot.errors import SnapshotError
from snapshot.operations import recognise
from snapshot.store import legacy
from snapshot.store.chain import (Chain, RecordWriter, opened, anchor_blocks, commit, finish_mark,
                                  read_mark, scan_anchors)
from snapshot.store.format import (COMPRESSION_GZIP, COMPRESSION_XZ, SNAPSHOT, VOLATILE,
                                   message_bytes)
from snapshot.tree import archive
from snapshot.tree.capture import Capture

STAGE = "/lib/snapshot/convert-stage"
STAGED = Path("/tmp/snapshot-convert/overlay.tar.gz")
#: A jffs2 cleanmarker node header (magic, nodetype, totlen, hdr_crc), either byte order.
CLEANMARKER = {"<": struct.Struct("<HHII"), ">": struct.Struct(">HHII")}
JFFS2_MAGIC = 0x1985
JFFS2_NODETYPE_CLEANMARKER = 0x2003
XZ_MAGIC = b"\xfd7zXZ\x00"
MAGICS = ((b"\x1f\x8b", COMPRESSION_GZIP), (XZ_MAGIC, COMPRESSION_XZ))


def _is_free(data: bytes) -> bool:
    """Whether a block's contents hold no data: erased, or a cleanmarker and then erased."""
    erased = b"\xff" * len(data)
    if data == erased:
        return True
    for layout in CLEANMARKER.values():
        magic, nodetype, _, _ = layout.unpack_from(data)
        if magic == JFFS2_MAGIC and nodetype == JFFS2_NODETYPE_CLEANMARKER:
            return data[layout.size:] == erased[layout.size:]
    return False


def blocks_holding_data(flash: Flash, blocks=None) -> set[int]:
    """Good blocks (of `blocks`, default all) that are not free. Most used blocks show it in
    their first page."""
    g = flash.geometry
    first = max(g.writesize, 16)
    held = set()
    for block in range(g.blocks) if blocks is None else blocks:
        if flash.is_bad(block):
            continue
        base = g.block_offset(block)
        if not _is_free(flash.read(base, first)) or not _is_free(flash.read(base, g.erasesize)):
            held.add(block)
    return held


def _anchor_room(flash: Flash, chain: Chain, progress) -> None:
    """Make sure a block of the anchor area other than the mark block is free, moving a
    jffs2 block aside if need be; and move the mark block's jffs2 data aside, since the
    switch erases it."""
    mark = chain.mark.block
    usable = [b for b in anchor_blocks(flash) if not flash.is_bad(b) and b != mark]
    if not any(b not in chain.reserved for b in usable):
        if not usable:
            raise SnapshotError(f"{flash.name}: no block of the anchor area can take the "
                                f"chain; nothing was changed")
        if flash.geometry.is_ubi:
            # ubifs keeps its superblock, master nodes and log at fixed LEBs, so a copy
            # elsewhere would not be found. The commit goes over one of them instead, by an
            # atomic LEB change: ubifs keeps it whole until the commit's instant.
            chain.reserved = chain.reserved - {usable[-1]}
            chain.atomic_only = frozenset({usable[-1]})
        else:
            _move_aside(flash, chain, usable[-1], progress)
    # jffs2 finds a node wherever it lies, so the mark block's are copied aside; ubifs does
    # not look for its superblock anywhere else.
    if mark is not None and not flash.geometry.is_ubi and \
            mark in blocks_holding_data(flash, [mark]):
        _move_aside(flash, chain, mark, progress, erase=False)


def _move_aside(flash: Flash, chain: Chain, source: int, progress, erase: bool = True) -> None:
    """Copy block `source` verbatim into a free block, check it, then erase `source` (unless
    told not to: the mark block is erased by the switch)."""
    spare = chain.free_blocks()
    if not spare:
        raise SnapshotError(f"{flash.name}: no free block to move block {source} aside to; "
                            f"nothing was changed")
    g = flash.geometry
    target = spare[-1]
    data = flash.read(g.block_offset(source), g.erasesize)
    flash.erase(g.block_offset(target), g.erasesize)
    # Trailing erased pages stay unprogrammed (NAND programs a page once).
    end = len(data.rstrip(b"\xff"))
    end += -end % g.writesize
    if end:
        flash.write(g.block_offset(target), data[:end])
    if flash.read(g.block_offset(target), g.erasesize) != data:
        raise SnapshotError(f"{flash.name}: the copy of block {source} in block {target} "
                            f"does not read back; nothing else was changed")
    if progress:
        progress(g.erasesize)
    chain.reserved = chain.reserved | {target}
    if erase:
        chain.reserved = chain.reserved - {source}
        flash.erase(g.block_offset(source), g.erasesize)


def convert(flash: Flash, fill, compression: int, message: str, progress=None):
    """Write snapshot 1 with what fill(writer) streams into it, and commit the chain; returns
    what fill returned. Before the commit the device holds the old data unchanged (blocks
    copied aside included); after it, the chain. Refuses a device that already holds a
    chain or the old fstools format."""
    if holds_legacy(flash):
        raise SnapshotError(f"{flash.name} holds an old-format (fstools) snapshot chain: "
                            f"`snapshot convert --legacy` imports it (on the router, "
                            f"`snapshot convert`)")
    # The mark block stays as it is until the switch, even when free: its first word (a
    # cleanmarker's magic, on a fresh jffs2) is how mount_root recognises jffs2 until then.
    chain = Chain.replacing(flash, blocks_holding_data(flash))
    if chain.mark.block is not None:
        chain.reserved |= {chain.mark.block}
    # The header is packed here, before anything is written: a message that does not fit
    # the format is refused with the device untouched.
    writer = RecordWriter(chain, SNAPSHOT, 1, message, compression, progress)
    _anchor_room(flash, chain, progress)
    filled = fill(writer)
    commit(chain, [writer.finish()])
    finish_mark(chain)
    return filled


def holds_legacy(flash: Flash) -> bool:
    """Whether the device holds the old fstools chain; refused when it holds a chain."""
    if recognise(flash) == "a snapshot chain":
        raise SnapshotError(f"{flash.name} already holds a snapshot chain; nothing to convert")
    return read_mark(flash, scan_anchors(flash)).kind == "legacy"


@dataclass
class LegacyPlan:
    """A conversion of the old chain, decided before anything is written: what it imports
    (`old`) and the empty chain the records go into, every block an old entry covers
    reserved but the one anchor block the commit may take."""
    old: legacy.OldChain
    chain: Chain

    def summary(self) -> str:
        old = self.old
        parts = []
        if old.snapshots:
            seqs = [e.seq for e in old.snapshots]
            parts.append(f"{len(seqs)} snapshot{'s' if len(seqs) > 1 else ''} (old seq "
                         + (f"{seqs[0]}" if len(seqs) == 1 else f"{seqs[0]}..{seqs[-1]}")
                         + ")")
        if old.volatile is not None:
            parts.append("the volatile" + (f" (its sentinel copy at block {old.volatile.block}"
                                           f": the first copy is "
                                           f"{old.first_fault or 'missing'})"
                                           if old.from_sentinel else ""))
        return " and ".join(parts)


def plan_legacy(flash: Flash, accept_window: bool = False) -> LegacyPlan:
    """Read and check the old chain and choose the commit's anchor block; reads only.
    Refused when the device holds no old chain, nothing of it can be imported, or the commit
    would have to erase an anchor block the old chain needs (without `accept_window`)."""
    if not holds_legacy(flash):
        raise SnapshotError(f"{flash.name} holds no old-format (fstools) snapshot chain "
                            f"(`OWRT` at its start); nothing to convert")
    old = legacy.read(flash)
    if not old.snapshots and old.volatile is None:
        reason = old.problems[0] if old.problems else "it holds no entry"
        raise SnapshotError(f"{flash.name}: nothing of the old fstools chain can be imported "
                            f"({reason}); nothing was changed")
    chain = Chain.replacing(flash, set(old.blocks))
    if chain.mark.block is not None:
        chain.reserved |= {chain.mark.block}
    _legacy_anchor(flash, chain, old, accept_window)
    return LegacyPlan(old, chain)


def _legacy_anchor(flash: Flash, chain: Chain, old: legacy.OldChain,
                   accept_window: bool) -> None:
    """Leave the commit one anchor block besides the mark block that the stock tools do not
    need: a free one; else the volatile's first copy, when its sentinel copy checks out and
    holds the same (the stock boot reads the sentinel copy, and so would a rerun); else,
    only with `accept_window`, the last one (DESIGN.md §9: a cut between its erase and the
    commit leaves the stock mount_root the old chain cut short there)."""
    usable = [b for b in anchor_blocks(flash) if not flash.is_bad(b) and b != chain.mark.block]
    if not usable:
        raise SnapshotError(f"{flash.name}: no block of the anchor area can take the chain; "
                            f"nothing was changed")
    if any(b not in chain.reserved for b in usable):
        return
    first = old.first_copy
    if first is not None and first.block in usable and old.sentinel_good and \
            (old.first_fault is not None or first.md5 == old.sentinel.md5):
        chain.reserved -= {first.block}
        return
    if not accept_window:
        raise SnapshotError(
            f"{flash.name}: the old chain fills anchor blocks {usable[0]}-{usable[-1]}, where "
            f"the new chain's first entry has to go: a power cut between erasing block "
            f"{usable[-1]} and writing that entry would leave the old chain cut short at block "
            f"{usable[-1]} and no new chain; nothing was changed. Keep the power on and run "
            f"`snapshot convert --accept-window` to go ahead")
    chain.reserved -= {usable[-1]}


@dataclass
class Imported:
    """What a conversion of the old chain wrote: the plan it followed, how many of its
    snapshots and whether its volatile became records, and what was left out (warnings)."""
    plan: LegacyPlan
    snapshots: int
    volatile: bool
    warnings: list[str]


def from_legacy(flash: Flash, compression: int, accept_window: bool = False,
                progress=None) -> Imported:
    """Import the old fstools chain, in place: each snapshot, in seq order, and its volatile
    become the chain's records, their archives rewritten entry by entry, streamed
    (legacy_archive.rewrite). Before the one commit the old chain is exactly as the stock
    mount_root reads it (the records take blocks no old entry covers; the commit's anchor
    block is one plan_legacy chose); from the commit on, the chain (DESIGN.md §9). An archive that cannot
    be read ends the import at the entry before it, as damage found by the walk does."""
    plan = plan_legacy(flash, accept_window)
    old, chain = plan.old, plan.chain
    layers, warnings, entries = legacy_archive.Layers(), list(old.problems), []
    records = [(SNAPSHOT, e, f"imported: old snapshot seq {e.seq}") for e in old.snapshots]
    if old.volatile is not None:
        records.append((VOLATILE, old.volatile, f"imported: old volatile seq "
                        f"{old.volatile.seq}" + (", sentinel copy" if old.from_sentinel
                                                 else "")))
    snapshots = 0
    for rtype, entry, message in records:
        writer = RecordWriter(chain, rtype, snapshots + (rtype == SNAPSHOT), message,
                              compression, progress)
        try:
            warnings += legacy_archive.rewrite(legacy.Payload(flash, entry), writer,
                                               compression, layers)
        except legacy.LegacyDamaged as e:
            if rtype == VOLATILE:
                warnings.append(f"{e}: the volatile is left out")
            else:
                warnings.append(f"{e}: the import ends at the one before it" + (
                    ", and the volatile is left out" if old.volatile else ""))
            break
        entries.append(writer.finish())
        snapshots += rtype == SNAPSHOT
    if not entries:
        raise SnapshotError(f"{flash.name}: nothing of the old fstools chain can be imported "
                            f"({warnings[-1]}); the old chain is unchanged")
    commit(chain, entries)
    finish_mark(chain)
    return Imported(plan, snapshots, len(entries) > snapshots, warnings)


def from_directory(flash: Flash, source: Path, compression: int, message: str,
                   progress=None) -> Capture:
    """convert() with `source` (an overlay upper dir) captured as the snapshot."""
    capture = Capture(source)
    return convert(flash, lambda writer: capture.pack(writer, compression), compression,
                   message, progress)


def from_archive(flash: Flash, staged: Path, message: str, progress=None) -> None:
    """convert() with an archive `stage` made earlier (the RAM stage's staged copy). It is
    read through once before the flash is touched: a damaged copy changes nothing."""
    compression = _checked_archive(staged)

    def fill(writer):
        with open(staged, "rb") as f:
            while chunk := f.read(256 * 1024):
                writer.write(chunk)
    return convert(flash, fill, compression, message, progress)


def _checked_archive(staged: Path) -> int:
    """The compression of the archive at `staged`, read through to its end."""
    try:
        with open(staged, "rb") as f:
            magic = f.read(len(XZ_MAGIC))
            compression = next((c for m, c in MAGICS if magic.startswith(m)), None)
            if compression is not None:
                f.seek(0)
                for _ in archive.entries(f, compression):
                    pass
    except OSError as e:
        raise SnapshotError(f"{staged}: cannot be read: {e.strerror}; nothing was "
                            f"changed") from None
    except SnapshotError as e:
        raise SnapshotError(f"{staged}: {e}; nothing was changed") from None
    if compression is None:
        raise SnapshotError(f"{staged}: not a gzip or xz archive; nothing was changed")
    return compression


def mount_of(device: str, mounts: Path = Path("/proc/mounts"),
             sys_class: str = "/sys/class/ubi") -> tuple[str, str] | None:
    """(mount point, fstype) where the MTD device `device` (/dev/mtdN) is mounted, through its
    mtdblock or mtdN name, or the UBI volume `device` (/dev/ubiX_Y), through that name or
    ubiX:NAME, if it is; None for anything else (a simulator image)."""
    node = device.removeprefix("/dev/")
    index = node.removeprefix("mtd")
    if index.isdigit():
        names = {f"/dev/mtdblock{index}", f"/dev/mtd{index}", f"mtd{index}"}
    elif re.fullmatch(r"ubi\d+_\d+", node):
        names = {device, node}
        name = Path(sys_class, node, "name")
        if name.is_file():
            names.add(f"{node.split('_')[0]}:{name.read_text().strip()}")
    else:
        return None
    for line in mounts.read_text().splitlines():
        source, mountpoint, fstype = line.split()[:3]
        if source in names:
            return mountpoint.replace("\\040", " "), fstype
    return None


def stage(upper: Path, staged: Path, compression: int) -> Capture:
    """Pack the overlay upper dir into `staged` (in RAM, /tmp) for the RAM stage; the capture
    says whether it changed while it was read. A failure, such as /tmp running out of room,
    leaves no partial file."""
    capture = Capture(upper)
    staged.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(staged, "wb") as out:
            capture.pack(out, compression)
    except OSError as e:
        staged.unlink(missing_ok=True)
        raise SnapshotError(f"cannot stage {upper} in {staged}: {e.strerror or e}; "
                            f"nothing was changed") from None
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return capture


def offline(flash: Flash, source: Path | None, staged: Path | None, message: str,
            compression: int, progress=None) -> Capture | None:
    """Convert from an overlay upper dir (`source`: returns its capture) or an archive the
    RAM stage staged, on a device nothing has mounted (jffs2 mounted read-write would write
    into the blocks it considers free)."""
    mounted = mount_of(flash.name)
    if mounted:
        raise SnapshotError(f"{flash.name} is mounted at {mounted[0]} ({mounted[1]}); run "
                            f"`snapshot convert` without --from to go through the RAM stage")
    if staged is not None:
        return from_archive(flash, staged, message, progress)
    return from_directory(flash, source, compression, message, progress)


def ram_stage_source(flash: Flash, message: str) -> Path:
    """The upper dir of the jffs2 overlay mounted from `flash`, which the RAM stage can
    convert. Refused, with nothing changed, when there is none, when the RAM stage is
    missing, or when `message` does not fit the format (the RAM stage could not write it)."""
    message_bytes(message)
    mounted = mount_of(flash.name)
    fs = overlay_fs(flash)
    if mounted is None or mounted[1] != fs:
        raise SnapshotError(f"{flash.name} is not mounted as {fs}; nothing to convert "
                            f"(use --from DIR for an overlay dir)")
    ram_stage_ready()
    return Path(mounted[0]) / "upper"


def overlay_fs(flash: Flash) -> str:
    """The stock overlay's filesystem on this device: ubifs on a UBI volume, else jffs2."""
    return "ubifs" if flash.geometry.is_ubi else "jffs2"


def ram_stage_ready(hint: str = "") -> None:
    if not Path(STAGE).is_file():
        raise SnapshotError(f"{STAGE} is missing (reinstall snapshot{hint}); nothing was "
                            f"changed")


# -- ubifs on a UBI volume: converted by the next boot's preinit ------------------------------

#: Beside upper/ on the ubifs: the staged overlay and its message, for the next boot.
PENDING = ".snapshot-convert"
UBIFS_MOUNT = Path("/tmp/snapshot-convert/ubifs")


def stage_for_boot(overlay: Path, message: str, compression: int) -> Capture:
    """Stage the ubifs overlay's upper dir on the ubifs itself (overlay/PENDING), for the
    next boot's preinit to convert (DESIGN.md §14): while the router runs, ubifs holds the
    volume's one writer slot, and processes that stay (PID 1, the user's shell) keep it
    mounted. The archive appears under its name whole (written aside, synced, renamed), so
    a cut leaves it whole or absent; nothing of the flash outside ubifs is touched."""
    message_bytes(message)
    pending = overlay / PENDING
    pending.mkdir(exist_ok=True)
    partial = pending / "overlay.tar.gz.partial"
    capture = stage(overlay / "upper", partial, compression)
    (pending / "message.partial").write_text(message)
    for name in ("message", "overlay.tar.gz"):
        with open(pending / f"{name}.partial", "rb+") as f:
            os.fsync(f.fileno())
        os.replace(pending / f"{name}.partial", pending / name)
    os.sync()
    return capture


def convert_pending(device: str, log) -> bool:
    """At boot, before anything mounts the volume: when the ubifs on it holds a staged
    overlay, convert it (from a copy in RAM) and return True. Until the one commit ubifs is
    as it was, staged overlay included, so a cut means the next boot tries again. A failed
    conversion renames the staged overlay aside (PENDING.failed), so the boot after does not
    try again, and the router boots its ubifs."""
    with open_flash(device) as flash:
        name = flash.name
        if recognise(flash) != "a ubifs filesystem":
            return False
    UBIFS_MOUNT.mkdir(parents=True, exist_ok=True)
    kernel.mount(name, str(UBIFS_MOUNT), "ubifs", flags=kernel.RDONLY)
    try:
        pending = UBIFS_MOUNT / PENDING
        found = (pending / "overlay.tar.gz").is_file() and (pending / "message").is_file()
        if found:
            message = (pending / "message").read_text()
            STAGED.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(pending / "overlay.tar.gz", STAGED)
    finally:
        kernel.unmount(str(UBIFS_MOUNT))
    if not found:
        return False
    log(f"converting the ubifs overlay staged on {name}")
    try:
        with opened(name, writable=True) as flash:
            from_archive(flash, STAGED, message)
    except (SnapshotError, MtdError) as e:
        log(f"converting {name} failed: {e}; booting its ubifs, the staged overlay renamed "
            f"to {PENDING}.failed", loud=True)
        kernel.mount(name, str(UBIFS_MOUNT), "ubifs")
        try:
            os.replace(UBIFS_MOUNT / PENDING, UBIFS_MOUNT / f"{PENDING}.failed")
        finally:
            kernel.unmount(str(UBIFS_MOUNT))
        return False
    finally:
        STAGED.unlink(missing_ok=True)
    log(f"converted {name}: snapshot 1 ({message})")
    return True


def reboot() -> None:
    """Reboot at once (what the RAM stage does too), the staged overlay synced."""
    os.sync()
    os.execvp("reboot", ["reboot", "-f"])


def hand_over(device: str, args: list[str]) -> None:
    """Become the RAM stage, which converts `device` and reboots: from STAGED (`args`: the
    archive and the message), or from the old chain on it (`args`: --legacy ...)."""
    os.execv("/bin/sh", ["/bin/sh", STAGE, device, *args])
