"""Applying a snapshot's archive onto an overlay upper directory, with overlayfs semantics.

Applying snapshots 1..N in order into one upper directory gives the upper directory the user
had (DESIGN.md §7 has the rules). Every entry is checked against the safety rules and the
target before it is applied. Staged, nothing in the target changes until the whole stream,
the record's CRC included, has passed, so a refused or damaged archive leaves the target
untouched; in place (into a target the caller can discard), entries go in as they pass.
"""
import os
import stat

from snapshot.tree.archive import (BLOCK, CHAR, DIRECTORY, FIFO, FILE, HARDLINK, OPAQUE_XATTRS,
                                   STAGING, SYMLINK, ArchiveError, Entry, entries, refusal)

OPAQUE = "trusted.overlay.opaque"
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeEntry(ArchiveError):
    """An archive entry that would write outside the target or create something forbidden."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"archive entry {name!r} refused: {reason}")


def remove_tree(path, ignore_errors: bool = False) -> None:
    """shutil.rmtree, with shutil imported here: it imports bz2, lzma and fnmatch, which boot
    (an unpack into a fresh tmpfs) rarely needs."""
    import shutil
    shutil.rmtree(path, ignore_errors=ignore_errors)


def _relative(name: str) -> str:
    """`name` (not in the form clean_name takes as it is) as a path relative to the
    target; ValueError says why it cannot be one."""
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
    # Most names are already in the form wanted (no leading, doubled or trailing slash, no
    # component starting with a dot), but for the one trailing slash of a directory's:
    # take those as they are.
    if name[-1:] == "/":
        trimmed = name[:-1]
        if (trimmed and trimmed[0] not in "/." and trimmed[-1] != "/" and "//" not in trimmed
                and "/." not in trimmed):
            return trimmed
    elif name and name[0] not in "/." and "//" not in name and "/." not in name:
        return name
    try:
        return _relative(name)
    except ValueError as e:
        reason = str(e) if entry is None else f"hardlink target {name!r}: {e}"
        raise UnsafeEntry(entry or name, reason) from None


class Checks:
    """The safety checks of one archive's entries, in order, against dest. dest changes
    during the checks only where entries of this archive are applied in place, and `kinds`
    records those paths, so a path checked in dest stays checked. What dest holds is read
    through in_target(), which squash.py answers from its merged tree instead."""

    def __init__(self, dest: str):
        self.dest = dest
        self.kinds: dict[str, str] = {}   # what the archive has put at each path so far
        # Parent directories found safe, with all their ancestors: entries come sorted, so
        # most need one lookup here instead of a walk up to the top.
        self._safe: set[str] = set()

    def check(self, entry: Entry) -> str:
        """The entry's path if it is safe; else UnsafeEntry."""
        name = clean_name(entry.name)
        # refusal() only ever refuses names under STAGING.
        problem = refusal(name) if name.startswith(STAGING) else None
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
        kind = self.in_target(parent)
        if kind == SYMLINK:
            raise UnsafeEntry(name, f"{parent!r} is a symlink in the target")
        if kind not in (None, DIRECTORY):
            raise UnsafeEntry(name, f"{parent!r} is not a directory in the target")

    def in_target(self, path: str) -> str | None:
        """What dest holds at path: DIRECTORY, SYMLINK, FILE for anything else, or None
        where nothing is (then an ancestor further up is not a directory, or is missing:
        the walk up finds it)."""
        try:
            mode = os.lstat(f"{self.dest}/{path}").st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None
        return SYMLINK if stat.S_ISLNK(mode) else DIRECTORY if stat.S_ISDIR(mode) else FILE


def apply(source, compression: int, dest: str, lower: str | None = None,
          in_place: bool = False, placed: set[str] | None = None) -> None:
    """Apply an archive onto dest with overlayfs semantics (apply_entries)."""
    apply_entries(entries(source, compression), dest, lower, in_place, placed)


