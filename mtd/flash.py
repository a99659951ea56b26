"""The Flash protocol: what the snapshot package may ask of a flash device.

Three implementations exist: `mtd.device.MtdDevice` (Linux MTD character devices),
`mtd.ubi.UbiVolume` (UBI volumes) and `mtd.sim.SimFlash` (a file-backed simulator of either).
Nothing above this protocol knows which one it holds; the one thing only a UBI volume can do
(`change`, an atomic block rewrite) is asked for by geometry type, never by class.
Offsets and lengths are bytes from the start of the partition.
"""
import errno
import os

from mtd.errors import FlashBusy, FlashOpenError, MtdError, from_errno
from mtd.fields import fields


class FlashType(str):
    """A flash type's name: FlashType("nand") is FlashType.NAND, and any other name is a
    ValueError. A str, as an enum's members would be, without importing enum: on a router's
    CPU, every command's start-up would pay for it (bench/bench_startup.py)."""
    __slots__ = ()
    NAMES = ("nor", "nand", "mlc-nand", "ram", "rom", "dataflash", "ubi", "absent")

    def __new__(cls, name: str):
        if name not in cls.NAMES:
            raise ValueError(f"{name!r} is not a valid FlashType")
        return super().__new__(cls, name)

    def __repr__(self) -> str:
        return f"FlashType({str(self)!r})"


FlashType.NOR, FlashType.NAND, FlashType.MLC_NAND, FlashType.RAM, FlashType.ROM, \
    FlashType.DATAFLASH, FlashType.UBI, FlashType.ABSENT = map(FlashType, FlashType.NAMES)


class Geometry(fields("Geometry", "type size erasesize writesize oobsize flags", defaults=(0,))):
    # type: FlashType, size: int, erasesize: int, writesize: int, oobsize: int, flags: int
    __slots__ = ()

    @property
    def blocks(self) -> int:
        return self.size // self.erasesize

    @property
    def is_nand(self) -> bool:
        return self.type in (FlashType.NAND, FlashType.MLC_NAND)

    @property
    def is_ubi(self) -> bool:
        """A UBI volume: blocks are LEBs (no bad ones), each can be changed atomically."""
        return self.type == FlashType.UBI

    @property
    def programs_once(self) -> bool:
        """Whether a page may be programmed only once between erases (NAND, and UBI, whose
        LEBs sit on NAND), rather than bit by bit (NOR)."""
        return self.is_nand or self.is_ubi

    def block_offset(self, block: int) -> int:
        return block * self.erasesize

    def as_dict(self) -> dict:
        return self._asdict() | {"type": str(self.type), "blocks": self.blocks}


class Bitflips(fields("Bitflips", "corrected uncorrectable", defaults=(0, 0))):
    """ECC events seen during one read: `corrected` flips (data is right, the block should be
    rewritten soon) and `uncorrectable` ones (the data returned is wrong)."""
    # corrected: int, uncorrectable: int
    __slots__ = ()

    def __bool__(self) -> bool:
        return bool(self.corrected or self.uncorrectable)


class Stats(fields("Stats", "programs erases bytes_programmed bytes_read erase_counts "
                           "ecc_corrected ecc_failed bad_blocks")):
    """Wear and traffic figures. None where the backend does not keep the figure (the kernel
    counts ECC events and bad blocks, but not programs, erases or bytes)."""
    # programs: int | None, erases: int | None, bytes_programmed: int | None
    # bytes_read: int | None, erase_counts: list[int] | None, ecc_corrected: int | None
    # ecc_failed: int | None, bad_blocks: int
    __slots__ = ()

    def as_dict(self) -> dict:
        return self._asdict()


