"""Linux MTD character devices (/dev/mtdN): read with pread, described by sysfs
(/sys/class/mtd/mtdN), changed through the cffi bindings.

This is the only module that imports the compiled extension `mtd._mtd_abi`, and it does so
at the first ioctl (_abi): reads, the geometry and the ECC counters need none, so a command
that only reads never loads the bindings. On a router's CPU, loading cffi's backend and the
bindings was two fifths of `snapshot list` (bench/bench_mipsel.py).
"""
import os
import stat

from mtd.errors import FlashOpenError
from mtd.flash import (Bitflips, Closing, FlashType, Geometry, Stats, check_block, check_erase,
                       check_span, check_write, ioctl, open_backing, read_exactly,
                       write_all)
from mtd.locate import MTD_CHAR_MAJOR

DEFAULT_PARTITION = "rootfs_data"

def _abi():
    """The compiled bindings, loaded at the first call."""
    from mtd import _mtd_abi
    return _mtd_abi


def mtd_sysfs(rdev: int, sys_class: str = "/sys/class/mtd") -> str | None:
    """The sysfs directory of the MTD device whose node has device number rdev (/dev/mtdN is
    minor 2N, /dev/mtdNro 2N + 1; both are described by mtdN's directory), or None when rdev
    is not an MTD device's."""
    if os.major(rdev) != MTD_CHAR_MAJOR:
        return None
    return f"{sys_class}/mtd{os.minor(rdev) // 2}"


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
            st = os.fstat(self._fd)
            self._sysfs = mtd_sysfs(st.st_rdev) if stat.S_ISCHR(st.st_mode) else None
            if self._sysfs is None:
                raise FlashOpenError(f"{path}: not an MTD device")
            self.geometry = self._read_geometry()
            # A read-only command asks whether each block it reads is bad. The kernel counts
            # the bad blocks of its table: with none, no block needs asking about. A writer
            # asks the kernel every time, since its own writes may make a block bad.
            self._no_bad_blocks = (not writable and self.geometry.is_nand
                                   and self._number("bad_blocks") == 0)
        except BaseException:
            os.close(self._fd)
            raise

    @classmethod
    def by_name(cls, name: str, writable: bool = False) -> "MtdDevice":
        return cls(path_for_name(name), writable)

    def _ioctl(self, request: str, arg, offset: int | None = None) -> int:
        return ioctl(_abi(), self._fd, self.name, request, arg, offset)

    def _attribute(self, name: str) -> str:
        try:
            with open(f"{self._sysfs}/{name}") as f:
                return f.read().strip()
        except OSError as e:
            raise FlashOpenError(f"{self.name}: cannot read {self._sysfs}/{name} (is sysfs "
                                 f"mounted?): {e.strerror}") from None

    def _number(self, name: str) -> int:
        """An integer attribute, as the kernel prints it: decimal, or hexadecimal with 0x
        (flags)."""
        text = self._attribute(name)
        try:
            return int(text, 16) if text.startswith("0x") else int(text)
        except ValueError:
            raise FlashOpenError(f"{self.name}: {self._sysfs}/{name} holds {text!r}, not a "
                                 f"number") from None

    def _read_geometry(self) -> Geometry:
        """What MEMGETINFO would give, from the device's sysfs attributes (the same fields
        of the kernel's struct mtd_info; sysfs-class-mtd in the kernel's ABI documents)."""
        # sysfs names the types as FlashType does (drivers/mtd/mtdcore.c, mtd_type_show),
        # and "unknown" one it has no name for.
        try:
            flash_type = FlashType(self._attribute("type"))
        except ValueError:
            flash_type = FlashType.ABSENT
        return Geometry(type=flash_type, size=self._number("size"),
                        erasesize=self._number("erasesize"),
                        writesize=self._number("writesize"), oobsize=self._number("oobsize"),
                        flags=self._number("flags"))

    def _ecc_counts(self) -> tuple[int, int]:
        """The device's ECC counters (corrected bit flips, uncorrectable reads) since boot:
        ECCGETSTATS's, as sysfs shows them."""
        return self._number("corrected_bits"), self._number("ecc_failures")

    def read(self, offset: int, length: int) -> bytes:
        check_span(self.name, self.geometry, "read", offset, length)
        return read_exactly(self._fd, self.name, offset, length)

    def read_ecc(self, offset: int, length: int) -> tuple[bytes, Bitflips]:
        # read() on /dev/mtdN returns data even after -EUCLEAN (corrected) or -EBADMSG
        # (uncorrectable); only the device's ECC counters reveal them. MEMREAD would report
        # per call but needs Linux 5.18, newer than many router kernels. NOR and RAM devices
        # have no ECC: their counters never move, and are not read.
        if not self.geometry.is_nand:
            return self.read(offset, length), Bitflips()
        before = self._ecc_counts()
        data = self.read(offset, length)
        after = self._ecc_counts()
        return data, Bitflips(after[0] - before[0], after[1] - before[1])

    def write(self, offset: int, data: bytes) -> None:
        check_write(self.name, self.geometry, offset, len(data))
        write_all(self._fd, self.name, offset, data)

    def erase(self, offset: int, length: int) -> None:
        check_erase(self.name, self.geometry, offset, length)
        abi = _abi()
        ffi, lib = abi.ffi, abi.lib
        for start in range(offset, offset + length, self.geometry.erasesize):
            # Chips flagged POWERUP_LOCK come out of reset with every block locked; an erase
            # of a locked block fails, so unlock each one just before erasing it.
            if self.geometry.flags & lib.MTD_POWERUP_LOCK:
                lock = ffi.new("struct erase_info_user *", (start, self.geometry.erasesize))
                self._ioctl("MEMUNLOCK", lock, start)
            erase = ffi.new("struct erase_info_user64 *", (start, self.geometry.erasesize))
            self._ioctl("MEMERASE64", erase, start)

    def is_bad(self, block: int) -> bool:
        check_block(self.name, self.geometry, "MEMGETBADBLOCK", block)
        # Only NAND keeps a bad block table; NOR and RAM devices have no bad blocks.
        if not self.geometry.is_nand or self._no_bad_blocks:
            return False
        offset = _abi().ffi.new("int64_t *", self.geometry.block_offset(block))
        return self._ioctl("MEMGETBADBLOCK", offset, offset[0]) > 0

    def mark_bad(self, block: int) -> None:
        check_block(self.name, self.geometry, "MEMSETBADBLOCK", block)
        offset = _abi().ffi.new("int64_t *", self.geometry.block_offset(block))
        self._ioctl("MEMSETBADBLOCK", offset, offset[0])

    def bad_blocks(self) -> list[int]:
        return [b for b in range(self.geometry.blocks) if self.is_bad(b)]

    def stats(self) -> Stats:
        corrected, failed = self._ecc_counts()
        return Stats(programs=None, erases=None, bytes_programmed=None, bytes_read=None,
                     erase_counts=None, ecc_corrected=corrected, ecc_failed=failed,
                     bad_blocks=len(self.bad_blocks()))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
