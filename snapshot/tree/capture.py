"""Capturing an overlayfs upper directory as a record payload: a compressed tar stream, written
as the tree is walked, so no archive is ever held whole in memory or copied to /tmp.

The tree may change while it is read: on a router, daemons write into /volatile/upper all the
time, and the shutdown save runs while they do. What is stored then, as GNU tar does:

- an entry that vanished before it was read is left out;
- a file that shrank while it was read is padded with zeros to the size its header gives, one
  that grew is stored as long as it was when opened: every entry in the stream is whole;
- an entry whose type changed between being listed and being read is looked at again (up to
  ATTEMPTS times); a directory that went away or became something else after its own entry
  was stored keeps that entry, with what could still be listed of it;
- an entry that cannot be read (permission, I/O error: FUSE or NFS) is left out, and
  extended attributes that cannot be read are left off their entry.

Each of these adds a warning naming the path; a capture with no warning is exact. What the
stream holds is what the reader restores: a name archive.refusal refuses is left out too.
"""
import errno
import os
import stat
import tarfile
from pathlib import Path

from snapshot.store.format import COMPRESSION_GZIP, COMPRESSION_XZ, round_up
from snapshot.tree import archive
from snapshot.tree.archive import (OPAQUE_XATTRS, OVERLAY_PRIVATE, OVERLAY_UNSUPPORTED,
                                   XATTR_PREFIX, ArchiveError, refusal)

# The level `tar czf` uses; 9 costs about twice the time for a few percent.
GZIP_LEVEL = 6
# xz -2: a 2 MiB dictionary, about 17 MiB to compress and 3 MiB to decompress, which a
# router can afford; CRC32 because every xz decoder (busybox too) knows it.
XZ_PRESET = 2
# How often an entry whose type changed under the walk is looked at again.
ATTEMPTS = 3
# O_NONBLOCK: a file swapped for a fifo after it was listed must not block the open.
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NOT_SUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP)


def compressor(out, compression: int):
    import gzip   # here: reading (every boot) never needs it
    if compression == COMPRESSION_XZ:
        import lzma
        return lzma.LZMAFile(out, "wb", format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                             preset=XZ_PRESET)
    return gzip.GzipFile(filename="", fileobj=out, mode="wb", compresslevel=GZIP_LEVEL,
                         mtime=0)


def compressed_bound(tar_bytes: int) -> int:
    """At most what gzip or xz make of `tar_bytes` bytes: incompressible data costs deflate
    5 bytes per stored block of 16 KiB and LZMA2 3 per chunk of 64 KiB, plus headers."""
    return tar_bytes + tar_bytes // 64 + 4096


#: tar's block; what ends a stream: two zero blocks, at most one record of padding.
_BLOCK = 512
_END = 2 * _BLOCK + tarfile.RECORDSIZE
#: At most a pax record's length, keyword and separators, besides its value.
_PAX_RECORD = 64


