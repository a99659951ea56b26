"""A file-backed flash simulator that implements the Flash protocol and enforces flash physics.

The image file holds exactly `size` bytes, so the same bytes can go to a real device, to
block2mtd or to nandsim. A sidecar file next to it (IMAGE.sim.json) holds the geometry, bad
blocks, injected faults, which NAND pages are programmed, and wear counters, so that state
carries over from one process to the next.

Rules enforced (a violation raises FlashViolation, a bug in the caller):
- NOR: a program may only clear bits (1 -> 0); only an erase sets them again.
- NAND: a page is programmed at most once between two erases of its block.
- UBI (a volume, `type` ubi): blocks are LEBs, whose size need not be a power of two; a page
  is programmed at most once between erases, as on the NAND beneath; there are no bad blocks,
  worn blocks or bit flips (UBI handles them); an erase is atomic (UBI unmaps the LEB in one
  step), and so is `change`, UBI's atomic LEB change.
Rules the kernel enforces too (raise MtdError, as the kernel would):
- programs aligned to the page (EINVAL); erases of whole blocks (EINVAL);
- erasing or programming a bad or worn-out block fails with EIO.

Faults: factory bad blocks; blocks that wear out after N erases; bit flips on read, corrected
(reported, data intact) or uncorrectable (reported, data wrong); and power cuts:

Power-cut contract. With MTDSIM_POWERCUT_AFTER=N in the environment, the N-th program or
block erase this process issues on any simulated device is torn: a program lands only partly
(a prefix is written; on NAND and UBI the page being programmed gets unspecified bytes), an
erase leaves its block partly erased with unspecified contents in the rest (on UBI: whole or
erased), a change leaves the block's old contents or the new ones. The image and sidecar
are then flushed and the process exits at once with status 99 (os._exit: no finally blocks,
no atexit handlers). MTDSIM_SEED=S makes the torn contents reproducible.

The sidecar and the image never disagree in a way that blocks writes. The sidecar is only
ever replaced whole (written to a temporary file, fsynced, renamed), so a reader, or the
next process after a kill, sees the old one or the new one, never a part. Only a handle
opened writable writes it: read-only handles keep their counters in memory. A writable
handle marks the sidecar dirty before its first change to the image and clean when it
closes; a sidecar still dirty when the next writable handle opens belongs to a process that
was killed in between, and its record of programmed NAND pages is rebuilt from the image
(a page that reads anything but 0xFF is programmed). What such a kill loses is the killed
process's share of the counters.
"""
import errno
import os
import zlib

from mtd.errors import FlashOpenError, FlashViolation, MtdError
from mtd.flash import (Bitflips, Closing, FlashType, Geometry, Stats, check_block, check_erase,
                       check_span, check_write, open_backing)
from mtd.jsontext import dumps, loads

SIDECAR_SUFFIX = ".sim.json"
SIDECAR_FORMAT = "snapshot-flash-sim/2"
# Format 1 differs only in programmed_pages, in base64 there (hex in 2, which needs no module
# to read): its images still open, and a writer's first change rewrites the sidecar as 2.
SIDECAR_FORMATS = ("snapshot-flash-sim/1", SIDECAR_FORMAT)
POWERCUT_EXIT_STATUS = 99
CORRECTED = "corrected"
UNCORRECTABLE = "uncorrectable"

_COUNTERS = ("programs", "erases", "bytes_programmed", "bytes_read", "ecc_corrected",
             "ecc_failed")

# Program and erase operations issued by this process on any simulated device, for the
# power-cut contract ("the N-th operation that the process issues").
_operations_issued = 0


