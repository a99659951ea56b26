"""Applying a snapshot's archive onto an overlay upper directory, with overlayfs semantics.

Applying snapshots 1..N in order into one upper directory gives the upper directory the user
had (DESIGN.md §7 has the rules). Every entry is checked against the safety rules and the
target before it is applied. Staged, nothing in the target changes until the whole stream,
the record's CRC included, has passed, so a refused or damaged archive leaves the target
untouched; in place (into a target the caller can discard), entries go in as they pass.
"""
import os
import shutil
import stat
from contextlib import closing
from pathlib import Path

from snapshot.archive import (BLOCK, CHAR, DIRECTORY, FIFO, FILE, HARDLINK, OPAQUE_XATTRS,
                              STAGING, SYMLINK, ArchiveError, Entry, entries, refusal)

OPAQUE = "trusted.overlay.opaque"
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeEntry(ArchiveError):
    """An archive entry that would write outside the target or create something forbidden."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"archive entry {name!r} refused: {reason}")


def _relative(name: str) -> str:
    """`name` as a path relative to the target; ValueError says why it cannot be one."""
    # Most names are already in the form wanted (no leading, doubled or trailing slash, no
    # component starting with a dot): take those as they are.
    if (name and name[0] not in "/." and name[-1] != "/" and "//" not in name
            and "/." not in name):
        return name
    if name.startswith("/"):
        raise ValueError("absolute path")
    parts = [p for p in name.split("/") if p and p != "."]
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


class _Checks:
    """The safety checks of one archive's entries, in order, against dest. dest changes
    during the checks only where entries of this archive are applied in place, and `kinds`
    records those paths, so a path checked in dest stays checked."""

    def __init__(self, dest: Path):
        self.dest = dest
        self.kinds: dict[str, str] = {}   # what the archive has put at each path so far
        # Parent directories found safe, with all their ancestors: entries come sorted, so
        # most need one lookup here instead of a walk up to the top.
        self._safe: set[str] = set()

    def check(self, entry: Entry) -> str:
        """The entry's path if it is safe; else UnsafeEntry."""
        name = clean_name(entry.name)
        problem = refusal(name)
        if problem:
            raise UnsafeEntry(entry.name, problem)
        parent = name.rpartition("/")[0]
        if parent and parent not in self._safe:
            walked = []
            while parent and parent not in self._safe:
                self._check_parent(parent, entry.name)
                walked.append(parent)
                parent = parent.rpartition("/")[0]
            self._safe.update(walked)
        if entry.type == HARDLINK:
            target = clean_name(entry.linkname, entry.name)
            if self.kinds.get(target) != FILE:
                raise UnsafeEntry(entry.name, f"hardlink to {entry.linkname!r}, which is not "
                                              f"a file earlier in this archive")
        elif entry.type in (CHAR, BLOCK):
            if not entry.is_whiteout:
                raise UnsafeEntry(entry.name, "device node (only 0/0 whiteouts are allowed)")
        elif entry.type not in (FILE, DIRECTORY, SYMLINK, FIFO):
            raise UnsafeEntry(entry.name, "unsupported entry type")
        kind = FILE if entry.type == HARDLINK else entry.type
        # A later entry can put a symlink or a file where a directory found safe was: what
        # lies below it has to be checked again.
        if kind != DIRECTORY and name in self._safe:
            self._safe.clear()
        self.kinds[name] = kind
        return name

    def _check_parent(self, parent: str, name: str) -> None:
        kind = self.kinds.get(parent)
        if kind is not None:
            if kind != DIRECTORY:
                raise UnsafeEntry(name, f"{parent!r} earlier in this archive is not a "
                                  f"directory" + (" (a symlink)" if kind == SYMLINK else ""))
            return
        try:
            mode = os.lstat(f"{self.dest}/{parent}").st_mode
        except (FileNotFoundError, NotADirectoryError):
            return   # an ancestor further up is not a directory: the walk up finds it
        if stat.S_ISLNK(mode):
            raise UnsafeEntry(name, f"{parent!r} is a symlink in the target")
        if not stat.S_ISDIR(mode):
            raise UnsafeEntry(name, f"{parent!r} is not a directory in the target")