def apply_entries(stream, dest: str, lower: str | None = None, in_place: bool = False,
                  placed: set[str] | None = None) -> None:
    """Apply an archive's (reader, entry) pairs, as archive.entries reads them from a
    record (legacy_archive.converted from the old fstools chain), onto dest with overlayfs
    semantics.

    Staged (the default), all or nothing: after an error dest is as it was (see _Staged).
    One pass reads the archive, checks every entry and makes it, file contents and all, in a
    staging directory inside dest (same filesystem, so no copy of the archive lands in /tmp,
    and running out of space or inodes shows there). Only when the whole stream has passed,
    CRC included, is each entry moved into place, by rename; whatever it replaces is moved
    aside, not deleted, until every entry is in place, so a failure then is undone. Should
    undoing fail too, the error names what is left where.

    In place, each entry is applied as soon as it has passed its checks, which saves staging
    and renaming every file. After an error dest holds part of the archive: the caller
    discards it (operations.apply_snapshots empties the directory it started empty).
    `placed` holds the names that archives applied in place before this one put into dest;
    this archive's are added once it has passed. A file at such a name is removed before the
    new one is created, which costs less than a create that fails first; a directory at a
    name not in it is made before anything is looked up there. It is only a hint:
    whatever the set says, nothing is ever written through what is at a name.

    With `lower` (the squashfs dest goes over), a whiteout with nothing there to hide is
    left out: it only removes what earlier snapshots put at its path. overlayfs hides
    whiteouts only in directories it merges, so one in a directory the lower layer lacks
    would show up in listings."""
    # A string (os.path), not a pathlib.Path: boot unpacks here, and on a router's CPU
    # pathlib's import (with re, enum and urllib.parse) costs more than Python's own start-up.
    dest = os.fspath(dest)
    try:
        os.makedirs(dest, exist_ok=True)
    except OSError as e:
        raise ArchiveError(f"{dest}: cannot unpack into it: {e.strerror}") from None
    checks = Checks(dest)
    if not in_place:
        staged = _Staged(dest, lower)
        try:
            try:
                for reader, entry in stream:
                    staged.stage(reader, entry, checks.check(entry))
            finally:
                stream.close()
            staged.place()
        except BaseException:
            staged.clean_up(failed=True)
            raise
        staged.clean_up(failed=False)
        return
    dir_times = []
    placed_before = placed if placed is not None else set()
    # Closed however the loop ends: a refused entry ends the archive's reading process at once.
    try:
        for reader, entry in stream:
            name = checks.check(entry)
            if entry.type == FILE:
                _write_file(reader, entry, f"{dest}/{name}", dest, name in placed_before)
            else:
                _place(dest, name, entry, lower, dir_times, name in placed_before)
    finally:
        stream.close()
    if placed is not None:
        placed.update(checks.kinds)
    # Creating entries changes their directory's mtime: set directories' times last.
    for path, mtime in reversed(dir_times):
        os.utime(path, (mtime, mtime), follow_symlinks=False)


def _place(dest: str, name: str, entry: Entry, lower: str | None, dir_times: list,
           replaces: bool) -> None:
    """Put one checked entry at its path, in place (not a FILE: _write_file does those;
    `replaces` as there)."""
    path = f"{dest}/{name}"
    try:
        if entry.is_whiteout and lower is not None and not _in_lower(lower, name):
            _remove(path)
            return
        _apply_entry(entry, path, dest, replaces)
    except OSError as e:
        raise _cannot(entry, dest, e) from None
    if entry.type == DIRECTORY:
        dir_times.append((path, entry.mtime))


