"""The firmware a bundle is for, and the one this router runs (FORMAT.md §9, DESIGN.md §15).

A bundle names its firmware by one of two ids, by its format; a router computes the same
kind of id of its own firmware root (option rom, /rom) and compares:

    format 2, SQUASHFS   SHA-256 of the root's squashfs image: its first bytes_used bytes,
                         read from the block device mounted at the root (or from an image
                         file, for `bundle create --rom` on a PC)
    format 1, TREE       SHA-256 over the root's tree: each path with its type, mode, owner,
                         size, mtime and link target (bundles made before format 2, and
                         bundles made from an unpacked root)

A mounted squashfs never changes, and the firmware changes only through a sysupgrade, which
reboots: the squashfs id is read once per boot and kept in /tmp (RAM on a router), keyed by
the boot, the device (its number and, where the kernel gives one, its attachment's sequence
number: a loop device set up again) and the image's superblock. The tree id stats every
entry of the root (3,000 on a router): only a bundle that names one pays it.
"""
import hashlib
import os
import struct

from snapshot import kept
from snapshot.errors import SnapshotError

SQUASHFS, TREE = "squashfs", "tree"
#: The squashfs 4.0 superblock, at byte 0 of the image (all little-endian): magic, inodes,
#: mkfs_time, block_size, fragments, compression, block_log, flags, no_ids, major, minor,
#: root_inode, bytes_used, then six table offsets (FORMAT.md §9).
SUPERBLOCK = struct.Struct("<5I6H8Q")
assert SUPERBLOCK.size == 96
SQUASHFS_MAGIC = 0x73717368                 # "hsqs"
CHUNK = 256 * 1024
#: This boot's squashfs id: {"key": boot:device:superblock, "sha256": id}.
CACHE = "/tmp/snapshot/rootfs.json"
MOUNTINFO = "/proc/self/mountinfo"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
# Paths here are strings or path-like objects, used through os.path: `bundle apply` checks the
# firmware on every run, and pathlib would add urllib.parse, ipaddress and fnmatch to it.


def _read(path, mode: str = "r"):
    with open(path, mode) as f:
        return f.read()


def kind(rom) -> str:
    """The id a bundle made from `rom` names: SQUASHFS for a squashfs mounted there or an
    image file, TREE for an unpacked root."""
    if os.path.isfile(rom) or _mounted_device(rom) is not None:
        return SQUASHFS
    if os.path.isdir(rom):
        return TREE
    raise SnapshotError(f"{rom}: the firmware root is not a directory or a squashfs image "
                        f"(option rom)")


def identity(rom, of: str) -> str:
    """The id of kind `of` (SQUASHFS or TREE) of the firmware at `rom`; SnapshotError when
    `rom` has no id of that kind."""
    if of == TREE:
        return tree_id(rom)
    if os.path.isfile(rom):
        with open(rom, "rb") as f:
            return _image_id(f, str(rom))
    mounted = _mounted_device(rom)
    if mounted is None:
        raise SnapshotError(f"{rom} is not a mounted squashfs (option rom): its squashfs id "
                            f"is unknown")
    return _cached_image_id(*mounted)