def tar_bound(root: Path) -> int:
    """More than pack() writes of the tree at `root` as it stands: per entry, its header, a
    pax header with its name, link target and extended attributes, and its data in whole
    blocks (a hardlink's too). An entry that cannot be looked at counts for nothing: the
    capture leaves it out. The tree is walked once, with no file opened."""
    size = _END
    stack = [(str(root), "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for base in names:
            path, name = f"{directory}/{base}", prefix + base
            try:
                st = os.lstat(path)
                link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
            except OSError:
                continue
            records = len(os.fsencode(name)) + len(os.fsencode(link)) + 4 * _PAX_RECORD
            try:
                for key in os.listxattr(path, follow_symlinks=False):
                    records += len(key) + _PAX_RECORD + len(
                        os.getxattr(path, key, follow_symlinks=False))
            except OSError:
                pass
            size += 2 * _BLOCK + round_up(records, _BLOCK)
            if stat.S_ISREG(st.st_mode):
                size += round_up(st.st_size, _BLOCK)
            elif stat.S_ISDIR(st.st_mode):
                stack.append((path, name + "/"))
    return size


def require_directory(root: Path) -> None:
    try:
        if stat.S_ISDIR(os.stat(root).st_mode):
            return
    except FileNotFoundError:
        pass
    except OSError as e:
        raise ArchiveError(f"{root}: cannot be read: {e.strerror}") from None
    raise ArchiveError(f"{root}: no such directory")


class _Changed(Exception):
    """The entry is not what it was when it was first looked at: look at it again."""


class _Gone(Exception):
    """The entry vanished or cannot be read: it is left out (its warning is noted)."""


class Capture:
    """One walk of a tree into a tar stream. `warnings` says, entry by entry, where the
    stream differs from the tree as it would have been stored standing still; none means
    the capture is exact. An error (ArchiveError, or one from `out`) ends the capture."""

    def __init__(self, root: Path, only: set[str] | None = None):
        """`only`: the names (relative to root) to store, with the directories that lead to
        them; by default everything. A directory stored only to lead somewhere is stored
        without its opaque mark: what hides the layers below it is not part of the change."""
        self.root = Path(root)
        require_directory(self.root)
        self.warnings: list[str] = []
        self._inodes: dict[tuple[int, int], str] = {}   # files with several links, stored
        self.only = only
        self._leading = {"/".join(name.split("/")[:i]) for name in only or ()
                         for i in range(1, name.count("/") + 1)}

    @property
    def exact(self) -> bool:
        return not self.warnings

    def pack(self, out, compression: int = COMPRESSION_GZIP) -> "Capture":
        """Write the archive of the tree's contents (names relative to it) to out: names
        relative to the root, parents before children, siblings sorted by name."""
        with compressor(out, compression) as stream, \
                tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            stack = [(str(self.root), "", None)]
            while stack:
                directory, prefix, inode = stack.pop()
                subdirs = []
                for name in self._list(directory, prefix, inode):
                    if self.only is not None and prefix + name not in self.only and \
                            prefix + name not in self._leading:
                        continue
                    stored = self._store(tar, f"{directory}/{name}", prefix + name)
                    if stored is not None and (self.only is None or
                                               prefix + name in self._leading):
                        subdirs.append((f"{directory}/{name}", f"{prefix}{name}/", stored))
                stack.extend(reversed(subdirs))
        return self

    def _warn(self, path: str, what: str) -> None:
        self.warnings.append(f"{path}: {what}")

    def _list(self, directory: str, prefix: str, inode: int | None) -> list[str]:
        """The names in a directory whose entry was stored as inode `inode` (None: the
        root); none, with a warning, if it is gone or another one is in its place."""
        try:
            with os.scandir(directory) as it:
                names = sorted(e.name for e in it)
            if inode is not None and os.lstat(directory).st_ino != inode:
                raise FileNotFoundError(errno.ENOENT, "replaced")
            return names
        except OSError as e:
            if not prefix:
                raise ArchiveError(f"{directory}: cannot be read: {e.strerror}") from None
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                self._warn(directory, "vanished or changed while it was read; what it "
                                      "held is not stored")
            else:
                self._warn(directory, f"cannot be listed ({e.strerror}); what it holds "
                                      f"is not stored")
            return []

    def _store(self, tar, path: str, name: str) -> int | None:
        """Add one entry; a directory's inode number if it was one (its contents are listed
        later), else None."""
        problem = refusal(name)
        if problem:
            self._warn(path, f"not stored: {problem}")
            return None
        for _ in range(ATTEMPTS):
            try:
                return self._store_once(tar, path, name)
            except _Changed:
                continue
            except _Gone:
                return None
        self._warn(path, "kept changing while it was read; not stored")
        return None

    def _lstat(self, path: str) -> os.stat_result:
        try:
            return os.lstat(path)
        except FileNotFoundError:
            self._warn(path, "vanished before it was read; not stored")
        except OSError as e:
            self._warn(path, f"cannot be read ({e.strerror}); not stored")
        raise _Gone

    def _store_once(self, tar, path: str, name: str) -> int | None:
        st = self._lstat(path)
        mode = st.st_mode
        if stat.S_ISREG(mode):
            self._store_file(tar, path, name)
            return None
        if stat.S_ISSOCK(mode):
            return None   # sockets belong to running programs; GNU tar skips them too
        if (stat.S_ISCHR(mode) and st.st_rdev != 0) or stat.S_ISBLK(mode):
            raise ArchiveError(f"{path}: device nodes cannot be stored (only overlayfs "
                               f"whiteouts)")
        kind = {stat.S_IFDIR: tarfile.DIRTYPE, stat.S_IFLNK: tarfile.SYMTYPE,
                stat.S_IFIFO: tarfile.FIFOTYPE, stat.S_IFCHR: tarfile.CHRTYPE}[stat.S_IFMT(mode)]
        info = _info(name, st, kind)
        if kind == tarfile.SYMTYPE:
            try:
                info.linkname = os.readlink(path)
            except OSError as e:
                self._unreadable(path, e)
        info.pax_headers.update(self._xattrs(path, path))
        if self.only is not None and name not in self.only:
            for key in OPAQUE_XATTRS:
                info.pax_headers.pop(XATTR_PREFIX + key, None)
        # What was read must belong to the entry that was looked at, not to one put in its
        # place meanwhile.
        again = self._lstat(path)
        if (again.st_ino, stat.S_IFMT(again.st_mode)) != (st.st_ino, stat.S_IFMT(mode)):
            raise _Changed
        tar.addfile(info)
        return st.st_ino if kind == tarfile.DIRTYPE else None

    def _unreadable(self, path: str, error: OSError):
        if error.errno == errno.ENOENT:
            self._warn(path, "vanished before it was read; not stored")
            raise _Gone
        if error.errno in (errno.EINVAL, errno.ELOOP, errno.ENOTDIR):
            raise _Changed   # not a symlink, or now a symlink, or no longer a directory
        self._warn(path, f"cannot be read ({error.strerror}); not stored")
        raise _Gone

    def _store_file(self, tar, path: str, name: str) -> None:
        """A regular file, from one open descriptor: its header, its xattrs and its data all
        come from the same file, whatever is renamed over its path meanwhile."""
        try:
            fd = os.open(path, _OPEN)
        except OSError as e:
            self._unreadable(path, e)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _Changed
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self._inodes:
                tar.addfile(_info(name, st, tarfile.LNKTYPE, self._inodes[key]))
                return
            info = _info(name, st, tarfile.REGTYPE)
            info.pax_headers.update(self._xattrs(fd, path))
            data = _Exactly(fd)
            tar.addfile(info, data)
            if data.problem:
                self._warn(path, data.problem)
            elif _read_more(fd) or _differs(st, os.fstat(fd)):
                self._warn(path, "changed while it was read; stored as it was read")
            if st.st_nlink > 1:
                self._inodes[key] = name
        finally:
            os.close(fd)

    def _xattrs(self, target, path: str) -> dict[str, str]:
        """The pax records for the entry's extended attributes (target: its path, or an open
        descriptor of it). overlayfs bookkeeping other than the opaque mark is left out."""
        try:
            names = os.listxattr(target, follow_symlinks=False) if isinstance(target, str) \
                else os.listxattr(target)
        except OSError as e:
            if e.errno in _NOT_SUPPORTED:
                return {}
            if e.errno == errno.ENOENT:
                raise _Changed from None
            self._warn(path, f"its extended attributes cannot be read ({e.strerror}); "
                             f"stored without them")
            return {}
        records = {}
        for key in sorted(names):
            for feature in OVERLAY_UNSUPPORTED:
                if key.endswith(f".overlay.{feature}"):
                    raise ArchiveError(f"{path}: overlayfs {feature} entries cannot be stored; "
                                       f"mount the overlay with {feature}=off")
            if key.startswith(OVERLAY_PRIVATE) and key not in OPAQUE_XATTRS:
                continue
            if "=" in key:
                # A pax record's keyword ends at the first '=': the name would read back as
                # another attribute.
                self._warn(path, f"extended attribute {key!r} is not stored: a name with "
                                 f"'=' cannot be stored in a pax record")
                continue
            try:
                value = os.getxattr(target, key, follow_symlinks=False) \
                    if isinstance(target, str) else os.getxattr(target, key)
            except OSError as e:
                self._warn(path, f"extended attribute {key!r} cannot be read "
                                 f"({e.strerror}); stored without it")
                continue
            records[XATTR_PREFIX + key] = value.decode("utf-8", "surrogateescape")
        return records


def _info(name: str, st: os.stat_result, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    """The header of one entry: no user or group names and whole-second mtimes, so the same
    tree always gives the same bytes (a fractional mtime would also cost an extra pax
    header per entry to write and to parse)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = st.st_mode & 0o7777
    info.uid, info.gid = st.st_uid, st.st_gid
    info.size = st.st_size if kind == tarfile.REGTYPE else 0
    info.mtime = int(st.st_mtime)
    info.linkname = linkname
    return info


# -- copying entries from one archive into another (squash.py, transaction.py) -------------

_KINDS = {archive.FILE: tarfile.REGTYPE, archive.DIRECTORY: tarfile.DIRTYPE,
          archive.SYMLINK: tarfile.SYMTYPE, archive.HARDLINK: tarfile.LNKTYPE,
          archive.CHAR: tarfile.CHRTYPE, archive.FIFO: tarfile.FIFOTYPE}


def header(entry: archive.Entry) -> tarfile.TarInfo:
    """A read entry's header as pack() writes headers (no user or group names)."""
    info = tarfile.TarInfo(entry.name)
    info.type = _KINDS[entry.type]
    info.mode, info.uid, info.gid, info.mtime = entry.mode, entry.uid, entry.gid, entry.mtime
    info.size = entry.size if entry.type == archive.FILE else 0
    info.linkname = entry.linkname
    info.devmajor, info.devminor = entry.devmajor, entry.devminor
    info.uname = info.gname = ""
    for key, value in entry.xattrs.items():
        info.pax_headers[XATTR_PREFIX + key] = value.decode("utf-8", "surrogateescape")
    return info


class EntryData:
    """The data of a TarReader's current entry, as the file tarfile.addfile reads: exactly
    the bytes asked for (fewer only at its end)."""

    def __init__(self, reader: archive.TarReader):
        self._chunks = reader.chunks()
        self._rest = memoryview(b"")

    def read(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            if not self._rest:
                # A piece may live in a buffer the next one is read into: what is taken
                # of it is copied first.
                self._rest = memoryview(next(self._chunks, b""))
                if not self._rest:
                    break
            take = n - len(data)
            data += self._rest[:take]
            self._rest = self._rest[take:]
        return bytes(data)


class _Exactly:
    """Exactly `size` bytes of a file's data, as tarfile reads them, whatever happens to the
    file meanwhile: what could not be read (it shrank, or a read failed) is zeros, and
    `problem` says so."""

    def __init__(self, fd: int):
        self.fd = fd
        self.problem: str | None = None

    def read(self, n: int) -> bytes:
        data = b""
        while len(data) < n and self.problem is None:
            try:
                chunk = os.read(self.fd, n - len(data))
            except OSError as e:
                self.problem = f"could not be read to its end ({e.strerror}); the rest " \
                               f"is stored as zeros"
                break
            if not chunk:
                self.problem = "shrank while it was read; padded with zeros to its size"
                break
            data += chunk
        return data + bytes(n - len(data))


def _read_more(fd: int) -> bool:
    """Whether the file has grown past what was stored."""
    try:
        return bool(os.read(fd, 1))
    except OSError:
        return False


def _differs(before: os.stat_result, after: os.stat_result) -> bool:
    return (before.st_size, before.st_mtime_ns, before.st_ctime_ns) != \
        (after.st_size, after.st_mtime_ns, after.st_ctime_ns)


def pack(root: Path, out, compression: int = COMPRESSION_GZIP) -> Capture:
    """Capture `root` into `out`; the Capture says whether it is exact."""
    return Capture(root).pack(out, compression)
