"""The old fstools snapshot chain for the tests, made from its documented format (FORMAT.md §8,
../shared/reference/openwrt-snapshot.md), and what the stock tools make of it.

- `OldTool` writes a chain on a simulated image as the old tool lays one out: DATA entries
  from block 0, the volatile (CONF) right after them, its sentinel copy in the partition's
  last blocks; the MD5 as a big- or a little-endian writer stores it.
- `stock_boot` reads an image as the stock boot does (fstools' mount_root in snapshot mode:
  `snapshot_tool read`, then `config_read`), quirks included: the read loop steps one block
  per entry, the volatile's first copy is looked for at a byte offset (so the sentinel copy is
  what it takes), a DATA entry of a bad length makes its walk spin forever.
- `old_view` applies old archives as the stock boot does, in order: tar over the tree, then
  every symlink to `(overlay-whiteout)` deletes its path; `chain_view` is the same view of a
  converted chain's boot (overlayfs semantics over the same lower tree).
"""
import hashlib
import io
import os
import stat
import struct
import tarfile
import tempfile
from pathlib import Path

from mtd import SimFlash
from snapshot import operations
from snapshot.store.chain import Chain

HEADER = struct.Struct(">4sIII16s")
DATA, CONF = 0x44415441, 0x434F4E46
MAX_LENGTH = 8 * 1024 * 1204
#: glibc's first rand() without a seed: the old tool's first seq is this + 1.
RAND0 = 1804289383
FIRST_SEQ = RAND0 + 1
WHITEOUT = "(overlay-whiteout)"


# -- archives ----------------------------------------------------------------------------------