class _Staged:
    """One archive applied onto a used target, all or nothing.

    Stage (while the archive is read): every entry is made in STAGING/new, with its metadata;
    hardlinks link to the staged file. dest itself does not change, so a refused entry, a
    damaged record or a full filesystem (no space, no inodes) leaves it as it was.

    Place (once the whole archive has passed): each entry is renamed into place, in archive
    order; what it replaces is renamed into STAGING/old, and an existing directory it merges
    with has its metadata noted before it changes. Every step is journaled. A failure undoes
    the journal backwards (a placed entry removed, a displaced one renamed back, a merged
    directory's metadata restored) and puts back the times of the directories renamed in or
    out of; the error then says dest is as it was, or names what could not be put back and
    where it is. Only after the last entry is placed are the displaced ones deleted."""

    def __init__(self, dest: str, lower: str | None):
        self.dest, self.lower = dest, lower
        self.root = f"{dest}/{STAGING}"
        self.new, self.old = f"{self.root}/new", f"{self.root}/old"
        self.journal: list[tuple] = []
        # Directories entries were renamed into or out of, and dest (where the staging
        # area comes and goes), with their times beforehand.
        self.times: dict[str, tuple[int, int, int]] = {}
        self._note_times(str(dest))
        self.keep_displaced = False
        try:
            _remove(self.root)
            for directory in (self.root, self.new, self.old):
                os.mkdir(directory, 0o700)
        except OSError as e:
            self.clean_up(failed=True)
            raise ArchiveError(f"{dest}: cannot unpack into it: {e.strerror}") from None
        self.plan: list[tuple[str, Entry, str | None]] = []
        self.files: dict[str, str] = {}     # name -> staged file the archive put there

    def stage(self, reader, entry: Entry, name: str) -> None:
        staged = f"{self.new}/{len(self.plan)}"
        try:
            if entry.is_whiteout and self.lower is not None and not _in_lower(self.lower, name):
                staged = None   # it only removes what is at its path
            elif entry.type == FILE:
                _write_file(reader, entry, staged, self.dest)
                self.files[name] = staged
            elif entry.type == HARDLINK:
                os.link(self.files[clean_name(entry.linkname)], staged)
                self.files[name] = staged
            elif entry.type == DIRECTORY:
                os.mkdir(staged, 0o700)
                _metadata(staged, entry)
            else:
                _make_node(entry, staged)
        except OSError as e:
            raise _cannot(entry, self.dest, e) from None
        self.plan.append((name, entry, staged))

    def place(self) -> None:
        dir_times = []
        for name, entry, staged in self.plan:
            try:
                self._place(f"{self.dest}/{name}", entry, staged, dir_times)
            except OSError as e:
                raise self._undo(_cannot(entry, self.dest, e)) from None
        try:
            # Creating entries changes their directory's mtime: directories' times last.
            for path, mtime in reversed(dir_times):
                os.utime(path, (mtime, mtime), follow_symlinks=False)
        except OSError as e:
            raise self._undo(ArchiveError(f"cannot unpack into {self.dest}: "
                                          f"{e.strerror}")) from None

    def _place(self, path: str, entry: Entry, staged: str | None, dir_times: list) -> None:
        current = _lstat(path)
        if entry.type == DIRECTORY:
            dir_times.append((path, entry.mtime))
            if current is not None and stat.S_ISDIR(current.st_mode) and not entry.is_opaque:
                self._note_metadata(path, current)
                _merge_dir(path, entry, current)
                return
        if current is not None:
            self._move(path, f"{self.old}/{len(self.journal)}", "displaced")
        if staged is not None:
            self._move(staged, path, "placed")
            # A directory where a file or a whiteout was must hide the lower layer's
            # directory of the same name, which the file or whiteout used to hide.
            if entry.type == DIRECTORY and current is not None and not entry.is_opaque:
                os.setxattr(path, OPAQUE, b"y")

    def _move(self, source: str, target: str, step: str) -> None:
        for directory in (os.path.dirname(source), os.path.dirname(target)):
            if directory not in (self.new, self.old):
                self._note_times(directory)
        os.rename(source, target)
        self.journal.append((step, source, target))

    def _note_times(self, directory: str) -> None:
        if directory not in self.times:
            st = os.lstat(directory)
            self.times[directory] = (st.st_ino, st.st_atime_ns, st.st_mtime_ns)

    def _note_metadata(self, path: str, current: os.stat_result) -> None:
        xattrs = {k: os.getxattr(path, k, follow_symlinks=False)
                  for k in os.listxattr(path, follow_symlinks=False)}
        self.journal.append(("merged", path, current, xattrs))

    def _undo(self, error: ArchiveError) -> ArchiveError:
        stuck = []
        for step, *args in reversed(self.journal):
            try:
                if step == "placed":
                    _remove(args[1])
                elif step == "displaced":
                    _remove(args[0])
                    os.rename(args[1], args[0])
                else:
                    _restore_metadata(*args)
            except OSError as e:
                what = {"placed": f"{args[1]} (new, not removed)",
                        "displaced": f"{args[0]} (moved to {args[1]})",
                        "merged": f"{args[0]} (its owner, mode or xattrs)"}[step]
                stuck.append(f"{what}: {e.strerror}")
        self.journal.clear()
        if stuck:
            self.keep_displaced = True   # what is left there is the only copy
            return ArchiveError(f"{error}; undoing the entries placed so far failed, so "
                                f"{self.dest} is not as it was: {'; '.join(stuck)}")
        return ArchiveError(f"{error}; {self.dest} is as it was")

    def clean_up(self, failed: bool) -> None:
        """Remove the staging area, and with it what the entries placed replaced (kept when
        an undo failed: then it is the only copy). After a failure, the directories touched
        get their times back."""
        if self.keep_displaced:
            remove_tree(self.new, ignore_errors=True)
        else:
            remove_tree(self.root, ignore_errors=True)
        if not failed:
            return
        for directory, (inode, atime, mtime) in self.times.items():
            # Not a directory this archive placed, which the undo removed again.
            current = _lstat(directory)
            if current is not None and current.st_ino == inode:
                os.utime(directory, ns=(atime, mtime), follow_symlinks=False)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _restore_metadata(path: str, before: os.stat_result, xattrs: dict[str, bytes]) -> None:
    for key in os.listxattr(path, follow_symlinks=False):
        if key not in xattrs:
            os.removexattr(path, key, follow_symlinks=False)
    for key, value in xattrs.items():
        os.setxattr(path, key, value, follow_symlinks=False)
    os.chown(path, before.st_uid, before.st_gid, follow_symlinks=False)
    os.chmod(path, stat.S_IMODE(before.st_mode))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns), follow_symlinks=False)