def tree_id(rom) -> str:
    """SHA-256 over the firmware root's tree: each path with its type, mode, owner, size,
    mtime and link target, in sorted order. A squashfs never changes while it is mounted,
    and two builds of a firmware differ in at least one of these."""
    if not os.path.isdir(rom):
        raise SnapshotError(f"{rom}: the firmware root is not a directory (option rom)")
    digest = hashlib.sha256()
    for top, dirs, files in os.walk(rom):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(top, name)
            st = os.lstat(path)
            link = os.readlink(path) if os.path.islink(path) else ""
            rel = os.path.relpath(path, rom)
            digest.update(f"{rel}\0{st.st_mode:o}\0{st.st_uid}\0{st.st_gid}\0"
                          f"{st.st_size if not os.path.isdir(path) else 0}\0"
                          f"{int(st.st_mtime)}\0{link}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _superblock(f, name: str) -> tuple[bytes, int]:
    """The superblock's bytes and bytes_used, checked against the image's size."""
    f.seek(0)
    raw = f.read(SUPERBLOCK.size)
    fields = SUPERBLOCK.unpack(raw) if len(raw) == SUPERBLOCK.size else None
    if fields is None or fields[0] != SQUASHFS_MAGIC or fields[9] != 4:
        raise SnapshotError(f"{name}: not a squashfs 4.0 image at byte 0")
    used, size = fields[12], f.seek(0, os.SEEK_END)
    if not SUPERBLOCK.size <= used <= size:
        raise SnapshotError(f"{name}: the squashfs superblock gives {used} bytes used, and "
                            f"the image has {size}")
    return raw, used


def _image_id(f, name: str) -> str:
    _, used = _superblock(f, name)
    f.seek(0)
    digest, left = hashlib.sha256(), used
    while left:
        chunk = f.read(min(CHUNK, left))
        if not chunk:
            raise SnapshotError(f"{name}: the squashfs image ends {left} bytes early")
        digest.update(chunk)
        left -= len(chunk)
    return digest.hexdigest()


def _cached_image_id(device: str, attached: str) -> str:
    """The image id of the squashfs on `device`, read once per boot (see the module doc)."""
    try:
        with open(device, "rb") as f:
            raw, _ = _superblock(f, str(device))
            key = (f"{_read(BOOT_ID).strip()}:{os.stat(device).st_rdev}:{attached}:"
                   f"{raw.hex()}")
            found = kept.read(CACHE)
            if found is not None and found.get("key") == key \
                    and isinstance(found.get("sha256"), str):
                return found["sha256"]
            # not this boot's, or unreadable: read the image again
            digest = _image_id(f, str(device))
    except OSError as e:
        raise SnapshotError(f"{device}: cannot read the firmware's squashfs: "
                            f"{e.strerror or e}") from None
    try:
        kept.write(CACHE, {"key": key, "sha256": digest})
    except OSError:
        pass    # the next check reads the image again
    return digest


def _mounted_device(rom) -> tuple[str, str] | None:
    """The block device of the squashfs mounted at `rom` (its whole root, the top mount
    there) and its DISKSEQ ("" when the kernel gives none), or None when none is. A loop
    device with no node in /dev (a container's, a sandbox's private /dev) is read through
    the file it is backed by, which holds the same bytes."""
    where = os.fsencode(os.path.realpath(rom))
    found = None
    try:
        lines = _read(MOUNTINFO, "rb").splitlines()
    except OSError:
        return None
    for line in lines:
        # id parent major:minor root mountpoint options... - fstype source superoptions
        fields, _, rest = line.partition(b" - ")
        fields, rest = fields.split(), rest.split()
        if len(fields) >= 5 and rest and _unescape(fields[4]) == where:
            found = fields[2].decode() if rest[0] == b"squashfs" and fields[3] == b"/" \
                else None
    if found is None:
        return None
    sysfs = f"/sys/dev/block/{found}"
    try:
        uevent = dict(line.partition("=")[::2] for line in
                      _read(f"{sysfs}/uevent").splitlines())
    except OSError:
        uevent = {}
    try:
        device = os.path.join("/dev", uevent["DEVNAME"])
        major, minor = map(int, found.split(":"))
        if os.stat(device).st_rdev == os.makedev(major, minor):
            return device, uevent.get("DISKSEQ", "")
    except (OSError, KeyError, ValueError):
        pass
    try:
        backing = _read(f"{sysfs}/loop/backing_file").strip()
        if os.path.isfile(backing):
            return backing, uevent.get("DISKSEQ", "")
    except OSError:
        pass
    raise SnapshotError(f"{rom}: a squashfs is mounted there, and its block device "
                        f"({found}) is not in /dev")


def _unescape(field: bytes) -> bytes:
    """A mountinfo path: the kernel writes space, tab, newline and backslash as \\ooo."""
    parts = field.split(b"\\")
    out = [parts[0]]
    for part in parts[1:]:
        code = part[:3]
        if len(code) == 3 and all(0x30 <= c <= 0x37 for c in code) and code[0] <= 0x33:
            out += [bytes([int(code, 8)]), part[3:]]
        else:
            out += [b"\\", part]
    return b"".join(out)
