"""Run the snapshot CLI with a power cut injected into a real MTD device, for the kernel tier.

The simulator tears its own operations (MTDSIM_POWERCUT_AFTER); a kernel device cannot, so
this test-only launcher wraps the writable device: the N-th program, block erase or (on a UBI
volume) atomic LEB change (SNAPSHOT_TEST_CUT_AFTER=N) is torn the way the simulator tears it,
then the process exits 99 at once. With SNAPSHOT_TEST_COUNT_TO=FILE it only counts operations
into FILE.

Usage: python tests/cut_runner.py --device /dev/mtd0 push --from DIR
"""
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mtd.locate  # noqa: E402
from snapshot.store import chain  # noqa: E402
from snapshot.cli import main  # noqa: E402


class CutInjector:
    def __init__(self, flash):
        self._flash = flash
        self._issued = 0
        self._cut = int(os.environ.get("SNAPSHOT_TEST_CUT_AFTER", "0"))
        self._count_to = os.environ.get("SNAPSHOT_TEST_COUNT_TO")
        self._rng = random.Random(os.environ.get("SNAPSHOT_TEST_CUT_SEED", "1"))

    def __getattr__(self, name):
        return getattr(self._flash, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._flash.close()

    def _tick(self) -> bool:
        self._issued += 1
        if self._count_to:
            Path(self._count_to).write_text(str(self._issued))
        return self._issued == self._cut

    def write(self, offset, data):
        if not self._tick():
            return self._flash.write(offset, data)
        page = self._flash.geometry.writesize
        pages = len(data) // page
        torn = self._rng.randrange(pages) * page if pages else 0
        if torn:
            self._flash.write(offset, data[:torn])
        if pages:
            self._flash.write(offset + torn, self._rng.randbytes(page))
        os._exit(99)

    def change(self, block, data):
        # UBI's atomic LEB change: a cut leaves the old contents or the new ones.
        if not self._tick():
            return self._flash.change(block, data)
        if self._rng.random() < 0.5:
            self._flash.change(block, data)
        os._exit(99)

    def erase(self, offset, length):
        g = self._flash.geometry
        for start in range(offset, offset + length, g.erasesize):
            if not self._tick():
                self._flash.erase(start, g.erasesize)
                continue
            if g.is_ubi:
                # UBI unmaps the LEB in one step: whole or erased.
                if self._rng.random() < 0.5:
                    self._flash.erase(start, g.erasesize)
                os._exit(99)
            # Partly erased: a prefix reads erased, the rest holds unspecified bytes.
            self._flash.erase(start, g.erasesize)
            cut = self._rng.randrange(g.erasesize // g.writesize) * g.writesize
            self._flash.write(start + cut, self._rng.randbytes(g.erasesize - cut))
            os._exit(99)


def open_with_cuts(spec, writable=False):
    flash = real_open(spec, writable)
    return CutInjector(flash) if writable else flash


real_open = mtd.locate.open_flash
# Every command opens its device through the store's opened(), which looks open_flash up there.
chain.open_flash = open_with_cuts

if __name__ == "__main__":
    main()
