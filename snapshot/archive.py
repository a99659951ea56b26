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
import stat
import tarfile
import zlib
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
XATTR_PREFIX = "SCHILY.xattr."
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
# overlayfs bookkeeping that only makes sense on the filesystem it was made on.
OVERLAY_PRIVATE = ("trusted.overlay.", "user.overlay.")
# Features whose upper entries do not stand alone: a metacopy file has no data, a redirected
# directory takes its contents from elsewhere in the lower layer.
OVERLAY_UNSUPPORTED = ("metacopy", "redirect")


class ArchiveError(SnapshotError):
    pass


def compressor(out, compression: int):
    if compression == COMPRESSION_XZ:
        return lzma.LZMAFile(out, "wb", format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                             preset=XZ_PRESET)
    return gzip.GzipFile(fileobj=out, mode="wb", compresslevel=GZIP_LEVEL, mtime=0)


def decompressor(source, compression: int):
    if compression == COMPRESSION_XZ:
        return lzma.LZMAFile(source, "rb")
    if compression == COMPRESSION_GZIP:
        return gzip.GzipFile(fileobj=source, mode="rb")
    raise ArchiveError(f"unknown compression {compression}")


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
    for key, value in _xattrs(path).items():
        info.pax_headers[XATTR_PREFIX + key] = value.decode("utf-8", "surrogateescape")
    return info


def xattrs_of(info: tarfile.TarInfo) -> dict[str, bytes]:
    return {key[len(XATTR_PREFIX):]: value.encode("utf-8", "surrogateescape")
            for key, value in info.pax_headers.items() if key.startswith(XATTR_PREFIX)}


def is_whiteout(info: tarfile.TarInfo) -> bool:
    return info.ischr() and info.devmajor == 0 and info.devminor == 0


def is_opaque(info: tarfile.TarInfo) -> bool:
    return info.isdir() and any(v == b"y" for k, v in xattrs_of(info).items()
                                if k in OPAQUE_XATTRS)


def members(source, compression: int):
    """The tar members of a payload stream, in order; a member's data is readable from
    `tar.extractfile(member)` until the next member is taken."""
    try:
        with decompressor(source, compression) as stream, \
                tarfile.open(fileobj=stream, mode="r|", errorlevel=2) as tar:
            for member in tar:
                yield tar, member
            # Read to the very end, so the record's CRC is checked even past the tar's end.
            while stream.read(READ_CHUNK):
                pass
            while source.read(READ_CHUNK):
                pass
    except (tarfile.TarError, gzip.BadGzipFile, lzma.LZMAError, zlib.error, EOFError) as e:
        # Damaged flash shows up here first; reading on to the end lets the record's CRC
        # say so (RecordDamaged) before the archive is blamed.
        while source.read(READ_CHUNK):
            pass
        raise ArchiveError(f"archive cannot be read: {e}") from None