def archive(spec: dict, prefix: str = "./") -> bytes:
    """A gzip tar as the old tool's front end made one (busybox tar of the upper dir, names
    under `./`, GNU headers): spec maps a name to text (a file), ("dir",), ("link", target),
    ("whiteout",) (an old-style one), ("hardlink", name) or ("fifo",)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(_member(".", tarfile.DIRTYPE, 0o755))
        for name, value in spec.items():
            if isinstance(value, (str, bytes)):
                data = value.encode() if isinstance(value, str) else value
                info = _member(prefix + name, tarfile.REGTYPE, 0o644, size=len(data))
                tar.addfile(info, io.BytesIO(data))
                continue
            kind = value[0]
            if kind == "dir":
                info = _member(prefix + name, tarfile.DIRTYPE, 0o755)
            elif kind == "link":
                info = _member(prefix + name, tarfile.SYMTYPE, 0o777, linkname=value[1])
            elif kind == "whiteout":
                info = _member(prefix + name, tarfile.SYMTYPE, 0o777, linkname=WHITEOUT)
            elif kind == "hardlink":
                info = _member(prefix + name, tarfile.LNKTYPE, 0o644, linkname=prefix + value[1])
            elif kind == "fifo":
                info = _member(prefix + name, tarfile.FIFOTYPE, 0o600)
            else:
                raise ValueError(value)
            tar.addfile(info)
    return out.getvalue()


def _member(name: str, kind: bytes, mode: int, size: int = 0,
            linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, linkname
    info.mtime, info.uname, info.gname = 1_400_000_000, "root", "root"
    return info


# -- writing the old chain ---------------------------------------------------------------------

def md5_field(payload: bytes, little_endian: bool) -> bytes:
    digest = hashlib.md5(payload).digest()
    if not little_endian:
        return digest
    return b"".join(digest[i:i + 4][::-1] for i in range(0, 16, 4))


class OldTool:
    """Writes the old chain's entries on a simulated image (created erased)."""

    def __init__(self, image: Path, geometry, bad_blocks=(), little_endian: bool = True):
        self.image = image
        self.geometry = geometry
        self.little_endian = little_endian
        SimFlash.create(image, geometry, bad_blocks=bad_blocks)

    def span(self, payload: bytes) -> int:
        return -(-(len(payload) + HEADER.size) // self.geometry.erasesize)

    def entry(self, block: int, kind: int, seq: int, payload: bytes, length: int | None = None,
              md5: bytes | None = None) -> int:
        """Write one entry at `block` (its blocks erased, then the header and the payload
        right after it); returns the block after it. `length` and `md5`: what the header
        says, if not the payload's."""
        g = self.geometry
        head = HEADER.pack(b"OWRT", kind, seq, len(payload) if length is None else length,
                           md5 or md5_field(payload, self.little_endian))
        data = head + payload
        with SimFlash(self.image, writable=True) as flash:
            for i in range(self.span(payload)):
                flash.erase(g.block_offset(block + i), g.erasesize)
                chunk = data[i * g.erasesize:(i + 1) * g.erasesize]
                chunk += b"\xff" * (-len(chunk) % g.writesize)
                if chunk.strip(b"\xff"):
                    flash.write(g.block_offset(block + i), chunk)
        return block + self.span(payload)

    def chain(self, snapshots: list[bytes], volatile: bytes | None = None,
              first_copy: bool = True, sentinel: bool = True, seq: int = FIRST_SEQ) -> dict:
        """A whole chain; returns where each entry went: "snapshots" (their blocks),
        "first_copy" and "sentinel" (a block or None)."""
        block, blocks = 0, []
        for n, payload in enumerate(snapshots):
            blocks.append(block)
            block = self.entry(block, DATA, seq + n, payload)
        where = {"snapshots": blocks, "first_copy": None, "sentinel": None}
        if volatile is not None:
            conf_seq = seq + len(snapshots) - 1 if snapshots else RAND0
            if first_copy:
                where["first_copy"] = block
                self.entry(block, CONF, conf_seq, volatile)
            if sentinel:
                at = self.geometry.blocks - self.span(volatile)
                where["sentinel"] = at
                self.entry(at, CONF, conf_seq, volatile)
        return where


# -- what the stock boot reads ------------------------------------------------------------------

class Spins(Exception):
    """The stock walk would loop forever here."""


def stock_boot(image: Path) -> tuple | str:
    """(the DATA payloads the stock boot unpacks, in order; the volatile's payload or None),
    or a string saying why it does not read the old chain at all."""
    with SimFlash(image) as flash:
        g = flash.geometry

        def head(offset: int):
            return HEADER.unpack(flash.read(offset, HEADER.size))

        def read_file(block: int, kind: int) -> bytes | None:
            magic, typ, _, length, md5 = head(g.block_offset(block))
            if magic != b"OWRT" or typ != kind or not 0 < length <= MAX_LENGTH:
                return None
            if g.block_offset(block) + HEADER.size + length > g.size:
                return None
            payload = flash.read(g.block_offset(block) + HEADER.size, length)
            return payload if md5 in (md5_field(payload, True), md5_field(payload, False)) \
                else None

        if flash.read(0, 4) != b"OWRT":
            return "mount_root: not the old chain"
        snapshots, block = [], 0
        while block < g.blocks:
            payload = read_file(block, DATA)
            if payload is None:
                break
            snapshots.append(payload)
            block += 1      # the old read loop: one block per entry, whatever its length
        try:
            nxt, seq = _next_free(flash, head)
        except Spins as e:
            return str(e)
        conf = HEADER.unpack(flash.read(nxt, HEADER.size))   # a byte offset: the old bug
        sentinel = None
        for i in range(g.blocks - 1, 0, -1):
            magic, typ, s, length, _ = head(g.block_offset(i))
            if magic == b"OWRT" and typ == CONF and 0 < length <= MAX_LENGTH:
                sentinel = None if i == nxt else (i, s)
                break
        if conf[0] == b"OWRT" and conf[1] == CONF and conf[2] == seq:
            volatile = read_file(nxt, CONF)
        elif sentinel is not None and sentinel[1] == seq:
            volatile = read_file(sentinel[0], CONF)
        else:
            volatile = None
        return tuple(snapshots), volatile


def _next_free(flash, head) -> tuple[int, int]:
    """The old snapshot_next_free: the block after the last DATA entry of the walk by
    length, with seq checks, and that entry's seq (without one, the first rand())."""
    g = flash.geometry
    seq, block = RAND0, 0
    for _ in range(4 * g.blocks):
        if block >= g.blocks:
            return block, seq
        magic, typ, s, length, _ = head(g.block_offset(block))
        if magic != b"OWRT" or typ != DATA:
            return block, seq
        if 0 < length <= MAX_LENGTH:
            if seq + 1 != s and block:
                return block, seq
            seq = s
            block += -(-(length + HEADER.size) // g.erasesize)
    raise Spins(f"the stock walk spins at block {block} (DATA of length outside 1..{MAX_LENGTH})")


# -- merged views ------------------------------------------------------------------------------

def _put(view: dict, name: str, value) -> None:
    """Replace what is at name (and below it) by value."""
    below = name + "/"
    for path in [p for p in view if p.startswith(below)]:
        del view[path]
    view[name] = value


def old_view(lower: dict, archives: list[bytes]) -> dict:
    """What the stock boot shows: `lower` (path -> tree() entry) with each archive unpacked
    over it in order, as tar does, and every old-style whiteout then deleting its path."""
    view = dict(lower)
    for data in archives:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                name = "/".join(p for p in member.name.split("/") if p not in ("", "."))
                if not name:
                    continue
                if member.issym() and member.linkname == WHITEOUT:
                    _put(view, name, None)
                    del view[name]
                elif member.isdir():
                    if view.get(name, ("",))[0] == "dir":
                        view[name] = ("dir", member.mode & 0o7777)
                    else:
                        _put(view, name, ("dir", member.mode & 0o7777))
                elif member.issym():
                    _put(view, name, ("link", member.linkname))
                elif member.islnk():
                    target = "/".join(p for p in member.linkname.split("/")
                                      if p not in ("", "."))
                    _put(view, name, view[target])
                elif member.isfile():
                    data_ = tar.extractfile(member).read()
                    _put(view, name, ("file", member.mode & 0o7777,
                                      hashlib.sha256(data_).hexdigest()))
                elif member.isfifo():
                    _put(view, name, ("special", stat.S_IFIFO | member.mode & 0o7777, 0))
    return view


def tree_of(root: Path) -> dict:
    """path -> ("file", mode, sha256) / ("dir", mode) / ("link", target) / ("special",
    st_mode, rdev), as tests/sweep.py's tree()."""
    from sweep import tree
    return tree(root)


def chain_view(image: Path, lower: dict) -> dict:
    """What a boot of the converted chain shows over `lower`: its snapshots, then its volatile
    record, each layer applied with overlayfs semantics (a whiteout removes, an opaque
    directory hides what is below it)."""
    view = dict(lower)
    with SimFlash(image) as flash, tempfile.TemporaryDirectory() as work:
        chain = Chain(flash)
        snapshots, volatile = Path(work) / "snapshots", Path(work) / "volatile"
        snapshots.mkdir()
        volatile.mkdir()
        applied, error = operations.apply_snapshots(chain, snapshots)
        assert error is None, error
        operations.apply_volatile(chain, volatile)
        for layer in (snapshots, volatile):
            for name, value in sorted(tree_of(layer).items()):
                path = layer / name
                if value[0] == "special" and stat.S_ISCHR(value[1]) and value[2] == 0:
                    _put(view, name, None)
                    del view[name]
                elif value[0] == "dir":
                    opaque = os.getxattr(path, "trusted.overlay.opaque",
                                         follow_symlinks=False) if "trusted.overlay.opaque" \
                        in os.listxattr(path, follow_symlinks=False) else b""
                    if opaque == b"y" or view.get(name, ("",))[0] != "dir":
                        _put(view, name, value)
                    else:
                        view[name] = value
                else:
                    _put(view, name, value)
    return view
