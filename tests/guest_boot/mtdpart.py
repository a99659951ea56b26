"""Add an MTD partition NAME covering the whole of an MTD device, the way a router's
partition table names `rootfs_data` (the BLKPG ioctl of the MTD character device, as
mtd-utils' `mtdpart add` does). The partition lasts until the next boot.

    python mtdpart.py /dev/mtdN NAME     prints the new partition's /dev/mtdM
"""
import ctypes
import fcntl
import os
import re
import sys

BLKPG = 0x1269  # _IO(0x12, 105)
BLKPG_ADD_PARTITION = 1
MEMGETINFO = 0x80204D01  # _IOR('M', 1, struct mtd_info_user), 32 bytes


class BlkpgPartition(ctypes.Structure):
    _fields_ = [("start", ctypes.c_longlong), ("length", ctypes.c_longlong),
                ("pno", ctypes.c_int), ("devname", ctypes.c_char * 64),
                ("volname", ctypes.c_char * 64)]


class BlkpgIoctlArg(ctypes.Structure):
    _fields_ = [("op", ctypes.c_int), ("flags", ctypes.c_int), ("datalen", ctypes.c_int),
                ("data", ctypes.c_void_p)]


def device_size(fd: int) -> int:
    info = bytearray(32)
    fcntl.ioctl(fd, MEMGETINFO, info)
    return int.from_bytes(info[8:12], "little")  # u8 type, u32 flags, u32 size, ...


def add_partition(master: str, name: str) -> str:
    fd = os.open(master, os.O_RDWR)
    try:
        part = BlkpgPartition(0, device_size(fd), 0, name.encode(), b"")
        arg = BlkpgIoctlArg(BLKPG_ADD_PARTITION, 0, ctypes.sizeof(part),
                            ctypes.cast(ctypes.pointer(part), ctypes.c_void_p))
        fcntl.ioctl(fd, BLKPG, bytes(arg))
    finally:
        os.close(fd)
    with open("/proc/mtd") as f:
        for line in f:
            m = re.match(r'^(mtd\d+): [0-9a-f]+ [0-9a-f]+ "(.*)"$', line.strip())
            if m and m.group(2) == name:
                return f"/dev/{m.group(1)}"
    raise SystemExit(f"mtdpart: no {name!r} in /proc/mtd after adding it")


if __name__ == "__main__":
    print(add_partition(sys.argv[1], sys.argv[2]))
