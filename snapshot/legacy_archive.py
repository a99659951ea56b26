"""The old fstools chain's archives (gzip tar, FORMAT.md §8) rewritten as our records' payloads,
entry by entry and streamed: for `snapshot convert`, and for the read-only boot of a chain not
converted yet (operations.apply_legacy). The old chain itself is read by store/legacy.py.

An old archive that cannot be read, or whose MD5 does not match once it is read to its end,
raises LegacyDamaged; an entry restore would refuse is left out, with a warning naming it.
"""
import tarfile
import zlib

from snapshot.store.legacy import READ_CHUNK, LegacyDamaged, Payload
from snapshot.tree import archive
from snapshot.tree.capture import compressor, header
from snapshot.tree.restore import Checks, UnsafeEntry, clean_name

#: What the old overlayfs (and the old tool's archives) have in place of a whiteout: a
#: symlink to this.
WHITEOUT_TARGET = "(overlay-whiteout)"
_TYPES = ((tarfile.TarInfo.isreg, archive.FILE), (tarfile.TarInfo.islnk, archive.HARDLINK),
          (tarfile.TarInfo.issym, archive.SYMLINK), (tarfile.TarInfo.isdir, archive.DIRECTORY),
          (tarfile.TarInfo.isfifo, archive.FIFO), (tarfile.TarInfo.ischr, archive.CHAR),
          (tarfile.TarInfo.isblk, archive.BLOCK))


class Layers:
    """What the records imported so far put at each path: what restore finds in the target
    when it applies the next one at boot, for that one's safety checks. Names only, no
    data."""

    def __init__(self):
        self.kinds: dict[str, str] = {}

    def absorb(self, kinds: dict[str, str]) -> None:
        """Add one record's entries (restore.Checks.kinds), in archive order: a directory
        merges with one there; anything else replaces what was there, below it included."""
        for name, kind in kinds.items():
            if kind != archive.DIRECTORY and self.kinds.get(name) == archive.DIRECTORY:
                below = name + "/"
                self.kinds = {n: k for n, k in self.kinds.items() if not n.startswith(below)}
            self.kinds[name] = kind


class _LayerChecks(Checks):
    """restore's checks of one record, with the records before it as the target."""

    def __init__(self, layers: Layers):
        super().__init__(None)
        self.layers = layers

    def in_target(self, path: str) -> str | None:
        kind = self.layers.kinds.get(path)
        return kind if kind in (None, archive.DIRECTORY, archive.SYMLINK) else archive.FILE


def _entry(member: tarfile.TarInfo) -> archive.Entry | None:
    """An old archive's member as restore would read it, an old-style whiteout as an
    overlayfs one; None for the archived directory itself (`.`)."""
    if not [part for part in member.name.split("/") if part not in ("", ".")]:
        return None
    kind = next((k for test, k in _TYPES if test(member)), "unsupported")
    major, minor, mode = member.devmajor, member.devminor, member.mode & 0o7777
    if kind == archive.SYMLINK and member.linkname == WHITEOUT_TARGET:
        kind, major, minor, mode = archive.CHAR, 0, 0, 0
    xattrs = {key[len(archive.XATTR_PREFIX):]: value.encode("utf-8", "surrogateescape")
              for key, value in member.pax_headers.items()
              if key.startswith(archive.XATTR_PREFIX)}
    # overlayfs bookkeeping other than the opaque mark means nothing on another filesystem
    # (the old overlayfs marked its whiteout symlinks with one), as capture leaves it off.
    xattrs = {key: value for key, value in xattrs.items()
              if key in archive.OPAQUE_XATTRS or not key.startswith(archive.OVERLAY_PRIVATE)}
    return archive.Entry(member.name, kind, mode, member.uid, member.gid, int(member.mtime),
                         member.size if kind == archive.FILE else 0,
                         member.linkname if kind in (archive.SYMLINK, archive.HARDLINK) else "",
                         major, minor, xattrs)


class _Data:
    """A FILE entry's data in an old archive, as restore (copy_to) and a tar writer (read)
    take it; an archive that cannot be read raises LegacyDamaged."""

    def __init__(self, data, what: str):
        self._data = data
        self._what = what

    def read(self, n: int = -1) -> bytes:
        try:
            return self._data.read(n)
        except (tarfile.TarError, zlib.error, EOFError) as e:
            raise LegacyDamaged(f"{self._what}: its archive cannot be read: {e}") from None

    def copy_to(self, fd: int) -> None:
        while chunk := self.read(READ_CHUNK):
            archive._send(fd, chunk)


def converted(source: Payload, layers: Layers, warnings: list[str]):
    """(data, entry) for each entry of the old entry's archive (gzip tar) as a record holds
    it, read as a stream: names relative, old-style whiteouts as overlayfs whiteouts. `data`
    is a FILE's contents (read before the next entry is asked for), else None. What restore
    would refuse (against `layers`, the records before it) is left out, with a line each in
    `warnings`. Once the archive is read to its end and its MD5 matches, `layers` takes its
    entries; an archive that cannot be read, or an MD5 that does not match, raises
    LegacyDamaged (and `layers` is as it was). `rewrite` stores these entries; the boot of
    an unconverted old chain applies them (operations.apply_legacy)."""
    checks = _LayerChecks(layers)
    what = source.entry.describe()
    try:
        with tarfile.open(fileobj=source, mode="r|gz") as old:
            for member in old:
                entry = _entry(member)
                if entry is None:
                    continue
                try:
                    parent = clean_name(entry.name).rpartition("/")[0]
                    # restore makes no directory an archive does not hold (the old tool's
                    # archives, of a whole upper dir, hold every one).
                    if parent and parent not in checks.kinds and parent not in layers.kinds:
                        raise UnsafeEntry(entry.name, f"its directory {parent!r} is in no "
                                                      f"archive before it")
                    entry.name = checks.check(entry)
                    if entry.type == archive.HARDLINK:
                        entry.linkname = clean_name(entry.linkname, entry.name)
                except UnsafeEntry as e:
                    warnings.append(f"{what}: {e}; left out")
                    continue
                yield (_Data(old.extractfile(member), what)
                       if entry.type == archive.FILE else None), entry
        source.finish()
    except (tarfile.TarError, zlib.error, EOFError) as e:
        raise LegacyDamaged(f"{what}: its archive cannot be read: {e}") from None
    layers.absorb(checks.kinds)


def rewrite(source: Payload, out, compression: int, layers: Layers) -> list[str]:
    """Stream the old entry's archive into `out` as a record's payload, entry by entry
    (`converted`), headers as capture writes them. Returns the warnings, one per entry left
    out; `layers` takes the record's entries. An archive that cannot be read, or an MD5 that
    does not match once it is read to its end, raises LegacyDamaged (`out` then holds part
    of it)."""
    warnings: list[str] = []
    with compressor(out, compression) as stream, \
            tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for data, entry in converted(source, layers, warnings):
            tar.addfile(header(entry), data)
    return warnings