def _cannot(entry: Entry, dest: str, error: OSError) -> ArchiveError:
    return ArchiveError(f"cannot unpack {entry.name!r} into {dest}: {error.strerror}")


def _in_lower(lower: str, name: str) -> bool:
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
        remove_tree(path)
    return True


def _write_file(reader, entry: Entry, path: str, dest: str, replaces: bool = False) -> None:
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


def _apply_entry(entry: Entry, path: str, dest: str, replaces: bool) -> None:
    if entry.type == DIRECTORY:
        _apply_dir(path, entry, replaces)
        return
    _remove(path)
    if entry.type == HARDLINK:
        os.link(f"{dest}/{clean_name(entry.linkname)}", path, follow_symlinks=False)
        return  # a hardlink shares its target's metadata
    _make_node(entry, path)


def _make_node(entry: Entry, path: str) -> None:
    """A symlink, fifo or whiteout at path (where nothing is), with its metadata."""
    if entry.type == SYMLINK:
        os.symlink(entry.linkname, path)
    elif entry.type == FIFO:
        os.mkfifo(path)
    else:
        os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))
    _metadata(path, entry)


def _apply_dir(path: str, entry: Entry, replaces: bool) -> None:
    if not replaces:
        # Probably nothing there yet: one mkdir, which fails where something is.
        try:
            os.mkdir(path)
        except FileExistsError:
            pass
        else:
            _metadata(path, entry)
            return
    current = _lstat(path)
    existing = current is not None and stat.S_ISDIR(current.st_mode)
    if existing and entry.is_opaque:
        # An opaque directory replaces everything earlier snapshots put in it.
        remove_tree(path)
        current, existing = None, False
    if existing:
        _merge_dir(path, entry, current)
        return
    replaced = _remove(path) if current is not None else False
    os.mkdir(path)
    # A directory where a file or a whiteout was must hide the lower layer's directory of
    # the same name, which the file or whiteout used to hide.
    if replaced and not entry.is_opaque:
        os.setxattr(path, OPAQUE, b"y")
    _metadata(path, entry)


def _merge_dir(path: str, entry: Entry, current: os.stat_result) -> None:
    """A directory kept from an earlier snapshot gets exactly the new xattrs, except that it
    stays opaque: that mark hides the lower layer, which the new delta cannot see."""
    for key in os.listxattr(path):
        if key not in entry.xattrs and key not in OPAQUE_XATTRS:
            os.removexattr(path, key)
    _metadata(path, entry, current)


def _metadata(target: str | int, entry: Entry, current: os.stat_result | None = None) -> None:
    """Owner, xattrs, mode and mtime of an entry (a path, or an open file's fd). With
    `current` (its status now), owner and mode are set only where they differ."""
    follow = isinstance(target, int)
    if current is None or current.st_uid != entry.uid or current.st_gid != entry.gid:
        os.chown(target, entry.uid, entry.gid, follow_symlinks=follow)
        current = None
    for key, value in entry.xattrs.items():
        os.setxattr(target, key, value, follow_symlinks=follow)
    kind, mode = entry.type, entry.mode & 0o7777
    # After chown: chown clears setuid and setgid.
    if kind != SYMLINK and (current is None or current.st_mode & 0o7777 != mode):
        os.chmod(target, mode)
    if kind != DIRECTORY:
        os.utime(target, (entry.mtime, entry.mtime), follow_symlinks=follow)
