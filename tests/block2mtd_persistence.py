"""Guest side of tests/test_kernel_block2mtd.py: write erase blocks to the block2mtd device
and tell the host (on the serial console) when, so that it can look at the disk image while
the guest runs. The host answers through the file `go` in the results directory (the
directory of the harness's state dir, shared at the same path).

    wrote 5       block 5 erased and programmed, the device still open (fsync tried first)
    closed 5      after go = "close": the device closed
    synced 6      after go = "sync": block 6 erased and programmed, the device still open,
                  then sync() (what synced_cli.py does after each flash operation)
"""
import fcntl
import os
import struct
import time
from pathlib import Path

MEMERASE = 0x40084D02  # _IOW('M', 2, struct erase_info_user)
ERASE_SIZE = 64 * 1024
GO = Path(os.environ["PERSISTENCE_RESULTS"]) / "go"


def console(message: str) -> None:
    with open("/dev/ttyS0", "w") as tty:
        tty.write(f"persistence: {message}\n")


def program(fd: int, block: int) -> None:
    fcntl.ioctl(fd, MEMERASE, struct.pack("II", block * ERASE_SIZE, ERASE_SIZE))
    data = b"persistence-%03d" % block
    os.pwrite(fd, data * (ERASE_SIZE // len(data)), block * ERASE_SIZE)


def wait_for(word: str) -> None:
    while not (GO.exists() and GO.read_text() == word):
        time.sleep(0.01)


device = os.environ["MTD_BLOCK2MTD"]
fd = os.open(device, os.O_RDWR)
program(fd, 5)
try:
    os.fsync(fd)
    console("fsync: succeeded")
except OSError as e:
    console(f"fsync: {e}")
console("wrote 5")
wait_for("close")
os.close(fd)
console("closed 5")
wait_for("sync")
fd = os.open(device, os.O_RDWR)
program(fd, 6)
os.sync()
console("synced 6")
time.sleep(3600)
