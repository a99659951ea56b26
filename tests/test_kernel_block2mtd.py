"""What a kill of qemu keeps of block2mtd writes: the premise of tests/synced_cli.py, which the
real router's power-cut tests (tests/test_router*.py) run the CLI through.

block2mtd writes go into the guest's page cache. They reach the disk image at writeback (by
default 30 s after the write) or when the device is closed (mtdchar's close syncs); fsync()
on /dev/mtdN fails with EINVAL. A kill during a command would then lose all its writes, and
a writeback pass writes pages in offset order, not program order, so it could put an anchor
entry on the disk before the record's last block, which real flash cannot do. So the
command a test kills syncs after every program and erase.

The guest is tests/kernel_vm.py's (the host's tree, block2mtd over a virtio disk backed by a
host file); the test drives qemu itself, hence `kernel_boot`. Without the kernel assets it
fails with the reason (never skips).
"""
import sys
import time
from pathlib import Path

import pytest

from kernel_vm import FLASH_ERASE_SIZE, KernelTierUnavailable, KernelVM, create_flash_image

pytestmark = pytest.mark.kernel_boot

REPO = Path(__file__).resolve().parent.parent
PROBE = Path(__file__).resolve().parent / "block2mtd_persistence.py"
TIMEOUT = 300


def test_block2mtd_persistence(tmp_path):
    """A written block stays in the guest's page cache: it is not on the disk image 2 s after
    the write with the kernel's default writeback (30 s); it is as soon as the device is
    closed (mtdchar syncs at close), or after sync(). fsync() on the MTD character device is
    refused (EINVAL), so a program cannot force it that way."""
    try:
        vm = KernelVM()
    except KernelTierUnavailable as e:
        pytest.fail(f"kernel tier unavailable: {e}", pytrace=False)
    results = tmp_path / "results"
    results.mkdir()
    flash = tmp_path / "flash.img"
    create_flash_image(flash, 4 << 20)
    with vm.start([sys.executable, str(PROBE)], cwd=str(REPO),
                  env={"PERSISTENCE_RESULTS": str(results)}, results_dir=results,
                  flash_image=flash) as guest:

        def wait_for(marker: str) -> None:
            deadline = time.monotonic() + TIMEOUT
            while marker not in guest.console_path.read_text(errors="replace"):
                assert guest.is_running() and time.monotonic() < deadline, guest.console_tail()
                time.sleep(0.01)

        def on_disk(block: int) -> bool:
            marker = b"persistence-%03d" % block
            with open(flash, "rb") as f:
                f.seek(block * FLASH_ERASE_SIZE)
                return f.read(len(marker)) == marker

        wait_for("persistence: wrote 5")
        time.sleep(2)
        after_2s = on_disk(5)
        (results / "go").write_text("close")
        wait_for("persistence: closed 5")
        after_close = on_disk(5)
        (results / "go").write_text("sync")
        wait_for("persistence: synced 6")
        after_sync = on_disk(6)
        console = guest.console_tail(20)
        guest.kill()
    fsync = [line for line in console.splitlines() if "persistence: fsync" in line]
    print(f"block2mtd: a written block is on the disk image 2 s later (default writeback): "
          f"{after_2s}; right after close: {after_close}; right after sync(): {after_sync}; "
          f"{fsync[-1].strip()}")
    assert after_close and after_sync, console
    assert not after_2s, "block2mtd wrote through; the module doc's premise is stale"
    assert "Invalid argument" in fsync[-1], console