class Closing:
    """Context-manager behaviour shared by the Flash implementations: `with` closes."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Flash:
    """The protocol, written out: the implementations have these attributes and methods
    (they do not derive from this class: nothing checks it at run time)."""
    name: str
    geometry: Geometry

    def read(self, offset: int, length: int) -> bytes:
        """Bytes as stored; ECC events are hidden (see read_ecc)."""

    def read_ecc(self, offset: int, length: int) -> tuple[bytes, Bitflips]:
        """Bytes plus the ECC events this read caused."""

    def write(self, offset: int, data: bytes) -> None:
        """Program bytes. Offset and length must be multiples of writesize (MtdError EINVAL).
        A failing block raises MtdError EIO; the caller decides whether to mark it bad."""

    def erase(self, offset: int, length: int) -> None:
        """Erase whole blocks to 0xFF. A failing block raises MtdError EIO."""

    def change(self, block: int, data: bytes) -> None:
        """UBI only (geometry.is_ubi): replace block's contents by data, the rest erased, in
        one atomic step: after a power cut it holds the old contents or exactly the new."""

    def is_bad(self, block: int) -> bool: ...

    def mark_bad(self, block: int) -> None: ...

    def stats(self) -> Stats: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Flash": ...

    def __exit__(self, *exc) -> None: ...


def check_span(name: str, geometry: Geometry, operation: str, offset: int, length: int) -> None:
    """Refuse a request outside the device, as the kernel does (EINVAL)."""
    if offset < 0 or length < 0 or offset + length > geometry.size:
        raise MtdError(errno.EINVAL, name, operation, offset,
                       f"{length} bytes do not fit in a {geometry.size}-byte device")


def _check_aligned(name: str, geometry: Geometry, operation: str, offset: int, length: int,
                   unit: int, what: str) -> None:
    check_span(name, geometry, operation, offset, length)
    if offset % unit or length % unit:
        raise MtdError(errno.EINVAL, name, operation, offset,
                       f"{length} bytes at 0x{offset:x} are not {what}")


def check_write(name: str, geometry: Geometry, offset: int, length: int) -> None:
    """Programs must start and end on a page boundary; the kernel answers EINVAL otherwise,
    with no hint why, so the reason is spelled out here before the kernel sees the request."""
    _check_aligned(name, geometry, "write", offset, length, geometry.writesize,
                   f"aligned to the {geometry.writesize}-byte page")


def check_erase(name: str, geometry: Geometry, offset: int, length: int) -> None:
    _check_aligned(name, geometry, "erase", offset, length, geometry.erasesize,
                   f"whole {geometry.erasesize}-byte erase blocks")


def check_block(name: str, geometry: Geometry, operation: str, block: int) -> None:
    if not 0 <= block < geometry.blocks:
        raise MtdError(errno.EINVAL, name, operation, None,
                       f"block {block} is outside 0..{geometry.blocks - 1}")


def read_exactly(fd: int, name: str, offset: int, length: int) -> bytes:
    """pread until `length` bytes are read (a device may return fewer per call), as MtdError."""
    chunks = []
    while length:
        try:
            chunk = os.pread(fd, length, offset)
        except OSError as e:
            raise from_errno(e.errno, name, "read", offset) from None
        if not chunk:
            raise MtdError(errno.EIO, name, "read", offset, "unexpected end of device")
        chunks.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return b"".join(chunks)


def write_all(fd: int, name: str, offset: int, data: bytes) -> None:
    """pwrite until all of `data` is written (a UBI volume's direct write stops at the end of
    its LEB), as MtdError."""
    view = memoryview(data)
    while view:
        try:
            done = os.pwrite(fd, view, offset)
        except OSError as e:
            raise from_errno(e.errno, name, "write", offset) from None
        view = view[done:]
        offset += done


def ioctl(bindings, fd: int, name: str, request: str, arg, offset: int | None = None) -> int:
    """ioctl `request` (its name in `bindings`, a compiled cffi module) on fd, the device
    `name`; a failure as MtdError naming the request and offset."""
    ret = bindings.lib.ioctl(fd, getattr(bindings.lib, request), arg)
    if ret < 0:
        raise from_errno(bindings.ffi.errno, name, request, offset)
    return ret


def open_backing(path: str, writable: bool, missing: str) -> int:
    """Open a device node or image read-only (or read-write), as FlashOpenError on failure."""
    try:
        return os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    except FileNotFoundError:
        raise FlashOpenError(f"{path}: {missing}") from None
    except PermissionError:
        raise FlashOpenError(f"{path}: permission denied") from None
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise FlashBusy(f"{path}: in use: another writer (a mounted filesystem, or "
                            f"another snapshot command) has it open") from None
        raise FlashOpenError(f"{path}: {e.strerror}") from None
