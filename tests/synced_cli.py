"""The snapshot CLI with every flash program and erase made durable before it returns, for the
real router's power-cut tests (tests/test_router*.py copy it into the guest and run it with the
router's Python and its installed package).

On real flash a program or erase is done when the driver returns. block2mtd only dirties
the block device's page cache, which is written back later, and in offset order, not
program order; fsync() on /dev/mtdN is refused. So a kill of the guest could keep an anchor
entry without the record pages programmed before it, which real flash cannot do. This
test-only launcher wraps the writable device, as tests/cut_runner.py does, and calls sync()
after each operation: the disk image then follows the program order, and a kill lands
between two operations or tears the one under way.

With SYNCED_HOLD_ANCHOR_ERASE=S in the environment, after erasing a block of the anchor area
it writes `synced-cli: anchor block N erased` on stderr and waits S seconds before going on
(to program the anchor entry there): the host can cut the power in that window, which is
otherwise a few milliseconds wide. The wait changes nothing on the flash.

Usage: python synced_cli.py [snapshot CLI arguments]
"""
import os
import sys
import time

import mtd.locate
from snapshot.cli import main
from snapshot.store import chain
from snapshot.store.format import ANCHOR_BLOCKS

HOLD_ANCHOR_ERASE = float(os.environ.get("SYNCED_HOLD_ANCHOR_ERASE", "0"))


class Synced:
    def __init__(self, flash):
        self._flash = flash

    def __getattr__(self, name):
        return getattr(self._flash, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._flash.close()

    def write(self, offset, data):
        try:
            return self._flash.write(offset, data)
        finally:
            os.sync()

    def change(self, block, data):
        try:
            return self._flash.change(block, data)
        finally:
            os.sync()

    def erase(self, offset, length):
        try:
            result = self._flash.erase(offset, length)
        finally:
            os.sync()
        block = offset // self._flash.geometry.erasesize
        if HOLD_ANCHOR_ERASE and block < ANCHOR_BLOCKS:
            print(f"\nsynced-cli: anchor block {block} erased", file=sys.stderr, flush=True)
            time.sleep(HOLD_ANCHOR_ERASE)
        return result

    def mark_bad(self, block):
        try:
            return self._flash.mark_bad(block)
        finally:
            os.sync()


def open_synced(spec, writable=False):
    flash = real_open(spec, writable)
    return Synced(flash) if writable else flash


real_open = mtd.locate.open_flash
# Every writable open goes through the store's opened(), which looked open_flash up at import.
chain.open_flash = open_synced

if __name__ == "__main__":
    main(prog_name="snapshot")
