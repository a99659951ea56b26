"""`snapshot convert`: a jffs2 overlay becomes a chain holding it as snapshot 1, and the jffs2
data stays intact until the one commit, on NOR and NAND, with a power-cut sweep.

The images here stand in for jffs2: blocks that start with a jffs2 node header and carry
data, blocks holding only a cleanmarker, erased blocks. What jffs2 needs to mount with all
its data is every data block's contents somewhere on the flash (it scans for nodes wherever
they are) and block 0 unchanged (the stock mount_root looks there for the jffs2 magic). The
real-jffs2 version, on the real router with the RAM stage and power cuts, is
tests/test_router_convert.py.
"""
import random
import struct
import zlib
from pathlib import Path

import pytest

from clirun import invoke
from mtd import SimFlash
from snapshot import convert, operations
from snapshot.store.chain import Chain
from snapshot.store.format import ANCHOR_MAGIC
from sweep import CHECKED, GEOMETRIES, make_tree, run_cli, tree, visible

NODE = struct.Struct("<HHII")
INODE_NODE, CLEANMARKER_NODE = 0xE002, 0x2003
MESSAGE = "converted from jffs2"
#: Which blocks hold jffs2 data (the rest: cleanmarkers on NOR, erased on NAND).
LAYOUTS = {
    "fresh": [5],                     # block 0 holds only a cleanmarker (NOR) or nothing
    "anchor-area-free": [0, 6, 9],
    "anchor-area-full": [0, 1, 2, 3, 7],
}


def node(nodetype: int, totlen: int) -> bytes:
    """A jffs2 node header with its header CRC (jffs2's CRC-32: from 0, not inverted)."""
    head = struct.pack("<HHI", 0x1985, nodetype, totlen)
    return head + struct.pack("<I", ~zlib.crc32(head, 0xFFFFFFFF) & 0xFFFFFFFF)


