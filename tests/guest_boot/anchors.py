"""What the anchor area of rootfs_data holds, for the kernel-tier tests of the stock tools'
marks (test_kernel_marks.py). Reads only. Prints one line for the host:

    kboot-anchors: {"mark": KIND, "newest": BLOCK, "headers": [BLOCK, ...]}

mark: what the mark block holds, as snapshot.store.chain.read_mark names it (anchor, deadc0de,
jffs2, erased, ...); newest: the anchor block with the newest valid anchor entry (null: no
entry anywhere); headers: the good anchor blocks that start with an anchor entry header.
"""
import json

from snapshot.store.chain import opened
from snapshot.store.chain import read_mark, scan_anchors
from snapshot.store.format import ANCHOR_MAGIC

with opened("mtd:rootfs_data") as flash:
    g = flash.geometry
    scan = scan_anchors(flash)
    state = {
        "mark": read_mark(flash, scan).kind,
        "newest": scan.newest.block if scan.newest is not None else None,
        "headers": [b.block for b in scan.blocks if not b.bad and
                    flash.read(g.block_offset(b.block), len(ANCHOR_MAGIC)) == ANCHOR_MAGIC],
    }
print(f"kboot-anchors: {json.dumps(state)}")
