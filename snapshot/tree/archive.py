"""Record payloads: a compressed tar of an overlayfs upper directory, read as a stream so no
archive is ever held whole in memory or copied to /tmp (capture.py writes them).

What a payload preserves (DESIGN.md §7): regular files (content, mode with setuid/setgid/
sticky, owner, mtime), directories, symlinks, hardlinks, fifos, overlayfs whiteouts (character
devices 0/0), opaque directories (xattr trusted.overlay.opaque=y or user.overlay.opaque=y),
other xattrs (pax SCHILY.xattr.* records, as GNU tar writes them), and top-level dotfiles.
Entries are in sorted order and carry no user or group names, so the same tree always gives
the same bytes.
"""
import fcntl
import os
import struct
import zlib

from snapshot.errors import SnapshotError
from snapshot.store.format import COMPRESSION_GZIP, COMPRESSION_XZ

# Reading decompresses READ_CHUNK bytes at a time, in pieces of at most PIECE bytes, which
# a child process hands over through a pipe that holds PIPE bytes. Pieces this size come
# from memory malloc reuses: 256 KiB ones were mapped afresh, and faulted in page by page,
# for nearly every piece, which cost more than the extra calls save. A READ_CHUNK inflates
# to about a piece, so little input is left over to be copied from call to call.
READ_CHUNK = 64 * 1024
PIECE = 128 * 1024
PIPE = 1024 * 1024
# A small first piece lets the reader of a child's pipe start sooner.
FIRST_PIECE = 16 * 1024
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


# What a record may hold: one rule for the writer (capture.py leaves anything else out, with a
# warning) and the reader (restore.py refuses an archive holding it).
# Where restore stages file contents inside the target until a whole archive has passed.
STAGING = ".snapshot-unpacking"


def refusal(name: str) -> str | None:
    """Why an entry at `name` (relative to the captured directory) cannot be in a record,
    if it cannot."""
    if name.partition("/")[0] == STAGING:
        return f"the name {STAGING!r} at the top is where unpacking stages files"
    return None


# -- reading ---------------------------------------------------------------------------------
# A lean reader for the tar subset pack() writes (ustar headers, pax extended headers):
# the stdlib's tarfile spends most of an unpack parsing headers it does not need.

FILE, HARDLINK, SYMLINK, CHAR, BLOCK, DIRECTORY, FIFO = "0", "1", "2", "3", "4", "5", "6"
_TYPES = {b"0": FILE, b"\0": FILE, b"7": FILE, b"1": HARDLINK, b"2": SYMLINK, b"3": CHAR,
          b"4": BLOCK, b"5": DIRECTORY, b"6": FIFO}
_BLOCK = 512
_EMPTY = bytes(_BLOCK)


class Entry:
    """One archive entry. For a FILE, copy_to() reads its data before the next entry. (A
    plain class: a dataclass's import is most of `mount`'s start-up on a router's CPU.)"""
    __slots__ = ("name", "type", "mode", "uid", "gid", "mtime", "size", "linkname",
                 "devmajor", "devminor", "xattrs")

    def __init__(self, name: str, type: str, mode: int, uid: int, gid: int, mtime: int,
                 size: int, linkname: str, devmajor: int, devminor: int,
                 xattrs: dict[str, bytes]):
        self.name, self.type, self.mode, self.uid, self.gid = name, type, mode, uid, gid
        self.mtime, self.size, self.linkname = mtime, size, linkname
        self.devmajor, self.devminor, self.xattrs = devmajor, devminor, xattrs

    def replace(self, **changes) -> "Entry":
        """A copy with the fields `changes` names changed (as dataclasses.replace)."""
        copy = Entry(*(getattr(self, k) for k in self.__slots__))
        for key, value in changes.items():
            setattr(copy, key, value)
        return copy

    def __eq__(self, other) -> bool:
        return type(other) is Entry and all(getattr(self, k) == getattr(other, k)
                                            for k in self.__slots__)

    def __repr__(self) -> str:
        return f"Entry({', '.join(f'{k}={getattr(self, k)!r}' for k in self.__slots__)})"

    @property
    def is_whiteout(self) -> bool:
        return self.type == CHAR and self.devmajor == 0 and self.devminor == 0

    @property
    def is_opaque(self) -> bool:
        return (self.type == DIRECTORY and bool(self.xattrs)
                and any(self.xattrs.get(k) == b"y" for k in OPAQUE_XATTRS))


