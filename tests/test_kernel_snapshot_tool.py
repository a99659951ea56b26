"""fstools' real `snapshot_tool`, the old chain's writer (built by
scripts/setup-openwrt-tools.sh), on a real MTD partition named rootfs_data (over mtdram, in the
kernel tier's guest): it writes two snapshots and the volatile as its front end did, and
- snapshot's reader (snapshot.store.legacy) finds exactly those entries, the volatile in both
  its copies;
- tests/old_chain.py's OldTool, with which the simulator tests and the real router's test of
  the old chain (tests/test_router_convert.py) write their images, lays the same chain out
  byte for byte: the MD5 stored as this little-endian router's tool stores it included.
"""
import ctypes
import fcntl
import os
import re
import subprocess
from pathlib import Path

import pytest

from mtd import FlashType, Geometry
from old_chain import FIRST_SEQ, OldTool, archive
from openwrt_tools import tool
from snapshot.store import legacy
from snapshot.store.chain import opened

pytestmark = pytest.mark.kernel

KIB = 1 << 10
#: tests/kernel_vm.py's mtdram: 4 MiB of 64 KiB blocks.
SIZE, ERASE_SIZE = 4096 * KIB, 64 * KIB

SNAPSHOTS = [
    {"etc": ("dir",), "etc/config": ("dir",), "etc/config/network": "lan 1\n",
     "etc/banner": ("whiteout",), "etc/added": ("dir",), "etc/added/file": "1\n"},
    # 100 KiB that do not compress: the entry spans two erase blocks.
    {"etc": ("dir",), "etc/blob": os.urandom(100 * KIB), "etc/link": ("link", "config/network")},
]
VOLATILE = {"etc": ("dir",), "etc/config": ("dir",), "etc/config/system": "host\n",
            "etc/config/firewall": ("whiteout",)}

# The BLKPG ioctl of the MTD character device, as mtd-utils' `mtdpart` uses it: a router's
# partition table names rootfs_data; here a partition over the whole mtdram does.
BLKPG = 0x1269  # _IO(0x12, 105)
BLKPG_ADD_PARTITION, BLKPG_DEL_PARTITION = 1, 2


class BlkpgPartition(ctypes.Structure):
    _fields_ = [("start", ctypes.c_longlong), ("length", ctypes.c_longlong),
                ("pno", ctypes.c_int), ("devname", ctypes.c_char * 64),
                ("volname", ctypes.c_char * 64)]


class BlkpgIoctlArg(ctypes.Structure):
    _fields_ = [("op", ctypes.c_int), ("flags", ctypes.c_int), ("datalen", ctypes.c_int),
                ("data", ctypes.c_void_p)]


def blkpg(master: str, op: int, part: BlkpgPartition) -> None:
    arg = BlkpgIoctlArg(op, 0, ctypes.sizeof(part),
                        ctypes.cast(ctypes.pointer(part), ctypes.c_void_p))
    fd = os.open(master, os.O_RDWR)
    try:
        fcntl.ioctl(fd, BLKPG, bytes(arg))
    finally:
        os.close(fd)


@pytest.fixture
def rootfs_data():
    """/dev/mtdN of a partition rootfs_data over the whole (erased) mtdram, removed after."""
    master = os.environ["MTD_MTDRAM"]
    subprocess.run(["flash_erase", "-q", master, "0", "0"], check=True)
    blkpg(master, BLKPG_ADD_PARTITION, BlkpgPartition(0, SIZE, 0, b"rootfs_data", b""))
    mtd = re.search(r'^mtd(\d+): \w+ \w+ "rootfs_data"$', Path("/proc/mtd").read_text(), re.M)
    assert mtd, Path("/proc/mtd").read_text()
    try:
        yield f"/dev/mtd{mtd.group(1)}"
    finally:
        # Deleting takes the partition's own MTD number.
        blkpg(master, BLKPG_DEL_PARTITION, BlkpgPartition(0, 0, int(mtd.group(1)), b"", b""))


def test_the_real_snapshot_tool_writes_the_chain_old_chain_py_lays_out(rootfs_data, tmp_path):
    old = tool("snapshot_tool")
    env = {**os.environ, "LD_LIBRARY_PATH": str(old.parent.parent / "lib")}
    archives = [archive(spec) for spec in SNAPSHOTS]
    # The front end's fixed paths.
    for payload in archives:
        Path("/tmp/snapshot.tar.gz").write_bytes(payload)
        subprocess.run([old, "write"], check=True, env=env, capture_output=True)
    volatile = archive(VOLATILE)
    Path("/tmp/config.tar.gz").write_bytes(volatile)
    subprocess.run([old, "config_write"], check=True, env=env, capture_output=True)
    written = Path(rootfs_data).read_bytes()

    with opened("mtd:rootfs_data") as flash:
        chain = legacy.read(flash)
    assert [(e.block, e.seq) for e in chain.snapshots] == [(0, FIRST_SEQ), (1, FIRST_SEQ + 1)]
    assert chain.problems == [] and chain.first_copy.block == 3 and chain.sentinel_good
    assert chain.volatile is chain.first_copy and chain.volatile.seq == FIRST_SEQ + 1

    image = tmp_path / "old-tool.img"
    OldTool(image, Geometry(FlashType.NOR, SIZE, ERASE_SIZE, 1, 0)).chain(archives, volatile)
    laid_out = image.read_bytes()
    differ = [b for b in range(SIZE // ERASE_SIZE)
              if written[b * ERASE_SIZE:(b + 1) * ERASE_SIZE]
              != laid_out[b * ERASE_SIZE:(b + 1) * ERASE_SIZE]]
    assert not differ, f"blocks that differ from OldTool's: {differ}"