def jffs2_like(path: Path, geometry: str, data_blocks: list[int], seed: int = 7) -> dict:
    """Write a jffs2 stand-in; returns block -> contents of the data blocks and block 0."""
    g, bad = GEOMETRIES[geometry]
    SimFlash.create(path, g, bad_blocks=bad)
    rng = random.Random(seed)
    contents = {}
    with SimFlash(path, writable=True) as flash:
        for block in range(g.blocks):
            if flash.is_bad(block):
                continue
            base = g.block_offset(block)
            if block in data_blocks:
                size = rng.randrange(g.erasesize // 4, g.erasesize // 2)
                data = node(INODE_NODE, size) + rng.randbytes(size)
            elif g.writesize == 1:
                data = node(CLEANMARKER_NODE, NODE.size)
            else:
                continue
            data += b"\xff" * (-len(data) % g.writesize)
            flash.write(base, data)
        for block in {0, *data_blocks}:
            contents[block] = flash.read(g.block_offset(block), g.erasesize)
    return contents


def free(block: bytes) -> bool:
    return convert._is_free(block)


def jffs2_intact(image: Path, contents: dict) -> bool:
    """No chain, block 0 as it was (what the stock mount_root looks at), and every data
    block's contents on the flash."""
    with SimFlash(image) as flash:
        g = flash.geometry
        if operations.recognise(flash) == "a snapshot chain":
            return False
        blocks = {flash.read(g.block_offset(b), g.erasesize)
                  for b in range(g.blocks) if not flash.is_bad(b)}
        return (flash.read(0, g.erasesize) == contents[0]
                and all(c in blocks for c in contents.values()))


def converted(image: Path, source: Path) -> bool:
    state = visible(str(image))
    # No problems, one confirmed snapshot, no note; the snapshot holds the tree.
    return state != "no chain" and state == ((), ((1, 1, 0, False, 0, 0),), None,
                                             ((1, MESSAGE),), tree(source), None)


@pytest.fixture(params=[(g, layout) for g in GEOMETRIES for layout in LAYOUTS],
                ids=lambda p: f"{p[0]}-{p[1]}")
def case(request, tmp_path):
    geometry, layout = request.param
    image = tmp_path / "flash.img"
    contents = jffs2_like(image, geometry, LAYOUTS[layout])
    source = make_tree(tmp_path / "upper", 5, 150)
    return image, contents, source, layout


def test_convert_makes_the_overlay_snapshot_1(case):
    image, contents, source, layout = case
    result = invoke("--device", str(image), "convert", "--from", str(source))
    assert result.exit_code == 0, result.output
    assert result.output == f"converted {image}: snapshot 1 ({MESSAGE})\n"
    assert converted(image, source)
    with SimFlash(image) as flash:
        assert operations.check(Chain(flash)).clean


def test_convert_writes_no_block_that_holds_data_but_block_it_copied(case):
    image, contents, source, layout = case
    assert invoke("--device", str(image), "convert", "--from", str(source)).exit_code == 0
    with SimFlash(image) as flash:
        g = flash.geometry
        now = {b: flash.read(g.block_offset(b), g.erasesize) for b in contents}
        kept = {flash.read(g.block_offset(b), g.erasesize) for b in range(g.blocks)}
    changed = [b for b in contents if now[b] != contents[b]]
    # Block 0, the mark block, erased by the switch; and when jffs2 fills the anchor area,
    # its last block. Both were copied aside first when they held nodes.
    assert changed == [0] + ([3] if layout == "anchor-area-full" else [])
    assert now[0].startswith(ANCHOR_MAGIC)
    assert all(contents[b] in kept for b in changed if not free(contents[b]))


def _image_copy(image: Path, name: str) -> Path:
    copy = image.with_name(name)
    copy.write_bytes(image.read_bytes())
    Path(f"{copy}.sim.json").write_bytes(Path(f"{image}.sim.json").read_bytes())
    return copy


def _flash_operations(image: Path) -> int:
    with SimFlash(image) as flash:
        stats = flash.stats()
        return stats.programs + stats.erases


def test_a_power_cut_at_any_step_leaves_jffs2_intact_or_the_chain(case):
    """Cut after the 1st, 2nd, ... program or erase; then the conversion runs again to
    the end, as it would after the reboot."""
    image, contents, source, layout = case
    args = ["convert", "--from", str(source)]
    done = _image_copy(image, "done.img")
    before = _flash_operations(done)
    assert run_cli(str(done), args).returncode == 0
    steps = _flash_operations(done) - before
    outcomes = []
    for cut in range(1, steps + 1):
        trial = _image_copy(image, f"cut{cut}.img")
        result = run_cli(str(trial), args, cut=cut)
        assert result.returncode == 99, result.stderr
        if jffs2_intact(trial, contents):
            outcomes.append("old")
            again = run_cli(str(trial), args)
            assert again.returncode == 0, f"cut {cut}: rerun failed: {again.stderr}"
        else:
            outcomes.append("new")
        assert converted(trial, source), f"cut {cut}: neither jffs2 intact nor the chain"
        CHECKED["convert"] = CHECKED.get("convert", 0) + 1
    # The cut tears the operation it falls in: the last one is the commit's anchor program.
    assert outcomes == sorted(outcomes, key=["old", "new"].index), outcomes


def test_convert_refuses_a_chain(tmp_path):
    image = tmp_path / "flash.img"
    jffs2_like(image, "nor", [])
    with SimFlash(image, writable=True) as flash:
        operations.format_device(flash, force=True)
    result = invoke("--device", str(image), "convert", "--from", str(tmp_path))
    assert result.exit_code == 1
    assert result.output == (f"Error: {image} already holds a snapshot chain; "
                             f"nothing to convert\n")


def test_convert_of_a_full_device_changes_nothing(tmp_path):
    image = tmp_path / "flash.img"
    g, _ = GEOMETRIES["nor"]
    contents = jffs2_like(image, "nor", list(range(g.blocks)))
    digest = image.read_bytes()
    result = invoke("--device", str(image), "convert", "--from",
                    str(make_tree(tmp_path / "upper", 5, 150)))
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "nothing was changed" in result.output
    assert image.read_bytes() == digest and jffs2_intact(image, contents)


def test_a_damaged_staged_archive_changes_nothing(tmp_path):
    image = tmp_path / "flash.img"
    jffs2_like(image, "nand", [0, 6])
    staged = tmp_path / "overlay.tar.gz"
    convert.stage(make_tree(tmp_path / "upper", 5, 40), staged, 1)
    data = bytearray(staged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    staged.write_bytes(bytes(data))
    digest = image.read_bytes()
    result = invoke("--device", str(image), "convert", "--archive", str(staged))
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert result.output.startswith(f"Error: {staged}: ") and "nothing was changed" in result.output
    assert image.read_bytes() == digest


def test_a_staged_archive_converts_like_the_directory(tmp_path):
    image = tmp_path / "flash.img"
    jffs2_like(image, "nand", [0, 6])
    source = make_tree(tmp_path / "upper", 5, 40)
    staged = tmp_path / "overlay.tar.gz"
    convert.stage(source, staged, 1)
    result = invoke("--device", str(image), "convert", "--archive", str(staged))
    assert result.exit_code == 0, result.output
    assert converted(image, source)


def test_the_router_form_needs_jffs2_mounted(tmp_path):
    image = tmp_path / "flash.img"
    jffs2_like(image, "nor", [0])
    result = invoke("--device", str(image), "convert")
    assert result.exit_code == 1
    assert result.output == (f"Error: {image} is not mounted as jffs2; nothing to convert "
                             f"(use --from DIR for an overlay dir)\n")


@pytest.mark.parametrize("form", ["from", "archive", "router"])
def test_a_message_that_does_not_fit_is_refused_with_jffs2_untouched(tmp_path, form):
    """Even where jffs2 fills the anchor area, so convert would first move one of its
    blocks aside: the refusal comes before that."""
    image = tmp_path / "flash.img"
    contents = jffs2_like(image, "nand", LAYOUTS["anchor-area-full"])
    before = image.read_bytes()
    source = make_tree(tmp_path / "upper", 5, 40)
    staged = tmp_path / "overlay.tar.gz"
    convert.stage(source, staged, 1)
    args = {"from": ["--from", str(source)], "archive": ["--archive", str(staged)],
            "router": []}[form]
    result = invoke("--device", str(image), "convert", *args, "-m", "m" * 300)
    assert result.exit_code == 1
    assert result.output == "Error: the message is 300 bytes long; at most 255 bytes fit\n"
    assert image.read_bytes() == before and jffs2_intact(image, contents)


def test_mounts_of_an_mtd_device_are_found_by_any_of_its_names(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/root /rom squashfs ro 0 0\n"
                      "/dev/mtdblock5 /overlay jffs2 rw,noatime 0 0\n"
                      "overlayfs:/overlay / overlay rw 0 0\n")
    assert convert.mount_of("/dev/mtd5", mounts) == ("/overlay", "jffs2")
    assert convert.mount_of("/dev/mtd4", mounts) is None
    assert convert.mount_of("/tmp/flash.img", mounts) is None


def test_only_erased_or_cleanmarker_blocks_are_free():
    erased = b"\xff" * 4096
    cleanmarker_le = struct.pack("<HHII", 0x1985, 0x2003, 12, 0x12345678)
    cleanmarker_be = struct.pack(">HHII", 0x1985, 0x2003, 12, 0x12345678)
    assert convert._is_free(erased)
    assert convert._is_free(cleanmarker_le + erased[12:])
    assert convert._is_free(cleanmarker_be + erased[12:])
    assert not convert._is_free(cleanmarker_le + b"\x00" + erased[13:])
    assert not convert._is_free(struct.pack("<HHII", 0x1985, 0xE002, 12, 0) + erased[12:])
    assert not convert._is_free(b"\x00" + erased[1:])