class _Counters:
    """A handle's operation counts since its last save. A child that reads the flash (the
    archive reader does, while its parent does not use the flash) counts towards the handle's
    stats: when this process forks, the counts of every open handle move into memory shared
    with the child. Until then they are a list (mmap is imported only then: `list` on a
    simulated image never forks)."""

    #: The counters of open handles that are not shared yet.
    private: set = set()

    def __init__(self):
        self._values = [0] * len(_COUNTERS)
        _Counters.private.add(self)

    def __getitem__(self, key: str) -> int:
        return self._values[_COUNTERS.index(key)]

    def add(self, key: str, amount: int) -> None:
        self._values[_COUNTERS.index(key)] += amount

    def clear(self) -> None:
        for at in range(len(_COUNTERS)):
            self._values[at] = 0

    def release(self) -> None:
        """The handle is closed: nothing counts here any more."""
        _Counters.private.discard(self)

    @classmethod
    def share(cls) -> None:
        """Before a fork (os.register_at_fork): every open handle's counts, kept so far, go
        into memory the child will share."""
        import mmap
        for counters in cls.private:
            shared = memoryview(mmap.mmap(-1, 8 * len(_COUNTERS))).cast("q")
            for at, value in enumerate(counters._values):
                shared[at] = value
            counters._values = shared
        cls.private.clear()


os.register_at_fork(before=_Counters.share)


# Paths are strings here, not pathlib's: every command that opens an image imports this
# module, and on a router's CPU pathlib's import would be a tenth of `list`.

def sidecar_path(image) -> str:
    return f"{os.fspath(image)}{SIDECAR_SUFFIX}"


def is_sim_image(path) -> bool:
    return os.path.isfile(sidecar_path(path))


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _pack_bits(bits: bytearray) -> str:
    return zlib.compress(bytes(bits)).hex()


def _unpack_bits(state: dict) -> bytearray:
    """The programmed_pages bits of a sidecar, as its format writes them."""
    text = state["programmed_pages"]
    if state["format"] == SIDECAR_FORMAT:
        return bytearray(zlib.decompress(bytes.fromhex(text)))
    import binascii
    return bytearray(zlib.decompress(binascii.a2b_base64(text)))


