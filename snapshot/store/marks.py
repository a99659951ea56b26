"""The stock tools' marks: what boot does when factoryreset, firstboot or a sysupgrade wrote
over the start of the partition (DESIGN.md §11).

Those tools know nothing of the chain. They write their mark at the start of the partition,
the mark block, and leave the rest alone. The rule is that a mark there wins over whatever
the other anchor blocks hold, so an old chain never comes back over a reset or over new
firmware:
- 0xdeadc0de (factoryreset, firstboot, a sysupgrade without settings) means "start empty":
  boot makes an empty chain (`reset`). On a UBI volume those tools empty the volume instead
  (factoryreset's UBI_IOCVOLUP 0, sysupgrade's new volume): an anchor area that reads erased
  there means the same.
- jffs2 (a sysupgrade that kept settings) means the partition is theirs now: boot erases the
  chain's anchor blocks (`void`) and boots the stock way, where preinit restores the kept
  settings.
- Anything else that is not the chain's own entry (erased, torn, the old fstools chain) counts
  only under a newest entry with a mark entry, the chain's own takeover in progress; without
  one (a sysupgrade cut after its erase, say), void, then stock; or, for the old fstools
  chain (`OWRT`), void, then boot it read-only (`OLD`, DESIGN.md §8).
"""
import errno

from mtd import Flash, MtdError
from snapshot.store.chain import (FOREIGN, MARK_ENTRY, AnchorScan, Chain, Mark, _padded,
                                  finish_mark, pending_mark, read_mark, scan_anchors, visible_step,
                                  write_fresh_anchor_block)
from snapshot.store.format import ANCHOR_MAGIC, Anchor

CHAIN, STOCK, OLD = "chain", "stock", "old"


def decide(flash: Flash) -> tuple[str, str | None]:
    """Read only: (CHAIN, STOCK or OLD, the write settle() has to make first: "reset",
    "void" or None). OLD: the old fstools chain, which the boot reads and never writes."""
    scan = scan_anchors(flash)
    mark = read_mark(flash, scan)
    if mark.kind == "deadc0de":
        return CHAIN, "reset"
    newest = scan.newest
    if mark.stock or (mark.kind in FOREIGN and newest is not None
                      and not pending_mark(newest.newest)):
        return (OLD if mark.kind == "legacy" else STOCK), \
            "void" if _voidable(flash, scan, mark) else None
    if newest is None:
        if emptied_volume(flash, scan, mark):
            return CHAIN, "reset"
        return (OLD if mark.kind == "legacy" else STOCK), None
    return CHAIN, None


def emptied_volume(flash: Flash, scan: AnchorScan, mark: Mark) -> bool:
    """A UBI volume whose anchor area reads erased: what factoryreset (UBI_IOCVOLUP 0),
    firstboot and a sysupgrade without settings (which recreates the volume) leave, UBI's
    0xdeadc0de. Stock tools never write a mark there, so emptiness is the mark."""
    g = flash.geometry
    return g.is_ubi and mark.kind == "erased" and all(
        flash.read(g.block_offset(b.block), g.erasesize) == b"\xff" * g.erasesize
        for b in scan.blocks)


def settle(flash: Flash, log=None) -> str:
    """Apply the rule before anything reads the chain; returns CHAIN when the device holds a
    chain to boot (made empty after a reset mark), OLD when it holds the old fstools chain,
    STOCK when the stock mount_root should have it. Each step is idempotent, so a power cut
    anywhere is finished by the next boot."""
    answer, action = decide(flash)
    if action is None:
        return answer
    scan = scan_anchors(flash)
    mark = read_mark(flash, scan)
    if action == "reset":
        what = "an emptied UBI volume (a factory reset, firstboot, or a sysupgrade without " \
               "settings)" if emptied_volume(flash, scan, mark) else mark.describe()
        reset(flash, scan, mark)
        if log:
            log(f"{flash.name} starts with {what}: started an empty chain")
    else:
        voided = void(flash, scan, mark)
        if log:
            log(f"{flash.name} starts with {mark.describe()}: erased the chain's anchor "
                f"blocks {', '.join(map(str, voided))}, so it never comes back"
                + ("; booting the stock way" if answer == STOCK else ""), loud=True)
    return answer


def _voidable(flash: Flash, scan: AnchorScan, mark: Mark) -> list:
    g = flash.geometry
    return [b for b in scan.blocks if not b.bad and b.block != mark.block and
            flash.read(g.block_offset(b.block), len(ANCHOR_MAGIC)) == ANCHOR_MAGIC]


def void(flash: Flash, scan: AnchorScan, mark: Mark) -> list[int]:
    """Erase every anchor block but the mark block that starts with an anchor entry header:
    the chain's own blocks. Nothing else is touched (jffs2 never leaves an anchor header at
    the start of a block it wrote: it erases a block before writing it)."""
    voided = []
    for block in _voidable(flash, scan, mark):
        erase(flash, block)
        voided.append(block.block)
    return voided


def reset(flash: Flash, scan: AnchorScan, mark: Mark) -> None:
    """An empty chain in place of whatever the partition holds: erase the anchor blocks other
    than the mark block, program an empty entry with a MARK entry into one of them (still
    invisible: the mark block holds its mark), then rewrite the mark block (from its erase
    on, the empty chain counts). A cut before that erase leaves the mark, and the next boot
    starts over; after it, the empty chain, which the next boot finishes."""
    g = flash.geometry
    gen = scan.max_gen
    if scan.newest is not None:
        gen = max([gen] + [e.gen for e in scan.newest.newest.records])
    others = [b for b in scan.blocks if not b.bad and b.block != mark.block]
    for block in others:
        if flash.read(g.block_offset(block.block), g.erasesize) != b"\xff" * g.erasesize:
            erase(flash, block)
    others = [b for b in others if not b.bad]
    write_fresh_anchor_block(flash, others, _padded(flash, Anchor(gen + 1, (MARK_ENTRY,))))
    finish_mark(Chain(flash, over_mark=True))


def erase(flash: Flash, block) -> None:
    """Erase an anchor block; one whose erase fails is marked bad."""
    g = flash.geometry
    try:
        with visible_step(flash):
            flash.erase(g.block_offset(block.block), g.erasesize)
    except MtdError as e:
        if e.errno != errno.EIO:
            raise
        flash.mark_bad(block.block)
        block.bad = True
