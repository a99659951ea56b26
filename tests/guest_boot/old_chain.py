"""What snapshot reads of the old fstools chain on rootfs_data, for the kernel-tier test of
`convert` from it (test_kernel_legacy.py). Reads only. Prints one line for the host:

    kboot-old-chain: {"snapshots": [[BLOCK, SEQ], ...], "volatile": BLOCK, "sentinel": BOOL,
                      "first_copy": BLOCK, "problems": [...]}

volatile: the block of the copy convert would import (null: none); sentinel: that copy is the
sentinel one; first_copy: where the volatile's first copy is (null: there is none).
"""
import json

from snapshot.store.chain import opened
from snapshot.store import legacy

with opened("mtd:rootfs_data") as flash:
    old = legacy.read(flash)
state = {
    "snapshots": [[e.block, e.seq] for e in old.snapshots],
    "volatile": None if old.volatile is None else old.volatile.block,
    "sentinel": old.from_sentinel,
    "first_copy": None if old.first_copy is None else old.first_copy.block,
    "problems": old.problems,
}
print(f"kboot-old-chain: {json.dumps(state)}")
