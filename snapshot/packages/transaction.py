"""A package transaction as a snapshot of its own (DESIGN.md §12).

On a chain-booted router a package manager writes only into the volatile layer's upper dir,
which is RAM. What a transaction changed is found by comparing that upper dir before and
after it, entry by entry (`manifest`, `changed`): the paths whose entry appeared, vanished,
or differs in type, mode, owner, size, mtime, ctime or inode (a whiteout the transaction left
is a new entry too). Those paths, as the transaction left them, become one snapshot on trial
(`store`). Nothing else of the upper dir goes in: unsaved changes made before the transaction
stay where they are, and the saved volatile record is kept twice in the new directory:

    snapshots 1..N, the change (on trial), the volatile record (kept for a failure),
    a copy of it without the change's paths (on top of the trial)

So a trial boot shows what ran after the transaction, a failed trial boots exactly what ran
before it, and on a path both the transaction and the saved configuration touched, the
transaction's result wins, as it did in the running system (the package manager decided
how to treat the user's version: apk and opkg keep a modified conffile and put the new one
beside it).
"""
import os
import stat
import tarfile
import time
from pathlib import Path

from snapshot import live
from snapshot.errors import SnapshotError
from snapshot.operations import _current_snapshots
from snapshot.store import trial as trials
from snapshot.store.chain import Chain, Record, RecordWriter, commit
from snapshot.store.format import COMPRESSION_GZIP, MAX_MESSAGE, SNAPSHOT, VOLATILE, DirEntry
from snapshot.tree import archive
from snapshot.tree.capture import Capture, EntryData, compressor, header

#: What identifies an entry of the upper dir (os.stat_result fields).
FIELDS = ("st_mode", "st_uid", "st_gid", "st_size", "st_mtime_ns", "st_ctime_ns", "st_ino",
          "st_rdev")


def manifest(upper: Path) -> dict[str, list[int]]:
    """Every entry under `upper` (names relative to it) with what identifies it. Reads
    metadata only; the restore's staging directory is left out."""
    found: dict[str, list[int]] = {}
    stack = [(str(upper), "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            with os.scandir(directory) as it:
                listed = list(it)
        except OSError:
            continue
        for entry in listed:
            if not prefix and entry.name == archive.STAGING:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            name = prefix + entry.name
            found[name] = [getattr(st, f) for f in FIELDS]
            if stat.S_ISDIR(st.st_mode):
                stack.append((entry.path, name + "/"))
    return found


def changed(before: dict, after: dict) -> tuple[set[str], set[str]]:
    """(paths to store: new or different after; paths gone from the upper dir)."""
    stored = {name for name, sig in after.items() if before.get(name) != sig}
    gone = set(before) - set(after)
    return stored, gone


def message(changes: list[str], prefix: str = "") -> str:
    """`prefix: a, b, ...`, cut to the format's limit, saying how many were left out."""
    head = f"{prefix}: " if prefix else ""
    for keep in range(len(changes), 0, -1):
        rest = f" and {len(changes) - keep} more" if keep < len(changes) else ""
        text = head + ", ".join(changes[:keep]) + rest
        if len(text.encode()) <= MAX_MESSAGE:
            return text
    return f"{head}{len(changes)} packages".encode()[:MAX_MESSAGE].decode(errors="ignore")


def store(chain: Chain, upper: Path, paths: set[str], gone: set[str], text: str,
          max_attempts: int, compression: int = COMPRESSION_GZIP, progress=None,
          replace: Record | None = None) -> DirEntry:
    """Write `paths` of `upper` as a snapshot on trial, under the saved volatile record and a
    copy of it without `paths` and `gone`; one commit. `replace`: a pending trial this change
    takes the place of (an automatic snapshot that absorbs the next transaction; its paths
    must be in `paths`). Refused, with nothing written, while another trial is pending, and
    when the chain is damaged."""
    if replace is None:
        trials.refuse_while_pending(chain, "storing a package change")
    elif chain.trial is not replace:
        raise SnapshotError("the automatic snapshot to replace is no longer on trial")
    snapshots = [r for r in chain.view()[0] if r is not replace]
    writer = RecordWriter(chain, SNAPSHOT, len(snapshots) + 1, text, compression, progress)
    entries = _current_snapshots(chain, snapshots, progress)
    capture = Capture(upper, only=paths)
    capture.pack(writer, compression)
    change = writer.finish()
    kept = _kept_volatile(chain, replace)
    directory = trials.start(entries + ([kept.entry] if kept else []), change, max_attempts)
    if kept is not None:
        # A directory the transaction only touched (apk rewrote a file in it, so its mtime
        # changed) keeps the saved entries under it that the transaction did not touch: they
        # are still in the running system. Under a path that is gone, or is no longer a
        # directory, nothing is.
        subtrees = gone | {p for p in paths if not _is_dir(upper / p)}
        directory.append(_copy_without(chain, kept, paths | gone, subtrees,
                                       len(entries) + 1, progress))
    commit(chain, directory)
    live.write_base(upper, entries + [change])
    return change


def _kept_volatile(chain: Chain, replace: Record | None) -> Record | None:
    """The saved volatile record the change goes under: the one kept for a failure of the
    trial being replaced, or the chain's volatile record."""
    if replace is not None:
        return next((r for r in chain.volatiles if r.entry.fallback), None)
    return chain.volatile


def _copy_without(chain: Chain, record: Record, leave_out: set[str], subtrees: set[str],
                  seq: int, progress) -> DirEntry:
    """A new volatile record, `seq` snapshots beneath it, holding `record`'s entries but those
    at `leave_out` (directories there stay) or under `subtrees`; streamed from one record
    into the other."""
    e = record.entry
    writer = RecordWriter(chain, VOLATILE, seq, e.message, e.compression, progress,
                          int(time.time()))
    links: set[str] = set()
    dropped = set(subtrees)
    with compressor(writer, e.compression) as stream, \
            tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for reader, entry in archive.entries(chain.payload(record), e.compression):
            name = entry.name.rstrip("/")
            if _under(name, dropped) or (entry.type == archive.HARDLINK and
                                         entry.linkname not in links):
                continue
            # A directory at a left-out path stays, as the parent of what is kept under it;
            # an opaque one would hide the change's entries in it, so it goes, and all under
            # it.
            if name in leave_out and (entry.type != archive.DIRECTORY or entry.is_opaque):
                dropped.add(name)
                continue
            info = header(entry)
            if entry.type == archive.FILE:
                tar.addfile(info, EntryData(reader))
            else:
                tar.addfile(info)
            links.add(entry.name)
    return writer.finish()


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _under(name: str, paths: set[str]) -> bool:
    name = name.rstrip("/")
    parts = name.split("/")
    return any("/".join(parts[:i]) in paths for i in range(1, len(parts) + 1))
