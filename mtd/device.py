"""Linux MTD character devices (/dev/mtdN) through the cffi bindings.

This is the only module that imports the compiled extension `mtd._mtd_abi`.
"""
import errno
import os
import stat

from mtd._mtd_abi import ffi, lib
from mtd.errors import FlashOpenError, MtdError, from_errno
from mtd.flash import (Bitflips, Closing, FlashType, Geometry, Stats, check_block, check_erase,
                       check_span, check_write, open_backing, read_exactly,
                       write_all)

DEFAULT_PARTITION = "rootfs_data"

_TYPES = {
    lib.MTD_ABSENT: FlashType.ABSENT,
    lib.MTD_RAM: FlashType.RAM,
    lib.MTD_ROM: FlashType.ROM,
    lib.MTD_NORFLASH: FlashType.NOR,
    lib.MTD_NANDFLASH: FlashType.NAND,
    lib.MTD_DATAFLASH: FlashType.DATAFLASH,
    lib.MTD_UBIVOLUME: FlashType.UBI,
    lib.MTD_MLCNANDFLASH: FlashType.MLC_NAND,
}

_HEX_DIGITS = frozenset("0123456789abcdef")


def partitions(proc_mtd: str = "/proc/mtd") -> dict[str, str]:
    """Partition name -> /dev/mtdN, from /proc/mtd (`mtd3: 00800000 00010000 "rootfs_data"`)."""
    try:
        with open(proc_mtd) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return {}
    found = {}
    for line in lines:
        entry = _proc_mtd_entry(line)
        if entry:
            found.setdefault(entry[1], f"/dev/{entry[0]}")
    return found


def _proc_mtd_entry(line: str) -> tuple[str, str] | None:
    """(mtdN, name) of a /proc/mtd line `mtdN: SIZE ERASESIZE "NAME"` (sizes in lower-case
    hex), or None for the header or anything else. Split by hand: `re` would be a tenth of
    a short command's start-up on a router's CPU."""
    device, colon, rest = line.partition(": ")
    fields = rest.split(" ", 2)
    number = device[3:]
    if not (colon and device.startswith("mtd") and number.isascii() and number.isdigit()
            and len(fields) == 3 and all(f and _HEX_DIGITS.issuperset(f) for f in fields[:2])
            and len(fields[2]) >= 2 and fields[2][0] == fields[2][-1] == '"'):
        return None
    return device, fields[2][1:-1]


def default_partition_name(cmdline: str = "/proc/cmdline") -> str:
    """rootfs_data, unless the kernel command line names another (fstools_overlay_name=)."""
    try:
        with open(cmdline) as f:
            words = f.read().split()
    except FileNotFoundError:
        return DEFAULT_PARTITION
    for word in words:
        if word.startswith("fstools_overlay_name="):
            return word.split("=", 1)[1] or DEFAULT_PARTITION
    return DEFAULT_PARTITION


def path_for_name(name: str, proc_mtd: str = "/proc/mtd") -> str:
    path = partitions(proc_mtd).get(name)
    if path is None:
        raise FlashOpenError(f"no MTD partition named {name!r} in {proc_mtd}")
    return path


