"""Record payloads: a compressed tar of an overlayfs upper directory, streamed both ways so no
archive is ever held whole in memory or copied to /tmp.

What a payload preserves (DESIGN.md §7): regular files (content, mode with setuid/setgid/
sticky, owner, mtime), directories, symlinks, hardlinks, fifos, overlayfs whiteouts (character
devices 0/0), opaque directories (xattr trusted.overlay.opaque=y or user.overlay.opaque=y),
other xattrs (pax SCHILY.xattr.* records, as GNU tar writes them), and top-level dotfiles.
Entries are in sorted order and carry no user or group names, so the same tree always gives
the same bytes.
"""
import gzip
import lzma
import os
import queue
import stat
import struct
import tarfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

from snapshot.errors import SnapshotError
from snapshot.format import COMPRESSION_GZIP, COMPRESSION_XZ

COMPRESSIONS = {"gzip": COMPRESSION_GZIP, "xz": COMPRESSION_XZ}
# The level `tar czf` uses; 9 costs about twice the time for a few percent.
GZIP_LEVEL = 6
# xz -2: a 2 MiB dictionary, about 17 MiB to compress and 3 MiB to decompress, which a
# router can afford; CRC32 because every xz decoder (busybox too) knows it.
XZ_PRESET = 2
READ_CHUNK = 256 * 1024
# Reading decompresses ahead in pieces of PIECE bytes, at most PIECES_AHEAD of them waiting.
PIECE = 1024 * 1024
PIECES_AHEAD = 2
XATTR_PREFIX = "SCHILY.xattr."
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
# overlayfs bookkeeping that only makes sense on the filesystem it was made on.
OVERLAY_PRIVATE = ("trusted.overlay.", "user.overlay.")
# Features whose upper entries do not stand alone: a metacopy file has no data, a redirected
# directory takes its contents from elsewhere in the lower layer.
OVERLAY_UNSUPPORTED = ("metacopy", "redirect")


class ArchiveError(SnapshotError):
    pass


class Unreadable(ArchiveError):
    """The stream cannot be decompressed or parsed. Raised only once the record has been
    read to its end: a damaged record raises RecordDamaged (its CRC) instead."""

    def __init__(self, reason):
        super().__init__(f"archive cannot be read: {reason}")


def compressor(out, compression: int):
    if compression == COMPRESSION_XZ:
        return lzma.LZMAFile(out, "wb", format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                             preset=XZ_PRESET)
    return gzip.GzipFile(fileobj=out, mode="wb", compresslevel=GZIP_LEVEL, mtime=0)


def _entries(root: Path):
    """Every path below root, parents before children, siblings sorted by name."""
    stack = [root]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as it:
            names = sorted(it, key=lambda e: e.name)
        for entry in names:
            yield Path(entry.path)
        stack.extend(Path(e.path) for e in reversed(names) if e.is_dir(follow_symlinks=False))


def _xattrs(path: Path) -> dict[str, bytes]:
    found = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return found
    for name in sorted(names):
        for feature in OVERLAY_UNSUPPORTED:
            if name.endswith(f".overlay.{feature}"):
                raise ArchiveError(f"{path}: overlayfs {feature} entries cannot be stored; "
                                   f"mount the overlay with {feature}=off")
        if name.startswith(OVERLAY_PRIVATE) and name not in OPAQUE_XATTRS:
            continue
        found[name] = os.getxattr(path, name, follow_symlinks=False)
    return found


def pack(root: Path, out, compression: int = COMPRESSION_GZIP) -> None:
    """Write the archive of root's contents (names relative to root) to the file-like out."""
    root = Path(root)
    if not root.is_dir():
        raise ArchiveError(f"{root}: no such directory")
    with compressor(out, compression) as stream, \
            tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path in _entries(root):
            info = _tarinfo(tar, path, str(path.relative_to(root)))
            if info is None:
                continue
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)


def _tarinfo(tar: tarfile.TarFile, path: Path, name: str) -> tarfile.TarInfo | None:
    st = path.lstat()
    if stat.S_ISSOCK(st.st_mode):
        return None  # sockets belong to running programs; GNU tar skips them too
    if (stat.S_ISCHR(st.st_mode) and st.st_rdev != 0) or stat.S_ISBLK(st.st_mode):
        raise ArchiveError(f"{path}: device nodes cannot be stored (only overlayfs whiteouts)")
    info = tar.gettarinfo(str(path), arcname=name)
    info.uname = info.gname = ""
    # Whole seconds, as in a ustar header: a fractional mtime would cost every entry an
    # extra pax header block to write and to parse.
    info.mtime = int(info.mtime)
    for key, value in _xattrs(path).items():
        info.pax_headers[XATTR_PREFIX + key] = value.decode("utf-8", "surrogateescape")
    return info