# POSIX ustar header: name, mode, uid, gid, size, mtime, chksum, typeflag, linkname, magic,
# version, uname, gname, devmajor, devminor, prefix.
_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")
assert _USTAR.size == 512


def _number(field: bytes) -> int:
    if field[0] & 0x80:   # base-256, for values too large for octal
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
        self._left = self._padding = 0
        while left:
            left -= len(self._take(left))

    def copy_to(self, fd: int) -> None:
        """Write the current entry's data to fd."""
        left, at = self._left, self._at
        # Most files lie whole in the current piece: one write, no generator.
        if left <= len(self._piece) - at:
            self._left, self._at = 0, at + left
            if left:
                _send(fd, self._piece[at:at + left])
            return
        for chunk in self.chunks():
            _send(fd, chunk)

    def chunks(self):
        """The current entry's data, piece by piece."""
        while self._left:
            chunk = self._take(self._left)
            self._left -= len(chunk)
            yield chunk

    def __iter__(self):
        pax: dict[str, bytes] = {}
        while True:
            # Past the rest of the entry before: where the next header lies whole in the
            # current piece, which it nearly always does, a view of it.
            at = self._at + self._left + self._padding
            if at + _BLOCK <= len(self._piece):
                self._left = self._padding = 0
                self._at = at + _BLOCK
                block = self._piece[at:self._at]
            else:
                self._skip()
                block = self._read(_BLOCK)
            if block == _EMPTY:
                return
            (name, mode, uid, gid, size, mtime, checksum, kind, linkname, magic, _, _, _,
             major, minor, prefix) = fields = _USTAR.unpack(block)
            try:
                # Unrolled: a loop over the six fields costs more than parsing them.
                mode, uid, gid, size, mtime, checksum = (
                    int(mode.strip(b"\0 "), 8), int(uid.strip(b"\0 "), 8),
                    int(gid.strip(b"\0 "), 8), int(size.strip(b"\0 "), 8),
                    int(mtime.strip(b"\0 "), 8), int(checksum.strip(b"\0 "), 8))
            except ValueError:   # a base-256 or an empty field: rare, so tried second
                mode, uid, gid, size, mtime, checksum = map(_number, fields[1:7])
            if checksum != _checksum(block):
                raise ArchiveError("damaged tar header (checksum mismatch)")
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
            entry = Entry(name, etype, mode, uid, gid, mtime, size,
                          _text(linkname) if linkname[0] else "",
                          _number(major) if device else 0, _number(minor) if device else 0, {})
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
    errors: tuple = (ArchiveError, zlib.error)
    try:
        if compression == COMPRESSION_XZ:
            import lzma   # here: records are gzip unless the configuration says xz
            errors += (lzma.LZMAError,)
            decoder = lzma.LZMADecompressor(lzma.FORMAT_XZ)
        elif compression == COMPRESSION_GZIP:
            decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)   # 16+: the gzip wrapper
        else:
            raise ArchiveError(f"unknown compression {compression}")
        data, size = b"", FIRST_PIECE
        while not decoder.eof:
            piece = decoder.decompress(data, size)
            size = min(2 * size, PIECE)
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
    except errors as e:
        raise _unreadable(source, e) from None


def _unreadable(source, reason) -> Unreadable:
    """Read the record to its end, then say why its archive cannot be read."""
    while source.read(READ_CHUNK):
        pass
    return Unreadable(reason)


# The length of a piece the reading process sends before the piece; 0 ends a payload.
_FRAME = struct.Struct("<I")