def _replace(path: str, text: str) -> None:
    """Replace the file at path by one holding text: a temporary file beside it, fsynced,
    then renamed over it, so that no one ever reads a part of it."""
    partial = f"{path}.{os.getpid()}.partial"
    try:
        with open(partial, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        _unlink(partial)
        raise


class _Locked:
    """Serialises the read-modify-write of a sidecar between processes: a POSIX record lock
    on the image, through a descriptor open for writing. (The sidecar is replaced by rename,
    so it cannot carry the lock; the snapshot tool's writer lock is a flock on the image,
    which POSIX locks neither wait for nor disturb.)"""

    def __init__(self, fd: int):
        self._fd = fd

    def __enter__(self):
        # Imported here: only a writable handle locks, and `list` opens an image to read.
        import fcntl
        self._fcntl = fcntl
        fcntl.lockf(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        self._fcntl.lockf(self._fd, self._fcntl.LOCK_UN)


def _int(what: str, value, low: int = 0, high: int | None = None) -> int:
    """value, if it is an integer within low..high; else ValueError naming `what`."""
    if type(value) is not int or value < low or (high is not None and value > high):
        raise ValueError(f"{what} {value!r} is not an integer in "
                         f"{low}..{'' if high is None else high}")
    return value


def _geometry(state: dict) -> Geometry:
    g = state["geometry"]
    if not isinstance(g, dict):
        raise ValueError("geometry is not an object")
    if g.get("type") not in (FlashType.NOR, FlashType.NAND, FlashType.UBI):
        raise ValueError(f"flash type {g.get('type')!r} is not nor, nand or ubi")
    geometry = Geometry(type=FlashType(g["type"]), size=_int("size", g["size"], 1),
                        erasesize=_int("erasesize", g["erasesize"], 1),
                        writesize=_int("writesize", g["writesize"], 1),
                        oobsize=_int("oobsize", g["oobsize"]))
    validate_geometry(geometry)
    return geometry


def _check_state(state: dict, g: Geometry) -> bytearray:
    """Refuse a sidecar whose fields a handle could not use (ValueError, KeyError, TypeError,
    zlib.error say which), before anything is done with them; its programmed pages' bits."""
    for key, kind in (("bad_blocks", list), ("factory_bad_blocks", list), ("wear_limits", dict),
                      ("bitflips", dict), ("erase_counts", list), ("stats", dict),
                      ("programmed_pages", str)):
        if not isinstance(state[key], kind):
            raise ValueError(f"{key} is not a {kind.__name__}")
    for block in state["bad_blocks"] + state["factory_bad_blocks"]:
        _int("bad block", block, 0, g.blocks - 1)
    for block, limit in state["wear_limits"].items():
        _int("wear-limited block", int(block), 0, g.blocks - 1)
        _int("wear limit", limit)
    for offset, kind in state["bitflips"].items():
        _int("bit flip offset", int(offset), 0, g.size - 1)
        if kind not in (CORRECTED, UNCORRECTABLE):
            raise ValueError(f"bit flip kind {kind!r}")
    counts = state["erase_counts"]
    if len(counts) != g.blocks:
        raise ValueError(f"erase_counts does not list {g.blocks} blocks")
    for count in counts:
        _int("erase count", count)
    for key in _COUNTERS:
        _int(key, state["stats"][key])
    pages = g.size // g.writesize if g.programs_once else 0
    programmed = _unpack_bits(state)
    if len(programmed) != (pages + 7) // 8:
        raise ValueError("programmed_pages does not cover the device")
    if type(state.get("dirty", False)) is not bool:
        raise ValueError("dirty is not true or false")
    return programmed


class SimFlash(Closing):
    """A simulated flash device backed by IMAGE and IMAGE.sim.json.

    Opened read-only unless `writable`. After any error other than a power cut the image
    holds exactly what the device would: the failed operation's effect is what real flash
    leaves (see each method).
    """

    @classmethod
    def create(cls, image, geometry: Geometry, bad_blocks=(),
               wear_limits: dict[int, int] | None = None,
               bitflips: dict[int, str] | None = None) -> None:
        """Write an erased image and its sidecar. `bad_blocks` are factory bad blocks;
        `wear_limits` maps a block to the erase count at which it wears out; `bitflips` maps
        a byte offset to CORRECTED or UNCORRECTABLE (cleared when its block is erased)."""
        validate_geometry(geometry)
        for block in bad_blocks:
            if not 0 <= block < geometry.blocks:
                raise ValueError(f"bad block {block} is outside 0..{geometry.blocks - 1}")
        if bad_blocks and not geometry.is_nand:
            raise ValueError("only NAND flash has bad blocks")
        if geometry.is_ubi and (wear_limits or bitflips):
            raise ValueError("a UBI volume shows no worn blocks or bit flips: UBI handles "
                             "them itself")
        image = os.fspath(image)
        pages = geometry.size // geometry.writesize if geometry.programs_once else 0
        state = {
            "format": SIDECAR_FORMAT,
            "geometry": {"type": str(geometry.type), "size": geometry.size,
                         "erasesize": geometry.erasesize, "writesize": geometry.writesize,
                         "oobsize": geometry.oobsize},
            "factory_bad_blocks": sorted(set(bad_blocks)),
            "bad_blocks": sorted(set(bad_blocks)),
            "wear_limits": {str(b): n for b, n in (wear_limits or {}).items()},
            "bitflips": {str(o): k for o, k in (bitflips or {}).items()},
            "programmed_pages": _pack_bits(bytearray((pages + 7) // 8)),
            "erase_counts": [0] * geometry.blocks,
            "stats": dict.fromkeys(_COUNTERS, 0),
            "dirty": False,
        }
        # The image goes in under its name only once it is whole (a full disk leaves nothing),
        # and an image replaced by another is never seen with the old one's sidecar.
        partial = f"{image}.{os.getpid()}.partial"
        try:
            with open(partial, "wb") as f:
                chunk = b"\xff" * geometry.erasesize
                for _ in range(geometry.blocks):
                    f.write(chunk)
            _unlink(sidecar_path(image))
            os.replace(partial, image)
        except BaseException:
            _unlink(partial)
            raise
        _replace(sidecar_path(image), dumps(state))

    @classmethod
    def add_faults(cls, image, wear_limits: dict[int, int] | None = None,
                   bitflips: dict[int, str] | None = None) -> None:
        """Inject faults into an existing image, as create() takes them (for tests)."""
        sidecar = sidecar_path(image)
        fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)
        try:
            with _Locked(fd):
                state = loads(_read_text(sidecar))
                if _geometry(state).is_ubi and (wear_limits or bitflips):
                    raise ValueError("a UBI volume shows no worn blocks or bit flips: UBI "
                                     "handles them itself")
                state["wear_limits"].update({str(b): n
                                             for b, n in (wear_limits or {}).items()})
                state["bitflips"].update({str(o): k for o, k in (bitflips or {}).items()})
                _check_state(state, _geometry(state))
                _replace(sidecar, dumps(state))
        finally:
            os.close(fd)

    def __init__(self, image, writable: bool = False):
        self.name = str(image)
        self.writable = writable
        self._sidecar = sidecar_path(image)
        try:
            state = loads(_read_text(self._sidecar))
            if not isinstance(state, dict) or state.get("format") not in SIDECAR_FORMATS:
                raise ValueError(f"unknown sidecar format "
                                 f"{state.get('format') if isinstance(state, dict) else state!r}")
            self.geometry = _geometry(state)
            programmed = _check_state(state, self.geometry)
        except FileNotFoundError:
            raise FlashOpenError(f"{image}: not a simulated flash image "
                                 f"(no sidecar {os.path.basename(self._sidecar)})") from None
        except (ValueError, KeyError, TypeError, zlib.error) as e:
            raise FlashOpenError(f"{self._sidecar}: damaged simulator sidecar ({e}); "
                                 f"`snapshot flash create --force` makes a new image") from None
        self._fd = open_backing(str(image), writable, "no such image")
        folder = os.path.dirname(self._sidecar) or "."
        if writable and not os.access(folder, os.W_OK):
            os.close(self._fd)
            raise FlashOpenError(f"{image}: cannot be opened for writing: the simulator "
                                 f"replaces {os.path.basename(self._sidecar)} in {folder}, "
                                 f"which is not writable")
        if os.fstat(self._fd).st_size != self.geometry.size:
            os.close(self._fd)
            raise FlashOpenError(f"{image}: image is not {self.geometry.size} bytes long")
        self._state = state
        self._bad = set(state["bad_blocks"])
        self._wear_limits = {int(b): n for b, n in state["wear_limits"].items()}
        self._bitflips = {int(o): k for o, k in state["bitflips"].items()}
        self._programmed = programmed
        self._erase_counts = list(state["erase_counts"])
        self._delta = _Counters()
        self._erase_delta = [0] * self.geometry.blocks
        self._mutated = False
        if writable and state.get("dirty") and self.geometry.programs_once:
            self._rebuild_programmed()

    def _rebuild_programmed(self) -> None:
        """A process was killed between changing the image and closing: which pages are
        programmed is what the image shows (a page programmed with nothing but 0xFF then
        counts as erased, the one thing lost)."""
        g = self.geometry
        erased = b"\xff" * g.writesize
        self._programmed = bytearray(len(self._programmed))
        for start in range(0, g.size, g.erasesize):
            block = os.pread(self._fd, g.erasesize, start)
            for at in range(0, g.erasesize, g.writesize):
                if block[at:at + g.writesize] != erased:
                    page = (start + at) // g.writesize
                    self._programmed[page >> 3] |= 1 << (page & 7)

    # -- reading ---------------------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        return self.read_ecc(offset, length)[0]

    def read_ecc(self, offset: int, length: int) -> tuple[bytes, Bitflips]:
        check_span(self.name, self.geometry, "read", offset, length)
        data = os.pread(self._fd, length, offset)
        corrected = failed = 0
        for flip_at, kind in self._bitflips.items():
            if offset <= flip_at < offset + length:
                if kind == UNCORRECTABLE:
                    data = bytearray(data) if isinstance(data, bytes) else data
                    data[flip_at - offset] ^= 0x01
                    failed += 1
                else:
                    corrected += 1
        self._count(bytes_read=length, ecc_corrected=corrected, ecc_failed=failed)
        return bytes(data), Bitflips(corrected, failed)

    # -- programming and erasing -----------------------------------------------------------

    def write(self, offset: int, data: bytes) -> None:
        """Program `data`. On EIO (bad or worn-out block) nothing is programmed."""
        self._check_writable("write", offset)
        g = self.geometry
        check_write(self.name, g, offset, len(data))
        if not data:
            return
        for block in range(offset // g.erasesize, (offset + len(data) - 1) // g.erasesize + 1):
            self._check_usable(block, "write", offset)
        current = os.pread(self._fd, len(data), offset)
        if g.programs_once:
            for page in self._pages(offset, len(data)):
                if self._page_programmed(page):
                    raise FlashViolation(
                        f"{self.name}: NAND page {page} (0x{page * g.writesize:x}) programmed "
                        f"twice without an erase of block {page * g.writesize // g.erasesize}")
        else:
            wanted = int.from_bytes(data, "big")
            if wanted & ~int.from_bytes(current, "big") & ((1 << (8 * len(data))) - 1):
                raise FlashViolation(
                    f"{self.name}: NOR program at 0x{offset:x} would set bits from 0 to 1; "
                    f"only an erase can do that")
        if self._power_cut_now():
            self._tear_program(offset, data, current)
        self._program(offset, data)
        self._count(programs=1, bytes_programmed=len(data))

    def erase(self, offset: int, length: int) -> None:
        """Erase whole blocks, one at a time (each is one operation for the power-cut
        counter). A worn-out block fails with EIO and is left partly erased."""
        self._check_writable("erase", offset)
        check_erase(self.name, self.geometry, offset, length)
        for start in range(offset, offset + length, self.geometry.erasesize):
            block = start // self.geometry.erasesize
            self._check_usable(block, "erase", start)
            if self._power_cut_now():
                self._tear_erase(block)
            self._erase_block(block)

    def change(self, block: int, data: bytes) -> None:
        """UBI's atomic LEB change: the block holds data, the rest erased. One operation for
        the power-cut counter, after which the block holds its old contents or the new."""
        g = self.geometry
        check_block(self.name, g, "change", block)
        start = g.block_offset(block)
        self._check_writable("change", start)
        if not g.is_ubi:
            raise MtdError(errno.EOPNOTSUPP, self.name, "change", start,
                           "only a UBI volume changes a block atomically")
        check_write(self.name, g, start, len(data))
        if len(data) > g.erasesize:
            raise MtdError(errno.EINVAL, self.name, "change", start,
                           f"{len(data)} bytes do not fit in a {g.erasesize}-byte LEB")
        cut = self._power_cut_now()
        if cut and self._rng().random() < 0.5:
            self._die()
        # One operation, counted as one program; the erase UBI makes behind it shows in the
        # block's erase count only.
        self._erase_block(block, counted=False)
        if data:
            self._program(start, data)
        if cut:
            self._die()
        self._count(programs=1, bytes_programmed=len(data))

    def _check_writable(self, operation: str, offset: int) -> None:
        if not self.writable:
            raise MtdError(errno.EBADF, self.name, operation, offset, "device opened read-only")

    def _check_usable(self, block: int, operation: str, offset: int) -> None:
        # The kernel refuses to erase a block marked bad with EIO; a failing chip answers a
        # program or erase of a worn-out block with an EIO status.
        if block in self._bad:
            raise MtdError(errno.EIO, self.name, operation, offset, f"block {block} is bad")
        limit = self._wear_limits.get(block)
        if limit is not None and self._erase_counts[block] >= limit:
            if operation == "erase":
                self._mutate()
                self._garble(block, self._rng())
            raise MtdError(errno.EIO, self.name, operation, offset,
                           f"block {block} failed (worn out after {limit} erases)")

    def _pages(self, offset: int, length: int) -> range:
        ws = self.geometry.writesize
        return range(offset // ws, (offset + length) // ws)

    def _page_programmed(self, page: int) -> bool:
        return bool(self._programmed[page >> 3] & (1 << (page & 7)))

    def _set_pages(self, pages: range, programmed: bool) -> None:
        for page in pages:
            if programmed:
                self._programmed[page >> 3] |= 1 << (page & 7)
            else:
                self._programmed[page >> 3] &= ~(1 << (page & 7))

    def _mutate(self) -> None:
        """Called before every change to the image: the first one marks the sidecar dirty."""
        if not self._mutated:
            self._mutated = True
            self._save(dirty=True)

    def _program(self, offset: int, data: bytes) -> None:
        self._mutate()
        os.pwrite(self._fd, data, offset)
        if self.geometry.programs_once:
            self._set_pages(self._pages(offset, len(data)), True)

    def _erase_block(self, block: int, counted: bool = True) -> None:
        g = self.geometry
        start = g.block_offset(block)
        self._mutate()
        os.pwrite(self._fd, b"\xff" * g.erasesize, start)
        if g.programs_once:
            self._set_pages(self._pages(start, g.erasesize), False)
        self._erase_counts[block] += 1
        self._erase_delta[block] += 1
        if counted:
            self._count(erases=1)
        kept = {o: k for o, k in self._bitflips.items() if not start <= o < start + g.erasesize}
        if len(kept) != len(self._bitflips):
            # At once: a fault that came back after a kill would damage the new contents.
            self._bitflips = kept
            self._save(dirty=True)

    def _garble(self, block: int, rng) -> None:
        """Leave `block` partly erased: a prefix reads 0xFF, the rest is the old contents
        with random bits set (erasing only ever sets bits). NAND pages count as programmed
        until the next complete erase, because their state is unknown."""
        g = self.geometry
        start = g.block_offset(block)
        old = os.pread(self._fd, g.erasesize, start)
        cut = rng.randrange(g.erasesize)
        noise = rng.randbytes(g.erasesize - cut)
        rest = bytes(a | b for a, b in zip(old[cut:], noise))
        os.pwrite(self._fd, b"\xff" * cut + rest, start)
        if g.programs_once:
            self._set_pages(self._pages(start, g.erasesize), True)

    # -- power cuts ------------------------------------------------------------------------

    def _power_cut_now(self) -> bool:
        global _operations_issued
        _operations_issued += 1
        after = os.environ.get("MTDSIM_POWERCUT_AFTER")
        return after is not None and _operations_issued == int(after)

    def _rng(self):
        """The random.Random of this power cut (seeded by MTDSIM_SEED, for a sweep to replay
        it). Imported here: only a cut needs it, and every command opening an image would
        pay for the import."""
        import random
        seed = os.environ.get("MTDSIM_SEED")
        return random.Random(f"{seed}:{_operations_issued}" if seed is not None else None)

    def _tear_program(self, offset: int, data: bytes, current: bytes) -> None:
        rng = self._rng()
        g = self.geometry
        if g.programs_once:
            torn = rng.randrange(len(data) // g.writesize) * g.writesize
            if torn:
                self._program(offset, data[:torn])
            self._program(offset + torn, rng.randbytes(g.writesize))
        else:
            cut = rng.randrange(len(data))
            # The byte being programmed when power failed has only some of its bits cleared.
            partial = current[cut] & (data[cut] | rng.randrange(256))
            self._program(offset, data[:cut] + bytes([partial]))
        self._die()

    def _tear_erase(self, block: int) -> None:
        # UBI's erase unmaps the LEB in one step: a cut leaves it whole or erased.
        if self.geometry.is_ubi:
            if self._rng().random() >= 0.5:
                self._erase_block(block)
        else:
            self._garble(block, self._rng())
        self._die()

    def _die(self) -> None:
        self._save(dirty=False)
        os._exit(POWERCUT_EXIT_STATUS)

    # -- bad blocks, statistics, persistence -----------------------------------------------

    def is_bad(self, block: int) -> bool:
        check_block(self.name, self.geometry, "is_bad", block)
        return block in self._bad

    def mark_bad(self, block: int) -> None:
        check_block(self.name, self.geometry, "mark_bad", block)
        self._check_writable("mark_bad", self.geometry.block_offset(block))
        if self.geometry.is_ubi:
            raise MtdError(errno.EOPNOTSUPP, self.name, "mark_bad", None,
                           "a UBI volume has no bad blocks: UBI retires failing ones itself")
        if not self.geometry.is_nand:
            raise MtdError(errno.EOPNOTSUPP, self.name, "mark_bad", None,
                           "NOR flash keeps no bad block table")
        self._mutate()
        self._bad.add(block)
        self._save(dirty=True)

    def bad_blocks(self) -> list[int]:
        return sorted(self._bad)

    def _count(self, **amounts: int) -> None:
        for key, amount in amounts.items():
            self._delta.add(key, amount)

    def stats(self) -> Stats:
        base = self._state["stats"]
        total = {k: base[k] + self._delta[k] for k in _COUNTERS}
        return Stats(erase_counts=list(self._erase_counts), bad_blocks=len(self._bad), **total)

    def _save(self, dirty: bool) -> None:
        """Merge this handle's counters into the sidecar, and its flash state if it changed
        any, marked `dirty` while the image may change further. Only writable handles save;
        the lock keeps handles of several processes from losing each other's counts."""
        with _Locked(self._fd):
            state = loads(_read_text(self._sidecar))
            for key in _COUNTERS:
                state["stats"][key] += self._delta[key]
            state["erase_counts"] = [a + b for a, b in
                                     zip(state["erase_counts"], self._erase_delta)]
            if self._mutated:
                state["bad_blocks"] = sorted(self._bad)
                state["bitflips"] = {str(o): k for o, k in self._bitflips.items()}
                state["format"] = SIDECAR_FORMAT
                state["programmed_pages"] = _pack_bits(self._programmed)
                state["dirty"] = dirty
            _replace(self._sidecar, dumps(state))
        self._state = state
        self._erase_counts = list(state["erase_counts"])
        self._delta.clear()
        self._erase_delta = [0] * self.geometry.blocks

    def close(self) -> None:
        if self._fd >= 0:
            if self.writable:
                self._save(dirty=False)
            os.close(self._fd)
            self._fd = -1
            self._delta.release()


# MEMGETINFO describes a device's size in 32 bits.
MAX_SIZE = (1 << 32) - 1
MIN_NAND_PAGE = 512


def validate_geometry(g: Geometry) -> None:
    """Refuse geometries no chip has, with the reason."""
    if g.type not in (FlashType.NOR, FlashType.NAND, FlashType.UBI):
        raise ValueError(f"the simulator models NOR and NAND flash and UBI volumes, "
                         f"not {g.type}")
    for name in ("size", "erasesize", "writesize"):
        if getattr(g, name) <= 0:
            raise ValueError(f"{name} must be positive")
    if g.size > MAX_SIZE:
        raise ValueError(f"size {g.size} is more than an MTD device can have ({MAX_SIZE})")
    # A UBI LEB is a physical block less UBI's headers: not a power of two.
    for name, value in ((("page size", g.writesize),) if g.is_ubi else
                        (("erase size", g.erasesize), ("page size", g.writesize))):
        if value & (value - 1):
            raise ValueError(f"{name} {value} is not a power of two")
    if g.is_nand and g.writesize < MIN_NAND_PAGE:
        raise ValueError(f"a NAND page is at least {MIN_NAND_PAGE} bytes, not {g.writesize}")
    if g.size % g.erasesize:
        raise ValueError(f"size {g.size} is not a multiple of the erase size {g.erasesize}")
    if g.erasesize % g.writesize:
        raise ValueError(f"erase size {g.erasesize} is not a multiple of the page size "
                         f"{g.writesize}")
    if not 0 <= g.oobsize <= g.writesize:
        raise ValueError(f"oob size {g.oobsize} is not between 0 and the page size "
                         f"{g.writesize}")