# -- reading ---------------------------------------------------------------------------------
# A lean reader for the tar subset pack() writes (ustar headers, pax extended headers):
# the stdlib's tarfile spends most of an unpack parsing headers it does not need.

FILE, HARDLINK, SYMLINK, CHAR, BLOCK, DIRECTORY, FIFO = "0", "1", "2", "3", "4", "5", "6"
_TYPES = {b"0": FILE, b"\0": FILE, b"7": FILE, b"1": HARDLINK, b"2": SYMLINK, b"3": CHAR,
          b"4": BLOCK, b"5": DIRECTORY, b"6": FIFO}
_BLOCK = 512
_EMPTY = bytes(_BLOCK)


@dataclass
class Entry:
    """One archive entry. For a FILE, copy_to() reads its data before the next entry."""
    name: str
    type: str
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int
    linkname: str
    devmajor: int
    devminor: int
    xattrs: dict[str, bytes]

    @property
    def is_whiteout(self) -> bool:
        return self.type == CHAR and self.devmajor == 0 and self.devminor == 0

    @property
    def is_opaque(self) -> bool:
        return self.type == DIRECTORY and any(self.xattrs.get(k) == b"y" for k in OPAQUE_XATTRS)


# POSIX ustar header: name, mode, uid, gid, size, mtime, chksum, typeflag, linkname, magic,
# version, uname, gname, devmajor, devminor, prefix.
_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")
assert _USTAR.size == 512


def _number(field: bytes) -> int:
    if field and field[0] & 0x80:   # base-256, for values too large for octal
        return int.from_bytes(field[1:], "big")
    return int(field.strip(b"\0 ") or b"0", 8)


def _checksum(header: bytes) -> int:
    """The sum of a header's bytes, its checksum field counted as spaces. adler32 computes
    it, several times faster than sum(): the low 16 bits of adler32 are 1 + the byte sum
    modulo 65521, and a 256-byte half sums to at most 65280, so exactly."""
    return ((zlib.adler32(header[:256]) & 0xFFFF) + (zlib.adler32(header[256:]) & 0xFFFF) - 2
            - sum(header[148:156]) + 8 * 32)


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax(data: bytes) -> dict[str, bytes]:
    records, pos = {}, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        if length <= 0:
            raise ArchiveError("damaged pax header")
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value
        pos += length
    return records


class TarReader:
    """Iterates the entries of an uncompressed tar stream, given as an iterable of byte
    pieces. A FILE's data goes from the pieces to copy_to() without being copied."""

    def __init__(self, pieces):
        self._pieces = iter(pieces)
        self._piece = memoryview(b"")
        self._at = 0        # read position in the current piece
        self._left = 0      # data bytes of the current entry not yet read
        self._padding = 0

    def _take(self, n: int) -> memoryview:
        """Up to n bytes, at least one: the rest of the current piece or of the next."""
        if self._at == len(self._piece):
            piece = next(self._pieces, b"")
            if not piece:
                raise ArchiveError("archive ends in the middle of an entry")
            self._piece, self._at = memoryview(piece), 0
        start = self._at
        self._at = min(start + n, len(self._piece))
        return self._piece[start:self._at]

    def _read(self, n: int) -> bytes:
        data = bytes(self._take(n))
        while len(data) < n:
            data += self._take(n - len(data))
        return data

    def _skip(self) -> None:
        left = self._left + self._padding
        while left:
            left -= len(self._take(left))
        self._left = self._padding = 0

    def copy_to(self, fd: int) -> None:
        """Write the current entry's data to fd."""
        while self._left:
            chunk = self._take(self._left)
            self._left -= len(chunk)
            while chunk:
                chunk = chunk[os.write(fd, chunk):]

    def __iter__(self):
        pax: dict[str, bytes] = {}
        while True:
            self._skip()
            block = self._read(_BLOCK)
            if block == _EMPTY:
                return
            (name, mode, uid, gid, size, mtime, checksum, kind, linkname, magic, _, _, _,
             major, minor, prefix) = _USTAR.unpack(block)
            if _number(checksum) != _checksum(block):
                raise ArchiveError("damaged tar header (checksum mismatch)")
            size = _number(size)
            if kind in (b"x", b"g"):
                data = self._read(size)
                self._padding = -size % _BLOCK
                if kind == b"x":
                    pax.update(_pax(data))
                continue
            etype = _TYPES.get(kind, "unsupported")
            name = _text(name)
            if magic == b"ustar\0" and prefix[0]:
                name = _text(prefix) + "/" + name
            device = etype in (CHAR, BLOCK)
            entry = Entry(name, etype, _number(mode), _number(uid), _number(gid), _number(mtime),
                          size, _text(linkname), _number(major) if device else 0,
                          _number(minor) if device else 0, {})
            if pax:
                _apply_pax(entry, pax)
                pax = {}
            self._left = entry.size if etype == FILE else 0
            self._padding = -self._left % _BLOCK
            yield entry


