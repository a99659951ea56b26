"""UBI volumes (/dev/ubiX_Y) through the cffi bindings: `rootfs_data` on today's NAND routers,
where OpenWrt keeps the overlay in a UBI volume rather than on a raw MTD partition.

This is the only module that imports the compiled extension `mtd._ubi_abi`, at the first
ioctl (_abi): reading a volume needs pread and sysfs only, so a command that only reads never
loads the bindings (mtd/device.py says why that matters).

What a volume is, seen through the Flash protocol (DESIGN.md §14):
- An erase unit is a logical eraseblock (LEB) of the volume's `usable_eb_size` bytes: the
  physical block less UBI's two headers, so not a power of two. The write unit is the UBI
  device's `min_io_size`, the NAND page. Writes go straight to a LEB (the direct-write
  property, set when the volume is opened writable), and each page is programmed once
  between two erases, as on NAND.
- UBI maps LEBs onto good physical blocks, moves data off blocks that wear or show bit flips,
  and hides bad blocks: a volume has none, so is_bad is always False and mark_bad is refused.
- erase() is UBI_IOCEBER: the LEB is unmapped and its old physical block erased before the
  call returns, so no power cut brings the old contents back. (UBI_IOCEBUNMAP alone returns
  first and erases later; after an unclean reboot the old block may be found mapped again.)
- change() is UBI_IOCEBCH: the LEB takes new contents in one step that UBI makes atomic; a
  power cut at any instant leaves the old contents or the new ones.
"""
import errno
import os
import stat

from mtd.errors import FlashOpenError, MtdError, from_errno
from mtd.flash import (Bitflips, Closing, FlashType, Geometry, Stats, check_block, check_erase,
                       check_span, check_write, ioctl, open_backing, read_exactly,
                       write_all)

SYS_CLASS_UBI = "/sys/class/ubi"


def _abi():
    """The compiled bindings, loaded at the first call."""
    from mtd import _ubi_abi
    return _ubi_abi


# Paths are strings here, not pathlib's: a UBI router's every command opens its volume, and
# on its CPU pathlib's import would be a tenth of a short command.

def volume_sysfs(path: str, rdev: int, sys_dev: str = "/sys/dev/char") -> str | None:
    """The sysfs directory of the UBI volume whose device number is rdev, or None when the
    character device is not a UBI volume (an MTD device, a UBI device's own node)."""
    directory = os.path.realpath(f"{sys_dev}/{os.major(rdev)}:{os.minor(rdev)}")
    return directory if os.path.isfile(f"{directory}/usable_eb_size") else None