def apply(source, compression: int, dest: Path, lower: Path | None = None,
          in_place: bool = False, placed: set[str] | None = None) -> None:
    """Apply an archive onto dest with overlayfs semantics.

    Staged (the default), dest is left untouched unless the whole archive passes. One pass
    reads the archive, checks every entry and writes file contents into a staging directory
    inside dest (same filesystem, so no copy of the archive lands in /tmp). Only when the
    whole stream has passed, CRC included, are the entries applied: files by rename,
    everything else created in place.

    In place, each entry is applied as soon as it has passed its checks, which saves staging
    and renaming every file. After an error dest holds part of the archive: the caller
    discards it (operations.apply_snapshots empties the directory it started empty).
    `placed` holds the names that archives applied in place before this one put into dest;
    this archive's are added once it has passed. A file at such a name is removed before the
    new one is created, which costs less than a create that fails first. It is only a hint:
    whatever the set says, nothing is ever written through what is at a name.

    With `lower` (the squashfs dest goes over), a whiteout with nothing there to hide is
    left out: it only removes what earlier snapshots put at its path. overlayfs hides
    whiteouts only in directories it merges, so one in a directory the lower layer lacks
    would show up in listings."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    checks, dir_times = _Checks(dest), []
    if in_place:
        # closing(): a refused entry ends the archive's reading process at once.
        with closing(entries(source, compression)) as stream:
            for reader, entry in stream:
                name = checks.check(entry)
                if entry.type == FILE:
                    _write_file(reader, entry, f"{dest}/{name}", dest,
                                placed is not None and name in placed)
                else:
                    _place(dest, name, entry, lower, dir_times)
        if placed is not None:
            placed.update(checks.kinds)
    else:
        staging = f"{dest}/{STAGING}"
        _remove(staging)
        os.mkdir(staging, 0o700)
        try:
            plan = []
            with closing(entries(source, compression)) as stream:
                for reader, entry in stream:
                    name = checks.check(entry)
                    staged = None
                    if entry.type == FILE:
                        staged = f"{staging}/{len(plan)}"
                        _write_file(reader, entry, staged, dest)
                    plan.append((name, entry, staged))
            for name, entry, staged in plan:
                _place(dest, name, entry, lower, dir_times, staged=staged)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    # Creating entries changes their directory's mtime: set directories' times last.
    for path, mtime in reversed(dir_times):
        os.utime(path, (mtime, mtime), follow_symlinks=False)


def _place(dest: Path, name: str, entry: Entry, lower: Path | None, dir_times: list,
           staged: str | None = None) -> None:
    """Put one checked entry at its path (a FILE from its staged copy)."""
    path = f"{dest}/{name}"
    try:
        if entry.is_whiteout and lower is not None and not _in_lower(lower, name):
            _remove(path)
            return
        _apply_entry(entry, path, staged, dest)
    except OSError as e:
        raise _cannot(entry, dest, e) from None
    if entry.type == DIRECTORY:
        dir_times.append((path, entry.mtime))


def _cannot(entry: Entry, dest: Path, error: OSError) -> ArchiveError:
    return ArchiveError(f"cannot unpack {entry.name!r} into {dest}: {error.strerror}")


def _in_lower(lower: Path, name: str) -> bool:
    """Whether the lower layer has something at name. A symlink on the way counts as yes:
    it cannot be followed safely here, and a whiteout too many is harmless."""
    parts = name.split("/")
    for depth in range(1, len(parts) + 1):
        try:
            mode = os.lstat(f"{lower}/{'/'.join(parts[:depth])}").st_mode
        except (FileNotFoundError, NotADirectoryError):
            return False
        if depth < len(parts) and not stat.S_ISDIR(mode):
            return stat.S_ISLNK(mode)
    return True


def _remove(path: str) -> bool:
    """Remove whatever is at path (a symlink, not what it points to); True if something
    was there."""
    try:
        os.unlink(path)   # Linux refuses a directory with EISDIR
    except FileNotFoundError:
        return False
    except IsADirectoryError:
        shutil.rmtree(path)
    return True


def _write_file(reader, entry: Entry, path: str, dest: Path, replaces: bool = False) -> None:
    """Write a FILE entry's data and metadata to a new file at path (`replaces`: something
    is probably there already)."""
    try:
        if replaces:
            _remove(path)
        try:
            fd = os.open(path, _CREATE, entry.mode & 0o777)
        except FileExistsError:
            # Replace what is there; never write through a symlink or into a hardlinked file.
            _remove(path)
            fd = os.open(path, _CREATE, entry.mode & 0o777)
        try:
            reader.copy_to(fd)
            _metadata(fd, entry, os.fstat(fd))
        finally:
            os.close(fd)
    except OSError as e:
        raise _cannot(entry, dest, e) from None


def _apply_entry(entry: Entry, path: str, staged: str | None, dest: Path) -> None:
    if entry.type == DIRECTORY:
        _apply_dir(path, entry)
        return
    if staged is not None:
        # rename() replaces a file, symlink or whiteout at path (never following a
        # symlink); only a directory has to be removed first.
        try:
            os.rename(staged, path)
        except IsADirectoryError:
            _remove(path)
            os.rename(staged, path)
        return
    _remove(path)
    if entry.type == HARDLINK:
        os.link(f"{dest}/{clean_name(entry.linkname)}", path, follow_symlinks=False)
        return  # a hardlink shares its target's metadata
    if entry.type == SYMLINK:
        os.symlink(entry.linkname, path)
    elif entry.type == FIFO:
        os.mkfifo(path)
    else:
        os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))
    _metadata(path, entry)


def _apply_dir(path: str, entry: Entry) -> None:
    try:
        current = os.lstat(path)
        existing = stat.S_ISDIR(current.st_mode)
    except FileNotFoundError:
        existing = None
    if existing and entry.is_opaque:
        # An opaque directory replaces everything earlier snapshots put in it.
        shutil.rmtree(path)
        existing = None
    if not existing:
        replaced = _remove(path) if existing is not None else False
        os.mkdir(path)
        # A directory where a file or a whiteout was must hide the lower layer's directory
        # of the same name, which the file or whiteout used to hide.
        if replaced and not entry.is_opaque:
            os.setxattr(path, OPAQUE, b"y")
    if existing:
        # A directory kept from an earlier snapshot gets exactly the new xattrs, except that
        # it stays opaque: that mark hides the lower layer, which the new delta cannot see.
        for key in os.listxattr(path):
            if key not in entry.xattrs and key not in OPAQUE_XATTRS:
                os.removexattr(path, key)
    _metadata(path, entry, current if existing else None)


def _metadata(target: str | int, entry: Entry, current: os.stat_result | None = None) -> None:
    """Owner, xattrs, mode and mtime of an entry (a path, or an open file's fd). With
    `current` (its status now), owner and mode are set only where they differ."""
    link = entry.type == SYMLINK
    follow = isinstance(target, int)
    if current is None or (current.st_uid, current.st_gid) != (entry.uid, entry.gid):
        os.chown(target, entry.uid, entry.gid, follow_symlinks=follow)
        current = None
    for key, value in entry.xattrs.items():
        os.setxattr(target, key, value, follow_symlinks=follow)
    # After chown: chown clears setuid and setgid.
    if not link and (current is None or stat.S_IMODE(current.st_mode) != entry.mode & 0o7777):
        os.chmod(target, entry.mode & 0o7777)
    if entry.type != DIRECTORY:
        os.utime(target, (entry.mtime, entry.mtime), follow_symlinks=follow)