def _apply_pax(entry: Entry, pax: dict[str, bytes]) -> None:
    """Let an entry's pax records override its ustar header fields."""
    if "path" in pax:
        entry.name = pax["path"].decode("utf-8", "surrogateescape")
    if "linkpath" in pax:
        entry.linkname = pax["linkpath"].decode("utf-8", "surrogateescape")
    for key in ("uid", "gid", "size"):
        if key in pax:
            setattr(entry, key, int(pax[key]))
    if "mtime" in pax:
        entry.mtime = int(float(pax["mtime"]))
    entry.xattrs = {k[len(XATTR_PREFIX):]: v for k, v in pax.items()
                    if k.startswith(XATTR_PREFIX)}


def _decompressed(source, compression: int):
    """The decompressed stream, in pieces of at most PIECE bytes. The decoders check the
    stream's own integrity data (gzip's CRC-32 and length, xz's CRC32) at its end."""
    try:
        if compression == COMPRESSION_XZ:
            decoder = lzma.LZMADecompressor(lzma.FORMAT_XZ)
        elif compression == COMPRESSION_GZIP:
            decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)   # 16+: the gzip wrapper
        else:
            raise ArchiveError(f"unknown compression {compression}")
        data = b""
        while not decoder.eof:
            piece = decoder.decompress(data, PIECE)
            # zlib hands back the input it had no room to decompress; lzma keeps it itself.
            data = getattr(decoder, "unconsumed_tail", b"")
            if piece:
                yield piece
            elif not data:
                data = source.read(READ_CHUNK)
                if not data:
                    raise ArchiveError("compressed stream ends early")
        if decoder.unused_data or source.read(READ_CHUNK):
            raise ArchiveError("data after the end of the compressed stream")
    except (ArchiveError, lzma.LZMAError, zlib.error) as e:
        raise _unreadable(source, e) from None


def _unreadable(source, reason) -> Unreadable:
    """Read the record to its end, then say why its archive cannot be read."""
    while source.read(READ_CHUNK):
        pass
    return Unreadable(reason)


class _Inflating:
    """Runs an iterator of decompressed pieces in a thread, so that inflating overlaps the
    caller's work on the pieces before (zlib and lzma release the GIL); at most PIECES_AHEAD
    pieces wait, which bounds the memory. The `with` gives an iterator over the pieces;
    leaving it stops the thread, so nothing else reads the source while the thread does."""

    def __init__(self, pieces):
        self._pieces: queue.Queue = queue.Queue(PIECES_AHEAD)
        self._stop = threading.Event()
        # A daemon: a reader abandoned without being closed must not keep the process alive.
        self._thread = threading.Thread(target=self._inflate, args=(pieces,), daemon=True)

    def __enter__(self):
        self._thread.start()
        return self._received()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        # Once stopped, the thread puts at most one more piece: make room for it.
        try:
            self._pieces.get_nowait()
        except queue.Empty:
            pass
        self._thread.join()

    def _inflate(self, pieces) -> None:
        try:
            for piece in pieces:
                self._pieces.put(piece)
                if self._stop.is_set():
                    return
            self._pieces.put(b"")
        except Exception as e:
            self._pieces.put(e)

    def _received(self):
        while piece := self._pieces.get():
            if isinstance(piece, Exception):
                raise piece
            yield piece


def entries(source, compression: int):
    """(reader, entry) for each entry of a payload stream, in order. Reads the stream to its
    end, so the record's CRC is always checked; a damaged record raises RecordDamaged even
    where the damage first garbles the archive."""
    try:
        with _Inflating(_decompressed(source, compression)) as pieces:
            reader = TarReader(pieces)
            for entry in reader:
                yield reader, entry
            for _ in pieces:
                pass
    except Unreadable:
        raise
    except (ArchiveError, ValueError) as e:
        raise _unreadable(source, e) from None
