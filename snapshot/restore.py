"""Applying a snapshot's archive onto an overlay upper directory, with overlayfs semantics.

Applying snapshots 1..N in order into one upper directory gives the upper directory the user
had (DESIGN.md §7 has the rules). An archive is read twice: the first pass checks every entry
against the safety rules and the target (and the record's CRC, at the end of the stream); only
an archive that passes all of it is applied, so a refused archive leaves the target untouched.
"""
import os
import shutil
import stat
import tarfile
from pathlib import Path, PurePosixPath

from snapshot.archive import (OPAQUE_XATTRS, READ_CHUNK, ArchiveError, is_opaque, is_whiteout,
                              members, xattrs_of)

OPAQUE = "trusted.overlay.opaque"


class UnsafeEntry(ArchiveError):
    """An archive entry that would write outside the target or create something forbidden."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"archive entry {name!r} refused: {reason}; nothing was unpacked")


def _relative(name: str) -> str:
    """`name` as a path relative to the target; ValueError says why it cannot be one."""
    path = PurePosixPath(name)
    if path.is_absolute():
        raise ValueError("absolute path")
    parts = [p for p in path.parts if p != "."]
    if ".." in parts:
        raise ValueError("'..' in the path")
    if not parts:
        raise ValueError("empty path")
    return "/".join(parts)


def clean_name(name: str, entry: str | None = None) -> str:
    """The path relative to the target, or UnsafeEntry naming the archive entry."""
    try:
        return _relative(name)
    except ValueError as e:
        reason = str(e) if entry is None else f"hardlink target {name!r}: {e}"
        raise UnsafeEntry(entry or name, reason) from None


def check(open_payload, dest: Path) -> None:
    """First pass: every entry is safe against dest as it is now. Reads the whole stream."""
    dest = Path(dest)
    kinds: dict[str, str] = {}   # what this archive has put at each path so far
    for _, member in members(*open_payload()):
        name = clean_name(member.name)
        for parent in list(PurePosixPath(name).parents)[:-1]:
            _check_parent(str(parent), kinds, dest, member.name)
        if member.islnk():
            target = clean_name(member.linkname, member.name)
            if kinds.get(target) != "file":
                raise UnsafeEntry(member.name, f"hardlink to {member.linkname!r}, which is not "
                                               f"a file earlier in this archive")
        elif member.ischr() or member.isblk():
            if not is_whiteout(member):
                raise UnsafeEntry(member.name, "device node (only 0/0 whiteouts are allowed)")
        elif not (member.isreg() or member.isdir() or member.issym() or member.isfifo()):
            raise UnsafeEntry(member.name, "unsupported entry type")
        kinds[name] = "dir" if member.isdir() else "link" if member.issym() else \
            "whiteout" if member.ischr() else "file"


def _check_parent(parent: str, kinds: dict, dest: Path, name: str) -> None:
    kind = kinds.get(parent)
    if kind is not None:
        if kind != "dir":
            raise UnsafeEntry(name, f"{parent!r} earlier in this archive is not a directory"
                              + (" (a symlink)" if kind == "link" else ""))
        return
    try:
        mode = (dest / parent).lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise UnsafeEntry(name, f"{parent!r} is a symlink in the target")
    if not stat.S_ISDIR(mode):
        raise UnsafeEntry(name, f"{parent!r} is not a directory in the target")


def apply(open_payload, dest: Path) -> None:
    """Check the archive, then apply it onto dest with overlayfs semantics."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    check(open_payload, dest)
    dir_times = []
    for tar, member in members(*open_payload()):
        path = dest / clean_name(member.name)
        try:
            _apply_member(tar, member, path, dest)
        except OSError as e:
            raise ArchiveError(f"cannot unpack {member.name!r} into {dest}: "
                               f"{e.strerror}") from None
        if member.isdir():
            dir_times.append((path, member.mtime))
    # Creating entries changes their directory's mtime: set directories' times last.
    for path, mtime in reversed(dir_times):
        os.utime(path, (mtime, mtime), follow_symlinks=False)


def _apply_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path,
                  dest: Path) -> None:
    if member.isdir():
        _apply_dir(path, member)
        return
    _remove(path)
    if member.isreg():
        _write_file(tar, member, path)
    elif member.islnk():
        os.link(dest / clean_name(member.linkname), path, follow_symlinks=False)
        return  # a hardlink shares its target's metadata
    elif member.issym():
        os.symlink(member.linkname, path)
    elif member.isfifo():
        os.mkfifo(path)
    else:
        os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))
    _metadata(path, member)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _apply_dir(path: Path, member: tarfile.TarInfo) -> None:
    existing = path.is_dir() and not path.is_symlink()
    opaque = is_opaque(member)
    if existing and opaque:
        # An opaque directory replaces everything earlier snapshots put in it.
        shutil.rmtree(path)
        existing = False
    if not existing:
        replaced = os.path.lexists(path)
        _remove(path)
        path.mkdir()
        # A directory where a file or a whiteout was must hide the lower layer's directory
        # of the same name, which the file or whiteout used to hide.
        if replaced and not opaque:
            os.setxattr(path, OPAQUE, b"y")
    _metadata(path, member)


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> None:
    source = tar.extractfile(member)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(READ_CHUNK):
            out.write(chunk)


def _metadata(path: Path, member: tarfile.TarInfo) -> None:
    link = member.issym()
    os.chown(path, member.uid, member.gid, follow_symlinks=False)
    wanted = xattrs_of(member)
    # A directory kept from an earlier snapshot gets exactly the new xattrs, except that it
    # stays opaque: the opaque mark hides the lower layer, which the new delta cannot see.
    for key in os.listxattr(path, follow_symlinks=False):
        if key not in wanted and key not in OPAQUE_XATTRS:
            os.removexattr(path, key, follow_symlinks=False)
    for key, value in wanted.items():
        os.setxattr(path, key, value, follow_symlinks=False)
    if not link:
        # After chown: chown clears setuid and setgid.
        os.chmod(path, member.mode & 0o7777)
    if not member.isdir():
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