class MtdDevice(Closing):
    """One MTD character device. Opened read-only unless `writable`, so that a read-only
    command cannot write to flash even by mistake. Use it as a context manager."""

    def __init__(self, path: str, writable: bool = False):
        self.name = path
        self.writable = writable
        self._fd = open_backing(path, writable, "no such device")
        try:
            if not stat.S_ISCHR(os.fstat(self._fd).st_mode):
                raise FlashOpenError(f"{path}: not an MTD device (not a character device)")
            self.geometry = self._read_geometry()
        except BaseException:
            os.close(self._fd)
            raise

    @classmethod
    def by_name(cls, name: str, writable: bool = False) -> "MtdDevice":
        return cls(path_for_name(name), writable)

    def _ioctl(self, operation: str, request: int, arg, offset: int | None = None) -> int:
        ret = lib.ioctl(self._fd, request, arg)
        if ret < 0:
            raise from_errno(ffi.errno, self.name, operation, offset)
        return ret

    def _read_geometry(self) -> Geometry:
        info = ffi.new("struct mtd_info_user *")
        try:
            self._ioctl("MEMGETINFO", lib.MEMGETINFO, info)
        except MtdError as e:
            if e.errno == errno.ENOTTY:
                raise FlashOpenError(f"{self.name}: not an MTD device") from None
            raise
        return Geometry(type=_TYPES.get(info.type, FlashType.ABSENT), size=info.size,
                        erasesize=info.erasesize, writesize=info.writesize,
                        oobsize=info.oobsize, flags=info.flags)

    def _ecc_stats(self):
        ecc = ffi.new("struct mtd_ecc_stats *")
        self._ioctl("ECCGETSTATS", lib.ECCGETSTATS, ecc)
        return ecc

    def read(self, offset: int, length: int) -> bytes:
        check_span(self.name, self.geometry, "read", offset, length)
        return read_exactly(self._fd, self.name, offset, length)

    def read_ecc(self, offset: int, length: int) -> tuple[bytes, Bitflips]:
        # read() on /dev/mtdN returns data even after -EUCLEAN (corrected) or -EBADMSG
        # (uncorrectable); only the device's ECC counters reveal them. MEMREAD would report
        # per call but needs Linux 5.18, newer than many router kernels.
        before = self._ecc_stats()
        before = (before.corrected, before.failed)
        data = self.read(offset, length)
        after = self._ecc_stats()
        return data, Bitflips(after.corrected - before[0], after.failed - before[1])

    def write(self, offset: int, data: bytes) -> None:
        check_write(self.name, self.geometry, offset, len(data))
        write_all(self._fd, self.name, offset, data)

    def erase(self, offset: int, length: int) -> None:
        check_erase(self.name, self.geometry, offset, length)
        for start in range(offset, offset + length, self.geometry.erasesize):
            # Chips flagged POWERUP_LOCK come out of reset with every block locked; an erase
            # of a locked block fails, so unlock each one just before erasing it.
            if self.geometry.flags & lib.MTD_POWERUP_LOCK:
                lock = ffi.new("struct erase_info_user *", (start, self.geometry.erasesize))
                self._ioctl("MEMUNLOCK", lib.MEMUNLOCK, lock, start)
            erase = ffi.new("struct erase_info_user64 *", (start, self.geometry.erasesize))
            self._ioctl("MEMERASE64", lib.MEMERASE64, erase, start)

    def is_bad(self, block: int) -> bool:
        check_block(self.name, self.geometry, "MEMGETBADBLOCK", block)
        # Only NAND keeps a bad block table; NOR and RAM devices have no bad blocks.
        if not self.geometry.is_nand:
            return False
        offset = ffi.new("int64_t *", self.geometry.block_offset(block))
        return self._ioctl("MEMGETBADBLOCK", lib.MEMGETBADBLOCK, offset, offset[0]) > 0

    def mark_bad(self, block: int) -> None:
        check_block(self.name, self.geometry, "MEMSETBADBLOCK", block)
        offset = ffi.new("int64_t *", self.geometry.block_offset(block))
        self._ioctl("MEMSETBADBLOCK", lib.MEMSETBADBLOCK, offset, offset[0])

    def bad_blocks(self) -> list[int]:
        return [b for b in range(self.geometry.blocks) if self.is_bad(b)]

    def stats(self) -> Stats:
        ecc = self._ecc_stats()
        return Stats(programs=None, erases=None, bytes_programmed=None, bytes_read=None,
                     erase_counts=None, ecc_corrected=ecc.corrected, ecc_failed=ecc.failed,
                     bad_blocks=len(self.bad_blocks()))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