class Payloads:
    """Reads payload streams, in order, and hands over their decompressed pieces. Where
    there is a second CPU and at least PIECE bytes to read (going by the sources' `length`,
    where they have one), one child process reads the flash, checks the CRCs and inflates,
    as `tar -z` runs gzip beside tar, while the caller parses the pieces and writes files.
    The child goes on to the next payload as soon as it has sent one, so the caller never
    waits for a process to start between two payloads. The child only reads.

    `with Payloads(sources, compressions) as payloads` gives a Payload for each source, which
    entries() takes in place of the source. Leaving the `with` ends the child. A child that
    fails (a damaged record, a read error) stops sending: the caller then reads that payload
    again itself, which raises the error the child met, or goes on from where the child
    stopped if it was lost for another reason. A payload left unfinished or skipped ends the
    child too. The payloads after that, and all of them where no child can be started, are
    decompressed in the caller's process."""

    def __init__(self, sources: list, compressions: list[int]):
        self._streams = list(zip(sources, compressions))
        self._pid = self._fd = None
        self._sending = 0   # the payload whose pieces come next through the pipe

    def __enter__(self) -> list["Payload"]:
        length = sum(getattr(source, "length", PIECE) for source, _ in self._streams)
        if len(os.sched_getaffinity(0)) >= 2 and length >= PIECE:
            self._start()
        return [Payload(self, index, source) for index, (source, _) in enumerate(self._streams)]

    def __exit__(self, *exc) -> None:
        self._stop()

    def _start(self) -> None:
        try:
            read_end, write_end = os.pipe()
        except OSError:
            return   # out of file descriptors: read in this process
        try:
            # Larger than the default 64 KiB, so the child is rarely stopped waiting for room.
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE)
        except OSError:
            pass   # above /proc/sys/fs/pipe-max-size: works, a little slower
        try:
            pid = os.fork()
        except OSError:
            os.close(read_end)
            os.close(write_end)
            return
        if pid == 0:
            self._child(read_end, write_end)
        os.close(write_end)
        self._pid, self._fd = pid, read_end

    def _stop(self, kill: bool = True) -> None:
        """End the child and reap it (one that has closed the pipe is ending by itself)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._pid is not None:
            if kill:
                # The child writes nothing anywhere but to the pipe: stopping it loses nothing.
                # signal imported here: it imports enum, which a one-CPU router's boot, with
                # no child to stop, does without.
                import signal
                os.kill(self._pid, signal.SIGKILL)
            os.waitpid(self._pid, 0)
            self._pid = None

    def _child(self, read_end: int, write_end: int) -> None:
        status = 1
        try:
            os.close(read_end)
            for source, compression in self._streams:
                for piece in _decompressed(source, compression):
                    _send(write_end, _FRAME.pack(len(piece)))
                    _send(write_end, piece)
                _send(write_end, _FRAME.pack(0))
            status = 0
        finally:
            # Never return into the caller's code: it runs on in the parent.
            os._exit(status)

    def pieces(self, index: int):
        """The decompressed pieces of payload `index`."""
        source, compression = self._streams[index]
        if index != self._sending:
            self._stop()   # the pipe is out of step: an earlier payload was left unfinished
        if self._pid is None:
            yield from _decompressed(source, compression)
            return
        # One buffer for every piece, so no read pays for fresh memory. A piece is used up
        # before the next is asked for (TarReader copies what it keeps).
        buffer, frame = bytearray(PIECE), bytearray(_FRAME.size)
        view = memoryview(buffer)
        received = 0
        while _receive(self._fd, memoryview(frame)):
            size, = _FRAME.unpack(frame)
            if size == 0:
                self._sending += 1
                return
            if size > len(buffer) or not _receive(self._fd, view[:size]):
                break
            received += size
            yield view[:size]
        # The child stopped sending in the middle of this payload. Reading it again here
        # raises the error the child met (a damaged record), or, where the child was lost
        # for another reason (killed for memory, say), goes on from where it stopped.
        self._stop(kill=False)
        for piece in _decompressed(source, compression):
            if received < len(piece):
                yield memoryview(piece)[received:]
            received = max(received - len(piece), 0)


class Payload:
    """One payload of a Payloads: entries() takes it in place of its source."""

    def __init__(self, payloads: Payloads, index: int, source):
        self._payloads = payloads
        self._index = index
        self.source = source

    def pieces(self):
        return self._payloads.pieces(self._index)


def _send(fd: int, data) -> None:
    """Write all of data (bytes or a view) to fd."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _receive(fd: int, into: memoryview) -> bool:
    """Fill `into` from fd; False if fd ends first."""
    got = 0
    while got < len(into):
        n = os.readv(fd, [into[got:]])
        if not n:
            return False
        got += n
    return True


def entries(source, compression: int):
    """(reader, entry) for each entry of a payload stream, in order; `source` may be a
    Payload of a Payloads instead (which was given its compression). Reads the stream to its end, so the record's CRC is always
    checked; a damaged record raises RecordDamaged even where the damage first garbles the
    archive."""
    if not isinstance(source, Payload):
        with Payloads([source], [compression]) as (payload,):
            yield from entries(payload, compression)
        return
    try:
        pieces = source.pieces()
        reader = TarReader(pieces)
        for entry in reader:
            yield reader, entry
        for _ in pieces:
            pass
    except Unreadable:
        raise
    except (ArchiveError, ValueError) as e:
        raise _unreadable(source.source, e) from None