def is_volume(path: str) -> bool:
    """Whether path is the character device of a UBI volume."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and volume_sysfs(path, st.st_rdev) is not None


def path_for_name(name: str, sys_class: str = SYS_CLASS_UBI) -> str:
    """/dev/ubiX_Y of the volume called name, looked up in sysfs as fstools does."""
    try:
        entries = os.listdir(sys_class)
    except OSError:
        entries = []
    found = sorted(v for v in entries if v.startswith("ubi") and "_" in v[3:]
                   and _read(f"{sys_class}/{v}/name", default=None) == name)
    if not found:
        raise FlashOpenError(f"no UBI volume named {name!r} in {sys_class}")
    return f"/dev/{found[0]}"


def volume_exists(name: str, sys_class: str = SYS_CLASS_UBI) -> bool:
    try:
        path_for_name(name, sys_class)
    except FlashOpenError:
        return False
    return True


def _read(path: str, default: str | None = "") -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


class UbiVolume(Closing):
    """One dynamic UBI volume. Opened read-only unless `writable`; UBI lets one writer open a
    volume at a time, so a volume ubifs has mounted is refused for writing."""

    def __init__(self, path: str, writable: bool = False):
        self.name = path
        self.writable = writable
        self._fd = open_backing(path, writable, "no such device")
        try:
            st = os.fstat(self._fd)
            sysfs = volume_sysfs(path, st.st_rdev) if stat.S_ISCHR(st.st_mode) else None
            if sysfs is None:
                raise FlashOpenError(f"{path}: not a UBI volume")
            self.geometry = self._read_geometry(sysfs)
            if writable:
                # Without it, write() on a dynamic volume is refused and single LEBs cannot be
                # written or erased: the volume would only take a whole-volume update.
                abi = _abi()
                prop = abi.ffi.new("struct ubi_set_vol_prop_req *")
                prop.property = abi.lib.UBI_VOL_PROP_DIRECT_WRITE
                prop.value = 1
                self._ioctl("UBI_IOCSETVOLPROP", prop)
        except BaseException:
            os.close(self._fd)
            raise

    @classmethod
    def by_name(cls, name: str, writable: bool = False) -> "UbiVolume":
        return cls(path_for_name(name), writable)

    def _read_geometry(self, sysfs: str) -> Geometry:
        kind = _read(f"{sysfs}/type")
        if kind != "dynamic":
            raise FlashOpenError(f"{self.name}: a {kind} UBI volume; the chain needs a dynamic "
                                 f"one (ubimkvol -t dynamic, the default)")
        try:
            leb = int(_read(f"{sysfs}/usable_eb_size"))
            lebs = int(_read(f"{sysfs}/reserved_ebs"))
            page = int(_read(f"{os.path.dirname(sysfs)}/min_io_size"))
        except ValueError:
            raise FlashOpenError(f"{self.name}: unreadable UBI geometry in {sysfs}") from None
        return Geometry(type=FlashType.UBI, size=leb * lebs, erasesize=leb, writesize=page,
                        oobsize=0)

    def _ioctl(self, request: str, arg, offset: int | None = None) -> int:
        return ioctl(_abi(), self._fd, self.name, request, arg, offset)

    def _lnum(self, block: int):
        return _abi().ffi.new("int32_t *", block)

    def read(self, offset: int, length: int) -> bytes:
        check_span(self.name, self.geometry, "read", offset, length)
        return read_exactly(self._fd, self.name, offset, length)

    def read_ecc(self, offset: int, length: int) -> tuple[bytes, Bitflips]:
        # UBI corrects bit flips and scrubs the block itself, telling no reader. An
        # uncorrectable one fails the read (EBADMSG) instead of returning wrong data: that is
        # reported as the protocol says, with bytes that are wrong, so the chain takes the
        # record for damaged as on raw NAND.
        try:
            return self.read(offset, length), Bitflips()
        except MtdError as e:
            if e.errno != errno.EBADMSG:
                raise
            return b"\xff" * length, Bitflips(uncorrectable=1)

    def write(self, offset: int, data: bytes) -> None:
        check_write(self.name, self.geometry, offset, len(data))
        write_all(self._fd, self.name, offset, data)

    def erase(self, offset: int, length: int) -> None:
        check_erase(self.name, self.geometry, offset, length)
        for start in range(offset, offset + length, self.geometry.erasesize):
            self._ioctl("UBI_IOCEBER", self._lnum(start // self.geometry.erasesize), start)

    def change(self, block: int, data: bytes) -> None:
        """Replace the contents of LEB `block` by data (the rest reads erased) in one atomic
        step: after a power cut the LEB holds its old contents or exactly the new ones."""
        g = self.geometry
        check_block(self.name, g, "UBI_IOCEBCH", block)
        start = g.block_offset(block)
        check_write(self.name, g, start, len(data))
        if len(data) > g.erasesize:
            raise MtdError(errno.EINVAL, self.name, "UBI_IOCEBCH", start,
                           f"{len(data)} bytes do not fit in a {g.erasesize}-byte LEB")
        request = _abi().ffi.new("struct ubi_leb_change_req *")
        request.lnum = block
        request.bytes = len(data)
        self._ioctl("UBI_IOCEBCH", request, start)
        view = memoryview(data)
        # UBI collects the bytes and changes the LEB once the last of them arrives.
        while view:
            try:
                done = os.write(self._fd, view)
            except OSError as e:
                raise from_errno(e.errno, self.name, "UBI_IOCEBCH", start) from None
            view = view[done:]

    def is_mapped(self, block: int) -> bool:
        """Whether UBI has a physical block behind LEB `block` (an erased LEB has none)."""
        check_block(self.name, self.geometry, "UBI_IOCEBISMAP", block)
        return self._ioctl("UBI_IOCEBISMAP", self._lnum(block)) == 1

    def is_bad(self, block: int) -> bool:
        check_block(self.name, self.geometry, "is_bad", block)
        return False

    def mark_bad(self, block: int) -> None:
        check_block(self.name, self.geometry, "mark_bad", block)
        raise MtdError(errno.EOPNOTSUPP, self.name, "mark_bad", None,
                       "a UBI volume has no bad blocks: UBI retires failing ones itself")

    def bad_blocks(self) -> list[int]:
        return []

    def stats(self) -> Stats:
        return Stats(programs=None, erases=None, bytes_programmed=None, bytes_read=None,
                     erase_counts=None, ecc_corrected=None, ecc_failed=None, bad_blocks=0)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
