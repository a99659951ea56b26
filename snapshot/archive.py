"""Record payloads: a compressed tar of an overlay upper directory, streamed both ways so no
archive is ever held whole in memory or copied to /tmp."""
import gzip
import os
import tarfile
from pathlib import Path

from snapshot.errors import SnapshotError
from snapshot.format import COMPRESSION_GZIP

COMPRESSIONS = {"gzip": COMPRESSION_GZIP}
# The level `tar czf` uses; 9 costs about twice the time for a few percent.
GZIP_LEVEL = 6


class ArchiveError(SnapshotError):
    pass


def _entries(root: Path):
    """Every path below root, parents before children, siblings sorted: the same tree always
    gives the same archive."""
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        base = Path(directory)
        for name in sorted(dirs + files):
            yield base / name


def pack(root: Path, out) -> None:
    """Write a gzip tar of root's contents (names relative to root) to the file-like `out`."""
    root = Path(root)
    if not root.is_dir():
        raise ArchiveError(f"{root}: no such directory")
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path in _entries(root):
            tar.add(path, arcname=str(path.relative_to(root)), recursive=False)


def unpack(source, dest: Path) -> None:
    """Extract a payload stream into dest. Entries that would land outside dest are refused."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with gzip.GzipFile(fileobj=source, mode="rb") as gz, \
                tarfile.open(fileobj=gz, mode="r|") as tar:
            tar.extractall(dest, filter="tar")
    except (tarfile.TarError, gzip.BadGzipFile, EOFError) as e:
        raise ArchiveError(f"archive cannot be unpacked: {e}") from None
